"""An energy-based voice activity detector standing in for Azure's server VAD.

Azure's VAD is a model; this one only compares the RMS level of 10 ms frames
with a level derived from the session's ``threshold``:

    level_dBFS = -70 + 60 * threshold     (0.0 → -70 dBFS, 0.5 → -40, 1.0 → -10)

Speech starts once 30 ms of consecutive frames are at or above that level;
``audio_start_ms`` is the onset minus ``prefix_padding_ms``. Speech stops after
``silence_duration_ms`` of frames below the level; ``audio_end_ms`` is the end
of the last loud frame plus ``silence_duration_ms`` (protocol.md §4.7: both
offsets count from the start of all audio appended in the session and include
the padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from relay.simulator.audio import AudioFormat, decode_samples, rms


FRAME_MS = 10
"""Analysis frame length."""

MIN_SPEECH_MS = 30
"""Loud audio needed before speech starts, so that a click is not a turn."""


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began; the turn's audio starts at ``audio_start_ms``."""

    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended; the turn's audio ends at ``audio_end_ms``."""

    audio_end_ms: int


VadEvent: TypeAlias = SpeechStarted | SpeechStopped


def energy_level(threshold: float) -> float:
    """Return the RMS level (0.0–1.0 of full scale) that ``threshold`` maps to."""
    return float(10 ** ((-70 + 60 * threshold) / 20))


class EnergyVad:
    """Streaming energy VAD over one session's appended input audio.

    Feed every appended chunk, in order, to :meth:`feed`; it returns the speech
    boundaries found so far. Offsets are in milliseconds of appended audio,
    counted from ``start_ms`` (the session's appended total when this detector
    was created, because a ``session.update`` replaces the detector).
    """

    def __init__(
        self,
        fmt: AudioFormat,
        *,
        threshold: float,
        prefix_padding_ms: int,
        silence_duration_ms: int,
        start_ms: int = 0,
    ) -> None:
        self._fmt = fmt
        self._level = energy_level(threshold)
        self._prefix_padding_ms = prefix_padding_ms
        self._silence_duration_ms = silence_duration_ms
        self._start_ms = start_ms
        # Bytes of a frame that is not complete yet.
        self._frame_bytes = fmt.bytes_per_ms * FRAME_MS
        self._pending = b""
        # Complete frames analysed so far: the detector's clock.
        self._frames = 0
        # Consecutive loud frames while not in speech.
        self._loud_run = 0
        # Whether speech is in progress, and where its last loud frame ended.
        self._in_speech = False
        self._last_loud_end_ms = 0

    @property
    def in_speech(self) -> bool:
        """Whether speech started and has not stopped yet."""
        return self._in_speech

    def _position_ms(self) -> int:
        return self._start_ms + self._frames * FRAME_MS

    def feed(self, data: bytes) -> list[VadEvent]:
        """Analyse the next chunk of appended audio; return the boundaries it completes."""
        data = self._pending + data
        complete = len(data) // self._frame_bytes
        events: list[VadEvent] = []
        for index in range(complete):
            frame = data[index * self._frame_bytes : (index + 1) * self._frame_bytes]
            loud = rms(decode_samples(frame, self._fmt)) >= self._level
            self._frames += 1
            event = self._advance(loud, self._position_ms())
            if event is not None:
                events.append(event)
        self._pending = data[complete * self._frame_bytes :]
        return events

    def _advance(self, loud: bool, frame_end_ms: int) -> VadEvent | None:
        if not self._in_speech:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run * FRAME_MS < MIN_SPEECH_MS:
                return None
            self._in_speech = True
            self._last_loud_end_ms = frame_end_ms
            onset_ms = frame_end_ms - self._loud_run * FRAME_MS
            return SpeechStarted(max(0, onset_ms - self._prefix_padding_ms))
        if loud:
            self._last_loud_end_ms = frame_end_ms
            return None
        if frame_end_ms - self._last_loud_end_ms < self._silence_duration_ms:
            return None
        self.reset()
        return SpeechStopped(self._last_loud_end_ms + self._silence_duration_ms)

    def reset(self) -> None:
        """Forget any speech in progress (after a commit or clear); keep the clock."""
        self._in_speech = False
        self._loud_run = 0
