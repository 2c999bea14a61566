"""Deterministic tool calling: when the simulated model calls a tool, and with what.

Pure. A real model decides from meaning; the simulator decides by rules a test
can rely on. For one response, :func:`choose_call` picks at most one call:

* nothing when ``tool_choice`` is ``none``, or when the model already called a
  tool since the last user message (it then answers, so that one
  ``function_call_output`` and ``response.create`` complete a round trip);
* otherwise, with ``tool_choice`` ``required``, the first tool available (in
  the order of ``tools``; an MCP entry offers the tools its server listed);
* with a named choice (``{"type": "function", "name": …}``, preview's
  ``{"type": "function", "function": {"name": …}}``, or GA's
  ``{"type": "mcp", "server_label": …, "name": …}``), that tool;
* with ``auto``, the first tool whose name the last user message mentions
  (its text, or its audio's transcript), as a word, case-insensitively, with
  underscores read as spaces or not (``get_weather`` matches "Get weather").

The arguments are :func:`placeholder_arguments` of the tool's JSON schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.simulator.conversation import Item
from relay.simulator.wire import JSONObject


MAX_SCHEMA_DEPTH = 16
"""Deepest schema nesting filled in; deeper values are null (schemas are client input)."""

PLACEHOLDER_STRING = "example"
"""The value of every string argument the simulated model makes up."""


@dataclass(frozen=True)
class FunctionCall:
    """A call of a client-side function tool: the client runs it."""

    name: str
    arguments: str
    """JSON text of the arguments object."""


@dataclass(frozen=True)
class McpCall:
    """A call of a tool on an MCP server: the service runs it (GA only)."""

    server_label: str
    name: str
    arguments: str


Call = FunctionCall | McpCall


def choose_call(
    tools: Sequence[JSONObject],
    tool_choice: str | JSONObject,
    context: Sequence[Item],
    mcp_tools: Mapping[str, Sequence[JSONObject]],
) -> Call | None:
    """Return the tool call a response to ``context`` makes, or None to answer.

    ``tools`` and ``tool_choice`` are the response's (validated) settings;
    ``mcp_tools`` maps an MCP ``server_label`` to the tools its server
    listed, each ``{"name", "input_schema", …}``.
    """
    if tool_choice == "none" or _called_since_user(context):
        return None
    offered = list(_offered(tools, mcp_tools))
    if tool_choice == "required":
        return offered[0] if offered else None
    if isinstance(tool_choice, dict):
        return _forced(tool_choice, offered)
    said = _last_user_words(context)
    return next((call for call in offered if _mentions(said, call.name)), None)


def placeholder_arguments(schema: object) -> str:
    """Return the arguments the simulated model sends for a tool taking ``schema``.

    The JSON object holds the schema's required properties, each with a
    placeholder of its type: the ``const``, the first ``enum`` value or the
    ``default`` when given; else ``"example"`` for strings, the ``minimum``
    (or 1) for numbers, ``true``, ``[]`` (or ``minItems`` placeholders),
    objects filled the same way, and ``null``. Compact JSON, keys in schema order.
    """
    value = placeholder(schema if isinstance(schema, dict) else {"type": "object"})
    if not isinstance(value, dict):
        value = {}
    return json.dumps(value, separators=(",", ":"))


def placeholder(schema: object, depth: int = 0) -> Any:
    """Return a placeholder value for ``schema`` (see :func:`placeholder_arguments`)."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return placeholder(options[0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return PLACEHOLDER_STRING
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        if isinstance(minimum, int | float) and not isinstance(minimum, bool):
            return int(minimum) if kind == "integer" else float(minimum)
        return 1 if kind == "integer" else 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        count = schema.get("minItems", 0)
        count = count if isinstance(count, int) and 0 <= count <= 16 else 0
        return [placeholder(schema.get("items"), depth + 1) for _ in range(count)]
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties")
        required = schema.get("required")
        if not isinstance(properties, dict) or not isinstance(required, list):
            return {}
        return {
            name: placeholder(properties.get(name), depth + 1)
            for name in required
            if isinstance(name, str)
        }
    return None


def _offered(
    tools: Iterable[JSONObject], mcp_tools: Mapping[str, Sequence[JSONObject]]
) -> Iterable[Call]:
    """Every tool the model may call, in the order of ``tools``."""
    for tool in tools:
        if tool["type"] == "function":
            yield FunctionCall(
                tool["name"], placeholder_arguments(tool.get("parameters"))
            )
        else:
            label = tool["server_label"]
            for listed in mcp_tools.get(label, ()):
                arguments = placeholder_arguments(listed.get("input_schema"))
                yield McpCall(label, listed["name"], arguments)


def _forced(choice: JSONObject, offered: Sequence[Call]) -> Call | None:
    """The call a named ``tool_choice`` forces."""
    if choice["type"] == "mcp":
        label, name = choice["server_label"], choice.get("name")
        return next(
            (
                call
                for call in offered
                if isinstance(call, McpCall)
                and call.server_label == label
                and name in (None, call.name)
            ),
            None,
        )
    function = choice.get("function")
    name = function["name"] if isinstance(function, dict) else choice["name"]
    for call in offered:
        if isinstance(call, FunctionCall) and call.name == name:
            return call
    # Forced to call a function the tools do not define: the model still
    # calls it, with no schema to fill in (what Azure does is UNVERIFIED).
    return FunctionCall(name, "{}")


def _called_since_user(context: Sequence[Item]) -> bool:
    for item in reversed(context):
        if item.wire["type"] in ("function_call", "mcp_call"):
            return True
        if item.wire.get("role") == "user":
            return False
    return False


def _last_user_words(context: Sequence[Item]) -> str:
    for item in reversed(context):
        if item.wire.get("role") == "user":
            parts = item.wire["content"]
            return " ".join(
                part.get("text") or part.get("transcript") or "" for part in parts
            )
    return ""


def _mentions(text: str, name: str) -> bool:
    if not name:
        return False
    spellings = {name, name.replace("_", " ")}
    return any(
        re.search(rf"(?<!\w){re.escape(spelling)}(?!\w)", text, re.IGNORECASE)
        for spelling in spellings
    )
