"""The circuit breaker of one upstream: states, trials, holds, stale results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from relay.sansio.breaker import Attempt, Breaker, BreakerState


CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
COOLDOWN = 10.0


def breaker() -> Breaker:
    """Three failures open it for ten seconds; holds last at most a minute."""
    return Breaker(failures_to_open=3, cooldown=COOLDOWN, max_hold=60.0)


def ticket(subject: Breaker, now: float) -> Attempt:
    """A ticket that must be issued."""
    attempt = subject.begin(now)
    assert attempt is not None
    return attempt


# One step: (action, time, Retry-After); actions begin and report one attempt
# at once ("ok", "fail", "abandon"), or only look ("state").
Step = tuple[str, float, float | None]


def play(subject: Breaker, steps: list[Step]) -> list[BreakerState]:
    """Run ``steps``; return the state after each, at its time."""
    states: list[BreakerState] = []
    for action, now, retry_after in steps:
        if action != "state":
            attempt = ticket(subject, now)
            if action == "ok":
                subject.succeeded(attempt)
            elif action == "fail":
                subject.failed(attempt, now, retry_after=retry_after, status=429)
            else:
                subject.abandoned(attempt)
        states.append(subject.state(now))
    return states


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [("fail", 0, None), ("fail", 1, None), ("fail", 2, None)],
            [CLOSED, CLOSED, OPEN],
            id="three failures in a row open it",
        ),
        pytest.param(
            [
                ("fail", 0, None),
                ("fail", 1, None),
                ("ok", 2, None),
                ("fail", 3, None),
                ("fail", 4, None),
            ],
            [CLOSED, CLOSED, CLOSED, CLOSED, CLOSED],
            id="a success resets the count",
        ),
        pytest.param(
            [
                ("fail", 0, None),
                ("fail", 0, None),
                ("abandon", 0, None),
                ("fail", 0, None),
            ],
            [CLOSED, CLOSED, CLOSED, OPEN],
            id="an abandoned attempt neither counts nor resets",
        ),
        pytest.param(
            [("fail", 0, None)] * 3
            + [("state", COOLDOWN - 0.001, None), ("state", COOLDOWN, None)],
            [CLOSED, CLOSED, OPEN, OPEN, HALF_OPEN],
            id="open for the cool-down, then half-open",
        ),
        pytest.param(
            [("fail", 0, None)] * 3 + [("ok", COOLDOWN, None)],
            [CLOSED, CLOSED, OPEN, CLOSED],
            id="a trial's success closes it",
        ),
        pytest.param(
            [("fail", 0, None)] * 3
            + [("fail", 12, None), ("state", 12 + COOLDOWN - 0.001, None)]
            + [("state", 12 + COOLDOWN, None)],
            [CLOSED, CLOSED, OPEN, OPEN, OPEN, HALF_OPEN],
            id="a trial's failure opens it for a fresh cool-down",
        ),
        pytest.param(
            [("fail", 0, 5.0), ("state", 4.999, None), ("state", 5, None)],
            [OPEN, OPEN, CLOSED],
            id="Retry-After holds it, then it is closed again",
        ),
        pytest.param(
            [
                ("fail", 0, None),
                ("fail", 0, None),
                ("fail", 0, 25.0),
                ("state", COOLDOWN, None),
                ("state", 25, None),
            ],
            [CLOSED, CLOSED, OPEN, OPEN, HALF_OPEN],
            id="a hold longer than the cool-down delays the trial",
        ),
        pytest.param(
            [("fail", 0, 3600.0), ("state", 59.999, None), ("state", 60, None)],
            [OPEN, OPEN, CLOSED],
            id="holds are capped at max_hold",
        ),
        pytest.param(
            [("fail", 0, -5.0), ("state", 0, None)],
            [CLOSED, CLOSED],
            id="a negative Retry-After holds nothing",
        ),
    ],
)
def test_state_timeline(steps: list[Step], expected: list[BreakerState]) -> None:
    """Each row: attempts reported in order, and the state after each."""
    assert play(breaker(), steps) == expected


def test_metric_values() -> None:
    """The gauge reads 0 closed, 1 half-open, 2 open."""
    assert (int(CLOSED), int(HALF_OPEN), int(OPEN)) == (0, 1, 2)


class TestTickets:
    def test_open_breaker_issues_no_ticket(self) -> None:
        """Until the cool-down ends, begin says no."""
        subject = breaker()
        play(subject, [("fail", 0, None)] * 3)
        assert subject.begin(5.0) is None
        assert not subject.available(5.0)
        assert subject.ready_at() == COOLDOWN

    def test_one_trial_at_a_time(self) -> None:
        """Half-open lets one trial through; the next waits for its result."""
        subject = breaker()
        play(subject, [("fail", 0, None)] * 3)
        trial = ticket(subject, COOLDOWN)
        assert trial.trial
        assert subject.begin(COOLDOWN) is None
        assert subject.state(COOLDOWN) == HALF_OPEN
        subject.abandoned(trial)
        assert ticket(subject, COOLDOWN + 1).trial

    def test_forced_ticket_on_an_open_breaker_is_a_trial(self) -> None:
        """With no better upstream the caller may force an attempt; it decides like a trial."""
        subject = breaker()
        play(subject, [("fail", 0, None)] * 3)
        forced = subject.begin(1.0, force=True)
        assert forced is not None
        assert forced.trial
        subject.succeeded(forced)
        assert subject.state(1.0) == CLOSED

    def test_forced_failure_reopens_from_now(self) -> None:
        """A failed forced attempt restarts the cool-down."""
        subject = breaker()
        play(subject, [("fail", 0, None)] * 3)
        forced = subject.begin(4.0, force=True)
        assert forced is not None
        subject.failed(forced, 4.0)
        assert subject.ready_at() == 4.0 + COOLDOWN

    def test_closed_tickets_are_not_trials(self) -> None:
        """Attempts on a closed breaker flow freely."""
        subject = breaker()
        attempts = [ticket(subject, 0.0) for _ in range(10)]
        assert not any(attempt.trial for attempt in attempts)


class TestStaleResults:
    def test_results_from_before_the_opening_are_ignored(self) -> None:
        """A slow success that began before the breaker opened does not close it."""
        subject = breaker()
        slow = ticket(subject, 0.0)
        play(subject, [("fail", 1, None)] * 3)
        subject.succeeded(slow)
        assert subject.state(2.0) == OPEN
        subject.failed(slow, 2.0)
        assert subject.ready_at() == 1 + COOLDOWN

    def test_a_stale_retry_after_is_still_honoured(self) -> None:
        """Azure's Retry-After is current whenever the attempt began."""
        subject = breaker()
        slow = ticket(subject, 0.0)
        play(subject, [("fail", 1, None)] * 3)
        subject.failed(slow, 2.0, retry_after=30.0, status=429)
        assert subject.state(20.0) == OPEN
        assert (subject.hold_until, subject.hold_status) == (32.0, 429)

    def test_a_shorter_hold_never_shortens_a_longer_one(self) -> None:
        """The latest end wins, with its status."""
        subject = breaker()
        play(subject, [("fail", 0, 30.0)])
        subject.failed(ticket_anyway(subject, 1.0), 1.0, retry_after=2.0, status=503)
        assert (subject.hold_until, subject.hold_status) == (30.0, 429)


