"""uvicorn's sans-I/O WebSocket protocol: handshake corrections, and handing the
connection to the relay's hot path once accepted."""

from __future__ import annotations

import asyncio
import http
import json
from collections.abc import Callable
from typing import Any, Final, Protocol

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.exceptions import InvalidHandshake, InvalidHeader, SecurityError
from websockets.http11 import Request

from relay.ws.leg import Leg


__all__ = [
    "ADOPT_EXTENSION",
    "LINGER_SECONDS",
    "Adopt",
    "RelayWebSocketProtocol",
    "http_error",
    "refuse",
    "ws_protocol",
]

_VERSION: Final = "Sec-WebSocket-Version"

LINGER_SECONDS: Final = 2.0
"""How long a refused client may keep sending before the connection is closed."""

ADOPT_EXTENSION = "relay.adopt"
"""ASGI scope extension through which the endpoint takes over the connection.

``scope["extensions"]["relay.adopt"]["adopt"]`` is an :class:`Adopt`: call
``prepare()`` right before ``websocket.accept``, then ``leg(...)`` right after
it. From then on the connection is a :class:`~relay.ws.leg.Leg`: frames no
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


def http_error(
    status: int,
    phrase: str,
    code: str,
    message: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 error response (JSON body, ``Connection: close``)."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def refuse(
    transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, response: bytes
) -> asyncio.TimerHandle:
    """Answer ``response``, then close without losing it; returns the close timer.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy the answer before the client reads it (a client still sending an
    oversized head always has unread input). So: send the answer and FIN; the
    caller discards what still arrives; the connection closes when the client
    closes, or after :data:`LINGER_SECONDS` (nginx's lingering close).
    """
    transport.write(response)
    if transport.can_write_eof():
        transport.write_eof()
    return loop.call_later(LINGER_SECONDS, transport.close)


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """:class:`WebSocketsSansIOProtocol` that answers every handshake it cannot serve.

    It also lets the relay take the accepted connection over
    (:data:`ADOPT_EXTENSION`): an ASGI message, a queue hop and a task switch
    per frame cost more than the relaying itself, and ASGI can neither drop a
    connection (a client that stopped reading never gets a close frame) nor
    forward a frame as received.

    Every upgrade request that never reaches the application gets the
    relay's JSON error, is counted through :attr:`on_refused`, and is closed
    with a lingering close (:func:`refuse`):

    * one the `websockets` parser refuses: 431 for a request line or header
      line over 8 KiB or more than 128 headers, 400 for anything malformed.
      uvicorn 0.54 left the connection open with no answer; 0.55 answers
      itself in plain text (``handle_handshake_exception``), with websockets'
      own 414/431 from websockets 17 on;
    * one websockets' ``accept`` refuses (no or a bad ``Sec-WebSocket-Key``,
      a method other than GET): its status (400, or 405 with ``Allow: GET``
      from websockets 17 on), where uvicorn sends websockets' plain-text
      response; for no or another ``Sec-WebSocket-Version``, 426 naming
      version 13 (RFC 6455 §4.4).

    And after an ASGI denial response (``websocket.http.response.*``) uvicorn
    0.54 did not mark the handshake complete, so every 401/404/429 the relay
    answers also logged "ASGI callable returned without completing handshake"
    at ERROR (0.55 marks it at the response's start).

    tests/ws/test_uvicorn_seam.py pins each assumption made of uvicorn here, on
    every uvicorn version the project supports. Use :func:`ws_protocol` to get
    the class with a refusal counter.
    """

    on_refused: Callable[[str], None] | None = None
    """Told the reason of each refusal (``request_header_fields_too_large``, ``bad_request``)."""

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
        # Answered with an error: what the client still sends is discarded.
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None

    @property
    def adopted(self) -> bool:
        """Whether a leg owns the connection (see :data:`ADOPT_EXTENSION`)."""
        return self._leg is not None

    def handle_connect(self, event: Request) -> None:
        """Start the ASGI application as uvicorn does, offering :data:`ADOPT_EXTENSION`.

        A request websockets cannot accept as an upgrade is refused here,
        before uvicorn would send websockets' plain-text answer.
        """
        # uvicorn calls accept() again; it only computes the response.
        attempt = self.conn.accept(event)
        if attempt.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            self._refuse_handshake(attempt.status_code)
            return
        super().handle_connect(event)
        self.scope.setdefault("extensions", {})[ADOPT_EXTENSION] = {"adopt": self}

    def handle_handshake_exception(self) -> None:
        """uvicorn (0.55 on) could not parse the upgrade request: the relay answers."""
        self._refuse_handshake(None)

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
        """The accepted connection as a :class:`~relay.ws.leg.Leg` (server side)."""
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
        if self._linger is not None:
            self._linger.cancel()
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
        """Feed the parser as uvicorn does, then answer a request it could not parse.

        Once accepted for adoption, bytes go to the leg instead.
        """
        if self._leg is not None:
            self._leg.data_received(data)
            return
        if self._adopting and self.handshake_complete:
            self._early.append(data)
            return
        if self._refused:
            return
        super().data_received(data)
        # uvicorn before 0.55 leaves an unparsable request unanswered.
        if (
            self.conn.handshake_exc is not None
            and not self.handshake_initiated
            and not self._refused
        ):
            self._refuse_handshake(None)

    def _refuse_handshake(self, status: int | None) -> None:
        """Answer an upgrade request that never reaches the application.

        Args:
            status: websockets' status for a request it parsed but refused to
                accept; ``None`` for one it could not parse.
        """
        failure = self.conn.handshake_exc
        # websockets 17 raises the limit's exception itself; 15 and 16 wrap
        # it in InvalidMessage.
        cause = failure if isinstance(failure, SecurityError) else None
        if cause is None and failure is not None:
            inner = failure.__cause__
            cause = inner if isinstance(inner, SecurityError) else None
        # websockets may have queued its own answer (a 414/431 from 17 on).
        self.conn.data_to_send()
        self.handshake_complete = True
        self.close_sent = True  # uvicorn's shutdown then just closes the socket
        self._refused = True
        if cause is not None:
            code, reason = 431, "request_header_fields_too_large"
            message = "the upgrade request's headers are too large"
        else:
            code = status if status is not None and 400 <= status < 500 else 400
            reason = "bad_request"
            detail = _describe(failure)
            message = "malformed upgrade request" + (f": {detail}" if detail else "")
        headers: tuple[tuple[str, str], ...] = ()
        if isinstance(failure, InvalidHeader) and failure.name == _VERSION:
            # RFC 6455 §4.4: name the version the server speaks.
            code, headers = http.HTTPStatus.UPGRADE_REQUIRED, ((_VERSION, "13"),)
        elif code == http.HTTPStatus.METHOD_NOT_ALLOWED:
            headers = (("Allow", "GET"),)  # RFC 9110 §15.5.6
        response = http_error(
            code, http.HTTPStatus(code).phrase, reason, message, headers
        )
        self.logger.info(
            "WebSocket upgrade refused with %d: %s",
            code,
            type(cause or failure).__name__,
        )
        if self.on_refused is not None:
            self.on_refused(reason)
        if not self.transport.is_closing():
            self._linger = refuse(self.transport, self.loop, response)

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


def _describe(failure: BaseException | None) -> str:
    """websockets' reason for refusing a handshake, short enough to echo."""
    if not isinstance(failure, InvalidHandshake):
        return ""
    text = str(failure)
    return text if len(text) <= 200 else text[:197] + "..."


def ws_protocol(
    on_refused: Callable[[str], None] | None = None,
) -> type[RelayWebSocketProtocol]:
    """:class:`RelayWebSocketProtocol` with a refusal counter (uvicorn takes a class)."""

    class Configured(RelayWebSocketProtocol):
        pass

    # staticmethod: a plain function stored on a class would be bound as a method.
    Configured.on_refused = staticmethod(on_refused) if on_refused else None
    Configured.__name__ = Configured.__qualname__ = "RelayWebSocketProtocol"
    return Configured
