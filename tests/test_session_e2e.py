"""Relayed sessions end to end: turns, close propagation, upstream faults, vanishing peers."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.config import LimitsSettings
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.servers import Stack, relay_stack
from tests.helpers.timing import MARGIN, SECOND, within


SPEECH = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)


async def speak(ws: ClientConnection, pcm: bytes = SPEECH, chunk: int = 4800) -> None:
    """Send ``pcm`` as 100 ms appends, as an app streaming a microphone would."""
    for offset in range(0, len(pcm), chunk):
        await send_event(ws, append_event(pcm[offset : offset + chunk]))


async def wait_closed(
    ws: ClientConnection, stack: Stack, margin: float = MARGIN
) -> int | None:
    """Wait for the relay to close ``ws``; return the close code received.

    The relay sends its close at once; the closing handshake is bounded by
    ``flow.close_timeout``.
    """
    async with asyncio.timeout(within(stack.settings.flow.close_timeout, margin)):
        await ws.wait_closed()
    return ws.close_code


async def start_turn(stack: Stack, ws: ClientConnection) -> None:
    """Read the opening events, then speak so the server VAD starts a response."""
    assert (await receive_event(ws))["type"] == "session.created"
    await speak(ws)


class TestTurns:
    async def test_spoken_turn_on_the_preview_protocol(self) -> None:
        """Speech in, VAD, committed turn, audio and transcript out, usage at the end."""
        async with relay_stack() as stack, connect_relay(stack.preview_url()) as ws:
            await start_turn(stack, ws)
            events = await events_until(ws, "response.done")
            types = [event["type"] for event in events]
            for expected in (
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "response.created",
                "response.audio.delta",
                "response.audio_transcript.delta",
            ):
                assert expected in types
            audio = b"".join(
                base64.b64decode(e["delta"])
                for e in events
                if e["type"] == "response.audio.delta"
            )
            assert len(audio) >= 24_000  # at least half a second of PCM16
            assert events[-1]["response"]["usage"]["total_tokens"] > 0

    async def test_spoken_turn_on_the_ga_protocol(self) -> None:
        """The GA family's event names come through the GA path."""
        async with relay_stack() as stack, connect_relay(stack.ga_url()) as ws:
            await start_turn(stack, ws)
            types = [event["type"] for event in await events_until(ws, "response.done")]
            assert "response.output_audio.delta" in types
            assert "response.audio.delta" not in types

    async def test_binary_client_frames_are_refused_by_the_relay(self) -> None:
        """The protocol is JSON text: the relay answers a binary frame itself and goes on."""
        async with relay_stack() as stack, connect_relay(stack.preview_url()) as ws:
            await receive_event(ws)
            await ws.send(b"\x00\x01binary")
            event = (await events_until(ws, "error"))[-1]
            # The relay's answer, not the simulator's ("unsupported_binary_frame").
            assert event["error"]["code"] == "invalid_event"
            assert event["event_id"].startswith("event_relay_")
            await send_event(ws, {"type": "input_audio_buffer.clear"})
            assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"

    async def test_a_16_mib_client_message_is_accepted(self) -> None:
        """Messages up to the 16 MiB default pass (Azure allows 15 MiB appends)."""
        async with relay_stack() as stack, connect_relay(stack.preview_url()) as ws:
            await receive_event(ws)
            head = '{"type":"relay.test.large","pad":"'
            message = head + "x" * (16 * 1024 * 1024 - len(head) - 2) + '"}'
            assert len(message) == 16 * 1024 * 1024
            await ws.send(message)
            # The upstream received it whole: it names the unknown type it parsed.
            event = (await events_until(ws, "error", within=20 * SECOND))[-1]
            assert event["error"]["param"] == "type"
            assert "relay.test.large" in event["error"]["message"]


