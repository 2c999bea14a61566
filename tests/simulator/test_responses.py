"""One response stream: output items, chunking, lazy production, cancellation."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from relay.simulator.audio import AudioFormat
from relay.simulator.conversation import Conversation
from relay.simulator.overrides import ResponseParams
from relay.simulator.responses import Answer, Planned, ResponseStream
from relay.simulator.tools import FunctionCall, McpCall
from relay.simulator.usage import RateLimits, TokenCounts
from relay.simulator.wire import EventFactory, Family, IdFactory


def stream(
    plan: Sequence[Planned] = (Answer("one two three", bytes(48_000)),),
    *,
    audio_output: bool = True,
    family: Family = Family.PREVIEW,
    max_output_tokens: int | str = "inf",
) -> tuple[ResponseStream, Conversation]:
    params = ResponseParams(
        audio_output=audio_output,
        voice="alloy",
        output_format=AudioFormat.PCM16,
        instructions="",
        out_of_band=False,
        metadata=None,
        max_output_tokens=max_output_tokens,
        temperature=0.8,
        input=None,
    )
    conversation = Conversation("conv_1")
    response = ResponseStream(
        events=EventFactory(family, IdFactory()),
        params=params,
        conversation=conversation,
        input_tokens=TokenCounts(text=10),
        plan=plan,
        rate_limits=RateLimits(),
    )
    return response, conversation


def drain(response: ResponseStream) -> list[dict[str, Any]]:
    events = []
    while (event := response.next_event()) is not None:
        events.append(event)
    return events


def test_events_are_produced_lazily() -> None:
    """The item joins the conversation only when it is announced."""
    response, conversation = stream()
    first, limits = response.next_event(), response.next_event()
    assert first is not None
    assert limits is not None
    assert (first["type"], limits["type"]) == (
        "response.created",
        "rate_limits.updated",
    )
    assert list(conversation) == []
    added = response.next_event()
    assert added is not None
    assert [entry.id for entry in conversation] == [added["item"]["id"]]


def test_rate_limits_reserve_at_the_start_and_settle_at_the_end() -> None:
    """The start reserves input + max_output_tokens; response.done settles it."""
    limits = RateLimits()
    assert limits.reserve(10 + 4096)[1]["remaining"] == 100_000 - 4106
    limits.settle(4106, 42)
    assert limits.reserve(100)[1]["remaining"] == 100_000 - 42 - 100
    response, _ = stream(max_output_tokens=50)
    response.next_event()
    event = response.next_event()
    assert event is not None
    assert event["rate_limits"][0]["remaining"] == 999
    assert event["rate_limits"][1]["remaining"] == 100_000 - 10 - 50


def test_short_audio_gets_fewer_transcript_deltas_than_words() -> None:
    """Words are spread over audio chunks; no empty transcript delta is sent."""
    # 100 ms, then 100 ms of a 150 ms slot.
    response, _ = stream([Answer("one two three", bytes(4800 * 2))])
    events = drain(response)
    deltas = [e for e in events if e["type"] == "response.audio_transcript.delta"]
    assert [d["delta"] for d in deltas] == ["one ", "two three"]
    assert [len(e["delta"]) for e in events if e["type"] == "response.audio.delta"] == [
        6400,
        6400,
    ]
    assert response.finished
    assert response.exhausted


def test_audio_deltas_announce_their_length() -> None:
    """next_audio_ms is the length of the next audio delta, None for other events."""
    response, _ = stream()
    lengths = []
    while not response.exhausted:
        ms = response.next_audio_ms
        event = response.next_event()
        assert event is not None
        if event["type"] == "response.audio.delta":
            assert ms == len(base64.b64decode(event["delta"])) // 48
            lengths.append(ms)
        else:
            assert ms is None
    assert lengths == [100, 150, 200, 100, 150, 200, 100]
    assert response.audio_output_ms == 1000


def test_function_call_streams_its_arguments() -> None:
    """A function call item: arguments in 8-character deltas, then done, completed."""
    arguments = json.dumps({"city": "example", "days": 1}, separators=(",", ":"))
    response, conversation = stream([FunctionCall("get_weather", arguments)])
    events = drain(response)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.created",
        *["response.function_call_arguments.delta"] * 4,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    added = events[2]["item"]
    assert (added["type"], added["status"], added["arguments"]) == (
        "function_call",
        "in_progress",
        "",
    )
    assert added["call_id"].startswith("call_")
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert "".join(deltas) == arguments
    assert all(len(d) <= 8 for d in deltas)
    done = events[-3]
    assert done["arguments"] == arguments
    assert done["call_id"] == added["call_id"]
    assert "name" not in done  # The beta types have no name here; GA adds it.
    assert events[-2]["item"]["status"] == "completed"
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"] == [events[-2]["item"]]
    [item] = conversation
    assert item.wire["arguments"] == arguments


def test_ga_function_call_done_names_the_function() -> None:
    """GA's arguments.done carries the function name; items end with item.done."""
    response, _ = stream([FunctionCall("lookup", "{}")], family=Family.GA)
    events = drain(response)
    [done] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["name"] == "lookup"
    assert [e["type"] for e in events][-3:] == [
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]


