"""WebSocket frames (RFC 6455 §5) for the relay's hot path: parse, build, and pass through.

Once a session is established the relay moves frames between two sockets. A
frame that needs no change is forwarded as the bytes it arrived as: a client's
masked frame is a valid client frame towards the upstream, and the upstream's
unmasked frame a valid server frame towards the client. Only frames the
relay must read (client text for the policy; a few upstream events) are
unmasked and decoded, and only frames it changes are built anew.

:class:`FrameReader` is fed bytes and yields complete frames; it enforces a
maximum message size and the protocol's structural rules, and reassembles
fragmented messages. Nothing here touches a socket.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias


try:
    from websockets.speedups import apply_mask
except ImportError:  # no C extension for this platform: websockets' own fallback
    from websockets.utils import apply_mask


__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "Admission",
    "Frame",
    "FrameReader",
    "ProtocolFailure",
    "Unjoined",
    "build_frame",
    "close_payload",
    "parse_close",
    "valid_close_code",
]

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_DATA: Final = frozenset({CONTINUATION, TEXT, BINARY})
_CONTROL: Final = frozenset({CLOSE, PING, PONG})
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_HEAD16: Final = struct.Struct("!BBH")
"""A header with a 16-bit length: first byte, 126, length (unmasked)."""
_HEAD64: Final = struct.Struct("!BBQ")
"""A header with a 64-bit length: first byte, 127, length (unmasked)."""


class ProtocolFailure(Exception):
    """The peer broke the protocol; close with ``code`` (1002, 1007 or 1009).

    ``frames`` are the frames the same :meth:`FrameReader.feed` completed
    before the failure: they arrived intact and are handled before closing.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames: list[Frame] = []


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete message (or control frame) as the relay sees it.

    ``payload`` is the unmasked payload; ``raw`` is the frame exactly as
    received, ready to forward, or ``None`` for a message reassembled from
    fragments (forwarding it means building a new frame). ``text`` is the
    decoded payload of a reassembled text message (its fragments were
    validated one by one as they arrived); ``None`` otherwise.
    """

    opcode: int
    payload: bytes
    raw: bytes | None
    text: str | None = None
    unjoined: Unjoined | None = None
    """A large frame not joined yet (see ``FrameReader(join_below=...)``):
    ``payload`` and ``raw`` are empty until its owner joins it."""


@dataclass(slots=True)
class Unjoined:
    """A large data frame as its reads delivered it, for its owner to join in steps.

    Joining and unmasking megabytes costs tens of milliseconds; done when the
    last read arrives, they would stall every other connection that long.
    """

    parts: list[bytes] | list[bytearray]
    """The frame's bytes as received (header, mask and payload); for a
    fragmented message, its fragments' unmasked payloads, in one buffer."""
    header: int
    """Bytes before the payload (the mask included)."""
    mask: bytes | None
    length: int
    """The payload's length."""
    text: bool = False
    """A fragmented text message: its UTF-8 was validated as the fragments
    arrived, and :meth:`complete` decodes it."""
    fragmented: bool = False

    def join(self) -> bytes:
        """The parts joined (then let go): the frame as received, or the message's payload."""
        joined = b"".join(self.parts)
        self.parts = []
        return joined

    def payload(self, raw: bytes) -> bytes:
        """The unmasked payload of ``raw`` (what :meth:`join` returned)."""
        payload = raw[self.header :]
        return payload if self.mask is None else apply_mask(payload, self.mask)

    def complete(self, opcode: int, joined: bytes) -> Frame:
        """The frame or message, from what :meth:`join` returned."""
        if not self.fragmented:
            return Frame(opcode, self.payload(joined), joined)
        # Validated fragment by fragment: decoding cannot fail.
        return Frame(opcode, joined, None, joined.decode() if self.text else None)


Admission: TypeAlias = Callable[[int, bool], bool]
"""Decides on a data frame from its header: ``admit(length, first)``.

``first`` says the frame starts a message. The answer for a first frame
decides the whole message: a refused message is skipped unread (its payload
is neither buffered, unmasked nor decoded) and its later fragments with it.
For its later fragments the call only reports their length (the answer is
ignored): a message admitted is admitted whole. The fragments of a refused
message are not reported."""


