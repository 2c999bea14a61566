"""Hypothesis: whatever clients send, the session answers with well-formed events."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from relay.simulator import Family, IdFactory, SimSession
from relay.simulator.audio import speech_like_pcm16
from tests.simulator.helpers import NOW, b64


CLIENT_TYPES = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
]

# 100 ms chunks of one utterance, so appends can trigger the VAD.
_SPEECH = speech_like_pcm16(0.6, trailing_silence=0.4)
SPEECH_CHUNKS = [_SPEECH[i : i + 4800] for i in range(0, len(_SPEECH), 4800)]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


turn_detection = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["server_vad", "semantic_vad"]),
        "silence_duration_ms": st.integers(0, 600),
        "create_response": st.booleans(),
        "interrupt_response": st.booleans(),
    },
)
preview_session = st.fixed_dictionaries(
    {},
    optional={
        "voice": st.sampled_from(["alloy", "verse"]),
        "modalities": st.sampled_from([["text"], ["text", "audio"]]),
        "turn_detection": turn_detection,
        "input_audio_transcription": st.none() | st.just({"model": "whisper-1"}),
        "output_audio_format": st.sampled_from(["pcm16", "g711_alaw"]),
    },
)
ga_session = st.fixed_dictionaries(
    {"type": st.just("realtime")},
    optional={
        "output_modalities": st.sampled_from([["text"], ["audio"]]),
        "audio": st.fixed_dictionaries(
            {},
            optional={
                "input": st.fixed_dictionaries(
                    {}, optional={"turn_detection": turn_detection}
                )
            },
        ),
    },
)
user_item = st.fixed_dictionaries(
    {
        "type": st.just("message"),
        "role": st.just("user"),
        "content": st.just([{"type": "input_text", "text": "hello"}]),
    },
    optional={"id": st.sampled_from(["item_a", "item_b"])},
)
item_ids = st.sampled_from(["item_a", "item_b"])
# Events a real client could send: they reach deep into the engine.
plausible = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("session.update"), "session": preview_session | ga_session}
    ),
    st.fixed_dictionaries({"type": st.just("input_audio_buffer.commit")}),
    st.fixed_dictionaries({"type": st.just("input_audio_buffer.clear")}),
    st.fixed_dictionaries(
        {"type": st.just("conversation.item.create"), "item": user_item},
        optional={"previous_item_id": st.sampled_from(["root", "item_a"])},
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                ["conversation.item.retrieve", "conversation.item.delete"]
            ),
            "item_id": item_ids,
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("conversation.item.truncate"),
            "item_id": item_ids,
            "content_index": st.integers(0, 1),
            "audio_end_ms": st.integers(0, 1500),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("response.create")},
        optional={
            "response": st.fixed_dictionaries(
                {},
                optional={
                    "conversation": st.sampled_from(["auto", "none"]),
                    "instructions": st.text(max_size=8),
                },
            )
        },
    ),
    st.fixed_dictionaries({"type": st.just("response.cancel")}),
)
# Anything shaped like an event, with arbitrary members.
garbage = st.fixed_dictionaries(
    {"type": st.sampled_from(CLIENT_TYPES) | st.text(max_size=12)},
    optional={
        "event_id": json_values,
        "session": json_values,
        "audio": json_values,
        "item": json_values,
        "item_id": json_values,
        "response": json_values,
    },
)
append = st.sampled_from(SPEECH_CHUNKS).map(
    lambda chunk: json.dumps({"type": "input_audio_buffer.append", "audio": b64(chunk)})
)
frame = st.one_of(
    plausible.map(json.dumps),
    plausible.map(json.dumps),
    append,
    append,
    append,
    garbage.map(json.dumps),
    st.text(max_size=40),
    st.binary(max_size=16),
)


def check(events: list[dict[str, Any]], seen: set[str]) -> None:
    """Every event is serialisable, typed, and carries a fresh event_… id."""
    for server_event in events:
        json.dumps(server_event, allow_nan=False)
        assert isinstance(server_event["type"], str)
        event_id = server_event["event_id"]
        assert isinstance(event_id, str)
        assert event_id.startswith("event_")
        assert event_id not in seen
        seen.add(event_id)
        if server_event["type"] == "error":
            error = server_event["error"]
            assert isinstance(error["code"], str)
            assert isinstance(error["message"], str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(list(Family)),
    actions=st.lists(st.tuples(frame, st.integers(0, 8)), max_size=40),
)
def test_any_client_input_yields_well_formed_events(
    family: Family, actions: list[tuple[str | bytes, int]]
) -> None:
    """The engine never raises and every server event is well formed."""
    simulated = SimSession(family, "dep", now=NOW, ids=IdFactory(1))
    seen: set[str] = set()
    check(simulated.open(), seen)
    responses: dict[str, list[str]] = {}
    produced: list[dict[str, Any]] = []
    for data, drain in actions:
        if isinstance(data, bytes):
            answers = simulated.receive_bytes(data, NOW)
        else:
            answers = simulated.receive(data, NOW)
        produced += answers
        for _ in range(drain):  # Interleave partially drained responses with new input.
            pending = simulated.next_response_event()
            if pending is not None:
                produced.append(pending)
    for _ in range(10_000):
        pending = simulated.next_response_event()
        if pending is None:
            break
        produced.append(pending)
    check(produced, seen)
    assert not simulated.response_active
    for server_event in produced:
        if server_event["type"] in ("response.created", "response.done"):
            responses.setdefault(server_event["response"]["id"], []).append(
                server_event["type"]
            )
    assert all(
        kinds == ["response.created", "response.done"] for kinds in responses.values()
    )
