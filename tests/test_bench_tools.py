"""The benchmark's C tools (bench/c): ``echo_upstream``, ``loadgen`` and ``attack``.

Built into a temporary directory with ``make -C bench/c OUT=...``, then run against
each other, against the ``websockets`` library (a client for the echo server, a
server for the load generator) and against raw RFC 6455 servers written here (for
the attacker, whose frames must be seen as sent), on 127.0.0.1 only. ``BENCH_C_CFLAGS`` overrides the
build's CFLAGS (e.g. ``-O1 -g -fsanitize=address,undefined``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.helpers.timing import SECOND


ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "bench" / "c"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RFC_KEY, RFC_ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler"
)


@dataclass(frozen=True)
class Tools:
    echo: Path
    loadgen: Path
    attack: Path


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    out = tmp_path_factory.mktemp("bench-tools")
    command = ["make", "-s", "-C", str(SOURCES), f"OUT={out}"]
    if flags := os.environ.get("BENCH_C_CFLAGS"):
        command.append(f"CFLAGS={flags}")
    built = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    return Tools(out / "echo_upstream", out / "loadgen", out / "attack")


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def expected_accept(key: str) -> str:
    digest = hashlib.sha1((key + GUID).encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


# -- echo_upstream as a process ----------------------------------------------------


@dataclass
class Echo:
    process: asyncio.subprocess.Process
    port: int
    stats_file: Path

    async def stop(self) -> dict[str, Any]:
        """SIGTERM; the counters it wrote on the way out."""
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5 * SECOND):
            _, stderr = await self.process.communicate()
        assert self.process.returncode == 0, stderr.decode(errors="replace")
        return read_json(self.stats_file)


@contextlib.asynccontextmanager
async def echo_upstream(
    tools: Tools, tmp_path: Path, *args: str
) -> AsyncIterator[Echo]:
    stats = tmp_path / "echo-stats.json"
    process = await asyncio.create_subprocess_exec(
        str(tools.echo),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--stats-file",
        str(stats),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(5 * SECOND):
            line = await process.stdout.readline()
        match = re.fullmatch(rb"echo_upstream listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        yield Echo(process, int(match.group(1)), stats)
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def run_loadgen(tools: Tools, out: Path, url: str, *args: str) -> dict[str, Any]:
    """Run loadgen to completion (bounded); its results JSON."""
    process = await asyncio.create_subprocess_exec(
        str(tools.loadgen),
        "--url",
        url,
        "--out",
        str(out),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20 * SECOND):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    assert process.returncode == 0, stderr.decode(errors="replace")
    return read_json(out)


# -- raw RFC 6455 on asyncio streams ---------------------------------------------


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True
) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    elif len(payload) < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", len(payload))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    assert first & 0x80, "FIN frames only"
    assert not second & 0x80, "server frames are not masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def raw_handshake(
    port: int, key: str, extra: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET /openai/realtime?api-version=x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head.decode()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- tests ---------------------------------------------------------------------------


def test_selftests(tools: Tools) -> None:
    """SHA-1, base64 and framing test vectors compiled into every tool; the
    attacker's streams parsed back frame by frame."""
    for tool in (tools.echo, tools.loadgen, tools.attack):
        run = subprocess.run(
            [str(tool), "--selftest"], capture_output=True, text=True, timeout=10
        )
        assert run.returncode == 0, run.stderr
        assert "selftest ok" in run.stderr


