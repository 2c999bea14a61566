"""The relay under network faults: a fault proxy on either leg (ops-notes §8, 7-13)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.config import FlowSettings, LimitsSettings
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.fault_proxy import Directions, FaultProxy, RefuseMode
from tests.helpers.servers import CLIENT_KEY, Stack, relay_stack
from tests.helpers.timing import SECOND, within


SPEECH = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)
# Keepalive short enough to test: a dead leg is detected within 2 s.
FAST_KEEPALIVE = FlowSettings(ping_interval=1.0, ping_timeout=1.0, close_timeout=1.0)


def reaped_within(flow: FlowSettings) -> float:
    """The relay's promise: a peer that stops answering is dropped within this.

    Its next ping is due ``ping_interval`` after the last pong at the latest,
    and the peer is dropped at once when that pong is ``ping_timeout`` overdue,
    on either leg: no close frame could reach it, so none is waited for.
    """
    assert flow.ping_interval is not None
    assert flow.ping_timeout is not None
    return flow.ping_interval + flow.ping_timeout


# Audio at 1.5 times real time: a response's 1 s of audio streams for ~0.6 s.
PACED: dict[str, Any] = {"audio_speed": 1.5}


@asynccontextmanager
async def proxied_upstream(
    simulator_options: dict[str, Any] | None = None, **changes: Any
) -> AsyncIterator[tuple[Stack, FaultProxy]]:
    """A relay whose upstream leg runs through a fault proxy to the simulator."""
    async with (
        FaultProxy() as proxy,
        relay_stack(
            upstream_url=proxy.url, simulator_options=simulator_options, **changes
        ) as stack,
    ):
        proxy.target = ("127.0.0.1", stack.simulator.port)
        yield stack, proxy


def via(proxy: FaultProxy, url: str) -> str:
    """``url`` of the relay, reached through ``proxy`` instead."""
    path = url.split("/", 3)[3]
    return f"{proxy.ws}/{path}"


async def speak(ws: ClientConnection, pcm: bytes = SPEECH, chunk: int = 4800) -> None:
    """Send ``pcm`` as 100 ms appends, as an app streaming a microphone would."""
    for offset in range(0, len(pcm), chunk):
        await send_event(ws, append_event(pcm[offset : offset + chunk]))


async def closed_with(ws: ClientConnection, *, within: float) -> int | None:
    """Wait (reading and dropping events) until ``ws`` is closed; return its close code."""
    async with asyncio.timeout(within):
        for _ in range(10_000):
            try:
                await ws.recv()
            except ConnectionClosed:
                break
        await ws.wait_closed()
    return ws.close_code


def audio_bytes(events: list[dict[str, Any]]) -> int:
    """Bytes of PCM in the audio deltas among ``events``."""
    return sum(
        len(base64.b64decode(event["delta"]))
        for event in events
        if event["type"] == "response.audio.delta"
    )


class TestUpstreamCrash:
    async def test_simulator_reset_through_the_proxy_is_1014(self) -> None:
        """The upstream host resets mid-response: 1014 within a second, nothing left open."""
        async with proxied_upstream() as (stack, proxy):
            stack.simulator.faults.reset_mid_response = True
            async with connect_relay(stack.preview_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                await speak(ws)
                started = time.monotonic()
                assert await closed_with(ws, within=2 * SECOND) == 1014
                # The relay passes the reset on at once; the simulator's VAD
                # and the response's start are the margin.
                assert time.monotonic() - started < within(0)
            await stack.settle()
            await proxy.wait_idle()

    async def test_proxy_reset_mid_response_is_1014_within_a_second(self) -> None:
        """An RST from the network while audio streams closes the client with 1014 at once."""
        async with proxied_upstream(PACED) as (stack, proxy):
            async with connect_relay(stack.preview_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                await speak(ws)
                await events_until(ws, "response.audio.delta")
                proxy.reset_peer(direction="downstream")  # the relay gets the RST
                started = time.monotonic()
                assert await closed_with(ws, within=within(0)) == 1014
                assert time.monotonic() - started < within(0)  # at once
            await stack.settle()
            assert stack.relay.app.endpoint.connections == 0


class TestUpstreamBlackhole:
    async def test_dead_upstream_is_reaped_by_keepalive(self) -> None:
        """No FIN, no data: the relay's pings time out and the client gets 1014."""
        async with proxied_upstream(flow=FAST_KEEPALIVE) as (stack, proxy):
            async with connect_relay(stack.preview_url(), ping_interval=None) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                proxy.blackhole()
                started = time.monotonic()
                reaped = reaped_within(FAST_KEEPALIVE)
                assert await closed_with(ws, within=within(reaped, 2 * SECOND)) == 1014
                assert time.monotonic() - started < within(reaped)
            async with asyncio.timeout(within(0)):  # at once
                await stack.relay.app.endpoint.wait_connections(0)
            proxy.clear()  # let the simulator see the end of its connection
            await stack.settle()


