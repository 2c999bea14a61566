"""The upstream handshake client: real sockets on 127.0.0.1, canned and garbage answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.config import FlowSettings
from relay.exceptions import UpstreamRefused, UpstreamTimeout, UpstreamUnavailable
from relay.ws.frames import TEXT, build_frame
from relay.ws.upstream import UpstreamConnection, open_upstream
from tests.helpers.timing import SECOND, within


FLOW = FlowSettings(ping_interval=None, ping_timeout=None, close_timeout=0.5)
HEADERS = [("api-key", "upstream-secret"), ("x-ms-client-request-id", "r1")]

Answer = Callable[[bytes], bytes | None]
"""Given the request head, the bytes to answer (``None``: answer nothing)."""


def accept_for(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"sec-websocket-key":
            digest = hashlib.sha1(
                value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            ).digest()
            return base64.b64encode(digest).decode()
    raise AssertionError("no key in the request")


def switching(request: bytes, *extra: str) -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_for(request)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@contextlib.asynccontextmanager
async def canned(answer: Answer, *, close: bool = True) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that reads the request head and writes ``answer``."""
    requests: list[bytes] = []

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            requests.append(head)
            data = answer(head)
            if data is not None:
                writer.write(data)
                await writer.drain()
            if close:
                writer.close()
            else:
                await reader.read()  # hold the connection until the relay drops it
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"ws://127.0.0.1:{port}/openai/v1/realtime?model=m"
        server.close()


async def connect(url: str, *, seconds: float = 2 * SECOND) -> UpstreamConnection:
    """Open an upstream at ``url`` with ``seconds`` as its connect_timeout."""
    return await open_upstream(
        url,
        HEADERS,
        connect_timeout=seconds,
        max_message_bytes=1 << 20,
        flow=FLOW,
    )


async def test_the_request_carries_exactly_the_given_headers() -> None:
    seen: list[bytes] = []

    def answer(request: bytes) -> bytes:
        seen.append(request)
        return switching(request)

    async with canned(answer, close=False) as url:
        connection = await connect(url)
        await connection.close(1000, "done")
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /openai/v1/realtime?model=m HTTP/1.1"
    names = sorted(line.split(":")[0].lower() for line in lines[1:] if line)
    assert names == sorted(
        [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "api-key",
            "x-ms-client-request-id",
        ]
    )


async def test_an_event_in_the_same_read_as_the_101_is_delivered() -> None:
    event = json.dumps({"type": "session.created", "event_id": "e1"})
    frame = build_frame(TEXT, event.encode(), mask=False)
    async with canned(lambda request: switching(request) + frame, close=False) as url:
        connection = await connect(url)
        received: list[tuple[str | bytes, bytes | None]] = []
        connection.leg.attach(
            lambda data, raw, size: received.append((data, raw)),
            lambda code, reason: None,
            lambda: None,
        )
        assert received == [(event, frame)]
        assert connection.response.status == 101
        await connection.close(1000, "done")


@pytest.mark.parametrize(
    "extra",
    [
        ("Sec-WebSocket-Extensions: permessage-deflate",),
        ("Sec-WebSocket-Protocol: chat",),
    ],
)
async def test_selections_nobody_offered_are_refused(extra: tuple[str, ...]) -> None:
    async with canned(lambda request: switching(request, *extra)) as url:
        with pytest.raises(UpstreamUnavailable):
            await connect(url)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 1x1 Weird\r\n\r\n",
        b"HTTP/1.1 101 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 101 Swi",  # then the connection closes
        b"",
    ],
    ids=[
        "wrong-accept",
        "no-upgrade",
        "http-1.0",
        "not-http",
        "bad-status",
        "folded-header",
        "bad-header",
        "cut-head",
        "closed",
    ],
)
async def test_invalid_handshake_answers_are_unavailable(answer: bytes) -> None:
    async with canned(lambda request: answer) as url:
        with pytest.raises(UpstreamUnavailable):
            await connect(url)


async def test_an_endless_head_is_refused_without_buffering_it() -> None:
    async with canned(
        lambda request: b"HTTP/1.1 101 OK\r\nX: " + b"a" * 200_000
    ) as url:
        with pytest.raises(UpstreamUnavailable):
            await connect(url)


