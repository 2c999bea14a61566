"""A leg against real peers on 127.0.0.1: closing, keepalive, protocol errors, flow control.

Legs are opened with :func:`relay.ws.upstream.open_upstream` (client side);
the server side is covered end to end by every relayed session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from relay.config import FlowSettings
from relay.ws.frames import BINARY, CLOSE, PING, PONG, TEXT, build_frame, close_payload
from relay.ws.leg import CONTROL_BURST, FRAMES_PER_TURN, REFUSED_PAUSE, Leg
from relay.ws.upstream import open_upstream
from tests.helpers.timing import SECOND, within
from tests.ws.test_upstream import switching


@dataclass
class Peer:
    """What a scripted peer received from the leg, once the connection ended."""

    received: asyncio.Future[bytes]
    url: str


@dataclass
class Recorder:
    messages: list[tuple[str | bytes, bytes | None, int]] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)
    writable_changes: int = 0

    def attach(self, leg: Leg) -> None:
        leg.attach(
            lambda data, raw, size: self.messages.append((data, raw, size)),
            lambda code, reason: self.closed.append((code, reason)),
            self._writable,
        )

    def _writable(self) -> None:
        self.writable_changes += 1


@contextlib.asynccontextmanager
async def scripted(script: bytes, *, read: bool = True) -> AsyncIterator[Peer]:
    """A server that completes the handshake, sends ``script``, and records the rest."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(switching(request) + script)
            await writer.drain()
            data = await reader.read() if read else await _hold(reader)
            if not received.done():
                received.set_result(data)
        except ConnectionError:
            if not received.done():
                received.set_result(b"<reset>")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        yield Peer(received, f"ws://127.0.0.1:{port}/")


async def _hold(reader: asyncio.StreamReader) -> bytes:
    # Never read: the leg's writes pile up in the kernel, then in its buffer.
    await asyncio.Event().wait()
    return b""  # pragma: no cover


