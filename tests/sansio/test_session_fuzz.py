"""No client input ends a session: any text or bytes get an answer or go upstream.

Every client frame, however malformed, is either forwarded upstream or refused
with an ``error`` event (``invalid_event`` or ``policy_violation``); the
session stays open, nothing raises, and everything the session asks the edge
to send is text the edge can encode (a lone surrogate would make it crash,
and a crash is a close 1011 for the client).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from relay.config import load_settings
from relay.sansio.commands import Applied, Metered, Send
from relay.sansio.events import Started, UpstreamMessage
from relay.sansio.policy import EMPTY_POLICY, Policy
from relay.sansio.session import RelaySession, State
from relay.typing import Family
from tests.helpers.events import tool


DEV_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "dev.yaml"
DEV_POLICY = load_settings(DEV_CONFIG, {"AZURE_OPENAI_API_KEY": "x"}).clients[0].policy
"""The policy ``make run`` serves (examples/dev.yaml)."""

STRICT = Policy(
    "strict",
    set={"input_audio_noise_reduction": {"type": "near_field"}},
    default={"voice": "alloy"},
    allow={"voice": frozenset({"alloy", "verse"})},
    deny=frozenset({"tools"}),
    hide=frozenset({"instructions"}),
    events_deny=frozenset({"conversation.item.delete"}),
    on_violation="strip",
)
POLICIES = {
    "empty": EMPTY_POLICY,
    "dev": DEV_POLICY,
    "strict": STRICT,
    "strict-refusing": replace(STRICT, on_violation="refuse"),
}

AUDIO = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="
VALID: list[dict[str, object]] = [
    {"type": "input_audio_buffer.append", "audio": AUDIO},
    {"type": "input_audio_buffer.append", "audio": AUDIO, "event_id": "evt_1"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear", "event_id": "evt_2"},
    {
        "type": "response.create",
        "response": {"modalities": ["text"], "instructions": "hi"},
    },
    {
        "type": "response.create",
        "response": {"output_modalities": ["audio"], "max_output_tokens": 99},
    },
    {"type": "response.cancel"},
    {
        "type": "session.update",
        "session": {
            "voice": "verse",
            "instructions": "be brief",
            "turn_detection": {"type": "server_vad", "threshold": 0.5},
            "max_response_output_tokens": 4096,
            "tools": [tool(0)],
        },
    },
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"output": {"voice": "marin"}, "input": {"noise_reduction": None}},
            "max_output_tokens": "inf",
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hello"},
                {
                    "type": "input_image",
                    "image_url": "data:image/png;base64,iVBORw0KGgo=",
                },
            ],
        },
    },
    {
        "type": "conversation.item.truncate",
        "item_id": "i",
        "content_index": 0,
        "audio_end_ms": 10,
    },
    {"type": "conversation.item.delete", "item_id": "i"},
    {
        "type": "transcription_session.update",
        "session": {"input_audio_transcription": {"model": "x"}},
    },
]
SOURCES = [json.dumps(event) for event in VALID] + [
    json.dumps(event, separators=(",", ":")) for event in VALID
]

# JSON escapes a decoded frame can hold: lone and paired surrogates, controls.
_ESCAPES = [
    "\\ud800",
    "\\udfff",
    "\\ud83d\\ude00",
    "\\u0000",
    '\\"',
    "\\\\",
    "\\/",
    "\\x",
]
_GARBAGE = st.one_of(
    st.sampled_from(
        [
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            '"',
            "\\",
            "1e999",
            "-1e400",
            "9" * 400,
            "1" * 5000,
            "NaN",
            "-Infinity",
            "null",
            '"type":"x",',
            '"type":',
            '"audio":"A",',
            '"session":{},',
            "[" * 3000,
            "[" * 60 + "]" * 60,
            "\x00",
            *_ESCAPES,
        ]
    ),
    st.text(max_size=8),
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid event with a few insertions, deletions and replacements."""
    text = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(_GARBAGE) + text[at + cut :]
    return text


@st.composite
def duplicated(draw: st.DrawFn) -> str:
    """A valid event with one of its members repeated, with another value."""
    event = draw(st.sampled_from(VALID))
    key = draw(st.sampled_from(sorted(event)))
    other = draw(st.sampled_from(['"session.update"', '"x"', "1", "{}", "null"]))
    text = json.dumps(event)
    return text[:-1] + f', "{key}": {other}' + "}"


def deep(levels: int) -> str:
    return '{"type":"session.update","session":' + "[" * levels + "]" * levels + "}"


_frames = st.one_of(
    mutated(),
    duplicated(),
    st.integers(0, 3000).map(deep),
    st.sampled_from(_ESCAPES).map(
        lambda escape: (
            '{"type":"session.update","session":{"instructions":"a' + escape + '"}}'
        )
    ),
    st.sampled_from(_ESCAPES).map(
        lambda escape: '{"type":"x' + escape + '","voice":"' + escape + '"}'
    ),
    st.text(),
    st.binary(max_size=64).map(lambda data: data.decode("utf-8", "replace")),
    st.binary(max_size=64),
    st.sampled_from(SOURCES),
)


def open_session(policy: Policy, family: Family) -> RelaySession:
    session = RelaySession(policy, family)
    session.handle(Started(0.0))
    for kind in ("session.created", "session.updated"):
        event = {"type": kind, "event_id": "e", "session": {"instructions": "secret"}}
        session.handle(UpstreamMessage(json.dumps(event), 0.0))
    assert session.state is State.OPEN
    return session


@pytest.mark.parametrize("family", ["ga", "preview"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
@settings(max_examples=250, deadline=2000)
@given(st.lists(_frames, min_size=1, max_size=4))
def test_client_frames_never_end_the_session(
    family: Family, policy: str, frames: list[str | bytes]
) -> None:
    """Each frame is forwarded or refused with invalid_event/policy_violation; nothing else."""
    session = open_session(POLICIES[policy], family)
    for now, frame in enumerate(frames, start=1):
        commands = session.client_message(frame, float(now))
        assert session.state is State.OPEN
        sends = [command for command in commands if isinstance(command, Send)]
        assert len(sends) == 1, commands
        assert all(isinstance(c, Send | Applied | Metered) for c in commands), commands
        (send,) = sends
        if isinstance(send.data, str):
            send.data.encode("utf-8")  # what the edge does with it
        if send.side == "client":
            answer = json.loads(send.data)
            assert answer["type"] == "error"
            assert answer["error"]["code"] in ("invalid_event", "policy_violation")
        else:
            # Upstream gets the frame as received, or what the policy made of it.
            assert send.data == frame or isinstance(json.loads(send.data), dict)
