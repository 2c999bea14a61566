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
