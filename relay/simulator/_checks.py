"""Validation primitives shared by the session schema and the event handlers.

Each ``as_*`` helper returns the value with a precise type or raises
:class:`Invalid`, which carries the fields of a protocol ``error`` event.
Codes and message wording copy OpenAI's Realtime errors (``invalid_type``,
``invalid_value``, ``unknown_parameter``, ``missing_required_parameter``,
``integer_below_min_value``, ``decimal_above_max_value``, …); that Azure words
them identically is UNVERIFIED.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Sequence


class Invalid(Exception):
    """A client value failed validation."""

    def __init__(self, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.code = code
        """Machine-readable error code for ``error.code``."""
        self.message = message
        """Human-readable text for ``error.message``."""
        self.param = param
        """Dotted path of the offending parameter for ``error.param``."""


def describe(value: object) -> str:
    """Name the JSON type of ``value`` the way OpenAI's error messages do."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(value: object, param: str, expected: str) -> Invalid:
    """Return the error for ``value`` at ``param`` not being ``expected``."""
    return Invalid(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {describe(value)} instead.",
        param,
    )


def join(param: str, key: str) -> str:
    """Return the dotted path of ``key`` under ``param`` (``""`` is the event itself)."""
    return f"{param}.{key}" if param else key


def missing(param: str) -> Invalid:
    """Return the error for a missing required parameter."""
    return Invalid(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    )


def as_object(value: object, param: str) -> dict[str, object]:
    """Return ``value`` if it is a JSON object."""
    if not isinstance(value, dict):
        raise invalid_type(value, param, "an object")
    return value


def check_keys(
    obj: dict[str, object],
    param: str,
    allowed: Collection[str],
    required: Collection[str] = (),
) -> None:
    """Reject keys of ``obj`` outside ``allowed`` and absent ``required`` keys."""
    for key in obj:
        if key not in allowed:
            # Clip: the key is client-controlled and could be megabytes long.
            path = join(param, key[:64])
            raise Invalid("unknown_parameter", f"Unknown parameter: '{path}'.", path)
    for key in required:
        if key not in obj:
            raise missing(join(param, key))


def as_str(value: object, param: str) -> str:
    """Return ``value`` if it is a string."""
    if not isinstance(value, str):
        raise invalid_type(value, param, "a string")
    return value


def as_optional_str(value: object, param: str) -> str | None:
    """Return ``value`` if it is a string or null."""
    return None if value is None else as_str(value, param)


def as_bool(value: object, param: str) -> bool:
    """Return ``value`` if it is a boolean."""
    if not isinstance(value, bool):
        raise invalid_type(value, param, "a boolean")
    return value


def as_list(value: object, param: str) -> list[object]:
    """Return ``value`` if it is a JSON array."""
    if not isinstance(value, list):
        raise invalid_type(value, param, "an array")
    return value


def as_choice(value: object, param: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of the strings in ``choices``."""
    if not isinstance(value, str):
        expected = "one of " + ", ".join(repr(c) for c in choices)
        raise invalid_type(value, param, expected)
    if value not in choices:
        supported = ", ".join(f"'{c}'" for c in choices)
        raise Invalid(
            "invalid_value",
            f"Invalid value: '{value[:64]}'. Supported values are: {supported}.",
            param,
        )
    return value


def as_int(
    value: object, param: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` if it is an integer within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(value, param, "an integer")
    _check_range(value, param, minimum, maximum, "integer")
    return value


def as_number(value: object, param: str, *, minimum: float, maximum: float) -> float:
    """Return ``value`` as a float if it is a number within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_type(value, param, "a number")
    _check_range(value, param, minimum, maximum, "decimal")
    return float(value)


def _check_range(
    value: float,
    param: str,
    minimum: float | None,
    maximum: float | None,
    kind: str,
) -> None:
    if minimum is not None and value < minimum:
        raise Invalid(
            f"{kind}_below_min_value",
            f"Invalid '{param}': {kind} below minimum value. "
            f"Expected a value >= {minimum}, but got {_show(value)} instead.",
            param,
        )
    if maximum is not None and value > maximum:
        raise Invalid(
            f"{kind}_above_max_value",
            f"Invalid '{param}': {kind} above maximum value. "
            f"Expected a value <= {maximum}, but got {_show(value)} instead.",
            param,
        )


def _show(value: float) -> str:
    # A client may send a 10,000-digit integer; do not echo all of it back.
    text = str(value)
    return text if len(text) <= 32 else text[:29] + "..."


def as_max_tokens(value: object, param: str) -> int | str:
    """Return a max-output-tokens value: an integer 1–4096 or ``"inf"``."""
    if value == "inf":
        return "inf"
    if isinstance(value, str):
        raise Invalid(
            "invalid_value", f"Invalid value: '{value[:64]}'. Expected 'inf'.", param
        )
    return as_int(value, param, minimum=1, maximum=4096)


def as_metadata(value: object, param: str) -> dict[str, str] | None:
    """Return response metadata: null, or ≤16 string pairs (key ≤64, value ≤512 chars)."""
    if value is None:
        return None
    obj = as_object(value, param)
    if len(obj) > 16:
        raise Invalid(
            "invalid_value", f"Invalid '{param}': at most 16 pairs are allowed.", param
        )
    metadata: dict[str, str] = {}
    for key, item in obj.items():
        if len(key) > 64:
            raise Invalid(
                "invalid_value",
                f"Invalid '{param}': keys are limited to 64 characters.",
                param,
            )
        text = as_str(item, f"{param}.{key}")
        if len(text) > 512:
            raise Invalid(
                "invalid_value",
                f"Invalid '{param}.{key}': values are limited to 512 characters.",
                f"{param}.{key}",
            )
        metadata[key] = text
    return metadata


def as_base64(value: object, param: str) -> bytes:
    """Return the bytes of ``value`` if it is a strictly valid base64 string."""
    text = as_str(value, param)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise Invalid(
            "invalid_value", f"Invalid '{param}': expected base64-encoded audio.", param
        ) from None
