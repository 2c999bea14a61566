"""Session configuration for both protocol families: defaults, updates, overrides.

Pure functions over JSON objects. A session is stored in its wire shape (the
``session`` object of ``session.created``/``session.updated``), so echoing the
effective configuration is a copy; :func:`settings` reads the few values the
simulator acts on into a typed :class:`Settings`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.simulator import _shapes
from relay.simulator._checks import (
    Invalid,
    as_bool,
    as_choice,
    as_max_tokens,
    as_number,
    as_object,
    as_str,
    check_keys,
    missing,
)
from relay.simulator.audio import AudioFormat
from relay.simulator.wire import Family, JSONObject


DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. "
    "Act like a human, but remember that you aren't a human. "
    "This session is served by the Realtime Relay's Azure simulator."
)
"""Server-side persona, visible in ``session.created`` as on Azure (protocol.md §3.1)."""

# semantic_vad is simulated as server_vad whose silence depends on eagerness
# (a simplification: Azure's semantic VAD is a model of turn completion).
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 300}

_GA_FORMATS = {
    "audio/pcm": AudioFormat.PCM16,
    "audio/pcmu": AudioFormat.G711_ULAW,
    "audio/pcma": AudioFormat.G711_ALAW,
}
_GA_FORMAT_NAMES = {fmt: name for name, fmt in _GA_FORMATS.items()}
_PCM_GA: JSONObject = {"type": "audio/pcm", "rate": 24000}


@dataclass(frozen=True)
class SchemaError:
    """Why a configuration was rejected, as the fields of an ``error`` event."""

    code: str
    message: str
    param: str | None


@dataclass(frozen=True)
class TurnDetection:
    """Effective VAD settings; semantic_vad is mapped onto server_vad's knobs."""

    kind: Literal["server_vad", "semantic_vad"]
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool
    idle_timeout_ms: int | None = None
    """GA server_vad only: prompt the user after this much silence (see turns)."""


@dataclass(frozen=True)
class Settings:
    """The parts of a session the simulator acts on, in either family."""

    input_format: AudioFormat
    output_format: AudioFormat
    voice: str
    audio_output: bool
    instructions: str
    transcription: bool
    turn_detection: TurnDetection | None


