"""Every event the simulator emits validates against the openai SDK's typed models.

Preview sessions are checked against the beta server-event union
(``openai.types.beta.realtime``), GA sessions against the GA one
(``openai.types.realtime``), with a pydantic ``TypeAdapter`` in strict mode.
The SDK's models accept unknown fields, so each validated model is also
searched for fields its type does not declare: those must be listed in
:data:`KNOWN_EXTRAS`, with the reason the simulator sends them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from openai.types.beta.realtime.realtime_server_event import (
    RealtimeServerEvent as BetaServerEvent,
)
from openai.types.realtime.realtime_server_event import (
    RealtimeServerEvent as GaServerEvent,
)
from pydantic import BaseModel, TypeAdapter, ValidationError

from relay.simulator import Family, SessionOptions
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.simulator.helpers import Script, b64, types


ADAPTERS: dict[Family, TypeAdapter[Any]] = {
    Family.PREVIEW: TypeAdapter(BetaServerEvent),
    Family.GA: TypeAdapter(GaServerEvent),
}

# The beta types list OpenAI's model names as the only valid session models,
# so the scripted deployments are named after models (as Azure users often do).
DEPLOYMENTS = {Family.PREVIEW: "gpt-4o-realtime-preview", Family.GA: "gpt-realtime"}

_GA_SESSION = "the GA session event types its session as the request object; the "
_GA_SESSION += (
    "server's also has id, object, expires_at (RealtimeSessionCreateResponse)"
)
_AZURE_SESSION = (
    "Azure's preview session.created sample has it (client_secret, include)"
)
KNOWN_EXTRAS: dict[tuple[Family, str, str], str] = {
    **{
        (Family.GA, kind, f"session.{field}"): _GA_SESSION
        for kind in ("session.created", "session.updated")
        for field in ("id", "object", "expires_at")
    },
    **{
        (Family.PREVIEW, kind, f"session.{field}"): _AZURE_SESSION
        for kind in ("session.created", "session.updated")
        for field in ("object", "expires_at", "client_secret", "include")
    },
}
"""Fields the SDK's types lack that the simulator sends on purpose, with why."""

# A tiny valid PNG header as an image (content is never decoded).
PNG = "data:image/png;base64," + b64(b"\x89PNG\r\n\x1a\n" + bytes(16))


def extras(value: object, path: str = "") -> Iterator[str]:
    """Dotted paths of the fields a validated model holds beyond its type's."""
    if isinstance(value, BaseModel):
        for name in value.model_extra or {}:
            yield f"{path}{name}"
        for name in type(value).model_fields:
            yield from extras(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list):
        for entry in value:
            yield from extras(entry, f"{path[:-1]}[].")
    elif isinstance(value, dict):
        for key, entry in value.items():
            yield from extras(entry, f"{path}{key}.")


def check(family: Family, events: list[dict[str, Any]]) -> None:
    """Each event validates (strict) and carries no undeclared field but known ones."""
    assert events
    for event in events:
        try:
            model = ADAPTERS[family].validate_json(json.dumps(event), strict=True)
        except ValidationError as exc:  # pragma: no cover - the failure report
            raise AssertionError(f"{family} {event['type']}: {exc}") from None
        unknown = [
            path
            for path in extras(model)
            if (family, event["type"], path) not in KNOWN_EXTRAS
        ]
        assert unknown == [], f"{family} {event['type']} has undeclared {unknown}"


def script(family: Family, **options: Any) -> Script:
    return Script(
        family,
        deployment=DEPLOYMENTS[family],
        options=SessionOptions(**options),
    )


def update(
    family: Family, preview: dict[str, Any], ga: dict[str, Any]
) -> dict[str, Any]:
    """A session.update in the family's shape."""
    session = preview if family is Family.PREVIEW else {"type": "realtime", **ga}
    return {"type": "session.update", "session": session}


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def voice_turn(family: Family) -> list[dict[str, Any]]:
    """Server VAD turn: speech, auto-commit, an audio answer; then a text turn."""
    s = script(family, conversation_created=True)
    events = list(s.opening)
    events += s.append(
        speech_like_pcm16(1.0, leading_silence=0.3, trailing_silence=0.6)
    )
    events += s.send(user_text("And now in text?"))
    text_only = (
        {"modalities": ["text"]}
        if family is Family.PREVIEW
        else {"output_modalities": ["text"]}
    )
    events += s.send({"type": "response.create", "response": text_only})
    assert "response.done" in types(events)
    return events


