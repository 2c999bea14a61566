"""Deterministic tool calling: the rules, the arguments, and round trips in a session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.simulator import Family
from relay.simulator.audio import speech_like_pcm16
from relay.simulator.conversation import Item
from relay.simulator.tools import (
    FunctionCall,
    McpCall,
    choose_call,
    placeholder,
    placeholder_arguments,
)
from tests.simulator.helpers import Script, error_of, types


WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 3},
            "verbose": {"type": "boolean"},
        },
        "required": ["city", "unit", "days"],
    },
}
TIME: dict[str, Any] = {"type": "function", "name": "now"}
ECHO: dict[str, Any] = {"name": "echo", "input_schema": {"type": "object"}}


def user(text: str) -> Item:
    content = [{"type": "input_text", "text": text}]
    return Item({"id": "u", "type": "message", "role": "user", "content": content})


def call_item() -> Item:
    return Item({"id": "c", "type": "function_call", "name": "now", "call_id": "k"})


class TestChooseCall:
    def test_auto_calls_a_tool_the_user_names(self) -> None:
        """auto: a tool whose name the last user message mentions (also with spaces)."""
        for said in ("use get_weather please", "GET WEATHER in Oslo"):
            call = choose_call([TIME, WEATHER], "auto", [user(said)], {})
            assert isinstance(call, FunctionCall)
            assert call.name == "get_weather"

    def test_auto_answers_when_no_tool_is_named(self) -> None:
        """auto: no mention (or only a part of a word) means no call."""
        for said in ("hello", "nowhere", "get_weathers"):
            assert choose_call([TIME, WEATHER], "auto", [user(said)], {}) is None

    def test_required_calls_the_first_tool(self) -> None:
        """required: the first tool offered, named or not."""
        call = choose_call([TIME, WEATHER], "required", [user("hi")], {})
        assert call == FunctionCall("now", "{}")

    def test_none_never_calls(self) -> None:
        """none: never a call, even when a tool is named."""
        assert choose_call([TIME], "none", [user("now")], {}) is None

    @pytest.mark.parametrize(
        "choice",
        [
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ],
    )
    def test_a_named_function_is_called(self, choice: dict[str, Any]) -> None:
        """A named choice (flat, or preview's nested shape) calls that function."""
        call = choose_call([TIME, WEATHER], choice, [], {})
        assert isinstance(call, FunctionCall)
        assert call.name == "get_weather"

    def test_a_named_function_not_in_tools_is_called_without_arguments(self) -> None:
        """Forced to call an undefined function, the model still calls it with {}."""
        choice = {"type": "function", "name": "ghost"}
        assert choose_call([], choice, [], {}) == FunctionCall("ghost", "{}")

    def test_one_call_per_user_turn(self) -> None:
        """After a call since the last user message, the model answers instead."""
        context = [user("now"), call_item()]
        assert choose_call([TIME], "required", context, {}) is None
        assert choose_call([TIME], "required", [*context, user("now")], {}) is not None

    def test_mcp_tools_are_offered_by_label(self) -> None:
        """MCP entries offer the tools their server listed, in tools order."""
        tools = [{"type": "mcp", "server_label": "docs"}, TIME]
        listed = {"docs": [ECHO]}
        assert choose_call(tools, "required", [], listed) == McpCall(
            "docs", "echo", "{}"
        )
        assert choose_call(tools, "auto", [user("echo it")], listed) == McpCall(
            "docs", "echo", "{}"
        )
        assert choose_call(tools, "required", [], {}) == FunctionCall("now", "{}")

    def test_a_named_mcp_choice(self) -> None:
        """{type: mcp, server_label[, name]} calls that server's (named) tool."""
        tools = [
            {"type": "mcp", "server_label": "a"},
            {"type": "mcp", "server_label": "b"},
        ]
        listed: dict[str, list[dict[str, Any]]] = {
            "a": [ECHO],
            "b": [ECHO, {"name": "add"}],
        }
        assert choose_call(tools, {"type": "mcp", "server_label": "b"}, [], listed) == (
            McpCall("b", "echo", "{}")
        )
        named = {"type": "mcp", "server_label": "b", "name": "add"}
        assert choose_call(tools, named, [], listed) == McpCall("b", "add", "{}")
        missing = {"type": "mcp", "server_label": "c"}
        assert choose_call(tools, missing, [], listed) is None


class TestPlaceholders:
    def test_required_properties_get_typed_placeholders(self) -> None:
        """Strings "example", enums their first value, numbers their minimum."""
        assert json.loads(placeholder_arguments(WEATHER["parameters"])) == {
            "city": "example",
            "unit": "celsius",
            "days": 3,
        }

    @pytest.mark.parametrize(
        ("schema", "value"),
        [
            ({"const": 7}, 7),
            ({"type": "string", "default": "x"}, "x"),
            ({"type": ["null", "number"]}, 1.0),
            ({"type": "integer"}, 1),
            ({"type": "boolean"}, True),
            ({"type": "null"}, None),
            ({"type": "array", "minItems": 2, "items": {"type": "integer"}}, [1, 1]),
            ({"type": "array"}, []),
            ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "example"),
            (
                {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"a": "example"},
            ),
            ({"type": "object"}, {}),
            ("not a schema", None),
        ],
    )
    def test_types(self, schema: object, value: object) -> None:
        """Each JSON Schema type has its placeholder."""
        assert placeholder(schema) == value

    def test_deep_or_odd_schemas_stay_bounded(self) -> None:
        """Nesting beyond the limit becomes null; a non-object schema gives {}."""
        schema: dict[str, Any] = {"type": "string"}
        for _ in range(40):
            schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
        assert "null" in placeholder_arguments(schema)
        assert placeholder_arguments({"type": "string"}) == "{}"
        assert placeholder_arguments(None) == "{}"


