"""Graceful drain: stop taking sessions, let live ones finish, then exit.

uvicorn alone closes every WebSocket with 1012 the moment it gets SIGTERM. The
relay drains first (:class:`relay.server.RelayServer` turns SIGTERM into
:meth:`Drain.begin`, and so does ``/internal/drain`` for a Kubernetes preStop
hook):

1. ``/readyz`` answers 503 at once and ``relay_draining`` is 1;
2. handshakes are still accepted for ``propagation_delay`` seconds (load
   balancers take a moment to stop sending), then refused with 503 and
   ``Retry-After``;
3. every live session gets a ``relay.draining`` event and ``grace_seconds`` to
   finish; the core then closes it with 1012 and closes its upstream leg;
4. once no connection is left, the server is asked to exit (status 0).

With no session at all, step 4 follows at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from relay._tasks import TaskSet
from relay.config import DrainSettings


__all__ = ["Drain"]

log = structlog.get_logger("relay.drain")


class Drain:
    """The drain state of one replica; see the module docstring."""

    def __init__(
        self,
        settings: DrainSettings,
        *,
        sessions: Callable[[], int],
        wait_sessions: Callable[[int], Awaitable[None]],
        notify: Callable[[float, float], None],
    ) -> None:
        """``sessions`` counts live connections, ``wait_sessions(n)`` waits until at
        most ``n`` remain, and ``notify(deadline, grace)`` tells every live session."""
        self._settings = settings
        self._sessions = sessions
        self._wait_sessions = wait_sessions
        self._notify = notify
        # Monotonic start of the drain; None while serving normally.
        self.started_at: float | None = None
        self.drained = asyncio.Event()
        """Set once draining and no connection is left."""
        self.on_drained: Callable[[], None] = lambda: None
        """Called once, when drained (the server sets it to exit)."""
        self._tasks = TaskSet()

    @property
    def draining(self) -> bool:
        """Whether the drain has begun."""
        return self.started_at is not None

    def refusing(self) -> bool:
        """Whether new handshakes are refused (draining, past the propagation delay)."""
        if self.started_at is None:
            return False
        elapsed = asyncio.get_running_loop().time() - self.started_at
        return elapsed >= self._settings.propagation_delay

    def deadline(self) -> tuple[float, float]:
        """``(deadline, seconds left)`` for sessions, while draining."""
        assert self.started_at is not None
        deadline = self.started_at + self._settings.grace_seconds
        return deadline, max(0.0, deadline - asyncio.get_running_loop().time())

    def begin(self) -> None:
        """Start draining; idempotent. Must run on the event loop."""
        if self.started_at is not None:
            return
        self.started_at = asyncio.get_running_loop().time()
        deadline, grace = self.deadline()
        log.info(
            "drain.started",
            sessions=self._sessions(),
            grace_s=self._settings.grace_seconds,
            propagation_delay_s=self._settings.propagation_delay,
        )
        self._notify(deadline, grace)
        self._tasks.spawn(self._finish(), name="drain")

    async def _finish(self) -> None:
        await self._wait_sessions(0)
        assert self.started_at is not None
        elapsed = asyncio.get_running_loop().time() - self.started_at
        log.info("drain.finished", elapsed_s=round(elapsed, 3))
        self.drained.set()
        self.on_drained()

    async def close(self) -> None:
        """Cancel the drain's waiter (at shutdown); idempotent."""
        await self._tasks.cancel_all()
