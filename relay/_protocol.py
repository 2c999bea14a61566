"""uvicorn's sans-I/O WebSocket protocol, with two corrections at the handshake."""

from __future__ import annotations

import json

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import SecurityError
from websockets.http11 import Request


__all__ = ["ABORT_EXTENSION", "RelayWebSocketProtocol"]

ABORT_EXTENSION = "relay.abort"
"""ASGI scope extension: ``scope["extensions"]["relay.abort"]["abort"]()`` drops
the client's connection at once (RST), for a client that stopped reading."""


def _http_error(status: int, phrase: str, code: str, message: str) -> bytes:
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

    It also offers the application a way to drop a connection
    (:data:`ABORT_EXTENSION`): ASGI has none, and a close frame can never reach
    a client that stopped reading, so the connection would otherwise stay open
    until the kernel gives up.

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

    def handle_connect(self, event: Request) -> None:
        """Start the ASGI application as uvicorn does, offering :data:`ABORT_EXTENSION`."""
        super().handle_connect(event)
        self.scope.setdefault("extensions", {})[ABORT_EXTENSION] = {
            "abort": self._abort
        }

    def _abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Feed the parser as uvicorn does, then answer a request it refused."""
        super().data_received(data)
        failure = self.conn.handshake_exc
        if failure is None or self.handshake_complete or self.transport.is_closing():
            return
        self.handshake_complete = True
        if isinstance(failure.__cause__, SecurityError):
            response = _http_error(
                431,
                "Request Header Fields Too Large",
                "request_header_fields_too_large",
                "the upgrade request's headers are too large",
            )
        else:
            response = _http_error(
                400, "Bad Request", "bad_request", "malformed upgrade request"
            )
        self.logger.info(
            "WebSocket upgrade refused: %s", type(failure.__cause__).__name__
        )
        self.transport.write(response)
        self.transport.close()

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does; a complete denial response completes the handshake."""
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get(
            "more_body", False
        ):
            self.handshake_complete = True
