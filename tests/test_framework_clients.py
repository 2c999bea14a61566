"""Agent frameworks themselves, through a real relay and simulator.

tests/test_policy_frameworks_e2e.py replays what the frameworks send; here the
libraries run: the OpenAI Agents SDK's ``RealtimeRunner`` and LiveKit's
``RealtimeModel.with_azure`` session, each with its defaults and only its
endpoint and key pointed at the relay, under the policy ``make run`` serves
(examples/dev.yaml: noise reduction forced, client tools denied).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner, RealtimeSession
from livekit import agents as livekit, rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import (
    RealtimeModel,
    RealtimeSession as LiveKitSession,
)
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import ClientSettings, load_settings, parse_settings
from relay.simulator.audio import speech_like_pcm16
from tests.helpers.servers import (
    CLIENT_KEY,
    GA_DEPLOYMENT,
    Stack,
    clients_with,
    relay_stack,
)
from tests.helpers.timing import SECOND


# openai-agents imports mcp, whose sse_starlette swaps uvicorn.Server.handle_exit
# for a wrapper of its own in the whole process. The relay never imports them:
# give the rest of the suite uvicorn as shipped (tests/ws/test_uvicorn_seam.py
# checks its signatures).
_sse = sys.modules.get("sse_starlette.sse")
if _sse is not None and _sse.AppStatus.original_handler is not None:
    uvicorn.Server.handle_exit = _sse.AppStatus.original_handler  # type: ignore[method-assign]

DEV_YAML = Path(__file__).parent.parent / "examples" / "dev.yaml"
ENVIRON = {"AZURE_OPENAI_API_KEY": "unused"}
DEV_POLICY = load_settings(DEV_YAML, ENVIRON).clients[0].policy
DEV_CLIENTS = clients_with(policy=DEV_POLICY)


def dev_clients_allowing(tool: str) -> tuple[ClientSettings, ...]:
    """The test clients on examples/dev.yaml's policy, ``tool`` approved instead of all denied."""
    raw = yaml.safe_load(DEV_YAML.read_text())
    rules = raw["policies"]["standard"]
    rules["deny"].remove("tools")
    rules["allow"]["tools"] = [tool]
    settings = parse_settings(yaml.safe_dump(raw), source="dev.yaml", environ=ENVIRON)
    return clients_with(policy=settings.clients[0].policy)


WEATHER_CLIENTS = dev_clients_allowing("get_weather")
# One second of speech, then enough silence for either framework's VAD to end
# the turn (the Agents SDK's semantic VAD: 700 ms; LiveKit's server VAD: 200 ms).
UTTERANCE = speech_like_pcm16(1.0, trailing_silence=1.0)
NEAR_FIELD = {"type": "near_field"}


def test_the_dev_policy_forces_noise_reduction_and_denies_tools() -> None:
    """What these tests rely on examples/dev.yaml to say."""
    assert DEV_POLICY.set["input_audio_noise_reduction"] == NEAR_FIELD
    assert {"tools", "tool_choice"} <= DEV_POLICY.deny
    assert DEV_POLICY.on_violation == "strip"


def policy_actions(stack: Stack) -> dict[tuple[str, str], float]:
    """The relay's non-zero ``relay_policy_actions_total`` samples by (action, field)."""
    actions: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(
        generate_latest(stack.registry).decode()
    ):
        for sample in family.samples:
            if sample.name == "relay_policy_actions_total" and sample.value:
                key = (sample.labels["action"], sample.labels["field"])
                actions[key] = sample.value
    return actions


def forwarded_updates(stack: Stack) -> list[dict[str, Any]]:
    """The session updates the upstream received, the relay's own first."""
    return stack.simulator.stats.events_of_type("session.update")