async def test_echo_accept_key_vectors(tools: Tools, tmp_path: Path) -> None:
    """Sec-WebSocket-Accept: RFC 6455's example, then keys whose key+GUID lengths
    straddle SHA-1's padding boundaries (55/56 and 63/64 bytes, two blocks, more)."""
    keys = [RFC_KEY] + ["k" * n for n in (1, 19, 20, 27, 28, 83, 84, 128)]
    async with echo_upstream(tools, tmp_path) as echo:
        async with asyncio.timeout(5 * SECOND):
            for key in keys:
                reader, writer, head = await raw_handshake(
                    echo.port, key, "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                )
                try:
                    assert head.startswith("HTTP/1.1 101 "), head
                    accept = header(head, "Sec-WebSocket-Accept")
                    assert accept == expected_accept(key)
                    if key == RFC_KEY:
                        assert accept == RFC_ACCEPT
                    # Offered, never selected.
                    assert header(head, "Sec-WebSocket-Extensions") is None
                    opcode, payload = await read_frame(reader)
                    assert opcode == 1
                    assert json.loads(payload)["type"] == "session.created"
                finally:
                    await close_writer(writer)
            reader, writer = await asyncio.open_connection("127.0.0.1", echo.port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
            finally:
                await close_writer(writer)
        stats = await echo.stop()
    assert stats["handshakes"] == len(keys)
    assert stats["handshake_failures"] == 1


async def test_echo_upstream_with_websockets_client(
    tools: Tools, tmp_path: Path
) -> None:
    audio = base64.b64encode(os.urandom(960)).decode()
    big_audio = base64.b64encode(os.urandom(100_000)).decode()  # a 64-bit length
    async with echo_upstream(tools, tmp_path) as echo:
        url = f"ws://127.0.0.1:{echo.port}/openai/realtime?api-version=x&deployment=d"
        async with (
            asyncio.timeout(10 * SECOND),
            connect(
                url,
                additional_headers={"api-key": "anything"},
                compression=None,
                max_size=2**20,
            ) as ws,
        ):
            created = json.loads(await ws.recv())
            assert created == {
                "type": "session.created",
                "event_id": "event_0",
                "session": {
                    "id": "sess_bench",
                    "object": "realtime.session",
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                },
            }
            # json.dumps' default separators: "key": "value".
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "event_id": "evt_1",
                        "audio": audio,
                    }
                )
            )
            assert json.loads(await ws.recv()) == {
                "type": "response.audio.delta",
                "event_id": "event_1",
                "response_id": "evt_1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
            # Compact, reordered, an escaped quote in the event id; an ignored event
            # first: the next frame answers the append.
            await ws.send(
                json.dumps({"type": "conversation.item.create", "event_id": "c"})
            )
            await ws.send(
                json.dumps(
                    {
                        "audio": big_audio,
                        "event_id": 'e"2',
                        "type": "input_audio_buffer.append",
                    },
                    separators=(",", ":"),
                )
            )
            delta = json.loads(await ws.recv())
            assert delta["response_id"] == 'e"2'
            assert delta["delta"] == big_audio
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            assert json.loads(await ws.recv()) == {
                "type": "session.updated",
                "event_id": "event_2",
                "session": {"id": "sess_bench", "object": "realtime.session"},
            }
            pong = await ws.ping(b"are you there")
            await pong
        assert ws.close_code == 1000
        stats = await echo.stop()
    assert stats["connections"] == stats["handshakes"] == 1
    assert stats["appends"] == 2
    assert stats["session_updates"] == 1
    assert stats["ignored"] == 1
    assert stats["pings"] == 1
    assert stats["close_frames"] == 1
    assert stats["errors"] == 0
    assert stats["open"] == 0


async def test_echo_upstream_edge_frames(tools: Tools, tmp_path: Path) -> None:
    """A continuation or fragment is counted, not fatal; an unmasked frame is (1002)."""
    async with echo_upstream(tools, tmp_path) as echo:
        reader, writer, head = await raw_handshake(echo.port, RFC_KEY)
        try:
            async with asyncio.timeout(5 * SECOND):
                assert head.startswith("HTTP/1.1 101 ")
                await read_frame(reader)  # session.created
                append = b'{"type":"input_audio_buffer.append","event_id":"a","audio":"QQ=="}'
                writer.write(client_frame(0, b"stray continuation"))
                writer.write(client_frame(1, b'{"type":', fin=False))
                writer.write(client_frame(9, b"p"))
                writer.write(client_frame(1, append))
                assert await read_frame(reader) == (10, b"p")
                opcode, payload = await read_frame(reader)
                assert opcode == 1
                assert json.loads(payload)["response_id"] == "a"
                writer.write(client_frame(1, append, mask=False))
                assert await read_frame(reader) == (8, struct.pack("!H", 1002))
                assert await reader.read() == b""
        finally:
            await close_writer(writer)
        stats = await echo.stop()
    assert stats["unsupported_frames"] == 2
    assert stats["protocol_errors"] == 1
    assert stats["appends"] == 1


async def test_loadgen_against_echo_upstream(tools: Tools, tmp_path: Path) -> None:
    sessions = 8
    async with echo_upstream(tools, tmp_path) as echo:
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{echo.port}/openai/realtime?api-version=x&deployment=d",
            "--header",
            "api-key: k",
            "--sessions",
            str(sessions),
            "--interval-ms",
            "20",
            "--chunk-bytes",
            "960",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--connect-rate",
            "1000",
        )
        stats = await echo.stop()
    # Absolute schedule: 50 measured and 10 warmup sends per session, exactly.
    assert results["sessions_requested"] == results["sessions_connected"] == sessions
    assert results["connect_failures"] == 0
    assert results["sent"] == sessions * 50
    assert results["sent_total"] == sessions * 60
    assert results["received"] == results["sent"]
    assert results["lost"] == 0
    assert results["errors"] == 0
    assert results["unmatched"] == 0
    assert results["duration_s"] == 1.0
    assert results["send_rate_per_s"] == sessions * 50
    assert isinstance(results["late_sends"], int)
    rtt = results["rtt_us"]
    assert rtt["samples"] == results["sent"]
    assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["p999"] <= rtt["max"]
    assert rtt["max"] < 1_000_000
    assert 0 < rtt["mean"] <= rtt["max"]
    assert stats["connections"] == stats["close_frames"] == sessions
    assert stats["appends"] == results["sent_total"]
    assert stats["errors"] == stats["eof_without_close"] == 0


