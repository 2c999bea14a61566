"""What counts as a stall, free of I/O: a peer that takes nothing while it could.

A leg whose write buffer is over its high-water mark is *blocked*; that alone
is not a stall. Its peer has stalled only once it took no data at all for
``flow.stall_timeout`` of time during which the relay was able to run:

* Time the relay's event loop could not run (a long callback, a CPU-bound
  neighbour) is not the peer's fault: the relay could not write, so the peer
  may have had nothing to read. :class:`LoopLag` turns the loop's time into a
  clock that stops while the loop is blocked, from the lateness of a probe
  timer (one per process).
* A peer that reads, however slowly, makes progress: the bytes written to it
  and not yet taken go down. :class:`StallWatch` restarts its window at every
  look that sees progress, so only a peer that took nothing for the whole
  window is reported.

Times are seconds on the event loop's clock, passed in by the caller.
"""

from __future__ import annotations


__all__ = ["LoopLag", "StallWatch"]


class LoopLag:
    """The time the event loop could not run, from a probe timer's lateness.

    The caller schedules a timer due at some time, says so with
    :meth:`scheduled`, and reports its firing with :meth:`fired`. A timer
    that fires late measures the time the loop spent elsewhere: for a loop
    blocked by one long callback, the whole block (less at most one probe
    interval, the part before the timer was due).
    """

    def __init__(self) -> None:
        # Lateness of the probes that fired, in total.
        self._lost = 0.0
        # When the pending probe is due (None: no probe pending).
        self._due: float | None = None

    def scheduled(self, due: float) -> None:
        """A probe timer is due at ``due``; call :meth:`fired` when it runs."""
        self._due = due

    def fired(self, now: float) -> float:
        """The pending probe ran at ``now``; return its lateness (never negative)."""
        due, self._due = self._due, None
        lag = now - due if due is not None and now > due else 0.0
        self._lost += lag
        return lag

    def cancelled(self) -> None:
        """No probe is pending any more (the probe stopped): stop counting lag."""
        self._due = None

    def responsive(self, now: float) -> float:
        """``now`` less the time the loop could not run: a clock that stops while it is blocked.

        An overdue probe counts already, so the clock is right even when read
        before the late probe itself has run (by another timer due at the same
        time). It never goes backwards (but for float rounding).
        """
        due = self._due
        if due is not None and now > due:
            now = due  # the loop has not run since the probe was due
        return now - self._lost


class StallWatch:
    """The stall clock of one leg; see the module docstring.

    The driver calls :meth:`blocked` when the leg goes over its high-water
    mark, :meth:`unblocked` when it drains below its low-water mark, and
    :meth:`look` from its watchdog. Times are on a :meth:`LoopLag.responsive`
    clock (or any clock, for a relay without a probe).

    Args:
        timeout: ``flow.stall_timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Start of the current window without progress (None: not blocked).
        self._since: float | None = None
        # Bytes not yet taken at the previous look (None: no look yet).
        self._pending: int | None = None
        # Reported for this block already: once is enough.
        self._reported = False

    @property
    def armed(self) -> bool:
        """Whether the leg is blocked and not reported yet."""
        return self._since is not None

    def blocked(self, at: float) -> None:
        """The leg went over its mark at ``at``; idempotent while it stays there."""
        if self._since is None and not self._reported:
            self._since = at
            self._pending = None

    def unblocked(self) -> None:
        """The leg drained below its low-water mark: no stall, whatever came before."""
        self._since = None
        self._pending = None
        self._reported = False

    def look(self, at: float, pending: int) -> bool:
        """One look of the watchdog at ``at``; True (once) when the peer has stalled.

        Args:
            at: now, on the same clock as :meth:`blocked`.
            pending: bytes written to the leg that its peer has not taken yet,
                as far as the driver can see (the transport's buffer, plus the
                kernel's send queue where the platform tells). Any decrease
                since the previous look is progress: the window restarts.

        Returns:
            True when the peer took nothing for ``timeout`` (the leg is then
            reported, and not again until :meth:`unblocked`).
        """
        since = self._since
        if since is None:
            return False
        if self._pending is not None and pending < self._pending:
            since = self._since = at
        self._pending = pending
        if at - since < self.timeout:
            return False
        self._since = None
        self._pending = None
        self._reported = True
        return True
