"""The session fields a policy can govern: documented schema and wire locations.

Rules are written once with the preview field names of the Azure reference
(protocol.md §3.1). This module knows, for each field, what values the
reference documents, where the field sits in a preview or GA ``session``
object and in a ``response.create`` ``response`` object (protocol.md §3.3), and
how values translate between the two families. Values are handled in their
*preview* form everywhere else in the relay; :func:`read` and :func:`write`
translate at the edges of a JSON object.

Where the reference itself was wrong (a boolean ``input_audio_noise_reduction``
and a boolean ``eagerness`` in the May 2025 tables, protocol.md §6), the
documented correction is what is enforced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from relay.typing import Family


__all__ = [
    "ABSENT",
    "ALLOW_TARGETS",
    "CLIENT_EVENT_TYPES",
    "FIELDS",
    "GA_ONLY_VOICES",
    "RANGE_TARGETS",
    "STRIP_SUB_KEY",
    "UPSTREAM_DEFAULTS",
    "VOICES",
    "Field",
    "for_family",
    "is_number",
    "put",
    "read",
    "remove",
    "same",
    "schema_error",
    "write",
]

JSON = Any
"""A value decoded from JSON (dict, list, str, int, float, bool or None)."""

PREVIEW_VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
)
GA_ONLY_VOICES: Final = ("marin", "cedar")
VOICES: Final = (*PREVIEW_VOICES, *GA_ONLY_VOICES)
"""Voices of the reference: the preview list, plus GA's marin and cedar."""
AUDIO_FORMATS: Final = ("pcm16", "g711_ulaw", "g711_alaw")
_GA_FORMATS: Final[Mapping[str, Mapping[str, JSON]]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
EAGERNESS: Final = ("low", "medium", "high", "auto")
NOISE_REDUCTION: Final = ("near_field", "far_field")
TOOL_CHOICES: Final = ("auto", "none", "required")
MAX_TOKENS: Final = 4096
REASONING_EFFORTS: Final = ("minimal", "low", "medium", "high", "xhigh")

CLIENT_EVENT_TYPES: Final = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
        "output_audio_buffer.clear",
        "transcription_session.update",
    }
)
"""Client event types of both families (protocol.md §4.1)."""


