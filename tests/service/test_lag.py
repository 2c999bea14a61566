"""The loop-lag probe on a real event loop: what it observes, and its stall clock."""

from __future__ import annotations

import asyncio

import pytest

from relay.service.lag import PROBE_INTERVAL, LoopLagProbe
from tests.helpers.loops import block_loop
from tests.helpers.servers import relay_stack
from tests.helpers.timing import SECOND
from tests.service.test_health_metrics import scrape


BLOCK = 0.5
"""How long the tests hold the loop: many probe intervals, well under a test's bounds."""


class Recorder:
    """The probe's observations, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._observed = asyncio.Event()

    def observe(self, lag: float) -> None:
        self.lags.append(lag)
        self._observed.set()

    async def next(self) -> float:
        self._observed.clear()
        async with asyncio.timeout(5 * SECOND):
            await self._observed.wait()
        return self.lags[-1]


async def test_a_blocked_loop_is_observed_and_left_out_of_the_stall_clock() -> None:
    """A probe due during a 0.5 s block reports it as lag; the responsive clock skips it."""
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    probe = LoopLagProbe(recorder.observe)
    probe.start()
    try:
        await recorder.next()  # probing: the next probe is pending
        wall_before = loop.time()
        responsive_before = probe.responsive(wall_before)
        block_loop(BLOCK)
        # Read before the late probe has run, as a session's watchdog may be.
        wall_after = loop.time()
        responsive_after = probe.responsive(wall_after)
        lag = await recorder.next()
    finally:
        await probe.close()
    assert wall_after - wall_before >= BLOCK
    # The probe was due at most one interval into the block.
    assert lag >= BLOCK - PROBE_INTERVAL
    assert responsive_after - responsive_before <= PROBE_INTERVAL
    assert max(recorder.lags) == lag


async def test_start_and_close_are_idempotent_and_closing_frees_the_clock() -> None:
    """One probe task however often started; once closed, the clock runs with the loop's."""
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    probe = LoopLagProbe(recorder.observe, interval=0.01)
    probe.start()
    probe.start()
    await recorder.next()
    running = [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag-probe"]
    assert len(running) == 1
    await probe.close()
    await probe.close()
    assert running[0].cancelled()
    # No probe is pending: a long time later is a long time later.
    now = loop.time()
    assert probe.responsive(now + 100.0) - probe.responsive(now) == pytest.approx(100.0)


async def test_the_relay_exports_its_loop_lag() -> None:
    """relay_event_loop_lag_seconds is scraped from /metrics, and a 1.5 s block lands above its 1 s bucket."""
    block = 1.5

    def over_a_second(
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    ) -> float:
        return (
            samples[("relay_event_loop_lag_seconds_count", ())]
            - samples[("relay_event_loop_lag_seconds_bucket", (("le", "1.0"),))]
        )

    async with relay_stack() as stack:
        before = await scrape(stack)
        block_loop(block)
        # The late probe observes as soon as the loop runs again; scrapes are
        # answered by the same loop, so one of the first few sees it.
        async with asyncio.timeout(5 * SECOND):
            while True:
                after = await scrape(stack)
                if over_a_second(after) > over_a_second(before):
                    break
    lag_sum = ("relay_event_loop_lag_seconds_sum", ())
    assert after[lag_sum] - before[lag_sum] >= block - PROBE_INTERVAL
