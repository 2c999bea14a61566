"""The documented token formula and rate-limit counters."""

from __future__ import annotations

from relay.simulator.conversation import Item
from relay.simulator.usage import (
    RateLimits,
    TokenCounts,
    context_tokens,
    input_audio_tokens,
    output_audio_tokens,
    output_tokens,
    text_tokens,
    usage_object,
)


def message(role: str, content: list[dict[str, object]], audio_ms: int = 0) -> Item:
    wire = {"id": "i", "type": "message", "role": role, "content": content}
    return Item(wire, audio_ms=audio_ms)


def test_text_tokens_are_started_groups_of_four_characters() -> None:
    """ceil(len / 4), counting characters."""
    assert [text_tokens("x" * n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    assert text_tokens("ééé") == 1


def test_audio_tokens() -> None:
    """Input: one token per started 100 ms; output: per started 50 ms."""
    assert [input_audio_tokens(ms) for ms in (0, 1, 100, 101, 1000)] == [0, 1, 1, 2, 10]
    assert [output_audio_tokens(ms) for ms in (0, 50, 51, 1000)] == [0, 1, 2, 20]


def test_context_counts_each_item_and_the_instructions() -> None:
    """User transcripts are audio, not text; assistant transcripts are text."""
    items = [
        message(
            "user",
            [{"type": "input_audio", "transcript": "ignored words"}],
            audio_ms=1050,
        ),
        message("assistant", [{"type": "audio", "transcript": "hello"}], audio_ms=500),
        message("system", [{"type": "input_text", "text": "abcdefgh"}]),
        Item({"id": "f", "type": "function_call", "arguments": "{}"}),
        Item({"id": "o", "type": "function_call_output", "output": "12345"}),
    ]
    counts = context_tokens("1234", items)
    assert counts == TokenCounts(text=1 + 2 + 2 + 1 + 2, audio=11 + 5)
    assert counts.total == 24


def test_usage_object_shape() -> None:
    """The usage object of response.done, with cached tokens always 0."""
    assert usage_object(TokenCounts(3, 4), output_tokens("abcde", 100)) == {
        "total_tokens": 11,
        "input_tokens": 7,
        "output_tokens": 4,
        "input_token_details": {
            "cached_tokens": 0,
            "text_tokens": 3,
            "audio_tokens": 4,
        },
        "output_token_details": {"text_tokens": 2, "audio_tokens": 2},
    }


def test_rate_limits_count_down_and_floor_at_zero() -> None:
    """Requests drop by one per response, tokens by reservations, then by usage."""
    limits = RateLimits()
    first = limits.reserve(60_000)
    assert [entry["remaining"] for entry in first] == [999, 40_000]
    limits.settle(60_000, 50_000)
    second = limits.reserve(60_000)
    assert [entry["remaining"] for entry in second] == [998, 0]
    assert {entry["name"] for entry in second} == {"requests", "tokens"}
