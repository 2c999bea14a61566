"""Graceful drain: stop taking sessions, let live ones finish, then exit.

uvicorn alone closes every WebSocket with 1012 the moment it gets SIGTERM. The
relay drains first (:class:`relay.service.server.RelayServer` turns SIGTERM into
:meth:`Drain.begin`, and so does ``/internal/drain`` for a Kubernetes preStop
hook):

1. ``/readyz`` answers 503 at once and ``relay_draining`` is 1;
2. handshakes are still accepted for ``propagation_delay`` seconds (load
   balancers take a moment to stop sending), then refused with 503 and
   ``Retry-After``;
3. every live session gets a ``relay.draining`` event and ``grace_seconds`` to
   finish; the core then closes it with 1012 and closes its upstream leg;
4. once no connection is left, the server is asked to exit (status 0).

Started by ``/internal/drain`` (the preStop hook, which runs while Kubernetes
removes the pod from its endpoints), step 4 waits for the propagation delay
too: a pod with no session must still be there to accept the handshakes that
stale endpoints send it. Started by a signal, with no session at all, step 4
follows at once: under Kubernetes the preStop has already waited, and
elsewhere a signal means stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from relay.config import DrainSettings
from relay.service.tasks import TaskSet


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
        self._hold = 0.0
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

    def time_left(self) -> float:
        """Seconds until the drain must be over: the grace, or the hold if longer."""
        assert self.started_at is not None
        _, grace = self.deadline()
        elapsed = asyncio.get_running_loop().time() - self.started_at
        return max(grace, self._hold - elapsed)

    def begin(self, *, hold: bool = False) -> None:
        """Start draining; idempotent. Must run on the event loop.

        ``hold``: do not finish before ``propagation_delay`` has passed, even
        with no session left (the preStop path; see the module docstring).
        """
        if self.started_at is not None:
            return
        self.started_at = asyncio.get_running_loop().time()
        self._hold = self._settings.propagation_delay if hold else 0.0
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
        if self._hold > 0:
            # Handshakes are still accepted meanwhile; their sessions count.
            await asyncio.sleep(self._hold)
        await self._wait_sessions(0)
        assert self.started_at is not None
        elapsed = asyncio.get_running_loop().time() - self.started_at
        log.info("drain.finished", elapsed_s=round(elapsed, 3))
        self.drained.set()
        self.on_drained()

    async def close(self) -> None:
        """Cancel the drain's waiter (at shutdown); idempotent."""
        await self._tasks.cancel_all()
