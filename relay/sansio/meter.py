"""What a session carries, in realtime terms: event types, audio seconds, tokens, latency.

:class:`Meter` watches the frames of one session and reports facts for
metrics. It is built for the hot path: client events arrive already parsed
(the policy needs them), and upstream frames are classified from their first
bytes (Azure writes ``"type"`` first) and measured without decoding their
base64 audio. Only the rare ``session.created``/``session.updated`` (for the
audio formats) and ``response.done`` (for usage) are parsed.

Audio seconds follow the session's effective formats: PCM16 24 kHz is 48,000
bytes a second, G.711 8,000 (protocol.md §4.3). A per-response
``output_audio_format`` override is not followed (UNVERIFIED how common; the
session's format is used).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from relay.sansio.commands import FirstAudio, Metered, TokensUsed
from relay.sansio.fields import FIELDS, JSON, read
from relay.sansio.wire import parse_upstream
from relay.typing import Family


__all__ = [
    "EVENT_TYPES",
    "Meter",
    "SessionCounters",
    "event_label",
    "upstream_type",
    "usage_of",
]


@dataclass(slots=True)
class SessionCounters:
    """What one session relayed: the one count of it.

    The driver adds to it as messages and facts go by; the session's
    metrics flush what was added since their last flush (before each
    scrape, and at the end), and the ``session.end`` log line reports the
    totals.
    """

    client_messages: int = 0
    client_bytes: int = 0
    upstream_messages: int = 0
    upstream_bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    audio_in_seconds: float = 0.0
    audio_out_seconds: float = 0.0


_SERVER_TYPES: Final = frozenset(
    {
        "session.created",
        "session.updated",
        "transcription_session.updated",
        "conversation.created",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.timeout_triggered",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "response.created",
        "response.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.text.delta",
        "response.text.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.audio.delta",
        "response.audio.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "rate_limits.updated",
        "error",
    }
)
_CLIENT_TYPES: Final = frozenset(
    {
        "session.update",
        "transcription_session.update",
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
    }
)
EVENT_TYPES: Final = _SERVER_TYPES | _CLIENT_TYPES | {"relay.draining"}
"""Every event type counted by name (protocol.md §4); anything else is ``other``."""

_AUDIO_DELTAS: Final = frozenset(
    {"response.audio.delta", "response.output_audio.delta"}
)
_BYTES_PER_SECOND: Final = {"pcm16": 48_000, "g711_ulaw": 8_000, "g711_alaw": 8_000}
_TYPE_FIRST: Final = re.compile(r'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9._]{1,80})"')
_DELTA_VALUE: Final = re.compile(r'"delta"\s*:\s*"')


def event_label(kind: str) -> str:
    """``kind`` itself when it is a known event type, else ``other`` (bounded labels)."""
    return kind if kind in EVENT_TYPES else "other"


def upstream_type(data: str) -> str | None:
    """The ``type`` of an upstream event, cheaply: from its first bytes, else by parsing."""
    match = _TYPE_FIRST.match(data)
    if match is not None:
        return match.group(1)
    event = _parse(data)
    kind = event.get("type") if event is not None else None
    return kind if isinstance(kind, str) else None


def _parse(data: str) -> dict[str, JSON] | None:
    return parse_upstream(data)


def _base64_bytes(length: int, tail: str) -> int:
    """Decoded size of ``length`` base64 characters ending with ``tail``."""
    return max(0, length * 3 // 4 - tail[-2:].count("="))


def _int(value: JSON) -> int:
    return (
        value
        if isinstance(value, int) and not isinstance(value, bool) and value > 0
        else 0
    )


def usage_of(event: dict[str, JSON]) -> TokensUsed | None:
    """The token usage of a parsed ``response.done`` (protocol.md §4.5), if reported."""
    response = event.get("response")
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    inputs = usage.get("input_token_details")
    outputs = usage.get("output_token_details")
    inputs = inputs if isinstance(inputs, dict) else {}
    outputs = outputs if isinstance(outputs, dict) else {}
    return TokensUsed(
        input_text=_int(inputs.get("text_tokens")),
        input_audio=_int(inputs.get("audio_tokens")),
        input_cached=_int(inputs.get("cached_tokens")),
        output_text=_int(outputs.get("text_tokens")),
        output_audio=_int(outputs.get("audio_tokens")),
    )


class Meter:
    """Facts about one session's frames; see the module docstring."""

    def __init__(self, family: Family) -> None:
        self._family: Family = family
        # Effective audio formats (preview names), from session.created/updated.
        self._input_rate = _BYTES_PER_SECOND["pcm16"]
        self._output_rate = _BYTES_PER_SECOND["pcm16"]
        # When the user stopped speaking or asked for a response, until the
        # first audio delta answers it.
        self._awaiting_audio_since: float | None = None

    def client_event(self, event: dict[str, JSON], now: float) -> Metered:
        """Measure one parsed client event arriving at ``now``."""
        kind = event["type"]
        if kind == "input_audio_buffer.append":
            audio = event.get("audio")
            seconds = 0.0
            if isinstance(audio, str) and audio:
                seconds = _base64_bytes(len(audio), audio) / self._input_rate
            return Metered("client_to_upstream", kind, seconds)
        if kind == "response.create" and self._awaiting_audio_since is None:
            self._awaiting_audio_since = now
        return Metered("client_to_upstream", event_label(kind))

    def client_append(self, length: int, tail: str) -> Metered:
        """Measure an ``input_audio_buffer.append`` whose base64 audio has
        ``length`` characters ending with ``tail`` (its last two or fewer).

        The same fact :meth:`client_event` gives for the parsed event.
        """
        seconds = _base64_bytes(length, tail) / self._input_rate if length else 0.0
        return Metered("client_to_upstream", "input_audio_buffer.append", seconds)

    def upstream_frame(
        self, data: str | bytes, now: float
    ) -> list[Metered | TokensUsed | FirstAudio]:
        """Measure one upstream frame arriving at ``now``.

        Returns the frame's facts, then the usage of a ``response.done``, or
        the first-audio latency when this frame is a response's first audio.
        """
        if isinstance(data, bytes):
            return [Metered("upstream_to_client", "other")]
        kind = upstream_type(data) or "other"
        if kind in _AUDIO_DELTAS:
            return self._audio_delta(kind, data, now)
        if (
            kind == "input_audio_buffer.speech_stopped"
            and self._awaiting_audio_since is None
        ):
            self._awaiting_audio_since = now
        facts: list[Metered | TokensUsed | FirstAudio] = [
            Metered("upstream_to_client", event_label(kind))
        ]
        if kind == "response.done":
            event = _parse(data)
            usage = usage_of(event) if event is not None else None
            if usage is not None:
                facts.append(usage)
            # A response without audio (text only, cancelled) ends the wait too.
            self._awaiting_audio_since = None
        elif kind in ("session.created", "session.updated"):
            event = _parse(data)
            if event is not None:
                self._formats(event)
        return facts

    def _audio_delta(
        self, kind: str, data: str, now: float
    ) -> list[Metered | TokensUsed | FirstAudio]:
        match = _DELTA_VALUE.search(data)
        seconds = 0.0
        if match is not None:
            start = match.end()
            end = data.find('"', start)
            if end > start:
                seconds = (
                    _base64_bytes(end - start, data[end - 2 : end]) / self._output_rate
                )
        facts: list[Metered | TokensUsed | FirstAudio] = [
            Metered("upstream_to_client", kind, seconds)
        ]
        if self._awaiting_audio_since is not None:
            facts.append(FirstAudio(max(0.0, now - self._awaiting_audio_since)))
            self._awaiting_audio_since = None
        return facts

    def _formats(self, event: dict[str, JSON]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            return
        for name in ("input_audio_format", "output_audio_format"):
            for _, value in read(session, FIELDS[name], self._family, response=False):
                rate = _BYTES_PER_SECOND.get(value) if isinstance(value, str) else None
                if rate is None:
                    continue
                if name == "input_audio_format":
                    self._input_rate = rate
                else:
                    self._output_rate = rate
