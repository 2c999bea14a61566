"""Configuration reload of a real relay process: the file watched, SIGHUP, live sessions undisturbed."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from relay.simulator import Simulator
from tests.helpers.clients import connect_relay, events_until, receive_event, send_event
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.timing import within


KEY_A = "reload-e2e-key-of-app-a"
KEY_B = "reload-e2e-key-of-app-b"
UPSTREAM_KEY = "reload-e2e-upstream-key"
SESSIONS = 20
PICKED_UP = 2.0
"""The promise: a change to the file is served within this (1 s poll, and the reload)."""


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(upstream: str, *, port: int = 0, with_b: bool = False) -> str:
    client_b = f'  - {{id: app-b, key_sha256: "{sha(KEY_B)}"}}\n' if with_b else ""
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{sha(KEY_A)}", limits: {{max_sessions: 100}}}}
{client_b}
log: {{format: json, level: info}}
"""


@asynccontextmanager
async def running(
    tmp_path: Path,
) -> AsyncIterator[tuple[Simulator, RelayProcess, Path]]:
    async with AsyncExitStack() as stack:
        simulator = await stack.enter_async_context(
            Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None)
        )
        path = tmp_path / "relay.yaml"
        path.write_text(config(simulator.url))
        relay = await stack.enter_async_context(
            relay_process(path, {"UPSTREAM_KEY": UPSTREAM_KEY})
        )
        yield simulator, relay, path


def ws_url(relay: RelayProcess) -> str:
    return f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime"


async def handshake_status(relay: RelayProcess, key: str) -> int:
    """101 once ``session.created`` arrives, else the HTTP status of the refusal."""
    try:
        async with connect_relay(ws_url(relay), key=key) as ws:
            event = await receive_event(ws)
    except InvalidStatus as refused:
        return refused.response.status_code
    assert event["type"] == "session.created"
    return 101


async def metric(relay: RelayProcess, line_start: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")).text
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.split()[-1])


async def generation(relay: RelayProcess) -> int:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"http://127.0.0.1:{relay.port}/readyz")).json()
    value: int = body["config"]["generation"]
    return value


async def complete_turn(ws: ClientConnection) -> None:
    await send_event(ws, {"type": "response.create"})
    done = (await events_until(ws, "response.done"))[-1]
    assert done["response"]["status"] == "completed"


async def test_a_key_added_with_20_live_sessions(tmp_path: Path) -> None:
    """The new client works within 2 s of the file change; the 20 sessions each complete a turn after, none closed."""
    async with running(tmp_path) as (simulator, relay, path), AsyncExitStack() as stack:
        sessions = []
        for _ in range(SESSIONS):
            ws = await stack.enter_async_context(
                connect_relay(ws_url(relay), key=KEY_A)
            )
            assert (await receive_event(ws))["type"] == "session.created"
            sessions.append(ws)
        assert await handshake_status(relay, KEY_B) == 401
        path.write_text(config(simulator.url, with_b=True))
        changed = time.monotonic()
        # Polled: the outcome is the relay process's own state, bounded by the promise.
        status = 0
        async with asyncio.timeout(within(PICKED_UP)):
            for _ in range(200):
                status = await handshake_status(relay, KEY_B)
                if status == 101:
                    break
                await asyncio.sleep(0.05)
        assert status == 101
        picked_up = time.monotonic() - changed
        assert picked_up < within(PICKED_UP)
        await asyncio.gather(*(complete_turn(ws) for ws in sessions))
        assert all(ws.close_code is None for ws in sessions)
        assert await generation(relay) == 2
        assert await metric(relay, 'relay_config_reload_total{result="ok"}') == 1
        assert await metric(relay, "relay_config_generation") == 2
        (reloaded,) = await relay.logged("config.reloaded", 1)
        assert reloaded["clients_added"] == ["app-b"]
        ended = await relay.logged("session.end", 0)
        assert [end for end in ended if end["client_id"] == "app-a"] == []


async def test_sighup_broken_and_refused_files_keep_the_old_generation(
    tmp_path: Path,
) -> None:
    """SIGHUP on an unchanged file is no reload; a broken file (seen by the poll, again on SIGHUP) and a port change are refused, logged and counted; the old config serves."""
    async with running(tmp_path) as (simulator, relay, path):
        relay.process.send_signal(signal.SIGHUP)
        (unchanged,) = await relay.logged("config.unchanged", 1)
        assert unchanged["trigger"] == "signal"
        path.write_text("listen: {host: 127.0.0.1, port: [\n")
        (broken,) = await relay.logged("config.reload_failed", 1)
        assert (broken["trigger"], broken["reason"]) == ("file", "invalid")
        assert broken["errors"][0].startswith(f"{path}: ")
        # The poll reports a content once; SIGHUP asks again.
        relay.process.send_signal(signal.SIGHUP)
        again = (await relay.logged("config.reload_failed", 2))[-1]
        assert (again["trigger"], again["errors"]) == ("signal", broken["errors"])
        path.write_text(config(simulator.url, port=relay.port + 1, with_b=True))
        refused = (await relay.logged("config.reload_failed", 3))[-1]
        assert refused["reason"] == "refused"
        assert refused["errors"] == [
            f"listen.port: cannot change without a restart (0 -> {relay.port + 1}): "
            "the listener is bound at start-up"
        ]
        assert await metric(relay, 'relay_config_reload_total{result="error"}') == 3
        assert await metric(relay, 'relay_config_reload_total{result="ok"}') == 0
        assert await handshake_status(relay, KEY_A) == 101
        assert await handshake_status(relay, KEY_B) == 401
        assert await generation(relay) == 1
        # SIGTERM still drains and exits 0 beside the SIGHUP handler.
        assert await relay.stop() == 0
