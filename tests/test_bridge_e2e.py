"""The protocol bridge end to end: preview clients on a GA-only upstream.

The simulator runs GA only (``simulate --families ga``, as Azure will once the
preview protocol is retired); the relay's deployments speak GA upstream (the
default ``upstream_protocol``). Apps written for the preview protocol keep
working unchanged, and what they receive is the preview protocol: every event
validates strictly against the openai SDK's beta models.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection

from relay.config import parse_settings
from relay.simulator import Family
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    azure_client,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.servers import (
    CLIENT_KEY,
    DEPLOYMENT,
    GA_VERSION,
    LEGACY_DEPLOYMENT,
    PREVIEW_VERSION,
    Stack,
    relay_stack,
)
from tests.helpers.timing import SECOND
from tests.simulator.test_sdk_types import check


SPEECH = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather at a place.",
    "parameters": {
        "type": "object",
        "properties": {"place": {"type": "string"}},
        "required": ["place"],
    },
}


def ga_only() -> Any:
    """A relay in front of a simulator that serves only GA."""
    return relay_stack(simulator_options={"families": [Family.GA]})


async def raw_until(connection: Any, until: str) -> list[dict[str, Any]]:
    """Events as the SDK's connection received them, up to and including ``until``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10 * SECOND):
        for _ in range(10_000):
            event = json.loads(await connection.recv_bytes())
            events.append(event)
            if event["type"] == until:
                return events
    raise AssertionError(f"no {until!r} in {len(events)} events")


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def speak(connection: Any) -> None:
    for offset in range(0, len(SPEECH), 4800):
        chunk = base64.b64encode(SPEECH[offset : offset + 4800]).decode()
        await connection.input_audio_buffer.append(audio=chunk)


# Acceptance


async def test_the_sdk_beta_client_speaks_and_calls_a_tool_on_a_ga_only_upstream() -> (
    None
):
    """AsyncAzureOpenAI(api_version=...-preview).beta.realtime: a voice turn, then a spoken tool call."""
    async with ga_only() as stack:
        client = azure_client(stack, PREVIEW_VERSION)
        received: list[dict[str, Any]] = []
        async with client.beta.realtime.connect(model=DEPLOYMENT) as connection:
            received += await raw_until(connection, "session.created")
            assert "type" not in received[0]["session"]  # a preview session

            # A voice turn: server VAD commits and answers with audio.
            await speak(connection)
            turn = await raw_until(connection, "response.done")
            received += turn
            assert {
                "input_audio_buffer.speech_started",
                "input_audio_buffer.committed",
                "conversation.item.created",
                "response.audio.delta",
                "response.audio_transcript.done",
            } <= set(kinds(turn))
            assert turn[-1]["response"]["status"] == "completed"

            # A tool the model must call (the SDK's beta types allow only a
            # string tool_choice; the named shapes are in the script below).
            await connection.session.update(
                session={
                    "tools": [WEATHER],  # type: ignore[list-item]
                    "tool_choice": "required",
                    "temperature": 0.7,
                }
            )
            updated = await raw_until(connection, "session.updated")
            received += updated
            session = updated[-1]["session"]
            assert session["tools"] == [WEATHER]
            assert session["tool_choice"] == "required"
            assert session["temperature"] == 0.7

            await speak(connection)
            call = await raw_until(connection, "response.done")
            received += call
            [item] = call[-1]["response"]["output"]
            assert (item["type"], item["name"]) == ("function_call", "get_weather")
            await connection.conversation.item.create(
                item={
                    "type": "function_call_output",
                    "call_id": item["call_id"],
                    "output": '{"sky": "clear"}',
                }
            )
            await connection.response.create()
            answer = await raw_until(connection, "response.done")
            received += answer
            assert "response.audio.delta" in kinds(answer)
            transcript = next(
                e["transcript"]
                for e in answer
                if e["type"] == "response.audio_transcript.done"
            )
            assert transcript.endswith("The get_weather tool returned 16 characters.")
        await client.close()

        check(Family.PREVIEW, received)
        # The upstream saw GA only, on GA's endpoint.
        [handshake] = stack.simulator.stats.handshakes
        assert (handshake.path, handshake.query) == (
            "/openai/v1/realtime",
            {"model": DEPLOYMENT},
        )
        [update] = stack.simulator.stats.events_of_type("session.update")
        assert update["session"] == {
            "type": "realtime",
            "tools": [WEATHER],
            "tool_choice": "required",
        }
        await stack.settle()