def default_session(
    family: Family, *, session_id: str, model: str, expires_at: int
) -> JSONObject:
    """Return the session object Azure reports in ``session.created`` (protocol.md §4.4).

    ``model`` is the deployment name: the simulator cannot know which model a
    real deployment runs.
    """
    if family is Family.PREVIEW:
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "expires_at": expires_at,
            "modalities": ["text", "audio"],
            "instructions": DEFAULT_INSTRUCTIONS,
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "input_audio_noise_reduction": None,
            "turn_detection": dict(_shapes.DEFAULT_TURN_DETECTION),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "client_secret": None,
            "include": None,
        }
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(_PCM_GA),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    **_shapes.DEFAULT_TURN_DETECTION,
                    "idle_timeout_ms": None,
                },
            },
            "output": {"format": dict(_PCM_GA), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def update_session(
    family: Family, session: JSONObject, update: object, *, voice_locked: bool
) -> JSONObject | SchemaError:
    """Apply a ``session.update`` payload; return the new session or why it was rejected.

    Only fields present change (protocol.md §3.1). ``session`` itself is never
    modified, so a rejected update leaves the caller's session as it was.
    ``voice_locked`` is true once the model has produced audio: the voice is
    then immutable.
    """
    try:
        if family is Family.PREVIEW:
            updated = _update_preview(session, as_object(update, "session"))
        else:
            updated = _update_ga(session, as_object(update, "session"))
    except Invalid as exc:
        return SchemaError(exc.code, exc.message, exc.param)
    if voice_locked and _voice(family, updated) != _voice(family, session):
        return SchemaError(
            "cannot_update_voice",
            "Cannot update a conversation's voice if assistant audio is present.",
            "session.voice"
            if family is Family.PREVIEW
            else "session.audio.output.voice",
        )
    return updated


Validator = Callable[[object, str], object]

_PREVIEW_FIELDS: dict[str, Validator] = {
    "modalities": _shapes.preview_modalities,
    "instructions": as_str,
    "voice": lambda v, p: as_choice(v, p, _shapes.PREVIEW_VOICES),
    "input_audio_format": lambda v, p: as_choice(v, p, tuple(AudioFormat)),
    "output_audio_format": lambda v, p: as_choice(v, p, tuple(AudioFormat)),
    "input_audio_noise_reduction": _shapes.noise_reduction,
    "input_audio_transcription": _shapes.transcription,
    "turn_detection": lambda v, p: _shapes.turn_detection(v, p, Family.PREVIEW),
    "tools": lambda v, p: _shapes.tools(v, p, Family.PREVIEW),
    "tool_choice": lambda v, p: _shapes.tool_choice(v, p, Family.PREVIEW),
    "temperature": lambda v, p: as_number(v, p, minimum=0.6, maximum=1.2),
    "max_response_output_tokens": as_max_tokens,
}


def _update_preview(session: JSONObject, update: dict[str, object]) -> JSONObject:
    # ``model`` is accepted and ignored: the deployment in the URL decides (rtclient
    # may send it). OpenAI-only extras (speed, tracing, client_secret) are absent
    # from Azure's tables and rejected as unknown (UNVERIFIED that Azure rejects them).
    check_keys(update, "session", {*_PREVIEW_FIELDS, "model"})
    result = copy.deepcopy(session)
    for key, value in update.items():
        if key == "model":
            as_str(value, "session.model")
        else:
            result[key] = _PREVIEW_FIELDS[key](value, f"session.{key}")
    return result


_GA_TOP_FIELDS: dict[str, Validator] = {
    "instructions": as_str,
    "output_modalities": _shapes.ga_modalities,
    "tools": lambda v, p: _shapes.tools(v, p, Family.GA),
    "tool_choice": lambda v, p: _shapes.tool_choice(v, p, Family.GA),
    "max_output_tokens": as_max_tokens,
    "truncation": _shapes.truncation,
    "prompt": _shapes.prompt,
    "include": _shapes.include,
    "tracing": _shapes.tracing,
    # gpt-realtime-2 (Azure: GPT Realtime 2.x); absent from the default session.
    "reasoning": _shapes.reasoning,
    "parallel_tool_calls": as_bool,
}
_GA_INPUT_FIELDS: dict[str, Validator] = {
    "format": _shapes.ga_audio_format,
    "noise_reduction": _shapes.noise_reduction,
    "transcription": _shapes.transcription,
    "turn_detection": lambda v, p: _shapes.turn_detection(v, p, Family.GA),
}
_GA_OUTPUT_FIELDS: dict[str, Validator] = {
    "format": _shapes.ga_audio_format,
    "voice": lambda v, p: as_choice(v, p, _shapes.GA_VOICES),
    "speed": lambda v, p: as_number(v, p, minimum=0.25, maximum=1.5),
}


def _update_ga(session: JSONObject, update: dict[str, object]) -> JSONObject:
    check_keys(update, "session", {*_GA_TOP_FIELDS, "type", "model", "audio"})
    if "type" not in update:
        raise missing("session.type")  # AZ-MIG: "session configuration rejected".
    if (
        as_choice(update["type"], "session.type", ("realtime", "transcription"))
        != "realtime"
    ):
        raise Invalid(
            "invalid_value",
            "Passing a transcription session update event to a realtime session is not allowed.",
            "session.type",
        )
    result = copy.deepcopy(session)
    for key, value in update.items():
        if key in _GA_TOP_FIELDS:
            result[key] = _GA_TOP_FIELDS[key](value, f"session.{key}")
        elif key == "model":
            as_str(value, "session.model")  # Accepted and ignored, as in preview.
    if "audio" in update:
        audio = as_object(update["audio"], "session.audio")
        check_keys(audio, "session.audio", {"input", "output"})
        for part, fields in (
            ("input", _GA_INPUT_FIELDS),
            ("output", _GA_OUTPUT_FIELDS),
        ):
            if part in audio:
                where = f"session.audio.{part}"
                section = as_object(audio[part], where)
                check_keys(section, where, fields)
                for key, value in section.items():
                    result["audio"][part][key] = fields[key](value, f"{where}.{key}")
    return result


def _voice(family: Family, session: JSONObject) -> str:
    voice = (
        session["voice"]
        if family is Family.PREVIEW
        else session["audio"]["output"]["voice"]
    )
    return str(voice)


def settings(family: Family, session: JSONObject) -> Settings:
    """Read the effective, typed settings out of a session object in wire shape."""
    if family is Family.PREVIEW:
        return Settings(
            input_format=AudioFormat(session["input_audio_format"]),
            output_format=AudioFormat(session["output_audio_format"]),
            voice=session["voice"],
            audio_output="audio" in session["modalities"],
            instructions=session["instructions"],
            transcription=session["input_audio_transcription"] is not None,
            turn_detection=_turn_detection(session["turn_detection"]),
        )
    audio_in, audio_out = session["audio"]["input"], session["audio"]["output"]
    return Settings(
        input_format=audio_format_of(audio_in["format"]),
        output_format=audio_format_of(audio_out["format"]),
        voice=audio_out["voice"],
        audio_output=session["output_modalities"] == ["audio"],
        instructions=session["instructions"],
        transcription=audio_in["transcription"] is not None,
        turn_detection=_turn_detection(audio_in["turn_detection"]),
    )


def _turn_detection(stored: JSONObject | None) -> TurnDetection | None:
    if stored is None or stored["type"] == "none":
        return None
    if stored["type"] == "semantic_vad":
        return TurnDetection(
            kind="semantic_vad",
            threshold=0.5,
            prefix_padding_ms=300,
            silence_duration_ms=SEMANTIC_SILENCE_MS[stored["eagerness"]],
            create_response=stored["create_response"],
            interrupt_response=stored["interrupt_response"],
        )
    return TurnDetection(
        kind="server_vad",
        threshold=stored["threshold"],
        prefix_padding_ms=stored["prefix_padding_ms"],
        silence_duration_ms=stored["silence_duration_ms"],
        create_response=stored["create_response"],
        interrupt_response=stored["interrupt_response"],
        idle_timeout_ms=stored.get("idle_timeout_ms"),
    )


def audio_format_of(ga_format: JSONObject) -> AudioFormat:
    """Return the :class:`AudioFormat` of a validated GA format object."""
    return _GA_FORMATS[ga_format["type"]]


def ga_audio_format_object(fmt: AudioFormat) -> JSONObject:
    """Return the GA wire object (``{"type": "audio/pcm", "rate": 24000}``, …) of ``fmt``."""
    if fmt is AudioFormat.PCM16:
        return dict(_PCM_GA)
    return {"type": _GA_FORMAT_NAMES[fmt]}
