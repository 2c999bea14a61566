"""Failover at session start: attempt order, which refusals move on, Retry-After."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, strategies as st

from relay.sansio.breaker import Breaker
from relay.sansio.failover import (
    Plan,
    fails_over,
    plan_attempts,
    retry_after_seconds,
    weighted_order,
)


def always(value: float) -> Callable[[], float]:
    """A random source stuck at ``value``."""
    return lambda: value


def sequence(*values: float) -> Callable[[], float]:
    """A random source playing ``values`` in turn."""
    it: Iterator[float] = itertools.cycle(values)
    return lambda: next(it)


def breakers(count: int) -> list[Breaker]:
    """Fresh breakers: three failures open them for 10 s."""
    return [
        Breaker(failures_to_open=3, cooldown=10.0, max_hold=300.0) for _ in range(count)
    ]


def trip(breaker: Breaker, now: float) -> None:
    """Open ``breaker`` at ``now`` with three failures."""
    for _ in range(3):
        attempt = breaker.begin(now, force=True)
        assert attempt is not None
        breaker.failed(attempt, now)


class TestWeightedOrder:
    @pytest.mark.parametrize(
        ("weights", "values", "expected"),
        [
            ([1, 1], (0.0,), [0, 1]),
            ([1, 1], (0.99,), [1, 0]),
            ([1, 2], (0.0,), [0, 1]),
            ([1, 2], (0.34,), [1, 0]),  # 0.34 * 3 = 1.02: past the first weight
            ([1, 2], (0.33,), [0, 1]),
            ([1, 1, 1], (0.5, 0.0), [1, 0, 2]),
            ([5], (0.7,), [0]),
            ([], (0.5,), []),
        ],
    )
    def test_table(
        self, weights: list[int], values: tuple[float, ...], expected: list[int]
    ) -> None:
        """Each draw takes the index whose weight band the random value falls in."""
        assert weighted_order(weights, sequence(*values)) == expected

    def test_zero_keeps_the_configured_order(self) -> None:
        """A source stuck at 0 gives the order as configured (deterministic tests)."""
        assert weighted_order([3, 1, 2, 1], always(0.0)) == [0, 1, 2, 3]

    def test_rounding_never_overshoots(self) -> None:
        """A value just below 1 still picks an index."""
        assert weighted_order([1, 1, 1], always(0.9999999999999999)) == [2, 1, 0]

    def test_an_overshooting_draw_takes_the_last_index_in_play(self) -> None:
        """Weights past a float's exact integers can leave the draw past every bound."""
        weights = [10**15 - 3, 10**16 - 3]
        assert weighted_order(weights, always(0.9999999999999999)) == [1, 0]

    def test_weights_below_one_are_refused(self) -> None:
        """A weight of 0 would never be tried first: config forbids it, so does this."""
        with pytest.raises(ValueError, match="weights"):
            weighted_order([1, 0], always(0.0))

    def test_heavier_goes_first_in_proportion(self) -> None:
        """Weight 2 against 1: first about two thirds of the time."""
        source = random.Random(7)
        firsts = Counter(weighted_order([1, 2], source.random)[0] for _ in range(6000))
        assert 0.63 < firsts[1] / 6000 < 0.70

    @given(
        st.lists(st.integers(min_value=1, max_value=100), max_size=16),
        st.lists(st.floats(min_value=0, max_value=1, exclude_max=True), min_size=1),
    )
    def test_always_a_permutation(
        self, weights: list[int], values: list[float]
    ) -> None:
        """Whatever the source says, every index appears exactly once."""
        order = weighted_order(weights, sequence(*values))
        assert sorted(order) == list(range(len(weights)))