def tool_round_trip(family: Family) -> list[dict[str, Any]]:
    """A function call, its output from the client, and the answer."""
    s = script(family)
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    }
    events = list(s.opening)
    events += s.send(
        update(
            family,
            {"tools": [tool], "turn_detection": None},
            {"tools": [tool], "audio": {"input": {"turn_detection": None}}},
        )
    )
    events += s.send(user_text("What does get_weather say for Oslo?"))
    events += s.send({"type": "response.create"})
    [call] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    output = {
        "type": "function_call_output",
        "call_id": call["call_id"],
        "output": '{"temp_c": 4}',
    }
    events += s.send({"type": "conversation.item.create", "item": output})
    events += s.send({"type": "response.create"})
    assert types(events).count("response.done") == 2
    return events


def cancel_and_barge_in(family: Family) -> list[dict[str, Any]]:
    """A response cancelled by the client, another by speech (turn_detected)."""
    s = script(family)
    events = list(s.opening)
    events += s.session.receive(json.dumps({"type": "response.create"}), s.now)
    for _ in range(7):
        event = s.session.next_response_event()
        assert event is not None
        events.append(event)
    events += s.send({"type": "response.cancel"})
    events += s.session.receive(json.dumps({"type": "response.create"}), s.now)
    for _ in range(3):
        event = s.session.next_response_event()
        assert event is not None
        events.append(event)
    events += s.append(speech_like_pcm16(0.4, trailing_silence=0.6))
    statuses = [e["response"]["status"] for e in events if e["type"] == "response.done"]
    assert statuses == ["cancelled", "cancelled", "completed"]
    return events


def transcription(family: Family) -> list[dict[str, Any]]:
    """Input transcription deltas and completed, then a failed transcription."""
    s = script(family)
    transcribe = {"model": "gpt-4o-transcribe"}
    events = list(s.opening)
    events += s.send(
        update(
            family,
            {"input_audio_transcription": transcribe, "turn_detection": None},
            {"audio": {"input": {"transcription": transcribe, "turn_detection": None}}},
        )
    )
    events += s.append(silence_pcm16(0.5))
    events += s.send({"type": "input_audio_buffer.commit"})
    s.faults.fail_transcription = True
    events += s.append(silence_pcm16(0.5))
    events += s.send({"type": "input_audio_buffer.commit", "event_id": "c_1"})
    kinds = types(events)
    assert "conversation.item.input_audio_transcription.delta" in kinds
    assert "conversation.item.input_audio_transcription.failed" in kinds
    return events


def items_and_errors(family: Family) -> list[dict[str, Any]]:
    """Item retrieve, truncate and delete, buffer clear, and error events."""
    s = script(family)
    events = list(s.opening)
    events += s.send({"type": "response.create"})
    [done] = [e for e in events if e["type"] == "response.done"]
    item_id = done["response"]["output"][0]["id"]
    events += s.send({"type": "conversation.item.retrieve", "item_id": item_id})
    events += s.send(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 500,
        }
    )
    events += s.send({"type": "conversation.item.delete", "item_id": item_id})
    events += s.send({"type": "input_audio_buffer.clear"})
    events += s.send({"type": "input_audio_buffer.commit", "event_id": "c_2"})
    events += s.send("not json")
    events += s.send({"type": "response.cancel"})
    assert types(events).count("error") == 3
    return events