def test_mcp_call_then_answer_in_one_response() -> None:
    """An MCP call runs on the fake server; the answer follows as a second item."""
    response, conversation = stream(
        [McpCall("docs", "echo", '{"text":"hi"}'), Answer("ok", b"")],
        family=Family.GA,
        audio_output=False,
    )
    events = drain(response)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        "conversation.item.added",
        *["response.mcp_call_arguments.delta"] * 2,
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    call = events[9]["item"]
    assert (call["type"], call["server_label"], call["name"]) == (
        "mcp_call",
        "docs",
        "echo",
    )
    assert (call["arguments"], call["output"]) == ('{"text":"hi"}', "hi")
    message_added = events[11]
    assert message_added["output_index"] == 1
    final = events[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["mcp_call", "message"]
    assert [item.wire["type"] for item in conversation] == ["mcp_call", "message"]


def test_cancel_is_one_shot() -> None:
    """A second cancel, or a cancel after response.done, does nothing."""
    response, _ = stream()
    response.next_event()
    response.next_event()
    assert response.cancel("client_cancelled")
    assert not response.cancel("client_cancelled")
    assert [e["type"] for e in drain(response)] == ["response.done"]
    assert not response.cancel("client_cancelled")


def test_cancel_before_the_first_event_still_announces_the_response() -> None:
    """A response cancelled before anything was produced opens with response.created."""
    response, _ = stream()
    assert response.cancel("turn_detected")
    events = drain(response)
    assert [e["type"] for e in events] == [
        "response.created",
        "rate_limits.updated",
        "response.done",
    ]
    created, done = events[0], events[-1]
    assert created["response"]["status"] == "in_progress"
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["output"] == []


def test_cancel_mid_arguments_closes_the_call() -> None:
    """Cancelled mid-arguments: arguments.done with what was sent, item incomplete."""
    response, _ = stream([FunctionCall("f", '{"a":"example"}'), Answer("x")])
    for _ in range(5):  # created, limits, added, item created, first delta.
        response.next_event()
    assert response.cancel("client_cancelled")
    events = drain(response)
    assert [e["type"] for e in events] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    assert events[0]["arguments"] == '{"a":"ex'
    assert events[1]["item"]["status"] == "incomplete"
    assert len(events[2]["response"]["output"]) == 1


def test_usage_bills_what_was_sent() -> None:
    """Output tokens count the arguments of a call (1 token per 4 characters)."""
    response, _ = stream([FunctionCall("f", "x" * 10)])
    events = drain(response)
    usage = events[-1]["response"]["usage"]
    assert usage["output_tokens"] == 3
    assert usage["input_tokens"] == 10
