"""Opening the upstream (Azure) WebSocket, and mapping its refusals.

The relay connects upstream *before* accepting the client, so every upstream
refusal becomes an HTTP answer the client's SDK understands (its normal
handshake exception) instead of an accept followed by a silent close.

The opening handshake (RFC 6455 §4.1) is done here on a plain asyncio
protocol, so that the established connection is a :class:`~relay.ws.leg.Leg`
from its first byte: the upstream's first event usually arrives in the same
read as the ``101`` response, and no other parser may have consumed it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import structlog

from relay.exceptions import (
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from relay.sansio.closes import client_status_for_upstream
from relay.sansio.settings import FlowSettings
from relay.ws.leg import Leg


__all__ = ["UpstreamConnection", "UpstreamResponse", "open_upstream"]

log = structlog.get_logger("relay.upstream")

# Upstream error bodies passed on to clients (400/404) are capped: they are
# Azure's JSON error objects, a few hundred bytes.
_MAX_PASSED_BODY = 4096
# A handshake response head larger than this is not a WebSocket server's.
_MAX_HEAD = 65536
_MAX_HEADERS = 128
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """The upstream's handshake response: status, headers (lower-case names), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class UpstreamConnection:
    """An open upstream WebSocket: the leg the session relays on, and the response."""

    leg: Leg
    response: UpstreamResponse

    async def close(self, code: int, reason: str) -> None:
        """Close (idempotent); return once the connection is gone.

        The leg drops the connection if the upstream does not answer within
        its close timeout, so this returns within that bound.
        """
        self.leg.close(code, reason)
        await asyncio.shield(self.leg.done)


class _HandshakeFailed(Exception):
    """The response was not a valid WebSocket handshake."""