@dataclass
class Recorded:
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    event_ids: list[list[str]] = field(default_factory=list)
    audio_sizes: set[int] = field(default_factory=set)
    close_codes: list[int | None] = field(default_factory=list)
    pongs: int = 0


async def test_loadgen_against_websockets_server(tools: Tools, tmp_path: Path) -> None:
    recorded = Recorded()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        recorded.paths.append(ws.request.path)
        recorded.headers.append(
            {k.lower(): v for k, v in ws.request.headers.raw_items()}
        )
        ids: list[str] = []
        recorded.event_ids.append(ids)
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "s"}}))
        await ws.send(json.dumps({"type": "rate_limits.updated", "rate_limits": []}))
        async with asyncio.timeout(5 * SECOND):
            await (await ws.ping())
        recorded.pongs += 1
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                event = json.loads(message)
                ids.append(event["event_id"])
                recorded.audio_sizes.add(len(base64.b64decode(event["audio"])))
                answer = {"delta": event["audio"], "type": "response.audio.delta"}
                answer["response_id"] = event["event_id"]
                await ws.send(json.dumps(answer))
        recorded.close_codes.append(ws.close_code)

    sessions = 4
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{port}/openai/realtime?api-version=x&deployment=d",
            "--header",
            "api-key: secret",
            "--header",
            "X-Bench: 1",
            "--sessions",
            str(sessions),
            "--chunk-bytes",
            "4800",
            "--duration",
            "1",
            "--warmup",
            "0.1",
        )
    assert results["sessions_connected"] == sessions
    assert results["sent"] == sessions * 50
    assert results["received"] == results["sent"]
    assert results["lost"] == results["errors"] == results["unmatched"] == 0
    assert results["other_events"] == sessions  # rate_limits.updated
    assert recorded.pongs == sessions
    assert recorded.paths == ["/openai/realtime?api-version=x&deployment=d"] * sessions
    for headers in recorded.headers:
        assert headers["api-key"] == "secret"
        assert headers["x-bench"] == "1"
        assert "sec-websocket-extensions" not in headers
    assert recorded.audio_sizes == {4800}
    indexes = set()
    for ids in recorded.event_ids:
        index = {i.split("-")[0] for i in ids}
        assert len(index) == 1
        indexes |= index
        assert ids == [f"{next(iter(index))}-{seq}" for seq in range(len(ids))]
        assert len(ids) == 55  # warmup 5 + measured 50
    assert indexes == {str(i) for i in range(sessions)}
    assert recorded.close_codes == [1000] * sessions


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _handshake_key(reader: asyncio.StreamReader) -> str:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    key = header(head, "Sec-WebSocket-Key")
    assert key is not None
    return key


def _answer(status: str, *headers: str, frame: bytes = b"") -> Behaviour:
    async def behaviour(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        key = await _handshake_key(reader)
        lines = [f"HTTP/1.1 {status}"]
        for line in headers:
            lines.append(line.replace("{accept}", expected_accept(key)))
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + frame)
        await writer.drain()
        await reader.read()  # until loadgen closes

    return behaviour


