"""A TCP fault proxy with toxiproxy-style toxics, for fault tests on loopback.

Toxiproxy itself is not available here (ops-notes §7), so this is its small
asyncio stand-in. A :class:`FaultProxy` listens on 127.0.0.1 port 0 and
forwards every connection to its :attr:`~FaultProxy.target`. Toxics apply per
direction: ``"upstream"`` is what clients send towards the target,
``"downstream"`` what the target sends back; ``"both"`` sets the two at once.
They may be changed at any time and apply to live connections at once:

* ``latency`` (± ``jitter``): every chunk is delivered that many seconds after
  it arrived; chunks are pipelined, so throughput is kept;
* ``bandwidth``: at most that many bytes per second are delivered;
* ``blackhole``: data is read and dropped and nothing is closed: even a peer's
  end of stream is held back until the blackhole is lifted;
* ``reset_peer``: the peer that direction delivers to gets a TCP RST (the
  other peer a plain close); live connections are reset when it is set, and
  new ones on arrival while it stays set;
* ``close_after``: once that many bytes went that way (counted from when the
  toxic was set), both peers are closed.

:meth:`FaultProxy.refuse` refuses new connections, by accepting and resetting
them or by not listening at all. A peer's reset is passed on as a reset, its
end of stream as an end of stream (half-close). Leaving the ``async with``
block closes the listener and every connection, cancelling their tasks.

With ``record=True`` the proxy is also a tap: :attr:`FaultProxy.recordings`
holds, per proxied connection, the bytes delivered each way, and
:func:`websocket_messages` reads the messages of a WebSocket connection out of
them (what a peer put on the wire, not what a library made of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal, Self, TypedDict, Unpack

from websockets.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_TEXT, Frame
from websockets.streams import StreamReader

from relay.service.tasks import TaskSet
from tests.helpers.timing import SECOND


__all__ = [
    "Direction",
    "Directions",
    "FaultProxy",
    "ProxyStats",
    "RefuseMode",
    "ToxicChanges",
    "Toxics",
    "websocket_messages",
]

Direction = Literal["upstream", "downstream"]
Directions = Literal["upstream", "downstream", "both"]
RefuseMode = Literal["reset", "unlisten"]

_DIRECTIONS: tuple[Direction, ...] = ("upstream", "downstream")
_READ_SIZE = 64 * 1024
# Chunks in flight per direction (latency is pipelined, not serialised).
_QUEUE_CHUNKS = 1024
# A bandwidth-limited chunk is sent in pieces, one every 1/20 s.
_PIECES_PER_SECOND = 20
_LINGER_RST = struct.pack("ii", 1, 0)

_Chunks = asyncio.Queue[tuple[float, bytes] | None]
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass(frozen=True, slots=True)
class Toxics:
    """The toxics of one direction (all off by default)."""

    latency: float = 0.0
    """Seconds added to every chunk."""
    jitter: float = 0.0
    """Uniform ± seconds around ``latency``."""
    bandwidth: int | None = None
    """Bytes per second; ``None``: unlimited."""
    blackhole: bool = False
    reset_peer: bool = False
    close_after: int | None = None
    """Bytes; ``None``: never."""


class ToxicChanges(TypedDict, total=False):
    """Keyword arguments of :meth:`FaultProxy.update` (fields of :class:`Toxics`)."""

    latency: float
    jitter: float
    bandwidth: int | None
    blackhole: bool
    reset_peer: bool
    close_after: int | None


@dataclass(slots=True)
class ProxyStats:
    """What the proxy saw."""

    accepted: int = 0
    """TCP connections accepted from clients."""
    refused: int = 0
    """Accepted connections reset at once (refusal, ``reset_peer``, target down)."""
    opened: int = 0
    """Connections proxied to the target."""
    closed: int = 0
    """Proxied connections over, both sockets closed."""
    upstream_bytes: int = 0
    """Bytes delivered to the target."""
    downstream_bytes: int = 0
    """Bytes delivered to clients."""

    @property
    def active(self) -> int:
        """Proxied connections not over yet."""
        return self.opened - self.closed


def _rst(sock: socket.socket) -> None:
    """Make closing ``sock`` send a TCP RST (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


class _Connection:
    """One proxied connection: a reader and a writer task per direction."""

    def __init__(self, proxy: FaultProxy, client: _Stream, target: _Stream) -> None:
        self._proxy = proxy
        # What each direction reads from and writes to.
        self._ends: dict[Direction, _Stream] = {
            "upstream": (client[0], target[1]),
            "downstream": (target[0], client[1]),
        }
        # Directions whose end of stream was delivered.
        self._finished: set[Direction] = set()
        # Set once the connection is over: both ends of stream delivered, or a fault.
        self._over = asyncio.Event()
        # Bytes delivered each way, kept when the proxy records.
        self.recorded: dict[Direction, bytearray] = {
            direction: bytearray() for direction in _DIRECTIONS
        }

    def reset(self, toward: Directions = "both") -> None:
        """End now: RST the peer(s) ``toward`` delivers to, close the other."""
        for direction in _DIRECTIONS:
            writer = self._ends[direction][1]
            if toward in (direction, "both") and not writer.transport.is_closing():
                _rst(writer.get_extra_info("socket"))
                writer.transport.abort()
            else:
                writer.close()
        self._over.set()

    def close(self) -> None:
        """End now, closing both peers after what was already written."""
        for _, writer in self._ends.values():
            writer.close()
        self._over.set()

    async def run(self) -> None:
        """Relay both directions until the connection is over; close both sockets."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = []
                for direction in _DIRECTIONS:
                    chunks: _Chunks = asyncio.Queue(_QUEUE_CHUNKS)
                    tasks.append(group.create_task(self._read(direction, chunks)))
                    tasks.append(group.create_task(self._write(direction, chunks)))
                await self._over.wait()
                for task in tasks:
                    task.cancel()
        finally:
            for _, writer in self._ends.values():
                writer.transport.abort()  # a no-op once a close completed
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1 * SECOND):
                        await writer.wait_closed()

    async def _read(self, direction: Direction, chunks: _Chunks) -> None:
        reader = self._ends[direction][0]
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_READ_SIZE):
                toxics = self._proxy.toxics(direction)
                if toxics.blackhole:
                    continue
                jitter = self._proxy.random.uniform(-toxics.jitter, toxics.jitter)
                delay = max(0.0, toxics.latency + jitter)
                await chunks.put((loop.time() + delay, data))
        except OSError:
            self.reset()
            return
        # A blackhole holds the end of stream back too.
        await self._proxy.wait_for(lambda: not self._proxy.toxics(direction).blackhole)
        await chunks.put(None)

    async def _write(self, direction: Direction, chunks: _Chunks) -> None:
        writer = self._ends[direction][1]
        loop = asyncio.get_running_loop()
        limit_version, counted = -1, 0
        try:
            while (item := await chunks.get()) is not None:
                due, data = item
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the latency toxic itself
                toxics = self._proxy.toxics(direction)
                if toxics.blackhole:
                    continue
                if self._proxy.close_after_version(direction) != limit_version:
                    limit_version = self._proxy.close_after_version(direction)
                    counted = 0
                limit = toxics.close_after
                if limit is not None and counted + len(data) >= limit:
                    await self._send(direction, writer, data[: limit - counted])
                    self.close()
                    return
                counted += len(data)
                await self._send(direction, writer, data)
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            self.reset()
            return
        self._finished.add(direction)
        if len(self._finished) == len(_DIRECTIONS):
            self.close()

    async def _send(
        self, direction: Direction, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        rate = self._proxy.toxics(direction).bandwidth
        step = len(data) if rate is None else rate // _PIECES_PER_SECOND
        for start in range(0, len(data), max(1, step)):
            piece = data[start : start + max(1, step)]
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)  # the bandwidth toxic itself
            writer.write(piece)
            await writer.drain()
            self._proxy.count(direction, len(piece))
            if self._proxy.record:
                self.recorded[direction] += piece


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``, with toxics (module docstring).

    Use it as ``async with FaultProxy(target) as proxy:``. The target may also
    be set later through :attr:`target`; until then connections are reset.
    """

    def __init__(
        self,
        target: tuple[str, int] | None = None,
        *,
        connect_timeout: float = 5 * SECOND,
        seed: int = 0,
        record: bool = False,
    ) -> None:
        self.target = target
        """``(host, port)`` new connections are forwarded to."""
        self.record = record
        """Whether the bytes delivered are kept in :attr:`recordings`."""
        self.recordings: list[dict[Direction, bytearray]] = []
        """With ``record``: per proxied connection, in order, the bytes delivered each way."""
        self.stats = ProxyStats()
        self.random = random.Random(seed)
        """Source of the latency jitter (seeded, so runs repeat)."""
        self._connect_timeout = connect_timeout
        self._toxics: dict[Direction, Toxics] = dict.fromkeys(_DIRECTIONS, Toxics())
        # Bumped whenever close_after is set: it counts from then.
        self._close_after_versions: dict[Direction, int] = dict.fromkeys(_DIRECTIONS, 0)
        self._refusing: RefuseMode | None = None
        # Set, then replaced, on every change of toxics or connections.
        self._changed = asyncio.Event()
        self._connections: set[_Connection] = set()
        # Every task of the proxy: the accept loop and one per connection.
        self._tasks = TaskSet()
        self._acceptor: asyncio.Task[None] | None = None
        self._listener: socket.socket | None = None
        self._port = 0
        # Unexpected exceptions of connection tasks, raised on exit.
        self._errors: list[Exception] = []

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:port``, for settings that take an HTTP origin."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def ws(self) -> str:
        """``ws://127.0.0.1:port``, the proxy's WebSocket origin."""
        return f"ws://127.0.0.1:{self._port}"

    # Toxics

    def toxics(self, direction: Direction) -> Toxics:
        """The toxics applied to ``direction`` now."""
        return self._toxics[direction]

    def close_after_version(self, direction: Direction) -> int:
        """How many times ``close_after`` was set for ``direction``."""
        return self._close_after_versions[direction]

    def update(
        self, direction: Directions = "both", **changes: Unpack[ToxicChanges]
    ) -> None:
        """Change toxics of ``direction``; live connections get them at once."""
        for each in _DIRECTIONS if direction == "both" else (direction,):
            self._toxics[each] = replace(self._toxics[each], **changes)
            if "close_after" in changes:
                self._close_after_versions[each] += 1
        if changes.get("reset_peer"):
            for connection in list(self._connections):
                connection.reset(direction)
        self._notify()

    def clear(self, direction: Directions = "both") -> None:
        """Remove every toxic of ``direction``."""
        default = Toxics()
        self.update(
            direction,
            latency=default.latency,
            jitter=default.jitter,
            bandwidth=default.bandwidth,
            blackhole=default.blackhole,
            reset_peer=default.reset_peer,
            close_after=default.close_after,
        )

    def latency(
        self, seconds: float, *, jitter: float = 0.0, direction: Directions = "both"
    ) -> None:
        """Delay every chunk by ``seconds`` ± ``jitter``."""
        self.update(direction, latency=seconds, jitter=jitter)

    def bandwidth(
        self, bytes_per_second: int, *, direction: Directions = "both"
    ) -> None:
        """Deliver at most ``bytes_per_second``."""
        self.update(direction, bandwidth=bytes_per_second)

    def blackhole(self, *, direction: Directions = "both") -> None:
        """Read and drop everything; close nothing."""
        self.update(direction, blackhole=True)

    def reset_peer(self, *, direction: Directions = "both") -> None:
        """RST ``direction``'s peer of every live and new connection."""
        self.update(direction, reset_peer=True)

    def close_after(self, size: int, *, direction: Directions = "both") -> None:
        """Close each connection once ``size`` more bytes went ``direction``."""
        self.update(direction, close_after=size)

    async def refuse(self, mode: RefuseMode | None = "reset") -> None:
        """Refuse new connections: accept and RST them, or stop listening.

        ``None`` accepts them again (listening again on the same port).
        """
        if mode == "unlisten":
            await self._stop_listening()
        elif self._listener is None:
            self._listen(self._port)
        self._refusing = mode

    # Connections

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked on every change."""
        while not predicate():
            await self._changed.wait()

    async def wait_idle(self, *, within: float = 5 * SECOND) -> None:
        """Wait until no proxied connection is open (``TimeoutError`` after ``within``)."""
        async with asyncio.timeout(within):
            await self.wait_for(lambda: self.stats.active == 0)

    async def wait_opened(self, count: int, *, within: float = 5 * SECOND) -> None:
        """Wait until ``count`` connections in all were proxied."""
        async with asyncio.timeout(within):
            await self.wait_for(lambda: self.stats.opened >= count)

    def count(self, direction: Direction, size: int) -> None:
        """Record ``size`` bytes delivered ``direction``."""
        if direction == "upstream":
            self.stats.upstream_bytes += size
        else:
            self.stats.downstream_bytes += size

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # Lifecycle

    async def __aenter__(self) -> Self:
        self._listen(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Stop accepting, then end every connection and wait for its task.
        await self._stop_listening()
        async with asyncio.timeout(5 * SECOND):
            await self._tasks.cancel_all()
        if self._errors:
            raise ExceptionGroup("fault proxy connections failed", self._errors)

    def _listen(self, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener, self._port = listener, listener.getsockname()[1]
        self._acceptor = self._tasks.spawn(self._accept(listener), name="proxy-accept")

    async def _stop_listening(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            self.stats.accepted += 1
            resetting = any(toxics.reset_peer for toxics in self._toxics.values())
            if self._refusing == "reset" or resetting or self.target is None:
                self._refuse(sock)
            else:
                self._tasks.spawn(self._serve(sock, self.target), name="proxy-conn")

    def _refuse(self, sock: socket.socket) -> None:
        _rst(sock)
        sock.close()
        self.stats.refused += 1

    async def _serve(self, sock: socket.socket, target: tuple[str, int]) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                upstream = await asyncio.open_connection(*target)
        except (OSError, TimeoutError):
            self._refuse(sock)  # the target is down: so is the proxied service
            return
        except BaseException:
            sock.close()  # cancelled: nothing may leak
            raise
        try:
            client = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            upstream[1].transport.abort()
            raise
        connection = _Connection(self, client, upstream)
        if self.record:
            self.recordings.append(connection.recorded)
        self._connections.add(connection)
        self.stats.opened += 1
        self._notify()
        try:
            await connection.run()
        except Exception as exc:
            # A bug of the proxy must fail the test, not vanish with its task.
            self._errors.append(exc)
        finally:
            self._connections.discard(connection)
            self.stats.closed += 1
            self._notify()


def websocket_messages(data: bytes | bytearray, *, masked: bool) -> list[str | bytes]:
    """The data messages in one direction of a recorded WebSocket connection.

    ``data`` starts with the HTTP upgrade request or response; the frames
    after it are parsed with ``websockets``' own parser (``masked``: the
    client's direction), fragments joined, control frames skipped, up to a
    close frame or the end of ``data`` (a frame cut short there is ignored).
    No extension may have been negotiated: the relay offers none.
    """
    head_end = data.index(b"\r\n\r\n") + 4
    reader = StreamReader()
    reader.feed_data(bytes(data[head_end:]))
    reader.feed_eof()
    messages: list[str | bytes] = []
    fragments: list[Frame] = []
    parser = Frame.parse(reader.read_exact, mask=masked)
    # Each frame is at least two bytes: that many frames at most.
    for _ in range(len(data)):
        try:
            next(parser)
        except StopIteration as done:
            frame: Frame = done.value
        except EOFError:
            break
        else:
            raise AssertionError("unreachable: all of data was fed")
        parser = Frame.parse(reader.read_exact, mask=masked)
        if frame.opcode == OP_CLOSE:
            break
        if frame.opcode not in (OP_TEXT, OP_BINARY, OP_CONT):
            continue
        fragments.append(frame)
        if frame.fin:
            payload = b"".join(fragment.data for fragment in fragments)
            text = fragments[0].opcode == OP_TEXT
            messages.append(payload.decode() if text else payload)
            fragments = []
    return messages