class _UpstreamProtocol(asyncio.Protocol):
    """Sends the upgrade request, reads the response, then hands bytes to the leg."""

    def __init__(
        self, request: bytes, key: bytes, make_leg: Callable[[asyncio.Transport], Leg]
    ) -> None:
        loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[UpstreamConnection | UpstreamResponse] = (
            loop.create_future()
        )
        """The open connection, or the refusal (a response other than 101)."""
        self._request = request
        self._expected_accept = base64.b64encode(
            hashlib.sha1(key + _GUID, usedforsecurity=False).digest()
        ).decode()
        self._make_leg = make_leg
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._leg: Leg | None = None
        # A refusal whose body is still arriving: (status, headers, wanted bytes).
        self._refusal: tuple[int, dict[str, str], int] | None = None
        self._body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._leg is not None:
            self._leg.data_received(data)
        elif self._refusal is not None:
            self._body += data
            if len(self._body) >= self._refusal[2]:
                self._refused()
        elif not self.outcome.done():
            self._head += data
            self._read_head()

    def _read_head(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD:
                self._fail(_HandshakeFailed("response head too large"))
            return
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        try:
            status, headers = _parse_head(head)
            if status == 101:
                self._switch(headers, rest)
                return
        except _HandshakeFailed as failure:
            self._fail(failure)
            return
        try:
            wanted = int(headers.get("content-length", "0"))
        except ValueError:
            wanted = 0
        # Only a small body is of use (see _error_body); never wait for more.
        self._refusal = (status, headers, min(max(wanted, 0), _MAX_PASSED_BODY + 1))
        self._body = rest
        if len(self._body) >= self._refusal[2]:
            self._refused()

    def _switch(self, headers: dict[str, str], rest: bytes) -> None:
        if headers.get("upgrade", "").lower() != "websocket":
            raise _HandshakeFailed("missing Upgrade: websocket")
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if "upgrade" not in tokens:
            raise _HandshakeFailed("missing Connection: upgrade")
        if headers.get("sec-websocket-accept") != self._expected_accept:
            raise _HandshakeFailed("wrong Sec-WebSocket-Accept")
        # Nothing was offered, so nothing may be selected (RFC 6455 §4.1).
        if "sec-websocket-extensions" in headers or "sec-websocket-protocol" in headers:
            raise _HandshakeFailed("an extension or subprotocol nobody offered")
        assert self._transport is not None
        leg = self._make_leg(self._transport)
        self._leg = leg
        self.outcome.set_result(UpstreamConnection(leg, UpstreamResponse(101, headers)))
        if rest:
            leg.data_received(rest)

    def _refused(self) -> None:
        assert self._refusal is not None
        status, headers, _ = self._refusal
        self._refusal = None
        if not self.outcome.done():
            self.outcome.set_result(UpstreamResponse(status, headers, self._body))
        if self._transport is not None:
            self._transport.close()

    def _fail(self, failure: Exception) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(failure)
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._leg is not None:
            self._leg.connection_lost()
        elif self._refusal is not None:
            self._refused()  # the body ended with the connection
        elif not self.outcome.done():
            self.outcome.set_exception(
                ConnectionResetError("the upstream closed during the handshake")
            )

    def pause_writing(self) -> None:
        if self._leg is not None:
            self._leg.pause_writing()

    def resume_writing(self) -> None:
        if self._leg is not None:
            self._leg.resume_writing()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and headers of an HTTP/1.1 response head (without the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any bytes
        raise _HandshakeFailed("undecodable response") from None
    status_line, *lines = text.split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version != "HTTP/1.1" or len(code) != 3 or not code.isdigit():
        raise _HandshakeFailed("not an HTTP/1.1 response")
    if len(lines) > _MAX_HEADERS:
        raise _HandshakeFailed("too many response headers")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or "\n" in line:
            raise _HandshakeFailed("malformed response header")
        # Repeated headers keep the last value: none the relay reads repeats.
        headers[name.lower()] = value.strip(" \t")
    return int(code), headers


def _request(
    path: str, host_header: str, key: bytes, headers: Sequence[tuple[str, str]]
) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0"):
            # Header values come from configuration and tokens, never clients;
            # a line break would still be a request-splitting bug.
            raise UpstreamUnavailable("an upstream header contains a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def open_upstream(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout: float,
    max_message_bytes: int,
    flow: FlowSettings,
    ssl_context: ssl.SSLContext | None = None,
) -> UpstreamConnection:
    """Connect to ``url`` (``ws://`` or ``wss://``) with exactly ``headers``.

    No compression or subprotocol is offered: permessage-deflate costs
    35-46 µs per 1.3 KB frame for almost no gain on base64 audio, and invites
    CRIME-style leaks.

    Raises:
        UpstreamRefused: the upstream answered with an HTTP error status.
        UpstreamTimeout: no complete handshake within ``connect_timeout``
            (DNS, TCP, TLS and the upgrade together).
        UpstreamUnavailable: the connection failed (refused, reset, DNS, TLS,
            or an invalid handshake response).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UpstreamUnavailable("the upstream URL is not a ws:// or wss:// URL")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    request = _request(path, host_header, key, headers)

    def make_leg(transport: asyncio.Transport) -> Leg:
        return Leg(
            transport,
            server=False,
            max_size=max_message_bytes,
            ping_interval=flow.ping_interval,
            ping_timeout=flow.ping_timeout,
            close_timeout=flow.close_timeout,
            write_limit=flow.buffer_bytes,
            name="upstream",
        )

    loop = asyncio.get_running_loop()
    protocol: _UpstreamProtocol | None = None
    transport: asyncio.BaseTransport | None = None
    opened: UpstreamConnection | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            transport, protocol = await loop.create_connection(
                lambda: _UpstreamProtocol(request, key, make_leg),
                host,
                port,
                ssl=(ssl_context or ssl.create_default_context()) if secure else None,
                server_hostname=host if secure else None,
            )
            result = await protocol.outcome
        if isinstance(result, UpstreamResponse):
            raise _refused(result)
        opened = result
        return result
    except UpstreamError:
        raise
    except TimeoutError:
        log.warning("upstream.connect_timeout", timeout_s=connect_timeout)
        raise UpstreamTimeout("the upstream did not answer in time") from None
    except (OSError, _HandshakeFailed) as exc:
        log.warning(
            "upstream.connect_failed", error=type(exc).__name__, detail=str(exc)
        )
        raise UpstreamUnavailable("the upstream is unavailable") from None
    finally:
        if opened is None:
            # Refused, failed, timed out or cancelled: nothing may stay open.
            outcome = protocol.outcome if protocol is not None else None
            if outcome is not None and outcome.done() and not outcome.cancelled():
                late = outcome.exception() is None and outcome.result()
                if isinstance(late, UpstreamConnection):
                    late.leg.abort()
            if transport is not None:
                cast(asyncio.Transport, transport).abort()


def _refused(response: UpstreamResponse) -> UpstreamRefused:
    upstream_status = response.status
    status = client_status_for_upstream(upstream_status)
    context = {
        "upstream_status": upstream_status,
        "apim_request_id": response.headers.get("apim-request-id"),
        "region": response.headers.get("x-ms-region"),
    }
    if upstream_status in (401, 403):
        # The relay's own credential is wrong or lacks the role: an operator
        # problem. The client only learns that the upstream failed.
        log.error("upstream.auth_rejected", **context)
        return UpstreamRefused(
            "the upstream rejected the relay's credentials",
            status=status,
            upstream_status=upstream_status,
        )
    log.warning("upstream.refused", **context)
    retry_after = response.headers.get("retry-after")
    if upstream_status == 429:
        return UpstreamRefused(
            "the upstream is throttling requests; retry later",
            status=status,
            upstream_status=upstream_status,
            retry_after=retry_after,
        )
    if status in (400, 404):
        # The client's request is what the upstream refused: pass Azure's own
        # explanation on when it is a small JSON error object.
        return UpstreamRefused(
            "the upstream refused the request",
            status=status,
            upstream_status=upstream_status,
            body=_error_body(response.body),
        )
    return UpstreamRefused(
        "the upstream failed to open the session",
        status=status,
        upstream_status=upstream_status,
        retry_after=retry_after if status == 503 else None,
    )


def _error_body(body: bytes) -> dict[str, object] | None:
    if not body or len(body) > _MAX_PASSED_BODY:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # a hostile body may nest deeply
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed
    return None