def ticket_anyway(subject: Breaker, now: float) -> Attempt:
    """A forced ticket (the breaker may be holding)."""
    attempt = subject.begin(now, force=True)
    assert attempt is not None
    return attempt


@pytest.mark.parametrize(
    "options",
    [
        {"failures_to_open": 0},
        {"cooldown": -1.0},
        {"max_hold": -1.0},
        {"cooldown": math.nan},
    ],
)
def test_invalid_bounds_are_refused(options: dict[str, float]) -> None:
    """A breaker that could never open, or opens into the past, is a bug."""
    with pytest.raises(ValueError, match="failures_to_open"):
        Breaker(**options)  # type: ignore[arg-type]


@dataclass
class _Issued:
    attempt: Attempt
    forced: bool


@dataclass
class _Run:
    """What the property test knows independently of the breaker."""

    subject: Breaker = field(default_factory=breaker)
    now: float = 0.0
    hold_end: float = -math.inf
    out: list[_Issued] = field(default_factory=list)


_RETRY_AFTER = st.none() | st.floats(min_value=0, max_value=120)
_OUTCOME = st.sampled_from(["succeed", "fail", "fail", "abandon"])
_OPS = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=0, max_value=15)),
    # Begin and report at once: the common, sequential case.
    st.tuples(st.just("try"), _OUTCOME, _RETRY_AFTER),
    # Begin now, report later: concurrent session starts.
    st.tuples(st.just("begin"), st.booleans()),
    st.tuples(
        st.just("report"), _OUTCOME, _RETRY_AFTER, st.integers(min_value=0, max_value=7)
    ),
)


