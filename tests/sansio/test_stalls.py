"""Stall arithmetic: the loop's lost time, and a blocked leg's window without progress."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from relay.sansio.stalls import LoopLag, StallWatch


ROUNDING = 1e-9
"""Float rounding of sums of seconds: far below anything a clock would notice."""


class TestLoopLag:
    def test_a_punctual_probe_loses_nothing(self) -> None:
        """A probe that fires when due (or early) measures no lag; the clock is the loop's."""
        lag = LoopLag()
        assert lag.responsive(5.0) == 5.0
        lag.scheduled(1.0)
        assert lag.fired(1.0) == 0.0
        lag.scheduled(2.0)
        assert lag.fired(1.999) == 0.0
        assert lag.responsive(3.0) == 3.0

    def test_a_late_probe_stops_the_clock_for_its_lateness(self) -> None:
        """The loop blocked from 1.0 to 4.0: the responsive clock shows 3 s less from then on."""
        lag = LoopLag()
        lag.scheduled(1.0)
        assert lag.fired(4.0) == 3.0
        assert lag.responsive(4.0) == 1.0
        assert lag.responsive(6.5) == 3.5

    def test_an_overdue_probe_counts_before_it_fires(self) -> None:
        """Read by a timer that runs before the late probe, the clock already excludes the block."""
        lag = LoopLag()
        lag.scheduled(1.0)
        assert lag.responsive(0.5) == 0.5
        assert lag.responsive(4.0) == 1.0  # the probe has not run yet
        assert lag.fired(4.0) == 3.0
        assert lag.responsive(4.0) == 1.0  # the same reading once it has

    def test_a_cancelled_probe_leaves_the_clock_running(self) -> None:
        """A probe that will never fire does not freeze the clock; lost time so far stays lost."""
        lag = LoopLag()
        lag.scheduled(1.0)
        lag.fired(2.0)
        lag.scheduled(2.1)
        lag.cancelled()
        assert lag.responsive(10.0) == 9.0
        assert lag.fired(10.0) == 0.0  # nothing pending: nothing measured

    @given(
        st.lists(
            st.tuples(
                st.floats(min_value=0.01, max_value=1.0),
                st.floats(min_value=0.0, max_value=5.0),
            ),
            max_size=50,
        ),
        st.floats(min_value=0.0, max_value=1.0),
    )
    def test_the_clock_never_runs_backwards_or_ahead(
        self, probes: list[tuple[float, float]], step: float
    ) -> None:
        """Read at any times between probes, the clock is monotonic and never ahead of the loop's."""
        lag = LoopLag()
        now = 0.0
        last = lag.responsive(now)
        for interval, late in probes:
            lag.scheduled(now + interval)
            fired_at = now + interval + late
            # Readings while the probe is pending, then when it fires.
            while now < fired_at:
                now = min(fired_at, now + step + 0.01)
                reading = lag.responsive(now)
                assert last - ROUNDING <= reading <= now
                last = reading
            lag.fired(now)
            assert lag.responsive(now) == pytest.approx(last, abs=ROUNDING)


def armed(watch: StallWatch) -> bool:
    # Read through a call: mypy would keep the property narrowed between asserts.
    return watch.armed


class TestStallWatch:
    def test_a_peer_that_takes_nothing_stalls_after_the_timeout(self) -> None:
        """Blocked at 0 and never any progress: reported at the first look at or after 2 s, once."""
        watch = StallWatch(2.0)
        watch.blocked(0.0)
        assert armed(watch)
        assert not watch.look(1.0, 500_000)
        assert not watch.look(1.9, 500_000)
        assert watch.look(2.0, 500_000)
        assert not armed(watch)
        assert not watch.look(3.0, 500_000)
        watch.blocked(3.0)  # still over the mark: not reported twice
        assert not armed(watch)

    def test_progress_restarts_the_window(self) -> None:
        """A peer that reads a little before each look is never reported."""
        watch = StallWatch(2.0)
        watch.blocked(0.0)
        pending = 500_000
        for second in range(1, 20):
            pending -= 100  # 100 bytes a second: slow, but reading
            assert not watch.look(float(second), pending)
        # Then it stops: 2 s after the last look that saw progress.
        assert not watch.look(20.0, pending)
        assert watch.look(21.0, pending)

    def test_more_to_send_is_not_progress(self) -> None:
        """Bytes added while blocked (a ping) do not count as the peer reading."""
        watch = StallWatch(2.0)
        watch.blocked(0.0)
        assert not watch.look(1.0, 500_000)
        assert not watch.look(1.5, 500_006)
        assert watch.look(2.0, 500_006)

    def test_the_first_look_only_takes_a_reference(self) -> None:
        """What was pending when blocked is unknown: the first look cannot see progress."""
        watch = StallWatch(2.0)
        watch.blocked(0.0)
        assert not watch.look(1.0, 10)
        assert watch.look(2.0, 10)

    def test_draining_disarms_and_rearms(self) -> None:
        """Under the low-water mark again, the window is gone; a new block starts a new one."""
        watch = StallWatch(2.0)
        watch.blocked(0.0)
        assert not watch.look(1.5, 10)
        watch.unblocked()
        assert not armed(watch)
        assert not watch.look(2.5, 10)
        watch.blocked(3.0)
        watch.blocked(4.0)  # idempotent: the window started at 3.0
        assert not watch.look(4.5, 10)
        assert watch.look(5.0, 10)
        watch.unblocked()  # a report, then a drain: the next block is watched again
        watch.blocked(6.0)
        assert armed(watch)
