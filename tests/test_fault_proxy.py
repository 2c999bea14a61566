"""The fault proxy's toxics, each against a trivial echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.helpers.fault_proxy import FaultProxy, websocket_messages
from tests.helpers.timing import SECOND, within


class EchoServer:
    """Echoes what it receives; remembers how each connection ended.

    A protocol factory, not a stream handler: it needs no task, so nothing outlives it.
    """

    def __init__(self) -> None:
        self.transports: set[asyncio.Transport] = set()
        self.received = 0
        """Bytes received, over all connections."""
        self.eofs = 0
        """Ends of stream received (the peer closed or half-closed)."""
        self.losses: list[Exception | None] = []
        """``connection_lost`` arguments, in order (``ConnectionResetError``: a RST)."""
        self.changed = asyncio.Event()
        """Set, then replaced, on every change of the records."""

    def __call__(self) -> asyncio.Protocol:
        # One protocol instance per connection, sharing the server's records.
        return _EchoConnection(self)

    def notify(self) -> None:
        """Wake :meth:`wait_for`."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], bool], *, within: float = 2 * SECOND
    ) -> None:
        """Return once ``predicate()`` holds, checked on every change."""
        async with asyncio.timeout(within):
            while not predicate():
                await self.changed.wait()

    def reset_all(self) -> None:
        """Abort every connection with a TCP RST."""
        for transport in list(self.transports):
            transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            transport.abort()


class _EchoConnection(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._server.received += len(data)
        self._transport.write(data)
        self._server.notify()

    def eof_received(self) -> bool:
        self._server.eofs += 1
        self._server.notify()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._server.transports.discard(self._transport)
        self._server.losses.append(exc)
        self._server.notify()


@asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[EchoServer, int]]:
    """An echo server on 127.0.0.1 port 0; yields it and its port."""
    echo = EchoServer()
    server = await asyncio.get_running_loop().create_server(echo, "127.0.0.1", 0)
    try:
        yield echo, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for transport in list(echo.transports):
            transport.abort()
        await echo.wait_for(lambda: not echo.transports)
        await server.wait_closed()


@asynccontextmanager
async def proxied_echo() -> AsyncIterator[tuple[FaultProxy, EchoServer]]:
    """A fault proxy in front of an echo server."""
    async with echo_server() as (echo, port), FaultProxy(("127.0.0.1", port)) as proxy:
        yield proxy, echo


@asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP client connection to ``port``, closed (whatever its state) on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            async with asyncio.timeout(1 * SECOND):
                await writer.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    data: bytes,
    *,
    within: float = 2 * SECOND,
) -> float:
    """Send ``data``, read its echo; return the seconds it took."""
    started = time.monotonic()
    writer.write(data)
    async with asyncio.timeout(within):
        await writer.drain()
        assert await reader.readexactly(len(data)) == data
    return time.monotonic() - started


