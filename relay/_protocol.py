"""uvicorn's sans-I/O WebSocket protocol, with one correction for denial responses."""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


__all__ = ["RelayWebSocketProtocol"]


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """:class:`WebSocketsSansIOProtocol` that knows a denial response answers the handshake.

    uvicorn 0.54 does not mark the handshake complete after an ASGI denial
    response (``websocket.http.response.*``), so every 401/404/429 the relay
    answers before upgrade would also log "ASGI callable returned without
    completing handshake" at ERROR. The response itself is sent correctly.
    """

    async def send(self, message: ASGISendEvent) -> None:
        """Send as uvicorn does; a complete denial response completes the handshake."""
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get(
            "more_body", False
        ):
            self.handshake_complete = True
