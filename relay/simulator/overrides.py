"""Per-response overrides of ``response.create`` (protocol.md §3.1 and §3.2, last lines).

Pure: :func:`response_params` combines the session with the client's
``response`` object into the effective :class:`ResponseParams` of one response.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.simulator import _shapes
from relay.simulator._checks import (
    Invalid,
    as_bool,
    as_choice,
    as_list,
    as_max_tokens,
    as_metadata,
    as_number,
    as_object,
    as_str,
    check_keys,
)
from relay.simulator.audio import AudioFormat
from relay.simulator.schema import SchemaError, audio_format_of, settings
from relay.simulator.wire import Family, JSONObject


@dataclass(frozen=True)
class ResponseParams:
    """Effective settings of one response: the session's, with overrides applied."""

    audio_output: bool
    """Audio plus transcript; otherwise text only."""
    voice: str
    output_format: AudioFormat
    instructions: str
    out_of_band: bool
    """``conversation: "none"``: the output is not added to the conversation."""
    metadata: dict[str, str] | None
    max_output_tokens: int | str
    """Validated and echoed; the canned answer is far below any legal limit."""
    temperature: float | None
    """Preview only; GA has no temperature."""
    input: list[object] | None
    """Raw ``input`` items that replace the conversation as context, if given."""
    tools: tuple[JSONObject, ...] = ()
    """Validated tools the model may call (the session's, or the response's own)."""
    tool_choice: str | JSONObject = "auto"
    """Validated ``tool_choice`` (see :func:`relay.simulator.tools.choose_call`)."""


# Azure's 2024 table calls the preview limit ``max_output_tokens`` and OpenAI's
# beta ``max_response_output_tokens``; both are accepted (UNVERIFIED which Azure takes).
_PREVIEW_FIELDS = {
    "modalities",
    "instructions",
    "voice",
    "output_audio_format",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "max_output_tokens",
    "conversation",
    "metadata",
    "input",
}
_GA_FIELDS = {
    "audio",
    "conversation",
    "input",
    "instructions",
    "max_output_tokens",
    "metadata",
    "output_modalities",
    "parallel_tool_calls",
    "prompt",
    "reasoning",
    "tool_choice",
    "tools",
}


def response_params(
    family: Family, session: JSONObject, overrides: object
) -> ResponseParams | SchemaError:
    """Return the effective parameters of a response, or why ``overrides`` was rejected.

    ``overrides`` is the ``response`` member of ``response.create`` (absent or
    null means "use the session").
    """
    try:
        obj = {} if overrides is None else as_object(overrides, "response")
        if family is Family.PREVIEW:
            return _preview(session, obj)
        return _ga(session, obj)
    except Invalid as exc:
        return SchemaError(exc.code, exc.message, exc.param)


def _preview(session: JSONObject, obj: dict[str, object]) -> ResponseParams:
    check_keys(obj, "response", _PREVIEW_FIELDS)
    base = settings(Family.PREVIEW, session)
    modalities = session["modalities"]
    if "modalities" in obj:
        modalities = _shapes.preview_modalities(
            obj["modalities"], "response.modalities"
        )
    output_format = base.output_format
    if "output_audio_format" in obj:
        output_format = AudioFormat(
            as_choice(
                obj["output_audio_format"],
                "response.output_audio_format",
                tuple(AudioFormat),
            )
        )
    temperature = session["temperature"]
    if "temperature" in obj:
        temperature = as_number(
            obj["temperature"], "response.temperature", minimum=0.6, maximum=1.2
        )
    max_tokens = session["max_response_output_tokens"]
    for key in ("max_response_output_tokens", "max_output_tokens"):
        if key in obj:
            max_tokens = as_max_tokens(obj[key], f"response.{key}")
    tools, tool_choice = _tools(Family.PREVIEW, session, obj)
    return ResponseParams(
        audio_output="audio" in modalities,
        voice=_voice(
            obj.get("voice"), "response.voice", base.voice, _shapes.PREVIEW_VOICES
        ),
        output_format=output_format,
        instructions=_instructions(obj, base.instructions),
        out_of_band=_out_of_band(obj),
        metadata=as_metadata(obj.get("metadata"), "response.metadata"),
        max_output_tokens=max_tokens,
        temperature=temperature,
        input=_input(obj),
        tools=tools,
        tool_choice=tool_choice,
    )