def assert_applied_not_refused(stack: Stack, updates: int) -> None:
    """The upstream got the relay's policy update, then every one of the client's.

    The relay's own update forces noise reduction; no policy action refused
    anything (strips and overwrites are what the policy is for).
    """
    forwarded = forwarded_updates(stack)
    assert len(forwarded) == 1 + updates
    assert forwarded[0]["session"]["audio"]["input"]["noise_reduction"] == NEAR_FIELD
    for update in forwarded[1:]:
        # Absent, or the client's value overwritten with the policy's.
        audio_input = update["session"].get("audio", {}).get("input", {})
        assert audio_input.get("noise_reduction", NEAR_FIELD) == NEAR_FIELD
    assert not [key for key in policy_actions(stack) if key[0] == "refuse"]


# --- The OpenAI Agents SDK ---------------------------------------------------


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


async def agents_session(stack: Stack, agent: RealtimeAgent[Any]) -> RealtimeSession:
    """A ``RealtimeRunner`` session pointed at the relay: its URL and Azure's key header."""
    return await RealtimeRunner(agent).run(
        model_config={"url": stack.ga_url(), "headers": {"api-key": CLIENT_KEY}}
    )


async def agents_answer(session: RealtimeSession) -> tuple[bytes, list[Any]]:
    """The answer's audio and every session event up to the end of the spoken turn.

    A tool call is a turn of its own, without audio; it does not end this.
    """
    audio = bytearray()
    events: list[Any] = []
    async with asyncio.timeout(10 * SECOND):
        async for event in session:
            events.append(event)
            if event.type == "audio":
                audio += event.audio.data
            if event.type == "agent_end" and audio:
                return bytes(audio), events
    raise AssertionError(f"session ended before agent_end: {events[-10:]}")


def server_events(events: list[Any], kind: str) -> list[dict[str, Any]]:
    """The server events of type ``kind`` the SDK passed on raw."""
    return [
        event.data.data
        for event in events
        if event.type == "raw_model_event"
        and event.data.type == "raw_server_event"
        and event.data.data["type"] == kind
    ]


def agents_transcripts(events: list[Any]) -> list[str]:
    """The assistant's spoken transcripts in the SDK's latest history."""
    *_, last = (event for event in events if event.type == "history_updated")
    return [
        part.transcript
        for item in last.history
        if item.type == "message" and item.role == "assistant"
        for part in item.content
        if part.type == "audio" and part.transcript
    ]


class TestOpenAIAgents:
    async def test_voice_turn(self) -> None:
        """Speech in through send_audio, the SDK's semantic VAD turn, the answer's audio out."""
        agent = RealtimeAgent(
            name="Assistant", instructions="You are a helpful assistant."
        )
        async with relay_stack(clients=DEV_CLIENTS) as stack:
            async with await agents_session(stack, agent) as session:
                await session.send_audio(UTTERANCE)
                audio, events = await agents_answer(session)
            assert not [event for event in events if event.type == "error"]
            # The simulator speaks one second of PCM16 at 24 kHz per answer.
            assert len(audio) == 48_000
            assert agents_transcripts(events) == [
                "This is the Realtime simulator. I heard 1.7 seconds of audio."
            ]
            # The SDK's defaults stand, on the policy's noise reduction and voice.
            effective = server_events(events, "session.updated")[-1]["session"]
            assert effective["instructions"] == "You are a helpful assistant."
            audio_input = effective["audio"]["input"]
            assert audio_input["turn_detection"]["type"] == "semantic_vad"
            assert audio_input["noise_reduction"] == NEAR_FIELD
            assert effective["audio"]["output"]["voice"] == "alloy"
            # Its agent update, then its tracing update on session.created.
            assert_applied_not_refused(stack, updates=2)
            assert policy_actions(stack) == {("strip", "voice"): 1}

    async def test_a_denied_tool_is_stripped_and_the_turn_completes(self) -> None:
        """The agent's tool never reaches the upstream: a message naming it is answered, not called."""
        agent = RealtimeAgent(name="Assistant", tools=[get_weather])
        async with relay_stack(clients=DEV_CLIENTS) as stack:
            async with await agents_session(stack, agent) as session:
                await session.send_message("What does get weather say?")
                audio, events = await agents_answer(session)
            assert not [e for e in events if e.type in ("error", "tool_start")]
            assert len(audio) == 48_000
            assert "get_weather" not in str(stack.simulator.stats.client_events)
            assert_applied_not_refused(stack, updates=2)
            assert policy_actions(stack) == {
                ("strip", "voice"): 1,
                ("strip", "tools"): 1,
            }

    async def test_an_allowed_tool_is_called_and_answered(self) -> None:
        """Under the dev policy approving get_weather, the SDK runs the call and the answer follows."""
        agent = RealtimeAgent(name="Assistant", tools=[get_weather])
        async with relay_stack(clients=WEATHER_CLIENTS) as stack:
            async with await agents_session(stack, agent) as session:
                await session.send_message("What does get weather say?")
                audio, events = await agents_answer(session)
            [end] = [event for event in events if event.type == "tool_end"]
            assert (end.arguments, end.output) == (
                '{"city":"example"}',
                "Sunny in example.",
            )
            [output] = [
                event["item"]
                for event in stack.simulator.stats.events_of_type(
                    "conversation.item.create"
                )
                if event["item"]["type"] == "function_call_output"
            ]
            assert output["output"] == "Sunny in example."
            assert len(audio) == 48_000
            assert agents_transcripts(events) == [
                "This is the Realtime simulator. The get_weather tool returned 17 characters."
            ]
            assert_applied_not_refused(stack, updates=2)
            assert policy_actions(stack) == {("strip", "voice"): 1}