async def assert_silent(reader: asyncio.StreamReader, seconds: float) -> None:
    """Nothing (not even an end of stream) arrives for ``seconds``."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await reader.read(1)


async def assert_reset(port: int) -> None:
    """A new connection to ``port`` is reset (while connecting, or at its first read)."""
    with pytest.raises(ConnectionResetError):
        async with connection(port) as (reader, _):
            await read_until_closed(reader)


async def read_until_closed(
    reader: asyncio.StreamReader, *, within: float = 2 * SECOND
) -> bytes:
    """Everything that arrives until the end of stream."""
    async with asyncio.timeout(within):
        return await reader.read()


class TestPassThrough:
    async def test_bytes_pass_both_ways_and_are_counted(self) -> None:
        """Without toxics the proxy is transparent and counts what it delivered."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"hello" * 1000)
                await proxy.wait_opened(1)
            await proxy.wait_idle()
            assert proxy.stats.opened == proxy.stats.closed == 1
            assert proxy.stats.upstream_bytes == proxy.stats.downstream_bytes == 5000
            assert echo.received == 5000

    async def test_half_close_is_passed_on(self) -> None:
        """A client's end of stream reaches the target, whose close comes back."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                writer.write(b"last words")
                writer.write_eof()
                assert await read_until_closed(reader) == b"last words"
                await echo.wait_for(lambda: echo.eofs == 1)
            await proxy.wait_idle()

    async def test_a_target_reset_is_passed_on_as_a_reset(self) -> None:
        """When the target resets, the client is reset too (no orderly close)."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"ping")
                echo.reset_all()
                with pytest.raises(ConnectionResetError):
                    await read_until_closed(reader)
            await proxy.wait_idle()

    async def test_exit_closes_every_connection_and_task(self) -> None:
        """Leaving the block closes the listener and live connections and ends all tasks."""
        async with echo_server() as (echo, port):
            tasks_before = len(asyncio.all_tasks())
            async with FaultProxy(("127.0.0.1", port)) as proxy:
                reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                await round_trip(reader, writer, b"ping")
                proxy.blackhole()  # a connection that would never end by itself
                assert len(asyncio.all_tasks()) > tasks_before
            try:
                assert await read_until_closed(reader) == b""
                assert proxy.stats.active == 0
                assert len(asyncio.all_tasks()) == tasks_before
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", proxy.port)
                await echo.wait_for(lambda: not echo.transports)
            finally:
                writer.close()
                await writer.wait_closed()

    async def test_a_target_that_is_down_means_a_reset(self) -> None:
        """With nothing listening at the target, clients are reset at once."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        async with FaultProxy(("127.0.0.1", closed_port)) as proxy:
            await assert_reset(proxy.port)
            await proxy.wait_for(lambda: proxy.stats.refused == 1)
            assert (proxy.stats.accepted, proxy.stats.refused) == (1, 1)
            assert proxy.stats.opened == 0

    async def test_without_a_target_connections_are_reset(self) -> None:
        """Until its target is set, the proxy resets whoever connects; then it forwards."""
        async with echo_server() as (_, port), FaultProxy() as proxy:
            await assert_reset(proxy.port)
            proxy.target = ("127.0.0.1", port)
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"found")
            assert (proxy.stats.refused, proxy.stats.opened) == (1, 1)


def port_of(server: Server) -> int:
    """The port a ``websockets`` server listens on."""
    return int(next(iter(server.sockets)).getsockname()[1])


class TestRecording:
    async def test_a_recording_proxy_keeps_each_connections_bytes(self) -> None:
        """With record=True the bytes delivered each way are kept, per connection."""
        async with (
            echo_server() as (_, port),
            FaultProxy(("127.0.0.1", port), record=True) as proxy,
        ):
            for payload in (b"first", b"second"):
                async with connection(proxy.port) as (reader, writer):
                    await round_trip(reader, writer, payload)
            await proxy.wait_idle()
        assert [bytes(r["upstream"]) for r in proxy.recordings] == [b"first", b"second"]
        assert [bytes(r["downstream"]) for r in proxy.recordings] == [
            b"first",
            b"second",
        ]

    async def test_without_record_nothing_is_kept(self) -> None:
        """Recording is opt-in: a long fault test keeps no bytes."""
        async with proxied_echo() as (proxy, _):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"hello")
            await proxy.wait_idle()
        assert proxy.recordings == []

    async def test_websocket_messages_reads_both_directions(self) -> None:
        """Text, binary and fragmented messages come out as sent; pings do not."""

        async def echo(ws: ServerConnection) -> None:
            async for message in ws:
                await ws.send(message)

        expected: list[str | bytes] = ["hello", b"\x00\x01", "in two frames"]
        async with (
            serve(echo, "127.0.0.1", 0, compression=None) as server,
            FaultProxy(("127.0.0.1", port_of(server)), record=True) as proxy,
        ):
            async with connect(f"{proxy.ws}/", compression=None) as ws:
                await ws.send("hello")
                await ws.send(b"\x00\x01")
                await ws.ping()
                await ws.send(iter(["in two", " frames"]))
                async with asyncio.timeout(2 * SECOND):
                    assert [await ws.recv() for _ in expected] == expected
            await proxy.wait_idle()
        [recording] = proxy.recordings
        assert websocket_messages(recording["upstream"], masked=True) == expected
        assert websocket_messages(recording["downstream"], masked=False) == expected


class TestLatency:
    async def test_latency_delays_each_direction(self) -> None:
        """200 ms each way makes a round trip take 400 ms, not much more."""
        latency = 0.2
        async with proxied_echo() as (proxy, _):
            async with connection(proxy.port) as (reader, writer):
                # No toxic: the proxy adds nothing (loopback work: the margin).
                fast = await round_trip(reader, writer, b"fast")
                assert fast < within(0, 0.1 * SECOND)
                proxy.latency(latency)
                took = await round_trip(reader, writer, b"slow")
            # The margin stays below the latency: applied twice a way fails.
            assert 2 * latency <= took < within(2 * latency, 0.2 * SECOND)

    async def test_latency_is_pipelined(self) -> None:
        """Ten chunks sent 20 ms apart under 300 ms latency all arrive in about 500 ms."""
        latency, gap, count = 0.3, 0.02, 10
        async with proxied_echo() as (proxy, _):
            proxy.latency(latency, direction="downstream")
            async with connection(proxy.port) as (reader, writer):
                started = time.monotonic()
                for index in range(count):
                    writer.write(b"%02d" % index)
                    await writer.drain()
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(gap):
                            await reader.read(1)  # nothing back within the gap
                async with asyncio.timeout(within(latency, 2 * SECOND)):
                    echoed = await reader.readexactly(2 * count)
                took = time.monotonic() - started
            assert echoed == b"".join(b"%02d" % index for index in range(count))
            # The last chunk left at least (count - 1) gaps in; serialised
            # latencies would take count * latency (3 s), far above the margin.
            assert latency + (count - 1) * gap <= took < within(latency + count * gap)

    async def test_jitter_stays_within_its_bounds(self) -> None:
        """Latency 200 ms ± 100 ms: every round trip takes 100-300 ms."""
        latency, jitter = 0.2, 0.1
        async with proxied_echo() as (proxy, _):
            proxy.latency(latency, jitter=jitter, direction="upstream")
            async with connection(proxy.port) as (reader, writer):
                took = [await round_trip(reader, writer, b"x") for _ in range(5)]
            # The margin stays below the jitter: twice as wide a jitter fails.
            assert all(
                latency - jitter <= each < within(latency + jitter, 0.1 * SECOND)
                for each in took
            ), took
            assert max(took) - min(took) > 0.01  # it does vary


class TestBandwidth:
    async def test_bandwidth_caps_the_rate(self) -> None:
        """20 KB at 40 KB/s downstream takes about half a second."""
        rate, size = 40_000, 20_000
        async with proxied_echo() as (proxy, _):
            proxy.bandwidth(rate, direction="downstream")
            async with connection(proxy.port) as (reader, writer):
                took = await round_trip(reader, writer, bytes(size))
            # The margin stays below size / rate: half the rate fails.
            assert size / rate <= took < within(size / rate, 0.3 * SECOND)

    async def test_lifting_the_cap_restores_the_speed(self) -> None:
        """After clear(), the same transfer is fast again."""
        rate = 40_000
        async with proxied_echo() as (proxy, _):
            proxy.bandwidth(rate)
            async with connection(proxy.port) as (reader, writer):
                assert await round_trip(reader, writer, bytes(4000)) >= 4000 / rate
                proxy.clear()
                # Still capped, it would take at least size / rate: 0.5 s.
                took = await round_trip(reader, writer, bytes(20_000))
                assert took < 20_000 / rate


class TestBlackhole:
    async def test_a_blackhole_swallows_data_and_closes_nothing(self) -> None:
        """Data is read and dropped, the connection stays open; lifted, data flows again."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"before")
                proxy.blackhole(direction="upstream")
                writer.write(b"lost" * 100_000)  # read by the proxy, not buffered
                await writer.drain()
                await assert_silent(reader, 0.3)
                assert echo.received == len(b"before")
                assert proxy.stats.active == 1
                proxy.clear()
                await round_trip(reader, writer, b"after")
            await proxy.wait_idle()

    async def test_a_blackhole_holds_the_end_of_stream_back(self) -> None:
        """A client's close does not reach the target until the blackhole is lifted."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"hi")
                proxy.blackhole()
                writer.write_eof()
                await assert_silent(reader, 0.3)
                assert echo.eofs == 0
                proxy.clear()
                assert await read_until_closed(reader) == b""
                await echo.wait_for(lambda: echo.eofs == 1)
            await proxy.wait_idle()

    async def test_a_downstream_blackhole_starves_the_client_only(self) -> None:
        """Downstream blackholed: the target still receives, the client gets nothing."""
        async with proxied_echo() as (proxy, echo):
            proxy.blackhole(direction="downstream")
            async with connection(proxy.port) as (reader, writer):
                writer.write(b"one way")
                await echo.wait_for(lambda: echo.received == len(b"one way"))
                await assert_silent(reader, 0.2)


class TestResetPeer:
    async def test_reset_downstream_resets_live_clients(self) -> None:
        """The client gets an RST at once; the target sees an orderly close."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"ping")
                proxy.reset_peer(direction="downstream")
                with pytest.raises(ConnectionResetError):
                    await read_until_closed(reader)
            await proxy.wait_idle()
            await echo.wait_for(lambda: echo.losses == [None])
            assert echo.eofs == 1

    async def test_reset_upstream_resets_the_target(self) -> None:
        """The target's connection is lost with a reset; the client gets an end of stream."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"ping")
                proxy.reset_peer(direction="upstream")
                assert await read_until_closed(reader) == b""
            await echo.wait_for(lambda: len(echo.losses) == 1)
            assert isinstance(echo.losses[0], ConnectionResetError)

    async def test_new_connections_are_reset_until_cleared(self) -> None:
        """While reset_peer is set, every new connection is reset; cleared, they work."""
        async with proxied_echo() as (proxy, _):
            proxy.reset_peer()
            await assert_reset(proxy.port)
            proxy.clear()
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"back")
            assert (proxy.stats.refused, proxy.stats.opened) == (1, 1)


class TestCloseAfter:
    async def test_close_after_cuts_at_exactly_n_bytes(self) -> None:
        """close_after(10) downstream: the client gets 10 bytes, then an end of stream."""
        async with proxied_echo() as (proxy, echo):
            async with connection(proxy.port) as (reader, writer):
                proxy.close_after(10, direction="downstream")
                writer.write(b"0123456789abcdefghij")
                assert await read_until_closed(reader) == b"0123456789"
            await proxy.wait_idle()
            await echo.wait_for(lambda: echo.eofs == 1)

    async def test_close_after_counts_from_when_it_was_set(self) -> None:
        """Bytes delivered before the toxic was set do not count."""
        async with proxied_echo() as (proxy, _):
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"x" * 100)
                proxy.close_after(5, direction="downstream")
                writer.write(b"abcdefgh")
                assert await read_until_closed(reader) == b"abcde"
            assert proxy.stats.downstream_bytes == 105


class TestRefuse:
    async def test_refuse_reset_accepts_then_resets(self) -> None:
        """Refusing by reset: connections are accepted and reset; undone, they work."""
        async with proxied_echo() as (proxy, _):
            await proxy.refuse("reset")
            await assert_reset(proxy.port)
            await proxy.refuse(None)
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"ok")
            assert (proxy.stats.accepted, proxy.stats.refused) == (2, 1)

    async def test_refuse_unlisten_stops_listening(self) -> None:
        """Refusing by not listening: connections are refused; undone, the same port works."""
        async with proxied_echo() as (proxy, _):
            async with connection(proxy.port) as (reader, writer):
                await proxy.refuse("unlisten")
                await round_trip(reader, writer, b"live ones stay")
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", proxy.port)
            await proxy.refuse(None)
            async with connection(proxy.port) as (reader, writer):
                await round_trip(reader, writer, b"ok")
            assert proxy.stats.accepted == 2