def with_tools(script: Script, **session: Any) -> None:
    """Set session fields (tools, tool_choice) and turn server VAD off."""
    if script.session.family is Family.PREVIEW:
        update = {**session, "turn_detection": None}
    else:
        update = {
            "type": "realtime",
            **session,
            "audio": {"input": {"turn_detection": None}},
        }
    assert types(script.send({"type": "session.update", "session": update})) == [
        "session.updated"
    ]


def user_text(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


class TestRoundTrip:
    @pytest.mark.parametrize("family", list(Family))
    def test_call_output_answer(self, family: Family) -> None:
        """A call, then waiting; function_call_output and response.create get the answer."""
        script = Script(family)
        with_tools(script, tools=[WEATHER])
        script.send(user_text("What does get_weather say?"))
        first = script.send({"type": "response.create"})
        added = (
            "conversation.item.created"
            if family is Family.PREVIEW
            else ("conversation.item.added")
        )
        expected = [
            "response.created",
            "rate_limits.updated",
            "response.output_item.added",
            added,
            *["response.function_call_arguments.delta"] * 6,
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        if family is Family.GA:
            expected.append("conversation.item.done")
        assert types(first) == [*expected, "response.done"]
        [done] = [
            e for e in first if e["type"] == "response.function_call_arguments.done"
        ]
        assert json.loads(done["arguments"]) == {
            "city": "example",
            "unit": "celsius",
            "days": 3,
        }
        response = first[-1]["response"]
        assert response["status"] == "completed"
        assert response["output"][0]["type"] == "function_call"
        assert not script.session.response_active  # It waits for the output.
        output = {
            "type": "function_call_output",
            "call_id": done["call_id"],
            "output": '{"temp_c": 4}',
        }
        script.send({"type": "conversation.item.create", "item": output})
        second = script.send({"type": "response.create"})
        answer = second[-1]["response"]["output"][0]
        assert answer["type"] == "message"
        assert answer["content"][0]["transcript"] == (
            "This is the Realtime simulator. The get_weather tool returned 13 characters."
        )

    def test_required_tool_choice_calls_on_a_voice_turn(self) -> None:
        """With tool_choice required, a VAD turn's automatic response is a call."""
        script = Script(Family.GA)
        update = {"type": "realtime", "tools": [TIME], "tool_choice": "required"}
        script.send({"type": "session.update", "session": update})
        events = script.append(speech_like_pcm16(0.6, trailing_silence=0.6))
        [done] = [e for e in events if e["type"] == "response.done"]
        assert [o["type"] for o in done["response"]["output"]] == ["function_call"]
        assert done["response"]["output"][0]["name"] == "now"

    def test_response_level_tools_and_choice(self) -> None:
        """response.create's own tools and tool_choice override the session's."""
        script = Script(Family.PREVIEW)
        events = script.send(
            {
                "type": "response.create",
                "response": {
                    "tools": [TIME],
                    "tool_choice": {"type": "function", "name": "now"},
                },
            }
        )
        assert "response.function_call_arguments.done" in types(events)
        with_tools(script, tools=[TIME], tool_choice="required")
        events = script.send(
            {"type": "response.create", "response": {"tool_choice": "none"}}
        )
        assert "response.function_call_arguments.done" not in types(events)

    def test_out_of_band_call_stays_out_of_the_conversation(self) -> None:
        """conversation none: the call item is streamed but never joins the conversation."""
        script = Script(Family.GA)
        events = script.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "tools": [TIME],
                    "tool_choice": "required",
                },
            }
        )
        assert "conversation.item.added" not in types(events)
        assert events[-1]["response"]["conversation_id"] is None
        assert list(script.session.session["tools"]) == []

    def test_cancel_mid_call(self) -> None:
        """A cancelled call ends with arguments.done, an incomplete item, cancelled."""
        script = Script(Family.GA)
        with_tools(script, tools=[WEATHER], tool_choice="required")
        script.session.receive(json.dumps({"type": "response.create"}), script.now)
        for _ in range(5):
            script.session.next_response_event()
        tail = script.send({"type": "response.cancel"})
        assert types(tail) == [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        assert tail[1]["item"]["status"] == "incomplete"
        assert tail[-1]["response"]["status"] == "cancelled"

    def test_invalid_tool_choice_is_an_error(self) -> None:
        """A tool_choice of the wrong shape is refused before anything starts."""
        script = Script(Family.GA)
        error = error_of(
            script.send(
                {"type": "response.create", "response": {"tool_choice": "sometimes"}}
            )
        )
        assert error["param"] == "response.tool_choice"
        assert not script.session.response_active
