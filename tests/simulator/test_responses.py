"""One response stream: chunking, lazy production, cancellation."""

from __future__ import annotations

from relay.simulator.audio import AudioFormat
from relay.simulator.conversation import Conversation
from relay.simulator.overrides import ResponseParams
from relay.simulator.responses import ResponseStream, canned_transcript
from relay.simulator.usage import RateLimits, TokenCounts
from relay.simulator.wire import EventFactory, Family, IdFactory


def stream(
    *, audio_output: bool = True, audio: bytes = bytes(48_000)
) -> tuple[ResponseStream, Conversation]:
    params = ResponseParams(
        audio_output=audio_output,
        voice="alloy",
        output_format=AudioFormat.PCM16,
        instructions="",
        out_of_band=False,
        metadata=None,
        max_output_tokens="inf",
        temperature=0.8,
        input=None,
    )
    conversation = Conversation("conv_1")
    response = ResponseStream(
        events=EventFactory(Family.PREVIEW, IdFactory()),
        params=params,
        conversation=conversation,
        input_tokens=TokenCounts(),
        transcript="one two three",
        audio=audio,
        rate_limits=RateLimits(),
    )
    return response, conversation


def test_canned_transcript_reports_seconds() -> None:
    """The answer says how much audio was heard, to a tenth of a second."""
    assert (
        canned_transcript(1249)
        == "This is the Realtime simulator. I heard 1.2 seconds of audio."
    )


def test_events_are_produced_lazily() -> None:
    """The item joins the conversation only when it is announced."""
    response, conversation = stream()
    first = response.next_event()
    assert first is not None
    assert first["type"] == "response.created"
    assert list(conversation) == []
    added = response.next_event()
    assert added is not None
    assert [entry.id for entry in conversation] == [added["item"]["id"]]


def test_short_audio_gets_fewer_transcript_deltas_than_words() -> None:
    """Words are spread over audio chunks; no empty transcript delta is sent."""
    response, _ = stream(audio=bytes(4800 * 2))  # 100 ms, then 100 ms of a 150 ms slot.
    events = []
    while (event := response.next_event()) is not None:
        events.append(event)
    deltas = [e for e in events if e["type"] == "response.audio_transcript.delta"]
    assert [d["delta"] for d in deltas] == ["one ", "two three"]
    assert [len(e["delta"]) for e in events if e["type"] == "response.audio.delta"] == [
        6400,
        6400,
    ]
    assert response.finished
    assert response.exhausted


def test_cancel_is_one_shot() -> None:
    """A second cancel, or a cancel after response.done, does nothing."""
    response, _ = stream()
    response.next_event()
    assert response.cancel("client_cancelled")
    assert not response.cancel("client_cancelled")
    done = [response.next_event() for _ in range(2)]
    assert [e["type"] for e in done if e] == ["response.done", "rate_limits.updated"]
    assert response.next_event() is None
    assert not response.cancel("client_cancelled")


def test_cancel_before_the_first_event_still_announces_the_response() -> None:
    """A response cancelled before anything was produced opens with response.created."""
    response, _ = stream()
    assert response.cancel("turn_detected")
    events = [response.next_event() for _ in range(3)]
    assert [e["type"] for e in events if e] == [
        "response.created",
        "response.done",
        "rate_limits.updated",
    ]
    created, done = events[0], events[1]
    assert created is not None
    assert done is not None
    assert created["response"]["status"] == "in_progress"
    assert done["response"]["status"] == "cancelled"
