"""The simulator's deterministic token accounting (``response.done.usage``).

Azure bills real tokenizer counts; the simulator uses a documented formula so
tests can assert exact numbers:

* text tokens of a string: ``ceil(len(text) / 4)`` (characters, not bytes);
* input audio tokens: ``ceil(audio_ms / 100)`` per item (10 tokens per second);
* output audio tokens: ``ceil(audio_ms / 50)`` (20 tokens per second).

Input of a response = the instructions plus every item of its context (the
conversation, or the ``response.input`` items), each item counted separately:
text tokens of :meth:`~relay.simulator.conversation.Item.texts` and audio
tokens of its audio. Output = the text or transcript the response emitted and,
for audio responses, the audio it emitted. ``cached_tokens`` is always 0 and
``total_tokens = input_tokens + output_tokens``.

``rate_limits.updated`` comes at the start of each response, after
``response.created`` (Azure's 2026 reference: tokens are reserved for the
output when a response is created, and reconciled when it ends; its 2024
reference sent the event after ``response.done``). Per session, it reports a
``requests`` limit of 1000, less one per response started, and a ``tokens``
limit of 100,000, less the ``total_tokens`` of every finished response and
the reservation of the starting one: its input tokens plus its
``max_output_tokens`` (4,096 for ``"inf"``). Both floor at 0;
``reset_seconds`` is 60.0. At ``response.done`` the reservation is replaced by
the response's ``total_tokens``, which the next event shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from relay.simulator.conversation import Item
from relay.simulator.wire import JSONObject


REQUESTS_LIMIT = 1000
TOKENS_LIMIT = 100_000
RESET_SECONDS = 60.0


def text_tokens(text: str) -> int:
    """Tokens of ``text``: one per started group of four characters."""
    return math.ceil(len(text) / 4)


def input_audio_tokens(milliseconds: float) -> int:
    """Tokens of input audio: one per started 100 ms."""
    return math.ceil(milliseconds / 100)


def output_audio_tokens(milliseconds: float) -> int:
    """Tokens of output audio: one per started 50 ms."""
    return math.ceil(milliseconds / 50)


@dataclass(frozen=True)
class TokenCounts:
    """Text and audio tokens of one side (input or output) of a response."""

    text: int = 0
    audio: int = 0

    @property
    def total(self) -> int:
        """Text plus audio tokens."""
        return self.text + self.audio


def context_tokens(instructions: str, items: Iterable[Item]) -> TokenCounts:
    """Return the input tokens of a response whose context is ``items``."""
    text = text_tokens(instructions)
    audio = 0
    for item in items:
        text += sum(text_tokens(t) for t in item.texts())
        audio += input_audio_tokens(item.audio_ms)
    return TokenCounts(text=text, audio=audio)


def output_tokens(text: str, audio_ms: float) -> TokenCounts:
    """Return the output tokens of a response that emitted ``text`` and ``audio_ms``."""
    return TokenCounts(text=text_tokens(text), audio=output_audio_tokens(audio_ms))


def usage_object(inputs: TokenCounts, outputs: TokenCounts) -> JSONObject:
    """Return the ``usage`` member of ``response.done`` (protocol.md §4.5)."""
    return {
        "total_tokens": inputs.total + outputs.total,
        "input_tokens": inputs.total,
        "output_tokens": outputs.total,
        "input_token_details": {
            "cached_tokens": 0,
            "text_tokens": inputs.text,
            "audio_tokens": inputs.audio,
        },
        "output_token_details": {
            "text_tokens": outputs.text,
            "audio_tokens": outputs.audio,
        },
    }


class RateLimits:
    """Per-session counters behind ``rate_limits.updated`` (see the module docstring)."""

    def __init__(self) -> None:
        self._responses = 0
        self._tokens = 0

    def reserve(self, tokens: int) -> list[JSONObject]:
        """Record a response starting with ``tokens`` reserved; return the ``rate_limits`` list."""
        self._responses += 1
        self._tokens += tokens
        return [
            {
                "name": "requests",
                "limit": REQUESTS_LIMIT,
                "remaining": max(0, REQUESTS_LIMIT - self._responses),
                "reset_seconds": RESET_SECONDS,
            },
            {
                "name": "tokens",
                "limit": TOKENS_LIMIT,
                "remaining": max(0, TOKENS_LIMIT - self._tokens),
                "reset_seconds": RESET_SECONDS,
            },
        ]

    def settle(self, reserved: int, used: int) -> None:
        """Replace a finished response's reservation by the ``used`` tokens (no event)."""
        self._tokens += used - reserved
