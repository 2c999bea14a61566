"""The session's responses: starting, cancelling and draining them in order.

Pure. At most one response is active (``response.done`` not produced yet);
the next may start while the previous one's trailing ``rate_limits.updated``
is still queued, and events come out strictly in order.
"""

from __future__ import annotations

from collections import deque

from relay.simulator._checks import Invalid
from relay.simulator.audio import response_audio
from relay.simulator.conversation import Conversation, Item
from relay.simulator.overrides import ResponseParams
from relay.simulator.responses import ResponseStream, canned_transcript
from relay.simulator.usage import RateLimits, context_tokens
from relay.simulator.wire import EventFactory, JSONObject, event_type


class Responder:
    """Owns the response streams of one session."""

    def __init__(
        self, events: EventFactory, conversation: Conversation, *, audio_ms: int
    ) -> None:
        self._events = events
        self._conversation = conversation
        # Length of the generated assistant audio per response.
        self._audio_ms = audio_ms
        # Streams with events left to produce, oldest first.
        self._streams: deque[ResponseStream] = deque()
        self._rate_limits = RateLimits()
        self.voice_locked = False
        """True once assistant audio was produced: the voice is then immutable."""

    @property
    def active(self) -> ResponseStream | None:
        """The response whose ``response.done`` is not produced yet, if any."""
        return next((s for s in self._streams if not s.finished), None)

    def start(self, params: ResponseParams, context: list[Item]) -> None:
        """Start a response to ``context`` (the items the model reads).

        The answer mentions how much audio the last user message in the
        context holds.

        Raises:
            Invalid: ``conversation_already_has_active_response``.
        """
        active = self.active
        if active is not None:
            raise Invalid(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{active.response_id}. Wait until the response is finished "
                "before creating a new one.",
                None,
            )
        users = [item for item in context if item.wire.get("role") == "user"]
        heard_ms = users[-1].audio_ms if users else 0
        audio = b""
        if params.audio_output:
            audio = response_audio(self._audio_ms, params.output_format, params.voice)
        self._streams.append(
            ResponseStream(
                events=self._events,
                params=params,
                conversation=self._conversation,
                input_tokens=context_tokens(params.instructions, context),
                transcript=canned_transcript(heard_ms),
                audio=audio,
                rate_limits=self._rate_limits,
            )
        )

    def cancel(self, response_id: str | None, reason: str) -> bool:
        """Cancel the active response (if ``response_id`` is None or matches it).

        Returns whether a response was cancelled; its remaining events change
        accordingly (see :meth:`ResponseStream.cancel`).
        """
        active = self.active
        if active is None or response_id not in (None, active.response_id):
            return False
        return active.cancel(reason)

    @property
    def audio_delta_next(self) -> bool:
        """Whether the next event to produce is an audio delta."""
        for stream in self._streams:
            if not stream.exhausted:
                return stream.audio_delta_next
        return False

    def next_event(self) -> JSONObject | None:
        """Produce the next response event, or None when nothing is pending."""
        while self._streams:
            event = self._streams[0].next_event()
            if event is None:
                self._streams.popleft()
                continue
            if event["type"] == event_type(self._events.family, "response.audio.delta"):
                self.voice_locked = True
            return event
        return None

    def stop(self) -> None:
        """Drop every pending response event (the session is over)."""
        self._streams.clear()
