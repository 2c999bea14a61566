"""Validators of the session sub-objects both protocol families share (protocol.md §3).

Each validator takes the client's value and the dotted ``param`` path, and
returns the normalised value the session stores (defaults filled in), or
raises :class:`~relay.simulator._checks.Invalid`.
"""

from __future__ import annotations

from typing import Any

from relay.simulator._checks import (
    Invalid,
    as_bool,
    as_choice,
    as_int,
    as_list,
    as_number,
    as_object,
    as_optional_str,
    as_str,
    check_keys,
    invalid_type,
    missing,
)
from relay.simulator.wire import Family, JSONObject


PREVIEW_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse")
GA_VOICES = (*PREVIEW_VOICES, "marin", "cedar")
TRANSCRIPTION_MODELS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-4o-mini-transcribe-2025-12-15",
)
EAGERNESS = ("low", "medium", "high", "auto")
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")
"""Azure documents the first four for GPT Realtime 2.x; the openai SDK adds xhigh."""

DEFAULT_TURN_DETECTION: JSONObject = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    # Docs disagree (500 vs 200); Azure's session.created samples show 200.
    "silence_duration_ms": 200,
    "create_response": True,
    "interrupt_response": True,
}


def preview_modalities(value: object, param: str) -> list[str]:
    """``["text", "audio"]`` (either order) or ``["text"]``; audio alone is not allowed."""
    modalities = [
        as_choice(m, f"{param}[{i}]", ("text", "audio"))
        for i, m in enumerate(as_list(value, param))
    ]
    if sorted(modalities) not in (["audio", "text"], ["text"]):
        raise Invalid(
            "invalid_value",
            f"Invalid '{param}': supported combinations are ['text', 'audio'] and ['text'].",
            param,
        )
    return modalities


def ga_modalities(value: object, param: str) -> list[str]:
    """Exactly one of ``["audio"]`` (audio plus transcript) or ``["text"]``."""
    modalities = [
        as_choice(m, f"{param}[{i}]", ("text", "audio"))
        for i, m in enumerate(as_list(value, param))
    ]
    if len(modalities) != 1:
        raise Invalid(
            "invalid_value",
            f"Invalid '{param}': use either ['audio'] or ['text'].",
            param,
        )
    return modalities


def noise_reduction(value: object, param: str) -> JSONObject | None:
    """``null`` or ``{"type": "near_field" | "far_field"}`` (protocol.md §6)."""
    if value is None:
        return None
    if isinstance(value, bool):
        # Azure's May-2025 reference typed this field as a boolean by mistake and
        # clients copied it; the service wants the settings object.
        raise invalid_type(
            value, param, "an object like {'type': 'near_field'} or null"
        )
    obj = as_object(value, param)
    check_keys(obj, param, {"type"}, required={"type"})
    return {
        "type": as_choice(obj["type"], f"{param}.type", ("near_field", "far_field"))
    }


def transcription(value: object, param: str) -> JSONObject | None:
    """``null`` or ``{model, language, prompt}``; the model defaults to whisper-1."""
    if value is None:
        return None
    obj = as_object(value, param)
    check_keys(obj, param, {"model", "language", "prompt"})
    return {
        "model": as_choice(
            obj.get("model", "whisper-1"), f"{param}.model", TRANSCRIPTION_MODELS
        ),
        "language": as_optional_str(obj.get("language"), f"{param}.language"),
        "prompt": as_optional_str(obj.get("prompt"), f"{param}.prompt"),
    }


