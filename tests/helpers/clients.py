"""Plain `websockets` clients of the relay, as an app without any SDK would write them."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable
from typing import Any

from openai import AsyncAzureOpenAI
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.servers import CLIENT_KEY, Stack
from tests.helpers.timing import SECOND


def connect_relay(
    url: str,
    *,
    key: str | None = CLIENT_KEY,
    headers: Iterable[tuple[str, str]] = (),
    **options: Any,
) -> connect:
    """A connection to the relay authenticated with ``key`` in the ``api-key`` header."""
    all_headers = [("api-key", key)] if key is not None else []
    all_headers.extend(headers)
    options.setdefault("compression", None)
    options.setdefault("open_timeout", 10 * SECOND)
    options.setdefault("max_size", 32 * 1024 * 1024)
    return connect(url, additional_headers=all_headers, **options)


async def receive_event(
    ws: ClientConnection, *, within: float = 5 * SECOND
) -> dict[str, Any]:
    """The next server event, parsed."""
    async with asyncio.timeout(within):
        message = await ws.recv()
    event = json.loads(message)
    assert isinstance(event, dict)
    return event


async def events_until(
    ws: ClientConnection,
    last_type: str,
    *,
    limit: int = 2000,
    within: float = 10 * SECOND,
) -> list[dict[str, Any]]:
    """Server events up to and including the first of type ``last_type``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        for _ in range(limit):
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] == last_type:
                return events
    raise AssertionError(
        f"no {last_type!r} within {limit} events: {[e['type'] for e in events][-10:]}"
    )


async def send_event(ws: ClientConnection, event: dict[str, Any]) -> None:
    """Send one client event as a text frame."""
    await ws.send(json.dumps(event))


def append_event(pcm: bytes) -> dict[str, Any]:
    """An ``input_audio_buffer.append`` carrying ``pcm``."""
    return {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(pcm).decode(),
    }


def azure_client(stack: Stack, api_version: str) -> AsyncAzureOpenAI:
    """The openai SDK's Azure client, pointed at a plaintext relay as the README shows."""
    return AsyncAzureOpenAI(
        azure_endpoint=f"http://127.0.0.1:{stack.relay.port}",
        api_key=CLIENT_KEY,
        api_version=api_version,
        websocket_base_url=f"{stack.ws}/openai",
    )
