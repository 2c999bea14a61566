"""Reading client events strictly, and writing the relay's own events.

What the upstream acts on must be exactly what the policy inspected. A JSON
document that two parsers could read differently is therefore refused:
duplicate keys (parsers keep the first or the last), ``NaN``/``Infinity``
(not JSON) and numbers too large for a double. Events the policy governs are
re-serialized from the parsed value before they go upstream.

**Complexity is bounded before anything is parsed.** A message of up to
``limits.max_message_bytes`` (16 MiB) could hold millions of values, each an
allocation and a slice of the event loop that every other session waits for.
:func:`complexity_error` refuses, before the parser runs:

- objects and arrays nested more than :data:`MAX_DEPTH` (64) deep;
- more than :data:`MAX_VALUES` (32,768) values plus object keys (``[0,0,...]``,
  ``{"a":0,"b":0,...}``; past 64 KiB of text, an empty object or array
  counts twice);
- more than :data:`MAX_ESCAPES` (1,048,576) backslashes.

It takes time linear in the text, in a few passes of ``str``/``bytes``
methods, plus one Python step per string when the text has escapes (and
strings are values, so at most :data:`MAX_VALUES` steps). Every value or key
but the outermost follows one of ``[ { , :`` outside the strings, so the
count of those, plus one, bounds them. A text under ``2 * MAX_VALUES``
characters cannot exceed the bound (each value takes a character of its own
besides the one before it) and is counted for nesting only. Otherwise the
strings are cut out (split at the quotes; with escapes, each string read by
:mod:`json`'s C scanner), what remains is reduced to its ``[ ] { } , :``
(``bytes.translate``) and counted, and its depth is the largest running sum
of its brackets as +1 and -1. For a malformed text the counts are exact up to
its first error, which is where the parser stops. docs/performance.md has
the costs.

Upstream frames are trusted to mean what they say but not to be cheap:
:func:`parse_upstream` applies the same bounds, with
:data:`UPSTREAM_MAX_VALUES`.

Audio appends are most of what clients send (50 a second per session), so
:func:`plain_append` recognises them with the C parser alone (no hook per
object, no complexity pass), but only in a form no JSON parser can read any
other way: an object of the members ``type``, ``audio`` and optionally
``event_id``, each once, with string values, and no escape anywhere. Anything
else takes the full parse.
"""

from __future__ import annotations

import json
import math
import sys
from itertools import accumulate
from json.decoder import scanstring  # type: ignore[attr-defined]  # not in typeshed
from typing import Any, Final

from relay.sansio.fields import JSON


__all__ = [
    "MAX_DEPTH",
    "MAX_ESCAPES",
    "MAX_VALUES",
    "UPSTREAM_MAX_VALUES",
    "InvalidEvent",
    "complexity_error",
    "dump",
    "error_event",
    "parse_event",
    "parse_upstream",
    "plain_append",
]

MAX_DEPTH: Final = 64
"""Most objects and arrays nested in one another in an event; realtime events use fewer than 12."""

MAX_VALUES: Final = 32_768
"""Most values (objects, arrays, strings, numbers, literals) plus object keys in
one client event. A ``session.update`` with 128 tools, each with a
JSON-schema of 8 parameters, holds about 18,000; this many of the costliest
values (floats like ``1e-400``, each a correctly rounded conversion) take the
parser about 30 ms (docs/performance.md)."""

UPSTREAM_MAX_VALUES: Final = 4 * MAX_VALUES
"""The same bound for upstream events: ``session.updated`` echoes a client's
whole configuration, with the defaults added."""

MAX_ESCAPES: Final = 1 << 20
"""Most backslashes in one client event. A 16 MiB data URL from an encoder that
escapes every ``/`` holds about 260,000; 8 million (16 MiB of ``\\n``) would
cost the parser alone about 45 ms."""

_LARGEST_DOUBLE: Final = int(sys.float_info.max)
_DOUBLE_DIGITS: Final = len(str(_LARGEST_DOUBLE))
"""Decimal digits of the largest double (about 1.8e308): 309."""


class InvalidEvent(ValueError):
    """A client frame is not a well-formed realtime event; the message says why."""


# What is left of a JSON text without its strings, numbers and literals.
_NOT_STRUCTURE: Final = bytes(sorted(set(range(256)) - set(b",:[]{}")))
# Opening brackets as 1, closing ones as -1 (a signed byte): the running sum is
# the depth.
_SIGNS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def complexity_error(
    text: str, *, max_values: int = MAX_VALUES, max_depth: int = MAX_DEPTH
) -> str | None:
    """Why ``text`` is too complex to parse, or ``None`` if it is within the bounds.

    Linear in ``len(text)`` (see the module docstring for how); exact for a
    JSON text, and for a malformed one exact up to its first error. ``None``
    promises that parsing ``text`` meets at most ``max_values`` values plus
    keys, ``max_depth`` nested objects and arrays and :data:`MAX_ESCAPES`
    backslashes before it ends or fails.
    """
    if len(text) < 2 * max_values and text.count("[") + text.count("{") <= max_depth:
        # Each value or key needs a character of its own besides the one
        # before it, so this text cannot hold more than max_values of them.
        return None
    # Each copy below is let go as soon as the next exists, so that a 16 MiB
    # message costs about 32 MiB more at the peak, not four times that.
    if "\\" not in text:
        outside = _outside_quotes(text, max_values)
    elif text.count("\\") > MAX_ESCAPES:
        return "the event has too many escaped characters"
    else:
        outside = _outside_strings(text, max_values)
    if outside is None:
        return "the event has too many values"
    data = outside.encode("utf-8", "surrogatepass")
    del outside
    structure = data.translate(None, _NOT_STRUCTURE)
    del data
    # Each value or key but the first follows one of [ { , : and no value
    # brings more than three of them with its closing bracket.
    if len(structure) > 3 * max_values:
        return "the event has too many values"
    closes = structure.count(b"]") + structure.count(b"}")
    if len(structure) - closes + 1 > max_values:
        return "the event has too many values"
    if structure.count(b"[") + structure.count(b"{") <= max_depth:
        return None
    signs = memoryview(structure.translate(_SIGNS, b",:")).cast("b")
    if max(accumulate(signs), default=0) > max_depth:
        return "the event is nested too deeply"
    return None