# --- LiveKit Agents' OpenAI plugin -------------------------------------------

LIVEKIT_INSTRUCTIONS = "You are a helpful voice AI assistant."
# What with_azure's defaults become under the dev policy: its null noise
# reduction overwritten, marin stripped (the policy's alloy stays), "inf"
# output tokens clamped to the policy's 1024.
LIVEKIT_ACTIONS = {
    ("overwrite", "input_audio_noise_reduction"): 1,
    ("strip", "voice"): 1,
    ("clamp", "max_response_output_tokens"): 1,
}


def livekit_model(stack: Stack) -> RealtimeModel:
    """``with_azure`` as documented, with the relay as the Azure endpoint.

    The plugin turns the endpoint's http:// into ws:// and takes the GA path
    (``/openai/v1/realtime?model=<deployment>``, key in ``api-key``).
    """
    return RealtimeModel.with_azure(
        azure_deployment=GA_DEPLOYMENT,
        azure_endpoint=f"http://127.0.0.1:{stack.relay.port}",
        api_key=CLIENT_KEY,
    )


def frames(pcm: bytes) -> list[rtc.AudioFrame]:
    """``pcm`` (24 kHz mono PCM16) as 100 ms frames, as a room track would deliver it."""
    size = 2 * 2400
    return [
        rtc.AudioFrame(
            data=pcm[start : start + size],
            sample_rate=24_000,
            num_channels=1,
            samples_per_channel=len(pcm[start : start + size]) // 2,
        )
        for start in range(0, len(pcm), size)
    ]


async def livekit_answer(
    generations: asyncio.Queue[llm.GenerationCreatedEvent],
) -> tuple[bytes, str]:
    """The audio and transcript of the next generation's message."""
    audio = bytearray()
    text: list[str] = []
    async with asyncio.timeout(10 * SECOND):
        generation = await generations.get()
        async for message in generation.message_stream:
            async for frame in message.audio_stream:
                audio += frame.data.tobytes()
            text.extend([chunk async for chunk in message.text_stream])
    return bytes(audio), "".join(text)


@livekit.function_tool
async def lookup_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}."


