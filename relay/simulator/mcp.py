"""The fake MCP server behind every GA ``mcp`` tool: no network, fixed answers.

Pure. Azure's service connects to the MCP server a session names
(``server_url``, or a ``connector_id``); the simulator never does. Every MCP
tool entry is served by this one fake server instead, which lists
:data:`FAKE_MCP_TOOLS` (narrowed by the entry's ``allowed_tools``) and runs
them deterministically. A ``server_url`` whose host ends in ``.invalid`` (a
name that can never resolve, RFC 2606) fails to list its tools, so that
``mcp_list_tools.failed`` can be tested.
"""

from __future__ import annotations

import copy
import json
from urllib.parse import urlsplit

from relay.simulator.wire import JSONObject


FAKE_MCP_TOOLS: tuple[JSONObject, ...] = (
    {
        "name": "echo",
        "description": "Return the given text unchanged.",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
    {
        "name": "add",
        "description": "Add two numbers.",
        "input_schema": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
)
"""What the fake server lists: ``echo`` returns ``text``, ``add`` returns ``a + b``."""


def lists(tool: JSONObject) -> bool:
    """Whether the fake server can list the tools of the MCP entry ``tool``."""
    url = tool.get("server_url")
    if not isinstance(url, str):
        return True  # A connector_id, or a label reused from an earlier entry.
    host = urlsplit(url).hostname or ""
    return not host.endswith(".invalid")


def list_tools(tool: JSONObject) -> list[JSONObject]:
    """Return the tools the fake server offers the MCP entry ``tool``.

    ``allowed_tools`` (a list of names, or ``{"tool_names": [...]}``) keeps
    only the tools it names; without it every fake tool is offered.
    """
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    tools = [copy.deepcopy(listed) for listed in FAKE_MCP_TOOLS]
    if isinstance(allowed, list):
        tools = [listed for listed in tools if listed["name"] in allowed]
    return tools


def call_tool(name: str, arguments: str) -> str:
    """Run fake tool ``name`` with the JSON ``arguments``; return its text output."""
    try:
        args = json.loads(arguments)
    except ValueError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    if name == "echo":
        return str(args.get("text", ""))
    if name == "add":
        a, b = args.get("a", 0), args.get("b", 0)
        numbers = all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b)
        )
        return str(a + b) if numbers else "NaN"
    return ""
