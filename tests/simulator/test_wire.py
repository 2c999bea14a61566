"""Event names per family, ids and error events."""

from __future__ import annotations

import pytest

from relay.simulator.wire import (
    EventFactory,
    Family,
    IdFactory,
    error_event,
    event_type,
)


@pytest.mark.parametrize(
    ("preview", "ga"),
    [
        ("response.text.delta", "response.output_text.delta"),
        ("response.text.done", "response.output_text.done"),
        ("response.audio.delta", "response.output_audio.delta"),
        ("response.audio.done", "response.output_audio.done"),
        ("response.audio_transcript.delta", "response.output_audio_transcript.delta"),
        ("response.audio_transcript.done", "response.output_audio_transcript.done"),
        ("conversation.item.created", "conversation.item.added"),
        ("response.done", "response.done"),
    ],
)
def test_ga_renames(preview: str, ga: str) -> None:
    """protocol.md §4.2's rename table; preview names pass through unchanged."""
    assert event_type(Family.GA, preview) == ga
    assert event_type(Family.PREVIEW, preview) == preview


def test_ids_look_like_azure_ids_and_are_deterministic() -> None:
    """prefix_ + 21 base62 characters, the same sequence for the same seed."""
    first, second = IdFactory(3), IdFactory(3)
    ids = [first("event") for _ in range(100)]
    assert ids == [second("event") for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(len(i) == len("event_") + 21 and i[6:].isalnum() for i in ids)
    assert IdFactory(4)("event") != IdFactory(3)("event")


def test_error_event_shape() -> None:
    """The error object carries type, code, message, param and the client's event_id."""
    assert error_event(
        "event_1", code="c", message="m", param="p", client_event_id="c_1"
    ) == {
        "type": "error",
        "event_id": "event_1",
        "error": {
            "type": "invalid_request_error",
            "code": "c",
            "message": "m",
            "param": "p",
            "event_id": "c_1",
        },
    }


def test_event_factory_names_and_numbers_events() -> None:
    """Events get the family's name and a fresh id each."""
    events = EventFactory(Family.GA, IdFactory())
    first = events("response.audio.delta", delta="")
    assert first["type"] == "response.output_audio.delta"
    assert first["event_id"] != events("response.audio.delta")["event_id"]
    assert events.error("x", "y")["error"]["param"] is None
