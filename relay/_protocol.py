"""uvicorn's sans-I/O WebSocket protocol: handshake corrections, and handing the
connection to the relay's hot path once accepted."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import SecurityError
from websockets.http11 import Request

from relay._legs import Leg


__all__ = ["ADOPT_EXTENSION", "Adopt", "RelayWebSocketProtocol", "http_error"]

ADOPT_EXTENSION = "relay.adopt"
"""ASGI scope extension through which the endpoint takes over the connection.

``scope["extensions"]["relay.adopt"]["adopt"]`` is an :class:`Adopt`: call
``prepare()`` right before ``websocket.accept``, then ``leg(...)`` right after
it. From then on the connection is a :class:`~relay._legs.Leg`: frames no
longer go through uvicorn's parser, ASGI messages or the receive queue."""


class Adopt(Protocol):
    """The two calls of :data:`ADOPT_EXTENSION`."""

    def prepare(self) -> None: ...

    def leg(
        self,
        *,
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        write_limit: int,
    ) -> Leg: ...


def http_error(status: int, phrase: str, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response (JSON body, ``Connection: close``)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """:class:`WebSocketsSansIOProtocol` that answers every handshake it cannot serve.

    It also lets the relay take the accepted connection over
    (:data:`ADOPT_EXTENSION`): an ASGI message, a queue hop and a task switch
    per frame cost more than the relaying itself, and ASGI can neither drop a
    connection (a client that stopped reading never gets a close frame) nor
    forward a frame as received.

    Two gaps of uvicorn 0.54 are closed here:

    * an upgrade request the `websockets` parser refuses (a header line over
      8 KiB, too many headers, a malformed request line) got no answer at all:
      the connection hung open. It now gets 431 (too large) or 400 and is
      closed;
    * after an ASGI denial response (``websocket.http.response.*``) uvicorn did
      not mark the handshake complete, so every 401/404/429 the relay answers
      also logged "ASGI callable returned without completing handshake" at
      ERROR. The response itself was always sent correctly.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._adopting = False
        # Bytes received between the 101 response and the leg's creation.
        self._early: list[bytes] = []
        self._leg: Leg | None = None

    def handle_connect(self, event: Request) -> None:
        """Start the ASGI application as uvicorn does, offering :data:`ADOPT_EXTENSION`."""
        super().handle_connect(event)
        self.scope.setdefault("extensions", {})[ADOPT_EXTENSION] = {"adopt": self}

    def prepare(self) -> None:
        """The next ``websocket.accept`` hands the connection to a leg (see :data:`ADOPT_EXTENSION`)."""
        self._adopting = True

    def leg(
        self,
        *,
        max_size: int,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
        write_limit: int,
    ) -> Leg:
        """The accepted connection as a :class:`~relay._legs.Leg` (server side)."""
        if not self._adopting or not self.handshake_complete or self._leg is not None:
            raise RuntimeError("leg() must follow prepare() and websocket.accept once")
        leg = Leg(
            self.transport,
            server=True,
            max_size=max_size,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            write_limit=write_limit,
            name="client",
        )
        self._leg = leg
        if self.disconnected:
            leg.connection_lost()
            return leg
        if not self.writable.is_set():
            leg.pause_writing()
        if self.read_paused:
            # uvicorn pauses reading while its queue holds a message; the leg
            # owns reading from now on.
            self.read_paused = False
            self.transport.resume_reading()
        early, self._early = b"".join(self._early), []
        if early:
            leg.data_received(early)
        return leg

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's bookkeeping, then the leg learns the connection is gone."""
        super().connection_lost(exc)
        if self._leg is not None:
            self._leg.connection_lost()

    def pause_writing(self) -> None:
        """Flow control reaches the leg once adopted."""
        super().pause_writing()
        if self._leg is not None:
            self._leg.pause_writing()

    def resume_writing(self) -> None:
        """Flow control reaches the leg once adopted."""
        super().resume_writing()
        if self._leg is not None:
            self._leg.resume_writing()

    def shutdown(self) -> None:
        """Server exit: an adopted connection gets 1012 and its closing handshake."""
        if self._leg is None:
            super().shutdown()
            return
        self._leg.close(1012, "server shutting down")

    def data_received(self, data: bytes) -> None:
        """Feed the parser as uvicorn does, then answer a request it refused.

        Once accepted for adoption, bytes go to the leg instead.
        """
        if self._leg is not None:
            self._leg.data_received(data)
            return
        if self._adopting and self.handshake_complete:
            self._early.append(data)
            return
        super().data_received(data)
        failure = self.conn.handshake_exc
        if failure is None or self.handshake_complete or self.transport.is_closing():
            return
        self.handshake_complete = True
        if isinstance(failure.__cause__, SecurityError):
            response = http_error(
                431,
                "Request Header Fields Too Large",
                "request_header_fields_too_large",
                "the upgrade request's headers are too large",
            )
        else:
            response = http_error(
                400, "Bad Request", "bad_request", "malformed upgrade request"
            )
        self.logger.info(
            "WebSocket upgrade refused: %s", type(failure.__cause__).__name__
        )
        self.transport.write(response)
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does; a complete denial response completes the handshake.

        An accept prepared for adoption stops uvicorn's keepalive: the leg runs
        its own.
        """
        await super().send(message)
        if message["type"] == "websocket.accept" and self._adopting:
            self.stop_keepalive()
        if message["type"] == "websocket.http.response.body" and not message.get(
            "more_body", False
        ):
            self.handshake_complete = True