@pytest.mark.parametrize("path", ["azure", "v1"])
async def test_ga_clients_are_not_translated_on_the_same_relay(path: str) -> None:
    """The SDK's GA clients (the AzureOpenAI path with a GA api-version, and the v1 path) get GA events."""
    async with ga_only() as stack:
        client: AsyncAzureOpenAI | AsyncOpenAI = (
            azure_client(stack, GA_VERSION)
            if path == "azure"
            else AsyncOpenAI(
                api_key=CLIENT_KEY, websocket_base_url=f"{stack.ws}/openai/v1"
            )
        )
        async with client.realtime.connect(model=DEPLOYMENT) as connection:
            received = await raw_until(connection, "session.created")
            assert received[0]["session"]["type"] == "realtime"
            await speak(connection)
            received += await raw_until(connection, "response.done")
        assert "response.output_audio.delta" in kinds(received)
        assert "conversation.item.done" in kinds(received)
        await client.close()
        check(Family.GA, received)
        [handshake] = stack.simulator.stats.handshakes
        assert (handshake.path, handshake.query) == (
            "/openai/v1/realtime",
            {"model": DEPLOYMENT},
        )
        await stack.settle()


# Faithfulness: the bridge shows what a preview upstream shows


SCRIPT: list[dict[str, Any]] = [
    {
        "type": "session.update",
        "session": {
            "modalities": ["text", "audio"],
            "voice": "verse",
            "instructions": "Be brief.",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_noise_reduction": {"type": "far_field"},
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": None,
            "tools": [WEATHER],
            "tool_choice": "auto",
            "temperature": 0.9,
            "max_response_output_tokens": 200,
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Hello there."}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What does get weather say?"}],
        },
    },
    {"type": "response.create"},
    {
        "type": "response.create",
        "response": {
            "modalities": ["text"],
            "instructions": "Classify.",
            "conversation": "none",
            "metadata": {"topic": "x"},
            "max_response_output_tokens": "inf",
        },
    },
    {"type": "response.create", "response": {"voice": "verse", "tool_choice": "none"}},
    {
        "type": "session.update",
        "session": {
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        },
    },
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.retrieve", "item_id": "missing"},
    {"type": "session.update", "session": {"voice": "not-a-voice"}},
]
"""A preview client's session: every event shape the bridge rewrites, and errors."""
# What each step waits for before the next is sent.
UNTIL = [
    "session.updated",
    "conversation.item.created",
    "conversation.item.created",
    "response.done",
    "response.done",
    "response.done",
    "session.updated",
    "input_audio_buffer.cleared",
    "error",
    "error",
]


async def run_script(url: str) -> list[dict[str, Any]]:
    async with connect_relay(url) as ws:
        events = [await receive_event(ws)]
        for event, until in zip(SCRIPT, UNTIL, strict=True):
            await send_event(ws, event)
            events += await events_until(ws, until)
    return events


GENERATED = frozenset(
    {
        "id",
        "event_id",
        "item_id",
        "response_id",
        "call_id",
        "previous_item_id",
        "conversation_id",
        "expires_at",
    }
)


def normalised(value: Any) -> Any:
    """A value with its generated ids and times replaced, for comparison."""
    if isinstance(value, dict):
        return {
            key: "<id>" if key in GENERATED and entry is not None else normalised(entry)
            for key, entry in value.items()
        }
    if isinstance(value, list):
        return [normalised(entry) for entry in value]
    return value


async def test_a_bridged_session_reads_like_a_preview_session() -> None:
    """The same preview script through the bridge (GA upstream) and on a preview upstream: the same events."""
    async with relay_stack() as stack:
        direct = await run_script(stack.preview_url(LEGACY_DEPLOYMENT))
        bridged = await run_script(stack.preview_url(DEPLOYMENT))
        await stack.settle()
    # A preview upstream announces the conversation; GA has no such event and
    # the bridge does not make one up.
    direct = [e for e in direct if e["type"] != "conversation.created"]
    assert kinds(bridged) == kinds(direct)
    for mine, theirs in zip(bridged, direct, strict=True):
        a, b = normalised(mine), normalised(theirs)
        if a["type"] in ("session.created", "session.updated"):
            # Azure's preview sample has a client secret; GA cannot say it.
            b["session"].pop("client_secret")
            # GA reports what preview's session lacks: its tracing and speed.
            a["session"].pop("tracing")
            a["session"].pop("speed")
        if a["type"] == "error":
            # GA's message lists its own voices (marin, cedar) too.
            a["error"].pop("message")
            b["error"].pop("message")
        assert a == b, a["type"]
    # The SDK's beta types know tool_choice only as a string; Azure's named
    # shape fails them whoever sends it.
    check(
        Family.PREVIEW,
        [
            e
            for e in bridged
            if not isinstance(e.get("session", {}).get("tool_choice"), dict)
        ],
    )


# Policy, metering and metrics see one view

POLICY_KEY = "key-of-a-governed-app"
POLICY_CONFIG = f"""
upstream: {{endpoint: http://127.0.0.1:9, auth: {{type: entra}}}}
deployments: {{{DEPLOYMENT}: {{}}}}
clients:
  - {{id: governed, key_sha256: "{hashlib.sha256(POLICY_KEY.encode()).hexdigest()}", policy: strict}}
policies:
  strict:
    on_violation: refuse
    set:
      input_audio_noise_reduction: {{type: near_field}}
    allow: {{voice: [alloy, verse]}}
    range: {{max_response_output_tokens: [1, 1024]}}
"""
CLIENTS = parse_settings(POLICY_CONFIG, source="bridge.yaml", environ={}).clients


