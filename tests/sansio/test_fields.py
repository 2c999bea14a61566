"""Governed fields: where they sit per family, what each family may receive, and removal."""

from __future__ import annotations

from typing import Any

import pytest

from relay.sansio.fields import (
    ABSENT,
    FIELDS,
    for_family,
    read,
    remove,
    schema_error,
    write,
)


class TestForFamily:
    @pytest.mark.parametrize(
        ("name", "value", "preview"),
        [
            (
                "turn_detection",
                {"type": "server_vad", "threshold": 0.6, "idle_timeout_ms": 6000},
                {"type": "server_vad", "threshold": 0.6},
            ),
            (
                "tools",
                [
                    {"type": "mcp", "server_label": "docs"},
                    {"type": "function", "name": "f"},
                ],
                [{"type": "function", "name": "f"}],
            ),
            ("tool_choice", {"type": "mcp", "server_label": "docs"}, ABSENT),
            ("tool_choice", {"type": "function", "name": "f"}, None),
            ("voice", "marin", ABSENT),
            ("voice", "cedar", ABSENT),
            ("voice", "verse", None),
            ("reasoning", {"effort": "low"}, ABSENT),
            ("truncation", "disabled", ABSENT),
            ("modalities", ["text"], None),
        ],
    )
    def test_preview_never_receives_a_ga_only_part(
        self, name: str, value: Any, preview: Any
    ) -> None:
        """GA-only fields and parts are taken out; everything else is kept as is."""
        expected = value if preview is None else preview
        assert for_family(name, value, "preview") == expected
        assert for_family(name, value, "ga") == value

    def test_ga_has_no_temperature(self) -> None:
        """The reverse: a preview-only field is absent in GA."""
        assert for_family("temperature", 0.8, "ga") is ABSENT
        assert for_family("temperature", 0.8, "preview") == 0.8


class TestGaOnlyFields:
    def test_they_exist_only_in_ga_sessions(self) -> None:
        """read and write find no preview place for truncation."""
        field = FIELDS["truncation"]
        session: dict[str, Any] = {"truncation": "auto"}
        assert read(session, field, "preview", response=False) == []
        assert not write(session, field, "preview", "disabled", response=False)
        assert write(session, field, "ga", "disabled", response=False)
        assert read(session, field, "ga", response=False) == [
            ("truncation", "disabled")
        ]

    def test_reasoning_also_per_response(self) -> None:
        """A GA response.create carries its own reasoning."""
        field = FIELDS["reasoning"]
        response = {"reasoning": {"effort": "high"}}
        assert read(response, field, "ga", response=True) == [
            ("reasoning", {"effort": "high"})
        ]
        assert read(response, field, "preview", response=True) == []

    @pytest.mark.parametrize(
        ("name", "value", "valid"),
        [
            ("reasoning", {"effort": "minimal"}, True),
            ("reasoning", None, True),
            ("reasoning", {}, True),
            ("reasoning", {"effort": "max"}, False),
            ("reasoning", {"effort": "low", "summary": "auto"}, False),
            ("truncation", "auto", True),
            ("truncation", "disabled", True),
            (
                "truncation",
                {
                    "type": "retention_ratio",
                    "retention_ratio": 0.5,
                    "token_limits": {"post_instructions": 800},
                },
                True,
            ),
            ("truncation", {"type": "retention_ratio", "retention_ratio": 1.5}, False),
            ("truncation", {"type": "retention_ratio"}, False),
            (
                "truncation",
                {"type": "retention_ratio", "retention_ratio": 0.5, "x": 1},
                False,
            ),
            (
                "truncation",
                {
                    "type": "retention_ratio",
                    "retention_ratio": 0.5,
                    "token_limits": {"post_instructions": -1},
                },
                False,
            ),
            (
                "truncation",
                {"type": "retention_ratio", "retention_ratio": 0.5, "token_limits": []},
                False,
            ),
            ("truncation", "sometimes", False),
        ],
    )
    def test_documented_values(self, name: str, value: Any, valid: bool) -> None:
        """The GA-only fields are checked against the openai SDK's GA types."""
        assert (schema_error(name, value) is None) == valid