async def test_silence_is_a_timeout_within_the_bound() -> None:
    async with canned(lambda request: None, close=False) as url:
        connect_timeout = 0.3 * SECOND
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout):
            await connect(url, seconds=connect_timeout)
        took = loop.time() - started
        assert connect_timeout <= took < within(connect_timeout, 0.5 * SECOND)


async def test_nothing_listening_is_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamUnavailable):
        await connect(f"ws://127.0.0.1:{port}/x")


def refusal(status: int, body: bytes, *headers: str, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_throttled_upstream_passes_retry_after_on() -> None:
    async with canned(lambda r: refusal(429, b"{}", "Retry-After: 7")) as url:
        with pytest.raises(UpstreamRefused) as refused:
            await connect(url)
    assert refused.value.upstream_status == 429
    assert refused.value.retry_after == "7"


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
async def test_a_small_json_error_body_is_passed_on(length: bool) -> None:
    body = {"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}
    answer = refusal(404, json.dumps(body).encode(), length=length)
    async with canned(lambda r: answer) as url:
        with pytest.raises(UpstreamRefused) as refused:
            await connect(url)
    assert refused.value.http_status == 404
    assert refused.value.body() == body


async def test_a_large_or_foreign_body_is_not_passed_on() -> None:
    big = json.dumps({"error": {"code": "x", "message": "y" * 10_000}}).encode()
    deep = b"[" * 2000 + b"]" * 2000  # within the size passed on: 4 KB
    for body in (big, b"<html>nope</html>", b"[1, 2]", deep):
        answer = refusal(400, body)

        def canned_answer(request: bytes, answer: bytes = answer) -> bytes:
            return answer

        async with canned(canned_answer) as url:
            with pytest.raises(UpstreamRefused) as refused:
                await connect(url)
        # The relay's own error object instead.
        assert refused.value.body() != json.loads(big)
        assert "error" in refused.value.body()


async def test_credentials_never_fail_a_request_line_open() -> None:
    """A header value with a line break is refused before anything is sent."""
    seen: list[bytes] = []

    def answer(request: bytes) -> None:
        seen.append(request)

    async with canned(answer, close=False) as url:
        with pytest.raises(UpstreamUnavailable):
            await open_upstream(
                url,
                [("api-key", "secret\r\nX-Injected: 1")],
                connect_timeout=SECOND,
                max_message_bytes=1 << 20,
                flow=FLOW,
            )
    assert seen == []


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=2000), st.booleans())
def test_garbage_answers_end_in_a_relay_error(garbage: bytes, prefix: bool) -> None:
    """Whatever the upstream answers, the result is a connection or a mapped error."""

    async def attempt() -> None:
        def answer(request: bytes) -> bytes:
            return (switching(request) if prefix else b"") + garbage

        async with canned(answer) as url:
            try:
                connection = await connect(url, seconds=1 * SECOND)
            except (UpstreamUnavailable, UpstreamRefused, UpstreamTimeout):
                return
            connection.leg.attach(lambda *a: None, lambda c, r: None, lambda: None)
            await connection.close(1000, "done")

    asyncio.run(attempt())


async def test_against_a_real_websockets_server() -> None:
    """A conforming server: echo, then the closing handshake with the relay's code."""
    closed: asyncio.Future[tuple[int | None, str | None]] = (
        asyncio.get_running_loop().create_future()
    )

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)
        closed.set_result((ws.close_code, ws.close_reason))

    server = await serve(echo, "127.0.0.1", 0, compression=None)
    async with server:
        port = next(iter(server.sockets)).getsockname()[1]
        connection = await connect(f"ws://127.0.0.1:{port}/")
        got: asyncio.Queue[str | bytes] = asyncio.Queue()
        connection.leg.attach(
            lambda data, raw, size: got.put_nowait(data),
            lambda c, r: None,
            lambda: None,
        )
        connection.leg.send_text("héllo")
        connection.leg.send_binary(b"\x00\x01")
        async with asyncio.timeout(2 * SECOND):
            assert await got.get() == "héllo"
            assert await got.get() == b"\x00\x01"
            await connection.close(4001, "bye")
            assert await closed == (4001, "bye")
        assert connection.leg.done.result() == 4001
