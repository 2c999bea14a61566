"""The hot path's frame codec, checked against the `websockets` library's own framing."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st
from websockets.frames import Frame as WsFrame, Opcode
from websockets.streams import StreamReader

from relay.ws.frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    Frame,
    FrameReader,
    ProtocolFailure,
    build_frame,
    close_payload,
    edited_frame,
    parse_close,
    valid_close_code,
)
from tests.helpers.timing import SECOND


def serialize(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    return WsFrame(Opcode(opcode), payload, fin=fin).serialize(mask=mask)


def parse_with_websockets(data: bytes, *, mask: bool) -> WsFrame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = WsFrame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
        assert isinstance(frame, WsFrame)
        return frame
    raise AssertionError("incomplete frame")


def feed_in_pieces(reader: FrameReader, data: bytes, cuts: list[int]) -> list[Frame]:
    """Feed ``data`` cut into pieces of the sizes ``cuts`` (then the rest); the frames."""
    frames: list[Frame] = []
    position = 0
    for cut in cuts:
        frames += reader.feed(data[position : position + cut])
        position += cut
    return frames + reader.feed(data[position:])


@given(
    st.sampled_from([TEXT, BINARY]),
    st.binary(max_size=70_000),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=5000), max_size=20),
)
def test_any_frame_in_any_chunking(
    opcode: int, payload: bytes, masked: bool, cuts: list[int]
) -> None:
    """Whatever the payload and however TCP splits it, the frame comes out whole and exact."""
    data = serialize(opcode, payload, mask=masked)
    frames = feed_in_pieces(
        FrameReader(expect_mask=masked, max_size=1 << 20), data, cuts
    )
    assert len(frames) == 1
    frame = frames[0]
    assert frame.opcode == opcode
    assert frame.raw == data  # forwardable as received
    assert frame.payload == payload


_STREAM_FRAMES = st.lists(
    st.tuples(
        st.sampled_from([TEXT, BINARY, PING]),
        st.binary(max_size=3000),
        st.integers(min_value=1, max_value=3),  # fragments of a data message
    ),
    min_size=1,
    max_size=8,
)


@given(
    _STREAM_FRAMES,
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_a_stream_of_frames_in_any_chunking(
    messages: list[tuple[int, bytes, int]], masked: bool, cuts: list[int]
) -> None:
    """Several messages (fragmented, with pings) read in any pieces: the same frames as in one read."""
    data = b""
    for opcode, payload, parts in messages:
        if opcode == TEXT:
            payload = payload.decode("latin-1").encode()  # fragments cut anywhere
        if opcode == PING:
            data += serialize(PING, payload[:125], mask=masked)
            continue
        size = -(-len(payload) // parts) or 1
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, piece in enumerate(pieces):
            kind = opcode if index == 0 else CONTINUATION
            last = index == len(pieces) - 1
            data += serialize(kind, piece, mask=masked, fin=last)
    expected = FrameReader(expect_mask=masked, max_size=1 << 20).feed(data)
    frames = feed_in_pieces(
        FrameReader(expect_mask=masked, max_size=1 << 20), data, cuts
    )
    assert frames == expected
    assert [f.opcode for f in frames] == [
        PING if opcode == PING else opcode for opcode, _, _ in messages
    ]


@given(st.binary(max_size=70_000), st.booleans())
def test_built_frames_parse_with_websockets(payload: bytes, masked: bool) -> None:
    """What the relay builds, the `websockets` parser reads back unchanged."""
    frame = parse_with_websockets(build_frame(TEXT, payload, mask=masked), mask=masked)
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.TEXT, payload, True)


def test_fragments_are_reassembled_around_control_frames() -> None:
    """A fragmented message, with a ping in the middle, arrives as one message after the ping."""
    data = (
        serialize(TEXT, b"hel", mask=True, fin=False)
        + serialize(PING, b"p", mask=True)
        + serialize(CONTINUATION, b"lo", mask=True)
    )
    frames = FrameReader(expect_mask=True, max_size=100).feed(data)
    assert [(f.opcode, f.payload) for f in frames] == [(PING, b"p"), (TEXT, b"hello")]
    assert frames[1].raw is None  # reassembled: forwarding means building a new frame


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (serialize(TEXT, b"x", mask=False), 1002),  # a client must mask
        (bytes([0x81 | 0x40, 0x80]) + b"\x00" * 4, 1002),  # RSV1 without an extension
        (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),  # unknown opcode
        (serialize(CONTINUATION, b"x", mask=True), 1002),  # continuation of nothing
        (
            serialize(TEXT, b"a", mask=True, fin=False)
            + serialize(TEXT, b"b", mask=True),
            1002,
        ),
        (bytes([0x09 | 0x00, 0x80]) + b"\x00" * 4, 1002),  # fragmented ping
        (
            bytes([0x89, 0x80 | 126, 0, 200]) + b"\x00" * 4 + b"x" * 200,
            1002,
        ),  # long ping
        (serialize(TEXT, b"x" * 101, mask=True), 1009),
        (
            serialize(TEXT, b"x" * 60, mask=True, fin=False)
            + serialize(CONTINUATION, b"x" * 60, mask=True),
            1009,
        ),
    ],
)
def test_protocol_violations(data: bytes, code: int) -> None:
    """Each violation names the close code to use."""
    with pytest.raises(ProtocolFailure) as info:
        FrameReader(expect_mask=True, max_size=100).feed(data)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("header", "code"),
    [
        # A 64-bit length with its most significant bit set (RFC 6455 §5.2).
        (bytes([0x81, 0x80 | 127]) + (2**63).to_bytes(8, "big"), 1002),
        (bytes([0x81, 0x80 | 127]) + (2**64 - 1).to_bytes(8, "big"), 1002),
        # A valid length, just too large: from the header alone.
        (bytes([0x81, 0x80 | 127]) + (2**62).to_bytes(8, "big"), 1009),
        # Non-minimal encodings: never forwarded as received.
        (bytes([0x81, 0x80 | 126, 0, 5]), 1002),
        (bytes([0x81, 0x80 | 126, 0, 125]), 1002),
        (bytes([0x81, 0x80 | 127]) + (5).to_bytes(8, "big"), 1002),
        (bytes([0x81, 0x80 | 127]) + (65535).to_bytes(8, "big"), 1002),
    ],
)
def test_lengths_are_checked_from_the_header(header: bytes, code: int) -> None:
    """Length rules fail before the payload arrives, with the right code."""
    with pytest.raises(ProtocolFailure) as failure:
        FrameReader(expect_mask=True, max_size=100).feed(header)
    assert failure.value.code == code


def test_minimal_lengths_at_the_boundaries_parse() -> None:
    """126 and 65,536 are the first lengths of the 16- and 64-bit encodings."""
    for size in (125, 126, 65535, 65536):
        frames = FrameReader(expect_mask=True, max_size=1 << 20).feed(
            serialize(BINARY, b"x" * size, mask=True)
        )
        assert [len(f.payload) for f in frames] == [size]


def test_invalid_utf8_fails_at_the_fragment_that_carries_it() -> None:
    """A fragmented text message is validated as it arrives, not at its end."""
    reader = FrameReader(expect_mask=True, max_size=1 << 20)
    # A code point split across fragments is fine...
    euro = "€".encode()
    assert reader.feed(serialize(TEXT, b"a" + euro[:1], mask=True, fin=False)) == []
    assert reader.feed(serialize(CONTINUATION, euro[1:], mask=True, fin=False)) == []
    # ... bytes that can never be UTF-8 fail at once, with no final fragment.
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(serialize(CONTINUATION, b"\xff", mask=True, fin=False))
    assert failure.value.code == 1007


def test_a_truncated_code_point_fails_at_the_final_fragment() -> None:
    reader = FrameReader(expect_mask=True, max_size=1 << 20)
    reader.feed(serialize(TEXT, "€".encode()[:2], mask=True, fin=False))
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(serialize(CONTINUATION, b"", mask=True))
    assert failure.value.code == 1007


def test_a_reassembled_text_message_comes_decoded() -> None:
    data = serialize(TEXT, "hé".encode(), mask=True, fin=False) + serialize(
        CONTINUATION, "llo €".encode(), mask=True
    )
    (frame,) = FrameReader(expect_mask=True, max_size=100).feed(data)
    assert (frame.text, frame.payload) == ("héllo €", "héllo €".encode())


def test_frames_before_a_protocol_error_in_the_same_read_are_kept() -> None:
    """What arrived intact before a violation is handed over with the failure."""
    data = (
        serialize(TEXT, b"one", mask=True)
        + serialize(PING, b"p", mask=True)
        + serialize(TEXT, b"x", mask=False)  # unmasked: a violation
        + serialize(TEXT, b"never", mask=True)
    )
    reader = FrameReader(expect_mask=True, max_size=100)
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(data)
    assert failure.value.code == 1002
    assert [(f.opcode, f.payload) for f in failure.value.frames] == [
        (TEXT, b"one"),
        (PING, b"p"),
    ]


class Admissions:
    """An admission callback that refuses the messages whose first frame is listed."""

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse
        self.calls: list[tuple[int, bool]] = []
        self._messages = 0

    def __call__(self, length: int, first: bool) -> bool:
        self.calls.append((length, first))
        if not first:
            return True
        self._messages += 1
        return self._messages - 1 not in self.refuse


def test_admission_is_asked_once_per_data_frame_from_its_header() -> None:
    """Control frames are not asked; a frame waiting for its payload is not asked twice."""
    admit = Admissions(set())
    reader = FrameReader(expect_mask=True, max_size=1 << 20)
    reader.admit = admit
    data = (
        serialize(TEXT, b"a" * 300, mask=True, fin=False)
        + serialize(PING, b"p", mask=True)
        + serialize(CONTINUATION, b"b" * 70_000, mask=True)
    )
    frames = feed_in_pieces(reader, data, [1, 3, 10, 100, 500, 1000, 1000])
    assert [f.opcode for f in frames] == [PING, TEXT]
    assert admit.calls == [(300, True), (70_000, False)]


def test_a_refused_message_is_skipped_unread() -> None:
    """Its payload is never buffered or unmasked; what follows it parses as usual."""
    admit = Admissions({0, 2})
    reader = FrameReader(expect_mask=True, max_size=1 << 24)
    reader.admit = admit
    refused = serialize(TEXT, b"\xff" * (8 << 20), mask=True)  # not even UTF-8
    assert reader.feed(refused[:10]) == []
    # The rest of the refused frame is dropped as it arrives: nothing kept.
    for offset in range(10, len(refused), 1 << 20):
        assert reader.feed(refused[offset : offset + (1 << 20)]) == []
        assert not reader._chunks
    fragments = (
        serialize(BINARY, b"a", mask=True, fin=False)
        + serialize(PING, b"p", mask=True)
        + serialize(CONTINUATION, b"\xff" * 300, mask=True, fin=False)
        + serialize(CONTINUATION, b"c", mask=True)
    )
    frames = reader.feed(serialize(TEXT, b"kept", mask=True) + fragments)
    frames += reader.feed(serialize(BINARY, b"after", mask=True))
    assert [(f.opcode, f.payload) for f in frames] == [
        (TEXT, b"kept"),
        (PING, b"p"),
        (BINARY, b"after"),
    ]
    # The fragments of the refused message were not reported.
    assert admit.calls == [(8 << 20, True), (4, True), (1, True), (5, True)]


def test_skipped_says_a_feed_refused_or_skipped_bytes() -> None:
    """Set by a refusal and by every read that skips a refused frame's bytes; never by an empty feed."""
    admit = Admissions({1})
    reader = FrameReader(expect_mask=True, max_size=1 << 24)
    reader.admit = admit

    def skipped() -> bool:
        # What a leg does after each feed: read the flag and clear it.
        was, reader.skipped = reader.skipped, False
        return was

    assert reader.feed(serialize(TEXT, b"kept", mask=True))
    assert not skipped()
    refused = serialize(TEXT, b"x" * 100_000, mask=True)
    assert reader.feed(refused[:20]) == []
    assert skipped()
    assert reader.feed(b"") == []  # what a leg feeds after its pause
    assert not skipped()
    assert reader.feed(refused[20:50_000]) == []
    assert skipped()
    frames = reader.feed(refused[50_000:] + serialize(TEXT, b"after", mask=True))
    assert [f.payload for f in frames] == [b"after"]
    assert skipped()


