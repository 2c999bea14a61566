"""Agent frameworks' session updates under a policy, through a real relay and simulator.

The payloads are what the frameworks put on the wire, byte for byte in shape:
openai-agents 0.24.0 (``OpenAIRealtimeWebSocketModel._get_session_config`` for a
``RealtimeAgent`` with instructions and no tools, dumped with
``exclude_unset``) and livekit-agents 1.8.9 (``RealtimeModel.with_azure`` with
its defaults on the GA path: the session update, then the instructions and tools
updates an ``AgentSession`` sends). The policy is the one ``make run`` serves
(``examples/dev.yaml``), which denies client tools.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import load_settings, parse_settings
from tests.helpers.clients import connect_relay, events_until, receive_event, send_event
from tests.helpers.servers import (
    DEPLOYMENT,
    GA_DEPLOYMENT,
    Stack,
    clients_with,
    relay_stack,
)


DEV_POLICY = (
    load_settings(
        Path(__file__).parent.parent / "examples" / "dev.yaml",
        {"AZURE_OPENAI_API_KEY": "unused"},
    )
    .clients[0]
    .policy
)
DEV_CLIENTS = clients_with(policy=DEV_POLICY)

AGENTS_SESSION_UPDATE: dict[str, Any] = {
    "session": {
        "type": "realtime",
        "audio": {
            "input": {
                "format": {"rate": 24000, "type": "audio/pcm"},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "semantic_vad", "interrupt_response": True},
            },
            "output": {"format": {"rate": 24000, "type": "audio/pcm"}, "voice": "ash"},
        },
        "instructions": "You are a helpful assistant.",
        "model": "gpt-realtime-2.1",
        "output_modalities": ["audio"],
        "tools": [],
    },
    "type": "session.update",
}
LIVEKIT_SESSION_UPDATES: list[dict[str, Any]] = [
    {
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "format": {"rate": 24000, "type": "audio/pcm"},
                    "noise_reduction": None,
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": True,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 200,
                        "threshold": 0.5,
                    },
                },
                "output": {
                    "format": {"rate": 24000, "type": "audio/pcm"},
                    "speed": 1.0,
                    "voice": "marin",
                },
            },
            "max_output_tokens": "inf",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "tool_choice": "auto",
            "tracing": None,
        },
        "type": "session.update",
        "event_id": "session_update_Xk2pQ9",
    },
    {
        "session": {
            "type": "realtime",
            "instructions": "You are a helpful voice AI assistant.",
        },
        "type": "session.update",
        "event_id": "instructions_update_Hq7Tz1",
    },
    {
        "session": {"type": "realtime", "model": "gpt-realtime", "tools": []},
        "type": "session.update",
        "event_id": "tools_update_Lm3Vb8",
    },
]


def metric(stack: Stack, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(
        generate_latest(stack.registry).decode()
    ):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


class TestFrameworksUnderTheDevPolicy:
    @pytest.mark.parametrize(
        ("voice", "effective"), [("ash", "alloy"), ("verse", "verse")]
    )
    async def test_openai_agents_update_is_applied(
        self, voice: str, effective: str
    ) -> None:
        """tools: [] passes; instructions, VAD and transcription stand; a voice outside the list is stripped."""
        update = copy.deepcopy(AGENTS_SESSION_UPDATE)
        update["session"]["audio"]["output"]["voice"] = voice
        async with (
            relay_stack(clients=DEV_CLIENTS) as stack,
            connect_relay(stack.ga_url()) as ws,
        ):
            await receive_event(ws)
            await send_event(ws, update)
            events = await events_until(ws, "session.updated")
            assert [event["type"] for event in events] == ["session.updated"]
            session = events[-1]["session"]
            assert session["instructions"] == "You are a helpful assistant."
            audio_input = session["audio"]["input"]
            assert audio_input["turn_detection"]["type"] == "semantic_vad"
            assert audio_input["transcription"]["model"] == "gpt-4o-mini-transcribe"
            # The policy's own set value, and its default voice where ash was stripped.
            assert audio_input["noise_reduction"] == {"type": "near_field"}
            assert session["audio"]["output"]["voice"] == effective
            assert session["tools"] == []
            [_, forwarded] = stack.simulator.stats.events_of_type("session.update")
            assert forwarded["session"]["tools"] == []
            stripped = voice != effective
            assert ("voice" in forwarded["session"]["audio"]["output"]) != stripped
            assert metric(
                stack, "relay_policy_actions_total", action="strip", field="voice"
            ) == float(stripped)
            await send_event(ws, {"type": "response.create"})
            done = (await events_until(ws, "response.done"))[-1]
            assert done["response"]["status"] == "completed"

    async def test_livekit_updates_are_applied(self) -> None:
        """tool_choice auto passes; VAD, transcription and instructions stand; marin is stripped."""
        async with (
            relay_stack(clients=DEV_CLIENTS) as stack,
            connect_relay(stack.ga_url()) as ws,
        ):
            await receive_event(ws)
            for update in LIVEKIT_SESSION_UPDATES:
                await send_event(ws, update)
                events = await events_until(ws, "session.updated")
                assert [event["type"] for event in events] == ["session.updated"]
            session = events[-1]["session"]
            audio_input = session["audio"]["input"]
            assert audio_input["turn_detection"]["silence_duration_ms"] == 200
            assert audio_input["transcription"]["model"] == "whisper-1"
            assert audio_input["noise_reduction"] == {"type": "near_field"}
            assert session["audio"]["output"]["voice"] == "alloy"
            assert session["instructions"] == "You are a helpful voice AI assistant."
            assert session["tool_choice"] == "auto"
            assert session["max_output_tokens"] == 1024
            forwarded = stack.simulator.stats.events_of_type("session.update")[1:]
            assert [event["event_id"] for event in forwarded] == [
                update["event_id"] for update in LIVEKIT_SESSION_UPDATES
            ]
            assert forwarded[0]["session"]["tool_choice"] == "auto"
            assert "voice" not in forwarded[0]["session"]["audio"]["output"]


KEY_STRIP, KEY_REFUSE = "key-of-approved", "key-of-strict"
TOOLS_CONFIG = f"""
upstream: {{endpoint: http://127.0.0.1:9, auth: {{type: entra}}}}
deployments: {{{DEPLOYMENT}: {{}}, {GA_DEPLOYMENT}: {{}}}}
clients:
  - {{id: approved, key_sha256: "{hashlib.sha256(KEY_STRIP.encode()).hexdigest()}", policy: approved}}
  - {{id: strict, key_sha256: "{hashlib.sha256(KEY_REFUSE.encode()).hexdigest()}", policy: strict}}
policies:
  approved:
    allow: {{tools: [get_weather]}}
  strict:
    allow: {{tools: {{values: [get_weather], on_violation: refuse}}}}
"""
TOOLS_CLIENTS = parse_settings(TOOLS_CONFIG, source="tools.yaml", environ={}).clients
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather at a place.",
    "parameters": {"type": "object", "properties": {"place": {"type": "string"}}},
}
WIRE = {"type": "function", "name": "wire_money", "parameters": {"type": "object"}}


def session_of(family: str, **fields: Any) -> dict[str, Any]:
    return fields if family == "preview" else {"type": "realtime", **fields}


@pytest.mark.parametrize("family", ["preview", "ga"])
class TestToolAllowList:
    async def test_the_unlisted_tool_is_stripped(self, family: str) -> None:
        """The approved tool reaches the session; the other never reaches the upstream."""
        async with relay_stack(clients=TOOLS_CLIENTS) as stack:
            url = stack.preview_url() if family == "preview" else stack.ga_url()
            async with connect_relay(url, key=KEY_STRIP) as ws:
                await receive_event(ws)
                update = session_of(family, tools=[WIRE, WEATHER], tool_choice="auto")
                await send_event(ws, {"type": "session.update", "session": update})
                events = await events_until(ws, "session.updated")
                assert "error" not in [event["type"] for event in events]
                assert events[-1]["session"]["tools"] == [WEATHER]
                assert "wire_money" not in str(stack.simulator.stats.client_events)

    async def test_the_unlisted_tool_is_refused(self, family: str) -> None:
        """With on_violation refuse the whole update is answered with an error naming the tool."""
        async with relay_stack(clients=TOOLS_CLIENTS) as stack:
            url = stack.preview_url() if family == "preview" else stack.ga_url()
            async with connect_relay(url, key=KEY_REFUSE) as ws:
                await receive_event(ws)
                update = session_of(family, tools=[WEATHER, WIRE])
                await send_event(
                    ws, {"type": "session.update", "event_id": "t1", "session": update}
                )
                error = (await events_until(ws, "error"))[-1]["error"]
                assert (error["code"], error["param"], error["event_id"]) == (
                    "policy_violation",
                    "session.tools[1]",
                    "t1",
                )
                update = session_of(family, tools=[WEATHER])
                await send_event(ws, {"type": "session.update", "session": update})
                assert (await events_until(ws, "session.updated"))[-1]["session"][
                    "tools"
                ] == [WEATHER]
                assert "wire_money" not in str(stack.simulator.stats.client_events)


async def test_a_tools_denying_policy_refusing_still_passes_framework_defaults() -> (
    None
):
    """Even with on_violation refuse, the values that change nothing are no violation."""
    refusing = replace(DEV_POLICY, on_violation="refuse")
    async with (
        relay_stack(clients=clients_with(policy=refusing)) as stack,
        connect_relay(stack.ga_url()) as ws,
    ):
        await receive_event(ws)
        for update in LIVEKIT_SESSION_UPDATES[1:]:
            await send_event(ws, update)
            assert [e["type"] for e in await events_until(ws, "session.updated")] == [
                "session.updated"
            ]
        agents = copy.deepcopy(AGENTS_SESSION_UPDATE)
        agents["session"]["audio"]["output"]["voice"] = "verse"
        await send_event(ws, agents)
        assert [e["type"] for e in await events_until(ws, "session.updated")] == [
            "session.updated"
        ]