def _check_invariants(run: _Run) -> None:
    subject, now = run.subject, run.now
    state = subject.state(now)
    if state == OPEN:
        assert not subject.available(now)
    if state == CLOSED:
        assert subject.available(now)
    if now < run.hold_end:
        assert state == OPEN
        assert not subject.available(now)
    if state == HALF_OPEN:
        assert subject.open_until is not None
        assert subject.open_until <= now
    # Half-open: at most one trial issued without force is in flight.
    trials = [
        issued
        for issued in run.out
        if issued.attempt.trial
        and not issued.forced
        and issued.attempt.epoch == subject.epoch
    ]
    assert len(trials) <= 1


def _step(run: _Run, op: tuple[object, ...]) -> None:
    subject = run.subject
    kind = op[0]
    if kind == "advance":
        assert isinstance(op[1], float)
        run.now += op[1]
        return
    if kind in ("begin", "try"):
        forced = kind == "begin" and bool(op[1])
        available = subject.available(run.now)
        attempt = subject.begin(run.now, force=forced)
        assert (attempt is not None) == (available or forced)
        if attempt is not None:
            run.out.append(_Issued(attempt, forced))
        if kind == "begin" or attempt is None:
            return
        _report(run, run.out.pop(), op[1], op[2])
        return
    if run.out:
        assert isinstance(op[3], int)
        _report(run, run.out.pop(op[3] % len(run.out)), op[1], op[2])


def _report(run: _Run, issued: _Issued, outcome: object, retry_after: object) -> None:
    subject = run.subject
    current = issued.attempt.epoch == subject.epoch
    was_closed = subject.open_until is None
    if outcome == "succeed":
        subject.succeeded(issued.attempt)
        if current and not subject.held(run.now):
            assert subject.state(run.now) == CLOSED
    elif outcome == "fail":
        assert retry_after is None or isinstance(retry_after, float)
        last_straw = (
            current and was_closed and subject.failures == subject.failures_to_open - 1
        )
        # Tickets of the current epoch on an open breaker are trials.
        trial_failed = current and not was_closed
        subject.failed(issued.attempt, run.now, retry_after=retry_after)
        if retry_after is not None:
            run.hold_end = max(run.hold_end, run.now + min(retry_after, 60.0))
        if last_straw or trial_failed:
            # Just opened (or reopened): closed for a whole cool-down from now.
            assert subject.state(run.now) == OPEN
            assert subject.ready_at() >= run.now + COOLDOWN
    else:
        subject.abandoned(issued.attempt)


@settings(max_examples=400)
@given(st.lists(_OPS, max_size=60))
def test_any_sequence_keeps_the_breaker_honest(ops: list[tuple[object, ...]]) -> None:
    """Open never admits, closed always does, holds hold, one trial at a time,
    the last straw opens for a full cool-down, a current success closes."""
    run = _Run()
    for op in ops:
        _step(run, op)
        _check_invariants(run)
