"""Pure audio helpers: formats and byte math, energy, and speech-like signals.

Formats (protocol.md §3.1, §4.3): ``pcm16`` is 16-bit little-endian PCM at
24 kHz mono (48,000 B/s); ``g711_ulaw`` and ``g711_alaw`` are 8 kHz, one byte
per sample (8,000 B/s).

The "speech" generated here is a few harmonics of a gliding fundamental, cut
into syllables of 120–260 ms separated by 30–80 ms gaps. It is not speech, but
it has speech's energy pattern, which is all the simulator's energy VAD looks at.
"""

from __future__ import annotations

import enum
import functools
import math
import random
import sys
from array import array
from collections.abc import Sequence

from relay.simulator import _g711


class AudioFormat(enum.StrEnum):
    """Audio encodings of the Realtime API, by their preview names."""

    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"

    @property
    def sample_rate(self) -> int:
        """Samples per second."""
        return 24_000 if self is AudioFormat.PCM16 else 8_000

    @property
    def bytes_per_sample(self) -> int:
        """Bytes per (mono) sample."""
        return 2 if self is AudioFormat.PCM16 else 1

    @property
    def bytes_per_ms(self) -> int:
        """Bytes per millisecond: 48 for PCM16, 8 for G.711."""
        return self.sample_rate * self.bytes_per_sample // 1000


def duration_ms(byte_count: int, fmt: AudioFormat) -> float:
    """Return how many milliseconds ``byte_count`` bytes of ``fmt`` audio last."""
    return byte_count / fmt.bytes_per_ms


def decode_samples(data: bytes, fmt: AudioFormat) -> array[int]:
    """Decode ``data`` to 16-bit linear samples.

    ``data`` must hold whole samples (an even length for PCM16); the caller
    carries any odd trailing byte over to the next chunk.
    """
    if fmt is AudioFormat.PCM16:
        samples = array("h")
        samples.frombytes(data)
        if sys.byteorder == "big":
            samples.byteswap()  # The wire format is little-endian.
        return samples
    table = _g711.ULAW_TABLE if fmt is AudioFormat.G711_ULAW else _g711.ALAW_TABLE
    return array("h", (table[b] for b in data))


def encode_samples(samples: Sequence[int], fmt: AudioFormat) -> bytes:
    """Encode 16-bit linear samples in ``fmt``."""
    if fmt is AudioFormat.PCM16:
        pcm = array("h", samples)
        if sys.byteorder == "big":
            pcm.byteswap()
        return pcm.tobytes()
    if fmt is AudioFormat.G711_ULAW:
        return _g711.ulaw_encode(samples)
    return _g711.alaw_encode(samples)


def rms(samples: Sequence[int]) -> float:
    """Return the root-mean-square level of ``samples``, 0.0 (silence) to 1.0 (full scale)."""
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768


def synthesize_speech(
    milliseconds: float,
    *,
    sample_rate: int,
    pitch_hz: float = 140.0,
    amplitude: float = 0.3,
    seed: int = 0,
) -> array[int]:
    """Return ``milliseconds`` of speech-like 16-bit samples (deterministic per seed).

    Args:
        milliseconds: Length of the signal.
        sample_rate: Samples per second.
        pitch_hz: Mean fundamental frequency; each syllable varies it by ±15%.
        amplitude: Peak level relative to full scale, 0.0–1.0.
        seed: Seed of the syllable and pitch pattern.
    """
    rng = random.Random(seed)
    total = round(milliseconds * sample_rate / 1000)
    samples = array("h", bytes(2 * total))
    # The three harmonics sum to at most 1.75; scale so peaks reach `amplitude`.
    scale = amplitude * 32767 / 1.75
    start = 0
    while start < total:
        length = round(rng.uniform(0.12, 0.26) * sample_rate)
        gap = round(rng.uniform(0.03, 0.08) * sample_rate)
        f0 = pitch_hz * rng.uniform(0.85, 1.15)
        phase = 0.0
        for i in range(min(length, total - start)):
            # A 4 Hz vibrato keeps the tone from sounding like a pure beep.
            f = f0 * (1 + 0.08 * math.sin(2 * math.pi * 4 * i / sample_rate))
            phase += 2 * math.pi * f / sample_rate
            voice = (
                math.sin(phase) + 0.5 * math.sin(2 * phase) + 0.25 * math.sin(3 * phase)
            )
            samples[start + i] = int(scale * math.sin(math.pi * i / length) * voice)
        start += length + gap
    return samples


def speech_like_pcm16(
    seconds: float,
    *,
    leading_silence: float = 0.0,
    trailing_silence: float = 0.0,
    amplitude: float = 0.3,
    pitch_hz: float = 140.0,
    seed: int = 0,
) -> bytes:
    """Return speech-like PCM16 24 kHz mono input audio that triggers a server VAD.

    The result is ``leading_silence`` seconds of digital silence, ``seconds`` of
    voiced syllables, then ``trailing_silence`` seconds of silence. With the
    default VAD (``silence_duration_ms`` 200), a ``trailing_silence`` of 0.5 s
    or more makes the simulator detect the end of the turn.
    """
    voiced = synthesize_speech(
        seconds * 1000,
        sample_rate=AudioFormat.PCM16.sample_rate,
        pitch_hz=pitch_hz,
        amplitude=amplitude,
        seed=seed,
    )
    speech = encode_samples(voiced, AudioFormat.PCM16)
    return silence_pcm16(leading_silence) + speech + silence_pcm16(trailing_silence)


def silence_pcm16(seconds: float) -> bytes:
    """Return ``seconds`` of digital silence as PCM16 24 kHz mono."""
    return bytes(2 * round(seconds * AudioFormat.PCM16.sample_rate))


# Each voice gets its own pitch so that responses in different voices differ.
_VOICE_PITCH_HZ = {
    "alloy": 175.0,
    "ash": 120.0,
    "ballad": 135.0,
    "coral": 210.0,
    "echo": 110.0,
    "sage": 190.0,
    "shimmer": 225.0,
    "verse": 145.0,
    "marin": 200.0,
    "cedar": 115.0,
}


@functools.lru_cache(maxsize=64)
def response_audio(milliseconds: int, fmt: AudioFormat, voice: str) -> bytes:
    """Return the simulated assistant audio: ``milliseconds`` of speech in ``fmt``.

    Deterministic per arguments, and cached because every response of a
    session asks for the same audio.
    """
    samples = synthesize_speech(
        milliseconds,
        sample_rate=fmt.sample_rate,
        pitch_hz=_VOICE_PITCH_HZ.get(voice, 160.0),
        # A stable seed per voice (``hash`` is salted per process).
        seed=sum(voice.encode()),
    )
    return encode_samples(samples, fmt)