def is_number(value: object) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def same(left: JSON, right: JSON) -> bool:
    """JSON equality that tells ``true`` from ``1`` and ``1`` from ``1.0`` apart only by value."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if is_number(left) and is_number(right):
        return bool(left == right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(
            same(left[k], right[k]) for k in left
        )
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            same(a, b) for a, b in zip(left, right, strict=True)
        )
    return type(left) is type(right) and bool(left == right)


# --- Documented schema of each field (preview form) ------------------------------


def _one_of(choices: tuple[str, ...]) -> Callable[[JSON], str | None]:
    def check(value: JSON) -> str | None:
        return (
            None
            if isinstance(value, str) and value in choices
            else "one of " + ", ".join(choices)
        )

    return check


def _noise_reduction(value: JSON) -> str | None:
    expected = "null or {type: near_field|far_field} (not a boolean)"
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or set(value) != {"type"}
        or value["type"] not in NOISE_REDUCTION
    ):
        return expected
    return None


_VAD_COMMON: Final = {"type", "create_response", "interrupt_response"}
_SERVER_VAD: Final = _VAD_COMMON | {
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "idle_timeout_ms",
}
_SEMANTIC_VAD: Final = _VAD_COMMON | {"eagerness"}


def _turn_detection(value: JSON) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return "null or a turn_detection object"
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        return "turn_detection.type server_vad or semantic_vad"
    allowed = _SERVER_VAD if kind == "server_vad" else _SEMANTIC_VAD
    unknown = sorted(set(value) - allowed)
    if unknown:
        if unknown[0] == "eagerness":
            return "eagerness only with type semantic_vad"
        return f"no {unknown[0]!r} in a {kind} turn_detection"
    for flag in ("create_response", "interrupt_response"):
        if flag in value and not isinstance(value[flag], bool):
            return f"{flag} a boolean"
    if "threshold" in value and not (
        is_number(value["threshold"]) and 0 <= value["threshold"] <= 1
    ):
        return "threshold a number from 0 to 1"
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in value and not (
            isinstance(value[key], int)
            and not isinstance(value[key], bool)
            and value[key] >= 0
        ):
            return f"{key} a non-negative integer"
    idle = value.get("idle_timeout_ms")
    if idle is not None and not (
        isinstance(idle, int) and not isinstance(idle, bool) and 5000 <= idle <= 30000
    ):
        return "idle_timeout_ms null or an integer from 5000 to 30000"
    if "eagerness" in value and value["eagerness"] not in EAGERNESS:
        return "eagerness one of low, medium, high, auto (not a boolean)"
    return None


def _transcription(value: JSON) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= {"model", "language", "prompt"}:
        return "null or {model, language, prompt}"
    if not all(isinstance(v, str) for v in value.values()):
        return "string model, language and prompt"
    return None


def _modalities(value: JSON) -> str | None:
    if isinstance(value, list) and sorted(value) in (["text"], ["audio", "text"]):
        return None
    return '["text"] or ["text", "audio"]'


def _string(value: JSON) -> str | None:
    return None if isinstance(value, str) else "a string"


def _tools(value: JSON) -> str | None:
    if isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("type"), str) for t in value
    ):
        return None
    return "a list of tool objects with a type"


def _tool_choice(value: JSON) -> str | None:
    if value in TOOL_CHOICES or (
        isinstance(value, dict) and isinstance(value.get("type"), str)
    ):
        return None
    return "auto, none, required or a tool object"


def _temperature(value: JSON) -> str | None:
    return (
        None if is_number(value) and 0.6 <= value <= 1.2 else "a number from 0.6 to 1.2"
    )


def _max_tokens(value: JSON) -> str | None:
    if value == "inf" or (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 1 <= value <= MAX_TOKENS
    ):
        return None
    return f'an integer from 1 to {MAX_TOKENS} or "inf"'


def _reasoning(value: JSON) -> str | None:
    expected = "null or {effort: " + "|".join(REASONING_EFFORTS) + "}"
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not set(value) <= {"effort"}
        or ("effort" in value and value["effort"] not in REASONING_EFFORTS)
    ):
        return expected
    return None


def _truncation(value: JSON) -> str | None:
    expected = "auto, disabled or {type: retention_ratio, retention_ratio: 0..1, token_limits: {post_instructions}}"
    if value in ("auto", "disabled"):
        return None
    if not isinstance(value, dict) or value.get("type") != "retention_ratio":
        return expected
    if not set(value) <= {"type", "retention_ratio", "token_limits"}:
        return expected
    ratio: JSON = value.get("retention_ratio")
    if not is_number(ratio) or not 0 <= ratio <= 1:
        return expected
    limits = value.get("token_limits", {})
    if not isinstance(limits, dict) or not set(limits) <= {"post_instructions"}:
        return expected
    post = limits.get("post_instructions", 0)
    if not (isinstance(post, int) and not isinstance(post, bool) and post >= 0):
        return expected
    return None


# --- Family translation of values ------------------------------------------------


def _modalities_to_ga(value: JSON) -> JSON:
    # GA has one output modality: audio (with its transcript) or text.
    return ["text"] if value == ["text"] else ["audio"]


def _modalities_from_ga(value: JSON) -> JSON:
    return (
        ["text"]
        if value == ["text"]
        else ["text", "audio"]
        if value == ["audio"]
        else value
    )


def _format_to_ga(value: JSON) -> JSON:
    return (
        dict(_GA_FORMATS[value])
        if isinstance(value, str) and value in _GA_FORMATS
        else value
    )


def _format_from_ga(value: JSON) -> JSON:
    if isinstance(value, dict):
        for name, shape in _GA_FORMATS.items():
            if value.get("type") == shape["type"]:
                return name
    return value


def _identity(value: JSON) -> JSON:
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """A governed session field and where it lives on the wire."""

    name: str
    check: Callable[[JSON], str | None]
    """``None`` when a value is documented, else what was expected."""
    ga_path: tuple[str, ...] | None
    """Path inside a GA ``session``; ``None``: the field does not exist in GA."""
    preview_response_keys: tuple[str, ...] = ()
    """Keys inside a preview ``response.create`` ``response`` (none: session only)."""
    ga_response_path: tuple[str, ...] | None = None
    """Path inside a GA ``response.create`` ``response``."""
    to_ga: Callable[[JSON], JSON] = _identity
    from_ga: Callable[[JSON], JSON] = _identity
    preview: bool = True
    """Whether the field exists in the preview family (GA-only fields do not)."""


FIELDS: Final[Mapping[str, Field]] = {
    field.name: field
    for field in (
        Field(
            "input_audio_noise_reduction",
            _noise_reduction,
            ("audio", "input", "noise_reduction"),
        ),
        Field("turn_detection", _turn_detection, ("audio", "input", "turn_detection")),
        Field(
            "voice",
            _one_of(VOICES),
            ("audio", "output", "voice"),
            ("voice",),
            ("audio", "output", "voice"),
        ),
        Field(
            "instructions",
            _string,
            ("instructions",),
            ("instructions",),
            ("instructions",),
        ),
        Field(
            "modalities",
            _modalities,
            ("output_modalities",),
            ("modalities",),
            ("output_modalities",),
            _modalities_to_ga,
            _modalities_from_ga,
        ),
        Field(
            "input_audio_format",
            _one_of(AUDIO_FORMATS),
            ("audio", "input", "format"),
            to_ga=_format_to_ga,
            from_ga=_format_from_ga,
        ),
        Field(
            "output_audio_format",
            _one_of(AUDIO_FORMATS),
            ("audio", "output", "format"),
            ("output_audio_format",),
            ("audio", "output", "format"),
            _format_to_ga,
            _format_from_ga,
        ),
        Field(
            "input_audio_transcription",
            _transcription,
            ("audio", "input", "transcription"),
        ),
        Field("tools", _tools, ("tools",), ("tools",), ("tools",)),
        Field(
            "tool_choice",
            _tool_choice,
            ("tool_choice",),
            ("tool_choice",),
            ("tool_choice",),
        ),
        # GA has no temperature (protocol.md §3.2).
        Field("temperature", _temperature, None, ("temperature",), None),
        Field(
            "max_response_output_tokens",
            _max_tokens,
            ("max_output_tokens",),
            # OpenAI's beta name, and the name Azure's 2024 table used (§3.1).
            ("max_response_output_tokens", "max_output_tokens"),
            ("max_output_tokens",),
        ),
        # GA only (protocol.md §3.2, the openai SDK's GA session types): never
        # sent to a preview upstream.
        Field(
            "reasoning",
            _reasoning,
            ("reasoning",),
            ga_response_path=("reasoning",),
            preview=False,
        ),
        Field("truncation", _truncation, ("truncation",), preview=False),
    )
}
"""Every governed field, by preview name (GA's name for GA-only fields)."""

ALLOW_TARGETS: Final[Mapping[str, Callable[[JSON], str | None]]] = {
    "voice": _one_of(VOICES),
    "input_audio_format": _one_of(AUDIO_FORMATS),
    "output_audio_format": _one_of(AUDIO_FORMATS),
    "tool_choice": _one_of(TOOL_CHOICES),
    "modalities": _one_of(("text", "audio")),
    # A null object is checked as type "none".
    "turn_detection.type": _one_of(("server_vad", "semantic_vad", "none")),
    "turn_detection.eagerness": _one_of(EAGERNESS),
    "input_audio_noise_reduction.type": _one_of((*NOISE_REDUCTION, "none")),
    "input_audio_transcription.model": _string,
    "input_audio_transcription.language": _string,
    "reasoning.effort": _one_of(REASONING_EFFORTS),
}
"""Targets of ``allow`` rules and the check of each allowed value.

``modalities`` is allowed per element: every requested modality must be listed.
"""

STRIP_SUB_KEY: Final = frozenset(
    {"turn_detection.eagerness", "input_audio_transcription.language"}
)
"""Allow targets whose offending sub-key alone is stripped (the object stays valid
without it); stripping any other target removes the whole field."""

UPSTREAM_DEFAULTS: Final[Mapping[str, JSON]] = {
    "tools": [],
    "tool_choice": "auto",
    "input_audio_noise_reduction": None,
    "max_response_output_tokens": "inf",
}
"""Documented session defaults of both families (protocol.md §3.1, §3.2): the
value a field keeps when neither the relay nor the client has set it."""

RANGE_TARGETS: Final[Mapping[str, tuple[float, float, bool]]] = {
    "temperature": (0.6, 1.2, False),
    "max_response_output_tokens": (1, MAX_TOKENS, True),
    "turn_detection.threshold": (0.0, 1.0, False),
    "turn_detection.prefix_padding_ms": (0, 10_000, True),
    "turn_detection.silence_duration_ms": (0, 10_000, True),
    "turn_detection.idle_timeout_ms": (5000, 30_000, True),
}
"""Targets of ``range`` rules: documented bounds and whether values are integers."""


def schema_error(name: str, value: JSON) -> str | None:
    """What the reference expects of field ``name``, if ``value`` is not documented."""
    return FIELDS[name].check(value)


ABSENT: Final = object()
"""Marks a value that is not there (a field a family lacks, a missing key)."""


def _get(obj: Mapping[str, JSON], path: tuple[str, ...]) -> JSON:
    current: JSON = obj
    for key in path:
        if not isinstance(current, dict) or key not in current:
            return ABSENT
        current = current[key]
    return current


def _paths(field: Field, family: Family, *, response: bool) -> list[tuple[str, ...]]:
    if family == "preview":
        if response:
            return [(key,) for key in field.preview_response_keys]
        return [(field.name,)] if field.preview else []
    path = field.ga_response_path if response else field.ga_path
    return [path] if path is not None else []


def read(
    container: Mapping[str, JSON], field: Field, family: Family, *, response: bool
) -> list[tuple[str, JSON]]:
    """The values of ``field`` present in ``container``, in preview form.

    ``container`` is a ``session`` object, or a ``response`` object when
    ``response`` is true. Returns ``(wire path, value)`` pairs: usually zero or
    one, two when a preview response carries both max-token spellings. Where
    the family's form is the preview form (every field but the formats and
    modalities), the value is the very object in ``container``.
    """
    found: list[tuple[str, JSON]] = []
    for path in _paths(field, family, response=response):
        value = _get(container, path)
        if value is not ABSENT:
            found.append(
                (".".join(path), value if family == "preview" else field.from_ga(value))
            )
    return found


def write(
    container: dict[str, JSON],
    field: Field,
    family: Family,
    value: JSON,
    *,
    response: bool,
) -> bool:
    """Set ``field`` to ``value`` (preview form) in ``container``; whether it exists there.

    In a preview response, every max-token spelling present is overwritten
    (the canonical one when none is).
    """
    paths = _paths(field, family, response=response)
    if not paths:
        return False
    if family == "preview":
        present = [path for path in paths if path[0] in container]
        for (key,) in present or paths[:1]:
            container[key] = value
        return True
    [path] = paths
    put(container, path, field.to_ga(value))
    return True


def put(container: dict[str, JSON], path: tuple[str, ...], value: JSON) -> None:
    """Set ``value`` at ``path`` in ``container``, making (or replacing) the
    objects on the way: a non-object in the way is replaced by an object."""
    target = container
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = {}
            target[key] = child
        target = child
    target[path[-1]] = value


def remove(
    container: dict[str, JSON], field: Field, family: Family, *, response: bool
) -> None:
    """Take every occurrence of ``field`` out of ``container``.

    GA objects the removal leaves empty (``audio.input`` holding only the
    removed field) go too, so what is forwarded is what the client sent minus
    the field, not a new empty object.
    """
    for path in _paths(field, family, response=response):
        parents: list[dict[str, JSON]] = [container]
        for key in path[:-1]:
            child = parents[-1].get(key)
            if not isinstance(child, dict):
                break
            parents.append(child)
        else:
            if parents[-1].pop(path[-1], ABSENT) is ABSENT:
                continue
            for depth in range(len(parents) - 1, 0, -1):
                if parents[depth]:
                    break
                del parents[depth - 1][path[depth - 1]]


def for_family(name: str, value: JSON, family: Family) -> JSON:
    """``value`` (preview form) as a session of ``family`` may receive it, or :data:`ABSENT`.

    What a relay's own ``set``/``default`` value may carry that a preview
    upstream refuses is taken out for preview sessions: a GA-only field as a
    whole, ``idle_timeout_ms`` in ``turn_detection``, MCP tools, an MCP
    ``tool_choice``, and the GA-only voices. A field GA lacks (``temperature``)
    is absent in GA.
    """
    field = FIELDS[name]
    if family == "ga":
        return value if field.ga_path is not None else ABSENT
    if not field.preview:
        return ABSENT
    if name == "voice" and value in GA_ONLY_VOICES:
        return ABSENT
    if name == "turn_detection" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "idle_timeout_ms"}
    if name == "tools" and isinstance(value, list):
        return [t for t in value if isinstance(t, dict) and t.get("type") == "function"]
    if name == "tool_choice" and isinstance(value, dict) and value.get("type") == "mcp":
        return ABSENT
    return value
