"""Runs one relayed session: the I/O around :class:`relay.sansio.session.RelaySession`.

Four tasks share one :class:`asyncio.TaskGroup`: a reader per leg turns what
arrives into events for the core, and a writer per leg drains that leg's
:class:`~relay._outbox.Outbox`. The core's commands are executed in order by
the reader that caused them. Backpressure is end to end: a slow leg fills its
outbox, the other leg's reader waits in ``put`` and stops reading, and TCP
pushes back on the sender. When the session ends, every task ends with it:
each writer delivers what is queued and the close frame within
``close_timeout``, and anything still running after a final bound is cancelled.
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
from relay.config import FlowSettings
from relay.sansio.commands import Close, Ended, Send
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Event,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.session import RelaySession


__all__ = ["SessionCounters", "SessionDriver", "Traffic"]

log = structlog.get_logger("relay.session")


class Traffic(Protocol):
    """Where the driver reports each relayed message (metrics, at the edge)."""

    def client_to_upstream(self, size: int) -> None: ...

    def upstream_to_client(self, size: int) -> None: ...


@dataclass(slots=True)
class SessionCounters:
    """Messages and bytes received from each leg during one session."""

    client_messages: int = 0
    client_bytes: int = 0
    upstream_messages: int = 0
    upstream_bytes: int = 0


class SessionDriver:
    """Relays between an accepted client WebSocket and an open upstream connection."""

    def __init__(
        self,
        client: WebSocket,
        upstream: ClientConnection,
        *,
        flow: FlowSettings,
        traffic: Traffic,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._flow = flow
        self._traffic = traffic
        self.session = RelaySession()
        self.counters = SessionCounters()
        # Frames waiting for each leg.
        self._to_client = Outbox(flow.buffer_bytes)
        self._to_upstream = Outbox(flow.buffer_bytes)
        # The outcome, once the core has decided it.
        self.ended: Ended | None = None
        self._ended_event = asyncio.Event()

    async def run(self) -> Ended:
        """Relay until both legs are closed; return how the session ended."""
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._read_client(), name="read-client"),
                group.create_task(self._read_upstream(), name="read-upstream"),
                group.create_task(self._write_client(), name="write-client"),
                group.create_task(self._write_upstream(), name="write-upstream"),
            ]
            await self._ended_event.wait()
            # Both writers deliver their queue and close frame within close_timeout,
            # then the readers see their legs close. Give that twice the bound.
            _, pending = await asyncio.wait(
                tasks, timeout=2 * self._flow.close_timeout + 1
            )
            for task in pending:
                log.warning("session.task_cancelled", task=task.get_name())
                task.cancel()
        assert self.ended is not None
        return self.ended

    async def _apply(self, event: Event) -> None:
        for command in self.session.handle(event):
            match command:
                case Send(side=side, data=data):
                    await (
                        self._to_client if side == "client" else self._to_upstream
                    ).put(data)
                case Close(side=side, code=code, reason=reason):
                    (self._to_client if side == "client" else self._to_upstream).close(
                        code, reason
                    )
                case Ended():
                    self.ended = command
                    self._ended_event.set()
                case _:  # pragma: no cover - exhaustiveness is checked by mypy
                    assert_never(command)

    async def _read_client(self) -> None:
        while True:
            try:
                message = await self._client.receive()
            except (WebSocketDisconnect, RuntimeError):
                # The ASGI server already reported the disconnect to another reader
                # (only possible after the session ended): nothing left to read.
                message = {"type": "websocket.disconnect", "code": 1006}
            if message["type"] != "websocket.receive":
                self._to_client.discard()
                # uvicorn reports codes as enum members; the core deals in ints.
                code = int(message.get("code", 1005))
                await self._apply(ClientClosed(code, message.get("reason") or ""))
                return
            text = message.get("text")
            data: str | bytes = text if text is not None else message["bytes"]
            size = frame_size(data)
            self.counters.client_messages += 1
            self.counters.client_bytes += size
            self._traffic.client_to_upstream(size)
            await self._apply(ClientMessage(data))

    async def _read_upstream(self) -> None:
        upstream = self._upstream
        # websockets reports 1006 when no close frame was received (connection lost).
        code: int | None = None
        try:
            async for data in upstream:
                size = frame_size(data)
                self.counters.upstream_messages += 1
                self.counters.upstream_bytes += size
                self._traffic.upstream_to_client(size)
                await self._apply(UpstreamMessage(data))
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
            code = upstream.close_code if upstream.close_code is not None else 1006
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
                if isinstance(item, str):
                    await client.send({"type": "websocket.send", "text": item})
                else:
                    await client.send({"type": "websocket.send", "bytes": item})
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
                await upstream.send(item)
            except ConnectionClosed:
                self._to_upstream.discard()
                return