def test_a_refused_fragmented_message_still_obeys_the_rules() -> None:
    """Dropping a message does not suspend the fragmentation rules or the size limit."""
    reader = FrameReader(expect_mask=True, max_size=100)
    reader.admit = Admissions({0})
    reader.feed(serialize(TEXT, b"a" * 60, mask=True, fin=False))
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(serialize(CONTINUATION, b"b" * 60, mask=True, fin=False))
    assert failure.value.code == 1009
    reader = FrameReader(expect_mask=True, max_size=100)
    reader.admit = Admissions({0})
    reader.feed(serialize(TEXT, b"a", mask=True, fin=False))
    with pytest.raises(ProtocolFailure) as failure:
        reader.feed(serialize(TEXT, b"b", mask=True))
    assert failure.value.code == 1002


@given(
    _STREAM_FRAMES,
    st.sets(st.integers(min_value=0, max_value=8)),
    st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_refused_messages_vanish_in_any_chunking(
    messages: list[tuple[int, bytes, int]], refuse: set[int], cuts: list[int]
) -> None:
    """Whatever is refused and however TCP splits it: the other frames, exactly."""
    data = b""
    kept: list[tuple[int, bytes]] = []
    index = 0
    for opcode, payload, parts in messages:
        if opcode == PING:
            data += serialize(PING, payload[:125], mask=True)
            kept.append((PING, payload[:125]))
            continue
        if opcode == TEXT:
            payload = payload.decode("latin-1").encode()
        if index not in refuse:
            kept.append((opcode, payload))
        index += 1
        size = -(-len(payload) // parts) or 1
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for number, piece in enumerate(pieces):
            kind = opcode if number == 0 else CONTINUATION
            data += serialize(kind, piece, mask=True, fin=number == len(pieces) - 1)
    reader = FrameReader(expect_mask=True, max_size=1 << 20)
    reader.admit = Admissions(refuse)
    frames = feed_in_pieces(reader, data, cuts)
    assert [(f.opcode, f.payload) for f in frames] == kept


def test_close_payloads() -> None:
    """Close frames carry a code and a UTF-8 reason, or nothing (1005)."""
    assert parse_close(close_payload(4002, "peer stopped reading")) == (
        4002,
        "peer stopped reading",
    )
    assert parse_close(b"") == (1005, "")
    with pytest.raises(ProtocolFailure):
        parse_close(b"\x03")
    with pytest.raises(ProtocolFailure):
        parse_close(b"\x03\xe8\xff")


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
)
def test_reserved_close_codes_are_protocol_errors(code: int) -> None:
    """Codes no endpoint may send fail the connection with 1002 (as websockets does)."""
    with pytest.raises(ProtocolFailure) as failure:
        parse_close(close_payload(code, ""))
    assert failure.value.code == 1002
    assert not valid_close_code(code)


@pytest.mark.parametrize(
    "code", [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999]
)
def test_sendable_close_codes_parse(code: int) -> None:
    assert parse_close(close_payload(code, "r")) == (code, "r")
    assert valid_close_code(code)
    frame = parse_with_websockets(
        build_frame(CLOSE, close_payload(1000, "bye"), mask=False), mask=False
    )
    assert frame.data == b"\x03\xe8bye"


@given(st.binary(max_size=3000))
def test_garbage_never_crashes_the_reader(data: bytes) -> None:
    """Any bytes are frames, an incomplete frame, or a protocol failure."""
    with contextlib.suppress(ProtocolFailure):
        FrameReader(expect_mask=True, max_size=1 << 20).feed(data)


_WITHOUT_SPEEDUPS = """
import sys

sys.modules["websockets.speedups"] = None  # as if the C extension were not built

from websockets.utils import apply_mask

from relay.ws.frames import TEXT, FrameReader, build_frame

import relay.ws.frames

assert relay.ws.frames.apply_mask is apply_mask, relay.ws.frames.apply_mask
reader = FrameReader(expect_mask=True, max_size=1 << 20)
frames = list(reader.feed(build_frame(TEXT, b"x" * 1000, mask=True)))
assert [(f.opcode, f.payload) for f in frames] == [(TEXT, b"x" * 1000)], frames
print("ok")
"""


def test_without_the_websockets_c_extension_masks_in_python() -> None:
    """Where websockets.speedups is absent, websockets' pure-Python mask is used, as websockets does."""
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SPEEDUPS],
        capture_output=True,
        text=True,
        timeout=60 * SECOND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_frame_in_many_reads_costs_about_what_it_costs_in_one() -> None:
    """Linear buffering: 16 MiB in 4 KiB reads is not copied again on every read.

    CPU time of this process, compared with the same frame fed in one read:
    a reader that copied its partial frame per read needs about 4,000 times
    the frame's size in copies here (over a second), a linear one a few
    times the one-read cost.
    """
    frame = build_frame(BINARY, b"\x00" * (16 << 20), mask=True)
    started = time.process_time()
    whole = FrameReader(expect_mask=True, max_size=16 << 20).feed(frame)
    one_read = time.process_time() - started
    reader = FrameReader(expect_mask=True, max_size=16 << 20)
    pieces: list[Frame] = []
    started = time.process_time()
    for offset in range(0, len(frame), 4096):
        pieces += reader.feed(frame[offset : offset + 4096])
    many_reads = time.process_time() - started
    assert [f.payload for f in pieces] == [f.payload for f in whole]
    assert many_reads < 10 * one_read + 0.2, (many_reads, one_read)


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=1000),
)
def test_a_bounded_reader_gives_the_same_frames_turn_by_turn(
    payloads: list[bytes], max_frames: int, max_bytes: int
) -> None:
    """Within its bounds per feed, a reader yields the unbounded reader's frames, a turn at a time."""
    data = b"".join(serialize(BINARY, p, mask=True) for p in payloads)
    expected = FrameReader(expect_mask=True, max_size=1 << 20).feed(data)
    reader = FrameReader(
        expect_mask=True, max_size=1 << 20, max_frames=max_frames, max_bytes=max_bytes
    )
    frames = reader.feed(data)
    assert len(frames) <= max_frames
    for _ in range(len(payloads)):
        if not reader.ready:
            break
        turn = reader.feed(b"")
        assert 1 <= len(turn) <= max_frames
        assert sum(len(f.payload) for f in turn[:-1]) < max_bytes
        frames += turn
    assert not reader.ready
    assert frames == expected