class TestLiveKit:
    async def test_voice_turn(self) -> None:
        """Frames in through push_audio, server VAD ends the turn, the generation's audio out."""
        async with relay_stack(clients=DEV_CLIENTS) as stack:
            model = livekit_model(stack)
            session: LiveKitSession = model.session()
            generations: asyncio.Queue[llm.GenerationCreatedEvent] = asyncio.Queue()
            received: list[dict[str, Any]] = []
            errors: list[llm.RealtimeModelError] = []
            session.on("generation_created", generations.put_nowait)
            session.on("openai_server_event_received", received.append)
            session.on("error", errors.append)
            try:
                for frame in frames(UTTERANCE):
                    session.push_audio(frame)
                audio, transcript = await livekit_answer(generations)
            finally:
                await session.aclose()
                await model.aclose()
            assert len(audio) == 48_000
            assert transcript == (
                "This is the Realtime simulator. I heard 1.2 seconds of audio."
            )
            assert errors == []
            assert "error" not in [event["type"] for event in received]
            [updated] = [e for e in received if e.get("type") == "session.updated"]
            audio_input = updated["session"]["audio"]["input"]
            assert audio_input["noise_reduction"] == NEAR_FIELD
            assert audio_input["turn_detection"]["silence_duration_ms"] == 200
            assert audio_input["transcription"]["model"] == "whisper-1"
            assert updated["session"]["audio"]["output"]["voice"] == "alloy"
            assert_applied_not_refused(stack, updates=1)
            assert policy_actions(stack) == LIVEKIT_ACTIONS

    async def agent_run(self, stack: Stack) -> list[Any]:
        """An ``AgentSession`` without a room: the weather agent asked by text.

        The session sends the instructions and tools updates, the user's message
        and ``generate_reply``, runs any tool call and replies to its output.
        """
        model = livekit_model(stack)
        agent = livekit.Agent(instructions=LIVEKIT_INSTRUCTIONS, tools=[lookup_weather])
        try:
            async with livekit.AgentSession(llm=model) as session:
                await session.start(agent)
                async with asyncio.timeout(10 * SECOND):
                    result: livekit.RunResult[None] = await session.run(
                        user_input="What does lookup weather say?"
                    )
        finally:
            await model.aclose()
        return list(result.events)

    async def test_a_denied_tool_is_stripped_and_the_turn_completes(self) -> None:
        """The agent's tool never reaches the upstream: the message naming it is answered."""
        async with relay_stack(clients=DEV_CLIENTS) as stack:
            events = await self.agent_run(stack)
            [answer] = [event.item for event in events]
            assert answer.role == "assistant"
            assert answer.text_content == (
                "This is the Realtime simulator. I heard 0.0 seconds of audio."
            )
            assert "lookup_weather" not in str(stack.simulator.stats.client_events)
            # The session update, then AgentSession's instructions and tools updates.
            assert_applied_not_refused(stack, updates=3)
            assert policy_actions(stack) == {**LIVEKIT_ACTIONS, ("strip", "tools"): 1}

    async def test_an_allowed_tool_is_called_and_answered(self) -> None:
        """Under the dev policy approving lookup_weather, AgentSession runs the call and replies."""
        async with relay_stack(clients=dev_clients_allowing("lookup_weather")) as stack:
            events = await self.agent_run(stack)
            assert [event.type for event in events] == [
                "function_call",
                "function_call_output",
                "message",
            ]
            call, output, answer = (event.item for event in events)
            assert (call.name, call.arguments) == (
                "lookup_weather",
                '{"city": "example"}',
            )
            assert output.output == "Sunny in example."
            [sent] = [
                event["item"]
                for event in stack.simulator.stats.events_of_type(
                    "conversation.item.create"
                )
                if event["item"]["type"] == "function_call_output"
            ]
            assert (sent["call_id"], sent["output"]) == (
                call.call_id,
                "Sunny in example.",
            )
            assert answer.text_content == (
                "This is the Realtime simulator. The lookup_weather tool returned 17 characters."
            )
            assert_applied_not_refused(stack, updates=3)
            assert policy_actions(stack) == LIVEKIT_ACTIONS
