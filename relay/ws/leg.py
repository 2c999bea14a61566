"""One established WebSocket connection of a session, driven by protocol callbacks.

A :class:`Leg` owns a transport after the handshake. It reads frames with
:class:`~relay.ws.frames.FrameReader`, answers pings, runs the closing handshake
and its own keepalive, and hands data messages to the session's driver
through plain callbacks: no task, no queue and no ASGI message per frame.
Writes go straight to the transport; a transport over its high-water mark
marks the leg not writable, and the driver stops reading the other leg until
it drains (TCP then pushes back on whoever produces too fast).

Both legs use it: the client's (the relay is the server: frames arrive
masked, leave unmasked) and the upstream's (the relay is the client).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Final, TypeAlias

import structlog

from relay.sansio.quotas import TokenBucket
from relay.ws.frames import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    Admission,
    Frame,
    FrameReader,
    ProtocolFailure,
    build_frame,
    close_payload,
    edited_frame,
    parse_close,
)
from relay.ws.lane import LANE_FROM, lane
from relay.ws.memory import LARGE_MESSAGE, trimmer
from relay.ws.sockets import send_queue, socket_fd


__all__ = [
    "BYTES_PER_TURN",
    "CONTROL_BURST",
    "CONTROL_RATE",
    "FRAMES_PER_TURN",
    "REFUSED_PAUSE",
    "Leg",
    "MessageHandler",
]

FRAMES_PER_TURN: Final = 64
"""Frames a leg handles per turn of the event loop; then it yields to the others."""
BYTES_PER_TURN: Final = 256 * 1024
"""Payload bytes after which a leg yields, whatever the number of frames.

Together these bound what one read callback costs, so a peer that sends
thousands of tiny frames (or megabytes at once) in one TCP read cannot hold
the event loop, and every other session, while they are handled: the rest
waits in the frame reader, reading pauses, and handling goes on in a later
turn of the loop."""
CONTROL_BURST: Final = 64
"""Control frames (ping, pong, close) a peer may send at once..."""
CONTROL_RATE: Final = 8.0
"""... and per second after that. Keepalives need one every few seconds at
most; a peer over this budget is flooding, and its connection is closed with
1008 (policy violation)."""

REFUSED_PAUSE: Final = 0.02
"""Seconds a leg sits out after a turn in which it refused a message (or
skipped bytes of one): no reading from that peer meanwhile.

Refusing is cheap per message, not free: every frame header is still parsed.
A peer over its rate limit that sends as fast as the socket takes (thousands
of fragments or tiny frames per turn) would otherwise cost the loop a full
turn's budget every turn, and after it stops, its backlog in the kernel's
buffers (and in its own send queue) still costs that until it is read. Paced,
such a peer costs at most one turn's budget per pause, about 3,200 frames a
second; the rest waits in TCP, which pushes back on the sender. A client over
its limit only briefly (a burst) loses nothing by it: what it sends during
the pause waits in the kernel and is read, and judged, after it."""

MessageHandler: TypeAlias = Callable[[str | bytes, bytes | None, int], None]
"""Receives each data message: text as ``str`` (valid UTF-8), binary as
``bytes``; the frame as received (``None`` if it was fragmented); and the
payload's size in bytes."""

log = structlog.get_logger("relay.legs")


