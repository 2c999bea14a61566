"""``make demo``: one scripted voice session through a fresh simulator and relay.

It needs nothing running: the simulator and the relay start on free loopback
ports, a plain `websockets` client (what an internal app would write) sends a
``session.update`` and about a second of generated speech, the simulator's
server VAD ends the turn and answers, and the client reads the response. The
trace shows every event by direction, type and size, with repeats folded; the
summary gives the counts, the audio each way and the latency a caller hears.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect

from relay.config import LogSettings, parse_settings
from relay.service.logs import configure_logging
from relay.service.server import running_relay
from relay.simulator import Simulator
from relay.simulator.audio import silence_pcm16, speech_like_pcm16


__all__ = ["run_demo"]

PCM16_BYTES_PER_SECOND = 48_000
CHUNK_SECONDS = 0.1  # Azure recommends ~100 ms input chunks
DEPLOYMENT = "gpt-4o-realtime-preview"
API_VERSION = "2025-04-01-preview"
_CONFIG = """
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream:
  endpoint: {upstream}
  auth: {{type: api_key, api_key_env: DEMO_UPSTREAM_KEY}}
deployments:
  {deployment}: {{}}
clients:
  - {{id: demo-app, key_sha256: "{digest}"}}
"""


@dataclass
class Trace:
    """Prints events as they pass, folding runs of the same event type."""

    out: TextIO
    started: float = field(default_factory=time.monotonic)
    counts: dict[str, int] = field(
        default_factory=lambda: {"client→relay": 0, "relay→client": 0}
    )
    _run: tuple[str, str] | None = None
    _run_count: int = 0
    _run_bytes: int = 0
    _run_start: float = 0.0

    def event(self, direction: str, event_type: str, size: int) -> None:
        """Record one event; print the previous run when the type changes."""
        self.counts[direction] += 1
        key = (direction, event_type)
        if key != self._run:
            self.flush()
            self._run, self._run_count, self._run_bytes = key, 0, 0
            self._run_start = time.monotonic() - self.started
        self._run_count += 1
        self._run_bytes += size

    def flush(self) -> None:
        """Print the pending run, if any."""
        if self._run is None:
            return
        direction, event_type = self._run
        arrow = "→" if direction == "client→relay" else "←"
        times = f" ×{self._run_count}" if self._run_count > 1 else ""
        print(
            f"{self._run_start * 1000:8.1f} ms  {arrow} {event_type}{times}  ({_size(self._run_bytes)})",
            file=self.out,
        )
        self._run = None


def _size(count: int) -> str:
    return f"{count} B" if count < 2048 else f"{count / 1024:.1f} KiB"


async def _send(ws: ClientConnection, trace: Trace, event: dict[str, Any]) -> None:
    text = json.dumps(event)
    trace.event("client→relay", event["type"], len(text))
    await ws.send(text)


async def run_demo(out: TextIO) -> int:
    """Run the scripted session, print the trace and summary; return the exit status."""
    configure_logging(LogSettings(format="console", level="warning"))
    upstream_key = secrets.token_urlsafe(24)
    client_key = secrets.token_urlsafe(24)
    async with Simulator.start(
        host="127.0.0.1", port=0, api_keys={upstream_key}
    ) as simulator:
        settings = parse_settings(
            _CONFIG.format(
                upstream=simulator.url,
                deployment=DEPLOYMENT,
                digest=hashlib.sha256(client_key.encode()).hexdigest(),
            ),
            source="demo",
            environ={"DEMO_UPSTREAM_KEY": upstream_key},
        )
        async with running_relay(settings) as relay:
            url = f"ws://127.0.0.1:{relay.port}/openai/realtime?api-version={API_VERSION}&deployment={DEPLOYMENT}"
            print(
                f"Simulator at {simulator.url}, relay at ws://127.0.0.1:{relay.port}",
                file=out,
            )
            print(
                f"Client connects to {url.split('?')[0]} (preview protocol)\n", file=out
            )
            async with asyncio.timeout(30):
                return await _session(url, client_key, out)


async def _session(url: str, client_key: str, out: TextIO) -> int:
    trace = Trace(out)
    audio_in = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)
    async with connect(
        url, additional_headers={"api-key": client_key}, compression=None
    ) as ws:
        events: list[dict[str, Any]] = []
        arrivals: dict[str, float] = {}

        async def receive_until(last: str) -> None:
            while True:
                message = await ws.recv()
                event = json.loads(message)
                trace.event("relay→client", event["type"], len(message))
                events.append(event)
                arrivals.setdefault(event["type"], time.monotonic())
                if event["type"] == last:
                    return

        await receive_until("session.created")
        await _send(
            ws,
            trace,
            {
                "type": "session.update",
                "session": {
                    "voice": "alloy",
                    "input_audio_noise_reduction": {"type": "near_field"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "create_response": True,
                    },
                },
            },
        )
        update_sent = time.monotonic()
        await receive_until("session.updated")
        reader = asyncio.ensure_future(receive_until("response.done"))
        chunk = int(PCM16_BYTES_PER_SECOND * CHUNK_SECONDS)
        for offset in range(0, len(audio_in), chunk):
            pcm = audio_in[offset : offset + chunk]
            await _send(
                ws,
                trace,
                {
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(pcm).decode(),
                },
            )
        speech_end = time.monotonic()
        await reader
        trace.flush()

    first_audio = arrivals.get("response.audio.delta")
    audio_out = sum(
        len(base64.b64decode(e["delta"]))
        for e in events
        if e["type"] == "response.audio.delta"
    )
    done = events[-1]
    usage = done["response"].get("usage", {})
    print("\nSummary", file=out)
    print(
        f"  events   client→relay {trace.counts['client→relay']}, relay→client {trace.counts['relay→client']}",
        file=out,
    )
    print(
        f"  audio    sent {len(audio_in) / PCM16_BYTES_PER_SECOND:.2f} s, "
        f"received {audio_out / PCM16_BYTES_PER_SECOND:.2f} s",
        file=out,
    )
    print(
        f"  response {done['response']['status']}, usage {usage.get('total_tokens')} tokens",
        file=out,
    )
    print(
        f"  latency  session.update round trip {(arrivals['session.updated'] - update_sent) * 1000:.1f} ms; "
        + (
            f"first audio {(first_audio - speech_end) * 1000:.1f} ms after the last chunk was sent"
            if first_audio is not None
            else "no audio received"
        ),
        file=out,
    )
    return (
        0
        if first_audio is not None and done["response"]["status"] == "completed"
        else 1
    )