class FrameReader:
    """Turns received bytes into frames.

    Args:
        expect_mask: frames from a client must be masked; from a server, not.
        max_size: the largest message accepted (payload bytes); larger ones
            fail with 1009.
        max_frames, max_bytes: the most one :meth:`feed` parses: that many
            frames (control frames, fragments and skipped frames count), and
            none after the one that takes their payloads to ``max_bytes``.
            The rest stays buffered, :attr:`ready` says so, and ``feed(b"")``
            goes on. A caller bounds its work per read this way.

    :attr:`admit`, when set, is asked about every data frame as soon as its
    header is complete (see :data:`Admission`), before its payload is
    waited for: limits act before any work on the payload.
    """

    __slots__ = (
        "_chunks",
        "_decided",
        "_decoder",
        "_dropping",
        "_expect_mask",
        "_fragments",
        "_fragments_size",
        "_join_below",
        "_large",
        "_max_bytes",
        "_max_frames",
        "_max_size",
        "_needed",
        "_opcode",
        "_pending",
        "_skip",
        "_utf8_pending",
        "admit",
        "ready",
        "skipped",
    )

    def __init__(
        self,
        *,
        expect_mask: bool,
        max_size: int,
        max_frames: int = 1 << 62,
        max_bytes: int = 1 << 62,
        join_below: int = 1 << 62,
    ) -> None:
        self._expect_mask = expect_mask
        # A whole data frame with a payload of at least join_below bytes that
        # arrives over several reads is returned unjoined (Frame.unjoined).
        self._join_below = join_below
        # Such a frame waiting for its payload: (header length, mask).
        self._large: tuple[int, bytes | None] | None = None
        self._max_size = max_size
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self.ready = False
        """Whether buffered bytes may already hold frames: ``feed(b"")`` would parse them."""
        self.admit: Admission | None = None
        """Asked about each data frame at its header; ``None`` admits all."""
        self.skipped = False
        """Set when a feed refused a message or skipped bytes of one; the
        caller clears it (a leg paces the reading of a peer whose messages
        are being refused)."""
        # Received bytes not yet part of a frame. They are kept as the reads
        # delivered them and joined only once the incomplete frame can be
        # complete (``_needed``): a 16 MiB frame arriving in 4 KiB reads is
        # copied once, not once per read.
        self._chunks: list[bytes] = []
        self._pending = 0  # bytes in _chunks
        self._needed = 0  # bytes the first frame in _chunks needs in all
        # The first frame in _chunks was admitted already (its header is
        # parsed again when the rest arrives; it is not asked about twice).
        self._decided = False
        # Payload bytes of a refused frame still to arrive: discarded unread.
        self._skip = 0
        # A fragmented message being reassembled (or dropped): its opcode,
        # its payload so far (one buffer: thousands of small fragments held
        # as objects cost twice the memory and scatter the heap), its size,
        # and for text a decoder that validates each fragment as it arrives,
        # so invalid UTF-8 fails at the fragment that carries it. What it
        # decodes is not kept: the whole message is decoded once, complete.
        self._opcode: int | None = None
        self._dropping = False
        self._fragments = bytearray()
        self._fragments_size = 0
        self._decoder: codecs.IncrementalDecoder | None = None
        # The decoder holds the start of a character cut by a fragment's end.
        self._utf8_pending = False

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completed, in order (within the bounds).

        Raises:
            ProtocolFailure: the peer broke the protocol; the caller must close
                the connection with the failure's code, after handling the
                frames completed before it (``failure.frames``).
        """
        if self._skip and data:
            # The rest of a refused frame: dropped as it arrives.
            self.skipped = True
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        if self._chunks:
            self._chunks.append(data)
            self._pending += len(data)
            if self._pending < self._needed:
                return []
            if self._large is not None:
                return [self._unjoined()]
            buffer = b"".join(self._chunks)
        else:
            buffer = data
        frames: list[Frame] = []
        position = 0
        end = len(buffer)
        needed = 2  # bytes the frame at ``position`` needs: its header first
        budget_frames, budget_bytes = self._max_frames, self._max_bytes
        try:
            while end - position >= 2:
                if budget_frames <= 0 or budget_bytes <= 0:
                    needed = 0  # more may be complete already: see `ready`
                    break
                first, second = buffer[position], buffer[position + 1]
                fin = first & 0x80
                if first & 0x70:
                    raise ProtocolFailure(
                        1002, "reserved bits set (no extension was negotiated)"
                    )
                opcode = first & 0x0F
                masked = second & 0x80
                if bool(masked) != self._expect_mask:
                    raise ProtocolFailure(
                        1002, "masking does not match the peer's role"
                    )
                length = second & 0x7F
                header = 2
                if length == 126:
                    if end - position < 4:
                        needed = 4
                        break
                    (length,) = _U16.unpack_from(buffer, position + 2)
                    header = 4
                    if length < 126:
                        raise ProtocolFailure(
                            1002, "payload length not minimally encoded"
                        )
                elif length == 127:
                    if end - position < 10:
                        needed = 10
                        break
                    (length,) = _U64.unpack_from(buffer, position + 2)
                    header = 10
                    if length >> 63:
                        raise ProtocolFailure(
                            1002, "payload length with its most significant bit set"
                        )
                    if length < 1 << 16:
                        raise ProtocolFailure(
                            1002, "payload length not minimally encoded"
                        )
                control = opcode in _CONTROL
                if control:
                    if length > 125 or not fin:
                        raise ProtocolFailure(1002, "invalid control frame")
                elif opcode not in _DATA:
                    raise ProtocolFailure(1002, "unknown opcode")
                elif opcode == CONTINUATION:
                    if self._opcode is None:
                        raise ProtocolFailure(1002, "continuation without a message")
                elif self._opcode is not None:
                    raise ProtocolFailure(1002, "new message inside a fragmented one")
                if length + self._fragments_size > self._max_size:
                    raise ProtocolFailure(1009, "message too big")
                mask_at = position + header
                payload_at = mask_at + (4 if masked else 0)
                frame_end = payload_at + length
                if not control and not (position == 0 and self._decided):
                    # A data frame's header, seen for the first time: decide now,
                    # before waiting for (or working on) its payload.
                    admit = self.admit
                    if opcode != CONTINUATION:
                        keep = admit is None or admit(length, True)
                    elif self._dropping:
                        keep = False  # the rest of a refused message
                    else:
                        keep = True  # a message admitted is admitted whole
                        if admit is not None:
                            admit(length, False)
                    if not keep:
                        budget_frames -= 1
                        self.skipped = True
                        self._drop(opcode, bool(fin), length)
                        if frame_end > end:
                            self._skip = frame_end - end
                            position = end
                            break
                        position = frame_end
                        continue
                if frame_end > end:
                    self._decided = not control
                    needed = frame_end - position
                    if (
                        length >= self._join_below
                        and fin
                        and not control
                        and opcode != CONTINUATION
                    ):
                        mask = buffer[mask_at:payload_at] if masked else None
                        self._large = (payload_at - position, mask)
                    break
                self._decided = False
                payload = buffer[payload_at:frame_end]
                if masked:
                    payload = apply_mask(payload, buffer[mask_at:payload_at])
                raw = (
                    buffer[position:frame_end]
                    if fin and opcode != CONTINUATION
                    else None
                )
                position = frame_end
                budget_frames -= 1
                budget_bytes -= length
                frame = self._assemble(opcode, bool(fin), payload, raw)
                if frame is not None:
                    frames.append(frame)
        except ProtocolFailure as failure:
            failure.frames = frames
            self._chunks = []
            self._large = None
            self.ready = False
            raise
        if position < end:
            self._chunks = [buffer[position:] if position else buffer]
            self._pending = end - position
            self._needed = needed
            self.ready = not needed
        elif self._chunks:
            # Everything consumed (the usual case keeps its empty list).
            self._chunks = []
            self.ready = False
        return frames

    def _unjoined(self) -> Frame:
        # The large frame at the start of _chunks is complete: hand it over
        # as its pieces; what follows it stays for the next feed.
        assert self._large is not None
        header, mask = self._large
        self._large = None
        self._decided = False
        total = self._needed  # the frame's bytes, header included
        opcode = self._chunks[0][0] & 0x0F
        extra = self._pending - total  # bytes of the frames after it
        parts = self._chunks
        rest = b""
        if extra:
            last = parts[-1]
            parts[-1], rest = last[: len(last) - extra], last[len(last) - extra :]
        self._chunks = [rest] if rest else []
        self._pending = extra
        self._needed = 0
        self.ready = bool(rest)
        return Frame(
            opcode,
            b"",
            None,
            unjoined=Unjoined(parts, header, mask, total - header),
        )

    def discard(self) -> None:
        """Let go of everything buffered (the connection is gone).

        A finished connection's objects may wait for the cyclic garbage
        collector; its buffers, up to a maximum-size message, should not.
        """
        self._chunks, self._pending, self._needed = [], 0, 0
        self._fragments, self._decoder = bytearray(), None
        self._fragments_size, self._large, self.ready = 0, None, False

    @property
    def buffered(self) -> int:
        """Bytes held for frames and messages not complete yet."""
        return self._pending * bool(self._chunks) + len(self._fragments)

    def _drop(self, opcode: int, fin: bool, length: int) -> None:
        # A refused data frame: the message it belongs to is dropped whole,
        # while the fragmentation rules (and the size limit) still hold.
        if opcode != CONTINUATION:
            self._opcode = None if fin else opcode
            self._dropping = not fin
            self._fragments_size = 0 if fin else length
            return
        self._fragments, self._decoder = bytearray(), None
        if fin:
            self._opcode, self._dropping, self._fragments_size = None, False, 0
        else:
            self._dropping = True
            self._fragments_size += length

    def _assemble(
        self, opcode: int, fin: bool, payload: bytes, raw: bytes | None
    ) -> Frame | None:
        # The fragmentation rules were checked at the header.
        if opcode in _CONTROL:
            return Frame(opcode, payload, raw)
        if opcode == CONTINUATION:
            self._fragments += payload
            self._fragments_size += len(payload)
            if self._decoder is not None:
                self._validate(payload, fin)
            if not fin:
                return None
            started = self._opcode
            assert started is not None, "checked at the header"
            size = self._fragments_size
            text = self._decoder is not None
            if size >= self._join_below:
                # Joining (and decoding) is left to the owner, as for a large frame.
                pieces = Unjoined([self._fragments], 0, None, size, text, True)
                message = Frame(started, b"", None, unjoined=pieces)
            else:
                joined = bytes(self._fragments)
                message = Frame(
                    started, joined, None, joined.decode() if text else None
                )
            self._opcode, self._fragments, self._fragments_size = None, bytearray(), 0
            self._decoder = None
            return message
        if fin:
            return Frame(opcode, payload, raw)
        self._opcode = opcode
        self._fragments = bytearray(payload)
        self._fragments_size = len(payload)
        if opcode == TEXT:
            self._decoder = _utf8()
            self._utf8_pending = False
            self._validate(payload, False)
        return None

    def _validate(self, payload: bytes, final: bool) -> None:
        # ASCII after a complete character is valid whatever follows: no
        # decoding (the common case, JSON with base64 audio, costs a scan).
        if not self._utf8_pending and payload.isascii():
            return
        decoder = self._decoder
        assert decoder is not None
        try:
            decoder.decode(payload, final)
        except UnicodeDecodeError:
            raise ProtocolFailure(1007, "invalid UTF-8 in a text message") from None
        self._utf8_pending = bool(decoder.getstate()[0])


_utf8 = codecs.getincrementaldecoder("utf-8")


def build_frame(
    opcode: int,
    payload: bytes,
    *,
    mask: bool,
    random: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """One complete frame; masked with a fresh key when sent by a client."""
    length = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + _U16.pack(length)
    else:
        head += bytes([bit | 127]) + _U64.pack(length)
    if not mask:
        return head + payload
    key = random(4)
    return head + key + apply_mask(payload, key)


def edited_frame(raw: bytes, head: bytes, cut: int) -> bytes:
    """The unmasked frame ``raw`` with its payload's first ``cut`` bytes replaced by ``head``.

    For a complete frame received from a server (unmasked), to forward to a
    client with a changed beginning (a renamed event type) without copying
    its payload more than once. The header is rebuilt: the length changes,
    and with it, at 126 and 65,536 bytes, the header's size.
    """
    code = raw[1]
    if code & 0x80:
        raise ValueError("a masked frame cannot be edited in place")
    offset = 2 if code < 126 else 4 if code == 126 else 10
    length = len(raw) - offset - cut + len(head)
    if length < 126:
        header = bytes((raw[0], length))
    elif length < 1 << 16:
        header = _HEAD16.pack(raw[0], 126, length)
    else:
        header = _HEAD64.pack(raw[0], 127, length)
    return b"".join((header, head, memoryview(raw)[offset + cut :]))


def valid_close_code(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455 §7.4, IANA registry).

    1005, 1006 and 1015 are reserved for reporting and never sent; 1004 and
    1016-2999 are unassigned or reserved for the protocol.
    """
    return (
        1000 <= code <= 1014 and code not in (1004, 1005, 1006)
    ) or 3000 <= code <= 4999


def close_payload(code: int, reason: str) -> bytes:
    """The payload of a close frame (reason at most 123 bytes, as callers ensure)."""
    return _U16.pack(code) + reason.encode()


def parse_close(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a received close frame; 1005 when it had no code.

    Raises:
        ProtocolFailure: a one-byte payload, or a reason that is not UTF-8.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolFailure(1002, "invalid close frame")
    (code,) = _U16.unpack_from(payload)
    if not valid_close_code(code):
        raise ProtocolFailure(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ProtocolFailure(1007, "close reason is not UTF-8") from None
    return code, reason
