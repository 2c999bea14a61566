"""The live /metrics exposition: exact usage accounting, realtime series, promtool's verdict."""

from __future__ import annotations

import asyncio
import base64
import shutil
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.servers import CLIENT_KEY, OTHER_CLIENT_KEY, Stack, relay_stack


SPEECH = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)


async def scrape_text(stack: Stack) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"http://127.0.0.1:{stack.relay.metrics_port}/metrics"
        )
    assert response.status_code == 200
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    return metrics[(name, frozenset(labels.items()))]


async def spoken_turn(stack: Stack, key: str = CLIENT_KEY) -> list[dict[str, Any]]:
    """One session: speech in 100 ms appends, the server-VAD response; all events out."""
    async with connect_relay(stack.ga_url(), key=key) as ws:
        await receive_event(ws)
        for offset in range(0, len(SPEECH), 4800):
            await send_event(ws, append_event(SPEECH[offset : offset + 4800]))
        events = await events_until(ws, "response.done")
        await send_event(ws, {"type": "response.create"})
        events += await events_until(ws, "response.done")
    return events


async def test_token_and_audio_accounting_is_exact() -> None:
    """relay_tokens_total and relay_audio_seconds_total equal the sessions' usage, per client."""
    async with relay_stack() as stack:
        expected: dict[str, Counter[str]] = {"app-a": Counter(), "app-b": Counter()}
        audio_out: dict[str, int] = {"app-a": 0, "app-b": 0}
        for client, key in (
            ("app-a", CLIENT_KEY),
            ("app-a", CLIENT_KEY),
            ("app-b", OTHER_CLIENT_KEY),
        ):
            for event in await spoken_turn(stack, key):
                if event["type"] == "response.done":
                    usage = event["response"]["usage"]
                    expected[client]["input/text"] += usage["input_token_details"][
                        "text_tokens"
                    ]
                    expected[client]["input/audio"] += usage["input_token_details"][
                        "audio_tokens"
                    ]
                    expected[client]["input/cached"] += usage["input_token_details"][
                        "cached_tokens"
                    ]
                    expected[client]["output/text"] += usage["output_token_details"][
                        "text_tokens"
                    ]
                    expected[client]["output/audio"] += usage["output_token_details"][
                        "audio_tokens"
                    ]
                elif event["type"] == "response.output_audio.delta":
                    audio_out[client] += len(base64.b64decode(event["delta"]))
        await stack.settle()
        metrics = samples(await scrape_text(stack))
    for client, counts in expected.items():
        assert sum(counts.values()) > 0
        for kind, count in counts.items():
            direction, modality = kind.split("/")
            got = value(
                metrics,
                "relay_tokens_total",
                client=client,
                deployment="gpt-realtime",
                direction=direction,
                modality=modality,
            )
            assert got == count, (client, kind)
    assert (
        value(
            metrics,
            "relay_tokens_total",
            client="app-a",
            deployment="gpt-4o-realtime-preview",
            direction="input",
            modality="text",
        )
        == 0
    )
    sessions = {"app-a": 2, "app-b": 1}
    for client, count in sessions.items():
        sent = value(
            metrics, "relay_audio_seconds_total", client=client, direction="input"
        )
        assert sent == pytest.approx(count * len(SPEECH) / 48_000)
        received = value(
            metrics, "relay_audio_seconds_total", client=client, direction="output"
        )
        assert received == pytest.approx(audio_out[client] / 48_000)


async def test_realtime_series_move() -> None:
    """Events by type, close codes per leg and first-audio latency are recorded."""
    async with relay_stack() as stack:
        started = time.monotonic()
        await spoken_turn(stack)
        session = time.monotonic() - started
        await stack.settle()
        metrics = samples(await scrape_text(stack))
    assert value(
        metrics,
        "relay_events_total",
        direction="client_to_upstream",
        event_type="input_audio_buffer.append",
    ) == len(range(0, len(SPEECH), 4800))
    assert (
        value(
            metrics,
            "relay_events_total",
            direction="upstream_to_client",
            event_type="response.done",
        )
        == 2
    )
    assert (
        value(
            metrics,
            "relay_events_total",
            direction="upstream_to_client",
            event_type="other",
        )
        == 0
    )
    assert value(metrics, "relay_close_codes_total", side="client", code="1000") == 1
    assert value(metrics, "relay_close_codes_total", side="upstream", code="1000") == 1
    assert value(metrics, "relay_first_audio_seconds_count") == 2
    # The latency depends on the simulator and the machine, and the relay
    # promises no figure; but the two waits it measures happen one after the
    # other within the session, however slow: in seconds, they fit in it.
    assert value(metrics, "relay_first_audio_seconds_sum") < session


async def test_promtool_accepts_the_live_exposition() -> None:
    """`promtool check metrics` on a live scrape prints nothing and exits 0."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install prometheus (CI installs it)")
    async with relay_stack() as stack:
        await spoken_turn(stack)
        await stack.settle()
        text = await scrape_text(stack)
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await process.communicate(text.encode())
    assert (process.returncode, stdout, stderr) == (0, b"", b"")