class TestClientHalfOpen:
    async def test_client_behind_a_blackhole_is_reaped(self) -> None:
        """A client that no longer answers pings is dropped and its upstream leg closed."""
        async with (
            relay_stack(flow=FAST_KEEPALIVE) as stack,
            FaultProxy(("127.0.0.1", stack.relay.port)) as proxy,
        ):
            url = via(proxy, stack.preview_url())
            async with connect_relay(url, ping_interval=None, close_timeout=0.1) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                proxy.blackhole()
                started = time.monotonic()
                reaped = reaped_within(FAST_KEEPALIVE)
                await stack.simulator.wait_idle(timeout=within(reaped, 2 * SECOND))
                assert time.monotonic() - started < within(reaped)
                async with asyncio.timeout(within(0)):  # at once
                    await stack.relay.app.endpoint.wait_connections(0)
                proxy.clear()
            await stack.settle()
            assert stack.simulator.stats.connections_closed == 1

    async def test_client_that_never_reads_is_reaped(self) -> None:
        """A raw client that completes the handshake, then never reads, is reaped too."""
        async with relay_stack(flow=FAST_KEEPALIVE) as stack:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", stack.relay.port
            )
            try:
                key = base64.b64encode(os.urandom(16)).decode()
                target = stack.preview_url().split("/", 3)[3]
                writer.write(
                    (
                        f"GET /{target} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{stack.relay.port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                        f"api-key: {CLIENT_KEY}\r\n\r\n"
                    ).encode()
                )
                async with asyncio.timeout(5 * SECOND):
                    head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 ")
                assert stack.simulator.stats.connections_active == 1
                started = time.monotonic()
                # From here on, nothing is read: pings pile up unanswered.
                reaped = reaped_within(FAST_KEEPALIVE)
                await stack.simulator.wait_idle(timeout=within(reaped, 2 * SECOND))
                assert time.monotonic() - started < within(reaped)
            finally:
                writer.transport.abort()
            await stack.settle()


class TestSlowUpstream:
    LATENCY = 0.5
    BANDWIDTH = 64 * 1024

    async def test_turn_completes_at_500_ms_and_64_kb_per_s(self) -> None:
        """A spoken turn completes over a slow link and /livez stays fast meanwhile."""
        async with (
            proxied_upstream() as (stack, proxy),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.relay.port}") as http,
        ):
            assert (await http.get("/livez")).status_code == 200  # warm the client
            proxy.latency(self.LATENCY)
            proxy.bandwidth(self.BANDWIDTH)
            done = asyncio.Event()
            probes: list[float] = []

            async def probe_livez() -> None:
                for _ in range(1000):
                    if done.is_set():
                        return
                    started = time.monotonic()
                    response = await http.get("/livez")
                    probes.append(time.monotonic() - started)
                    assert response.status_code == 200
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await done.wait()

            async def spoken_turn() -> list[dict[str, Any]]:
                try:
                    async with connect_relay(stack.preview_url()) as ws:
                        assert (await receive_event(ws))["type"] == "session.created"
                        await speak(ws)
                        return await events_until(
                            ws, "response.done", within=30 * SECOND
                        )
                finally:
                    done.set()

            started = time.monotonic()
            async with asyncio.TaskGroup() as group:
                group.create_task(probe_livez())
                turn = group.create_task(spoken_turn())
            took = time.monotonic() - started
            events = turn.result()
            assert audio_bytes(events) >= 24_000
            assert events[-1]["response"]["status"] == "completed"
            # The toxics applied: the appended audio alone (base64) needs about
            # 2 s at 64 KiB/s, after the link's latency. A lower bound: a busy
            # machine only adds to it.
            assert took >= self.LATENCY + len(SPEECH) * 4 / 3 / self.BANDWIDTH
            assert len(probes) >= 20
            # The relay promises no latency for /livez. What the test is after
            # is isolation: a probe that waited on anything crossing the slow
            # link (or on a loop blocked as long) would take at least its latency.
            assert max(probes) < self.LATENCY, sorted(probes)[-5:]
            await stack.settle()
            await proxy.wait_idle()


