"""Graceful drain of a real relay process: SIGTERM and /internal/drain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from relay.config import DrainSettings, load_settings
from relay.simulator import Simulator
from tests.helpers.clients import connect_relay, events_until, receive_event, send_event
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.timing import SECOND, within


KEY = "drain-test-client-key"
UPSTREAM_KEY = "drain-test-upstream-key"
DRAIN = DrainSettings(grace_seconds=3.0, propagation_delay=1.0)


def config(upstream: str, notice: str = "event") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}", limits: {{max_sessions: 100}}, drain_notice: {notice}}}
drain: {{grace_seconds: {DRAIN.grace_seconds}, propagation_delay: {DRAIN.propagation_delay}}}
log: {{format: json, level: info}}
"""


@asynccontextmanager
async def running(
    tmp_path: Path, notice: str = "event"
) -> AsyncIterator[tuple[Simulator, RelayProcess]]:
    async with AsyncExitStack() as stack:
        simulator = await stack.enter_async_context(
            Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None)
        )
        path = tmp_path / "relay.yaml"
        path.write_text(config(simulator.url, notice))
        env = {"UPSTREAM_KEY": UPSTREAM_KEY}
        assert load_settings(path, env).drain == DRAIN  # what the bounds derive from
        relay = await stack.enter_async_context(relay_process(path, env))
        yield simulator, relay


def ws_url(relay: RelayProcess) -> str:
    return f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime"


async def readyz(relay: RelayProcess) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{relay.port}/readyz")).status_code


async def test_sigterm_with_50_sessions(tmp_path: Path) -> None:
    """readyz 503 within 1 s; sessions go on, get a notice, then close 1012 at the deadline; exit 0."""
    async with running(tmp_path) as (simulator, relay):
        sessions: list[ClientConnection] = []
        for _ in range(50):
            ws = await connect_relay(ws_url(relay), key=KEY)
            assert (await receive_event(ws))["type"] == "session.created"
            sessions.append(ws)
        assert await readyz(relay) == 200
        # Read before the signal: the relay's drain clock starts after it.
        signalled = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        # Polled: readiness is the relay process's own state. At once.
        async with asyncio.timeout(within(0)):
            for _ in range(100):
                if await readyz(relay) == 503:
                    break
                await asyncio.sleep(0.01)
        assert await readyz(relay) == 503
        # Every session is told, and still works during the grace period.
        for ws in sessions:
            notice = (await events_until(ws, "relay.draining"))[-1]
            assert 0 < notice["grace_ms"] <= DRAIN.grace_seconds * 1000
        await send_event(sessions[0], {"type": "input_audio_buffer.clear"})
        assert (await events_until(sessions[0], "input_audio_buffer.cleared"))[-1][
            "type"
        ] == "input_audio_buffer.cleared"
        # Past the propagation delay (on the relay's clock) handshakes get 503.
        refusal: InvalidStatus | None = None
        async with asyncio.timeout(within(DRAIN.propagation_delay, 2 * SECOND)):
            for _ in range(100):
                try:
                    async with connect_relay(ws_url(relay), key=KEY) as late:
                        await receive_event(late)
                except InvalidStatus as exc:
                    refusal = exc
                    break
                await asyncio.sleep(0.1)
        assert refusal is not None
        assert time.monotonic() - signalled >= DRAIN.propagation_delay
        assert refusal.response.status_code == 503
        assert refusal.response.headers["Retry-After"] == "1"
        assert json.loads(refusal.response.body or b"")["error"]["code"] == "draining"
        # At the deadline every session is closed with 1012: not before it, and
        # then at once (50 closing handshakes on a busy machine: the margin).
        codes = []
        async with asyncio.timeout(within(DRAIN.grace_seconds, 5 * SECOND)):
            for ws in sessions:
                await ws.wait_closed()
                codes.append(ws.close_code)
        assert set(codes) == {1012}
        closed_after = time.monotonic() - signalled
        assert (
            DRAIN.grace_seconds
            <= closed_after
            < within(DRAIN.grace_seconds, 2 * SECOND)
        )
        async with asyncio.timeout(10 * SECOND):
            assert await relay.process.wait() == 0
        await simulator.wait_idle(timeout=5 * SECOND)
        assert simulator.stats.connections_opened == simulator.stats.connections_closed


async def test_sigterm_without_sessions_exits_at_once(tmp_path: Path) -> None:
    """Nothing to wait for: the process is gone promptly, exit status 0."""
    async with running(tmp_path) as (_, relay):
        started = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0
        # At once (the margin is uvicorn's shutdown and the process's exit): a
        # relay that waited out the grace period fails.
        assert time.monotonic() - started < within(0, 2 * SECOND)


async def test_sessions_ending_early_let_the_drain_finish_early(tmp_path: Path) -> None:
    """The drain ends when the last session does, before the grace period."""
    async with running(tmp_path) as (_, relay):
        ws = await connect_relay(ws_url(relay), key=KEY)
        await receive_event(ws)
        signalled = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        await events_until(ws, "relay.draining")
        closed = time.monotonic()
        await ws.close()
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0
        exited = time.monotonic()
        # At once after the last session; a drain that waited out the grace
        # period would exit at its deadline, never before.
        assert exited - closed < within(0, 2 * SECOND)
        assert exited - signalled < DRAIN.grace_seconds


