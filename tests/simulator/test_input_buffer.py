"""The input audio buffer's offsets, commits and VAD ownership."""

from __future__ import annotations

from relay.simulator.audio import AudioFormat, silence_pcm16, speech_like_pcm16
from relay.simulator.input_buffer import InputAudioBuffer
from relay.simulator.schema import TurnDetection
from relay.simulator.vad import SpeechStarted


VAD = TurnDetection("server_vad", 0.5, 0, 200, True, True)


def test_offsets_track_appended_audio() -> None:
    """appended_ms counts all audio; buffered_ms what is not committed."""
    buffer = InputAudioBuffer(AudioFormat.PCM16, None)
    assert buffer.append(silence_pcm16(0.25)) == []
    assert (buffer.start_ms, buffer.appended_ms, buffer.buffered_ms) == (0, 250, 250)


def test_take_drops_the_prefix_and_keeps_the_tail() -> None:
    """take(start, end) returns [start, end) and keeps what follows end."""
    buffer = InputAudioBuffer(AudioFormat.PCM16, None)
    audio = (bytes(range(256)) * 200)[:48_000]  # 1 s of PCM16.
    buffer.append(audio)
    assert buffer.take(250, 500) == audio[250 * 48 : 500 * 48]
    assert (buffer.start_ms, buffer.buffered_ms) == (500, 500)
    assert buffer.take(0, 10_000) == audio[500 * 48 :]
    assert buffer.buffered_ms == 0


def test_take_rounds_to_whole_samples() -> None:
    """Offsets never split a PCM16 sample."""
    buffer = InputAudioBuffer(AudioFormat.PCM16, None)
    buffer.append(bytes(101))
    assert len(buffer.take(0, 1.0)) % 2 == 0


def test_clear_moves_the_start_to_the_end() -> None:
    """After clear, the buffer is empty but the session clock continues."""
    buffer = InputAudioBuffer(AudioFormat.G711_ULAW, None)
    buffer.append(bytes(800))
    buffer.clear()
    assert (buffer.start_ms, buffer.appended_ms, buffer.buffered_ms) == (100, 100, 0)


def test_vad_offsets_continue_after_reconfiguration() -> None:
    """A new VAD (session.update) keeps counting from the session's start."""
    buffer = InputAudioBuffer(AudioFormat.PCM16, None)
    buffer.append(silence_pcm16(1.0))
    buffer.reconfigure(AudioFormat.PCM16, VAD)
    assert buffer.append(speech_like_pcm16(0.3))[0] == SpeechStarted(1000)


def test_format_change_discards_uncommitted_audio() -> None:
    """Old-format bytes are not reinterpreted in the new format."""
    buffer = InputAudioBuffer(AudioFormat.PCM16, None)
    buffer.append(silence_pcm16(0.5))
    buffer.reconfigure(AudioFormat.G711_ALAW, None)
    assert buffer.buffered_ms == 0
    buffer.append(bytes(80))
    assert buffer.buffered_ms == 10
