"""The fake MCP server, and GA sessions importing and calling its tools."""

from __future__ import annotations

import json
from typing import Any

from relay.simulator import Family
from relay.simulator.mcp import FAKE_MCP_TOOLS, call_tool, list_tools, lists
from tests.simulator.helpers import Script, types


SERVER: dict[str, Any] = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.com/sse",
    "require_approval": "never",
}


class TestFakeServer:
    def test_lists_every_tool_or_the_allowed_ones(self) -> None:
        """allowed_tools (a list, or a tool_names filter) narrows the list."""
        assert [t["name"] for t in list_tools(SERVER)] == ["echo", "add"]
        only = dict(SERVER, allowed_tools=["add"])
        assert [t["name"] for t in list_tools(only)] == ["add"]
        filtered = dict(SERVER, allowed_tools={"tool_names": ["echo"]})
        assert [t["name"] for t in list_tools(filtered)] == ["echo"]
        assert list_tools(SERVER)[0] is not FAKE_MCP_TOOLS[0]  # A copy.

    def test_invalid_hosts_cannot_be_listed(self) -> None:
        """A .invalid host fails; connectors and other hosts list."""
        assert lists(SERVER)
        assert lists({"type": "mcp", "server_label": "c", "connector_id": "x"})
        assert not lists(dict(SERVER, server_url="https://mcp.gone.invalid/sse"))

    def test_tools_run_deterministically(self) -> None:
        """echo returns its text, add the sum; bad arguments do not raise."""
        assert call_tool("echo", '{"text": "hi"}') == "hi"
        assert call_tool("add", '{"a": 1, "b": 2.5}') == "3.5"
        assert call_tool("add", '{"a": "1", "b": 2}') == "NaN"
        assert call_tool("echo", "not json") == ""
        assert call_tool("echo", "[1]") == ""
        assert call_tool("unknown", "{}") == ""


def tools_update(*tools: dict[str, Any]) -> dict[str, Any]:
    session = {"type": "realtime", "tools": list(tools)}
    return {"type": "session.update", "session": session}


def user_text(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


class TestImport:
    def test_session_update_lists_the_servers_tools(self) -> None:
        """session.updated, then the mcp_list_tools item, in_progress, completed, done."""
        script = Script(Family.GA)
        events = script.send(tools_update(SERVER))
        assert types(events) == [
            "session.updated",
            "conversation.item.added",
            "mcp_list_tools.in_progress",
            "mcp_list_tools.completed",
            "conversation.item.done",
        ]
        added, done = events[1]["item"], events[-1]["item"]
        assert (added["type"], added["server_label"], added["tools"]) == (
            "mcp_list_tools",
            "docs",
            [],
        )
        assert [t["name"] for t in done["tools"]] == ["echo", "add"]
        assert events[2]["item_id"] == events[3]["item_id"] == added["id"]
        assert added["id"] == done["id"]

    def test_an_import_is_reused(self) -> None:
        """The same definition, or only its label, does not list again; a change does."""
        script = Script(Family.GA)
        script.send(tools_update(SERVER))
        assert types(script.send(tools_update(SERVER))) == ["session.updated"]
        label_only = {"type": "mcp", "server_label": "docs"}
        assert types(script.send(tools_update(label_only))) == ["session.updated"]
        changed = dict(SERVER, allowed_tools=["add"])
        assert "mcp_list_tools.completed" in types(script.send(tools_update(changed)))

    def test_a_failed_listing(self) -> None:
        """A .invalid server: in_progress, failed, and an empty list."""
        script = Script(Family.GA)
        gone = dict(SERVER, server_url="https://mcp.gone.invalid/sse")
        events = script.send(tools_update(gone))
        assert types(events)[2:] == [
            "mcp_list_tools.in_progress",
            "mcp_list_tools.failed",
            "conversation.item.done",
        ]
        events = script.send(
            {"type": "response.create", "response": {"tool_choice": "required"}}
        )
        assert [o["type"] for o in events[-1]["response"]["output"]] == ["message"]

    def test_preview_has_no_mcp_tools(self) -> None:
        """Preview sessions refuse an mcp tool entry."""
        script = Script(Family.PREVIEW)
        [error] = script.send(
            {"type": "session.update", "session": {"tools": [SERVER]}}
        )
        assert error["error"]["param"] == "session.tools[0].type"


class TestCall:
    def test_a_named_tool_is_called_then_answered(self) -> None:
        """The call runs on the fake server, and the answer follows in the same response."""
        script = Script(Family.GA)
        script.send(tools_update(SERVER))
        script.send(user_text("Please echo this."))
        events = script.send({"type": "response.create"})
        kinds = types(events)
        assert kinds.index("response.mcp_call.completed") < kinds.index(
            "response.output_audio.delta"
        )
        [call] = [
            e["item"]
            for e in events
            if e["type"] == "response.output_item.done"
            and e["item"]["type"] == "mcp_call"
        ]
        assert json.loads(call["arguments"]) == {"text": "example"}
        assert call["output"] == "example"
        response = events[-1]["response"]
        assert response["status"] == "completed"
        assert [o["type"] for o in response["output"]] == ["mcp_call", "message"]
        assert response["output"][1]["content"][0]["transcript"] == (
            "This is the Realtime simulator. The echo tool returned 7 characters."
        )
        # The call counts as the tool use of this user turn.
        again = script.send({"type": "response.create"})
        assert [o["type"] for o in again[-1]["response"]["output"]] == ["message"]

    def test_response_level_mcp_tools_are_imported_first(self) -> None:
        """response.create with its own MCP entry lists its tools, then responds."""
        script = Script(Family.GA)
        events = script.send(
            {
                "type": "response.create",
                "response": {
                    "tools": [SERVER],
                    "tool_choice": {
                        "type": "mcp",
                        "server_label": "docs",
                        "name": "add",
                    },
                    "output_modalities": ["text"],
                },
            }
        )
        kinds = types(events)
        assert kinds.index("mcp_list_tools.completed") < kinds.index("response.created")
        [done] = [e for e in events if e["type"] == "response.mcp_call_arguments.done"]
        assert json.loads(done["arguments"]) == {"a": 1.0, "b": 1.0}
        text = [e for e in events if e["type"] == "response.output_text.done"]
        assert text[0]["text"].endswith("The add tool returned 3 characters.")

    def test_a_refused_response_imports_nothing(self) -> None:
        """While a response runs, response.create is refused before any import."""
        script = Script(Family.GA)
        script.session.receive(json.dumps({"type": "response.create"}), script.now)
        create = {"type": "response.create", "response": {"tools": [SERVER]}}
        [error] = script.session.receive(json.dumps(create), script.now)
        assert error["error"]["code"] == "conversation_already_has_active_response"
