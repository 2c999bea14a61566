"""Garbage on an accepted client connection: a raw socket against a real relay.

Whatever bytes a client sends after the handshake, the relay answers with a
close code (1002, 1007 or 1009) or waits for the rest of a frame; it never
crashes, its upstream leg is always closed, and other sessions carry on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import time
from urllib.parse import urlsplit

import pytest

from relay.config import ClientLimits
from relay.ws.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    build_frame,
    close_payload,
)
from relay.ws.leg import FRAMES_PER_TURN, REFUSED_PAUSE
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.events import flat
from tests.helpers.servers import CLIENT_KEY, Stack, clients_with, relay_stack
from tests.helpers.timing import SECOND


async def raw_session(
    stack: Stack,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client on a plain socket, upgraded, with session.created read."""
    url = urlsplit(stack.ga_url())
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"api-key: {CLIENT_KEY}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    await read_frame(reader)  # session.created
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """The code of the relay's close frame, or ``None`` if the connection just ended."""
    while True:
        try:
            opcode, payload = await read_frame(reader)
        except asyncio.IncompleteReadError:
            return None
        if opcode == CLOSE:
            return int.from_bytes(payload[:2], "big") if payload else 1005


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (build_frame(TEXT, b'{"type":"x"}', mask=False), 1002),  # unmasked
        (bytes([0xC1, 0x80]) + os.urandom(4), 1002),  # RSV1 without an extension
        (bytes([0x83, 0x80]) + os.urandom(4), 1002),  # reserved opcode
        (bytes([0x89, 0xFE, 0x01, 0x00]) + os.urandom(4), 1002),  # 256-byte ping
        (bytes([0x80, 0x80]) + os.urandom(4), 1002),  # continuation of nothing
        (build_frame(TEXT, b"\xc3\x28", mask=True), 1007),  # invalid UTF-8
        (build_frame(CLOSE, close_payload(1006, ""), mask=True), 1002),
        (bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 62) + os.urandom(4), 1009),
        # RFC 6455 §5.2: a 64-bit length's most significant bit must be 0, and
        # lengths use the shortest encoding (such a frame is never forwarded).
        (bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + os.urandom(4), 1002),
        (bytes([0x81, 0xFE, 0, 2]) + b"\0" * 4 + b"{}", 1002),
        (bytes([0x81, 0xFF]) + struct.pack("!Q", 2) + b"\0" * 4 + b"{}", 1002),
        # Invalid UTF-8 in the first fragment: refused with no final fragment.
        (bytes([0x01, 0x82]) + b"\0" * 4 + b"{\xff", 1007),
    ],
    ids=[
        "unmasked",
        "rsv1",
        "opcode",
        "big-ping",
        "stray-continuation",
        "utf8",
        "reserved-close-code",
        "huge-length",
        "length-msb",
        "non-minimal-16",
        "non-minimal-64",
        "utf8-fragment",
    ],
)
async def test_protocol_garbage_gets_its_close_code(garbage: bytes, code: int) -> None:
    async with relay_stack() as stack:
        async with connect_relay(stack.ga_url()) as survivor:
            await receive_event(survivor)
            reader, writer = await raw_session(stack)
            writer.write(garbage)
            async with asyncio.timeout(3 * SECOND):
                assert await close_code(reader) == code
                # The upstream leg of the broken session is closed.
                await stack.relay.app.endpoint.wait_connections(at_most=1)
            writer.close()
            # The other session still relays.
            await survivor.send('{"type": "input_audio_buffer.clear"}')
            async with asyncio.timeout(3 * SECOND):
                assert (await receive_event(survivor))["type"] == (
                    "input_audio_buffer.cleared"
                )
        await stack.settle()


async def test_frames_before_a_protocol_error_in_the_same_read_are_relayed() -> None:
    """A valid event and a violation in one write: the event reaches Azure, then 1002."""
    async with relay_stack() as stack:
        reader, writer = await raw_session(stack)
        event = b'{"type":"input_audio_buffer.clear","event_id":"before-the-error"}'
        writer.write(build_frame(TEXT, event, mask=True) + bytes([0xC1, 0x80]))
        async with asyncio.timeout(3 * SECOND):
            assert await close_code(reader) == 1002
        writer.close()
        await stack.settle()
        cleared = stack.simulator.stats.events_of_type("input_audio_buffer.clear")
        assert [e.get("event_id") for e in cleared] == ["before-the-error"]