@asynccontextmanager
async def governed() -> AsyncIterator[tuple[Stack, ClientConnection]]:
    async with (
        relay_stack(
            clients=CLIENTS, simulator_options={"families": [Family.GA]}
        ) as stack,
        connect_relay(stack.preview_url(), key=POLICY_KEY) as ws,
    ):
        yield stack, ws


async def test_the_policy_governs_a_bridged_session_in_the_clients_own_words() -> None:
    async with governed() as (stack, ws):
        created = await receive_event(ws)
        # Forced at start, in the GA shape upstream, shown in the preview shape.
        assert created["session"]["input_audio_noise_reduction"] == {
            "type": "near_field"
        }
        [init] = stack.simulator.stats.events_of_type("session.update")
        assert init["session"]["audio"]["input"]["noise_reduction"] == {
            "type": "near_field"
        }
        # A voice outside the allow-list: refused, naming the client's parameter.
        await send_event(
            ws,
            {"type": "session.update", "event_id": "c1", "session": {"voice": "echo"}},
        )
        [error] = await events_until(ws, "error")
        assert error["error"]["param"] == "session.voice"
        assert error["error"]["event_id"] == "c1"
        # A forced field the client tries to change: overwritten, in either shape.
        await send_event(
            ws,
            {
                "type": "session.update",
                "session": {
                    "input_audio_noise_reduction": None,
                    "max_response_output_tokens": 4000,
                },
            },
        )
        *_, updated = await events_until(ws, "session.updated")
        assert updated["session"]["input_audio_noise_reduction"] == {
            "type": "near_field"
        }
        assert updated["session"]["max_response_output_tokens"] == 1024
        *_, forwarded = stack.simulator.stats.events_of_type("session.update")
        assert forwarded["session"] == {
            "type": "realtime",
            "max_output_tokens": 1024,
            "audio": {"input": {"noise_reduction": {"type": "near_field"}}},
        }
        # The upstream's own error names the client's parameter too.
        await send_event(
            ws, {"type": "session.update", "session": {"output_audio_format": "mp3"}}
        )
        [error] = await events_until(ws, "error")
        assert error["error"]["param"] == "session.output_audio_format"
        assert "'session.output_audio_format'" in error["error"]["message"]


async def test_a_bridged_session_is_metered_like_any_other() -> None:
    """Tokens and audio seconds from the GA events, counted once."""
    async with ga_only() as stack:
        async with connect_relay(stack.preview_url()) as ws:
            await receive_event(ws)
            for offset in range(0, len(SPEECH), 4800):
                await send_event(ws, append_event(SPEECH[offset : offset + 4800]))
            events = await events_until(ws, "response.done")
        await stack.settle()
        usage = events[-1]["response"]["usage"]
        async with httpx.AsyncClient() as http:
            text = (
                await http.get(f"http://127.0.0.1:{stack.relay.metrics_port}/metrics")
            ).text
        metrics = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for family_sample in [family]
            for s in family_sample.samples
        }
        tokens = {
            labels: value
            for (name, labels), value in metrics.items()
            if name == "relay_tokens_total"
        }
        assert sum(tokens.values()) == usage["total_tokens"]
        audio_out = [
            value
            for (name, labels), value in metrics.items()
            if name == "relay_audio_seconds_total" and ("direction", "output") in labels
        ]
        assert sum(audio_out) > 0
        protocols = {
            labels: value
            for (name, labels), value in metrics.items()
            if name == "relay_session_protocols_total"
        }
        assert protocols == {
            (
                ("client", "app-a"),
                ("client_protocol", "preview"),
                ("deployment", DEPLOYMENT),
                ("upstream_protocol", "ga"),
            ): 1.0
        }


# Garbage through the bridge


async def test_garbage_from_a_bridged_client_is_answered_and_the_session_goes_on() -> (
    None
):
    async with ga_only() as stack:
        async with connect_relay(stack.preview_url()) as ws:
            await receive_event(ws)
            garbage: list[str | bytes] = [
                "not json",
                b"\x00\x01",
                '{"type":"session.update","session":[1,2]}',
                '{"type":"session.update","session":{"modalities":"audio","turn_detection":7,"tool_choice":{"type":"function","function":5}}}',
                '{"type":"response.create","response":{"input":[1,{"content":"x"}],"modalities":[null]}}',
                '{"type":"conversation.item.create","item":{"type":"message","role":"assistant","content":[{"type":"text"}]}}',
                '{"type":"conversation.item.create","item":"x"}',
                '{"type":"transcription_session.update","session":{}}',
            ]
            for frame in garbage:
                await ws.send(frame)
                [error] = await events_until(ws, "error")
                assert error["error"]["message"]
            # Still open and still a preview session.
            await send_event(
                ws, {"type": "session.update", "session": {"voice": "verse"}}
            )
            *_, updated = await events_until(ws, "session.updated")
            assert updated["session"]["voice"] == "verse"
        await stack.settle()
