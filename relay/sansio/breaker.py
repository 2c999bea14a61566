"""A circuit breaker for one upstream: when to stop trying it, when to try again.

The states, and the value ``relay_upstream_breaker_state`` reports for each:

===========  =====  =========================================================
state        value  meaning
===========  =====  =========================================================
closed       0      attempts flow; consecutive failures are counted and a
                    success resets the count; ``failures_to_open`` failures
                    in a row open the breaker
open         2      no attempt until ``cooldown`` seconds after it opened
half-open    1      the cool-down is over: one trial attempt at a time; its
                    success closes the breaker, its failure opens it again
                    for a fresh cool-down
===========  =====  =========================================================

Independently of the state, a failure that came with a ``Retry-After`` (Azure
throttling with 429, or a 503) *holds* the upstream: no attempt starts before
that time (capped at ``max_hold`` seconds, so a confused upstream cannot park
itself for a day), and the breaker reports open meanwhile.

The breaker is pure: time is passed in (monotonic seconds) and it never reads a
clock. Every attempt is a ticket from :meth:`Breaker.begin`, and the caller
must report its end exactly once, with :meth:`~Breaker.succeeded`,
:meth:`~Breaker.failed` or :meth:`~Breaker.abandoned` (cancelled, or an answer
that says nothing about the upstream's health). Results of attempts begun
before the breaker last opened are stale: they cannot close or reopen it,
though their ``Retry-After`` is still honoured.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


__all__ = ["Attempt", "Breaker", "BreakerState"]


class BreakerState(enum.IntEnum):
    """A breaker's state; the value is the metric's."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class Attempt:
    """A ticket for one attempt; report its end to the breaker that issued it."""

    epoch: int
    """How many times the breaker had opened when the attempt began."""
    trial: bool
    """Whether the attempt tests an open breaker (half-open trial, or forced)."""


class Breaker:
    """The circuit breaker of one upstream; see the module docstring.

    Args:
        failures_to_open: consecutive failures that open a closed breaker.
        cooldown: seconds an opened breaker stays open before half-opening.
        max_hold: the longest ``Retry-After`` honoured, in seconds.

    Raises:
        ValueError: a bound out of range (fewer than one failure, a negative time).
    """

    def __init__(
        self,
        *,
        failures_to_open: int = 3,
        cooldown: float = 30.0,
        max_hold: float = 300.0,
    ) -> None:
        if failures_to_open < 1 or not cooldown >= 0 or not max_hold >= 0:
            raise ValueError(
                "failures_to_open must be >= 1, cooldown and max_hold >= 0"
            )
        self.failures_to_open = failures_to_open
        self.cooldown = cooldown
        self.max_hold = max_hold
        # Consecutive failures counted while closed.
        self.failures = 0
        # When the cool-down of an open breaker ends; None while closed.
        self._open_until: float | None = None
        # Bumped each time the breaker opens, so older attempts' results are stale.
        self._epoch = 0
        # Trials in flight (more than one only when forced).
        self._trials_out = 0
        self.hold_until = -math.inf
        """No attempt starts before this time (a ``Retry-After``)."""
        self.hold_status: int | None = None
        """The status that came with the latest hold (opaque to the breaker)."""

    @property
    def open_until(self) -> float | None:
        """When the cool-down ends (half-open from then on); ``None`` while closed."""
        return self._open_until

    @property
    def epoch(self) -> int:
        """How many times the breaker has opened (tickets carry it, see :class:`Attempt`)."""
        return self._epoch

    def state(self, now: float) -> BreakerState:
        """The state at ``now``; a hold reports :attr:`BreakerState.OPEN`."""
        if now < self.hold_until:
            return BreakerState.OPEN
        if self._open_until is None:
            return BreakerState.CLOSED
        if now < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def available(self, now: float) -> bool:
        """Whether :meth:`begin` would issue a ticket at ``now`` without ``force``."""
        if now < self.hold_until:
            return False
        if self._open_until is None:
            return True
        return now >= self._open_until and self._trials_out == 0

    def held(self, now: float) -> bool:
        """Whether a ``Retry-After`` forbids attempts at ``now``."""
        return now < self.hold_until

    def ready_at(self) -> float:
        """The earliest time the cool-down and any hold are over (``-inf`` if now)."""
        cooldown_end = -math.inf if self._open_until is None else self._open_until
        return max(cooldown_end, self.hold_until)

    def begin(self, now: float, *, force: bool = False) -> Attempt | None:
        """A ticket for an attempt starting at ``now``, or ``None`` when none may start.

        ``force`` issues a ticket whatever the state: the caller has no better
        upstream to try. A forced attempt on an open breaker is a trial.
        """
        if not force and not self.available(now):
            return None
        if self._open_until is None:
            return Attempt(self._epoch, trial=False)
        self._trials_out += 1
        return Attempt(self._epoch, trial=True)

    def succeeded(self, attempt: Attempt) -> None:
        """Report that ``attempt`` opened a session: a current trial closes the breaker."""
        if attempt.epoch != self._epoch:
            return
        # Tickets of the current epoch on an open breaker are all trials.
        self._open_until = None
        self._trials_out = 0
        self.failures = 0

    def failed(
        self,
        attempt: Attempt,
        now: float,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        """Report that ``attempt`` failed at ``now`` because of the upstream.

        ``retry_after`` (seconds, from the answer's ``Retry-After``) holds the
        upstream until then, even when the attempt is stale; ``status`` is
        remembered with the hold.
        """
        if retry_after is not None:
            until = now + min(max(retry_after, 0.0), self.max_hold)
            if until > self.hold_until:
                self.hold_until = until
                self.hold_status = status
        if attempt.epoch != self._epoch:
            return
        if self._open_until is None:
            self.failures += 1
            if self.failures >= self.failures_to_open:
                self._open(now)
        else:
            self._open(now)

    def abandoned(self, attempt: Attempt) -> None:
        """Report that ``attempt`` ended with no verdict on the upstream's health.

        A trial's slot is freed, so the next session may try again.
        """
        if attempt.epoch == self._epoch and attempt.trial and self._trials_out > 0:
            self._trials_out -= 1

    def _open(self, now: float) -> None:
        self._epoch += 1
        self._open_until = now + self.cooldown
        self._trials_out = 0
        self.failures = 0
