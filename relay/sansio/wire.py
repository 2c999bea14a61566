"""Reading client events strictly, and writing the relay's own events.

What the upstream acts on must be exactly what the policy inspected. A JSON
document that two parsers could read differently is therefore refused:
duplicate keys (parsers keep the first or the last), ``NaN``/``Infinity``
(not JSON) and numbers too large for a double. Nesting deep enough to exhaust
the parser is refused too. Events the policy governs are re-serialized from
the parsed value before they go upstream.

Audio appends are most of what clients send (50 a second per session), so
:func:`plain_append` recognises them with the C parser alone (no hook per
object, no depth walk), but only in a form no JSON parser can read any other
way: an object of the members ``type``, ``audio`` and optionally
``event_id``, each once, with string values, and no escape anywhere. Anything
else takes the full parse.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from relay.sansio.fields import JSON


__all__ = ["InvalidEvent", "dump", "error_event", "parse_event", "plain_append"]

MAX_DEPTH: Final = 64
"""Deepest nesting accepted in a client event; realtime events use fewer than 10."""


class InvalidEvent(ValueError):
    """A client frame is not a well-formed realtime event; the message says why."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidEvent(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> float:
    raise InvalidEvent(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEvent("a number is too large")
    return value


def _depth(value: JSON, limit: int) -> bool:
    # Iterative, so a hostile document cannot exhaust the stack here either.
    stack: list[tuple[JSON, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return True


def parse_event(text: str) -> dict[str, JSON]:
    """Parse one client text frame into an event object with a string ``type``.

    Raises:
        InvalidEvent: malformed or ambiguous JSON, not an object, too deep, or
            no string ``type``.
    """
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
        )
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("the event is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int conversion limits
        raise InvalidEvent(f"the event is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise InvalidEvent("a client event must be a JSON object")
    if not _depth(value, MAX_DEPTH):
        raise InvalidEvent("the event is nested too deeply")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidEvent("a client event needs a string 'type'")
    return value


_DECODER: Final = json.JSONDecoder()  # strict: raw control characters refused
_PLAIN_KEYS: Final = frozenset({"type", "audio", "event_id"})
_APPEND: Final = "input_audio_buffer.append"


def plain_append(text: str) -> str | None:
    """The audio of ``text`` if it is an append event in its plain form, else ``None``.

    The plain form: a JSON object whose members are ``type`` (equal to
    ``input_audio_buffer.append``), ``audio`` and optionally ``event_id``,
    each once, with string values, and no backslash anywhere in ``text``.
    For such a text :func:`parse_event` returns exactly these members, and no
    JSON parser can read anything else: without escapes every ``"`` delimits
    a string, so a document of ``n`` string members has exactly ``4 n`` of
    them, and any other member (a duplicate key among them) would add more.
    ``None`` means the caller must parse the event fully.
    """
    if not text.startswith("{") or "\\" in text:
        return None
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        # Deep nesting exhausts the C parser's stack too: not a plain append;
        # parse_event refuses it.
        return None
    if (
        not isinstance(value, dict)
        or value.get("type") != _APPEND
        or not value.keys() <= _PLAIN_KEYS
        or not all(isinstance(member, str) for member in value.values())
        or text.count('"') != 4 * len(value)
        or text[end:].strip(" \t\n\r")
    ):
        return None
    audio = value.get("audio")
    return audio if isinstance(audio, str) else None


def dump(event: JSON) -> str:
    """Serialize an event compactly; never emits NaN or Infinity."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def error_event(
    event_id: str,
    *,
    code: str,
    message: str,
    param: str | None,
    client_event_id: JSON,
    error_type: str = "invalid_request_error",
) -> str:
    """An ``error`` server event in the shape Azure uses (protocol.md §1.4)."""
    return dump(
        {
            "type": "error",
            "event_id": event_id,
            "error": {
                "type": error_type,
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id
                if isinstance(client_event_id, str)
                else None,
            },
        }
    )
