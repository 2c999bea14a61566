"""The event loop's lag, measured by one probe per process.

A timer due every :data:`PROBE_INTERVAL` fires late by as long as the loop
was busy elsewhere: that lateness is the loop's lag, what every session waits
on top of its own work. It is observed into ``relay_event_loop_lag_seconds``,
and the stall watchdogs of the sessions read :meth:`LoopLagProbe.responsive`,
a clock that stops while the loop is blocked, so a relay that could not run
does not blame its peers for not reading (:mod:`relay.sansio.stalls`).

The application's lifespan owns the probe: it starts it, and closes it on the
way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from relay.sansio.stalls import LoopLag
from relay.service.tasks import TaskSet


__all__ = ["PROBE_INTERVAL", "LoopLagProbe"]

PROBE_INTERVAL: Final = 0.1
"""Seconds between probes. Ten timers a second cost nothing measurable, and
bound what the stall clock can miss of a loop block (the part before the probe
was due) to a tenth of a second, well under the smallest ``flow.stall_timeout``."""


class LoopLagProbe:
    """Measures the running loop's lag every ``interval`` seconds, from :meth:`start` to :meth:`close`.

    Args:
        observe: called with each probe's lag in seconds (a histogram's
            ``observe``); it runs on the loop, so it must be cheap.
        interval: seconds between probes.
    """

    def __init__(
        self, observe: Callable[[float], None], *, interval: float = PROBE_INTERVAL
    ) -> None:
        self._observe = observe
        self._interval = interval
        self._lag = LoopLag()
        self._tasks = TaskSet()

    def start(self) -> None:
        """Start probing on the running loop; idempotent."""
        if not self._tasks:
            self._tasks.spawn(self._probe(), name="loop-lag-probe")

    async def close(self) -> None:
        """Stop probing; idempotent. The stall clock then runs with the loop's."""
        await self._tasks.cancel_all()

    def responsive(self, now: float) -> float:
        """The loop's time ``now`` less the time the loop could not run (see LoopLag)."""
        return self._lag.responsive(now)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._lag.scheduled(loop.time() + self._interval)
                await asyncio.sleep(self._interval)
                self._observe(self._lag.fired(loop.time()))
        finally:
            # A probe that will never fire must not stop the stall clock.
            self._lag.cancelled()
