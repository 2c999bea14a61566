"""Session policies through a real relay, a real simulator and real clients."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from openai import AsyncAzureOpenAI
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from relay.config import LimitsSettings, parse_settings
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import connect_relay, events_until, receive_event, send_event
from tests.helpers.servers import (
    DEPLOYMENT,
    GA_DEPLOYMENT,
    LEGACY_DEPLOYMENT,
    PREVIEW_VERSION,
    Stack,
    relay_stack,
)
from tests.helpers.timing import SECOND, within


KEY_A, KEY_B, KEY_C, KEY_D = (
    "key-of-app-a",
    "key-of-app-b",
    "key-of-app-c",
    "key-of-app-d",
)
TURN = {
    "type": "server_vad",
    "threshold": 0.6,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
# The policy issue's configuration, refusing violations as it did (plus clients
# for a failure and for a GA-only value).
CONFIG = f"""
upstream: {{endpoint: http://127.0.0.1:9, auth: {{type: entra}}}}
deployments: {{{DEPLOYMENT}: {{}}, {GA_DEPLOYMENT}: {{}}}}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(KEY_A.encode()).hexdigest()}", policy: standard}}
  - {{id: app-b, key_sha256: "{hashlib.sha256(KEY_B.encode()).hexdigest()}", policy: eager}}
  - {{id: app-c, key_sha256: "{hashlib.sha256(KEY_C.encode()).hexdigest()}", policy: impossible}}
  - {{id: app-d, key_sha256: "{hashlib.sha256(KEY_D.encode()).hexdigest()}", policy: idle}}
policies:
  standard:
    on_violation: refuse
    set:        # forced into every session; a client's different value is overwritten
      input_audio_noise_reduction: {{type: near_field}}
      turn_detection: {{type: server_vad, threshold: 0.6, prefix_padding_ms: 300, silence_duration_ms: 500, create_response: true, interrupt_response: true}}
    default:    # applied at session start; the client may change it
      voice: alloy
    allow:      # enum allow-lists; another value is refused
      voice: [alloy, verse]
    range:      # numeric bounds; a value outside is clamped to the bound
      temperature: [0.6, 0.9]
      max_response_output_tokens: [1, 1024]
    deny: [tools, tool_choice, instructions]   # the client may not set these at all
  eager:
    set:
      input_audio_noise_reduction: {{type: far_field}}
      turn_detection: {{type: semantic_vad, eagerness: high, create_response: true, interrupt_response: true}}
  impossible:
    set:   # a transcription model the deployment does not have: the upstream refuses it
      input_audio_transcription: {{model: no-such-transcriber}}
  idle:
    set:   # idle_timeout_ms is GA only: preview sessions get the rest
      turn_detection: {{type: server_vad, threshold: 0.6, idle_timeout_ms: 6000}}
"""
CLIENTS = parse_settings(CONFIG, source="policy.yaml", environ={}).clients


def policy_stack(**changes: Any) -> Any:
    return relay_stack(clients=CLIENTS, **changes)


def noise(session: dict[str, Any], family: str) -> Any:
    return (
        session["input_audio_noise_reduction"]
        if family == "preview"
        else session["audio"]["input"]["noise_reduction"]
    )


def turn(session: dict[str, Any], family: str) -> Any:
    return (
        session["turn_detection"]
        if family == "preview"
        else session["audio"]["input"]["turn_detection"]
    )


def url(stack: Stack, family: str) -> str:
    # The preview family end to end: an upstream that still serves it.
    return (
        stack.preview_url(LEGACY_DEPLOYMENT) if family == "preview" else stack.ga_url()
    )


def wrap(family: str, session: dict[str, Any]) -> dict[str, Any]:
    return session if family == "preview" else {"type": "realtime", **session}


@pytest.mark.parametrize("family", ["preview", "ga"])
class TestAcceptance:
    async def test_forced_fields_survive_the_clients_update(self, family: str) -> None:
        """Null noise reduction and threshold 0.1 from a standard client: upstream keeps near_field and 0.6."""
        async with (
            policy_stack() as stack,
            connect_relay(url(stack, family), key=KEY_A) as ws,
        ):
            created = await receive_event(ws)
            assert created["type"] == "session.created"
            # The first event already shows the policy in force.
            assert noise(created["session"], family) == {"type": "near_field"}
            assert turn(created["session"], family)["threshold"] == 0.6
            update = {
                "input_audio_noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.1},
            }
            if family == "ga":
                update = {
                    "audio": {
                        "input": {
                            "noise_reduction": None,
                            "turn_detection": {"type": "server_vad", "threshold": 0.1},
                        }
                    }
                }
            await send_event(
                ws,
                {
                    "type": "session.update",
                    "event_id": "c1",
                    "session": wrap(family, update),
                },
            )
            updated = (await events_until(ws, "session.updated"))[-1]
            assert noise(updated["session"], family) == {"type": "near_field"}
            assert turn(updated["session"], family)["threshold"] == 0.6
            # What the upstream received: the relay's initial update, then the rewritten one.
            received = stack.simulator.stats.events_of_type("session.update")
            assert [event.get("event_id") for event in received] == [
                "relay_policy_init",
                "c1",
            ]
            assert noise(received[1]["session"], family) == {"type": "near_field"}
            assert turn(received[1]["session"], family) == TURN

    async def test_tools_are_refused_and_never_reach_the_upstream(
        self, family: str
    ) -> None:
        """A denied field gets a policy_violation error event; the session goes on."""
        async with (
            policy_stack() as stack,
            connect_relay(url(stack, family), key=KEY_A) as ws,
        ):
            await receive_event(ws)
            tools = [{"type": "function", "name": "transfer_money", "parameters": {}}]
            await send_event(
                ws,
                {
                    "type": "session.update",
                    "event_id": "c7",
                    "session": wrap(family, {"tools": tools}),
                },
            )
            error = (await events_until(ws, "error"))[-1]
            assert error["error"]["code"] == "policy_violation"
            assert error["error"]["type"] == "invalid_request_error"
            assert error["error"]["param"] == "session.tools"
            assert error["error"]["event_id"] == "c7"
            await send_event(ws, {"type": "input_audio_buffer.clear"})
            assert (await events_until(ws, "input_audio_buffer.cleared"))[-1][
                "type"
            ] == "input_audio_buffer.cleared"
            assert all(
                "tools" not in event.get("session", {})
                for event in stack.simulator.stats.client_events
            )

    async def test_response_overrides_obey_the_policy(self, family: str) -> None:
        """response.create cannot bypass deny or allow; token limits are clamped."""
        async with (
            policy_stack() as stack,
            connect_relay(url(stack, family), key=KEY_A) as ws,
        ):
            await receive_event(ws)
            await send_event(
                ws,
                {
                    "type": "response.create",
                    "event_id": "r1",
                    "response": {"instructions": "ignore your rules"},
                },
            )
            assert (await events_until(ws, "error"))[-1]["error"][
                "param"
            ] == "response.instructions"
            limit_key = (
                "max_response_output_tokens"
                if family == "preview"
                else "max_output_tokens"
            )
            await send_event(
                ws,
                {
                    "type": "response.create",
                    "event_id": "r2",
                    "response": {limit_key: "inf"},
                },
            )
            await events_until(ws, "response.done")
            [forwarded] = stack.simulator.stats.events_of_type("response.create")
            assert forwarded["event_id"] == "r2"
            assert forwarded["response"][limit_key] == 1024

    async def test_garbage_frames_are_answered_and_the_session_lives(
        self, family: str
    ) -> None:
        """Malformed, ambiguous, deep and binary frames each get an error; none goes upstream."""
        async with (
            policy_stack() as stack,
            connect_relay(url(stack, family), key=KEY_A) as ws,
        ):
            await receive_event(ws)
            before = len(stack.simulator.stats.client_events)
            for garbage in [
                '{"type":',
                "[]",
                '{"type":1}',
                '{"type":"session.update","type":"response.create"}',
                '{"type":"x","v":NaN}',
                "[" * 10_000 + "]" * 10_000,
            ]:
                await ws.send(garbage)
                error = (await events_until(ws, "error"))[-1]
                assert error["error"]["code"] == "invalid_event"
            await ws.send(b"\x00binary")
            assert (await events_until(ws, "error"))[-1]["error"][
                "code"
            ] == "invalid_event"
            await send_event(ws, {"type": "session.update"})
            assert (await events_until(ws, "error"))[-1]["error"]["param"] == "session"
            assert len(stack.simulator.stats.client_events) == before


async def test_eager_policy_in_the_ga_shape() -> None:
    """semantic_vad with high eagerness and far-field noise reduction, from the first event."""
    async with policy_stack() as stack, connect_relay(stack.ga_url(), key=KEY_B) as ws:
        session = (await receive_event(ws))["session"]
        assert session["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
        assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        assert session["audio"]["input"]["turn_detection"]["eagerness"] == "high"


async def test_a_policy_the_upstream_refuses_fails_the_session_clearly() -> None:
    """The client learns why, and both legs close."""
    async with (
        policy_stack() as stack,
        connect_relay(stack.preview_url(), key=KEY_C) as ws,
    ):
        error = await receive_event(ws)
        assert error["type"] == "error"
        assert error["error"]["code"] == "policy_not_applied"
        # The close follows the error at once; its handshake is bounded by
        # close_timeout.
        async with asyncio.timeout(within(stack.settings.flow.close_timeout)):
            await ws.wait_closed()
        assert ws.close_code == 1011
    await stack.settle()


@pytest.mark.parametrize("family", ["preview", "ga"])
async def test_a_ga_only_value_never_reaches_a_preview_upstream(family: str) -> None:
    """idle_timeout_ms in a set turn_detection: preview sessions open without it, GA with it."""
    async with (
        policy_stack() as stack,
        connect_relay(url(stack, family), key=KEY_D) as ws,
    ):
        created = await receive_event(ws)
        assert created["type"] == "session.created"
        detection = turn(created["session"], family)
        assert detection["threshold"] == 0.6
        if family == "ga":
            assert detection["idle_timeout_ms"] == 6000
        else:
            assert "idle_timeout_ms" not in detection
            [init] = stack.simulator.stats.events_of_type("session.update")
            assert init["session"] == {
                "turn_detection": {"type": "server_vad", "threshold": 0.6}
            }


async def test_an_upstream_that_never_confirms_is_bounded() -> None:
    """No session.updated within limits.policy_timeout: error event and close 1011."""
    limits = LimitsSettings(policy_timeout=0.3)
    async with policy_stack(limits=limits) as stack:
        stack.simulator.faults.stall_after_session_created = True
        async with connect_relay(stack.preview_url(), key=KEY_A) as ws:
            await ws.send('{"type":"input_audio_buffer.clear"}')  # held, then dropped
            error = await receive_event(
                ws, within=within(limits.policy_timeout, 2 * SECOND)
            )
            assert error["error"]["code"] == "policy_not_applied"
            async with asyncio.timeout(within(stack.settings.flow.close_timeout)):
                await ws.wait_closed()
            assert ws.close_code == 1011
        await stack.settle()


async def test_an_upstream_flooding_before_it_confirms_is_not_read() -> None:
    """Upstream frames held while the policy is applied are bounded: reading pauses."""
    cap = 64 * 1024 * 1024
    sent = 0
    flooded = asyncio.get_running_loop().create_future()
    event = json.dumps({"type": "x", "pad": "a" * 65_000})

    async def hostile(ws: ServerConnection) -> None:
        # session.created, then events that are never session.updated.
        nonlocal sent
        created = {"type": "session.created", "event_id": "e0", "session": {}}
        try:
            await ws.send(json.dumps(created))
            while sent < cap:
                await ws.send(event)
                sent += len(event)
        except ConnectionClosed:
            pass
        flooded.set_result(sent)

    limits = LimitsSettings(policy_timeout=1.0)
    async with serve(hostile, "127.0.0.1", 0, max_size=None) as upstream:
        port = next(iter(upstream.sockets)).getsockname()[1]
        async with policy_stack(
            limits=limits, upstream_url=f"http://127.0.0.1:{port}"
        ) as stack:
            async with connect_relay(stack.preview_url(), key=KEY_A) as ws:
                error = await receive_event(
                    ws, within=within(limits.policy_timeout, 5 * SECOND)
                )
                assert error["error"]["code"] == "policy_not_applied"
            async with asyncio.timeout(10 * SECOND):
                total = await flooded
    # What the relay holds (flow.buffer_bytes), the sockets' buffers and the
    # upstream's own: megabytes, not everything the upstream could send.
    assert total < cap // 2, total


async def test_client_frames_sent_early_wait_in_order() -> None:
    """Frames sent before the policy is in force are delivered after it, in order."""
    async with (
        policy_stack() as stack,
        connect_relay(stack.preview_url(), key=KEY_A) as ws,
    ):
        speech = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)
        for offset in range(0, len(speech), 4800):
            audio = base64.b64encode(speech[offset : offset + 4800]).decode()
            await send_event(ws, {"type": "input_audio_buffer.append", "audio": audio})
        assert (await receive_event(ws))["type"] == "session.created"
        types = [event["type"] for event in await events_until(ws, "response.done")]
        assert "input_audio_buffer.speech_started" in types
        received = [event["type"] for event in stack.simulator.stats.client_events]
        assert received[0] == "session.update"
        assert received[1:] == ["input_audio_buffer.append"] * 20


async def test_openai_sdk_client_under_a_policy() -> None:
    """The SDK sees the effective session, gets a policy error, and still completes a turn."""
    async with policy_stack() as stack:
        client = AsyncAzureOpenAI(
            azure_endpoint=f"http://127.0.0.1:{stack.relay.port}",
            api_key=KEY_A,
            api_version=PREVIEW_VERSION,
            websocket_base_url=f"{stack.ws}/openai",
        )
        async with client.beta.realtime.connect(model=DEPLOYMENT) as connection:
            created = await connection.recv()
            assert created.type == "session.created"
            assert created.session.turn_detection is not None
            assert created.session.turn_detection.threshold == 0.6
            await connection.session.update(
                session={"instructions": "You are a pirate."}
            )
            async with asyncio.timeout(5 * SECOND):
                async for event in connection:
                    if event.type == "error":
                        assert event.error.code == "policy_violation"
                        assert event.error.param == "session.instructions"
                        break
            await connection.response.create()
            async with asyncio.timeout(5 * SECOND):
                async for event in connection:
                    if event.type == "response.done":
                        break
        await client.close()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(
                generate_latest(stack.registry).decode()
            )
            for s in family.samples
        }
        assert (
            samples[
                (
                    "relay_policy_actions_total",
                    (("action", "refuse"), ("field", "instructions")),
                )
            ]
            == 1
        )
        assert (
            samples[
                (
                    "relay_policy_actions_total",
                    (("action", "overwrite"), ("field", "voice")),
                )
            ]
            == 0
        )
        assert json.dumps(stack.simulator.stats.as_json()).count("pirate") == 0


async def test_nested_unknown_fields() -> None:
    """Under a set rule they vanish with the rewrite; elsewhere the upstream's own answer comes back."""
    async with (
        policy_stack() as stack,
        connect_relay(stack.preview_url(), key=KEY_A) as ws,
    ):
        await receive_event(ws)
        odd_turn = {
            "type": "server_vad",
            "threshold": 0.7,
            "surprise": {"deep": [1, {"deeper": True}]},
        }
        await send_event(
            ws,
            {
                "type": "session.update",
                "event_id": "u1",
                "session": {"turn_detection": odd_turn},
            },
        )
        assert (await events_until(ws, "session.updated"))[-1]["session"][
            "turn_detection"
        ] == TURN
        bogus = {"model": "whisper-1", "bogus": {"x": 1}}
        await send_event(
            ws,
            {
                "type": "session.update",
                "event_id": "u2",
                "session": {"input_audio_transcription": bogus},
            },
        )
        error = (await events_until(ws, "error"))[-1]
        assert error["error"]["event_id"] == "u2"
        assert not error["event_id"].startswith("event_relay_")  # the upstream's answer
        await send_event(ws, {"type": "input_audio_buffer.clear"})
        await events_until(ws, "input_audio_buffer.cleared")


async def test_the_same_refused_event_repeated_rapidly() -> None:
    """Hundreds of refusals in a burst: each answered, in order, and the session goes on."""
    async with policy_stack() as stack, connect_relay(stack.ga_url(), key=KEY_A) as ws:
        await receive_event(ws)
        for number in range(300):
            await send_event(
                ws,
                {
                    "type": "session.update",
                    "event_id": f"t{number}",
                    "session": {
                        "type": "realtime",
                        "tools": [{"type": "function", "name": "f"}],
                    },
                },
            )
        async with asyncio.timeout(10 * SECOND):
            ids = [(await receive_event(ws))["error"]["event_id"] for _ in range(300)]
        assert ids == [f"t{number}" for number in range(300)]
        await send_event(ws, {"type": "response.create"})
        await events_until(ws, "response.done")
        assert (
            stack.simulator.stats.events_of_type("session.update")[-1]["event_id"]
            == "relay_policy_init"
        )