def _ga(session: JSONObject, obj: dict[str, object]) -> ResponseParams:
    check_keys(obj, "response", _GA_FIELDS)
    base = settings(Family.GA, session)
    audio_output = base.audio_output
    if "output_modalities" in obj:
        audio_output = _shapes.ga_modalities(
            obj["output_modalities"], "response.output_modalities"
        ) == ["audio"]
    voice, output_format = base.voice, base.output_format
    if "audio" in obj:
        audio = as_object(obj["audio"], "response.audio")
        check_keys(audio, "response.audio", {"output"})
        output = as_object(audio.get("output", {}), "response.audio.output")
        check_keys(output, "response.audio.output", {"voice", "format"})
        voice = _voice(
            output.get("voice"), "response.audio.output.voice", voice, _shapes.GA_VOICES
        )
        if "format" in output:
            output_format = audio_format_of(
                _shapes.ga_audio_format(
                    output["format"], "response.audio.output.format"
                )
            )
    max_tokens = session["max_output_tokens"]
    if "max_output_tokens" in obj:
        max_tokens = as_max_tokens(
            obj["max_output_tokens"], "response.max_output_tokens"
        )
    _shapes.prompt(obj.get("prompt"), "response.prompt")
    # gpt-realtime-2 settings: validated, not echoed (the SDK's response
    # object has no such fields).
    if "reasoning" in obj:
        _shapes.reasoning(obj["reasoning"], "response.reasoning")
    if "parallel_tool_calls" in obj:
        as_bool(obj["parallel_tool_calls"], "response.parallel_tool_calls")
    tools, tool_choice = _tools(Family.GA, session, obj)
    return ResponseParams(
        audio_output=audio_output,
        voice=voice,
        output_format=output_format,
        instructions=_instructions(obj, base.instructions),
        out_of_band=_out_of_band(obj),
        metadata=as_metadata(obj.get("metadata"), "response.metadata"),
        max_output_tokens=max_tokens,
        temperature=None,
        input=_input(obj),
        tools=tools,
        tool_choice=tool_choice,
    )


def _voice(value: object, param: str, default: str, voices: tuple[str, ...]) -> str:
    return default if value is None else as_choice(value, param, voices)


def _instructions(obj: dict[str, object], default: str) -> str:
    # null means "the session's", as for the voice: LiveKit's generate_reply
    # sends ``instructions: null`` whenever it has none to add.
    value = obj.get("instructions")
    return default if value is None else as_str(value, "response.instructions")


def _out_of_band(obj: dict[str, object]) -> bool:
    return (
        as_choice(
            obj.get("conversation", "auto"), "response.conversation", ("auto", "none")
        )
        == "none"
    )


def _input(obj: dict[str, object]) -> list[object] | None:
    return as_list(obj["input"], "response.input") if "input" in obj else None


def _tools(
    family: Family, session: JSONObject, obj: dict[str, object]
) -> tuple[tuple[JSONObject, ...], str | JSONObject]:
    """The response's tools and tool choice: its own overrides, else the session's."""
    tools: list[JSONObject] = session["tools"]
    if "tools" in obj:
        tools = _shapes.tools(obj["tools"], "response.tools", family)
    choice: str | JSONObject = session["tool_choice"]
    if "tool_choice" in obj:
        choice = _shapes.tool_choice(obj["tool_choice"], "response.tool_choice", family)
    return tuple(tools), choice
