"""Where client session counts and start rates are kept: the limits backend.

:class:`LimitsBackend` is the seam; :class:`MemoryBackend` (the default) keeps
them in this process, :class:`relay.service.limits_redis.RedisBackend` in Redis so that
every replica enforces one cap. The endpoint acquires a slot after the client is
authenticated and before any upstream connection exists, and releases it when
the session ends, whatever the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.exceptions import QuotaExceeded
from relay.sansio.quotas import QuotaLedger, SessionQuota
from relay.typing import ClientId


__all__ = ["BackendStatus", "LimitsBackend", "MemoryBackend"]


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What ``/readyz`` and the metrics say about the backend."""

    backend: str
    """``memory`` or ``redis``."""
    reachable: bool
    """Whether the backend answered its last request (always true in memory)."""
    degraded: bool = False
    """Failing open: limits are enforced per replica only until it recovers."""


class LimitsBackend(Protocol):
    """Session slots and start rates per client."""

    async def start(self) -> None:
        """Connect and start background work (lease renewal); idempotent."""
        ...

    async def acquire(
        self, client: ClientId, session_id: str, quota: SessionQuota
    ) -> None:
        """Take a session slot for ``session_id`` and count one session start.

        Raises:
            relay.exceptions.QuotaExceeded: over ``max_sessions`` or
                ``sessions_per_minute`` (with a ``retry_after``).
            relay.exceptions.LimitsUnavailable: the store is unreachable and the
                backend fails closed.
        """
        ...

    async def release(self, client: ClientId, session_id: str) -> None:
        """Give the slot back; idempotent; never raises."""
        ...

    def status(self) -> BackendStatus:
        """Current health, for readiness and metrics."""
        ...

    async def close(self) -> None:
        """Stop background work and disconnect; idempotent."""
        ...


class MemoryBackend:
    """Limits kept in this process: exact for one replica, per replica for several."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ledger = QuotaLedger()

    async def start(self) -> None:
        """Nothing to connect."""

    async def acquire(
        self, client: ClientId, session_id: str, quota: SessionQuota
    ) -> None:
        """See :meth:`LimitsBackend.acquire`; never unavailable."""
        denial = self._ledger.acquire(client, session_id, quota, self._clock())
        if denial is not None:
            raise QuotaExceeded(
                f"client over its {denial.limit} limit; retry later",
                retry_after=denial.retry_after,
                limit=denial.limit,
            )

    async def release(self, client: ClientId, session_id: str) -> None:
        """See :meth:`LimitsBackend.release`."""
        self._ledger.release(client, session_id)

    def sessions(self, client: ClientId) -> int:
        """Slots ``client`` holds in this process."""
        return self._ledger.sessions(client)

    def status(self) -> BackendStatus:
        """Always reachable."""
        return BackendStatus("memory", reachable=True)

    async def close(self) -> None:
        """Nothing to release."""
