"""User turns: the input audio buffer events, VAD turn taking, and commits.

Pure. With turn detection on, appended audio runs through the VAD; a detected
turn yields ``speech_started`` (interrupting an active response when
``interrupt_response``), then ``speech_stopped``, an automatic commit, and a
response when ``create_response``. Without turn detection, only the client's
``input_audio_buffer.commit`` turns audio into a user item.

With input transcription on, every commit is followed by the transcript, a
``conversation.item.input_audio_transcription.delta`` per word then
``.completed`` (or, when the ``fail_transcription`` switch is armed, one
``.failed`` and no transcript).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

from relay.simulator._checks import Invalid
from relay.simulator.conversation import Conversation, Item
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
        heard: Callable[[], None] = lambda: None,
        fail_transcription: Callable[[], bool] = lambda: False,
    ) -> None:
        """``respond`` starts the automatic response after a VAD-detected turn.

        ``heard`` is told when the VAD detects speech; ``fail_transcription``
        is asked at each transcription whether it fails (a one-shot switch).
        """
        self._events = events
        self._conversation = conversation
        self._responder = responder
        self._respond = respond
        self._heard = heard
        self._fail_transcription = fail_transcription
        self._settings = settings
        self._buffer = InputAudioBuffer(settings.input_format, settings.turn_detection)
        # The user item the turn in progress will become, and where its audio starts.
        self._speech: tuple[str, int] | None = None

    def configure(self, settings: Settings) -> None:
        """Adopt updated session settings (a new VAD forgets speech in progress)."""
        old, self._settings = self._settings, settings
        if (old.input_format, _vad_of(old)) != (
            settings.input_format,
            _vad_of(settings),
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

    @property
    def speaking(self) -> bool:
        """Whether the VAD detected speech that has not stopped yet."""
        return self._speech is not None

    @property
    def appended_ms(self) -> float:
        """All audio appended in the session: the clock of ``audio_*_ms`` offsets."""
        return self._buffer.appended_ms

    def timeout(self, since_ms: float) -> list[JSONObject]:
        """The idle timeout fired: commit the audio appended since ``since_ms``.

        Returns ``input_audio_buffer.timeout_triggered`` and the commit's
        events, and starts a response (the model prompts the user to go on).
        The audio, silent or not, is committed even below 100 ms.
        """
        end = self._buffer.appended_ms
        start = min(max(since_ms, self._buffer.start_ms), end)
        item_id = self._events.ids("item")
        events = [
            self._events(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=math.ceil(start),
                audio_end_ms=math.floor(end),
                item_id=item_id,
            )
        ]
        events += self._commit(item_id, start, end)
        self._respond()
        return events

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
        self._heard()
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
            events += self._transcribe(item)
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

    def _transcribe(self, item: Item) -> list[JSONObject]:
        where: JSONObject = {"item_id": item.id, "content_index": 0}
        if self._fail_transcription():
            # OpenAI's documented example of the event; Azure's wording is UNVERIFIED.
            error = {
                "type": "transcription_error",
                "code": "audio_unintelligible",
                "message": "The audio could not be transcribed.",
                "param": None,
            }
            return [
                self._events(
                    "conversation.item.input_audio_transcription.failed",
                    **where,
                    error=error,
                )
            ]
        seconds = item.audio_ms / 1000
        transcript = f"(simulated transcript of {seconds:.1f} seconds of audio)"
        events = [
            self._events(
                "conversation.item.input_audio_transcription.delta", **where, delta=word
            )
            for word in re.findall(r"\S+\s*", transcript)
        ]
        item.wire["content"][0]["transcript"] = transcript
        # Both families: the beta SDK types require usage too.
        usage = {"type": "duration", "seconds": seconds}
        completed: JSONObject = {**where, "transcript": transcript, "usage": usage}
        events.append(
            self._events(
                "conversation.item.input_audio_transcription.completed", **completed
            )
        )
        return events


def _vad_of(settings: Settings) -> object:
    """The settings the VAD runs on: a new idle timeout does not reset it."""
    detection = settings.turn_detection
    if detection is None:
        return None
    return dataclasses.replace(detection, idle_timeout_ms=None)
