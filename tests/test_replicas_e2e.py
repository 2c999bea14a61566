"""Two relay processes sharing limits in a real Redis: one cap, and a killed replica's slots come back."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from relay.config import load_settings
from relay.service.limits_redis import PROBE_INTERVAL
from relay.simulator import Simulator
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.redis_server import RedisServer, running_redis
from tests.helpers.timing import SECOND, within


KEY = "replica-test-client-key"
UPSTREAM_KEY = "replica-test-upstream-key"
LEASE = 3.0


def config(redis_url: str, upstream: str, failure_mode: str = "fail_closed") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - id: app-a
    key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"
    limits: {{max_sessions: 2}}
limits:
  backend: redis
  redis_url: {redis_url}
  lease_seconds: {LEASE}
  failure_mode: {failure_mode}
log: {{format: json, level: info}}
"""


async def admitted(address: str, refused_with: int, within: float) -> float:
    """Open and close a session as soon as the relay admits it; seconds it took.

    Lease expiry and Redis recovery happen on a real clock, so this polls,
    bounded in time and count; every refusal must carry ``refused_with``.
    """
    started = time.monotonic()
    async with asyncio.timeout(within):
        for _ in range(1000):
            status = 101
            try:
                async with connect_relay(address, key=KEY) as ws:
                    await receive_event(ws)
            except InvalidStatus as exc:
                status = exc.response.status_code
            if status == 101:
                return time.monotonic() - started
            assert status == refused_with
            await asyncio.sleep(0.05)
    raise AssertionError("never admitted")


def url(relay: RelayProcess) -> str:
    return f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime"


@asynccontextmanager
async def replicas(
    tmp_path: Path, count: int, failure_mode: str = "fail_closed"
) -> AsyncIterator[tuple[RedisServer, Simulator, list[RelayProcess]]]:
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(running_redis())
        simulator = await stack.enter_async_context(
            Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None)
        )
        path = tmp_path / "relay.yaml"
        path.write_text(config(redis.url, simulator.url, failure_mode))
        env = {"UPSTREAM_KEY": UPSTREAM_KEY}
        # What the bounds derive from.
        assert load_settings(path, env).limits.lease_seconds == LEASE
        relays = [
            await stack.enter_async_context(relay_process(path, env))
            for _ in range(count)
        ]
        yield redis, simulator, relays


async def test_the_cap_holds_across_two_replicas(tmp_path: Path) -> None:
    """Two sessions on replica A: the client's third, on replica B, is 429 and opens nothing upstream."""
    async with replicas(tmp_path, 2) as (_, simulator, (a, b)):
        async with (
            connect_relay(url(a), key=KEY) as one,
            connect_relay(url(a), key=KEY) as two,
        ):
            await receive_event(one)
            await receive_event(two)
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(url(b), key=KEY):
                    pass
            assert info.value.response.status_code == 429
            assert len(simulator.stats.handshakes) == 2
        # Released when the sessions end: B can take the slots now.
        await admitted(url(b), refused_with=429, within=5 * SECOND)


async def test_a_killed_replicas_slots_come_back_within_the_lease(
    tmp_path: Path,
) -> None:
    """kill -9 replica A holding both slots: B admits the client again within lease_seconds."""
    async with replicas(tmp_path, 2) as (_, _, (a, b)):
        one = await connect_relay(url(a), key=KEY)
        two = await connect_relay(url(a), key=KEY)
        await receive_event(one)
        await receive_event(two)
        a.kill()
        took = await admitted(url(b), refused_with=429, within=LEASE + 5 * SECOND)
        assert took < within(LEASE)
        for ws in (one, two):
            ws.transport.abort()


async def test_redis_going_away_and_coming_back(tmp_path: Path) -> None:
    """Fail closed: new sessions 503 and /readyz 503 while Redis is down; live sessions go on."""
    async with (
        replicas(tmp_path, 1) as (redis, _, (relay,)),
        connect_relay(url(relay), key=KEY) as live,
    ):
        await receive_event(live)
        await redis.stop()
        with pytest.raises(InvalidStatus) as info:
            async with connect_relay(url(relay), key=KEY):
                pass
        assert info.value.response.status_code == 503
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{relay.port}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["limits"]["reachable"] is False
        # The live session is unaffected.
        await live.send('{"type":"input_audio_buffer.clear"}')
        assert (await receive_event(live))["type"] == "input_audio_buffer.cleared"
        await redis.start()
        # The backend probes Redis once every PROBE_INTERVAL; the margin is the
        # probe's round trip and a fresh session through a second process.
        await admitted(
            url(relay), refused_with=503, within=within(PROBE_INTERVAL, 4 * SECOND)
        )
