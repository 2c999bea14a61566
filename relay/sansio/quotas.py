"""Quota arithmetic, free of I/O: session slots, start rates and token buckets.

Times are seconds on one monotonic clock passed in by the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final


__all__ = ["WINDOW", "Denial", "QuotaLedger", "SessionQuota", "TokenBucket"]

WINDOW: Final = 60.0
"""Length of the rolling window of ``sessions_per_minute``, in seconds."""


@dataclass(frozen=True, slots=True)
class SessionQuota:
    """A client's session limits."""

    max_sessions: int
    """Concurrent sessions (across replicas with a shared backend)."""
    sessions_per_minute: int
    """Session starts in any rolling minute."""


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a session may not start, and when trying again could succeed."""

    limit: str
    """``max_sessions`` or ``sessions_per_minute``."""
    retry_after: float


@dataclass(slots=True)
class _Client:
    sessions: set[str] = field(default_factory=set)
    starts: deque[float] = field(default_factory=deque)


class QuotaLedger:
    """Session slots and start times per client, in one process."""

    def __init__(self) -> None:
        self._clients: dict[str, _Client] = {}

    def acquire(
        self, client: str, session_id: str, quota: SessionQuota, now: float
    ) -> Denial | None:
        """Take a slot for ``session_id`` and count a start, or say why not.

        A refused attempt counts nothing. ``retry_after`` for a full slot set
        is a short back-off (a session may end any time); for the start rate it
        is when the oldest start in the window leaves it.
        """
        state = self._clients.setdefault(client, _Client())
        while state.starts and state.starts[0] <= now - WINDOW:
            state.starts.popleft()
        if len(state.sessions) >= quota.max_sessions:
            return Denial("max_sessions", 5.0)
        if len(state.starts) >= quota.sessions_per_minute:
            return Denial("sessions_per_minute", state.starts[0] + WINDOW - now)
        state.sessions.add(session_id)
        state.starts.append(now)
        return None

    def release(self, client: str, session_id: str) -> None:
        """Give the slot of ``session_id`` back; idempotent."""
        state = self._clients.get(client)
        if state is None:
            return
        state.sessions.discard(session_id)
        if not state.sessions and not state.starts:
            del self._clients[client]

    def sessions(self, client: str) -> int:
        """Slots ``client`` holds now."""
        state = self._clients.get(client)
        return len(state.sessions) if state else 0


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``.

    :meth:`take` never goes negative: a request larger than what is available
    is refused whole (and a request larger than ``burst`` can never pass).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens at ``now`` if available; whether they were."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def charge(self, amount: float, now: float) -> bool:
        """Take ``amount`` at ``now`` unless the bucket is in debt; whether it was taken.

        Unlike :meth:`take`, an amount larger than what is available (or than
        ``burst``) passes while the bucket holds anything, leaving it in debt:
        what follows waits until the rate has repaid it. One large message
        can pass this way, and the average still keeps to the rate.
        """
        elapsed = max(0.0, now - self._last)
        self._last = now
        tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if tokens <= 0:
            self._tokens = tokens
            return False
        self._tokens = tokens - amount
        return True

    def debit(self, amount: float, now: float) -> None:
        """Take ``amount`` at ``now`` whatever the balance (it may go into debt)."""
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate) - amount