def mcp(family: Family) -> list[dict[str, Any]]:
    """GA: an MCP server's tools are listed, one is called, the model answers."""
    s = script(family)
    tool = {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.com/sse",
        "require_approval": "never",
    }
    failing = dict(tool, server_label="gone", server_url="https://mcp.gone.invalid")
    events = list(s.opening)
    events += s.send(update(family, {}, {"tools": [tool, failing]}))
    events += s.send(user_text("Please echo this."))
    events += s.send({"type": "response.create"})
    kinds = types(events)
    assert "mcp_list_tools.failed" in kinds
    assert "response.mcp_call.completed" in kinds
    return events


def image_input(family: Family) -> list[dict[str, Any]]:
    """GA: a user message with an image, echoed, then answered."""
    s = script(family)
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": PNG, "detail": "low"},
    ]
    item = {"type": "message", "role": "user", "content": content}
    events = list(s.opening)
    events += s.send({"type": "conversation.item.create", "item": item})
    events += s.send({"type": "response.create"})
    return events


def idle_timeout_and_reasoning(family: Family) -> list[dict[str, Any]]:
    """GA: gpt-realtime-2 settings, then an idle timeout prompts the user."""
    s = script(family)
    detection = {"type": "server_vad", "idle_timeout_ms": 5000}
    events = list(s.opening)
    events += s.send(
        update(
            family,
            {},
            {
                "reasoning": {"effort": "low"},
                "parallel_tool_calls": False,
                "audio": {"input": {"turn_detection": detection}},
            },
        )
    )
    events += s.send({"type": "response.create"})
    events += s.wait(7.0)
    assert "input_audio_buffer.timeout_triggered" in types(events)
    return events


BOTH = [
    voice_turn,
    tool_round_trip,
    cancel_and_barge_in,
    transcription,
    items_and_errors,
]
GA_ONLY = [mcp, image_input, idle_timeout_and_reasoning]


@pytest.mark.parametrize("family", list(Family))
@pytest.mark.parametrize("scripted", BOTH, ids=lambda f: f.__name__)
def test_both_families(
    family: Family, scripted: Callable[[Family], list[dict[str, Any]]]
) -> None:
    """The session's events validate against its family's SDK types."""
    check(family, scripted(family))


@pytest.mark.parametrize("scripted", GA_ONLY, ids=lambda f: f.__name__)
def test_ga_only(scripted: Callable[[Family], list[dict[str, Any]]]) -> None:
    """GA-only features validate against the GA SDK types."""
    check(Family.GA, scripted(Family.GA))


class TestTheCheckCanFail:
    """The validation is strict enough to catch what a wrong simulator would send."""

    @pytest.mark.parametrize("family", list(Family))
    def test_unknown_event_types_fail(self, family: Family) -> None:
        """An event type neither union knows does not validate."""
        with pytest.raises(AssertionError, match=re.escape("made.up")):
            check(family, [{"type": "made.up", "event_id": "event_1"}])

    @pytest.mark.parametrize(
        ("family", "event"),
        [
            # A GA name on a preview session.
            (Family.PREVIEW, {"type": "response.output_audio.done"}),
            # The preview name on a GA session is typed differently there.
            (Family.GA, {"type": "conversation.item.added"}),
            # A status the response object does not have.
            (Family.GA, {"type": "response.done", "response": {"status": "fine"}}),
            # A string where an integer belongs: strict mode does not coerce.
            (
                Family.PREVIEW,
                {"type": "input_audio_buffer.speech_started", "audio_start_ms": "1"},
            ),
        ],
    )
    def test_wrong_shapes_fail(self, family: Family, event: dict[str, Any]) -> None:
        """Missing fields, wrong literals and wrong types do not validate."""
        base = {
            "event_id": "event_1",
            "item_id": "item_1",
            "response_id": "resp_1",
            "output_index": 0,
            "content_index": 0,
        }
        with pytest.raises(AssertionError, match=re.escape(event["type"])):
            check(family, [{**base, **event}])

    def test_undeclared_fields_are_reported(self) -> None:
        """A field the SDK type lacks (and not a known extra) fails the check."""
        event = {
            "type": "input_audio_buffer.cleared",
            "event_id": "event_1",
            "surprise": 1,
        }
        with pytest.raises(AssertionError, match="surprise"):
            check(Family.GA, [event])
