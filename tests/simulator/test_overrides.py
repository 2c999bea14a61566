"""Per-response overrides of ``response.create``, both families."""

from __future__ import annotations

from typing import Any

import pytest

from relay.simulator.audio import AudioFormat
from relay.simulator.overrides import ResponseParams, response_params
from relay.simulator.schema import SchemaError, default_session
from relay.simulator.wire import Family


def params(family: Family, overrides: object) -> ResponseParams:
    session = default_session(family, session_id="s", model="m", expires_at=0)
    result = response_params(family, session, overrides)
    assert isinstance(result, ResponseParams), result
    return result


def error(family: Family, overrides: object) -> SchemaError:
    session = default_session(family, session_id="s", model="m", expires_at=0)
    result = response_params(family, session, overrides)
    assert isinstance(result, SchemaError), result
    return result


@pytest.mark.parametrize("family", list(Family))
def test_no_overrides_use_the_session(family: Family) -> None:
    """Without a ``response`` object, the session's settings apply."""
    result = params(family, None)
    assert result.audio_output
    assert result.voice == "alloy"
    assert result.output_format is AudioFormat.PCM16
    assert not result.out_of_band
    assert result.metadata is None
    assert result.max_output_tokens == "inf"
    assert result.temperature == (0.8 if family is Family.PREVIEW else None)
    assert result.input is None


@pytest.mark.parametrize("family", list(Family))
def test_null_instructions_are_the_sessions(family: Family) -> None:
    """``instructions: null`` (LiveKit's ``generate_reply``) keeps the session's; a number is refused."""
    session = default_session(family, session_id="s", model="m", expires_at=0)
    assert (
        params(family, {"instructions": None}).instructions == session["instructions"]
    )
    assert error(family, {"instructions": 1}).param == "response.instructions"


def test_preview_overrides() -> None:
    """Preview overrides modalities, voice, format, instructions and limits."""
    result = params(
        Family.PREVIEW,
        {
            "modalities": ["text"],
            "voice": "echo",
            "output_audio_format": "g711_alaw",
            "instructions": "Classify.",
            "temperature": 1.0,
            "max_response_output_tokens": 50,
            "conversation": "none",
            "metadata": {"topic": "x"},
            "input": [],
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": "required",
        },
    )
    assert result == ResponseParams(
        audio_output=False,
        voice="echo",
        output_format=AudioFormat.G711_ALAW,
        instructions="Classify.",
        out_of_band=True,
        metadata={"topic": "x"},
        max_output_tokens=50,
        temperature=1.0,
        input=[],
        tools=({"type": "function", "name": "f"},),
        tool_choice="required",
    )


def test_preview_accepts_the_2024_max_tokens_name() -> None:
    """Azure's 2024 table calls the limit max_output_tokens."""
    assert params(Family.PREVIEW, {"max_output_tokens": 7}).max_output_tokens == 7


def test_ga_overrides() -> None:
    """GA overrides output_modalities and audio.output."""
    result = params(
        Family.GA,
        {
            "output_modalities": ["text"],
            "audio": {"output": {"voice": "cedar", "format": {"type": "audio/pcmu"}}},
            "max_output_tokens": 10,
            "prompt": {"id": "pmpt_1"},
        },
    )
    assert (result.audio_output, result.voice, result.output_format) == (
        False,
        "cedar",
        AudioFormat.G711_ULAW,
    )
    assert result.max_output_tokens == 10


@pytest.mark.parametrize(
    ("family", "overrides", "code", "param"),
    [
        (Family.PREVIEW, "audio", "invalid_type", "response"),
        (
            Family.PREVIEW,
            {"temperature": 2},
            "decimal_above_max_value",
            "response.temperature",
        ),
        (Family.PREVIEW, {"voice": "marin"}, "invalid_value", "response.voice"),
        (
            Family.PREVIEW,
            {"conversation": "conv_1"},
            "invalid_value",
            "response.conversation",
        ),
        (
            Family.PREVIEW,
            {"output_modalities": ["text"]},
            "unknown_parameter",
            "response.output_modalities",
        ),
        (Family.PREVIEW, {"input": {}}, "invalid_type", "response.input"),
        (
            Family.PREVIEW,
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "invalid_value",
            "response.metadata",
        ),
        (
            Family.PREVIEW,
            {"metadata": {"k" * 65: "v"}},
            "invalid_value",
            "response.metadata",
        ),
        (
            Family.PREVIEW,
            {"metadata": {"k": "v" * 513}},
            "invalid_value",
            "response.metadata.k",
        ),
        (Family.PREVIEW, {"metadata": {"k": 1}}, "invalid_type", "response.metadata.k"),
        (
            Family.PREVIEW,
            {"tool_choice": "maybe"},
            "invalid_value",
            "response.tool_choice",
        ),
        (Family.GA, {"temperature": 0.8}, "unknown_parameter", "response.temperature"),
        (
            Family.GA,
            {"modalities": ["text"]},
            "unknown_parameter",
            "response.modalities",
        ),
        (
            Family.GA,
            {"audio": {"output": {"speed": 1.0}}},
            "unknown_parameter",
            "response.audio.output.speed",
        ),
        (
            Family.GA,
            {"audio": {"input": {}}},
            "unknown_parameter",
            "response.audio.input",
        ),
        (
            Family.GA,
            {"output_modalities": ["audio", "text"]},
            "invalid_value",
            "response.output_modalities",
        ),
        (Family.GA, {"prompt": {}}, "missing_required_parameter", "response.prompt.id"),
        (
            Family.GA,
            {"tools": [{"type": "mcp"}]},
            "missing_required_parameter",
            "response.tools[0].server_label",
        ),
    ],
)
def test_invalid_overrides(
    family: Family, overrides: Any, code: str, param: str
) -> None:
    """Bad overrides are rejected with the offending parameter named."""
    result = error(family, overrides)
    assert (result.code, result.param) == (code, param)