async def _close_at_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await _handshake_key(reader)


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


UPGRADE = ("Upgrade: websocket", "Connection: Upgrade")
ERROR_EVENT = json.dumps({"type": "error", "error": {"code": "x"}}).encode()


@pytest.mark.parametrize(
    ("behaviour", "reason", "args"),
    [
        pytest.param(
            _answer("403 Forbidden", "Content-Length: 0"), "http_status", [], id="403"
        ),
        pytest.param(
            _answer(
                "101 Switching Protocols", *UPGRADE, "Sec-WebSocket-Accept: bm9wZQ=="
            ),
            "bad_handshake",
            [],
            id="wrong-accept",
        ),
        pytest.param(
            _answer(
                "101 Switching Protocols",
                *UPGRADE,
                "Sec-WebSocket-Accept: {accept}",
                "Sec-WebSocket-Extensions: permessage-deflate",
            ),
            "bad_handshake",
            [],
            id="extension-selected",
        ),
        pytest.param(
            _answer(
                "101 Switching Protocols",
                *UPGRADE,
                "Sec-WebSocket-Accept: {accept}",
                frame=bytes([0x81, len(ERROR_EVENT)]) + ERROR_EVENT,
            ),
            "first_message",
            [],
            id="error-event-first",
        ),
        pytest.param(_close_at_once, "closed_early", [], id="closed-early"),
        pytest.param(_silent, "timeout", ["--connect-timeout", "0.3"], id="silent"),
    ],
)
async def test_loadgen_counts_failed_sessions(
    tools: Tools, tmp_path: Path, behaviour: Behaviour, reason: str, args: list[str]
) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def serve_one(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writers.append(writer)
        try:
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await close_writer(writer)

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{port}/",
            "--sessions",
            "3",
            "--duration",
            "0.5",
            *args,
        )
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    assert results["sessions_connected"] == 0
    assert results["connect_failures"] == 3
    assert results["connect_failure_reasons"] == {reason: 3}
    if reason == "http_status":
        assert results["http_statuses"] == {"403": 3}
    assert results["sent"] == results["received"] == results["lost"] == 0
    assert results["rtt_us"]["p50"] is None


async def test_loadgen_connection_refused(tools: Tools, tmp_path: Path) -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{port}/",
            "--sessions",
            "2",
            "--duration",
            "1",
        )
    assert results["connect_failure_reasons"] == {"connect": 2}
    assert results["sessions_connected"] == 0