class TestSchema:
    """Each field's check names what the reference documents, or passes."""

    @pytest.mark.parametrize(
        ("name", "value", "expected"),
        [
            ("input_audio_noise_reduction", None, None),
            ("input_audio_noise_reduction", {"type": "far_field"}, None),
            ("input_audio_noise_reduction", True, "not a boolean"),
            ("input_audio_noise_reduction", {"type": "near"}, "near_field|far_field"),
            (
                "input_audio_noise_reduction",
                {"type": "far_field", "level": 2},
                "near_field|far_field",
            ),
            ("turn_detection", None, None),
            # No type: server_vad, the documented default.
            ("turn_detection", {"threshold": 0.5, "silence_duration_ms": 0}, None),
            (
                "turn_detection",
                {
                    "type": "server_vad",
                    "threshold": 1,
                    "prefix_padding_ms": 300,
                    "idle_timeout_ms": None,
                    "create_response": False,
                },
                None,
            ),
            (
                "turn_detection",
                {
                    "type": "semantic_vad",
                    "eagerness": "auto",
                    "interrupt_response": True,
                },
                None,
            ),
            ("turn_detection", "server_vad", "null or a turn_detection object"),
            ("turn_detection", {"type": "none"}, "server_vad or semantic_vad"),
            (
                "turn_detection",
                {"eagerness": "low"},
                "eagerness only with type semantic_vad",
            ),
            (
                "turn_detection",
                {"type": "semantic_vad", "threshold": 0.5},
                "no 'threshold' in a semantic_vad turn_detection",
            ),
            ("turn_detection", {"create_response": 1}, "create_response a boolean"),
            ("turn_detection", {"threshold": 1.5}, "threshold a number from 0 to 1"),
            ("turn_detection", {"threshold": True}, "threshold a number from 0 to 1"),
            (
                "turn_detection",
                {"prefix_padding_ms": -1},
                "prefix_padding_ms a non-negative integer",
            ),
            (
                "turn_detection",
                {"silence_duration_ms": 200.0},
                "silence_duration_ms a non-negative integer",
            ),
            (
                "turn_detection",
                {"silence_duration_ms": False},
                "silence_duration_ms a non-negative integer",
            ),
            ("turn_detection", {"idle_timeout_ms": 5000}, None),
            ("turn_detection", {"idle_timeout_ms": 4999}, "from 5000 to 30000"),
            ("turn_detection", {"idle_timeout_ms": True}, "from 5000 to 30000"),
            (
                "turn_detection",
                {"type": "semantic_vad", "eagerness": True},
                "(not a boolean)",
            ),
            ("input_audio_transcription", None, None),
            (
                "input_audio_transcription",
                {"model": "whisper-1", "language": "en", "prompt": ""},
                None,
            ),
            ("input_audio_transcription", {"model": "whisper-1", "x": "y"}, "{model"),
            ("input_audio_transcription", "whisper-1", "{model"),
            ("input_audio_transcription", {"model": 1}, "string model"),
            ("modalities", ["text"], None),
            ("modalities", ["text", "audio"], None),
            ("modalities", ["audio", "text"], None),
            ("modalities", ["audio"], '["text"] or ["text", "audio"]'),
            ("modalities", "text", '["text"] or ["text", "audio"]'),
            ("instructions", "Be brief.", None),
            ("instructions", None, "a string"),
            ("tools", [], None),
            ("tools", [{"type": "function", "name": "f"}], None),
            ("tools", [{"name": "f"}], "a list of tool objects with a type"),
            ("tools", {"type": "function"}, "a list of tool objects with a type"),
            ("tool_choice", "required", None),
            ("tool_choice", {"type": "function", "name": "f"}, None),
            ("tool_choice", "any", "auto, none, required or a tool object"),
            ("tool_choice", {"name": "f"}, "auto, none, required or a tool object"),
            ("temperature", 0.6, None),
            ("temperature", 1.2, None),
            ("temperature", 0.5, "a number from 0.6 to 1.2"),
            ("temperature", "0.8", "a number from 0.6 to 1.2"),
            ("max_response_output_tokens", "inf", None),
            ("max_response_output_tokens", 4096, None),
            ("max_response_output_tokens", 4097, 'an integer from 1 to 4096 or "inf"'),
            ("max_response_output_tokens", 0, 'an integer from 1 to 4096 or "inf"'),
            ("max_response_output_tokens", True, 'an integer from 1 to 4096 or "inf"'),
            ("voice", "marin", None),
            ("voice", "Alloy", "one of alloy, ash"),
        ],
    )
    def test_documented_values(
        self, name: str, value: Any, expected: str | None
    ) -> None:
        """A documented value passes; any other is refused with what was expected."""
        error = schema_error(name, value)
        if expected is None:
            assert error is None
        else:
            assert error is not None
            assert expected in error


