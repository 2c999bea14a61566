"""Runs one relayed session: the I/O around :class:`relay.sansio.session.RelaySession`.

Four tasks share one :class:`asyncio.TaskGroup`: a reader per leg turns what
arrives into events for the core, and a writer per leg drains that leg's
:class:`~relay._outbox.Outbox`. The commands of one event are executed at
once, without awaiting, so nothing interleaves with them; then the reader
waits until the outboxes it fed are under their bound before reading again.
Backpressure is therefore end to end: a slow leg fills its outbox, the other
leg's reader stops reading, and TCP pushes back on the sender. Client frames
held while the policy is being applied count against the same bound. A writer
that cannot hand a frame to its leg for ``flow.stall_timeout`` (the peer
stopped reading) is reported to the core as :class:`Stalled`, which ends the
session; a watchdog timer checks once a second, so no timer is armed per frame.

When the session ends, every task ends with it: each writer delivers what is
queued and the close frame within ``close_timeout``, and anything still
running after a final bound is cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, assert_never

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from relay._outbox import CloseRequest, Outbox, frame_size
from relay._protocol import ABORT_EXTENSION
from relay.config import FlowSettings
from relay.sansio.commands import (
    Abort,
    Applied,
    Close,
    Command,
    Ended,
    FirstAudio,
    Metered,
    Send,
    TokensUsed,
    Wakeup,
)
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Draining,
    Event,
    Stalled,
    Started,
    Tick,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.session import RelaySession
from relay.typing import Side


__all__ = ["Observer", "SessionCounters", "SessionDriver"]

log = structlog.get_logger("relay.session")


class Observer(Protocol):
    """Where the driver reports facts of a session (metrics, at the edge)."""

    def client_to_upstream(self, size: int) -> None: ...

    def upstream_to_client(self, size: int) -> None: ...

    def policy_applied(self, action: str, field: str) -> None: ...

    def stalled(self, side: Side) -> None: ...

    def metered(self, fact: Metered) -> None: ...

    def tokens(self, usage: TokensUsed) -> None: ...

    def first_audio(self, seconds: float) -> None: ...


@dataclass(slots=True)
class SessionCounters:
    """Messages and bytes received from each leg during one session."""

    client_messages: int = 0
    client_bytes: int = 0
    upstream_messages: int = 0
    upstream_bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    audio_in_seconds: float = 0.0
    audio_out_seconds: float = 0.0


class SessionDriver:
    """Relays between an accepted client WebSocket and an open upstream connection."""

    def __init__(
        self,
        client: WebSocket,
        upstream: ClientConnection,
        session: RelaySession,
        *,
        flow: FlowSettings,
        observer: Observer,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._flow = flow
        self._observer = observer
        self.session = session
        self.counters = SessionCounters()
        # Frames waiting for each leg.
        self._to_client = Outbox(flow.buffer_bytes)
        self._to_upstream = Outbox(flow.buffer_bytes)
        # The outcome, once the core has decided it.
        self.ended: Ended | None = None
        self._ended_event = asyncio.Event()
        # Set while no client frame is held by the core (policy being applied).
        self._released = asyncio.Event()
        self._released.set()
        # The pending Wakeup, if any.
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # Since when each writer has been waiting for its leg to take a frame.
        self._sending_since: dict[Side, float | None] = {
            "client": None,
            "upstream": None,
        }
        self._watchdog: asyncio.TimerHandle | None = None
        self.close_codes: dict[Side, int | None] = {"client": None, "upstream": None}
        """How each leg ended (code received first, or sent first)."""
        # A drain requested before the session started.
        self._started = False
        self._drain_request: tuple[float, float] | None = None

    async def run(self) -> Ended:
        """Relay until both legs are closed; return how the session ended."""
        self._execute(self.session.handle(Started(self._loop.time())))
        self._started = True
        if self._drain_request is not None:
            self.drain(*self._drain_request)
        self._arm_watchdog()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._read_client(), name="read-client"),
                    group.create_task(self._read_upstream(), name="read-upstream"),
                    group.create_task(self._write_client(), name="write-client"),
                    group.create_task(self._write_upstream(), name="write-upstream"),
                ]
                await self._ended_event.wait()
                # Both writers deliver their queue and close frame within
                # close_timeout, then the readers see their legs close.
                _, pending = await asyncio.wait(
                    tasks, timeout=2 * self._flow.close_timeout + 1
                )
                for task in pending:
                    log.warning("session.task_cancelled", task=task.get_name())
                    task.cancel()
        finally:
            for timer in (self._timer, self._watchdog):
                if timer is not None:
                    timer.cancel()
        assert self.ended is not None
        return self.ended

    def drain(self, deadline: float, grace_seconds: float) -> None:
        """Tell the client the relay is draining; end the session by ``deadline``.

        Before :meth:`run` has started the session, the request waits for it.
        """
        if not self._started:
            self._drain_request = (deadline, grace_seconds)
            return
        self._execute(self.session.handle(Draining(deadline, grace_seconds)))

    def _arm_watchdog(self) -> None:
        interval = min(1.0, self._flow.stall_timeout / 2)
        self._watchdog = self._loop.call_later(interval, self._check_stalls)

    def _check_stalls(self) -> None:
        now = self._loop.time()
        for side, since in self._sending_since.items():
            if since is not None and now - since >= self._flow.stall_timeout:
                self._sending_since[side] = None
                self._observer.stalled(side)
                log.warning(
                    "session.stalled",
                    side=side,
                    stall_timeout_s=self._flow.stall_timeout,
                )
                self._execute(self.session.handle(Stalled(side)))
        if self.ended is None:
            self._arm_watchdog()

    def _execute(self, commands: list[Command]) -> None:
        for command in commands:
            match command:
                case Send(side=side, data=data):
                    (self._to_client if side == "client" else self._to_upstream).push(
                        data
                    )
                case Close(side=side, code=code, reason=reason):
                    self._closed_with(side, code)
                    (self._to_client if side == "client" else self._to_upstream).close(
                        code, reason
                    )
                case Abort(side=side):
                    self._closed_with(side, 1006)
                    self._abort(side)
                case Applied(action=action, field=field):
                    self._observer.policy_applied(action, field)
                    log.info("policy.applied", action=action, field=field)
                case Metered():
                    self._observer.metered(command)
                    if command.audio_seconds:
                        if command.direction == "client_to_upstream":
                            self.counters.audio_in_seconds += command.audio_seconds
                        else:
                            self.counters.audio_out_seconds += command.audio_seconds
                case TokensUsed():
                    self._observer.tokens(command)
                    self.counters.input_tokens += (
                        command.input_text + command.input_audio
                    )
                    self.counters.output_tokens += (
                        command.output_text + command.output_audio
                    )
                case FirstAudio(seconds=seconds):
                    self._observer.first_audio(seconds)
                case Wakeup(at=at):
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = self._loop.call_at(at, self._tick)
                case Ended():
                    self.ended = command
                    self._ended_event.set()
                case _:  # pragma: no cover - exhaustiveness is checked by mypy
                    assert_never(command)
        if self.session.held_bytes == 0:
            self._released.set()

    def _closed_with(self, side: Side, code: int) -> None:
        # The first close on a leg is how it ended: the peer's, or the relay's.
        if self.close_codes[side] is None:
            self.close_codes[side] = code

    def _abort(self, side: Side) -> None:
        if side == "upstream":
            self._to_upstream.discard()
            self._upstream.transport.abort()
            return
        self._to_client.discard()
        extension = self._client.scope.get("extensions", {}).get(ABORT_EXTENSION)
        if extension is not None:
            extension["abort"]()
        # Without the extension (another ASGI server) the writer's bounded close
        # attempt is all that can be done.

    def _tick(self) -> None:
        self._timer = None
        self._execute(self.session.handle(Tick(self._loop.time())))

    async def _apply(self, event: Event) -> None:
        """Execute what ``event`` causes, then wait for room to read on."""
        self._execute(self.session.handle(event))
        await self._to_upstream.wait_room()
        await self._to_client.wait_room()

    async def _read_client(self) -> None:
        while True:
            if self.session.held_bytes >= self._flow.buffer_bytes:
                # The policy is still being applied and the hold is full.
                self._released.clear()
                await self._released.wait()
            try:
                message = await self._client.receive()
            except (WebSocketDisconnect, RuntimeError):
                # The ASGI server already reported the disconnect (only possible
                # after the session ended): nothing left to read.
                message = {"type": "websocket.disconnect", "code": 1006}
            if message["type"] != "websocket.receive":
                self._to_client.discard()
                # uvicorn reports codes as enum members; the core deals in ints.
                code = int(message.get("code", 1005))
                self._closed_with("client", code)
                await self._apply(ClientClosed(code, message.get("reason") or ""))
                return
            text = message.get("text")
            data: str | bytes = text if text is not None else message["bytes"]
            size = frame_size(data)
            self.counters.client_messages += 1
            self.counters.client_bytes += size
            self._observer.client_to_upstream(size)
            await self._apply(ClientMessage(data, self._loop.time()))

    async def _read_upstream(self) -> None:
        upstream = self._upstream
        code: int | None = None
        try:
            async for data in upstream:
                size = frame_size(data)
                self.counters.upstream_messages += 1
                self.counters.upstream_bytes += size
                self._observer.upstream_to_client(size)
                await self._apply(UpstreamMessage(data, self._loop.time()))
        except ConnectionClosed as closed:
            if (
                closed.rcvd is None
                and closed.sent is not None
                and closed.sent.code == 1009
            ):
                # The relay refused an upstream message over max_message_bytes:
                # "too big" explains the end better than "connection lost".
                code = 1009
        self._to_upstream.discard()
        if code is None:
            # websockets reports 1006 when no close frame was received.
            code = upstream.close_code if upstream.close_code is not None else 1006
        self._closed_with("upstream", code)
        await self._apply(UpstreamClosed(code, upstream.close_reason or ""))

    async def _write_client(self) -> None:
        client = self._client
        while True:
            item = await self._to_client.get()
            if item is None:
                return
            try:
                if isinstance(item, CloseRequest):
                    async with asyncio.timeout(self._flow.close_timeout):
                        await client.close(item.code, item.reason)
                    return
                self._sending_since["client"] = self._loop.time()
                if isinstance(item, str):
                    await client.send({"type": "websocket.send", "text": item})
                else:
                    await client.send({"type": "websocket.send", "bytes": item})
                self._sending_since["client"] = None
            except (OSError, RuntimeError, WebSocketDisconnect, TimeoutError):
                # The client is gone or stopped reading past the close bound; its
                # reader reports the disconnect. Nothing more can be delivered.
                self._to_client.discard()
                return

    async def _write_upstream(self) -> None:
        upstream = self._upstream
        while True:
            item = await self._to_upstream.get()
            if item is None:
                return
            try:
                if isinstance(item, CloseRequest):
                    # close() waits for the closing handshake up to close_timeout,
                    # then drops the connection.
                    await upstream.close(item.code, item.reason)
                    return
                self._sending_since["upstream"] = self._loop.time()
                await upstream.send(item)
                self._sending_since["upstream"] = None
            except ConnectionClosed:
                self._to_upstream.discard()
                return
