"""Quota arithmetic: session slots, the rolling start window, token buckets."""

from __future__ import annotations

from hypothesis import given, strategies as st

from relay.sansio.quotas import WINDOW, Denial, QuotaLedger, SessionQuota, TokenBucket


QUOTA = SessionQuota(max_sessions=2, sessions_per_minute=3)


def test_slots_are_capped_and_released() -> None:
    """The third concurrent session waits for one of the first two to end."""
    ledger = QuotaLedger()
    assert ledger.acquire("a", "s1", QUOTA, 0.0) is None
    assert ledger.acquire("a", "s2", QUOTA, 0.0) is None
    assert ledger.acquire("a", "s3", QUOTA, 0.0) == Denial("max_sessions", 5.0)
    assert ledger.acquire("b", "s4", QUOTA, 0.0) is None  # another client is unaffected
    ledger.release("a", "s1")
    ledger.release("a", "s1")  # idempotent
    assert ledger.sessions("a") == 1
    assert ledger.acquire("a", "s3", QUOTA, 1.0) is None


def test_start_rate_uses_a_rolling_minute() -> None:
    """Starts are counted in any rolling 60 s, with retry_after when the oldest leaves."""
    ledger = QuotaLedger()
    for number, now in enumerate((0.0, 10.0, 20.0)):
        assert ledger.acquire("a", f"s{number}", QUOTA, now) is None
        ledger.release("a", f"s{number}")
    assert ledger.acquire("a", "s3", QUOTA, 30.0) == Denial("sessions_per_minute", 30.0)
    assert ledger.acquire("a", "s3", QUOTA, WINDOW + 0.5) is None


def test_refused_attempts_count_nothing() -> None:
    """A refusal neither takes a slot nor counts as a start."""
    ledger = QuotaLedger()
    quota = SessionQuota(max_sessions=1, sessions_per_minute=2)
    assert ledger.acquire("a", "s1", quota, 0.0) is None
    for _ in range(10):
        assert ledger.acquire("a", "sx", quota, 1.0) is not None
    ledger.release("a", "s1")
    assert ledger.acquire("a", "s2", quota, 2.0) is None


def test_a_client_with_nothing_left_in_the_window_is_forgotten() -> None:
    """The ledger holds only clients with a slot or a recent start (its memory is bounded)."""
    ledger = QuotaLedger()
    quota = SessionQuota(max_sessions=1, sessions_per_minute=5)
    ledger.release("nobody", "s0")  # never seen: nothing to give back
    assert ledger.sessions("nobody") == 0
    assert ledger.acquire("a", "s1", quota, 0.0) is None
    ledger.release("a", "s1")
    assert "a" in ledger._clients  # its start still counts for a minute
    assert ledger.acquire("a", "s2", quota, 1.0) is None
    # A minute later the refused attempt has pruned both starts from the window.
    assert ledger.acquire("a", "s3", quota, 1.0 + WINDOW) == Denial("max_sessions", 5.0)
    ledger.release("a", "s2")
    assert "a" not in ledger._clients
    assert ledger.sessions("a") == 0


@given(
    st.lists(
        st.tuples(st.booleans(), st.floats(min_value=0, max_value=0.5)), max_size=200
    )
)
def test_ledger_never_exceeds_its_quota(steps: list[tuple[bool, float]]) -> None:
    """For any acquire/release sequence, slots and starts stay within the quota."""
    ledger = QuotaLedger()
    quota = SessionQuota(max_sessions=3, sessions_per_minute=5)
    live: list[str] = []
    starts: list[float] = []
    now = 0.0
    for index, (acquire, step) in enumerate(steps):
        now += step
        if acquire:
            if ledger.acquire("c", f"s{index}", quota, now) is None:
                live.append(f"s{index}")
                starts.append(now)
        elif live:
            ledger.release("c", live.pop(0))
        assert len(live) <= quota.max_sessions
        assert len([t for t in starts if t > now - WINDOW]) <= quota.sessions_per_minute


def test_token_bucket_refills_at_its_rate() -> None:
    """Burst first, then the sustained rate; never more than the burst."""
    bucket = TokenBucket(rate=10.0, burst=20.0, now=0.0)
    assert sum(bucket.take(1, 0.0) for _ in range(25)) == 20
    assert not bucket.take(1, 0.05)
    assert bucket.take(1, 0.1)
    assert sum(bucket.take(1, 100.0) for _ in range(25)) == 20
    assert not bucket.take(21, 200.0)  # larger than the burst: never
