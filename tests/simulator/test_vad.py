"""The energy VAD: detects speech-like input, ignores silence, reports padded offsets."""

from __future__ import annotations

import pytest

from relay.simulator.audio import (
    AudioFormat,
    encode_samples,
    silence_pcm16,
    speech_like_pcm16,
    synthesize_speech,
)
from relay.simulator.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
    energy_level,
)


def vad(**overrides: int | float) -> EnergyVad:
    settings: dict[str, float] = {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
    }
    settings.update(overrides)
    return EnergyVad(
        AudioFormat.PCM16,
        threshold=settings["threshold"],
        prefix_padding_ms=int(settings["prefix_padding_ms"]),
        silence_duration_ms=int(settings["silence_duration_ms"]),
    )


def feed(detector: EnergyVad, audio: bytes, chunk: int = 4800) -> list[VadEvent]:
    events: list[VadEvent] = []
    for start in range(0, len(audio), chunk):
        events += detector.feed(audio[start : start + chunk])
    return events


def test_threshold_maps_to_decibels() -> None:
    """threshold 0 → -70 dBFS, 0.5 → -40 dBFS, 1 → -10 dBFS."""
    assert energy_level(0.0) == pytest.approx(10 ** (-70 / 20))
    assert energy_level(0.5) == pytest.approx(0.01)
    assert energy_level(1.0) == pytest.approx(10 ** (-10 / 20))


def test_silence_is_not_speech() -> None:
    """Seconds of digital silence produce no event."""
    detector = vad()
    assert feed(detector, silence_pcm16(3.0)) == []
    assert not detector.in_speech


def test_quiet_noise_below_the_threshold_is_not_speech() -> None:
    """Speech-like audio far below the level (-70 dBFS peaks) is ignored."""
    quiet = encode_samples(
        synthesize_speech(1000, sample_rate=24_000, amplitude=0.0003), AudioFormat.PCM16
    )
    assert feed(vad(), quiet) == []


def test_speech_like_audio_is_one_turn() -> None:
    """One utterance gives one start (onset minus padding) and one stop (end plus silence)."""
    audio = speech_like_pcm16(1.0, leading_silence=0.5, trailing_silence=0.5)
    events = feed(vad(), audio)
    assert len(events) == 2
    start, stop = events
    assert start == SpeechStarted(200)  # Onset at 500 ms, minus 300 ms of padding.
    assert isinstance(stop, SpeechStopped)
    # The last syllable ends a little before 1.5 s; the stop adds 200 ms of silence.
    assert 1500 <= stop.audio_end_ms <= 1700


def test_offsets_do_not_depend_on_chunking() -> None:
    """Appending in 10 ms or 1 s chunks (or odd sizes) detects the same boundaries."""
    audio = speech_like_pcm16(0.8, leading_silence=0.4, trailing_silence=0.6)
    expected = feed(vad(), audio, chunk=48_000)
    assert feed(vad(), audio, chunk=480) == expected
    assert feed(vad(), audio, chunk=777) == expected


def test_prefix_padding_is_clamped_at_zero() -> None:
    """Speech at the very start cannot start before 0 ms."""
    events = feed(vad(), speech_like_pcm16(0.5, trailing_silence=0.5))
    assert events[0] == SpeechStarted(0)


def test_long_silence_setting_keeps_the_turn_open() -> None:
    """With silence_duration_ms beyond the trailing silence, speech does not stop."""
    detector = vad(silence_duration_ms=2000)
    events = feed(detector, speech_like_pcm16(0.5, trailing_silence=1.0))
    assert [type(e) for e in events] == [SpeechStarted]
    assert detector.in_speech


def test_high_threshold_ignores_normal_speech() -> None:
    """threshold 1.0 (-10 dBFS) is above the generator's speech level."""
    assert feed(vad(threshold=1.0), speech_like_pcm16(1.0, trailing_silence=0.5)) == []


def test_two_utterances_make_two_turns() -> None:
    """A pause longer than silence_duration_ms separates turns."""
    one = speech_like_pcm16(0.6, trailing_silence=0.6)
    events = feed(vad(), one + one)
    assert [type(e) for e in events] == [
        SpeechStarted,
        SpeechStopped,
        SpeechStarted,
        SpeechStopped,
    ]


def test_reset_forgets_speech_but_keeps_the_clock() -> None:
    """After reset(), offsets still count from the start of the session."""
    detector = vad(prefix_padding_ms=0)
    feed(detector, speech_like_pcm16(0.3))
    states = [detector.in_speech]
    detector.reset()
    states.append(detector.in_speech)
    assert states == [True, False]
    events = feed(
        detector, silence_pcm16(0.7) + speech_like_pcm16(0.3, trailing_silence=0.5)
    )
    assert events[0] == SpeechStarted(1000)


def test_start_offset_is_added() -> None:
    """A detector created mid-session reports offsets from the session start."""
    detector = EnergyVad(
        AudioFormat.PCM16,
        threshold=0.5,
        prefix_padding_ms=0,
        silence_duration_ms=200,
        start_ms=5000,
    )
    assert feed(detector, speech_like_pcm16(0.3, trailing_silence=0.5))[
        0
    ] == SpeechStarted(5000)


@pytest.mark.parametrize("fmt", [AudioFormat.G711_ULAW, AudioFormat.G711_ALAW])
def test_g711_input_is_analysed_too(fmt: AudioFormat) -> None:
    """Speech in 8 kHz G.711 is detected like PCM16."""
    samples = synthesize_speech(800, sample_rate=8000)
    audio = (
        encode_samples([0] * 4000, fmt)
        + encode_samples(samples, fmt)
        + encode_samples([0] * 4000, fmt)
    )
    detector = EnergyVad(
        fmt, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=200
    )
    events = detector.feed(audio)
    assert events[0] == SpeechStarted(200)
    assert isinstance(events[1], SpeechStopped)
