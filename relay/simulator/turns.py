"""User turns: the input audio buffer events, VAD turn taking, and commits.

Pure. With turn detection on, appended audio runs through the VAD; a detected
turn yields ``speech_started`` (interrupting an active response when
``interrupt_response``), then ``speech_stopped``, an automatic commit, and a
response when ``create_response``. Without turn detection, only the client's
``input_audio_buffer.commit`` turns audio into a user item.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from relay.simulator._checks import Invalid
from relay.simulator.conversation import Conversation
from relay.simulator.input_buffer import InputAudioBuffer
from relay.simulator.items import user_audio_item
from relay.simulator.responder import Responder
from relay.simulator.schema import Settings
from relay.simulator.vad import SpeechStarted
from relay.simulator.wire import EventFactory, Family, JSONObject


MIN_COMMIT_MS = 100
"""Smallest committable buffer (``input_audio_buffer_commit_empty`` below it)."""


class Turns:
    """Turns audio appended by the client into user items."""

    def __init__(
        self,
        events: EventFactory,
        conversation: Conversation,
        responder: Responder,
        settings: Settings,
        *,
        respond: Callable[[], None],
    ) -> None:
        """``respond`` starts the automatic response after a VAD-detected turn."""
        self._events = events
        self._conversation = conversation
        self._responder = responder
        self._respond = respond
        self._settings = settings
        self._buffer = InputAudioBuffer(settings.input_format, settings.turn_detection)
        # The user item the turn in progress will become, and where its audio starts.
        self._speech: tuple[str, int] | None = None

    def configure(self, settings: Settings) -> None:
        """Adopt updated session settings (a new VAD forgets speech in progress)."""
        old, self._settings = self._settings, settings
        if (old.input_format, old.turn_detection) != (
            settings.input_format,
            settings.turn_detection,
        ):
            self._buffer.reconfigure(settings.input_format, settings.turn_detection)
            self._speech = None

    def append(self, audio: bytes) -> list[JSONObject]:
        """Handle ``input_audio_buffer.append`` (no acknowledgement, protocol.md §4.3)."""
        events: list[JSONObject] = []
        for boundary in self._buffer.append(audio):
            if isinstance(boundary, SpeechStarted):
                events += self._speech_started(boundary.audio_start_ms)
            else:
                events += self._speech_stopped(boundary.audio_end_ms)
        return events

    def commit(self) -> list[JSONObject]:
        """Handle ``input_audio_buffer.commit``: the whole buffer becomes a user item.

        Raises:
            Invalid: ``input_audio_buffer_commit_empty`` below 100 ms of audio.
        """
        buffered = self._buffer.buffered_ms
        if buffered < MIN_COMMIT_MS:
            raise Invalid(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at "
                f"least {MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{buffered:.2f}ms of audio.",
                None,
            )
        item_id = self._speech[0] if self._speech else self._events.ids("item")
        return self._commit(item_id, self._buffer.start_ms, self._buffer.appended_ms)

    def clear(self) -> list[JSONObject]:
        """Handle ``input_audio_buffer.clear``."""
        self._buffer.clear()
        self._speech = None
        return [self._events("input_audio_buffer.cleared")]

    def _speech_started(self, audio_start_ms: int) -> list[JSONObject]:
        # The padding cannot reach back into audio that was already committed.
        start = max(audio_start_ms, math.ceil(self._buffer.start_ms))
        item_id = self._events.ids("item")
        self._speech = (item_id, start)
        detection = self._settings.turn_detection
        if detection is not None and detection.interrupt_response:
            self._responder.cancel(None, "turn_detected")
        return [
            self._events(
                "input_audio_buffer.speech_started",
                audio_start_ms=start,
                item_id=item_id,
            )
        ]

    def _speech_stopped(self, audio_end_ms: int) -> list[JSONObject]:
        # The VAD reports a stop only after a start, so a turn is in progress.
        assert self._speech is not None
        item_id, start = self._speech
        events = [
            self._events(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=audio_end_ms,
                item_id=item_id,
            )
        ]
        events += self._commit(item_id, start, audio_end_ms)
        detection = self._settings.turn_detection
        if (
            detection is not None
            and detection.create_response
            and self._responder.active is None
        ):
            self._respond()
        return events

    def _commit(self, item_id: str, start_ms: float, end_ms: float) -> list[JSONObject]:
        self._speech = None
        audio = self._buffer.take(start_ms, end_ms)
        item = user_audio_item(item_id, audio, self._settings.input_format)
        previous = self._conversation.add(item)
        events = [
            self._events(
                "input_audio_buffer.committed",
                previous_item_id=previous,
                item_id=item_id,
            ),
            self._events(
                "conversation.item.created",
                previous_item_id=previous,
                item=item.snapshot(),
            ),
        ]
        if self._settings.transcription:
            seconds = item.audio_ms / 1000
            transcript = f"(simulated transcript of {seconds:.1f} seconds of audio)"
            item.wire["content"][0]["transcript"] = transcript
            completed: JSONObject = {
                "item_id": item_id,
                "content_index": 0,
                "transcript": transcript,
            }
            if self._events.family is Family.GA:
                completed["usage"] = {"type": "duration", "seconds": seconds}
            events.append(
                self._events(
                    "conversation.item.input_audio_transcription.completed", **completed
                )
            )
        if self._events.family is Family.GA:
            # conversation.item.done shows the final item, transcript included.
            events.append(
                self._events(
                    "conversation.item.done",
                    previous_item_id=previous,
                    item=item.snapshot(),
                )
            )
        return events
