"""Decoding of client text frames into event objects, rejecting anything malformed.

The parser is stricter than Python's ``json`` module defaults: ``NaN`` and
``Infinity`` are not JSON, numbers overflowing a double are rejected, and so
is nesting deeper than :data:`MAX_NESTING` (which would otherwise exhaust the
stack when the event is echoed back).
"""

from __future__ import annotations

import json
import math
from typing import Any

from relay.simulator._checks import Invalid, as_str, describe


MAX_NESTING = 64
"""Deepest JSON nesting accepted in a client event. A simulator guard; Azure's
own limit is UNVERIFIED."""


def parse_client_event(text: str) -> dict[str, Any]:
    """Decode one client frame into an event object that has a ``type`` member.

    Raises:
        Invalid: ``invalid_json`` for text that is not strict JSON or nests too
            deep, ``invalid_type`` for JSON that is not an object, and
            ``missing_required_parameter`` without ``type``.
    """
    try:
        value = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, NaN/Infinity and over-long integers;
        # the C decoder raises RecursionError on extreme nesting.
        detail = str(exc)[:200] if isinstance(exc, ValueError) else "nesting too deep"
        raise Invalid(
            "invalid_json", f"The server had trouble parsing your JSON: {detail}.", None
        ) from None
    if not isinstance(value, dict):
        raise Invalid(
            "invalid_type",
            f"Invalid type for event: expected an object, but got {describe(value)} instead.",
            None,
        )
    if _deeper_than(value, MAX_NESTING):
        raise Invalid(
            "invalid_json",
            f"Events may not nest deeper than {MAX_NESTING} levels.",
            None,
        )
    if "type" not in value:
        raise Invalid(
            "missing_required_parameter", "Missing required parameter: 'type'.", "type"
        )
    return value


def client_event_id(event: dict[str, Any]) -> str | None:
    """Return the event's optional ``event_id`` (echoed in ``error.event_id``)."""
    value = event.get("event_id")
    return None if value is None else as_str(value, "event_id")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    # Iterative: a recursive walk would itself hit the recursion limit.
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return False