class TestRefusals:
    @pytest.mark.parametrize(
        ("upstream", "client"), [(401, 502), (429, 429), (500, 502)]
    )
    async def test_refusals_through_the_proxy_are_mapped(
        self, upstream: int, client: int
    ) -> None:
        """Upstream 401/429/500 at the handshake: 502/429/502 before upgrade."""
        async with proxied_upstream() as (stack, proxy):
            stack.simulator.faults.refuse(upstream)
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == client
            await stack.settle()
            await proxy.wait_idle()
            assert stack.simulator.stats.connections_opened == 0

    @pytest.mark.parametrize("mode", ["reset", "unlisten"])
    async def test_an_unreachable_upstream_is_502(self, mode: RefuseMode) -> None:
        """Upstream connections reset or refused: 502 at once."""
        async with proxied_upstream() as (stack, proxy):
            await proxy.refuse(mode)
            started = time.monotonic()
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == 502
            # At once: not after the (default, 5 s) connect_timeout.
            assert time.monotonic() - started < within(0)
            await stack.settle()

    async def test_a_blackholed_handshake_is_504_within_connect_timeout(self) -> None:
        """An upstream that accepts TCP but never answers: 504 once connect_timeout passes."""
        connect_timeout = 0.5
        async with proxied_upstream(connect_timeout=connect_timeout) as (stack, proxy):
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == 504
            took = time.monotonic() - started
            assert connect_timeout <= took < within(connect_timeout)
            proxy.clear()
            await stack.settle()
            await proxy.wait_idle()


class TestCutConnection:
    @pytest.mark.parametrize("direction", ["downstream", "upstream"])
    async def test_upstream_leg_cut_after_n_bytes_is_1014(
        self, direction: Directions
    ) -> None:
        """The upstream TCP connection ends mid-session, mid-frame: 1014, nothing hangs."""
        async with proxied_upstream() as (stack, proxy):
            async with connect_relay(stack.preview_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                proxy.close_after(20_000, direction=direction)
                await speak(ws)
                assert await closed_with(ws, within=5 * SECOND) == 1014
            await stack.settle()
            await proxy.wait_idle()
            counted = (
                proxy.stats.downstream_bytes
                if direction == "downstream"
                else proxy.stats.upstream_bytes
            )
            assert counted >= 20_000


class TestOversizedFrames:
    async def test_oversized_client_message_is_1009(self) -> None:
        """A client message over max_message_bytes closes the session with 1009."""
        limits = LimitsSettings(max_message_bytes=64 * 1024)
        async with proxied_upstream(limits=limits) as (stack, proxy):
            async with connect_relay(stack.preview_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                await ws.send("x" * (64 * 1024 + 1))
                assert await closed_with(ws, within=2 * SECOND) == 1009
            await stack.settle()
            await proxy.wait_idle()
            # The oversized message never reached the upstream.
            assert proxy.stats.upstream_bytes < 64 * 1024

    async def test_oversized_upstream_message_is_1009(self) -> None:
        """An upstream message over max_message_bytes ends the session with 1009."""
        limits = LimitsSettings(max_message_bytes=64 * 1024)
        async with proxied_upstream(limits=limits) as (stack, proxy):
            stack.simulator.faults.oversized_frame_bytes = 64 * 1024 + 1
            async with connect_relay(stack.preview_url()) as ws:
                assert (await receive_event(ws))["type"] == "session.created"
                await speak(ws)
                assert await closed_with(ws, within=3 * SECOND) == 1009
            await stack.settle()
            await proxy.wait_idle()


class TestVanishingClient:
    async def test_a_client_rst_spares_a_streaming_session(self) -> None:
        """A client's TCP RST, while another session streams audio, ends only its own session."""
        async with (
            relay_stack(simulator_options=PACED) as stack,
            FaultProxy(("127.0.0.1", stack.relay.port)) as proxy,
        ):
            async with (
                connect_relay(stack.preview_url()) as survivor,
                connect_relay(via(proxy, stack.preview_url())) as victim,
            ):
                assert (await receive_event(survivor))["type"] == "session.created"
                assert (await receive_event(victim))["type"] == "session.created"
                await speak(survivor)
                streamed = await events_until(survivor, "response.audio.delta")
                proxy.reset_peer(direction="upstream")  # the relay gets the RST
                async with asyncio.timeout(within(0)):  # at once
                    await stack.relay.app.endpoint.wait_connections(at_most=1)
                streamed += await events_until(survivor, "response.done")
                assert streamed[-1]["response"]["status"] == "completed"
                assert audio_bytes(streamed) >= 24_000
                # The proxy closed the victim's side without a close frame.
                assert await closed_with(victim, within=within(0)) == 1006
            await stack.settle()
            assert (
                stack.simulator.stats.connections_opened
                == stack.simulator.stats.connections_closed
                == 2
            )
