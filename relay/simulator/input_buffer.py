"""The input audio buffer: appended, uncommitted user audio and the VAD watching it.

Pure. Offsets are milliseconds of audio appended since the session began,
the clock of ``audio_start_ms``/``audio_end_ms`` (protocol.md §4.7).
"""

from __future__ import annotations

from relay.simulator.audio import AudioFormat, duration_ms
from relay.simulator.schema import TurnDetection
from relay.simulator.vad import EnergyVad, VadEvent


class InputAudioBuffer:
    """Uncommitted input audio plus, when turn detection is on, an :class:`EnergyVad`."""

    def __init__(self, fmt: AudioFormat, turn_detection: TurnDetection | None) -> None:
        self._fmt = fmt
        # The uncommitted audio and the session offset of its first byte.
        self._data = bytearray()
        self._start_ms = 0.0
        # All audio ever appended in the session.
        self._appended_ms = 0.0
        self._vad = self._new_vad(turn_detection)

    def _new_vad(self, turn_detection: TurnDetection | None) -> EnergyVad | None:
        if turn_detection is None:
            return None
        return EnergyVad(
            self._fmt,
            threshold=turn_detection.threshold,
            prefix_padding_ms=turn_detection.prefix_padding_ms,
            silence_duration_ms=turn_detection.silence_duration_ms,
            start_ms=round(self._appended_ms),
        )

    def reconfigure(
        self, fmt: AudioFormat, turn_detection: TurnDetection | None
    ) -> None:
        """Adopt new session settings; speech in progress is forgotten.

        A format change discards uncommitted audio, whose bytes would be
        misread in the new format (what Azure does then is UNVERIFIED).
        """
        if fmt is not self._fmt:
            self._fmt = fmt
            self.clear()
        self._vad = self._new_vad(turn_detection)

    @property
    def start_ms(self) -> float:
        """Session offset of the first uncommitted byte."""
        return self._start_ms

    @property
    def appended_ms(self) -> float:
        """Session offset of the end of the buffer: all audio appended so far."""
        return self._appended_ms

    @property
    def buffered_ms(self) -> float:
        """Duration of the uncommitted audio."""
        return self._appended_ms - self._start_ms

    def append(self, data: bytes) -> list[VadEvent]:
        """Add audio; return the speech boundaries the VAD found (none without VAD)."""
        self._data += data
        self._appended_ms += duration_ms(len(data), self._fmt)
        return self._vad.feed(data) if self._vad is not None else []

    def take(self, start_ms: float, end_ms: float) -> bytes:
        """Remove and return the audio up to ``end_ms``, keeping what follows it.

        Audio before ``start_ms`` is dropped (it preceded the speech, padding
        included). Offsets are clamped to the buffer and rounded down to whole
        samples. The VAD forgets any speech in progress.
        """
        first = self._offset(start_ms)
        last = max(first, self._offset(end_ms))
        audio = bytes(self._data[first:last])
        del self._data[:last]
        self._start_ms += duration_ms(last, self._fmt)
        if self._vad is not None:
            self._vad.reset()
        return audio

    def clear(self) -> None:
        """Drop all uncommitted audio; the VAD forgets any speech in progress."""
        self._data.clear()
        self._start_ms = self._appended_ms
        if self._vad is not None:
            self._vad.reset()

    def _offset(self, ms: float) -> int:
        index = int((ms - self._start_ms) * self._fmt.bytes_per_ms)
        index = min(max(index, 0), len(self._data))
        return index - index % self._fmt.bytes_per_sample