def turn_detection(value: object, param: str, family: Family) -> JSONObject | None:
    """``null``, ``server_vad`` or ``semantic_vad`` settings, defaults filled in.

    ``threshold``/``prefix_padding_ms``/``silence_duration_ms`` belong to
    server_vad only and ``eagerness`` to semantic_vad only (protocol.md §6).
    Preview also takes ``{"type": "none"}`` (sent by rtclient); it is echoed
    back as given, because whether Azure echoes it or ``null`` is UNVERIFIED.
    """
    if value is None:
        return None
    obj = as_object(value, param)
    kinds: tuple[str, ...] = ("server_vad", "semantic_vad")
    if family is Family.PREVIEW:
        kinds = (*kinds, "none")
    kind = as_choice(obj.get("type", "server_vad"), f"{param}.type", kinds)
    common = {"type", "create_response", "interrupt_response"}
    if kind == "none":
        check_keys(obj, param, {"type"})
        return {"type": "none"}
    if kind == "semantic_vad":
        check_keys(obj, param, common | {"eagerness"})
        result: JSONObject = {
            "type": kind,
            "eagerness": as_choice(
                obj.get("eagerness", "auto"), f"{param}.eagerness", EAGERNESS
            ),
        }
    else:
        server_fields = {"threshold", "prefix_padding_ms", "silence_duration_ms"}
        if family is Family.GA:
            server_fields.add("idle_timeout_ms")
        check_keys(obj, param, common | server_fields)
        result = {
            "type": kind,
            "threshold": as_number(
                obj.get("threshold", 0.5),
                f"{param}.threshold",
                minimum=0.0,
                maximum=1.0,
            ),
            "prefix_padding_ms": as_int(
                obj.get("prefix_padding_ms", 300),
                f"{param}.prefix_padding_ms",
                minimum=0,
            ),
            "silence_duration_ms": as_int(
                obj.get("silence_duration_ms", 200),
                f"{param}.silence_duration_ms",
                minimum=0,
            ),
        }
        if family is Family.GA:
            idle = obj.get("idle_timeout_ms")
            result["idle_timeout_ms"] = (
                None
                if idle is None
                else as_int(
                    idle, f"{param}.idle_timeout_ms", minimum=5000, maximum=30000
                )
            )
    result["create_response"] = as_bool(
        obj.get("create_response", True), f"{param}.create_response"
    )
    result["interrupt_response"] = as_bool(
        obj.get("interrupt_response", True), f"{param}.interrupt_response"
    )
    return result


_MCP_STRING_FIELDS = (
    "server_url",
    "authorization",
    "connector_id",
    "server_description",
)


def tools(value: object, param: str, family: Family) -> list[JSONObject]:
    """Function tools (both families) and MCP tools (GA only)."""
    result: list[JSONObject] = []
    kinds = ("function", "mcp") if family is Family.GA else ("function",)
    for index, raw in enumerate(as_list(value, param)):
        where = f"{param}[{index}]"
        tool = as_object(raw, where)
        if "type" not in tool:
            raise missing(f"{where}.type")
        kind = as_choice(tool["type"], f"{where}.type", kinds)
        if kind == "function":
            check_keys(
                tool, where, {"type", "name", "description", "parameters"}, {"name"}
            )
            as_str(tool["name"], f"{where}.name")
            as_optional_str(tool.get("description"), f"{where}.description")
            if "parameters" in tool:
                as_object(tool["parameters"], f"{where}.parameters")
        else:
            known = {
                "type",
                "server_label",
                "require_approval",
                "allowed_tools",
                "headers",
            }
            check_keys(tool, where, known.union(_MCP_STRING_FIELDS), {"server_label"})
            as_str(tool["server_label"], f"{where}.server_label")
            for key in _MCP_STRING_FIELDS:
                as_optional_str(tool.get(key), f"{where}.{key}")
            if tool.get("allowed_tools") is not None:
                _allowed_tools(tool["allowed_tools"], f"{where}.allowed_tools")
        result.append(dict(tool))
    return result


def _allowed_tools(value: object, param: str) -> None:
    """A list of tool names, or a filter ``{tool_names, read_only}``."""
    if isinstance(value, list):
        for index, name in enumerate(value):
            as_str(name, f"{param}[{index}]")
        return
    obj = as_object(value, param)
    check_keys(obj, param, {"tool_names", "read_only"})
    if "tool_names" in obj:
        _allowed_tools(as_list(obj["tool_names"], f"{param}.tool_names"), param)
    if "read_only" in obj:
        as_bool(obj["read_only"], f"{param}.read_only")


def reasoning(value: object, param: str) -> JSONObject | None:
    """``null`` or ``{"effort": "minimal" | "low" | "medium" | "high" | "xhigh"}`` (GA)."""
    if value is None:
        return None
    obj = as_object(value, param)
    check_keys(obj, param, {"effort"})
    if "effort" not in obj:
        return {}
    return {"effort": as_choice(obj["effort"], f"{param}.effort", REASONING_EFFORTS)}


