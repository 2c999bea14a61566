"""Every fault switch, injected into real connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.protocol import State

from relay.simulator import Simulator
from tests.helpers.timing import SECOND, within
from tests.simulator.helpers import KEY, receive, receive_until, session, ws_url


PREVIEW_URL = ("/openai/realtime", "api-version=2025-04-01-preview&deployment=dep")


async def start_response(ws: ClientConnection) -> list[dict[str, object]]:
    """Skip the greeting, ask for a response, return events up to its first audio delta."""
    await receive_until(ws, "session.created")
    await ws.send(json.dumps({"type": "response.create"}))
    return await receive_until(ws, "response.audio.delta")


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing arrives for ``seconds`` and the connection stays open."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await ws.recv()
    assert ws.state is State.OPEN


class TestHandshakeFaults:
    async def test_refuse_with_status_headers_and_default_body(self) -> None:
        """The next handshake gets 429 + Retry-After + an Azure-style body; then it works."""
        async with Simulator.start(api_keys={KEY}) as sim:
            sim.faults.refuse(429, headers={"Retry-After": "2"})
            with pytest.raises(InvalidStatus) as refusal:
                async with session(sim):
                    pass
            response = refusal.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "2"
            assert json.loads(bytes(response.body)) == {
                "error": {"code": "429", "message": "Too Many Requests"}
            }
            async with session(sim) as ws:
                assert (await receive(ws))["type"] == "session.created"
            assert [record.status for record in sim.stats.handshakes] == [429, 101]

    async def test_refuse_several_with_a_custom_body(self) -> None:
        """count refusals in a row, with the given body and Content-Type override."""
        async with Simulator.start(api_keys={KEY}) as sim:
            sim.faults.refuse(
                503, headers={"Content-Type": "text/plain"}, body="busy", count=2
            )
            for _ in range(2):
                with pytest.raises(InvalidStatus) as refusal:
                    async with session(sim):
                        pass
                assert refusal.value.response.status_code == 503
                assert bytes(refusal.value.response.body) == b"busy"
                assert refusal.value.response.headers.get_all("Content-Type") == [
                    "text/plain"
                ]
            async with session(sim) as ws:
                await receive(ws)

    async def test_handshake_delay_times_clients_out(self) -> None:
        """A delayed handshake answer trips the client's open timeout; shutdown is prompt."""
        loop = asyncio.get_running_loop()
        async with Simulator.start(api_keys={KEY}) as sim:
            sim.faults.handshake_delay = 30
            with pytest.raises(TimeoutError):
                async with connect(
                    ws_url(sim, *PREVIEW_URL),
                    additional_headers={"api-key": KEY},
                    open_timeout=0.2,
                ):
                    pass
            stopping = loop.time()
        # At once: not after the 30 s delay, nor the server's 10 s open timeout.
        assert loop.time() - stopping < within(0, 5 * SECOND)

    async def test_delay_is_read_per_handshake(self) -> None:
        """A delay applies while set; the handshake then succeeds."""
        async with Simulator.start(api_keys={KEY}) as sim:
            sim.faults.handshake_delay = delay = 0.2
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session(sim) as ws:
                assert loop.time() - started >= delay
                await receive(ws)


# Mid-session faults act on the first delta; the rest may stream at once.
UNPACED: dict[str, Any] = {"api_keys": {KEY}, "audio_speed": None}


class TestMidSessionFaults:
    async def test_close_mid_response(self) -> None:
        """The socket closes with the given code right after the first audio delta."""
        async with Simulator.start(**UNPACED) as sim:
            sim.faults.close_mid_response = 4000
            async with session(sim) as ws:
                await start_response(ws)
                with pytest.raises(ConnectionClosed):
                    await receive(ws)
                assert ws.close_code == 4000
            await sim.wait_idle(timeout=5 * SECOND)
            assert sim.faults.close_mid_response is None  # One-shot.

    async def test_reset_mid_response(self) -> None:
        """The TCP connection is aborted: no close frame reaches the client."""
        async with Simulator.start(**UNPACED) as sim:
            sim.faults.reset_mid_response = True
            async with session(sim) as ws:
                await start_response(ws)
                with pytest.raises(ConnectionClosedError) as closed:
                    await receive(ws)
                assert closed.value.rcvd is None
            await sim.wait_idle(timeout=5 * SECOND)
            assert sim.stats.connections_closed == 1

    async def test_stall_after_session_created(self) -> None:
        """session.created arrives, then nothing (not even an answer)."""
        async with Simulator.start(**UNPACED) as sim:
            sim.faults.stall_after_session_created = True
            async with session(sim) as ws:
                assert (await receive(ws))["type"] == "session.created"
                await ws.send(json.dumps({"type": "response.create"}))
                await assert_silent(ws)
            await sim.wait_idle(timeout=5 * SECOND)

    async def test_stall_mid_response(self) -> None:
        """After the first audio delta the server goes quiet but keeps the socket."""
        async with Simulator.start(**UNPACED) as sim:
            sim.faults.stall_mid_response = True
            async with session(sim) as ws:
                await start_response(ws)
                await assert_silent(ws)
                async with asyncio.timeout(5 * SECOND):
                    await ws.ping()  # The connection itself is alive.
            await sim.wait_idle(timeout=5 * SECOND)
            async with session(
                sim
            ) as ws:  # One-shot: the next session streams normally.
                await start_response(ws)
                assert (await receive_until(ws, "response.done"))[-1]["response"][
                    "status"
                ] == "completed"

    async def test_oversized_frame(self) -> None:
        """The first audio delta is padded (valid JSON) to exactly the requested size."""
        size = 2 * 2**20
        async with Simulator.start(**UNPACED) as sim:
            sim.faults.oversized_frame_bytes = size
            async with session(sim) as ws:
                await receive_until(ws, "session.created")
                await ws.send(json.dumps({"type": "response.create"}))
                async with asyncio.timeout(5 * SECOND):
                    while True:
                        message = await ws.recv()
                        if json.loads(message)["type"] == "response.audio.delta":
                            break
                assert len(message) == size
                events = await receive_until(ws, "response.done")
                deltas = [e for e in events if e["type"] == "response.audio.delta"]
                assert all(len(json.dumps(e)) < 20_000 for e in deltas)

    async def test_faults_set_after_connecting_apply(self) -> None:
        """Switches are read when they apply, not when the connection opened."""
        async with Simulator.start(**UNPACED) as sim, session(sim) as ws:
            await receive_until(ws, "session.created")
            sim.faults.update({"close_mid_response": 1011})
            await ws.send(json.dumps({"type": "response.create"}))
            await receive_until(ws, "response.audio.delta")
            with pytest.raises(ConnectionClosed):
                await receive(ws)
            assert ws.close_code == 1011
