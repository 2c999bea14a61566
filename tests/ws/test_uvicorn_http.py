"""Request heads through a real relay (relay/ws/uvicorn_http.py): a deadline and a size limit.

Raw TCP clients on 127.0.0.1 speak HTTP/1.1 by hand, since no HTTP library will
trickle a head or send 100 KB of headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from relay.config import LimitsSettings
from relay.ws.uvicorn_http import MAX_HEAD_BYTES
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.raw_http import raw_connection as raw, refusal_counts as refusals
from tests.helpers.servers import Stack, relay_stack
from tests.helpers.timing import SECOND, within


HEALTH = b"GET /livez HTTP/1.1\r\nHost: relay\r\n"


@contextlib.asynccontextmanager
async def stack_with(header_timeout: float) -> AsyncIterator[Stack]:
    async with relay_stack(
        limits=LimitsSettings(header_timeout=header_timeout)
    ) as stack:
        yield stack


async def answer(reader: asyncio.StreamReader, seconds: float = 5 * SECOND) -> bytes:
    """Everything the relay sends until it closes the connection."""
    async with asyncio.timeout(seconds):
        return await reader.read()


async def responses(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """The status lines of ``count`` complete responses (bodies are JSON, sized)."""
    lines: list[bytes] = []
    async with asyncio.timeout(5 * SECOND):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            lines.append(head.split(b"\r\n", 1)[0])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
    return lines


class TestDeadline:
    async def test_a_silent_connection_gets_408(self) -> None:
        async with stack_with(1.0) as stack:
            deadline = stack.settings.limits.header_timeout
            # Read before connecting: the relay's clock starts on the connection.
            started = time.monotonic()
            async with raw(stack) as (reader, _):
                reply = await answer(reader)
                elapsed = time.monotonic() - started
                assert refusals(stack)["request_timeout"] == 1
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b'"code": "request_timeout"' in reply
        assert deadline <= elapsed < within(deadline)

    async def test_a_trickled_head_gets_408_although_bytes_keep_coming(self) -> None:
        async with stack_with(1.0) as stack, raw(stack) as (reader, writer):
            writer.write(HEALTH)

            async def trickle() -> None:
                # One byte every 50 ms for at most 5 s: each would have reset
                # uvicorn's keep-alive timer.
                for _ in range(100):
                    writer.write(b"X")
                    await asyncio.sleep(0.05)

            started = time.monotonic()
            async with asyncio.TaskGroup() as group:
                feeder = group.create_task(trickle())
                reply = await answer(reader)
                feeder.cancel()
            elapsed = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert elapsed < within(stack.settings.limits.header_timeout)

    async def test_a_complete_head_is_served_after_a_slow_start(self) -> None:
        async with stack_with(2.0) as stack, raw(stack) as (reader, writer):
            writer.write(HEALTH)
            await asyncio.sleep(0.5)  # slow, but within the deadline
            writer.write(b"\r\n")
            assert await responses(reader, 1) == [b"HTTP/1.1 200 OK"]

    async def test_keep_alive_requests_each_get_their_own_deadline(self) -> None:
        async with stack_with(1.0) as stack, raw(stack) as (reader, writer):
            writer.write(HEALTH + b"\r\n")
            assert await responses(reader, 1) == [b"HTTP/1.1 200 OK"]
            # Two pipelined requests are both served, with no stray 408.
            writer.write(HEALTH + b"\r\n" + HEALTH + b"\r\n")
            assert await responses(reader, 2) == [b"HTTP/1.1 200 OK"] * 2
            # A next head that never completes is refused in time.
            writer.write(HEALTH)
            started = time.monotonic()
            reply = await answer(reader)
            assert reply.startswith(b"HTTP/1.1 408 ")
            # The deadline started with the previous response, before this clock.
            took = time.monotonic() - started
            assert took < within(stack.settings.limits.header_timeout)

    async def test_slowloris_does_not_starve_real_sessions(self) -> None:
        """500 sockets trickling heads; a real session still starts, then all 500 get 408."""
        async with stack_with(3.0) as stack:
            opened = [
                await asyncio.open_connection("127.0.0.1", stack.relay.port)
                for _ in range(500)
            ]
            try:
                for _, writer in opened:
                    writer.write(
                        b"GET /openai/realtime?api-version=2024-10-01 HTTP/1.1\r\nHost: x\r\n"
                    )
                async with (
                    asyncio.timeout(5 * SECOND),
                    connect_relay(stack.ga_url()) as ws,
                ):
                    assert (await receive_event(ws))["type"] == "session.created"
                # 500 refusals to send on a busy machine: a wide margin.
                deadline = stack.settings.limits.header_timeout
                replies = await asyncio.gather(
                    *(
                        answer(reader, within(deadline, 7 * SECOND))
                        for reader, _ in opened
                    )
                )
            finally:
                for _, writer in opened:
                    writer.close()
        assert all(reply.startswith(b"HTTP/1.1 408 ") for reply in replies)
        assert len(stack.simulator.stats.handshakes) == 1


class TestSize:
    @pytest.mark.parametrize(
        "head",
        [
            HEALTH + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            b"GET /livez?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n",
            HEALTH
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))
            + b"\r\n",
        ],
        ids=["one-header", "long-url", "many-headers"],
    )
    async def test_a_head_over_the_limit_gets_431(self, head: bytes) -> None:
        async with stack_with(30.0) as stack, raw(stack) as (reader, writer):
            writer.write(head)
            reply = await answer(reader)
            assert refusals(stack) == {
                "request_timeout": 0,
                "request_header_fields_too_large": 1,
                "bad_request": 0,
            }
        assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert b"request_header_fields_too_large" in reply

    async def test_an_unfinished_head_over_the_limit_is_refused_at_once(self) -> None:
        async with stack_with(30.0) as stack, raw(stack) as (reader, writer):
            writer.write(HEALTH + b"X-Big: " + b"a" * (2 * MAX_HEAD_BYTES))
            reply = await answer(reader)  # long before the 30 s deadline
        assert reply.startswith(b"HTTP/1.1 431 ")

    async def test_a_head_just_under_the_limit_is_served(self) -> None:
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 7200) for i in range(9))
        head = HEALTH + headers + b"\r\n"
        assert MAX_HEAD_BYTES - 2000 < len(head) < MAX_HEAD_BYTES
        async with stack_with(30.0) as stack, raw(stack) as (reader, writer):
            writer.write(head)
            assert await responses(reader, 1) == [b"HTTP/1.1 200 OK"]
            assert set(refusals(stack).values()) == {0}

    async def test_an_oversized_upgrade_never_reaches_the_upstream(self) -> None:
        async with stack_with(30.0) as stack, raw(stack) as (reader, writer):
            writer.write(
                b"GET /openai/realtime HTTP/1.1\r\nHost: x\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(20))
                + b"\r\n"
            )
            reply = await answer(reader)
        assert reply.startswith(b"HTTP/1.1 431 ")
        assert stack.simulator.stats.handshakes == []

    async def test_garbage_gets_400_and_other_connections_carry_on(self) -> None:
        async with stack_with(30.0) as stack:
            async with raw(stack) as (reader, writer):
                writer.write(b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n")
                assert (await answer(reader)).startswith(b"HTTP/1.1 400 ")
            assert refusals(stack)["bad_request"] == 1
            async with raw(stack) as (reader, writer):
                writer.write(HEALTH + b"\r\n")
                assert await responses(reader, 1) == [b"HTTP/1.1 200 OK"]
