"""The hot path's frame codec, checked against the `websockets` library's own framing."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest
from hypothesis import given, strategies as st
from websockets.frames import Frame as WsFrame, Opcode
from websockets.streams import StreamReader

from relay._frames import (
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


def test_oversized_length_fails_before_the_payload_arrives() -> None:
    """A 16 EiB length is refused from the header alone."""
    header = bytes([0x81, 0x80 | 127]) + (2**63).to_bytes(8, "big")
    with pytest.raises(ProtocolFailure):
        FrameReader(expect_mask=True, max_size=100).feed(header)


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

from relay._frames import TEXT, FrameReader, build_frame

import relay._frames

assert relay._frames.apply_mask is apply_mask, relay._frames.apply_mask
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
