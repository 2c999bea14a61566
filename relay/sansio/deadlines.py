"""When a session must end by the clock: its duration cap, a drain, its client's removal, idleness.

:class:`Deadlines` holds the times one session must end by and says which one
has come (:meth:`Deadlines.due`) and when the next one comes
(:meth:`Deadlines.next`). It returns facts, not commands: the session turns a
:class:`~relay.sansio.closes.Cutoff` into its notice and closes. Times are
seconds on the monotonic clock of the events.

The time of the client's latest message (for idleness) and the initial
policy's deadline are passed in: the session updates the first on every
client message, and the second belongs to :mod:`relay.sansio.initial`.
"""

from __future__ import annotations

from relay.sansio.closes import (
    DRAIN_CUTOFF,
    DURATION_CUTOFF,
    REMOVED_CUTOFF,
    Cutoff,
    idle_cutoff,
)
from relay.sansio.fields import JSON
from relay.sansio.limits import EXPIRY_WINDOW, SessionLimits


__all__ = ["Deadlines"]


class Deadlines:
    """The deadlines of one session; :meth:`start` sets them."""

    __slots__ = (
        "_drain_at",
        "_end_at",
        "_removed_at",
        "_started_at",
        "_wall_offset",
        "limits",
    )

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        # When the session started, and the wall clock minus the monotonic
        # one then, to read the upstream's expires_at (None: no wall clock).
        self._started_at = 0.0
        self._wall_offset: float | None = None
        # The duration cap: the session's own, or Azure's less a margin.
        self._end_at = float("inf")
        # When a drain must have ended the session (None: no drain).
        self._drain_at: float | None = None
        # When the client's removal must have ended the session (None: not removed).
        self._removed_at: float | None = None

    def start(self, now: float, wall: float | None) -> None:
        """The session starts at ``now`` (monotonic), ``wall`` on the wall clock if known."""
        self._started_at = now
        self._wall_offset = None if wall is None else wall - now
        self._end_at = self.limits.session_end(now)

    def expires(self, created: dict[str, JSON], now: float) -> bool:
        """Cap the session by the ``expires_at`` of the upstream's ``session.created``.

        Azure's value is authoritative (its documented cap changed from 30 to
        60 minutes in 2026); one outside :data:`EXPIRY_WINDOW` from now is
        not believed and the documented cap stays. Returns whether the cap
        moved: the caller then asks for a wakeup at :meth:`next`.
        """
        session = created.get("session")
        expires_at = session.get("expires_at") if isinstance(session, dict) else None
        if (
            self._wall_offset is None
            or isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
        ):
            return False
        expires = expires_at - self._wall_offset
        low, high = EXPIRY_WINDOW
        if not low <= expires - now <= high:
            return False
        end = self.limits.session_end(self._started_at, expires)
        if end == self._end_at:
            return False
        self._end_at = end
        return True

    def drain(self, deadline: float) -> bool:
        """The relay drains: end by ``deadline``. Only the first drain counts (returns True)."""
        if self._drain_at is not None:
            return False
        self._drain_at = deadline
        return True

    def remove(self, deadline: float) -> bool:
        """The session's client was removed: end by ``deadline``. Only the first removal counts (returns True)."""
        if self._removed_at is not None:
            return False
        self._removed_at = deadline
        return True

    def next(self, last_client: float, initial: float | None) -> float:
        """The earliest deadline, given the client's latest message and the initial policy's deadline."""
        deadlines = [self._end_at]
        if self._drain_at is not None:
            deadlines.append(self._drain_at)
        if self._removed_at is not None:
            deadlines.append(self._removed_at)
        if initial is not None:
            deadlines.append(initial)
        if self.limits.idle_seconds is not None:
            deadlines.append(last_client + self.limits.idle_seconds)
        return min(deadlines)

    def due(self, now: float, last_client: float) -> Cutoff | None:
        """The deadline that has come at ``now``, if any (a drain first, then a removal, the cap, idleness)."""
        if self._drain_at is not None and now >= self._drain_at:
            return DRAIN_CUTOFF
        if self._removed_at is not None and now >= self._removed_at:
            return REMOVED_CUTOFF
        if now >= self._end_at:
            return DURATION_CUTOFF
        idle = self.limits.idle_seconds
        if idle is not None and now >= last_client + idle:
            return idle_cutoff(idle)
        return None