async def test_prestop_drain_endpoint(tmp_path: Path) -> None:
    """GET /internal/drain?wait=1 on the metrics port drains, and answers when drained."""
    async with running(tmp_path) as (_, relay):
        ws = await connect_relay(ws_url(relay), key=KEY)
        await receive_event(ws)
        async with httpx.AsyncClient(
            timeout=within(DRAIN.grace_seconds, 20 * SECOND)
        ) as http:
            assert (
                await http.get(f"http://127.0.0.1:{relay.port}/internal/drain")
            ).status_code == 404
            waiting = asyncio.ensure_future(
                http.get(f"http://127.0.0.1:{relay.metrics_port}/internal/drain?wait=1")
            )
            await events_until(ws, "relay.draining")
            await ws.close()
            response = await waiting
        assert response.status_code == 200
        assert response.json()["drained"] is True
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0


async def test_prestop_on_an_idle_relay_holds_for_the_propagation_delay(
    tmp_path: Path,
) -> None:
    """With no session, the preStop drain still keeps the pod for the propagation delay.

    Stale endpoints keep sending handshakes meanwhile: one arriving then is
    served, and the drain waits for its session too.
    """
    async with running(tmp_path) as (_, relay):
        async with httpx.AsyncClient(
            timeout=within(DRAIN.grace_seconds + DRAIN.propagation_delay, 20 * SECOND)
        ) as http:
            started = time.monotonic()
            waiting = asyncio.ensure_future(
                http.get(f"http://127.0.0.1:{relay.metrics_port}/internal/drain?wait=1")
            )
            # Late traffic from an endpoint not yet updated: still served, and
            # told right after session.created that this replica is draining.
            # (Served at all, it arrived within the propagation delay on the
            # relay's clock: later handshakes get 503, see the SIGTERM test.)
            ws = await connect_relay(ws_url(relay), key=KEY)
            kinds = [
                event["type"] for event in await events_until(ws, "relay.draining")
            ]
            assert kinds == ["session.created", "relay.draining"]
            assert not waiting.done()
            await ws.close()
            closed = time.monotonic() - started
            response = await waiting
            held = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["drained"] is True
        # Drained once both the delay has passed and the session has ended.
        promised = max(DRAIN.propagation_delay, closed)
        assert DRAIN.propagation_delay <= held < within(promised, 2 * SECOND)
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0


async def test_prestop_on_an_idle_relay_answers_after_the_propagation_delay(
    tmp_path: Path,
) -> None:
    """No session at all: the hook answers, and the process exits, after the delay, not before."""
    async with running(tmp_path) as (_, relay):
        async with httpx.AsyncClient(
            timeout=within(DRAIN.propagation_delay, 20 * SECOND)
        ) as http:
            started = time.monotonic()
            response = await http.get(
                f"http://127.0.0.1:{relay.metrics_port}/internal/drain?wait=1"
            )
            held = time.monotonic() - started
        assert response.json()["drained"] is True
        assert (
            DRAIN.propagation_delay
            <= held
            < within(DRAIN.propagation_delay, 2 * SECOND)
        )
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0


async def test_drain_notice_as_an_error_event(tmp_path: Path) -> None:
    """A client configured with drain_notice: error is told with a standard error event."""
    async with running(tmp_path, notice="error") as (_, relay):
        ws = await connect_relay(ws_url(relay), key=KEY)
        assert (await receive_event(ws))["type"] == "session.created"
        relay.process.send_signal(signal.SIGTERM)
        notice = await receive_event(ws)
        assert notice["type"] == "error"
        assert notice["error"]["code"] == "relay_draining"
        assert notice["error"]["type"] == "server_error"
        # The session goes on until the client leaves.
        await send_event(ws, {"type": "input_audio_buffer.clear"})
        assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
        await ws.close()
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0


async def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    """Impatient operators win: the second SIGTERM closes what is left with 1012."""
    async with running(tmp_path) as (_, relay):
        ws = await connect_relay(ws_url(relay), key=KEY)
        await receive_event(ws)
        signalled = time.monotonic()
        relay.process.send_signal(signal.SIGTERM)
        await events_until(ws, "relay.draining")
        relay.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(within(DRAIN.grace_seconds, 5 * SECOND)):
            await ws.wait_closed()
        assert ws.close_code == 1012
        # Before the grace deadline: a relay that ignored the second signal
        # would close the session at the deadline, never before.
        assert time.monotonic() - signalled < DRAIN.grace_seconds
        async with asyncio.timeout(5 * SECOND):
            assert await relay.process.wait() == 0


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_drain_endpoint_methods(tmp_path: Path, method: str) -> None:
    """Only GET and POST start a drain."""
    async with running(tmp_path) as (_, relay), httpx.AsyncClient() as http:
        response = await http.request(
            method, f"http://127.0.0.1:{relay.metrics_port}/internal/drain"
        )
        assert response.status_code == 405
        assert await readyz(relay) == 200