def _outside_quotes(text: str, max_strings: int) -> str | None:
    """``text`` without its strings, or ``None`` if it has more than ``max_strings``.

    For a text without escapes, where every quote delimits a string.
    """
    parts = text.split('"', 2 * max_strings + 1)
    if len(parts) > 2 * max_strings + 1:
        return None
    return "".join(parts[::2])


def _outside_strings(text: str, max_strings: int) -> str | None:
    """``text`` without its strings, or ``None`` if it has more than ``max_strings``.

    For a text with escapes: a backslash can escape a quote, so a string that
    holds one is read by the C scanner of :mod:`json`. One step per string,
    and strings are values or keys, so at most ``max_strings`` steps.
    """
    find = text.find
    parts: list[str] = []
    position = 0
    for _ in range(max_strings + 1):
        start = find('"', position)
        if start < 0:
            break
        parts.append(text[position:start])
        end = find('"', start + 1)
        if end < 0:
            return "".join(parts)  # unterminated: the parser stops in it
        if find("\\", start + 1, end) < 0:
            position = end + 1
            continue
        try:
            position = scanstring(text, start + 1)[1]
        except ValueError:  # a malformed string: the parser stops in it
            return "".join(parts)
    else:
        return None
    parts.append(text[position:])
    return "".join(parts)


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


def _integer(text: str) -> int:
    if len(text) < _DOUBLE_DIGITS:
        return int(text)
    # Checked on the digits first: converting thousands of them costs
    # quadratic time.
    if len(text) - text.startswith("-") > _DOUBLE_DIGITS:
        raise InvalidEvent("a number is too large")
    value = int(text)
    if abs(value) > _LARGEST_DOUBLE:
        raise InvalidEvent("a number is too large")
    return value


def parse_event(text: str) -> dict[str, JSON]:
    """Parse one client text frame into an event object with a string ``type``.

    Raises:
        InvalidEvent: too complex (:func:`complexity_error`), malformed or
            ambiguous JSON, not an object, or no string ``type``.
    """
    reason = complexity_error(text)
    if reason is not None:
        raise InvalidEvent(reason)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_integer,
        )
    except InvalidEvent:
        raise
    except RecursionError:  # pragma: no cover - complexity_error bounds the depth
        raise InvalidEvent("the event is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int conversion limits
        raise InvalidEvent(f"the event is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(value, dict):
        raise InvalidEvent("a client event must be a JSON object")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidEvent("a client event needs a string 'type'")
    return value


def parse_upstream(data: str | bytes) -> dict[str, JSON] | None:
    """An upstream frame as an object, or ``None`` if it is not one within the bounds.

    Upstream frames are trusted to mean what they say (no strict checks), but
    not to be cheap: the text is bounded like a client's, with
    :data:`UPSTREAM_MAX_VALUES`.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if complexity_error(data, max_values=UPSTREAM_MAX_VALUES) is not None:
        return None
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


_DECODER: Final = json.JSONDecoder()  # strict: raw control characters refused
_PLAIN_KEYS: Final = frozenset({"type", "audio", "event_id"})
_APPEND: Final = "input_audio_buffer.append"


def plain_append(text: str) -> str | None:
    """The audio of ``text`` if it is an append event in its plain form, else ``None``.

    The plain form: a JSON object whose members are ``type`` (equal to
    ``input_audio_buffer.append``), ``audio`` and optionally ``event_id``,
    each once, with string values, and no backslash, ``[`` or second ``{``
    anywhere in ``text`` (base64 has none). For such a text :func:`parse_event` returns exactly these members, and no
    JSON parser can read anything else: without escapes every ``"`` delimits
    a string, so a document of ``n`` string members has exactly ``4 n`` of
    them, and any other member (a duplicate key among them) would add more.
    ``None`` means the caller must parse the event fully.
    """
    if not text.startswith("{") or "\\" in text:
        return None
    # Checked before parsing, so that parsing is cheap whatever the size: the
    # plain form has at most 12 quotes and no object or array inside, hence
    # at most 6 members, none a container.
    quotes = text.count('"')
    if quotes > 4 * len(_PLAIN_KEYS) or "[" in text or text.find("{", 1) >= 0:
        return None
    try:
        value, end = _DECODER.raw_decode(text)
    except ValueError:
        return None
    if (
        not isinstance(value, dict)
        or value.get("type") != _APPEND
        or not value.keys() <= _PLAIN_KEYS
        # Every key has two quotes; so has every string value, and no other
        # value has any (no escapes, no containers): all values are strings.
        or quotes != 4 * len(value)
        or text[end:].strip(" \t\n\r")
    ):
        return None
    audio = value.get("audio")
    return audio if isinstance(audio, str) else None


def dump(event: JSON) -> str:
    """Serialize an event compactly; never emits NaN or Infinity.

    The result always encodes as UTF-8: a lone surrogate, which a client can
    send as ``"\\ud800"``, is written back as that escape.
    """
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(event, separators=(",", ":"), allow_nan=False)
    return text


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