def tool_choice(value: object, param: str, family: Family) -> str | JSONObject:
    """``auto``/``none``/``required`` or a named function (or GA MCP) tool.

    Preview takes Azure's ``{"type": "function", "function": {"name": …}}`` and
    OpenAI's flat ``{"type": "function", "name": …}``; GA only the flat shape.
    """
    if isinstance(value, str):
        return as_choice(value, param, ("auto", "none", "required"))
    obj = as_object(value, param)
    kinds = ("function", "mcp") if family is Family.GA else ("function",)
    if "type" not in obj:
        raise missing(f"{param}.type")
    kind = as_choice(obj["type"], f"{param}.type", kinds)
    if kind == "mcp":
        check_keys(obj, param, {"type", "server_label", "name"}, {"server_label"})
        as_str(obj["server_label"], f"{param}.server_label")
        as_optional_str(obj.get("name"), f"{param}.name")
    elif family is Family.PREVIEW and "function" in obj:
        check_keys(obj, param, {"type", "function"})
        function = as_object(obj["function"], f"{param}.function")
        check_keys(function, f"{param}.function", {"name"}, {"name"})
        as_str(function["name"], f"{param}.function.name")
    else:
        check_keys(obj, param, {"type", "name"}, {"name"})
        as_str(obj["name"], f"{param}.name")
    return dict(obj)


def ga_audio_format(value: object, param: str) -> JSONObject:
    """``{type: "audio/pcm", rate: 24000}``, ``{type: "audio/pcmu"}`` or ``{type: "audio/pcma"}``."""
    obj = as_object(value, param)
    check_keys(obj, param, {"type", "rate"}, {"type"})
    kind = as_choice(
        obj["type"], f"{param}.type", ("audio/pcm", "audio/pcmu", "audio/pcma")
    )
    if kind != "audio/pcm":
        check_keys(obj, param, {"type"})
        return {"type": kind}
    if "rate" in obj and obj["rate"] != 24000:
        raise Invalid(
            "invalid_value",
            f"Invalid '{param}.rate': only 24000 is supported.",
            f"{param}.rate",
        )
    return {"type": kind, "rate": 24000}


def truncation(value: object, param: str) -> str | JSONObject:
    """``auto``, ``disabled`` or a ``retention_ratio`` object."""
    if isinstance(value, str):
        return as_choice(value, param, ("auto", "disabled"))
    obj = as_object(value, param)
    check_keys(
        obj,
        param,
        {"type", "retention_ratio", "token_limits"},
        {"type", "retention_ratio"},
    )
    as_choice(obj["type"], f"{param}.type", ("retention_ratio",))
    result: JSONObject = {
        "type": "retention_ratio",
        "retention_ratio": as_number(
            obj["retention_ratio"], f"{param}.retention_ratio", minimum=0.0, maximum=1.0
        ),
    }
    if "token_limits" in obj:
        limits = as_object(obj["token_limits"], f"{param}.token_limits")
        check_keys(limits, f"{param}.token_limits", {"post_instructions"})
        result["token_limits"] = {
            key: as_int(limit, f"{param}.token_limits.{key}", minimum=0)
            for key, limit in limits.items()
        }
    return result


def prompt(value: object, param: str) -> JSONObject | None:
    """``null`` or a stored-prompt reference ``{id, version, variables}``."""
    if value is None:
        return None
    obj = as_object(value, param)
    check_keys(obj, param, {"id", "version", "variables"}, {"id"})
    as_str(obj["id"], f"{param}.id")
    as_optional_str(obj.get("version"), f"{param}.version")
    if obj.get("variables") is not None:
        as_object(obj["variables"], f"{param}.variables")
    return dict(obj)


def include(value: object, param: str) -> list[str] | None:
    """``null`` or a list of ``item.input_audio_transcription.logprobs``."""
    if value is None:
        return None
    choices = ("item.input_audio_transcription.logprobs",)
    return [
        as_choice(entry, f"{param}[{i}]", choices)
        for i, entry in enumerate(as_list(value, param))
    ]


def tracing(value: object, param: str) -> Any:
    """``null``, ``"auto"`` or ``{workflow_name, group_id, metadata}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return as_choice(value, param, ("auto",))
    obj = as_object(value, param)
    check_keys(obj, param, {"workflow_name", "group_id", "metadata"})
    as_optional_str(obj.get("workflow_name"), f"{param}.workflow_name")
    as_optional_str(obj.get("group_id"), f"{param}.group_id")
    if obj.get("metadata") is not None:
        as_object(obj["metadata"], f"{param}.metadata")
    return dict(obj)