async def test_a_message_over_the_byte_rate_is_refused_at_its_header() -> None:
    """Charged when its header arrives: refused before its payload is sent, never decoded."""
    limits = ClientLimits(bytes_per_second=64 * 1024, burst_bytes=64 * 1024)
    async with relay_stack(clients=clients_with(limits=limits)) as stack:
        reader, writer = await raw_session(stack)
        # Admitted whole although larger than the burst: the session is in debt.
        audio = base64.b64encode(b"\0" * 150_000).decode()
        append = f'{{"type":"input_audio_buffer.append","audio":"{audio}"}}'
        writer.write(build_frame(TEXT, append.encode(), mask=True))
        # The next message's header alone is answered.
        refused = build_frame(TEXT, b"\xff" * 1_000_000, mask=True)
        writer.write(refused[:20])
        async with asyncio.timeout(3 * SECOND):
            opcode, payload = await read_frame(reader)
        assert opcode == TEXT
        error = json.loads(payload)
        assert (error["type"], error["error"]["code"]) == (
            "error",
            "rate_limit_exceeded",
        )
        # The rest (not even UTF-8) is dropped unread: no 1007, the session
        # goes on, and a ping sent after it is answered.
        writer.write(refused[20:] + build_frame(PING, b"after", mask=True))
        async with asyncio.timeout(3 * SECOND):
            assert await read_frame(reader) == (PONG, b"after")
        writer.close()
        await stack.settle()
        appended = stack.simulator.stats.events_of_type("input_audio_buffer.append")
        assert len(appended) == 1
        assert stack.registry.get_sample_value(
            "relay_policy_actions_total", {"action": "refuse", "field": "rate_limit"}
        )


