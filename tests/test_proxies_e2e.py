"""The relay behind real reverse proxies: quiet sessions survive their idle timeouts.

Ingress proxies cut a WebSocket that carries nothing for their idle timeout
(nginx `proxy_read_timeout`, 60 s by default; HAProxy `timeout tunnel`). A
voice session may be quiet for longer (the caller listens, thinks, is put on
hold), so the relay pings both legs every `flow.ping_interval`. Here the
proxies' timeouts are 1.5 s and the session stays quiet for 4 s: with the
relay's pings it lives, and without them (the control) the proxy cuts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay.config import FlowSettings
from tests.helpers.clients import connect_relay, receive_event, send_event
from tests.helpers.proxies import running_haproxy, running_nginx
from tests.helpers.servers import relay_stack
from tests.helpers.timing import SECOND


IDLE_TIMEOUT = 1.5
QUIET = 4.0  # more than twice the proxy's idle timeout
PINGING = FlowSettings(ping_interval=0.5, ping_timeout=2.0)
SILENT = FlowSettings(ping_interval=None, ping_timeout=None)

Proxy = Callable[..., contextlib.AbstractAsyncContextManager[int]]
PROXIES = [
    pytest.param(running_nginx, id="nginx"),
    pytest.param(running_haproxy, id="haproxy"),
]


@contextlib.asynccontextmanager
async def session_through(
    proxy: Proxy, flow: FlowSettings
) -> AsyncIterator[ClientConnection]:
    async with (
        relay_stack(flow=flow) as stack,
        proxy(stack.relay.port, idle=IDLE_TIMEOUT) as port,
    ):
        url = stack.ga_url().replace(f":{stack.relay.port}/", f":{port}/")
        # The client never pings: only the relay's pings cross the proxy.
        async with connect_relay(url, ping_interval=None) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
            yield ws


async def quiet_for(ws: ClientConnection, seconds: float) -> list[Any]:
    """Whatever events arrive while the client stays silent for ``seconds``."""
    events: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:  # bounded by the timeout above
                events.append(await ws.recv())
    return events


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_quiet_session_outlives_the_proxy_idle_timeout(proxy: Proxy) -> None:
    async with session_through(proxy, PINGING) as ws:
        await quiet_for(ws, QUIET)
        # Still open end to end: an event goes up and its answer comes back.
        await send_event(
            ws, {"type": "input_audio_buffer.clear", "event_id": "after-quiet"}
        )
        kinds: list[str] = []
        async with asyncio.timeout(5 * SECOND):
            while "input_audio_buffer.cleared" not in kinds:  # bounded by the timeout
                kinds.append((await receive_event(ws))["type"])
        assert ws.close_code is None


@pytest.mark.parametrize("proxy", PROXIES)
async def test_without_pings_the_proxy_cuts_the_quiet_session(proxy: Proxy) -> None:
    """The control: the same session without the relay's pings does not survive."""
    async with session_through(proxy, SILENT) as ws:
        with pytest.raises(ConnectionClosed):
            await quiet_for(ws, QUIET * SECOND)
