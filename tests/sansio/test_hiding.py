"""Hiding: a policy's hidden fields blanked in the upstream's session events."""

from __future__ import annotations

import json

import pytest

from relay.sansio.hiding import Hiding
from relay.typing import Family


HIDDEN = frozenset({"instructions", "tools"})


@pytest.mark.parametrize("family", ["preview", "ga"])
def test_session_events_show_hidden_fields_empty(family: Family) -> None:
    """Instructions and tools read as empty; the rest of the session is as stated."""
    session = {"instructions": "Org secret.", "tools": [{"type": "function"}]}
    if family == "ga":
        session["type"] = "realtime"
    frame = json.dumps({"type": "session.updated", "session": session})
    shown = Hiding(HIDDEN, family).frame(frame)
    assert shown is not None
    assert json.loads(shown)["session"] == {**session, "instructions": "", "tools": []}


def test_a_field_the_client_set_is_shown_as_stated() -> None:
    """Once the client sets a hidden field itself, it sees its own value."""
    hiding = Hiding(HIDDEN, "preview")
    hiding.client_set(frozenset({"instructions"}))
    assert hiding.hidden == frozenset({"tools"})
    frame = json.dumps(
        {"type": "session.created", "session": {"instructions": "Mine.", "tools": [1]}}
    )
    shown = hiding.frame(frame)
    assert shown is not None
    assert json.loads(shown)["session"] == {"instructions": "Mine.", "tools": []}


def test_setting_no_hidden_field_changes_nothing() -> None:
    """A session.update that set none of the hidden fields leaves them hidden."""
    hiding = Hiding(HIDDEN, "ga")
    hiding.client_set(frozenset())
    assert hiding.hidden == HIDDEN


def test_frames_naming_no_session_event_are_not_parsed() -> None:
    """Audio deltas and the like pass as they came, even when they are not JSON."""
    for frame in ('{"type":"response.output_audio.delta","delta":"AAAA"}', "{oops"):
        assert Hiding(HIDDEN, "ga").frame(frame) is frame


def test_an_unreadable_session_event_is_withheld() -> None:
    """It could hold what is hidden: the caller sends an explanation instead."""
    assert (
        Hiding(HIDDEN, "preview").frame('{"type":"session.updated","session":{') is None
    )


def test_other_events_naming_a_session_event_pass_untouched() -> None:
    """A transcript that says "session.updated" is parsed, then passed as it came."""
    frame = json.dumps(
        {
            "type": "response.output_text.delta",
            "delta": "the session.updated event, with instructions: x",
        }
    )
    assert Hiding(HIDDEN, "ga").frame(frame) is frame


@pytest.mark.parametrize("session", [None, "x", [1]])
def test_a_session_event_without_a_session_object_is_passed_as_is(
    session: object,
) -> None:
    """There is nothing to blank: the frame goes on unchanged, not rewritten."""
    hiding = Hiding(HIDDEN, "preview")
    event = {"type": "session.updated", "session": session}
    assert not hiding.hide(event)
    assert event == {"type": "session.updated", "session": session}
    frame = json.dumps(event)
    assert hiding.frame(frame) is frame
