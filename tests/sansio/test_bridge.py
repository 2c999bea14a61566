"""The protocol bridge: preview client events to GA, GA server events to preview."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings, strategies as st

from relay.sansio.bridge import RENAMED_EVENTS, Bridge, Renamed, preview_param
from relay.sansio.wire import dump
from relay.simulator.schema import default_session
from relay.simulator.wire import Family


PREVIEW_SESSION: dict[str, Any] = {
    "modalities": ["text", "audio"],
    "voice": "alloy",
    "instructions": "Be brief.",
    "input_audio_format": "pcm16",
    "output_audio_format": "g711_ulaw",
    "input_audio_noise_reduction": {"type": "near_field"},
    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
    "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
    "tools": [{"type": "function", "name": "f", "parameters": {}}],
    "tool_choice": "auto",
    "temperature": 0.7,
    "max_response_output_tokens": 512,
    "speed": 1.2,
}


def to_ga(event: dict[str, Any], bridge: Bridge | None = None) -> dict[str, Any]:
    bridge = bridge or Bridge()
    bridge.client_event(event)
    return event


def text_of(data: str, bridge: Bridge | None = None) -> str | None:
    """The text the client is shown for ``data`` (``None``: nothing)."""
    out = (bridge or Bridge()).upstream_frame(data)
    if isinstance(out, Renamed):
        return out.apply(data)
    assert out is None or isinstance(out, str)
    return out


def shown(data: str, bridge: Bridge | None = None) -> dict[str, Any] | None:
    out = text_of(data, bridge)
    return None if out is None else json.loads(out)


# Client to upstream


def test_a_preview_session_update_becomes_the_nested_ga_session() -> None:
    bridge = Bridge()
    event = to_ga({"type": "session.update", "session": dict(PREVIEW_SESSION)}, bridge)
    assert event["session"] == {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "tool_choice": "auto",
        "max_output_tokens": 512,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
            },
            "output": {
                "voice": "alloy",
                "format": {"type": "audio/pcmu"},
                "speed": 1.2,
            },
        },
    }
    assert bridge.temperature == 0.7  # GA has none: kept to show it back


def test_the_session_a_client_set_comes_back_in_its_own_shape() -> None:
    bridge = Bridge()
    event = to_ga({"type": "session.update", "session": dict(PREVIEW_SESSION)}, bridge)
    ga = event["session"] | {"id": "sess_1", "object": "realtime.session"}
    back = bridge.session_from_ga(ga)
    assert back == PREVIEW_SESSION | {"id": "sess_1", "object": "realtime.session"}


def test_text_only_and_audio_modalities() -> None:
    for preview, ga in (
        (["text"], ["text"]),
        (["audio", "text"], ["audio"]),
        (["audio"], ["audio"]),
    ):
        event = to_ga({"type": "session.update", "session": {"modalities": preview}})
        assert event["session"]["output_modalities"] == ga


def test_unreadable_values_reach_the_upstream_unchanged_for_it_to_refuse() -> None:
    session = {
        "modalities": ["text", 5],
        "input_audio_format": "mp3",
        "turn_detection": "x",
    }
    event = to_ga({"type": "session.update", "session": session})
    assert event["session"] == {
        "type": "realtime",
        "output_modalities": ["text", 5],
        "audio": {"input": {"format": "mp3", "turn_detection": "x"}},
    }
    # Not an object at all: left for the upstream (and the policy) to refuse.
    event = {"type": "session.update", "session": [1]}
    assert Bridge().client_event(event) is False
    assert event == {"type": "session.update", "session": [1]}


def test_keys_preview_lacks_pass_so_a_client_may_opt_into_ga_settings() -> None:
    session = {
        "truncation": "disabled",
        "model": "m",
        "voice": "verse",
        "audio": {"output": {"speed": 1.1}},
    }
    event = to_ga({"type": "session.update", "session": session})
    assert event["session"] == {
        "type": "realtime",
        "truncation": "disabled",
        "model": "m",
        "audio": {"output": {"speed": 1.1, "voice": "verse"}},
    }


def test_rtclient_turn_detection_none_is_ga_null() -> None:
    event = to_ga(
        {"type": "session.update", "session": {"turn_detection": {"type": "none"}}}
    )
    assert event["session"]["audio"] == {"input": {"turn_detection": None}}


def test_a_named_tool_choice_in_azure_preview_shape_is_flat_in_ga_and_comes_back_nested() -> (
    None
):
    bridge = Bridge()
    choice = {"type": "function", "function": {"name": "lookup"}}
    event = to_ga(
        {"type": "session.update", "session": {"tool_choice": choice}}, bridge
    )
    assert event["session"]["tool_choice"] == {"type": "function", "name": "lookup"}
    back = bridge.session_from_ga(
        {"tool_choice": {"type": "function", "name": "lookup"}}
    )
    assert back["tool_choice"] == choice
    # A client that names tools flat (OpenAI's beta shape) gets them flat.
    flat = Bridge()
    to_ga(
        {
            "type": "session.update",
            "session": {"tool_choice": {"type": "function", "name": "x"}},
        },
        flat,
    )
    assert flat.session_from_ga({"tool_choice": {"type": "function", "name": "x"}})[
        "tool_choice"
    ] == {"type": "function", "name": "x"}


def test_response_create_overrides_are_renamed_and_temperature_dropped() -> None:
    event = to_ga(
        {
            "type": "response.create",
            "event_id": "c1",
            "response": {
                "modalities": ["text"],
                "voice": "echo",
                "output_audio_format": "g711_alaw",
                "max_response_output_tokens": "inf",
                "temperature": 1.0,
                "instructions": "Classify.",
                "conversation": "none",
                "metadata": {"topic": "x"},
                "input": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "text", "text": "Hi"}],
                    }
                ],
            },
        }
    )
    assert event == {
        "type": "response.create",
        "event_id": "c1",
        "response": {
            "instructions": "Classify.",
            "conversation": "none",
            "metadata": {"topic": "x"},
            "input": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi"}],
                }
            ],
            "output_modalities": ["text"],
            "audio": {"output": {"voice": "echo", "format": {"type": "audio/pcma"}}},
            "max_output_tokens": "inf",
        },
    }


def test_an_assistant_item_says_output_text_in_ga() -> None:
    item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "ok"}],
    }
    event = to_ga({"type": "conversation.item.create", "item": item})
    assert event["item"]["content"] == [{"type": "output_text", "text": "ok"}]
    user = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    event = to_ga({"type": "conversation.item.create", "item": user})
    assert event["item"]["content"] == [{"type": "input_text", "text": "hi"}]


def test_events_the_same_in_both_protocols_are_not_touched() -> None:
    for event in (
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.commit"},
        {"type": "response.cancel"},
        {
            "type": "conversation.item.truncate",
            "item_id": "i",
            "content_index": 0,
            "audio_end_ms": 5,
        },
        {"type": "transcription_session.update", "session": {}},
        {"type": "response.create"},
    ):
        before = json.loads(json.dumps(event))
        assert Bridge().client_event(event) is False
        assert event == before


# Upstream to client


def test_renamed_events_are_renamed_in_the_text_without_touching_the_rest() -> None:
    for ga, preview in RENAMED_EVENTS.items():
        data = '{"type":"' + ga + '","event_id":"e","delta":"AAEC/w=="}'
        renamed = Bridge().upstream_frame(data)
        assert isinstance(renamed, Renamed)
        assert renamed.apply(data) == data.replace(ga, preview, 1)
        # The beginning changes, ASCII both: what the driver edits in the frame.
        assert data[: renamed.cut] == '{"type":"' + ga + '"'
        assert renamed.head == '{"type":"' + preview + '"'
        assert renamed.head.isascii()
    # Another member order: parsed, and renamed all the same.
    data = '{"event_id":"e","type":"response.output_audio.delta","delta":"AA=="}'
    assert shown(data) == {
        "event_id": "e",
        "type": "response.audio.delta",
        "delta": "AA==",
    }


def test_events_the_same_in_both_protocols_pass_as_the_same_text() -> None:
    for data in (
        '{"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1}',
        '{"type":"rate_limits.updated","rate_limits":[]}',
        '{"event_id":"e","type":"conversation.item.deleted","item_id":"i"}',
        '{"type":"some.future.event","x":1}',
        "not json",
        "[]",
    ):
        assert Bridge().upstream_frame(data) is data
    assert Bridge().upstream_frame(b"\x00") == b"\x00"


def test_the_ga_default_session_is_shown_as_the_preview_default() -> None:
    ga = default_session(Family.GA, session_id="s", model="m", expires_at=9)
    preview = default_session(Family.PREVIEW, session_id="s", model="m", expires_at=9)
    got = shown(dump({"type": "session.created", "event_id": "e", "session": ga}))
    assert got is not None
    # What Azure's preview sample has and GA cannot say (no client secret).
    del preview["client_secret"]
    assert got["session"] == preview | {"tracing": None, "speed": 1.0}


def test_ga_only_session_parts_are_left_out() -> None:
    session = {
        "type": "realtime",
        "tools": [
            {"type": "function", "name": "f"},
            {"type": "mcp", "server_label": "docs", "server_url": "https://x"},
        ],
        "tool_choice": "required",
        "truncation": "auto",
        "prompt": None,
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": True,
        "audio": {
            "input": {
                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}
            },
            "output": {"voice": "marin"},
        },
    }
    got = Bridge().session_from_ga(session)
    assert got == {
        "tools": [{"type": "function", "name": "f"}],
        "tool_choice": "required",
        "turn_detection": {"type": "server_vad"},
        "voice": "marin",
        "temperature": 0.8,
    }


def test_items_are_created_not_added_and_their_done_is_dropped() -> None:
    item = {
        "id": "item_1",
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_audio", "transcript": "hi"}],
    }
    added = {
        "type": "conversation.item.added",
        "event_id": "e",
        "previous_item_id": None,
        "item": item,
    }
    got = shown(dump(added))
    assert got == added | {
        "type": "conversation.item.created",
        "item": item | {"content": [{"type": "audio", "transcript": "hi"}]},
    }
    assert (
        shown(dump({"type": "conversation.item.done", "event_id": "e", "item": item}))
        is None
    )
    for kind in (
        "response.output_item.added",
        "response.output_item.done",
        "conversation.item.retrieved",
    ):
        got = shown(dump({"type": kind, "item": item}))
        assert got is not None
        assert got["item"]["content"] == [{"type": "audio", "transcript": "hi"}]


def test_content_parts_and_function_call_arguments() -> None:
    part = shown(
        dump(
            {
                "type": "response.content_part.added",
                "part": {"type": "output_text", "text": ""},
            }
        )
    )
    assert part is not None
    assert part["part"] == {"type": "text", "text": ""}
    done = {
        "type": "response.function_call_arguments.done",
        "call_id": "c",
        "name": "f",
        "arguments": "{}",
    }
    got = shown(dump(done))
    assert got == {
        "type": "response.function_call_arguments.done",
        "call_id": "c",
        "arguments": "{}",
    }


def test_a_response_says_modalities_voice_and_format() -> None:
    bridge = Bridge()
    to_ga({"type": "session.update", "session": {"temperature": 1.1}}, bridge)
    response = {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "x"}]}
        ],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "audio": {
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage"}
        },
        "max_output_tokens": "inf",
        "usage": None,
    }
    got = shown(dump({"type": "response.done", "response": response}), bridge)
    assert got is not None
    assert got["response"] == {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "text", "text": "x"}]}],
        "conversation_id": "conv_1",
        "max_output_tokens": "inf",
        "usage": None,
        "modalities": ["text", "audio"],
        "voice": "sage",
        "output_audio_format": "pcm16",
        "temperature": 1.1,
    }


def test_errors_name_the_preview_parameter() -> None:
    assert preview_param("session.audio.output.voice") == "session.voice"
    assert preview_param("session.audio.input.turn_detection.threshold") == (
        "session.turn_detection.threshold"
    )
    assert preview_param("session.output_modalities") == "session.modalities"
    assert (
        preview_param("session.max_output_tokens")
        == "session.max_response_output_tokens"
    )
    assert (
        preview_param("response.audio.output.format") == "response.output_audio_format"
    )
    assert preview_param("session.audio.output.speed") == "session.speed"
    assert preview_param("session.type") == "session.type"
    assert preview_param("item") == "item"
    assert preview_param(None) is None
    error = {
        "type": "error",
        "error": {"code": "invalid_value", "param": "session.audio.output.voice"},
    }
    got = shown(dump(error))
    assert got is not None
    assert got["error"]["param"] == "session.voice"
    plain = dump({"type": "error", "error": {"code": "x", "param": None}})
    assert Bridge().upstream_frame(plain) is plain


# Any input


JSONS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        *PREVIEW_SESSION,
        "type",
        "audio",
        "input",
        "item",
        "content",
        "response",
        "session",
        "function",
        "name",
    ]
)
OBJECTS = st.dictionaries(KEYS | st.text(max_size=6), JSONS, max_size=6)
TYPES = st.sampled_from(
    [
        "session.update",
        "response.create",
        "conversation.item.create",
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.done",
        "response.done",
        "response.output_item.added",
        "response.content_part.done",
        "response.function_call_arguments.done",
        "error",
        *RENAMED_EVENTS,
        "input_audio_buffer.append",
    ]
)


@settings(max_examples=300, deadline=None)
@given(TYPES, st.dictionaries(KEYS, JSONS | OBJECTS, max_size=5))
def test_any_client_event_translates_to_json_without_failing(
    kind: str, body: dict[str, Any]
) -> None:
    event = body | {"type": kind}
    Bridge().client_event(event)
    dump(event)  # still JSON


@settings(max_examples=300, deadline=None)
@given(TYPES, st.dictionaries(KEYS, JSONS | OBJECTS, max_size=5))
def test_any_upstream_event_translates_to_json_without_failing(
    kind: str, body: dict[str, Any]
) -> None:
    for event in ({"type": kind} | body, body | {"type": kind}):
        out = text_of(dump(event))
        if out is not None:
            assert isinstance(json.loads(out), dict)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=64) | st.binary(max_size=16))
def test_any_upstream_frame_is_answered(data: str | bytes) -> None:
    Bridge().upstream_frame(data)
    Bridge().upstream_frame('{"type":"' + data if isinstance(data, str) else data)


def test_odd_shapes_pass_as_they_are() -> None:
    """What is not the documented shape is left for the upstream (or client) to judge."""
    for item in (
        "x",
        {"content": "x"},
        {"content": ["x", {"type": 5}, {"type": "text"}]},
    ):
        event = to_ga({"type": "conversation.item.create", "item": item})
        assert event["item"] == (
            {"content": ["x", {"type": 5}, {"type": "output_text"}]}
            if isinstance(item, dict) and isinstance(item["content"], list)
            else item
        )
    # A named choice with more than a name: not Azure's preview shape.
    choice = {"type": "function", "function": {"name": "f", "strict": True}}
    event = to_ga({"type": "session.update", "session": {"tool_choice": choice}})
    assert event["session"]["tool_choice"] == choice
    for item in ("x", {"content": "x"}, {"content": ["x", {"type": "output_text"}]}):
        got = shown(dump({"type": "response.output_item.done", "item": item}))
        assert got is not None
        assert got["item"] == (
            {"content": ["x", {"type": "text"}]}
            if isinstance(item, dict) and isinstance(item["content"], list)
            else item
        )
    response = {"temperature": 1.0, "output": "x"}
    got = shown(dump({"type": "response.created", "response": response}))
    assert got is not None
    assert got["response"] == response
    for body in ({"response": 5}, {"session": 5}):
        kind = "response.done" if "response" in body else "session.updated"
        got = shown(dump({"type": kind, **body}))
        assert got == {"type": kind, **body}


def test_an_error_is_only_rewritten_where_it_names_a_renamed_parameter() -> None:
    for error in (
        {"code": "x", "param": "session.type", "message": "m"},
        {"code": "x", "message": "no param"},
        "x",
    ):
        plain = dump({"type": "error", "error": error})
        assert Bridge().upstream_frame(plain) is plain
    got = shown(
        dump(
            {
                "type": "error",
                "error": {"param": "session.output_modalities", "message": None},
            }
        )
    )
    assert got == {
        "type": "error",
        "error": {"param": "session.modalities", "message": None},
    }


def test_a_content_part_of_another_type_is_unchanged() -> None:
    for part in ({"type": "input_audio"}, {"type": 5}, "x"):
        got = shown(dump({"type": "response.content_part.done", "part": part}))
        assert got is not None
        assert got["part"] == part