async def test_loadgen_trace(tools: Tools, tmp_path: Path) -> None:
    """--trace: one CSV line per measured send, on the clock of time.monotonic,
    its round trip matching the histogram's samples."""
    sessions = 3
    before_us = time.monotonic() * 1e6
    async with echo_upstream(tools, tmp_path) as echo:
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{echo.port}/openai/realtime?api-version=x&deployment=d",
            "--sessions",
            str(sessions),
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--trace",
            str(tmp_path / "trace.csv"),
        )
        await echo.stop()
    after_us = time.monotonic() * 1e6
    lines = (tmp_path / "trace.csv").read_text().splitlines()
    assert lines[0] == "send_us,session,rtt_us"
    records = [tuple(int(v) for v in line.split(",")) for line in lines[1:]]
    assert len(records) == results["sent"] == sessions * 25
    sent = [r[0] for r in records]
    assert sent == sorted(sent)
    assert before_us < sent[0]
    assert sent[-1] < after_us
    assert {r[1] for r in records} == set(range(sessions))
    rtts = sorted(r[2] for r in records)
    assert rtts[0] >= 0  # all answered
    assert rtts[-1] == results["rtt_us"]["max"]
    assert rtts[len(rtts) // 2] == results["rtt_us"]["p50"]  # nearest rank, exact here


async def test_echo_upstream_max_frame_and_no_deltas(
    tools: Tools, tmp_path: Path
) -> None:
    """--max-frame lifts the 1 MiB limit; --no-deltas counts appends unanswered."""
    big = json.dumps(
        {"type": "input_audio_buffer.append", "audio": "A" * (2 << 20)}
    ).encode()
    async with echo_upstream(
        tools, tmp_path, "--max-frame", str(3 << 20), "--no-deltas"
    ) as echo:
        reader, writer, head = await raw_handshake(echo.port, RFC_KEY)
        try:
            async with asyncio.timeout(5 * SECOND):
                assert head.startswith("HTTP/1.1 101 ")
                await read_frame(reader)  # session.created
                writer.write(client_frame(1, big))
                writer.write(client_frame(9, b"after"))
                # The pong is the next frame: the append got no answer.
                assert await read_frame(reader) == (10, b"after")
                writer.write(client_frame(8, struct.pack("!H", 1000)))
                assert await read_frame(reader) == (8, struct.pack("!H", 1000))
        finally:
            await close_writer(writer)
        stats = await echo.stop()
    assert stats["appends"] == 1
    assert stats["overflows"] == stats["errors"] == 0


async def test_echo_upstream_ga(tools: Tools, tmp_path: Path) -> None:
    """--ga: a GA session (nested audio formats, type realtime) in session.created
    and session.updated, and appends answered by response.output_audio.delta with
    the preview delta's fields."""
    audio = base64.b64encode(os.urandom(960)).decode()
    pcm = {"type": "audio/pcm", "rate": 24000}
    async with echo_upstream(tools, tmp_path, "--ga") as echo:
        url = f"ws://127.0.0.1:{echo.port}/openai/v1/realtime?model=gpt-realtime"
        async with (
            asyncio.timeout(10 * SECOND),
            connect(url, compression=None) as ws,
        ):
            assert json.loads(await ws.recv()) == {
                "type": "session.created",
                "event_id": "event_0",
                "session": {
                    "type": "realtime",
                    "id": "sess_bench",
                    "object": "realtime.session",
                    "output_modalities": ["audio"],
                    "audio": {"input": {"format": pcm}, "output": {"format": pcm}},
                },
            }
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "event_id": "7-1",
                        "audio": audio,
                    }
                )
            )
            assert json.loads(await ws.recv()) == {
                "type": "response.output_audio.delta",
                "event_id": "event_1",
                "response_id": "7-1",
                "item_id": "item_1",
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
            await ws.send(json.dumps({"type": "session.update", "session": {}}))
            assert json.loads(await ws.recv()) == {
                "type": "session.updated",
                "event_id": "event_2",
                "session": {
                    "type": "realtime",
                    "id": "sess_bench",
                    "object": "realtime.session",
                },
            }
        stats = await echo.stop()
    assert stats["appends"] == stats["session_updates"] == 1
    assert stats["errors"] == 0


async def test_loadgen_does_not_count_ga_deltas(tools: Tools, tmp_path: Path) -> None:
    """Against a GA upstream met directly, no delta answers an append: every
    measured send is lost and every delta is an other event. A bench path whose
    deltas were not renamed to the preview name cannot pass as measured."""
    sessions = 2
    async with echo_upstream(tools, tmp_path, "--ga") as echo:
        results = await run_loadgen(
            tools,
            tmp_path / "results.json",
            f"ws://127.0.0.1:{echo.port}/openai/v1/realtime?model=gpt-realtime",
            "--sessions",
            str(sessions),
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
        )
        stats = await echo.stop()
    assert results["sessions_connected"] == sessions
    assert results["sent"] == sessions * 25
    assert results["received"] == results["received_total"] == 0
    assert results["lost"] == results["sent"]
    assert results["rtt_us"]["samples"] == 0
    assert stats["appends"] == results["sent_total"]
    # Each append was answered, under GA's name.
    assert results["other_events"] == results["sent_total"]


@pytest.mark.parametrize(
    ("kind", "frame"),
    [("ping", (9, b"")), ("text", (1, b"{}"))],
)
async def test_echo_upstream_floods_marked_sessions(
    tools: Tools, tmp_path: Path, kind: str, frame: tuple[int, bytes]
) -> None:
    """A session whose request target holds the marker is flooded once it has
    session.updated; one without it is served as usual."""
    async with echo_upstream(tools, tmp_path, "--flood", f"{kind}:model=flood") as echo:
        async with asyncio.timeout(10 * SECOND):
            plain = await _open_session(echo.port, "/openai/v1/realtime?model=calm")
            flooded = await _open_session(
                echo.port, "/openai/v1/realtime?model=flood&x=1"
            )
            try:
                for reader, writer in (plain, flooded):
                    writer.write(client_frame(1, b'{"type":"session.update"}'))
                    _, payload = await read_frame(reader)
                    assert json.loads(payload)["type"] == "session.updated"
                for _ in range(5000):  # more than one refill of the flood
                    assert await read_frame(flooded[0]) == frame
                # The calm session's next frame answers its own ping.
                plain[1].write(client_frame(9, b"calm"))
                assert await read_frame(plain[0]) == (10, b"calm")
            finally:
                for _, writer in (plain, flooded):
                    await close_writer(writer)
        stats = await echo.stop()
    assert stats["flooded"] == 1
    assert stats["flood_frames"] >= 5000


async def _open_session(
    port: int, target: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client session on ``target``, its session.created read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    _, payload = await read_frame(reader)
    assert json.loads(payload)["type"] == "session.created"
    return reader, writer


# -- attack against a raw server ---------------------------------------------------


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """One masked client frame: (opcode, fin, unmasked payload)."""
    first, second = await reader.readexactly(2)
    assert second & 0x80, "client frames are masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    data = await reader.readexactly(length)
    payload = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return first & 0x0F, bool(first & 0x80), payload


async def read_message(reader: asyncio.StreamReader) -> tuple[int, bytes, int]:
    """One client message, reassembled: (opcode, payload, frames it took)."""
    opcode, fin, payload = await read_client_frame(reader)
    frames, parts = 1, [payload]
    while not fin:
        continuation, fin, payload = await read_client_frame(reader)
        assert continuation == 0
        frames += 1
        parts.append(payload)
    return opcode, b"".join(parts), frames


def server_frame(opcode: int, payload: bytes) -> bytes:
    return client_frame(opcode, payload, mask=False)


CREATED = server_frame(1, json.dumps({"type": "session.created"}).encode())


@dataclass
class RawServer:
    """Accepts WebSocket handshakes and hands each connection to a queue."""

    connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    refused: asyncio.Queue[str]
    heads: list[str] = field(default_factory=list)
    port: int = 0


@contextlib.asynccontextmanager
async def raw_server(answer: str = "101") -> AsyncIterator[RawServer]:
    """A server answering every upgrade with ``answer`` (101: then session.created)."""
    server = RawServer(asyncio.Queue(), asyncio.Queue())
    writers: list[asyncio.StreamWriter] = []

    async def accept(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writers.append(writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        server.heads.append(head)
        key = header(head, "Sec-WebSocket-Key")
        assert key is not None
        if answer != "101":
            writer.write(f"HTTP/1.1 {answer}\r\nContent-Length: 0\r\n\r\n".encode())
            await close_writer(writer)
            await server.refused.put(head)
            return
        writer.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {expected_accept(key)}\r\n\r\n"
            ).encode()
            + CREATED
        )
        await server.connections.put((reader, writer))

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        for writer in writers:
            writer.close()
        listener.close()
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def attacker(
    tools: Tools, tmp_path: Path, port: int, *args: str
) -> AsyncIterator[Path]:
    """Runs ``attack`` until the block ends (SIGTERM); yields its stats path."""
    stats = tmp_path / "attack.json"
    process = await asyncio.create_subprocess_exec(
        str(tools.attack),
        "--url",
        f"ws://127.0.0.1:{port}/openai/v1/realtime?model=attack",
        "--header",
        "api-key: hostile",
        "--out",
        str(stats),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield stats
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5 * SECOND):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def _check_keys(payload: bytes, size: int) -> None:
    event = json.loads(payload)
    assert event.pop("type") == "response.cancel"
    assert len(event) == (size - 26) // 12
    assert set(event.values()) == {0}


async def _check_array(payload: bytes, size: int) -> None:
    event = json.loads(payload)
    assert event["type"] == "response.cancel"
    assert event["a"] == [0] * (1 + (size - 34) // 2)


async def _check_append(payload: bytes, size: int) -> None:
    event = json.loads(payload)
    assert event["type"] == "input_audio_buffer.append"
    assert set(event["audio"]) == {"A"}
    assert size - 4 < len(payload) <= size


@pytest.mark.parametrize(
    ("mode", "opcode", "frames", "check"),
    [
        pytest.param("ping", 9, 1, None, id="ping"),
        pytest.param("tiny", 1, 1, None, id="tiny"),
        pytest.param("large", 1, 1, _check_append, id="large"),
        pytest.param("fragments", 1, 69, _check_append, id="fragments"),
        pytest.param("json-keys", 1, 1, _check_keys, id="json-keys"),
        pytest.param("json-array", 1, 1, _check_array, id="json-array"),
    ],
)
async def test_attack_modes(
    tools: Tools,
    tmp_path: Path,
    mode: str,
    opcode: int,
    frames: int,
    check: Callable[[bytes, int], Awaitable[None]] | None,
) -> None:
    """Each mode sends its messages over and over once the session is created,
    and a session the server closes is opened again at once."""
    size = 70_000  # 69 fragments of 1 KiB
    async with raw_server() as server:
        async with (
            asyncio.timeout(10 * SECOND),
            attacker(
                tools,
                tmp_path,
                server.port,
                "--mode",
                mode,
                "--sessions",
                "1",
                "--size",
                str(size),
            ) as stats,
        ):
            reader, writer = await server.connections.get()
            for _ in range(3):
                got, payload, taken = await read_message(reader)
                assert (got, taken) == (opcode, frames)
                if check is not None:
                    await check(payload, size)
                elif mode == "tiny":
                    assert payload == b"{}"
                else:
                    assert payload == b""
            writer.write(server_frame(8, struct.pack("!H", 1008)))
            # A fresh session replaces the closed one, and attacks again.
            reader, writer = await server.connections.get()
            got, payload, taken = await read_message(reader)
            assert (got, taken) == (opcode, frames)
        result = read_json(stats)
    assert result["mode"] == mode
    assert result["close_codes"] == {"1008": 1}
    assert result["handshakes"] == result["up"] >= 2
    assert result["bytes_out"] > 3 * size if check else result["writes"] > 0
    for head in server.heads:
        assert header(head, "api-key") == "hostile"
        assert head.startswith("GET /openai/v1/realtime?model=attack HTTP/1.1\r\n")


async def test_attack_large_writes_pieces(tools: Tools, tmp_path: Path) -> None:
    """`large` writes at most --piece bytes per write (4 KiB by default)."""
    async with raw_server() as server:
        async with (
            asyncio.timeout(10 * SECOND),
            attacker(
                tools,
                tmp_path,
                server.port,
                "--mode",
                "large",
                "--sessions",
                "1",
                "--size",
                "100000",
            ) as stats,
        ):
            reader, _ = await server.connections.get()
            for _ in range(3):
                await read_message(reader)
        result = read_json(stats)
    assert result["writes"] >= result["bytes_out"] // 4096


async def test_attack_read_mode_only_reads(tools: Tools, tmp_path: Path) -> None:
    """`read` sends nothing after the handshake; it discards what comes (large
    frames and pings too) and leaves when the server closes, without answering."""
    async with raw_server() as server:
        async with (
            asyncio.timeout(10 * SECOND),
            attacker(
                tools, tmp_path, server.port, "--mode", "read", "--sessions", "2"
            ) as stats,
        ):
            for _ in range(2):
                reader, writer = await server.connections.get()
                writer.write(server_frame(9, b"ping"))
                writer.write(server_frame(2, os.urandom(300_000)))
                writer.write(server_frame(1, b"{}"))
                writer.write(server_frame(8, struct.pack("!H", 4002)))
                # Nothing came from the attacker before it closed (EOF).
                assert await reader.read() == b""
        result = read_json(stats)
    assert result["close_codes"] == {"4002": 2}
    assert result["frames_in"] >= 2 * 5  # session.created + 4 each
    assert result["bytes_in"] > 2 * 300_000


async def test_attack_retries_refused_handshakes(tools: Tools, tmp_path: Path) -> None:
    """A refused upgrade is counted by status and tried again after --retry-ms."""
    async with raw_server("429 Too Many Requests") as server:
        async with (
            asyncio.timeout(10 * SECOND),
            attacker(
                tools,
                tmp_path,
                server.port,
                "--mode",
                "tiny",
                "--sessions",
                "1",
                "--retry-ms",
                "10",
            ) as stats,
        ):
            for _ in range(3):
                await server.refused.get()
        result = read_json(stats)
    assert result["http_statuses"]["429"] >= 3
    assert result["up"] == 0
