"""The sans-I/O simulated Realtime session: client events in, server events out.

:class:`SimSession` never touches sockets, clocks or asyncio. The network edge
calls :meth:`~SimSession.open` once, :meth:`~SimSession.receive` for each
client frame, and drains :meth:`~SimSession.next_response_event` at whatever
pace it likes; time arrives as ``now`` arguments (Unix seconds), and the edge
calls :meth:`~SimSession.tick` again by :attr:`~SimSession.wakeup` at the latest.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.simulator import mcp, schema
from relay.simulator._checks import (
    Invalid,
    as_base64,
    as_choice,
    as_int,
    as_str,
    check_keys,
)
from relay.simulator._frames import client_event_id, parse_client_event
from relay.simulator.conversation import Conversation, Item
from relay.simulator.faults import Faults
from relay.simulator.items import parse_item, resolve_input
from relay.simulator.overrides import ResponseParams, response_params
from relay.simulator.responder import Responder
from relay.simulator.turns import Turns
from relay.simulator.wire import EventFactory, Family, IdFactory, JSONObject


AZURE_MAX_SESSION_SECONDS = 60 * 60
"""Azure's session cap (60 minutes since 2026), shown in ``expires_at`` when none is set."""


@dataclass(frozen=True)
class SessionOptions:
    """Knobs of a simulated session that are not part of the protocol."""

    max_session_seconds: float | None = None
    """Expire the session after this long (Azure: 3600); None never expires."""
    response_audio_ms: int = 1000
    """Length of the generated assistant audio per response."""
    conversation_created: bool = False
    """Greet preview sessions with ``conversation.created`` too.

    Azure's documents list the event, but Azure's own rtclient rejects it as
    an unknown type and closes the session, so it is off by default.
    """


Handler = Callable[[dict[str, Any]], list[JSONObject]]


