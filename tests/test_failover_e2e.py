"""Upstream pools end to end: failover at session start, breakers, Retry-After, metrics."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
from structlog.testing import capture_logs
from websockets.exceptions import InvalidStatus

from relay.config import FailoverSettings, LimitsSettings
from tests.helpers.clients import connect_relay, events_until, receive_event
from tests.helpers.pools import PoolStack, closed_port_url, pool_stack, upstream_name
from tests.helpers.timing import SECOND, within


FAST = FailoverSettings(failures_to_open=3, cooldown_seconds=60.0)
"""Opens after three failures and stays open for the whole test."""
COOLDOWN = 0.5 * SECOND


async def start_session(stack: PoolStack) -> None:
    """Open a session on the pooled deployment, see it start, close it."""
    async with connect_relay(stack.ga_url()) as ws:
        assert (await receive_event(ws))["type"] == "session.created"
    await stack.settle()


async def start_session_while(stack: PoolStack) -> None:
    """Like :func:`start_session`, while another session stays open."""
    async with connect_relay(stack.ga_url()) as ws:
        assert (await receive_event(ws))["type"] == "session.created"


async def refused(url: str) -> InvalidStatus:
    """The handshake refusal the relay answers ``url`` with."""
    with pytest.raises(InvalidStatus) as info:
        async with connect_relay(url):
            pass
    return info.value


async def let_time_pass(seconds: float) -> None:
    """Wait out a cool-down or a Retry-After: the behaviour under test is time itself."""
    await asyncio.sleep(seconds)


class TestFailover:
    async def test_a_503_upstream_fails_over_and_its_breaker_opens(self) -> None:
        """The issue's acceptance: sessions start on the second upstream, the
        first stops seeing attempts once its breaker opens, and metrics show it."""
        async with pool_stack(failover=FAST) as stack:
            stack.simulators[0].faults.refuse(503, count=100)
            with capture_logs() as logs:
                for _ in range(5):
                    await start_session(stack)
            assert stack.attempts(0) == [503, 503, 503]
            assert stack.attempts(1) == [101] * 5
            # Each upstream is asked for its own deployment name.
            assert {h.query["model"] for h in stack.simulators[1].stats.handshakes} == {
                "pool-1"
            }
            assert stack.connects(0, "refused") == 3
            assert stack.connects(1, "ok") == 5
            assert stack.breaker(0) == 2
            assert stack.breaker(1) == 0
            assert stack.sample("relay_upstream_failovers_total") == 3
            failovers = [
                entry for entry in logs if entry["event"] == "upstream.failover"
            ]
            assert len(failovers) == 3
            assert failovers[0]["upstream"] == upstream_name(0)
            assert failovers[0]["next_upstream"] == upstream_name(1)
            assert failovers[0]["reason"] == "503"
            assert "upstream-key" not in repr(logs)
            # Readiness never depends on upstream health.
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{stack.relay.port}/readyz")
            assert ready.status_code == 200

    async def test_metrics_exist_before_the_first_session(self) -> None:
        """Every upstream's attempt and breaker series start at 0."""
        async with pool_stack() as stack:
            for index in (0, 1):
                assert stack.connects(index, "ok") == 0
                assert stack.connects(index, "refused") == 0
                assert stack.breaker(index) == 0
            assert (
                stack.sample(
                    "relay_upstream_connect_total",
                    upstream="gpt-4o-realtime-preview/0",
                    result="timeout",
                )
                == 0
            )
            assert stack.sample("relay_upstream_failovers_total") == 0

    async def test_a_down_upstream_fails_over(self) -> None:
        """Nothing listening on the first upstream: sessions start on the second."""
        async with pool_stack(urls={0: closed_port_url()}, failover=FAST) as stack:
            for _ in range(4):
                await start_session(stack)
            assert stack.connects(0, "unavailable") == 3
            assert stack.connects(1, "ok") == 4
            assert stack.breaker(0) == 2

    async def test_a_slow_upstream_times_out_and_fails_over(self) -> None:
        """Each attempt is bounded by connect_timeout; the next upstream still fits."""
        # Scaled: a healthy upstream's handshake must fit in it, however busy
        # the machine.
        connect_timeout = 0.3 * SECOND
        async with pool_stack(connect_timeout=connect_timeout) as stack:
            stack.simulators[0].faults.handshake_delay = 5 * SECOND
            started = time.monotonic()
            await start_session(stack)
            # Two attempts, each bounded by connect_timeout: the first cut at
            # it, the second done well within it.
            took = time.monotonic() - started
            assert connect_timeout <= took < within(2 * connect_timeout)
            assert stack.connects(0, "timeout") == 1
            assert stack.connects(1, "ok") == 1
            stack.simulators[0].faults.handshake_delay = 0
            await stack.settle()

    async def test_the_handshake_budget_bounds_all_attempts(self) -> None:
        """Two slow upstreams: 504 within handshake_timeout; the cut attempt is abandoned."""
        limits = LimitsSettings(handshake_timeout=1.0 * SECOND)
        async with pool_stack(connect_timeout=0.8 * SECOND, limits=limits) as stack:
            for simulator in stack.simulators:
                simulator.faults.handshake_delay = 5 * SECOND
            started = time.monotonic()
            error = await refused(stack.ga_url())
            assert error.response.status_code == 504
            took = time.monotonic() - started
            budget = limits.handshake_timeout
            assert budget <= took < within(budget)
            assert stack.connects(0, "timeout") == 1
            assert stack.connects(1, "abandoned") == 1
            assert stack.breaker(1) == 0
            for simulator in stack.simulators:
                simulator.faults.handshake_delay = 0

    @pytest.mark.parametrize("status", [401, 403, 500, 502])
    async def test_other_retryable_refusals_fail_over(self, status: int) -> None:
        """5xx, and 401/403 (the relay's credentials are wrong *there*), move on."""
        async with pool_stack() as stack:
            stack.simulators[0].faults.refuse(status)
            await start_session(stack)
            assert stack.attempts(0) == [status]
            assert stack.connects(0, "refused") == 1
            assert stack.connects(1, "ok") == 1

    @pytest.mark.parametrize("status", [400, 404])
    async def test_client_errors_are_not_retried(self, status: int) -> None:
        """A 400 or 404 judges the client's request: answered at once, no failover."""
        body = json.dumps({"error": {"code": "BadRequest", "message": "no"}})
        async with pool_stack() as stack:
            stack.simulators[0].faults.refuse(status, body=body)
            error = await refused(stack.ga_url())
            assert error.response.status_code == status
            assert json.loads(error.response.body or b"") == json.loads(body)
            assert stack.attempts(1) == []
            assert stack.breaker(0) == 0
            assert stack.sample("relay_upstream_failovers_total") == 0

    async def test_when_every_upstream_fails_the_last_failure_answers(self) -> None:
        """The client gets the last attempt's mapped status, with its Retry-After."""
        async with pool_stack() as stack:
            stack.simulators[0].faults.refuse(503)
            stack.simulators[1].faults.refuse(429, headers={"Retry-After": "3"})
            error = await refused(stack.ga_url())
            assert error.response.status_code == 429
            assert error.response.headers["Retry-After"] == "3"
            assert stack.sample("relay_upstream_failovers_total") == 1

    async def test_weights_spread_first_attempts(self) -> None:
        """With a real random source, weight 3 against 1 takes most sessions."""
        async with pool_stack(weights=[1, 3]) as stack:
            stack.relay.app.endpoint.upstreams.random = random.Random(11).random
            for _ in range(40):
                await start_session(stack)
            first, second = len(stack.attempts(0)), len(stack.attempts(1))
            assert first + second == 40
            assert 20 < second < 40


