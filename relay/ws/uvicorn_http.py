"""uvicorn's HTTP/1.1 protocol with the two bounds it lacks on a request's head.

Every connection to the relay, WebSocket or not, starts here: uvicorn parses
the request line and headers with httptools, then hands upgrades to
:class:`~relay.ws.uvicorn_websocket.RelayWebSocketProtocol`. uvicorn 0.54 bounds neither
how long nor how large that head may be:

* **time** (slowloris): no timer runs until a first response is sent, and the
  keep-alive timer is cancelled by any byte, so a client that connects and
  sends nothing, or one byte a second, holds its socket forever. Here the
  whole head must arrive within ``header_timeout`` of the connection (or of
  the previous response); otherwise the client gets 408 and is closed.
* **size**: httptools buffers a header of any length. Here a head over
  :data:`MAX_HEAD_BYTES` gets 431 and is closed, whether it is still arriving
  or arrived whole in one read.

Once the head is in, the request is uvicorn's again (and the WebSocket
handshake is bounded by ``limits.handshake_timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.ws.uvicorn_websocket import http_error, refuse


__all__ = ["MAX_HEAD_BYTES", "RelayHttpProtocol", "http_protocol"]

MAX_HEAD_BYTES: Final = 64 * 1024
"""The largest request head accepted (request line and headers), in bytes.

A JWT in ``Authorization`` is a few KB; the WebSocket parser behind this one
also refuses any single header line over 8 KiB."""


class _HeadTooLarge(Exception):
    """Raised from a parser callback: the head passed :data:`MAX_HEAD_BYTES`."""


class RelayHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a deadline and a size limit on each request head.

    Use :func:`http_protocol` to get the class with the configured deadline.
    """

    header_timeout: float = 10.0
    """Seconds a request head may take, from the connection or the previous response."""
    on_refused: Callable[[str], None] | None = None
    """Told the reason of each refusal (``request_timeout``, ``request_header_fields_too_large``, ``bad_request``)."""

    # Set in connection_made; uvicorn calls it before anything else.
    _head_timer: asyncio.TimerHandle | None = None
    _head_open = False
    _head_received = 0  # bytes received while the head is incomplete
    _head_size = 0  # the head's parsed length so far: URL, names and values
    _too_large = False
    _refused = False  # answered with an error; the connection is closing
    _linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start as uvicorn does; the first head's deadline starts now."""
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """End as uvicorn does, without a timer left behind."""
        self._head_arrived()
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser as uvicorn does; refuse a head that grew too large."""
        if self._refused:
            return  # answered: what the client still sends is discarded
        if self._head_open:
            self._head_received += len(data)
        super().data_received(data)
        if (
            self._head_open
            and self._head_received > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            # Still incomplete past the limit: do not wait for the rest.
            self._too_large = True
            self.send_400_response("")

    # Parser callbacks, called from within super().data_received.

    def on_message_begin(self) -> None:
        """A request starts: its head is counted from zero."""
        self._head_size = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        """Count the URL (it may come in pieces) against the limit."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header line (name, value, ``": "`` and CRLF) against the limit."""
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: no deadline until the response is sent."""
        self._head_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Continue as uvicorn does; an idle connection awaits its next head."""
        super().on_response_complete()
        # With pipelined requests, the next one is already in and running.
        idle = self.cycle.response_complete and not self.pipeline
        if idle and not self.transport.is_closing():
            self._await_head()

    def handle_websocket_upgrade(self) -> None:
        """Hand an upgrade to the WebSocket protocol as uvicorn does; refuse one over HTTP/1.0.

        RFC 6455 §4.1: the opening handshake is HTTP/1.1. uvicorn rewrites the
        request line as HTTP/1.1 before the WebSocket protocol parses it, so
        only here is the client's version still known.
        """
        if self.scope.get("http_version") != "1.1":
            self.logger.info(
                "WebSocket upgrade refused: HTTP/%s", self.scope.get("http_version")
            )
            self._refuse(
                "bad_request",
                http_error(
                    400,
                    "Bad Request",
                    "bad_request",
                    "a WebSocket upgrade needs HTTP/1.1",
                ),
            )
            return
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a head it could not parse: 400, or 431 for one too large."""
        self._head_arrived()
        if self.transport.is_closing() or self._refused:
            return
        if self._too_large:
            self.logger.info(
                "Request refused: its head is over %d bytes", MAX_HEAD_BYTES
            )
            self._refuse(
                "request_header_fields_too_large",
                http_error(
                    431,
                    "Request Header Fields Too Large",
                    "request_header_fields_too_large",
                    f"the request's head is over {MAX_HEAD_BYTES} bytes",
                ),
            )
        else:
            # uvicorn has logged it ("Invalid HTTP request received.").
            self._refuse(
                "bad_request",
                http_error(400, "Bad Request", "bad_request", "malformed HTTP request"),
            )

    # Internals

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            self._too_large = True
            # httptools wraps it in HttpParserCallbackError, which uvicorn
            # answers with send_400_response: 431 above.
            raise _HeadTooLarge

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_open = True
        self._head_received = 0
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def _head_arrived(self) -> None:
        self._head_open = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._head_open or self.transport.is_closing():
            return
        self._head_open = False
        self.logger.info(
            "Request refused: its head took over %g s", self.header_timeout
        )
        self._refuse(
            "request_timeout",
            http_error(
                408,
                "Request Timeout",
                "request_timeout",
                f"the request's head did not arrive within {self.header_timeout:g} s",
            ),
        )

    def _refuse(self, reason: str, response: bytes) -> None:
        """Answer, count, and close with a lingering close (:func:`~relay.ws.uvicorn_websocket.refuse`)."""
        self._refused = True
        if self.on_refused is not None:
            self.on_refused(reason)
        self._linger = refuse(self.transport, self.loop, response)


def http_protocol(
    header_timeout: float, on_refused: Callable[[str], None] | None = None
) -> type[RelayHttpProtocol]:
    """:class:`RelayHttpProtocol` configured (uvicorn takes a class, not an instance)."""

    class Configured(RelayHttpProtocol):
        pass

    Configured.header_timeout = header_timeout
    # staticmethod: a plain function stored on a class would be bound as a method.
    Configured.on_refused = staticmethod(on_refused) if on_refused else None
    Configured.__name__ = Configured.__qualname__ = "RelayHttpProtocol"
    return Configured