class SimSession:
    """One simulated Realtime session (one WebSocket connection)."""

    def __init__(
        self,
        family: Family,
        deployment: str,
        *,
        now: float,
        options: SessionOptions | None = None,
        ids: Callable[[str], str] | None = None,
        faults: Faults | None = None,
    ) -> None:
        """Create the session at Unix time ``now``; ``ids`` defaults to ``IdFactory(0)``.

        ``faults`` holds the switches the session itself consults
        (``fail_transcription``); None uses a private, unarmed set.
        """
        self.family = family
        """Protocol family: decides event names and the session shape."""
        self._options = options or SessionOptions()
        self._faults = faults or Faults()
        self._events = EventFactory(family, ids or IdFactory())
        lifetime = self._options.max_session_seconds
        self.deadline = None if lifetime is None else now + lifetime
        """Unix time at which :meth:`tick` expires the session; None if never."""
        self.expired = False
        """True once the session hit its maximum duration; the edge must close."""
        self._session = schema.default_session(
            family,
            session_id=self._events.ids("sess"),
            model=deployment,
            expires_at=int(
                now + (AZURE_MAX_SESSION_SECONDS if lifetime is None else lifetime)
            ),
        )
        settings = schema.settings(family, self._session)
        self._conversation = Conversation(self._events.ids("conv"))
        self._responder = Responder(
            self._events, self._conversation, audio_ms=self._options.response_audio_ms
        )
        self._turns = Turns(
            self._events,
            self._conversation,
            self._responder,
            settings,
            respond=self._respond_to_turn,
            heard=self._disarm_idle,
            fail_transcription=self._faults.take_transcription_failure,
        )
        # MCP servers imported, by label: the definition and the tools listed.
        self._mcp_definitions: dict[str, JSONObject] = {}
        self._mcp_tools: dict[str, list[JSONObject]] = {}
        # The idle timer (GA server_vad idle_timeout_ms): when it fires, and
        # the input audio offset its silent segment starts at.
        self._idle_deadline: float | None = None
        self._idle_since_ms = 0.0
        self._handlers: dict[str, Handler] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_audio_buffer_clear,
        }

    # The edge's API

    def open(self) -> list[JSONObject]:
        """Return the events greeting a new connection (protocol.md §4.4)."""
        events = [self._events("session.created", session=self.session)]
        if self.family is Family.PREVIEW and self._options.conversation_created:
            conversation = {
                "id": self._conversation.id,
                "object": "realtime.conversation",
            }
            events.append(
                self._events("conversation.created", conversation=conversation)
            )
        return events

    @property
    def session(self) -> JSONObject:
        """A copy of the effective session object, as ``session.updated`` shows it."""
        return copy.deepcopy(self._session)

    def receive(self, text: str, now: float) -> list[JSONObject]:
        """Handle one client text frame; return the server events to send at once.

        Response events are not included: drain :meth:`next_response_event`
        after every call. Never raises on client input; problems become
        ``error`` events. Once the session expired, returns nothing.
        """
        early = self.tick(now)
        if self.expired:
            return early
        event_id = None
        try:
            event = parse_client_event(text)
            event_id = client_event_id(event)
            kind = as_choice(event["type"], "type", tuple(self._handlers))
            return early + self._handlers[kind](event)
        except Invalid as exc:
            error = self._events.error(exc.code, exc.message, exc.param, event_id)
            return [*early, error]

    def receive_bytes(self, data: bytes, now: float) -> list[JSONObject]:
        """Handle one client binary frame: the API only speaks JSON text frames."""
        early = self.tick(now)
        if self.expired:
            return early
        # The code is the simulator's own; what Azure answers is UNVERIFIED.
        message = (
            f"Binary frames are not supported ({len(data)} bytes received); "
            "send JSON text frames."
        )
        return [*early, self._events.error("unsupported_binary_frame", message)]

    def next_response_event(self) -> JSONObject | None:
        """Return the next event of the responses in progress, or None.

        Call after every :meth:`receive` until it returns None; the edge may
        wait between calls to pace audio.
        """
        return self._responder.next_event()

    @property
    def next_audio_ms(self) -> int | None:
        """Milliseconds of audio in the next response event, if it is an audio delta.

        None when :meth:`next_response_event` would produce anything else.
        Lets the edge pace audio without producing a delta early: a delta
        produced is a delta sent, even if a cancellation arrives meanwhile.
        """
        return self._responder.next_audio_ms

    @property
    def response_active(self) -> bool:
        """Whether a response exists whose ``response.done`` was not produced yet."""
        return self._responder.active is not None

    @property
    def wakeup(self) -> float | None:
        """Unix time by which :meth:`tick` must be called again; None if never.

        The earlier of the session's :attr:`deadline` and the idle timer.
        """
        times = [t for t in (self.deadline, self._idle_deadline) if t is not None]
        return min(times, default=None)

    def tick(self, now: float) -> list[JSONObject]:
        """Let time pass: expire the session at :attr:`deadline`, run the idle timer.

        The session expires (protocol.md §1.4) by returning the
        ``session_expired`` error exactly once; the edge must send it and
        close the connection, and pending response events are dropped. Call
        ``tick`` after every response event sent, too: a ``response.done``
        starts the idle timer.
        """
        if self.expired:
            return []
        if self.deadline is not None and now >= self.deadline:
            self.expired = True
            self._responder.stop()
            seconds = self._options.max_session_seconds or 0
            if seconds % 60 == 0:
                limit = f"{seconds / 60:g} minutes"
            else:
                limit = f"{seconds:g} seconds"
            message = f"Your session hit the maximum duration of {limit}."
            return [self._events.error("session_expired", message)]
        return self._run_idle_timer(now)

    def _idle_timeout_ms(self) -> int | None:
        detection = schema.settings(self.family, self._session).turn_detection
        return None if detection is None else detection.idle_timeout_ms

    def _run_idle_timer(self, now: float) -> list[JSONObject]:
        # OpenAI's SDK documents the timer as starting at response.done plus
        # the response's audio playback time; it is only armed by a response.
        # It never runs while the user speaks: speech disarms it.
        played_ms = self._responder.take_finished()
        if played_ms is None and self._idle_deadline is None:
            return []  # The usual case, after every event: nothing to do.
        timeout_ms = self._idle_timeout_ms()
        speaking = self._turns.speaking
        if played_ms is not None and timeout_ms is not None and not speaking:
            self._idle_deadline = now + (played_ms + timeout_ms) / 1000
            self._idle_since_ms = self._turns.appended_ms + played_ms
        if self._idle_deadline is None or now < self._idle_deadline:
            return []
        self._idle_deadline = None
        if timeout_ms is None or self._responder.active is not None:
            return []  # Turned off since, or a response is running.
        return self._turns.timeout(self._idle_since_ms)

    def _disarm_idle(self) -> None:
        self._idle_deadline = None

    # Handlers: each validates its event and returns the immediate answers.

    def _session_update(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id", "session"}, {"session"})
        result = schema.update_session(
            self.family,
            self._session,
            event["session"],
            voice_locked=self._responder.voice_locked,
        )
        if isinstance(result, schema.SchemaError):
            raise Invalid(result.code, result.message, result.param)
        self._session = result
        self._turns.configure(schema.settings(self.family, result))
        updated = self._events("session.updated", session=self.session)
        return [updated, *self._import_mcp(result["tools"])]

    def _import_mcp(self, tools: list[JSONObject]) -> list[JSONObject]:
        """List the tools of each new MCP server in ``tools`` (GA; see :mod:`.mcp`).

        An entry whose label was imported before, with the same definition
        or with only ``type`` and ``server_label``, reuses that import.
        """
        events: list[JSONObject] = []
        for tool in tools:
            if tool["type"] != "mcp":
                continue
            label = tool["server_label"]
            known = self._mcp_definitions.get(label)
            if known is not None and (
                tool == known or set(tool) <= {"type", "server_label"}
            ):
                continue
            self._mcp_definitions[label] = tool
            listed = mcp.list_tools(tool) if mcp.lists(tool) else None
            self._mcp_tools[label] = listed or []
            item = Item(
                {
                    "id": self._events.ids("mcpl"),
                    "type": "mcp_list_tools",
                    "server_label": label,
                    "tools": [],
                }
            )
            previous = self._conversation.add(item)
            events.append(
                self._events(
                    "conversation.item.created",  # GA: conversation.item.added.
                    previous_item_id=previous,
                    item=item.snapshot(),
                )
            )
            events.append(self._events("mcp_list_tools.in_progress", item_id=item.id))
            if listed is None:
                events.append(self._events("mcp_list_tools.failed", item_id=item.id))
            else:
                item.wire["tools"] = listed
                events.append(self._events("mcp_list_tools.completed", item_id=item.id))
            events.append(
                self._events(
                    "conversation.item.done",
                    previous_item_id=previous,
                    item=item.snapshot(),
                )
            )
        return events

    def _append(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id", "audio"}, {"audio"})
        return self._turns.append(as_base64(event["audio"], "audio"))

    def _commit(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id"})
        return self._turns.commit()

    def _clear(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id"})
        return self._turns.clear()

    def _item_create(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(
            event, "", {"type", "event_id", "previous_item_id", "item"}, {"item"}
        )
        previous = event.get("previous_item_id")
        if previous is not None:
            as_str(previous, "previous_item_id")
        item = self._parse_item(event["item"], "item")
        previous = self._conversation.add(item, previous)
        events = [
            self._events(
                "conversation.item.created",
                previous_item_id=previous,
                item=item.snapshot(),
            )
        ]
        if self.family is Family.GA:  # GA: conversation.item.added, then .done.
            events.append(
                self._events(
                    "conversation.item.done",
                    previous_item_id=previous,
                    item=item.snapshot(),
                )
            )
        return events

    def _parse_item(self, raw: object, param: str) -> Item:
        return parse_item(
            self.family,
            raw,
            param,
            new_id=lambda: self._events.ids("item"),
            input_format=schema.settings(self.family, self._session).input_format,
        )

    def _item_id(self, event: dict[str, Any], extra: set[str]) -> str:
        check_keys(
            event, "", {"type", "event_id", "item_id"} | extra, {"item_id"} | extra
        )
        return as_str(event["item_id"], "item_id")

    def _item_retrieve(self, event: dict[str, Any]) -> list[JSONObject]:
        item = self._conversation.require(self._item_id(event, set()), "retrieve")
        return [
            self._events(
                "conversation.item.retrieved", item=item.snapshot(with_audio=True)
            )
        ]

    def _item_delete(self, event: dict[str, Any]) -> list[JSONObject]:
        item_id = self._item_id(event, set())
        self._conversation.remove(item_id)
        return [self._events("conversation.item.deleted", item_id=item_id)]

    def _item_truncate(self, event: dict[str, Any]) -> list[JSONObject]:
        item_id = self._item_id(event, {"content_index", "audio_end_ms"})
        index = as_int(event["content_index"], "content_index", minimum=0)
        end = as_int(event["audio_end_ms"], "audio_end_ms", minimum=0)
        self._conversation.truncate(item_id, index, end)
        return [
            self._events(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=index,
                audio_end_ms=end,
            )
        ]

    def _response_create(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id", "response"})
        params = response_params(self.family, self._session, event.get("response"))
        if isinstance(params, schema.SchemaError):
            raise Invalid(params.code, params.message, params.param)
        if params.input is None:
            context = list(self._conversation)
        else:
            context = resolve_input(
                self.family,
                params.input,
                self._conversation,
                new_id=lambda: self._events.ids("item"),
                input_format=schema.settings(self.family, self._session).input_format,
            )
        # A refused response (one is active) imports nothing.
        imported = []
        if self._responder.active is None:
            imported = self._import_mcp(list(params.tools))
        self._start(params, context)
        return imported

    def _respond_to_turn(self) -> None:
        params = response_params(self.family, self._session, None)
        assert not isinstance(params, schema.SchemaError)  # The session is valid.
        self._start(params, list(self._conversation))

    def _start(self, params: ResponseParams, context: list[Item]) -> None:
        self._responder.start(params, context, self._mcp_tools)
        self._disarm_idle()

    def _response_cancel(self, event: dict[str, Any]) -> list[JSONObject]:
        check_keys(event, "", {"type", "event_id", "response_id"})
        response_id = event.get("response_id")
        if response_id is not None:
            as_str(response_id, "response_id")
        if not self._responder.cancel(response_id, "client_cancelled"):
            raise Invalid(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
            )
        return []

    def _output_audio_buffer_clear(self, event: dict[str, Any]) -> list[JSONObject]:
        # WebRTC/SIP only; this WebSocket answer is the simulator's guess (UNVERIFIED).
        raise Invalid(
            "unsupported_event",
            "output_audio_buffer.clear is only supported over WebRTC and SIP.",
            "type",
        )