class TestBreaker:
    async def test_it_half_opens_after_the_cooldown_and_a_trial_closes_it(self) -> None:
        """Open after three failures, then one trial: its success brings traffic back."""
        failover = FailoverSettings(failures_to_open=3, cooldown_seconds=COOLDOWN)
        async with pool_stack(failover=failover) as stack:
            stack.simulators[0].faults.refuse(503, count=3)
            for _ in range(4):
                await start_session(stack)
            assert stack.attempts(0) == [503, 503, 503]
            assert stack.breaker(0) == 2
            await let_time_pass(COOLDOWN)
            assert stack.breaker(0) == 1
            await start_session(stack)
            assert stack.attempts(0) == [503, 503, 503, 101]
            assert stack.breaker(0) == 0
            await start_session(stack)
            assert stack.attempts(0)[-1] == 101

    async def test_a_failed_trial_opens_it_again(self) -> None:
        """The trial fails: open for a fresh cool-down, the session still starts elsewhere."""
        failover = FailoverSettings(failures_to_open=2, cooldown_seconds=COOLDOWN)
        async with pool_stack(failover=failover) as stack:
            stack.simulators[0].faults.refuse(503, count=3)
            for _ in range(2):
                await start_session(stack)
            await let_time_pass(COOLDOWN)
            await start_session(stack)
            assert stack.attempts(0) == [503, 503, 503]
            assert stack.breaker(0) == 2
            assert stack.attempts(1) == [101] * 3

    async def test_all_open_still_tries_rather_than_failing_untried(self) -> None:
        """Both breakers open: the one whose cool-down ends first is tried anyway."""
        async with pool_stack(failover=FAST) as stack:
            for simulator in stack.simulators:
                simulator.faults.refuse(503, count=3)
            for _ in range(3):
                await refused(stack.ga_url())
            assert (stack.breaker(0), stack.breaker(1)) == (2, 2)
            await start_session(stack)
            assert stack.attempts(0) == [503, 503, 503, 101]
            assert stack.breaker(0) == 0

    async def test_retry_after_holds_the_upstream(self) -> None:
        """A 429's Retry-After: no attempt there until it passes, then it is used again."""
        retry_after = 1
        async with pool_stack(failover=FAST) as stack:
            stack.simulators[0].faults.refuse(
                429, headers={"Retry-After": str(retry_after)}
            )
            await start_session(stack)
            assert stack.breaker(0) == 2
            await start_session(stack)
            assert stack.attempts(0) == [429]
            await let_time_pass(retry_after)
            assert stack.breaker(0) == 0
            await start_session(stack)
            assert stack.attempts(0) == [429, 101]
            assert stack.attempts(1) == [101, 101]

    async def test_a_held_single_upstream_is_not_asked_again(self) -> None:
        """One upstream, throttled: the client is told to wait, and Azure is left alone."""
        async with pool_stack() as stack:
            stack.simulators[0].faults.refuse(429, headers={"Retry-After": "30"})
            first = await refused(stack.preview_url())
            assert first.response.headers["Retry-After"] == "30"
            second = await refused(stack.preview_url())
            assert second.response.status_code == 429
            assert 1 <= int(second.response.headers["Retry-After"]) <= 30
            assert stack.attempts(0) == [429]

    async def test_an_established_session_is_never_moved(self) -> None:
        """A breaker opening does not touch sessions already running on that upstream."""
        async with pool_stack(failover=FAST) as stack:
            async with connect_relay(stack.ga_url()) as running:
                assert (await receive_event(running))["type"] == "session.created"
                stack.simulators[0].faults.refuse(503, count=3)
                for _ in range(3):
                    await start_session_while(stack)
                assert stack.breaker(0) == 2
                await running.send(json.dumps({"type": "response.create"}))
                await events_until(running, "response.done")
            await stack.settle()
            assert stack.attempts(0) == [101, 503, 503, 503]
            assert stack.simulators[0].stats.connections_opened == 1
