"""Audio helpers: byte math, G.711, energy, and the speech-like generators."""

from __future__ import annotations

import pytest

from relay.simulator import _g711
from relay.simulator.audio import (
    AudioFormat,
    decode_samples,
    duration_ms,
    encode_samples,
    response_audio,
    rms,
    silence_pcm16,
    speech_like_pcm16,
    synthesize_speech,
)


class TestFormats:
    @pytest.mark.parametrize(
        ("fmt", "rate", "per_ms"),
        [
            (AudioFormat.PCM16, 24_000, 48),
            (AudioFormat.G711_ULAW, 8_000, 8),
            (AudioFormat.G711_ALAW, 8_000, 8),
        ],
    )
    def test_byte_math(self, fmt: AudioFormat, rate: int, per_ms: int) -> None:
        """PCM16 is 48,000 B/s and G.711 8,000 B/s (protocol.md §4.3)."""
        assert fmt.sample_rate == rate
        assert fmt.bytes_per_ms == per_ms
        assert duration_ms(per_ms * 100, fmt) == 100

    def test_pcm16_is_little_endian(self) -> None:
        """PCM16 bytes are little-endian signed 16-bit samples."""
        assert encode_samples([1, -2], AudioFormat.PCM16) == b"\x01\x00\xfe\xff"
        assert list(decode_samples(b"\x01\x00\xfe\xff", AudioFormat.PCM16)) == [1, -2]

    @pytest.mark.parametrize("fmt", [AudioFormat.G711_ULAW, AudioFormat.G711_ALAW])
    def test_g711_round_trip_is_close(self, fmt: AudioFormat) -> None:
        """G.711 keeps samples within its quantisation error (a few percent)."""
        samples = [0, 100, -100, 1000, -1000, 8000, -8000, 30000, -30000]
        decoded = decode_samples(encode_samples(samples, fmt), fmt)
        for original, back in zip(samples, decoded, strict=True):
            assert abs(original - back) <= max(16, abs(original) * 0.07)

    @pytest.mark.parametrize("fmt", [AudioFormat.G711_ULAW, AudioFormat.G711_ALAW])
    def test_g711_decoding_is_monotonic_in_magnitude(self, fmt: AudioFormat) -> None:
        """Larger inputs never decode to smaller outputs."""
        inputs = range(0, 32768, 97)
        decoded = list(decode_samples(encode_samples(list(inputs), fmt), fmt))
        assert decoded == sorted(decoded)

    def test_g711_reference_values(self) -> None:
        """Known code points: μ-law silence is 0xFF, A-law silence is 0xD5."""
        assert _g711.ulaw_encode_sample(0) == 0xFF
        assert _g711.ulaw_decode_sample(0xFF) == 0
        assert _g711.alaw_encode_sample(0) == 0xD5
        assert _g711.alaw_decode_sample(0xD5) == 8
        assert _g711.ulaw_encode_sample(-32768) == 0x00
        assert _g711.alaw_encode_sample(32767) == 0xAA


class TestEnergy:
    def test_rms_of_silence_and_full_scale(self) -> None:
        """RMS is 0 for silence and ~1 for a full-scale square wave."""
        assert rms([]) == 0.0
        assert rms([0] * 10) == 0.0
        assert rms([32767, -32768] * 10) == pytest.approx(1.0, abs=1e-4)

    def test_speech_like_input_has_speech_energy(self) -> None:
        """The voiced part sits around -20 dBFS; the silences are digital zero."""
        audio = speech_like_pcm16(1.0, leading_silence=0.25, trailing_silence=0.25)
        assert len(audio) == 48_000 * 3 // 2
        samples = decode_samples(audio, AudioFormat.PCM16)
        assert rms(samples[:6000]) == 0.0
        assert rms(samples[-6000:]) == 0.0
        assert 0.03 < rms(samples[6000:-6000]) < 0.3

    def test_speech_like_input_is_deterministic_per_seed(self) -> None:
        """Same seed, same audio; another seed, other audio."""
        assert speech_like_pcm16(0.5) == speech_like_pcm16(0.5)
        assert speech_like_pcm16(0.5, seed=1) != speech_like_pcm16(0.5)

    def test_amplitude_bounds_the_peaks(self) -> None:
        """No sample exceeds the requested peak level."""
        samples = synthesize_speech(300, sample_rate=24_000, amplitude=0.5)
        assert max(abs(s) for s in samples) <= 0.5 * 32767

    def test_silence(self) -> None:
        """silence_pcm16 is zeros of the right length."""
        assert silence_pcm16(0.01) == bytes(480)
        assert silence_pcm16(0) == b""


class TestResponseAudio:
    @pytest.mark.parametrize("fmt", list(AudioFormat))
    def test_length_matches_the_format(self, fmt: AudioFormat) -> None:
        """One second of response audio is one second of bytes in its format."""
        assert len(response_audio(1000, fmt, "alloy")) == fmt.bytes_per_ms * 1000

    def test_voices_sound_different(self) -> None:
        """Each voice has its own pitch."""
        assert response_audio(200, AudioFormat.PCM16, "alloy") != response_audio(
            200, AudioFormat.PCM16, "echo"
        )

    def test_unknown_voice_still_works(self) -> None:
        """A voice without a preset pitch falls back to a default."""
        assert len(response_audio(100, AudioFormat.PCM16, "custom")) == 4800
