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

from relay.config import ClientLimits, FlowSettings, load_settings
from relay.service.lag import PROBE_INTERVAL
from relay.service.metrics import DIRECTIONS
from relay.simulator import AudioFormat, Simulator
from relay.simulator.audio import response_audio
from tests.helpers.clients import connect_relay, receive_event, send_event
from tests.helpers.loops import block_loop
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.servers import CLIENT_KEY, Stack, make_settings, relay_stack
from tests.helpers.timing import SECOND, within


KEY = "backpressure-client-key"
UPSTREAM_KEY = "backpressure-upstream-key"
FLOW = FlowSettings(buffer_bytes=256 * 1024, stall_timeout=2.0, close_timeout=1.0)
SESSIONS = 8
WATCHDOG_PERIOD = 1.0
"""The stall watchdog looks at most once a second (relay/service/driver.py)."""


def stall_noticed_within(flow: FlowSettings) -> float:
    """The relay's promise: a leg unable to take data is noticed ``stall_timeout`` later.

    The watchdog notices at its next look after that, and the session ends at
    once: the stalled client is dropped, the other leg is sent its close.
    """
    return flow.stall_timeout + WATCHDOG_PERIOD


def config(upstream: str) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}
flow: {{buffer_bytes: {FLOW.buffer_bytes}, stall_timeout: {FLOW.stall_timeout}, close_timeout: {FLOW.close_timeout}}}
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
    """RSS stays within the per-session bound; each session ends once stalled for stall_timeout, upstream closed."""
    # Unpaced: the upstream floods the relay with the 120 s answers.
    async with Simulator.start(
        api_keys={UPSTREAM_KEY}, response_audio_seconds=120, audio_speed=None
    ) as simulator:
        path = tmp_path / "relay.yaml"
        path.write_text(config(simulator.url))
        env = {"UPSTREAM_KEY": UPSTREAM_KEY}
        assert load_settings(path, env).flow == FLOW  # what the bounds derive from
        async with relay_process(path, env) as relay:
            clients = [await slow_reader(relay) for _ in range(SESSIONS)]
            for ws in clients:
                assert (await receive_event(ws))["type"] == "session.created"
            baseline = rss_kib(relay.process.pid)
            # Synthesize the simulator's 2 minutes of audio before the clock starts.
            response_audio(120_000, AudioFormat.PCM16, "alloy")
            # Each session: stalled, noticed, then its upstream leg's closing
            # handshake. Filling the socket buffers on loopback before the stall
            # clock starts is work, slower on a busy machine: the margin.
            promised = stall_noticed_within(FLOW) + FLOW.close_timeout
            flood_started = time.monotonic()
            for ws in clients:
                await send_event(ws, {"type": "response.create"})
            # Nobody reads now. Sample the relay's memory until every upstream leg is gone.
            peak = baseline
            async with asyncio.timeout(within(promised, 10 * SECOND)):
                while simulator.stats.connections_active:
                    peak = max(peak, rss_kib(relay.process.pid))
                    await asyncio.sleep(0.02)  # sampling, not synchronisation
            ended_after = time.monotonic() - flood_started
            bound_kib = SESSIONS * (2 * FLOW.buffer_bytes + 1024 * 1024) // 1024
            assert peak - baseline < bound_kib, (peak, baseline, bound_kib)
            # Not before stall_timeout (the legs blocked after the clock started),
            # and not later than promised: a relay that never ended stalls, or
            # waited three times stall_timeout, fails.
            assert FLOW.stall_timeout <= ended_after < within(promised, 2 * SECOND)
            # Each flood (7.7 MB of base64) is far larger than what the relay may hold.
            assert 4 * (2 * FLOW.buffer_bytes + 1024 * 1024) < 120 * 48_000 * 4 / 3
            for ws in clients:
                ws.transport.abort()
            # session.end is logged once both legs are closed, and read from
            # the relay's stderr by a task: wait for the lines, do not race them.
            ends = await relay.logged("session.end", SESSIONS)
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
    chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 200_000})
    async with (
        serve(
            deaf_upstream, "127.0.0.1", 0, max_queue=1, max_size=None, compression=None
        ) as server,
        relay_stack(
            upstream_url=f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}",
            flow=FLOW,
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
        async with asyncio.timeout(within(stall_noticed_within(FLOW), 20 * SECOND)):
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1000):  # 200 MB: far more than any buffer on the way
                    await ws.send(chunk)
            await ws.wait_closed()
        assert ws.close_code == 4002
        # Filling the kernel's socket buffers takes a moment (work, slower under
        # load: the margin) before the stall clock starts, never less than zero.
        took = time.monotonic() - started
        assert (
            FLOW.stall_timeout <= took < within(stall_noticed_within(FLOW), 2 * SECOND)
        )
        # The relay dropped its upstream leg (the deaf server, not reading, cannot
        # notice) and handles no connection any more.
        await stack.settle()


# The relay's own loop blocked: a stall is the peer not reading while the
# relay could run, not the time the relay could not (issue 13).
LAG_FLOW = FlowSettings(buffer_bytes=256 * 1024, stall_timeout=1.0, close_timeout=1.0)
BLOCK = 3 * LAG_FLOW.stall_timeout
"""How long the test holds the relay's loop: a watchdog that counted it would
report every blocked leg at its first look afterwards."""