class TestPlan:
    def test_healthy_upstreams_in_weighted_order(self) -> None:
        """All closed: every upstream, in the weighted order."""
        assert plan_attempts(breakers(3), [1, 1, 1], 0.0, always(0.0)) == Plan(
            (0, 1, 2)
        )

    def test_open_upstreams_are_skipped(self) -> None:
        """An open breaker's upstream is left out while others can be tried."""
        pool = breakers(3)
        trip(pool[0], 0.0)
        assert plan_attempts(pool, [1, 1, 1], 1.0, always(0.0)).order == (1, 2)

    def test_half_open_upstreams_take_part(self) -> None:
        """After the cool-down the upstream is back in the draw (for its trial)."""
        pool = breakers(2)
        trip(pool[0], 0.0)
        assert plan_attempts(pool, [1, 1], 10.0, always(0.0)).order == (0, 1)

    def test_all_open_tries_the_one_whose_cooldown_ends_first(self) -> None:
        """Rather than failing untried, force the upstream closest to half-open."""
        pool = breakers(3)
        trip(pool[0], 2.0)
        trip(pool[1], 1.0)
        trip(pool[2], 3.0)
        assert plan_attempts(pool, [1, 1, 1], 4.0, always(0.0)) == Plan(
            (1,), forced=True
        )

    def test_held_upstreams_are_never_forced(self) -> None:
        """A Retry-After is honoured even when everything else is open."""
        pool = breakers(2)
        trip(pool[0], 0.0)
        attempt = pool[1].begin(0.0)
        assert attempt is not None
        pool[1].failed(attempt, 0.0, retry_after=5.0, status=429)
        assert plan_attempts(pool, [1, 1], 1.0, always(0.0)) == Plan((0,), forced=True)

    def test_all_held_means_no_attempt(self) -> None:
        """Every upstream asked to wait: no attempt, and when the first wait ends."""
        pool = breakers(2)
        for breaker, (wait, status) in zip(
            pool, [(30.0, 503), (5.0, 429)], strict=True
        ):
            attempt = breaker.begin(0.0)
            assert attempt is not None
            breaker.failed(attempt, 0.0, retry_after=wait, status=status)
        assert plan_attempts(pool, [1, 1], 1.0, always(0.0)) == Plan(
            (), held_until=5.0, held_status=429
        )

    def test_one_upstream_is_always_tried_unless_held(self) -> None:
        """A single-upstream deployment behaves as before pools: always tried."""
        pool = breakers(1)
        trip(pool[0], 0.0)
        assert plan_attempts(pool, [1], 1.0, always(0.5)).order == (0,)

    @pytest.mark.parametrize(("count", "weights"), [(0, []), (2, [1])])
    def test_mismatched_inputs_are_refused(
        self, count: int, weights: list[int]
    ) -> None:
        """One weight per breaker, at least one breaker."""
        with pytest.raises(ValueError, match="one weight per breaker"):
            plan_attempts(breakers(count), weights, 0.0, always(0.0))


@pytest.mark.parametrize(
    ("status", "moves_on"),
    [
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (429, True),
        (401, True),
        (403, True),
        (400, False),
        (404, False),
        (408, False),
        (409, False),
        (422, False),
    ],
)
def test_which_refusals_fail_over(status: int, moves_on: bool) -> None:
    """5xx, 429 and the relay's own credential failures move on; the client's errors do not."""
    assert fails_over(status) is moves_on


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("7", 7.0),
        (" 30 ", 30.0),
        ("0", 0.0),
        ("-5", None),
        ("1.5", None),
        ("\u00b2", None),  # a digit to str.isdigit, not to float()
        ("soon", None),
        ("", None),
        (
            format_datetime(datetime(2026, 1, 1, 12, 0, 42, tzinfo=UTC), usegmt=True),
            42.0,
        ),
        (format_datetime(datetime(2026, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True), 0.0),
        ("Thu, 01 Jan 2026 12:00:10", None),  # no zone: not an HTTP-date
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    """Delay-seconds or an HTTP-date; anything else is ignored."""
    assert retry_after_seconds(value, now_epoch=NOW) == seconds


@given(st.text(max_size=40))
def test_retry_after_never_crashes(value: str) -> None:
    """Any header value is a delay of at least 0, or nothing."""
    seconds = retry_after_seconds(value, now_epoch=NOW)
    assert seconds is None or seconds >= 0
