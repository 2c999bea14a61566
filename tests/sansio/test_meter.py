"""The meter: event labels, audio seconds, token usage and first-audio latency."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, strategies as st

from relay.sansio.commands import FirstAudio, Metered, TokensUsed
from relay.sansio.meter import Meter, event_label, upstream_type, usage_of


def b64(size: int) -> str:
    return base64.b64encode(bytes(size)).decode()


def test_event_labels_are_bounded() -> None:
    """Known types keep their name; anything else is other."""
    assert event_label("response.audio.delta") == "response.audio.delta"
    assert event_label("input_audio_buffer.append") == "input_audio_buffer.append"
    assert event_label("x" * 200) == "other"
    assert event_label("response.audio.delta2") == "other"


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ('{"type":"response.done","response":{}}', "response.done"),
        ('  { "type" : "error", "error": {}}', "error"),
        ('{"event_id":"e1","type":"rate_limits.updated"}', "rate_limits.updated"),
        ('{"no":"type"}', None),
        ("not json", None),
        ("[1]", None),
    ],
)
def test_upstream_type_reads_the_first_bytes_or_parses(
    frame: str, kind: str | None
) -> None:
    """Azure writes type first; other orders still work, garbage gives None."""
    assert upstream_type(frame) == kind


@given(st.text(max_size=300))
def test_upstream_type_never_crashes(frame: str) -> None:
    """Any text is classified or not, without an exception."""
    upstream_type(frame)


class TestAudio:
    def test_appends_count_input_seconds_in_pcm16(self) -> None:
        """48,000 bytes of PCM16 are one second, measured without decoding."""
        meter = Meter("preview")
        fact = meter.client_event(
            {"type": "input_audio_buffer.append", "audio": b64(48_000)}, 0.0
        )
        assert fact == Metered("client_to_upstream", "input_audio_buffer.append", 1.0)

    def test_output_deltas_count_output_seconds(self) -> None:
        """Both families' delta names are measured from the delta's length."""
        for family, kind in (
            ("preview", "response.audio.delta"),
            ("ga", "response.output_audio.delta"),
        ):
            meter = Meter(family)  # type: ignore[arg-type]
            frame = json.dumps(
                {"type": kind, "response_id": "r", "delta": b64(24_000 - 1)}
            )
            [fact] = meter.upstream_frame(frame, 0.0)
            assert isinstance(fact, Metered)
            assert fact.event_type == kind
            assert fact.audio_seconds == pytest.approx((24_000 - 1) / 48_000)

    def test_g711_formats_follow_the_effective_session(self) -> None:
        """After session.updated with G.711 a second is 8,000 bytes, in either family."""
        preview = Meter("preview")
        preview.upstream_frame(
            json.dumps(
                {
                    "type": "session.updated",
                    "session": {
                        "input_audio_format": "g711_ulaw",
                        "output_audio_format": "g711_alaw",
                    },
                }
            ),
            0.0,
        )
        assert (
            preview.client_event(
                {"type": "input_audio_buffer.append", "audio": b64(8_000)}, 0.0
            ).audio_seconds
            == 1.0
        )
        ga = Meter("ga")
        ga.upstream_frame(
            json.dumps(
                {
                    "type": "session.created",
                    "session": {
                        "audio": {"output": {"format": {"type": "audio/pcmu"}}}
                    },
                }
            ),
            0.0,
        )
        [fact] = ga.upstream_frame(
            json.dumps({"type": "response.output_audio.delta", "delta": b64(4_000)}),
            0.0,
        )
        assert isinstance(fact, Metered)
        assert fact.audio_seconds == 0.5

    def test_odd_audio_fields_count_nothing(self) -> None:
        """A missing or non-string audio field is not audio."""
        meter = Meter("preview")
        assert (
            meter.client_event({"type": "input_audio_buffer.append"}, 0.0).audio_seconds
            == 0.0
        )
        assert (
            meter.client_event(
                {"type": "input_audio_buffer.append", "audio": 5}, 0.0
            ).audio_seconds
            == 0.0
        )
        [fact] = meter.upstream_frame('{"type":"response.audio.delta"}', 0.0)
        assert isinstance(fact, Metered)
        assert fact.audio_seconds == 0.0
        [fact] = meter.upstream_frame('{"type":"response.audio.delta","delta":""}', 0.0)
        assert isinstance(fact, Metered)
        assert fact.audio_seconds == 0.0

    def test_formats_without_a_known_rate_keep_the_last_known_one(self) -> None:
        """An undocumented format, or a session event that does not parse, changes no rate."""
        meter = Meter("preview")
        for frame in (
            json.dumps(
                {
                    "type": "session.updated",
                    "session": {
                        "input_audio_format": "g711_ulaw",
                        "output_audio_format": 7,
                    },
                }
            ),
            '{"type":"session.updated","session":{"input_audio_format":"opus"}}',
            '{"type":"session.updated","session":',
        ):
            assert meter.upstream_frame(frame, 0.0) == [
                Metered("upstream_to_client", "session.updated")
            ]
        append = {"type": "input_audio_buffer.append", "audio": b64(8_000)}
        assert meter.client_event(append, 0.0).audio_seconds == 1.0  # still G.711
        delta = json.dumps({"type": "response.audio.delta", "delta": b64(48_000)})
        [fact] = meter.upstream_frame(delta, 0.0)
        assert isinstance(fact, Metered)
        assert fact.audio_seconds == 1.0  # still PCM16


class TestUsageAndLatency:
    DONE = json.dumps(
        {
            "type": "response.done",
            "response": {
                "usage": {
                    "total_tokens": 82,
                    "input_tokens": 5,
                    "output_tokens": 77,
                    "input_token_details": {
                        "cached_tokens": 2,
                        "text_tokens": 5,
                        "audio_tokens": 0,
                    },
                    "output_token_details": {"text_tokens": 21, "audio_tokens": 56},
                }
            },
        }
    )

    def test_response_done_usage(self) -> None:
        """Every counter of the usage object, cached apart from its text/audio split."""
        facts = Meter("preview").upstream_frame(self.DONE, 0.0)
        assert facts[1] == TokensUsed(
            input_text=5, input_audio=0, input_cached=2, output_text=21, output_audio=56
        )

    @pytest.mark.parametrize(
        "usage",
        [
            None,
            "x",
            {"input_token_details": "x"},
            {"output_token_details": {"text_tokens": -3, "audio_tokens": True}},
        ],
    )
    def test_odd_usage_counts_nothing_wrong(self, usage: object) -> None:
        """Missing, malformed, negative or boolean counters count zero."""
        result = usage_of({"type": "response.done", "response": {"usage": usage}})
        assert result is None or result == TokensUsed()

    def test_first_audio_after_response_create(self) -> None:
        """From response.create to the first delta; later deltas do not count again."""
        meter = Meter("preview")
        meter.client_event({"type": "response.create"}, 10.0)
        delta = json.dumps({"type": "response.audio.delta", "delta": b64(3)})
        assert meter.upstream_frame(delta, 10.25)[1:] == [FirstAudio(0.25)]
        assert meter.upstream_frame(delta, 10.5)[1:] == []

    def test_first_audio_after_end_of_speech(self) -> None:
        """With server VAD the clock starts when the user stops speaking."""
        meter = Meter("ga")
        meter.upstream_frame('{"type":"input_audio_buffer.speech_stopped"}', 3.0)
        meter.client_event({"type": "response.create"}, 3.1)  # the earlier start counts
        facts = meter.upstream_frame(
            json.dumps({"type": "response.output_audio.delta", "delta": b64(3)}), 3.4
        )
        assert facts[1] == FirstAudio(pytest.approx(0.4))  # type: ignore[arg-type]

    def test_a_response_without_audio_ends_the_wait(self) -> None:
        """Text-only or cancelled responses do not leave a clock running."""
        meter = Meter("preview")
        meter.client_event({"type": "response.create"}, 1.0)
        meter.upstream_frame('{"type":"response.done","response":{}}', 2.0)
        assert (
            meter.upstream_frame(
                json.dumps({"type": "response.audio.delta", "delta": b64(3)}), 9.0
            )[1:]
            == []
        )

    def test_a_response_done_that_does_not_parse_still_ends_the_wait(self) -> None:
        """Its type is read from the first bytes; no usage is made up for it."""
        meter = Meter("preview")
        meter.client_event({"type": "response.create"}, 1.0)
        assert meter.upstream_frame('{"type":"response.done","response":{', 2.0) == [
            Metered("upstream_to_client", "response.done")
        ]
        delta = json.dumps({"type": "response.audio.delta", "delta": b64(3)})
        assert meter.upstream_frame(delta, 9.0)[1:] == []

    def test_binary_upstream_frames(self) -> None:
        """Binary frames are counted as other."""
        assert Meter("preview").upstream_frame(b"\x00", 0.0) == [
            Metered("upstream_to_client", "other")
        ]
