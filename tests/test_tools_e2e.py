"""Tool calls through the relay, against the simulator, on both protocol families.

The upstream leg runs through a recording TCP proxy, so what the simulator put
on the wire can be compared with what the client received, byte for byte. A
function call's events are upstream events like any other: the relay forwards
them as received. The client's ``function_call_output`` and ``response.create``
are governed events: the relay re-serializes them, so they must arrive with
the same content. Tool allow-lists (docs/policy.md, *Tool allow-lists*) decide
what a client may configure; a client holding a valid key that sends garbage in
tool fields gets an ``error`` event, from the relay or from the simulator, and
keeps a working session.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from relay.config import parse_settings
from tests.helpers.clients import connect_relay
from tests.helpers.fault_proxy import FaultProxy, websocket_messages
from tests.helpers.servers import (
    DEPLOYMENT,
    GA_DEPLOYMENT,
    LEGACY_DEPLOYMENT,
    Stack,
    relay_stack,
)
from tests.helpers.timing import SECOND


FREE, APPROVED, STRICT, DENIED = "key-free", "key-approved", "key-strict", "key-denied"
DOCS_URL = "https://mcp.example.com/docs"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CONFIG = f"""
upstream: {{endpoint: http://127.0.0.1:9, auth: {{type: entra}}}}
deployments: {{{DEPLOYMENT}: {{}}, {GA_DEPLOYMENT}: {{}}}}
clients:
  - {{id: free, key_sha256: "{_sha(FREE)}", policy: free}}
  - {{id: approved, key_sha256: "{_sha(APPROVED)}", policy: approved}}
  - {{id: strict, key_sha256: "{_sha(STRICT)}", policy: strict}}
  - {{id: denied, key_sha256: "{_sha(DENIED)}", policy: denied}}
policies:
  free: {{}}
  approved:
    allow: {{tools: [get_weather, {{server_label: docs, server_url: "{DOCS_URL}"}}]}}
  strict:
    on_violation: refuse
    allow: {{tools: [get_weather, {{server_label: docs, server_url: "{DOCS_URL}"}}]}}
  denied:
    on_violation: refuse
    deny: [tools]
"""
CLIENTS = parse_settings(CONFIG, source="tools.yaml", environ={}).clients

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather at a place.",
    "parameters": {
        "type": "object",
        "properties": {"place": {"type": "string"}},
        "required": ["place"],
    },
}
WIRE = {
    "type": "function",
    "name": "wire_money",
    "parameters": {"type": "object", "properties": {}},
}
DOCS = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": DOCS_URL,
    "require_approval": "never",
}
FAMILIES = ["preview", "ga"]


@asynccontextmanager
async def tapped_stack() -> AsyncIterator[tuple[Stack, FaultProxy]]:
    """A relay whose upstream leg runs through a recording proxy to the simulator."""
    async with (
        FaultProxy(record=True) as proxy,
        relay_stack(upstream_url=proxy.url, clients=CLIENTS) as stack,
    ):
        proxy.target = ("127.0.0.1", stack.simulator.port)
        yield stack, proxy


class Client:
    """A plain WebSocket client of the relay that keeps every text it received, as received."""

    def __init__(self, ws: ClientConnection, family: str) -> None:
        self.ws = ws
        self.family = family
        self.received: list[str] = []
        """Every server message, exactly as it arrived."""
        self.sent: list[dict[str, Any]] = []
        """Every client event, in order."""

    async def send(self, event: dict[str, Any]) -> None:
        """Send one client event as a text frame, and remember it."""
        self.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def until(
        self, *last_types: str, limit: int = 500, within: float = 10 * SECOND
    ) -> list[dict[str, Any]]:
        """Server events up to and including the first of one of ``last_types``."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            for _ in range(limit):
                text = await self.ws.recv()
                assert isinstance(text, str)
                self.received.append(text)
                events.append(json.loads(text))
                if events[-1]["type"] in last_types:
                    return events
        raise AssertionError(f"none of {last_types} in {limit} events")

    def session(self, **fields: Any) -> dict[str, Any]:
        """A ``session.update`` of ``fields`` in this family's shape, text only."""
        if self.family == "preview":
            session = {"modalities": ["text"], **fields}
        else:
            session = {"type": "realtime", "output_modalities": ["text"], **fields}
        return {"type": "session.update", "session": session}

    async def configure(self, **fields: Any) -> dict[str, Any]:
        """Send a session update; the ``session.updated`` answering it."""
        await self.send(self.session(**fields))
        [updated] = await self.until("session.updated")
        return updated

    async def ask(
        self, text: str, response: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """A user message and a ``response.create``; the events up to ``response.done``."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        return await self.respond(response)

    async def respond(
        self, response: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """A ``response.create``; the events up to ``response.done`` (or an ``error``)."""
        create: dict[str, Any] = {"type": "response.create"}
        if response is not None:
            create["response"] = response
        await self.send(create)
        return await self.until("response.done", "error")


@asynccontextmanager
async def client(stack: Stack, family: str, key: str) -> AsyncIterator[Client]:
    """A connected client whose ``session.created`` has arrived."""
    # The preview family end to end: an upstream that still serves it.
    url = (
        stack.preview_url(LEGACY_DEPLOYMENT) if family == "preview" else stack.ga_url()
    )
    async with connect_relay(url, key=key) as ws:
        session = Client(ws, family)
        assert [e["type"] for e in await session.until("session.created")] == [
            "session.created"
        ]
        yield session


def outputs(events: list[dict[str, Any]]) -> list[str]:
    """The types of the items the response made (from its ``response.done``)."""
    assert events[-1]["type"] == "response.done", events[-1]
    return [item["type"] for item in events[-1]["response"]["output"]]


def answer(events: list[dict[str, Any]]) -> str:
    """The text of the response's last message."""
    message = events[-1]["response"]["output"][-1]
    assert message["type"] == "message"
    return str(message["content"][0]["text"])


def called(stack: Stack, name: str) -> bool:
    """Whether any client event the simulator received mentions ``name``."""
    return name in json.dumps(list(stack.simulator.stats.client_events))


def call_events(family: str) -> list[str]:
    """The event types of a response that calls a function (docs/simulator.md), deltas squeezed."""
    added = (
        "conversation.item.created"
        if family == "preview"
        else "conversation.item.added"
    )
    done = [] if family == "preview" else ["conversation.item.done"]
    return [
        "response.created",
        "rate_limits.updated",
        "response.output_item.added",
        added,
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        *done,
        "response.done",
    ]


def squeezed(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of the same type written once."""
    types: list[str] = []
    for event in events:
        if not types or types[-1] != event["type"]:
            types.append(event["type"])
    return types


@pytest.mark.parametrize("family", FAMILIES)
class TestRoundTrip:
    @pytest.mark.parametrize("key", [FREE, APPROVED])
    async def test_a_function_call_round_trip_passes_untouched(
        self, family: str, key: str
    ) -> None:
        """The call's events reach the client byte for byte; the output reaches the simulator as sent."""
        async with tapped_stack() as (stack, proxy):
            async with client(stack, family, key) as app:
                updated = await app.configure(tools=[WEATHER], tool_choice="auto")
                assert updated["session"]["tools"] == [WEATHER]
                call = await app.ask("What does get weather say for Paris?")
                first = next(
                    i for i, e in enumerate(call) if e["type"] == "response.created"
                )
                assert squeezed(call[first:]) == call_events(family)
                [item] = call[-1]["response"]["output"]
                assert (item["type"], item["name"]) == ("function_call", "get_weather")
                assert item["arguments"] == '{"place":"example"}'
                deltas = [
                    e["delta"]
                    for e in call
                    if e["type"] == "response.function_call_arguments.delta"
                ]
                assert "".join(deltas) == item["arguments"]
                assert {
                    e["call_id"] for e in call if "function_call_arguments" in e["type"]
                } == {item["call_id"]}

                output = {
                    "type": "function_call_output",
                    "call_id": item["call_id"],
                    "output": json.dumps({"temperature_c": 21, "sky": "clear"}),
                }
                await app.send(
                    {
                        "type": "conversation.item.create",
                        "item": output,
                        "event_id": "o1",
                    }
                )
                events = await app.respond()
                assert outputs(events) == ["message"]
                assert answer(events).endswith(
                    f"The get_weather tool returned {len(output['output'])} characters."
                )
            await stack.settle()
            await proxy.wait_idle()
        [recording] = proxy.recordings
        # Upstream to client: every message, the function call's included, as the simulator wrote it.
        assert websocket_messages(recording["downstream"], masked=False) == app.received
        # Client to upstream: the same events, in order (governed events are re-serialized).
        forwarded = websocket_messages(recording["upstream"], masked=True)
        assert [json.loads(text) for text in forwarded] == app.sent


@pytest.mark.parametrize("family", FAMILIES)
class TestAllowList:
    async def test_an_unapproved_tool_is_stripped_and_never_called(
        self, family: str
    ) -> None:
        """The approved tool stays; the simulator never hears of the other, even when forced to call it."""
        forced = {"type": "function", "name": "wire_money"}
        async with relay_stack(clients=CLIENTS) as stack:
            # Without a policy the simulator calls a forced function (the control).
            async with client(stack, family, FREE) as app:
                await app.configure(tools=[WEATHER, WIRE], tool_choice=forced)
                events = await app.ask("Please wire money to Bob.")
                assert events[-1]["response"]["output"][0]["name"] == "wire_money"
            stack.simulator.stats.reset()
            async with client(stack, family, APPROVED) as app:
                updated = await app.configure(tools=[WIRE, WEATHER], tool_choice=forced)
                assert updated["session"]["tools"] == [WEATHER]
                assert updated["session"]["tool_choice"] == "auto"
                events = await app.ask("Please wire money to Bob.")
                assert outputs(events) == ["message"]
            assert not called(stack, "wire_money")
            assert called(stack, "get_weather")

    async def test_an_unapproved_tool_is_refused_and_the_session_stays_usable(
        self, family: str
    ) -> None:
        """With refuse: an error naming the tool, nothing forwarded, the next turn answered."""
        async with relay_stack(clients=CLIENTS) as stack:
            async with client(stack, family, STRICT) as app:
                update = app.session(tools=[WEATHER, WIRE])
                await app.send({**update, "event_id": "u1"})
                [error] = await app.until("error")
                assert (
                    error["error"]["code"],
                    error["error"]["param"],
                    error["error"]["event_id"],
                ) == ("policy_violation", "session.tools[1]", "u1")
                events = await app.ask("Please wire money to Bob.")
                assert outputs(events) == ["message"]
                # Modes are never violations; the approved tool is then called.
                for choice in ("none", "auto", "required"):
                    updated = await app.configure(tools=[WEATHER], tool_choice=choice)
                    assert updated["session"]["tool_choice"] == choice
                events = await app.ask("And the weather?")
                assert outputs(events) == ["function_call"]
            assert not called(stack, "wire_money")

    @pytest.mark.parametrize("key", [APPROVED, STRICT])
    async def test_response_tools_obey_the_allow_list(
        self, family: str, key: str
    ) -> None:
        """response.create's own tools and tool_choice: stripped or refused like a session's."""
        async with (
            relay_stack(clients=CLIENTS) as stack,
            client(stack, family, key) as app,
        ):
            events = await app.ask(
                "Please wire money to Bob.",
                {
                    "tools": [WIRE],
                    "tool_choice": {"type": "function", "name": "wire_money"},
                },
            )
            if key == APPROVED:
                assert outputs(events) == ["message"]
            else:
                error = events[-1]["error"]
                assert (error["code"], error["param"]) == (
                    "policy_violation",
                    "response.tools[0]",
                )
            events = await app.respond({"tools": [WEATHER], "tool_choice": "required"})
            [item] = events[-1]["response"]["output"]
            assert (item["type"], item["name"]) == ("function_call", "get_weather")
            assert not called(stack, "wire_money")

    async def test_tool_choice_under_a_tools_deny(self, family: str) -> None:
        """Modes pass (required with nothing to call is answered); naming a tool is refused."""
        forced = {"type": "function", "name": "wire_money"}
        async with relay_stack(clients=CLIENTS) as stack:
            # Without a policy, naming a function the session lacks gets it called.
            async with client(stack, family, FREE) as app:
                await app.configure(tool_choice=forced)
                events = await app.ask("Hello?")
                assert events[-1]["response"]["output"][0]["name"] == "wire_money"
            stack.simulator.stats.reset()
            async with client(stack, family, DENIED) as app:
                for choice in ("auto", "none", "required"):
                    updated = await app.configure(tools=[], tool_choice=choice)
                    assert updated["session"]["tool_choice"] == choice
                assert outputs(await app.ask("Hello?")) == ["message"]
                await app.send({**app.session(tool_choice=forced), "event_id": "r1"})
                [error] = await app.until("error")
                assert (error["error"]["param"], error["error"]["event_id"]) == (
                    "session.tool_choice",
                    "r1",
                )
                events = await app.respond({"tool_choice": forced})
                assert events[-1]["error"]["param"] == "response.tool_choice"
                assert outputs(await app.ask("Hello again?")) == ["message"]
            assert not called(stack, "wire_money")


class TestMcp:
    async def test_an_approved_server_is_imported_and_called(self) -> None:
        """Label and address approved: the simulator lists and calls its tools."""
        async with (
            relay_stack(clients=CLIENTS) as stack,
            client(stack, "ga", APPROVED) as app,
        ):
            await app.send(app.session(tools=[DOCS]))
            events = await app.until("mcp_list_tools.completed")
            assert events[0]["session"]["tools"] == [DOCS]
            await app.until("conversation.item.done")
            events = await app.ask("Please echo this.")
            assert outputs(events) == ["mcp_call", "message"]
            assert events[-1]["response"]["output"][0]["server_label"] == "docs"

    @pytest.mark.parametrize(
        "tool",
        [
            {**DOCS, "server_url": "https://evil.example.com/docs"},
            {"type": "mcp", "server_label": "docs"},
            {**DOCS, "server_label": "wiki"},
        ],
    )
    async def test_another_server_is_stripped_or_refused(
        self, tool: dict[str, Any]
    ) -> None:
        """An MCP tool is named by its server_label and address together: the label alone is not enough."""
        async with relay_stack(clients=CLIENTS) as stack:
            async with client(stack, "ga", APPROVED) as app:
                updated = await app.configure(tools=[tool, WEATHER])
                assert updated["session"]["tools"] == [WEATHER]
                events = await app.ask("Please echo this.")
                assert outputs(events) == ["message"]
                assert "mcp_list_tools" not in " ".join(app.received)
            async with client(stack, "ga", STRICT) as app:
                await app.send(app.session(tools=[WEATHER, tool]))
                [error] = await app.until("error")
                assert error["error"]["param"] == "session.tools[1]"
            assert not called(stack, "mcp")


HUGE = 4000
"""Tools in a list within the relay's bounds (about 16,000 values)."""
TOO_MANY = 9000
"""Tools in a list past them (about 36,000 values, over ``MAX_VALUES``)."""
GARBAGE: list[tuple[str, dict[str, Any]]] = [
    ("tools not a list", {"tools": "get_weather"}),
    ("a tool without a name", {"tools": [{"type": "function"}]}),
    ("a number for a name", {"tools": [{"type": "function", "name": 42}]}),
    ("a list for a name", {"tools": [{"type": "function", "name": ["get_weather"]}]}),
    ("an object for a name", {"tools": [{"type": "function", "name": {"a": 1}}]}),
    ("a tool that is a string", {"tools": ["get_weather"]}),
    ("a number for tool_choice", {"tool_choice": 5}),
    ("a list for tool_choice", {"tool_choice": ["auto"]}),
    ("null for tool_choice", {"tool_choice": None}),
    ("an unknown mode", {"tool_choice": "always"}),
    (
        "a list for tool_choice's name",
        {"tool_choice": {"type": "function", "name": ["get_weather"]}},
    ),
    (
        "a huge tools list",
        {"tools": [{"type": "function", "name": f"f{n}"} for n in range(HUGE)]},
    ),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", [FREE, APPROVED, STRICT])
async def test_garbage_in_tool_fields_gets_a_clear_answer(
    family: str, key: str
) -> None:
    """A valid key's garbage: the simulator's error (no policy), a strip, or the relay's refusal; never a close."""
    async with (
        relay_stack(clients=CLIENTS) as stack,
        client(stack, family, key) as app,
    ):
        for number, (name, fields) in enumerate(GARBAGE):
            update = {**app.session(**fields), "event_id": f"g{number}"}
            await app.send(update)
            [*_, answer] = await app.until("session.updated", "error")
            huge = name == "a huge tools list"
            if key == FREE and huge:
                assert len(answer["session"]["tools"]) == HUGE, name
            elif key == FREE or name == "an unknown mode":
                # A string names no tool: no allow-list rule is broken.
                # Forwarded as sent: the simulator answers as Azure does.
                assert answer["type"] == "error", name
                assert answer["error"]["code"] not in (
                    "policy_violation",
                    "invalid_event",
                ), name
                assert answer["error"]["event_id"] == f"g{number}", name
                assert (
                    stack.simulator.stats.events_of_type("session.update")[-1][
                        "event_id"
                    ]
                    == f"g{number}"
                )
            elif key == APPROVED:
                # Stripped: the rest of the update is applied.
                assert answer["type"] == "session.updated", name
                assert answer["session"]["tools"] == [], name
            else:
                assert answer["type"] == "error", name
                assert answer["error"]["code"] == "policy_violation", name
                assert answer["error"]["param"].startswith("session.tool"), name
                assert answer["error"]["event_id"] == f"g{number}", name

        # Past the relay's bounds, whoever sends it.
        tools = [{"type": "function", "name": f"f{n}"} for n in range(TOO_MANY)]
        await app.send({**app.session(tools=tools), "event_id": "big"})
        [error] = await app.until("error")
        assert error["error"]["code"] == "invalid_event"

        # An output for a call that never happened is the upstream's to judge.
        output = {
            "type": "function_call_output",
            "call_id": "call_that_never_was",
            "output": "{}",
        }
        await app.send({"type": "conversation.item.create", "item": output})
        events = await app.respond()
        assert outputs(events) == ["message"]
        assert (
            stack.simulator.stats.events_of_type("conversation.item.create")[-1]["item"]
            == output
        )

        assert outputs(await app.ask("Still there?")) == ["message"]
        assert app.ws.state is State.OPEN