def joined(frame: Frame) -> Frame:
    """``frame``, joined if the reader handed it over in pieces."""
    if frame.unjoined is None:
        return frame
    return frame.unjoined.complete(frame.opcode, frame.unjoined.join())


@given(
    _STREAM_FRAMES,
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_large_frames_in_pieces_come_unjoined_and_join_to_the_same(
    messages: list[tuple[int, bytes, int]], masked: bool, cuts: list[int]
) -> None:
    """A reader that leaves large frames unjoined gives the same frames once they are joined."""
    data = b""
    for opcode, payload, parts in messages:
        if opcode == PING:
            data += serialize(PING, payload[:125], mask=masked)
            continue
        if opcode == TEXT:
            payload = payload.decode("latin-1").encode()
        size = -(-len(payload) // parts) or 1
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for index, piece in enumerate(pieces):
            kind = opcode if index == 0 else CONTINUATION
            data += serialize(kind, piece, mask=masked, fin=index == len(pieces) - 1)
    expected = FrameReader(expect_mask=masked, max_size=1 << 20).feed(data)
    reader = FrameReader(expect_mask=masked, max_size=1 << 20, join_below=100)
    frames = feed_in_pieces(reader, data, cuts)
    assert [joined(frame) for frame in frames] == expected
    for frame in frames:
        if frame.unjoined is not None:
            assert frame.unjoined.length >= 100


def test_a_large_frame_arriving_in_reads_is_handed_over_in_pieces() -> None:
    """Joining (and unmasking) it is left to the owner: the last read costs nothing more."""
    payload = os.urandom(300_000)
    data = serialize(BINARY, payload, mask=True) + serialize(TEXT, b"next", mask=True)
    reader = FrameReader(expect_mask=True, max_size=1 << 20, join_below=200_000)
    frames: list[Frame] = []
    for offset in range(0, len(data), 4096):
        frames += reader.feed(data[offset : offset + 4096])
    frames += reader.feed(b"") if reader.ready else []
    first, second = frames
    assert first.unjoined is not None
    assert len(first.unjoined.parts) > 70  # as the reads delivered it
    assert joined(first).payload == payload
    assert (second.opcode, second.payload) == (TEXT, b"next")


def test_discard_lets_go_of_partial_frames_and_messages() -> None:
    """What a gone connection held is freed at once, not when the collector finds it."""
    reader = FrameReader(expect_mask=True, max_size=1 << 24, join_below=1 << 20)
    reader.feed(serialize(TEXT, b"a" * 300_000, mask=True, fin=False))
    reader.feed(serialize(CONTINUATION, b"b" * (2 << 20), mask=True)[:500_000])
    assert reader.buffered > 700_000
    reader.discard()
    assert reader.buffered == 0
    assert not reader.ready


@pytest.mark.parametrize(
    ("length", "cut", "head"),
    [
        (40, 37, b'{"type":"response.audio.delta"'),
        (125, 37, b'{"type":"x"'),
        (130, 10, b"0123"),  # 126 -> 124: the header shrinks
        (120, 3, b"0123456789"),  # 120 -> 127: the header grows
        (65_540, 10, b"0123"),  # 65,534: a 16-bit length again
        (65_530, 3, b"0123456789"),  # 65,537: a 64-bit length
        (6_500, 37, b'{"type":"response.audio.delta"'),
        (10, 0, b""),
    ],
)
def test_an_edited_frame_is_the_frame_with_its_beginning_replaced(
    length: int, cut: int, head: bytes
) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    raw = build_frame(TEXT, payload, mask=False)
    edited = edited_frame(raw, head, cut)
    frame = parse_with_websockets(edited, mask=False)
    assert (frame.opcode, frame.fin) == (Opcode.TEXT, True)
    assert bytes(frame.data) == head + payload[cut:]
    assert edited == build_frame(TEXT, head + payload[cut:], mask=False)


def test_a_masked_frame_is_not_edited() -> None:
    with pytest.raises(ValueError, match="masked"):
        edited_frame(build_frame(TEXT, b"abc", mask=True), b"x", 1)