class TestFamilyForms:
    """Values are kept in preview form; GA's formats and modalities are translated."""

    @pytest.mark.parametrize(
        ("preview", "ga"),
        [
            ("pcm16", {"type": "audio/pcm", "rate": 24000}),
            ("g711_ulaw", {"type": "audio/pcmu"}),
            ("g711_alaw", {"type": "audio/pcma"}),
        ],
    )
    def test_audio_formats_round_trip(self, preview: str, ga: dict[str, Any]) -> None:
        """write puts GA's format object in place; read gives back the preview name."""
        field = FIELDS["output_audio_format"]
        session: dict[str, Any] = {"audio": {"output": {"voice": "alloy"}}}
        assert write(session, field, "ga", preview, response=False)
        assert session == {"audio": {"output": {"voice": "alloy", "format": ga}}}
        assert read(session, field, "ga", response=False) == [
            ("audio.output.format", preview)
        ]

    def test_unknown_formats_pass_through_untranslated(self) -> None:
        """A format neither family documents reaches the schema check as it was sent."""
        field = FIELDS["input_audio_format"]
        session: dict[str, Any] = {}
        write(session, field, "ga", "opus", response=False)
        assert session == {"audio": {"input": {"format": "opus"}}}
        assert read(session, field, "ga", response=False) == [
            ("audio.input.format", "opus")
        ]
        odd = {"audio": {"input": {"format": {"type": "audio/opus"}}}}
        assert read(odd, field, "ga", response=False) == [
            ("audio.input.format", {"type": "audio/opus"})
        ]

    @pytest.mark.parametrize(
        ("preview", "ga"),
        [
            (["text"], ["text"]),
            (["text", "audio"], ["audio"]),
            (["audio", "text"], ["audio"]),
        ],
    )
    def test_modalities_map_to_the_one_ga_output(
        self, preview: list[str], ga: list[str]
    ) -> None:
        """GA has one output modality: text alone, or audio with its transcript."""
        field = FIELDS["modalities"]
        response: dict[str, Any] = {}
        assert write(response, field, "ga", preview, response=True)
        assert response == {"output_modalities": ga}
        [(path, value)] = read(response, field, "ga", response=True)
        assert path == "output_modalities"
        assert sorted(value) == sorted(preview)

    def test_undocumented_ga_modalities_are_read_as_sent(self) -> None:
        """Two GA output modalities are not translated, so the schema check refuses them."""
        session = {"output_modalities": ["audio", "text"]}
        [(_, value)] = read(session, FIELDS["modalities"], "ga", response=False)
        assert value == ["audio", "text"]


class TestRemove:
    def test_preview_keys_go(self) -> None:
        """Both max-token spellings of a preview response are removed."""
        response = {"max_output_tokens": 5, "max_response_output_tokens": 6, "x": 1}
        remove(response, FIELDS["max_response_output_tokens"], "preview", response=True)
        assert response == {"x": 1}

    def test_ga_parents_emptied_by_the_removal_go(self) -> None:
        """audio.input holding only the field goes; a sibling keeps audio."""
        session: dict[str, Any] = {
            "type": "realtime",
            "audio": {"input": {"noise_reduction": None}, "output": {"voice": "alloy"}},
        }
        remove(session, FIELDS["input_audio_noise_reduction"], "ga", response=False)
        assert session == {"type": "realtime", "audio": {"output": {"voice": "alloy"}}}

    def test_absent_or_misshapen_paths_are_left_alone(self) -> None:
        """Nothing to remove, nothing changes (an empty object the client sent stays)."""
        session: dict[str, Any] = {"audio": {"input": {}}, "x": 1}
        remove(session, FIELDS["input_audio_noise_reduction"], "ga", response=False)
        assert session == {"audio": {"input": {}}, "x": 1}
        odd: dict[str, Any] = {"audio": "loud"}
        remove(odd, FIELDS["voice"], "ga", response=False)
        assert odd == {"audio": "loud"}