class Leg:
    """A WebSocket connection in the session's hot path; see the module docstring.

    Args:
        transport: the connection, handshake done.
        server: whether the relay is the server on this connection.
        max_size: largest message accepted; larger fails the leg with 1009.
        ping_interval, ping_timeout: keepalive (``None`` disables it).
        close_timeout: how long to wait for the peer's close frame after ours.
        write_limit: bytes the transport may buffer before the leg stops
            being writable (its high-water mark).
        name: ``client`` or ``upstream`` (for logs).

    Until :meth:`attach`, complete messages are kept and reading pauses after
    the first one, so a peer cannot fill memory before the session starts.
    """

    # Hundreds of legs per replica: slots, not a dict each.
    __slots__ = (
        "_after_lane",
        "_backlog",
        "_close_timeout",
        "_close_timer",
        "_control",
        "_ended",
        "_fd",
        "_in_lane",
        "_lane",
        "_loop",
        "_mask",
        "_on_closed",
        "_on_message",
        "_on_skipped",
        "_on_writable",
        "_pause",
        "_pending",
        "_ping_interval",
        "_ping_payload",
        "_ping_timeout",
        "_ping_timer",
        "_pong_timer",
        "_reader",
        "_reading",
        "_transport",
        "_trimmer",
        "close_sent",
        "done",
        "finished",
        "name",
        "writable",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        server: bool,
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        write_limit: int,
        name: str,
    ) -> None:
        self._transport = transport
        transport.set_write_buffer_limits(high=write_limit)
        # The socket, for what its kernel send queue holds (stall watchdog).
        self._fd = socket_fd(transport)
        self._mask = not server
        self._reader = FrameReader(
            expect_mask=server,
            max_size=max_size,
            max_frames=FRAMES_PER_TURN,
            max_bytes=BYTES_PER_TURN,
            join_below=LANE_FROM,
        )
        self._loop = asyncio.get_running_loop()
        self._trimmer = trimmer()
        self._lane = lane()
        # A large message of this leg is in the lane: nothing more is read or
        # handled until it is (frames parsed meanwhile wait here, in order).
        self._in_lane = False
        self._after_lane: list[Frame] = []
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self.name = name
        # Handlers set by the driver; until then messages wait in `_pending`.
        self._on_message: MessageHandler | None = None
        self._on_closed: Callable[[int, str], None] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._on_skipped: Callable[[], None] | None = None
        self._pending: list[tuple[str | bytes, bytes | None, int]] = []
        # Flow control.
        self.writable = True
        """False while the transport's buffer is over its high-water mark."""
        # Reading is paused while the driver asks (backpressure) or while
        # frames already received wait for a later turn (fairness).
        self._reading = True
        self._backlog = False
        # Sitting out after a turn that refused (REFUSED_PAUSE): the timer.
        self._pause: asyncio.TimerHandle | None = None
        self._control = TokenBucket(CONTROL_RATE, CONTROL_BURST, self._loop.time())
        # Closing.
        self.close_sent = False
        self.finished = False
        """The connection is gone; the close code was reported."""
        self.done: asyncio.Future[int] = self._loop.create_future()
        """Resolved with the close code once the leg is finished."""
        self._ended: tuple[int, str] = (1006, "")
        self._close_timer: asyncio.TimerHandle | None = None
        # Keepalive.
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._schedule_ping()

    # Wiring

    def attach(
        self,
        on_message: MessageHandler,
        on_closed: Callable[[int, str], None],
        on_writable: Callable[[], None],
        admit: Admission | None = None,
        on_skipped: Callable[[], None] | None = None,
    ) -> None:
        """Start delivering to the driver: first what arrived before, then as it comes.

        ``admit`` decides on each data message from its first frame's header
        (see :data:`~relay.ws.frames.Admission`); messages that arrived before
        are put to it now, each as one frame. ``on_skipped`` is called after
        each read that skipped bytes of refused messages (then the leg sits
        out :data:`REFUSED_PAUSE`). Reading resumes; the driver
        pauses it again as flow control needs.
        """
        self._on_message, self._on_closed, self._on_writable = (
            on_message,
            on_closed,
            on_writable,
        )
        self._on_skipped = on_skipped
        self._reader.admit = _refuse_all if self.close_sent else admit
        pending, self._pending = self._pending, []
        for message in pending:
            if admit is None or admit(message[2], True):
                on_message(*message)
        if self.finished:
            on_closed(*self._ended)
        else:
            self._set_reading(True)

    # Protocol callbacks (from the transport's protocol)

    def data_received(self, data: bytes) -> None:
        """Feed bytes from the transport; handle at most one turn's worth of frames."""
        if self.finished:
            return
        try:
            frames = self._reader.feed(data)
        except ProtocolFailure as failure:
            # What arrived intact before the violation is handled first.
            self._handle(failure.frames)
            if not self.done.done():
                self._fail(failure)
            return
        self._handle(frames)
        if self.done.done():
            return
        reader = self._reader
        if reader.skipped:
            # Refused messages this turn: sit out a while (REFUSED_PAUSE).
            reader.skipped = False
            if self._pause is None:
                self._pause = self._loop.call_later(REFUSED_PAUSE, self._paused)
                self._apply_reading()
            if self._on_skipped is not None:
                self._on_skipped()
        elif reader.ready and not self._backlog:
            # More frames arrived than one turn handles: yield to the other
            # connections, and go on in a later turn (without reading more).
            self._backlog = True
            self._apply_reading()
            self._loop.call_soon(self._next_turn)

    def _paused(self) -> None:
        self._pause = None
        self._next_turn()

    def _handle(self, frames: list[Frame]) -> None:
        if self._in_lane:
            self._after_lane.extend(frames)
            return
        for index, frame in enumerate(frames):
            opcode = frame.opcode
            if opcode in (TEXT, BINARY):
                large = frame.unjoined is not None or len(frame.payload) >= LANE_FROM
                if large and self._on_message is not None:
                    self._in_lane = True
                    self._after_lane = frames[index + 1 :]
                    self._apply_reading()
                    self._lane.submit(self._through_lane(frame))
                    return
                self._deliver(frame)
            elif not self._control.take(1, self._loop.time()):
                self._fail(ProtocolFailure(1008, "control frames over budget"))
            elif opcode == PING:
                self._write(build_frame(PONG, frame.payload, mask=self._mask))
            elif opcode == PONG:
                self._pong(frame.payload)
            elif opcode == CLOSE:
                self._close_received(frame.payload)
            if self.done.done():  # a callback or a close frame ended the leg
                return

    def _through_lane(self, frame: Frame) -> Iterator[None]:
        # A step each: join the pieces, unmask, decode, the driver's handling;
        # then this leg goes on.
        yield
        unjoined = frame.unjoined
        if unjoined is not None and not (self.finished or self.close_sent):
            joined = unjoined.join()
            yield
            frame = unjoined.complete(frame.opcode, joined)
            yield
        data = None if self.finished or self.close_sent else self._decoded(frame)
        yield
        if data is not None and not self.finished:
            self._hand_over(data, frame)
        self._in_lane = False
        after, self._after_lane = self._after_lane, []
        if self.done.done():
            return
        self._handle(after)
        if self.done.done() or self._in_lane:
            return
        self._apply_reading()
        if self._reader.ready and not self._backlog:
            self._backlog = True
            self._apply_reading()
            self._loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._backlog = False
        if self.finished or self._in_lane or self._pause is not None:
            return  # the lane, or the pause's end, goes on
        if self._reading or self.close_sent:
            self.data_received(b"")
        self._apply_reading()

    def _fail(self, failure: ProtocolFailure) -> None:
        # The stream cannot be read further: say why, and end the leg.
        log.info(
            "leg.protocol_error",
            leg=self.name,
            code=failure.code,
            reason=failure.reason,
        )
        if not self.close_sent:
            payload = close_payload(failure.code, failure.reason)
            self._write(build_frame(CLOSE, payload, mask=self._mask))
            self._closing()
        self._finish(failure.code, failure.reason)

    def connection_lost(self) -> None:
        """The transport is gone (closed by either side, or reset)."""
        self._finish(1006, "")

    def pause_writing(self) -> None:
        """The transport's buffer went over its high-water mark."""
        self.writable = False
        if self._on_writable is not None:
            self._on_writable()

    def resume_writing(self) -> None:
        """The transport's buffer drained below its low-water mark."""
        self.writable = True
        if self._on_writable is not None:
            self._on_writable()

    def _deliver(self, frame: Frame) -> None:
        unjoined = frame.unjoined
        if unjoined is not None:  # not through the lane: joined at once
            frame = unjoined.complete(frame.opcode, unjoined.join())
        data = self._decoded(frame)
        if data is not None:
            self._hand_over(data, frame)

    def _decoded(self, frame: Frame) -> str | bytes | None:
        # The message's data (text as str); None if the leg failed on it.
        if frame.text is not None:
            return frame.text  # reassembled: validated fragment by fragment
        payload = frame.payload
        if frame.opcode != TEXT:
            return payload
        try:
            return payload.decode()
        except UnicodeDecodeError:
            self._fail(ProtocolFailure(1007, "invalid UTF-8 in a text message"))
            return None

    def _hand_over(self, data: str | bytes, frame: Frame) -> None:
        payload = frame.payload
        if len(payload) >= LARGE_MESSAGE:
            self._trimmer.released(len(payload))  # its buffers are freed soon
        if self.close_sent:
            return  # closing: data is no longer relayed
        if self._on_message is None:
            self._pending.append((data, frame.raw, len(payload)))
            self._set_reading(False)
        else:
            self._on_message(data, frame.raw, len(payload))

    # Driver operations

    def set_reading(self, reading: bool) -> None:
        """Pause or resume reading from the peer (backpressure).

        Ignored once closing: the peer's close frame must still be read.
        """
        if not self.close_sent and not self.finished:
            self._set_reading(reading)

    def send_text(self, text: str) -> None:
        """Send a text message built from ``text`` (dropped once closing)."""
        if not self.close_sent:
            self._write(build_frame(TEXT, text.encode(), mask=self._mask))

    def send_binary(self, data: bytes) -> None:
        """Send a binary message (dropped once closing)."""
        if not self.close_sent:
            self._write(build_frame(BINARY, data, mask=self._mask))

    def send_raw(self, raw: bytes) -> None:
        """Send a frame exactly as the other leg received it (dropped once closing).

        Valid because a client's masked frame is a valid frame towards a
        server, and a server's unmasked frame one towards a client.
        """
        if not self.close_sent:
            self._write(raw)

    def send_edited(self, raw: bytes, head: bytes, cut: int) -> None:
        """Send a server's frame ``raw`` with its payload's first ``cut`` bytes
        replaced by ``head`` (see :func:`~relay.ws.frames.edited_frame`;
        dropped once closing)."""
        if not self.close_sent:
            self._write(edited_frame(raw, head, cut))

    def pending_bytes(self) -> int:
        """Bytes written to the leg that its peer has not taken yet, as far as visible.

        The transport's buffer plus, where the platform tells, the kernel's
        send queue: it goes down whenever the peer reads (the stall watchdog's
        evidence of progress), even while the transport's buffer cannot move.
        One system call; not for the per-frame path.
        """
        buffered = self._transport.get_write_buffer_size()
        if self._transport.is_closing():
            return buffered  # the socket may be gone: its number may be reused
        return buffered + send_queue(self._fd)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the peer has ``close_timeout`` to answer."""
        if self.finished or self.close_sent:
            return
        self._write(build_frame(CLOSE, close_payload(code, reason), mask=self._mask))
        self._closing()
        # Keep reading: the peer's close frame completes the handshake.
        self._set_reading(True)
        self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def abort(self) -> None:
        """Drop the connection at once (RST); nothing more is delivered."""
        if not self.finished:
            self._transport.abort()
            self._finish(1006, "")

    # Internals

    def _write(self, data: bytes) -> None:
        if not self.finished and not self._transport.is_closing():
            self._transport.write(data)

    def _closing(self) -> None:
        # Our close frame is out: data is no longer relayed, so what the peer
        # still sends is skipped at each frame's header, unread (a flooding
        # peer costs no unmasking or decoding until its close arrives or
        # close_timeout drops it).
        self.close_sent = True
        self._reader.admit = _refuse_all

    def _set_reading(self, reading: bool) -> None:
        if reading == self._reading:
            return
        self._reading = reading
        if reading and not self._backlog and self._reader.ready:
            # Frames held back while reading was paused come first.
            self._backlog = True
            self._loop.call_soon(self._next_turn)
        self._apply_reading()

    def _apply_reading(self) -> None:
        if self._transport.is_closing():
            return
        if (
            self._reading
            and not self._backlog
            and not self._in_lane
            and self._pause is None
        ):
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def _close_received(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except ProtocolFailure as failure:
            code, reason = failure.code, failure.reason
        if not self.close_sent:
            # Echo the code (RFC 6455 §5.5.1); 1005 means the frame had none.
            self._write(
                build_frame(
                    CLOSE,
                    close_payload(code, "") if code != 1005 else b"",
                    mask=self._mask,
                )
            )
            self._closing()
        self._transport.close()
        self._finish(code, reason)

    def _finish(self, code: int, reason: str) -> None:
        if self.finished:
            return
        self.finished = True
        self._trimmer.released(self._reader.buffered)
        self._reader.discard()
        self._after_lane = []
        for timer in (
            self._close_timer,
            self._ping_timer,
            self._pong_timer,
            self._pause,
        ):
            if timer is not None:
                timer.cancel()
        if not self._transport.is_closing():
            self._transport.close()
        self._ended = (code, reason)
        self.done.set_result(code)
        if self._on_closed is not None:
            self._on_closed(code, reason)

    def _schedule_ping(self) -> None:
        if self._ping_interval is not None and not self.finished:
            self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.finished or self.close_sent:
            return
        self._ping_payload = os.urandom(4)
        self._write(build_frame(PING, self._ping_payload, mask=self._mask))
        if self._ping_timeout is not None:
            self._pong_timer = self._loop.call_later(
                self._ping_timeout, self._keepalive_timeout
            )
        else:
            self._schedule_ping()

    def _pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return  # unsolicited or stale
        self._ping_payload = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._schedule_ping()

    def _keepalive_timeout(self) -> None:
        self._pong_timer = None
        log.info("leg.keepalive_timeout", leg=self.name)
        # A dead or half-open peer: no close frame could arrive, drop it now.
        self.abort()


def _refuse_all(length: int, first: bool) -> bool:
    """The admission of a closing leg: every data message is skipped unread."""
    return False