async def test_a_client_flooding_refused_messages_is_read_at_a_pace() -> None:
    """Over its rate, a client is read one turn's frames per pause: the rest waits in TCP.

    50,000 tiny events at once, at 10 a second: without the pause the relay
    would parse and refuse them all within a few hundred turns of its loop
    (and after the client stops, whatever its kernel still holds). The count
    in the window is an upper bound on the relay's work, so a busy machine
    passes too.
    """
    limits = ClientLimits(messages_per_second=10)
    async with relay_stack(clients=clients_with(limits=limits)) as stack:
        _reader, writer = await raw_session(stack)
        writer.write(build_frame(TEXT, b"{}", mask=True) * 50_000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        # An observation window, not a wait for an event.
        await asyncio.sleep(15 * REFUSED_PAUSE)
        elapsed = loop.time() - started
        refused = stack.registry.get_sample_value(
            "relay_policy_actions_total", {"action": "refuse", "field": "rate_limit"}
        )
        assert refused is not None
        assert 0 < refused <= FRAMES_PER_TURN * (elapsed / REFUSED_PAUSE + 2)
        writer.close()
        await stack.settle()


def fragment(opcode: int, payload: bytes) -> bytes:
    """A masked frame that does not end its message (FIN clear)."""
    frame = bytearray(build_frame(opcode, payload, mask=True))
    frame[0] &= 0x7F
    return bytes(frame)


async def test_one_endless_refused_message_is_closed_with_4029() -> None:
    """Its fragments, skipped unread, keep the client over its rate: closed after the grace period (5 s)."""
    limits = ClientLimits(messages_per_second=1)
    async with relay_stack(clients=clients_with(limits=limits)) as stack:
        reader, writer = await raw_session(stack)
        for _ in range(2):  # the burst: two seconds' worth
            writer.write(build_frame(TEXT, b'{"type":"response.cancel"}', mask=True))
        writer.write(fragment(TEXT, b'{"type":"input_audio_buffer.append","audio":"'))
        codes: list[str] = []
        close: bytes | None = None
        async with asyncio.timeout(20 * SECOND):
            # A fragment every 50 ms until the relay closes (bounded: 20 s).
            for _ in range(400):
                writer.write(fragment(CONTINUATION, b"A" * 1000))
                try:
                    async with asyncio.timeout(0.05):
                        opcode, payload = await read_frame(reader)
                except TimeoutError:
                    continue
                if opcode == CLOSE:
                    close = payload
                    break
                event = json.loads(payload)
                if event["type"] == "error":
                    codes.append(event["error"]["code"])
        assert close is not None
        assert struct.unpack("!H", close[:2])[0] == 4029
        assert codes[-1] == "rate_limit_exceeded"  # the notice before the close
        writer.close()
        await stack.settle()


async def test_binary_frames_are_refused_with_an_error_event() -> None:
    async with relay_stack() as stack:
        reader, writer = await raw_session(stack)
        writer.write(build_frame(BINARY, b"\x00" * 100, mask=True))
        async with asyncio.timeout(3 * SECOND):
            opcode, payload = await read_frame(reader)
        assert opcode == TEXT
        assert b'"type":"error"' in payload.replace(b" ", b"")
        writer.close()
        await stack.settle()


async def test_random_garbage_never_crashes_the_relay() -> None:
    """Seeded random bytes, masked-looking or not, then EOF: every session ends cleanly."""
    rng = random.Random(20261124)
    async with relay_stack() as stack:
        for _ in range(40):
            reader, writer = await raw_session(stack)
            size = rng.choice([1, 2, 7, 64, 600, 5000])
            garbage = bytes(rng.getrandbits(8) for _ in range(size))
            if rng.random() < 0.5:
                garbage = (
                    bytes([garbage[0] | 0x80, garbage[1 % size] | 0x80]) + garbage[2:]
                )
            writer.write(garbage)
            writer.write_eof()
            async with asyncio.timeout(3 * SECOND):
                await close_code(reader)  # a close frame, or just the end
                await stack.relay.app.endpoint.wait_connections(at_most=0)
            writer.close()
        await stack.settle()
        assert stack.simulator.stats.connections_opened == 40
        assert stack.simulator.stats.connections_active == 0


async def test_deep_nesting_is_an_invalid_event_not_a_crash() -> None:
    """A 2 KB event of a thousand nested arrays: an error event, the session goes on, no relay error."""
    deep = (
        '{"type":"input_audio_buffer.append","audio":' + "[" * 1000 + "]" * 1000 + "}"
    )
    async with relay_stack() as stack:
        async with connect_relay(stack.ga_url()) as ws:
            await receive_event(ws)
            for _ in range(3):
                await ws.send(deep)
                error = await receive_event(ws)
                assert error["type"] == "error"
                assert error["error"]["code"] == "invalid_event"
            await ws.send('{"type": "input_audio_buffer.clear"}')
            assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
        await stack.settle()
        assert ws.close_code == 1000
        assert not stack.registry.get_sample_value(
            "relay_close_codes_total", {"side": "client", "code": "1011"}
        )


async def test_a_million_values_is_an_invalid_event_not_a_stall() -> None:
    """A million numbers, then 600,000 empty objects, within the default limits: error events, quickly."""
    # An event type the relay forwards as received: only the bound stops them.
    kind = "input_audio_buffer.clear"
    attacks = [flat("0", 1_000_000, kind), flat("{}", 600_000, kind)]
    async with relay_stack() as stack:
        async with connect_relay(stack.ga_url()) as ws:
            await receive_event(ws)
            for attack in attacks:
                # CPU time, not wall time (a speed the relay promises no
                # figure for): the relay and the simulator run in this
                # process; before the bound, each message cost them 0.8 and
                # 1.5 s, parsed twice and refused by the simulator; the check
                # costs about 11 ms.
                started = time.process_time()
                await ws.send(attack)
                error = await receive_event(ws)
                spent = time.process_time() - started
                assert error["type"] == "error"
                assert error["error"]["code"] == "invalid_event"
                assert "too many values" in error["error"]["message"]
                assert spent < 0.2
            await ws.send('{"type": "input_audio_buffer.clear"}')
            assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
        await stack.settle()
        assert ws.close_code == 1000
        assert not stack.simulator.stats.events_of_type("session.update")


async def test_a_lone_surrogate_escape_is_relayed_not_a_crash() -> None:
    """A "\\ud800" escape in an event the relay re-serializes: written back as sent, no 1011."""
    update = '{"type":"session.update","session":{"type":"realtime","instructions":"a\\ud800"}}'
    async with relay_stack() as stack:
        async with connect_relay(stack.ga_url()) as ws:
            await receive_event(ws)
            await ws.send(update)
            updated = await receive_event(ws)
            assert updated["session"]["instructions"] == "a\ud800"
            await ws.send('{"type": "input_audio_buffer.clear"}')
            assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
        await stack.settle()
        assert ws.close_code == 1000


async def test_a_ping_flood_ends_that_session_with_1008_only() -> None:
    """10,000 pings in one write: that session is closed with 1008 and counted; another carries on."""
    async with relay_stack() as stack:
        async with connect_relay(stack.ga_url()) as survivor:
            await receive_event(survivor)
            reader, writer = await raw_session(stack)
            writer.write(build_frame(PING, b"", mask=True) * 10_000)
            async with asyncio.timeout(5 * SECOND):
                assert await close_code(reader) == 1008
                await stack.relay.app.endpoint.wait_connections(at_most=1)
            writer.close()
            await survivor.send('{"type": "input_audio_buffer.clear"}')
            assert (await receive_event(survivor))[
                "type"
            ] == "input_audio_buffer.cleared"
        await stack.settle()
        assert (
            stack.registry.get_sample_value(
                "relay_close_codes_total", {"side": "client", "code": "1008"}
            )
            == 1
        )