class TestClosePropagation:
    async def test_client_close_closes_the_upstream_leg(self) -> None:
        """When the client leaves, the upstream connection is closed promptly."""
        async with relay_stack() as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
            # At once: the upstream leg's closing handshake is bounded by close_timeout.
            await stack.simulator.wait_idle(
                timeout=within(stack.settings.flow.close_timeout)
            )
            assert stack.simulator.stats.connections_closed == 1

    @pytest.mark.parametrize(
        ("upstream_code", "client_code"),
        [(1000, 1000), (1011, 1011), (1001, 1001), (4001, 4001), (1002, 1011)],
    )
    async def test_upstream_close_reaches_the_client_mapped(
        self, upstream_code: int, client_code: int
    ) -> None:
        """An upstream close mid-response closes the client within a second, mapped."""
        async with relay_stack() as stack:
            stack.simulator.faults.close_mid_response = upstream_code
            async with connect_relay(stack.preview_url()) as ws:
                await start_turn(stack, ws)
                started = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    await events_until(ws, "response.done")
                assert await wait_closed(ws, stack) == client_code
                took = time.monotonic() - started
                assert took < within(stack.settings.flow.close_timeout)
                assert len((ws.close_reason or "").encode()) <= 123
            await stack.settle()

    async def test_upstream_reset_is_a_bad_gateway(self) -> None:
        """An upstream that vanishes without a close frame: the client gets 1014 within a second."""
        async with relay_stack() as stack:
            stack.simulator.faults.reset_mid_response = True
            async with connect_relay(stack.preview_url()) as ws:
                await start_turn(stack, ws)
                with pytest.raises(ConnectionClosed):
                    await events_until(ws, "response.done")
                assert await wait_closed(ws, stack) == 1014
            await stack.settle()

    async def test_oversized_upstream_message_is_1009(self) -> None:
        """An upstream message over the relay's limit ends the session with 1009, not a hang."""
        async with relay_stack(
            limits=LimitsSettings(max_message_bytes=64 * 1024)
        ) as stack:
            stack.simulator.faults.oversized_frame_bytes = 64 * 1024 + 1
            async with connect_relay(stack.preview_url()) as ws:
                await start_turn(stack, ws)
                with pytest.raises(ConnectionClosed):
                    await events_until(ws, "response.done")
                assert await wait_closed(ws, stack, margin=2 * SECOND) == 1009
            await stack.settle()

    async def test_vanishing_client_spares_other_sessions(self) -> None:
        """A client that resets its TCP connection ends only its own session and upstream leg."""
        async with relay_stack() as stack:
            async with connect_relay(stack.preview_url()) as survivor:
                await receive_event(survivor)
                victim = await connect_relay(stack.preview_url())
                await receive_event(victim)
                assert stack.simulator.stats.connections_active == 2
                # Abort: RST, no close frame.
                victim.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET,
                    socket.SO_LINGER,
                    b"\x01\x00\x00\x00\x00\x00\x00\x00",
                )
                victim.transport.abort()
                async with asyncio.timeout(within(0)):  # at once
                    await stack.relay.app.endpoint.wait_connections(at_most=1)
                await speak(survivor)
                types = [
                    e["type"] for e in await events_until(survivor, "response.done")
                ]
                assert "response.audio.delta" in types
            await stack.settle()
            assert (
                stack.simulator.stats.connections_opened
                == stack.simulator.stats.connections_closed
                == 2
            )


class TestUpstreamRefusals:
    @pytest.mark.parametrize(
        ("upstream", "client"),
        [(401, 502), (403, 502), (500, 502), (502, 502), (503, 503)],
    )
    async def test_refusals_become_http_answers(
        self, upstream: int, client: int
    ) -> None:
        """The client gets an HTTP status before upgrade, never an accepted socket."""
        async with relay_stack() as stack:
            stack.simulator.faults.refuse(upstream)
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == client
            body = json.loads(info.value.response.body or b"{}")
            assert body["error"]["message"]
            await stack.settle()

    async def test_throttling_keeps_retry_after(self) -> None:
        """429 stays 429 and Azure's Retry-After reaches the client."""
        async with relay_stack() as stack:
            stack.simulator.faults.refuse(429, headers={"Retry-After": "7"})
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == 429
            assert info.value.response.headers["Retry-After"] == "7"

    @pytest.mark.parametrize("status", [400, 404])
    async def test_client_errors_keep_status_and_body(self, status: int) -> None:
        """Azure's own 400/404 explanation is passed on."""
        body = json.dumps(
            {
                "error": {
                    "code": "OpperationNotSupported",
                    "message": "not a realtime model",
                }
            }
        )
        async with relay_stack() as stack:
            stack.simulator.faults.refuse(status, body=body)
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == status
            assert json.loads(info.value.response.body or b"") == json.loads(body)

    async def test_upstream_down_is_502(self) -> None:
        """Nothing listening upstream: 502 at once."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        async with relay_stack(upstream_url=f"http://127.0.0.1:{closed_port}") as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.ga_url()):
                    pass
            assert info.value.response.status_code == 502
            await stack.settle()

    async def test_upstream_handshake_timeout_is_504(self) -> None:
        """An upstream that does not answer within connect_timeout: 504, and no leg left open."""
        connect_timeout = 0.3
        async with relay_stack(connect_timeout=connect_timeout) as stack:
            stack.simulator.faults.handshake_delay = 10
            started = time.monotonic()
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == 504
            took = time.monotonic() - started
            assert connect_timeout <= took < within(connect_timeout)
            stack.simulator.faults.handshake_delay = 0
            await stack.settle()