def frames_sent_by_client(data: bytes) -> list[Frame]:
    """Parse what the leg sent (masked client frames) with the websockets parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsed = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=[])
        try:
            while True:
                next(parser)
        except StopIteration as done:
            parsed.append(done.value)
        except EOFError:
            return parsed


def leg_flow(**changes: float | None) -> FlowSettings:
    """Flow settings for a leg under test: no keepalive unless asked for."""
    return FlowSettings(
        **{"ping_interval": None, "ping_timeout": None, "close_timeout": 0.5, **changes}  # type: ignore[arg-type]
    )


async def open_leg(
    url: str, settings: FlowSettings | None = None, *, max_message_bytes: int = 4096
) -> Leg:
    settings = leg_flow() if settings is None else settings
    connection = await open_upstream(
        url,
        [],
        connect_timeout=2 * SECOND,
        max_message_bytes=max_message_bytes,
        flow=settings,
    )
    return connection.leg


def reading(leg: Leg) -> bool:
    return leg._reading  # the state under test


def close_of(frames: list[Frame]) -> Close:
    closes = [frame for frame in frames if frame.opcode is Opcode.CLOSE]
    assert len(closes) == 1, frames
    return Close.parse(bytes(closes[0].data))


async def test_messages_before_attach_wait_in_order_with_reading_paused() -> None:
    events = [json.dumps({"type": "e", "n": n}) for n in range(3)]
    script = b"".join(build_frame(TEXT, e.encode(), mask=False) for e in events)
    async with scripted(script) as peer:
        # One write of the 101 and the frames: one read on loopback.
        leg = await open_leg(peer.url)
        assert [m[0] for m in leg._pending] == events
        assert not reading(leg)
        recorder = Recorder()
        recorder.attach(leg)
        assert [m[0] for m in recorder.messages] == events
        assert reading(leg)
        leg.close(1000, "done")
        await leg.done


async def test_a_peer_that_never_answers_our_close_is_dropped_after_close_timeout() -> (
    None
):
    flow = leg_flow(close_timeout=0.3)
    async with scripted(b"") as peer:
        leg = await open_leg(peer.url, flow)
        recorder = Recorder()
        recorder.attach(leg)
        loop = asyncio.get_running_loop()
        started = loop.time()
        leg.close(4002, "stalled")
        async with asyncio.timeout(within(flow.close_timeout, 2 * SECOND)):
            assert await leg.done == 1006
        # The timer starts in close(): not before close_timeout, exactly.
        took = loop.time() - started
        assert flow.close_timeout <= took < within(flow.close_timeout, 0.5 * SECOND)
        assert close_of(frames_sent_by_client(await peer.received)) == Close(
            4002, "stalled"
        )
        assert recorder.closed == [(1006, "")]


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (build_frame(TEXT, b"\xff\xfe", mask=False), 1007),
        (build_frame(BINARY, b"x" * 5000, mask=False), 1009),
        (build_frame(TEXT, b"masked", mask=True), 1002),
        (bytes([0x83, 0x00]), 1002),  # reserved opcode
        (build_frame(CLOSE, close_payload(1005, ""), mask=False), 1002),
        (build_frame(CLOSE, b"\x03\xe8\xc3\x28", mask=False), 1007),
        (bytes([0x81, 126, 0, 2]) + b"{}", 1002),  # length not minimal
        (bytes([0x81, 127]) + (1 << 63).to_bytes(8, "big"), 1002),
        (bytes([0x01, 2]) + b"{\xff", 1007),  # no final fragment needed
    ],
    ids=[
        "bad-utf8",
        "too-big",
        "masked",
        "opcode",
        "reserved-code",
        "bad-reason",
        "non-minimal",
        "length-msb",
        "bad-utf8-fragment",
    ],
)
async def test_protocol_errors_close_with_their_code(script: bytes, code: int) -> None:
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        recorder = Recorder()
        recorder.attach(leg)
        async with asyncio.timeout(2 * SECOND):
            assert await leg.done == code
            sent = frames_sent_by_client(await peer.received)
        assert close_of(sent).code == code
        assert recorder.messages == []
        assert recorder.closed[0][0] == code


async def test_messages_before_a_protocol_error_are_delivered_first() -> None:
    """Frames completed in the read that also holds a violation are still handled."""
    script = build_frame(TEXT, b"first", mask=False) + build_frame(
        TEXT, b"x", mask=True
    )
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        recorder = Recorder()
        recorder.attach(leg)
        async with asyncio.timeout(2 * SECOND):
            assert await leg.done == 1002
        assert [message[0] for message in recorder.messages] == ["first"]


async def test_a_closing_leg_skips_what_the_peer_still_sends_unread() -> None:
    """After our close frame, data frames are skipped at their header: never decoded."""
    loop = asyncio.get_running_loop()
    got_close: asyncio.Future[None] = loop.create_future()
    handled: asyncio.Future[None] = loop.create_future()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(switching(request))
            # Wait for the leg's (masked) close frame, then answer it late,
            # after a text frame that is not UTF-8 (1007 if it were decoded).
            first = await reader.readexactly(1)
            assert first[0] == 0x88
            got_close.set_result(None)
            writer.write(
                build_frame(TEXT, b"\xff" * 1000, mask=False)
                + build_frame(CLOSE, close_payload(1000, ""), mask=False)
            )
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
            handled.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        leg = await open_leg(f"ws://127.0.0.1:{port}/", leg_flow(close_timeout=5.0))
        recorder = Recorder()
        recorder.attach(leg)
        leg.close(1000, "bye")
        async with asyncio.timeout(5 * SECOND):
            await got_close
            assert await leg.done == 1000
            await handled
        assert recorder.messages == []


async def test_the_peers_close_is_echoed_and_reported() -> None:
    async with scripted(
        build_frame(CLOSE, close_payload(4001, "bye"), mask=False)
    ) as peer:
        leg = await open_leg(peer.url)
        recorder = Recorder()
        recorder.attach(leg)
        async with asyncio.timeout(2 * SECOND):
            assert await leg.done == 4001
            assert close_of(frames_sent_by_client(await peer.received)).code == 4001
        assert recorder.closed == [(4001, "bye")]


async def test_pings_are_answered_with_their_payload() -> None:
    script = build_frame(PING, b"1234", mask=False) + build_frame(
        CLOSE, close_payload(1000, ""), mask=False
    )
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        Recorder().attach(leg)
        async with asyncio.timeout(2 * SECOND):
            sent = frames_sent_by_client(await peer.received)
        assert (sent[0].opcode, sent[0].data) == (Opcode.PONG, b"1234")


async def test_keepalive_drops_a_silent_peer() -> None:
    flow = leg_flow(ping_interval=0.2, ping_timeout=0.2)
    assert flow.ping_interval is not None
    assert flow.ping_timeout is not None
    promised = flow.ping_interval + flow.ping_timeout
    async with scripted(b"", read=False) as peer:
        loop = asyncio.get_running_loop()
        # Read before the leg exists: its first ping is due ping_interval later.
        started = loop.time()
        leg = await open_leg(peer.url, flow)
        Recorder().attach(leg)
        async with asyncio.timeout(within(promised, 2 * SECOND)):
            assert await leg.done == 1006
        assert promised <= loop.time() - started < within(promised)


async def test_keepalive_keeps_an_answering_peer() -> None:
    async def idle(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    # The peer's pongs must come within ping_timeout, however busy the
    # machine: that is the margin, so it is scaled.
    flow = leg_flow(ping_interval=0.05, ping_timeout=0.5 * SECOND)
    assert flow.ping_interval is not None
    assert flow.ping_timeout is not None
    async with serve(idle, "127.0.0.1", 0, compression=None) as server:
        # websockets 15 types `sockets` as an Iterable, 17 as a tuple.
        port = next(iter(server.sockets)).getsockname()[1]
        leg = await open_leg(f"ws://127.0.0.1:{port}/", flow)
        Recorder().attach(leg)
        # Observe for longer than a leg that ignored the pongs would last (its
        # first ping_interval + ping_timeout), twice over; nothing is waited on.
        await asyncio.sleep(2 * (flow.ping_interval + flow.ping_timeout))
        assert not leg.finished
        leg.close(1000, "")
        async with asyncio.timeout(2 * SECOND):
            assert await leg.done == 1000


async def test_a_peer_that_stops_reading_makes_the_leg_unwritable() -> None:
    async with scripted(b"", read=False) as peer:
        leg = await open_leg(peer.url)
        recorder = Recorder()
        recorder.attach(leg)
        chunk = "A" * 60_000
        async with asyncio.timeout(5 * SECOND):
            while leg.writable:
                leg.send_text(chunk)
                await asyncio.sleep(0)
        assert leg.pending_bytes() > leg_flow().buffer_bytes
        assert recorder.writable_changes == 1
        leg.abort()
        assert leg.done.result() == 1006
        # Nothing more is written or delivered once aborted.
        leg.send_text("late")
        assert recorder.closed == [(1006, "")]


def test_frames_sent_by_client_parses_a_masked_close() -> None:
    data = build_frame(CLOSE, close_payload(1000, "x"), mask=True)
    assert close_of(frames_sent_by_client(data)) == Close(1000, "x")


async def test_a_ping_flood_is_closed_with_1008_after_the_budget() -> None:
    """A peer over the control-frame budget gets 1008; the pongs it got are bounded by the burst."""
    script = build_frame(PING, b"", mask=False) * 5000
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        recorder = Recorder()
        recorder.attach(leg)
        async with asyncio.timeout(2 * SECOND):
            assert await leg.done == 1008
            sent = frames_sent_by_client(await peer.received)
        pongs = [frame for frame in sent if frame.opcode is Opcode.PONG]
        assert CONTROL_BURST <= len(pongs) <= CONTROL_BURST + 1
        assert close_of(sent).code == 1008
        assert recorder.closed == [(1008, "control frames over budget")]


async def test_pongs_and_pings_within_the_budget_are_fine() -> None:
    """A burst just under the budget is answered, and the connection stays open."""
    script = build_frame(PING, b"p", mask=False) * (CONTROL_BURST - 8)
    script += build_frame(PONG, b"heartbeat", mask=False) * 4
    script += build_frame(TEXT, b"after", mask=False)
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        arrived: asyncio.Future[str | bytes] = (
            asyncio.get_running_loop().create_future()
        )
        leg.attach(
            lambda data, raw, size: arrived.set_result(data),
            lambda code, reason: None,
            lambda: None,
        )
        async with asyncio.timeout(2 * SECOND):
            assert await arrived == "after"
        assert not leg.finished
        leg.close(1000, "done")
        async with asyncio.timeout(2 * SECOND):
            await leg.done
            sent = frames_sent_by_client(await peer.received)
        assert sum(frame.opcode is Opcode.PONG for frame in sent) == CONTROL_BURST - 8


async def test_many_frames_in_one_read_are_handled_over_several_turns() -> None:
    """Fair scheduling: 2,000 tiny messages in one read do not hold the loop in one callback."""
    count = 2000
    script = b"".join(build_frame(TEXT, b"%d" % n, mask=False) for n in range(count))
    turns = -1  # messages handed over by attach() itself
    turn_of_message: list[int] = []
    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        leg.attach(
            lambda data, raw, size: turn_of_message.append(turns),
            lambda code, reason: None,
            lambda: None,
        )
        turns = 0
        # Count turns of the loop until every message is in (bounded).
        async with asyncio.timeout(5 * SECOND):
            for _ in range(1_000_000):
                if len(turn_of_message) >= count:
                    break
                await asyncio.sleep(0)
                turns += 1
        assert len(turn_of_message) == count
        per_turn = max(turn_of_message.count(t) for t in set(turn_of_message))
        assert per_turn <= FRAMES_PER_TURN
        leg.close(1000, "done")
        async with asyncio.timeout(2 * SECOND):
            await leg.done


async def test_a_peer_whose_messages_are_refused_is_read_at_a_pace() -> None:
    """After a turn that refused a message the leg sits out REFUSED_PAUSE.

    A peer flooding refused messages costs at most one turn's frames per
    pause: 20,000 refused frames, all received at once, take about 300
    pauses, not 300 turns of the loop. What the window holds is an upper
    bound on work (a busy machine does less), so the check holds anywhere.
    """
    count = 20_000
    script = b"".join(build_frame(TEXT, b"{}", mask=False) for _ in range(count))
    loop = asyncio.get_running_loop()
    asked: list[float] = []

    def refuse(length: int, first: bool) -> bool:
        asked.append(loop.time())
        return False

    async with scripted(script) as peer:
        leg = await open_leg(peer.url)
        delivered: list[object] = []
        leg.attach(
            lambda data, raw, size: delivered.append(data),
            lambda code, reason: None,
            lambda: None,
            refuse,
        )
        started = loop.time()
        # An observation window, not a wait for an event: ten pauses' worth.
        await asyncio.sleep(10 * REFUSED_PAUSE)
        elapsed = loop.time() - started
        assert asked, "the leg read nothing"
        assert len(asked) <= FRAMES_PER_TURN * (elapsed / REFUSED_PAUSE + 2)
        assert delivered == []
        leg.close(1000, "done")
        async with asyncio.timeout(5 * SECOND):
            await leg.done


async def test_pending_bytes_see_the_peer_read_while_the_leg_stays_over_its_mark() -> (
    None
):
    """A peer that reads shows as fewer pending bytes at once: the kernel's queue, not the transport's buffer, moved."""
    loop = asyncio.get_running_loop()
    peer: asyncio.Future[asyncio.StreamReader] = loop.create_future()
    done = asyncio.Event()

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        writer.write(switching(request))
        await writer.drain()
        peer.set_result(reader)  # read by the test from now on
        await done.wait()
        writer.close()

    # A small stream limit: the peer takes from its socket only what it reads.
    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=16 * 1024)
    async with server:
        port = server.sockets[0].getsockname()[1]
        leg = await open_leg(f"ws://127.0.0.1:{port}/")
        Recorder().attach(leg)
        reader = await peer
        async with asyncio.timeout(5 * SECOND):
            while leg.writable:
                leg.send_text("A" * 60_000)
                await asyncio.sleep(0)
        before = leg.pending_bytes()
        assert before > leg_flow().buffer_bytes
        await reader.readexactly(256 * 1024)
        async with asyncio.timeout(5 * SECOND):
            while True:
                if leg.pending_bytes() < before:
                    break
                await asyncio.sleep(0.01)  # polling the kernel's count, bounded
        # Megabytes still wait in the kernel: its socket is not writable yet,
        # so the transport's buffer has not moved and the leg is still over
        # its mark. Only the kernel's queue could show the read.
        assert not leg.writable
        leg.abort()
        done.set()
