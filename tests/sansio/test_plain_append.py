"""The append fast path reads exactly what the full parse reads, or stands aside."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from relay.sansio import wire
from relay.sansio.events import Started, UpstreamMessage
from relay.sansio.policy import Policy
from relay.sansio.session import RelaySession, State
from relay.sansio.wire import InvalidEvent, parse_event, plain_append


APPEND = "input_audio_buffer.append"


def open_session(policy: Policy | None = None) -> RelaySession:
    session = RelaySession(policy or Policy("test"), "ga")
    session.handle(Started(0.0))
    for kind in ("session.created", "session.updated"):
        event: dict[str, object] = {"type": kind, "event_id": "e", "session": {}}
        session.handle(UpstreamMessage(json.dumps(event), 0.0))
    assert session.state is State.OPEN
    return session


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        '{"audio": "AAAA", "type": "input_audio_buffer.append"}',  # the SDK's order
        '{"event_id":"evt_1","type":"input_audio_buffer.append","audio":""}',
        '{ "type" : "input_audio_buffer.append" ,\n\t"audio":"QUJD" }  \r\n',
    ],
)
def test_plain_appends_are_recognised(text: str) -> None:
    assert plain_append(text) == parse_event(text)["audio"]


@pytest.mark.parametrize(
    "text",
    [
        # Duplicates, in every place a parser could keep the first or the last.
        '{"type":"input_audio_buffer.append","audio":"A","audio":"B"}',
        '{"type":"input_audio_buffer.append","audio":"A","type":"session.update"}',
        '{"type":"session.update","type":"input_audio_buffer.append","audio":"A"}',
        '{"type":"input_audio_buffer.append","audio":5,"audio":"A"}',
        # Escapes anywhere: a key or value could mean something else.
        '{"type":"input_audio_buffer.append","au\\u0064io":"A"}',
        '{"type":"input_audio_buffer.append","audio":"A","au\\u0064io":"B"}',
        '{"type":"input_audio_buffer\\u002eappend","audio":"A"}',
        '{"type":"input_audio_buffer.append","audio":"A\\"B"}',
        # Other members, other types, other values.
        '{"type":"input_audio_buffer.append","audio":"A","session":{}}',
        '{"type":"input_audio_buffer.append","audio":null}',
        '{"type":"input_audio_buffer.append"}',
        '{"type":"input_audio_buffer.append","audio":"A","event_id":7}',
        '{"type":"response.create","audio":"A"}',
        # Not one JSON object.
        '{"type":"input_audio_buffer.append","audio":"A"} {}',
        '{"type":"input_audio_buffer.append","audio":"A"',
        ' {"type":"input_audio_buffer.append","audio":"A"}',
        '["input_audio_buffer.append"]',
        '{"type":"input_audio_buffer.append","audio":"A\x01"}',  # raw control character
        "",
    ],
)
def test_anything_else_takes_the_full_parse(text: str) -> None:
    assert plain_append(text) is None


_KEYS = st.sampled_from(["type", "audio", "event_id", "session", "au\\u0064io", "typ"])
_VALUES = st.one_of(
    st.just(f'"{APPEND}"'),
    st.just('"session.update"'),
    st.text(alphabet="AQZz09+/=", max_size=12).map(lambda v: f'"{v}"'),
    st.text(max_size=6).map(json.dumps),
    st.text(alphabet='"\\\x01ab', max_size=4).map(lambda v: f'"{v}"'),
    st.sampled_from(["5", "null", "true", "{}", "[]", "1e999", "NaN"]),
)
_SPACE = st.text(alphabet=" \t\n\r", max_size=2)


@st.composite
def near_appends(draw: st.DrawFn) -> str:
    """JSON-ish objects built from the append's parts, with every trap nearby."""
    members = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=4))
    space = draw(_SPACE)
    body = ",".join(
        f'{space}"{key}"{draw(_SPACE)}:{draw(_SPACE)}{value}' for key, value in members
    )
    return (
        draw(st.sampled_from(["{", " {", "{"]))
        + body
        + "}"
        + draw(st.sampled_from(["", " ", "\n", "}", " x", ","]))
    )


@settings(max_examples=1500)
@given(st.one_of(near_appends(), st.text(max_size=80)))
def test_the_fast_path_never_reads_differently(text: str) -> None:
    """Recognised means: the strict parse gives exactly type, audio (and event_id)."""
    audio = plain_append(text)
    if audio is None:
        return
    event = parse_event(text)
    assert event["type"] == APPEND
    assert event["audio"] == audio
    assert set(event) <= {"type", "audio", "event_id"}
    assert all(isinstance(value, str) for value in event.values())


@settings(max_examples=800)
@given(st.one_of(near_appends(), st.text(max_size=80)))
def test_the_session_answers_the_same_either_way(text: str) -> None:
    """Commands with the fast path equal those of the full parse, for any text."""
    fast, full = open_session(), open_session()
    assert fast._from_client(text, 1.0) == full._from_client_parsed(text, 1.0)


def test_a_policy_that_refuses_appends_sees_them_all() -> None:
    policy = Policy("no-appends", events_deny=frozenset({APPEND}))
    fast, full = open_session(policy), open_session(policy)
    text = json.dumps({"type": APPEND, "audio": "AAAA"})
    commands = fast._from_client(text, 1.0)
    assert commands == full._from_client_parsed(text, 1.0)
    assert "policy_violation" in str(commands)


def test_invalid_documents_still_get_their_error() -> None:
    with pytest.raises(InvalidEvent):
        parse_event('{"type":"input_audio_buffer.append","audio":"A","audio":"B"}')


@pytest.mark.parametrize("member", ['"audio":', '"type":"x","audio":', '"x":'])
def test_deep_nesting_is_a_full_parse_that_refuses_it(member: str) -> None:
    """Nested arrays in an append-looking event: refused, no RecursionError escapes."""
    for levels, reason in [(1000, "nested too deeply"), (100_000, "too many values")]:
        text = "{" + member + "[" * levels + "]" * levels + "}"
        assert plain_append(text) is None
        with pytest.raises(InvalidEvent, match=reason):
            parse_event(text)


class _NoParse:
    def raw_decode(self, text: str) -> object:
        raise AssertionError("parsed")


@pytest.mark.parametrize(
    "tail",
    [
        ',"x":[' + ",".join(["0"] * 100_000) + "]",
        ',"x":{}',
        "".join(f',"k{n}":0' for n in range(5)),
    ],
    ids=["array", "object", "many-members"],
)
def test_large_lookalikes_are_refused_before_parsing(
    tail: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array, an object or more than 6 members: not plain, whatever the size, unparsed."""
    monkeypatch.setattr(wire, "_DECODER", _NoParse())
    assert (
        plain_append('{"type":"input_audio_buffer.append","audio":"A"' + tail + "}")
        is None
    )