def stalls(stack: Stack) -> float:
    """Sessions ended as stalled so far, both directions."""
    return sum(
        stack.registry.get_sample_value(
            "relay_backpressure_stalls_total", {"direction": direction}
        )
        or 0.0
        for direction in DIRECTIONS
    )


async def wait_blocked(stack: Stack, sessions: int) -> None:
    """Return once ``sessions`` sessions have their client leg over its mark."""
    async with asyncio.timeout(10 * SECOND):
        while True:
            drivers = stack.relay.app.endpoint.drivers
            if len(drivers) == sessions and not any(
                driver.writable("client") for driver in drivers
            ):
                return
            await asyncio.sleep(0.01)  # polling the relay's state, bounded


def small_receive_buffer(stack: Stack) -> socket.socket:
    """A socket to the relay that takes at most 16 KiB at a time from the kernel.

    Its client then reads from the network a little at a time, as it
    consumes messages, instead of in large bursts far apart.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.connect(("127.0.0.1", stack.relay.port))
    sock.setblocking(False)
    return sock


async def read_response(ws: ClientConnection) -> int:
    """Read the client's events up to ``response.done``; return how many bytes."""
    received = 0
    async with asyncio.timeout(60 * SECOND):
        while True:
            message = await ws.recv()
            received += len(message)
            if json.loads(message)["type"] == "response.done":
                return received


async def test_a_relay_whose_loop_was_blocked_blames_no_reader() -> None:
    """After its loop was blocked for 3x stall_timeout, the relay relays a client that reads again to the end, and drops one that never reads stall_timeout later, not at once."""
    response_audio(120_000, AudioFormat.PCM16, "alloy")  # synthesized before any clock
    async with (
        relay_stack(
            flow=LAG_FLOW, simulator_options={"response_audio_seconds": 120}
        ) as stack,
        connect_relay(stack.ga_url()) as reader,
        connect_relay(stack.ga_url()) as deaf,
    ):
        loop = asyncio.get_running_loop()
        for ws in (reader, deaf):
            assert (await receive_event(ws))["type"] == "session.created"
        # The relay's stall clocks start after this: the legs block later.
        sent_at = loop.time()
        for ws in (reader, deaf):
            await send_event(ws, {"type": "response.create"})
        # Neither client reads yet: both client legs go over their mark.
        await wait_blocked(stack, 2)
        assert stalls(stack) == 0
        block_loop(BLOCK)
        unblocked_at = loop.time()
        stalled_at: float | None = None

        async def watch_the_deaf_one() -> None:
            nonlocal stalled_at
            async with asyncio.timeout(
                within(stall_noticed_within(LAG_FLOW), 5 * SECOND)
            ):
                while True:
                    if stalls(stack):
                        break
                    await asyncio.sleep(0.02)  # sampling, not synchronisation
            stalled_at = loop.time()

        async with asyncio.TaskGroup() as group:
            group.create_task(watch_the_deaf_one())
            received = await read_response(reader)
        # The reader got its whole response (7.7 MB of audio) and is still open.
        assert received > 120 * 48_000
        assert reader.close_code is None
        # The deaf one alone was reported; not before stall_timeout of time the
        # relay could run (the block, less one probe interval, did not count)...
        assert stalled_at is not None
        assert stalls(stack) == 1
        assert stalled_at - sent_at >= LAG_FLOW.stall_timeout + BLOCK - PROBE_INTERVAL
        # ... and within the promise once the relay could run again.
        assert stalled_at - unblocked_at < within(
            stall_noticed_within(LAG_FLOW), 2 * SECOND
        )
        # Its connection was dropped, which a client that never reads cannot notice.
        deaf.transport.abort()


async def test_a_slow_but_steady_reader_is_not_stalled() -> None:
    """A client that keeps reading, slower than Azure sends, stays connected though its leg is over its mark for many stall_timeouts."""
    response_audio(120_000, AudioFormat.PCM16, "alloy")
    async with (
        relay_stack(
            flow=LAG_FLOW, simulator_options={"response_audio_seconds": 120}
        ) as stack,
        connect_relay(
            stack.ga_url(), sock=small_receive_buffer(stack), max_queue=1
        ) as ws,
    ):
        loop = asyncio.get_running_loop()
        assert (await receive_event(ws))["type"] == "session.created"
        await send_event(ws, {"type": "response.create"})
        await wait_blocked(stack, 1)
        (driver,) = stack.relay.app.endpoint.drivers
        # About 200 KB/s: a consumer that keeps up with real-time audio three
        # times over, but not with the simulator's flood. Megabytes wait in
        # the kernel for it, so its leg stays over its mark while it reads.
        started = blocked_from = loop.time()
        longest_block = 0.0
        while loop.time() - started < 4 * LAG_FLOW.stall_timeout:
            message = await receive_event(ws)
            assert message["type"] != "response.done"
            await asyncio.sleep(0.05)  # the consumer's own work, simulated
            if driver.writable("client"):
                blocked_from = loop.time()
            longest_block = max(longest_block, loop.time() - blocked_from)
        # Over its mark for longer than a watchdog counting from the block
        # would have allowed: only its reading kept the session.
        assert longest_block >= 2 * LAG_FLOW.stall_timeout
        assert stalls(stack) == 0
        assert ws.close_code is None
        # Leave without reading the megabytes still on the way to the close frame.
        ws.transport.abort()
