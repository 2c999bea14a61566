"""Shared helpers of the simulator tests: scripted engine sessions and socket clients."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from relay.simulator import (
    Family,
    Faults,
    IdFactory,
    SessionOptions,
    SimSession,
    Simulator,
)
from tests.helpers.timing import SECOND


NOW = 1_700_000_000.0
"""A fixed Unix time for engine tests."""

PREVIEW_QUERY = "api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"
GA_QUERY = "model=gpt-realtime"
KEY = "test-key"
TOKEN = "test-entra-token"


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


class Script:
    """A sans-I/O session driven like a client: send events, read what comes back."""

    def __init__(
        self,
        family: Family = Family.PREVIEW,
        *,
        options: SessionOptions | None = None,
        now: float = NOW,
        deployment: str = "deployment-1",
        faults: Faults | None = None,
    ) -> None:
        self.faults = faults or Faults()
        """The session's fault switches (only ``fail_transcription`` acts here)."""
        self.session = SimSession(
            family,
            deployment,
            now=now,
            options=options,
            ids=IdFactory(7),
            faults=self.faults,
        )
        self.now = now
        self.opening = self.session.open()

    def send(self, event: dict[str, Any] | str) -> list[dict[str, Any]]:
        """Send one client event (a dict, or raw text); return every server event.

        Immediate answers come first, then all pending response events.
        """
        text = event if isinstance(event, str) else json.dumps(event)
        return self.session.receive(text, self.now) + self.drain()

    def drain(self) -> list[dict[str, Any]]:
        """Produce every pending response event, ticking after each (as the edge does)."""
        events = []
        while (event := self.session.next_response_event()) is not None:
            events.append(event)
            events += self.session.tick(self.now)
        return events

    def wait(self, seconds: float) -> list[dict[str, Any]]:
        """Let ``seconds`` pass: return what the session's timers produce."""
        self.now += seconds
        return self.session.tick(self.now) + self.drain()

    def append(self, audio: bytes, chunk_ms: int = 100) -> list[dict[str, Any]]:
        """Append PCM16 ``audio`` in ``chunk_ms`` chunks; return every server event."""
        size = 48 * chunk_ms
        events = []
        for start in range(0, len(audio), size):
            chunk = audio[start : start + size]
            events += self.send(
                {"type": "input_audio_buffer.append", "audio": b64(chunk)}
            )
        return events


def types(events: list[dict[str, Any]]) -> list[str]:
    """The ``type`` of each event."""
    return [event["type"] for event in events]


def error_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``error`` object of the single error event in ``events``."""
    [event] = events
    assert event["type"] == "error", event
    error: dict[str, Any] = event["error"]
    return error


def ws_url(sim: Simulator, path: str, query: str = "") -> str:
    """The ``ws://`` URL of ``path`` on ``sim``."""
    base = sim.url.replace("http://", "ws://", 1)
    return f"{base}{path}?{query}" if query else f"{base}{path}"


@asynccontextmanager
async def session(
    sim: Simulator, *, ga: bool = False, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    """Connect a real websockets client with the test key, preview or GA path."""
    if ga:
        url = ws_url(sim, "/openai/v1/realtime", GA_QUERY)
    else:
        url = ws_url(sim, "/openai/realtime", PREVIEW_QUERY)
    async with connect(
        url,
        additional_headers=headers if headers is not None else {"api-key": KEY},
        compression=None,
        max_size=None,
        open_timeout=5 * SECOND,
    ) as ws:
        yield ws


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """Receive one server event (bounded)."""
    async with asyncio.timeout(5 * SECOND):
        message = await ws.recv()
    event: dict[str, Any] = json.loads(message)
    return event


async def receive_until(ws: ClientConnection, wanted: str) -> list[dict[str, Any]]:
    """Receive events up to and including the first of type ``wanted`` (bounded)."""
    events = []
    async with asyncio.timeout(10 * SECOND):
        while True:
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] == wanted:
                return events
