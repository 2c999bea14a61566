"""Bounded memory under slow peers: the relay stops reading instead of buffering, then ends stalls."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from dataclasses import replace
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.config import ClientLimits, FlowSettings
from relay.simulator import AudioFormat, Simulator
from relay.simulator.audio import response_audio
from tests.helpers.clients import receive_event, send_event
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.servers import CLIENT_KEY, make_settings, relay_stack
from tests.helpers.timing import SECOND


KEY = "backpressure-client-key"
UPSTREAM_KEY = "backpressure-upstream-key"
BUFFER = 256 * 1024
STALL = 2.0
SESSIONS = 8


def config(upstream: str) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}
flow: {{buffer_bytes: {BUFFER}, stall_timeout: {STALL}}}
log: {{format: json, level: info}}
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def slow_reader(relay: RelayProcess) -> ClientConnection:
    """A client whose socket takes at most 16 KiB, and that will not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", relay.port))
    sock.setblocking(False)
    return await connect(
        f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime",
        sock=sock,
        additional_headers={"api-key": KEY},
        compression=None,
        max_queue=1,
    )


async def test_stalled_clients_while_the_upstream_floods_audio(tmp_path: Path) -> None:
    """RSS stays within the per-session bound; each session ends within stall_timeout + 1 s, upstream closed."""
    async with Simulator.start(
        api_keys={UPSTREAM_KEY}, response_audio_seconds=120
    ) as simulator:
        path = tmp_path / "relay.yaml"
        path.write_text(config(simulator.url))
        async with relay_process(path, {"UPSTREAM_KEY": UPSTREAM_KEY}) as relay:
            clients = [await slow_reader(relay) for _ in range(SESSIONS)]
            for ws in clients:
                assert (await receive_event(ws))["type"] == "session.created"
            baseline = rss_kib(relay.process.pid)
            # Synthesize the simulator's 2 minutes of audio before the clock starts.
            response_audio(120_000, AudioFormat.PCM16, "alloy")
            flood_started = time.monotonic()
            for ws in clients:
                await send_event(ws, {"type": "response.create"})
            # Nobody reads now. Sample the relay's memory until every upstream leg is gone.
            peak = baseline
            async with asyncio.timeout(STALL + 10 * SECOND):
                while simulator.stats.connections_active:
                    peak = max(peak, rss_kib(relay.process.pid))
                    await asyncio.sleep(0.02)  # sampling, not synchronisation
            ended_after = time.monotonic() - flood_started
            bound_kib = SESSIONS * (2 * BUFFER + 1024 * 1024) // 1024
            assert peak - baseline < bound_kib, (peak, baseline, bound_kib)
            # The watchdog looks once a second: stall_timeout + 1 s, plus the moment
            # it takes to fill the kernel's socket buffers on loopback.
            assert ended_after < STALL + 1.5
            # Each flood (7.7 MB of base64) is far larger than what the relay may hold.
            assert 4 * (2 * BUFFER + 1024 * 1024) < 120 * 48_000 * 4 / 3
            for ws in clients:
                ws.transport.abort()
            ends = [
                json.loads(line) for line in relay.output if b'"session.end"' in line
            ]
            assert [(end["outcome"], end["close_code"]) for end in ends] == [
                ("stalled", 4002)
            ] * SESSIONS


async def test_an_upstream_that_stops_reading_is_a_stall() -> None:
    """The client gets 4002 soon after the upstream takes no more data; the upstream leg is dropped."""

    async def deaf_upstream(ws: ServerConnection) -> None:
        await ws.send(
            json.dumps({"type": "session.created", "event_id": "e1", "session": {}})
        )
        # Read nothing more: websockets stops reading at max_queue and TCP pushes back.
        await ws.wait_closed()

    fast = ClientLimits(messages_per_second=10_000, bytes_per_second=1024**3)
    clients = tuple(
        replace(client, limits=fast) for client in make_settings("http://x").clients
    )
    flow = FlowSettings(buffer_bytes=BUFFER, stall_timeout=STALL, close_timeout=1.0)
    chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 200_000})
    async with (
        serve(
            deaf_upstream, "127.0.0.1", 0, max_queue=1, max_size=None, compression=None
        ) as server,
        relay_stack(
            upstream_url=f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}",
            flow=flow,
            clients=clients,
        ) as stack,
        connect(
            stack.ga_url(),
            additional_headers={"api-key": CLIENT_KEY},
            compression=None,
            max_size=None,
        ) as ws,
    ):
        await receive_event(ws)
        started = time.monotonic()
        async with asyncio.timeout(STALL + 20 * SECOND):
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1000):  # 200 MB: far more than any buffer on the way
                    await ws.send(chunk)
            await ws.wait_closed()
        assert ws.close_code == 4002
        # Filling the kernel's socket buffers takes a moment before the stall clock starts.
        assert time.monotonic() - started < STALL + 3
        # The relay dropped its upstream leg (the deaf server, not reading, cannot
        # notice) and handles no connection any more.
        await stack.settle()
