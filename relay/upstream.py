"""Opening the upstream (Azure) WebSocket, and mapping its refusals.

The relay connects upstream *before* accepting the client, so every upstream
refusal becomes an HTTP answer the client's SDK understands (its normal
handshake exception) instead of an accept followed by a silent close.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from relay.config import FlowSettings
from relay.exceptions import UpstreamRefused, UpstreamTimeout, UpstreamUnavailable
from relay.logs import UPSTREAM_WEBSOCKETS_LOGGER
from relay.sansio.closes import client_status_for_upstream


__all__ = ["open_upstream"]

log = structlog.get_logger("relay.upstream")

# Upstream error bodies passed on to clients (400/404) are capped: they are
# Azure's JSON error objects, a few hundred bytes.
_MAX_PASSED_BODY = 4096


async def open_upstream(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout: float,
    max_message_bytes: int,
    flow: FlowSettings,
) -> ClientConnection:
    """Connect to ``url`` with exactly ``headers``; return the open connection.

    Raises:
        UpstreamRefused: the upstream answered with an HTTP error status.
        UpstreamTimeout: no complete handshake within ``connect_timeout``.
        UpstreamUnavailable: the connection failed (refused, reset, DNS, TLS,
            or an invalid handshake response).
    """
    try:
        async with asyncio.timeout(connect_timeout):
            return await connect(
                url,
                additional_headers=list(headers),
                user_agent_header=None,  # set by `headers`, from the allow-list
                # permessage-deflate costs 35-46 µs per 1.3 KB frame for almost
                # no gain on base64 audio, and invites CRIME-style leaks.
                compression=None,
                open_timeout=None,  # bounded above, together with DNS and TLS
                max_size=max_message_bytes,
                ping_interval=flow.ping_interval,
                ping_timeout=flow.ping_timeout,
                close_timeout=flow.close_timeout,
                logger=logging.getLogger(UPSTREAM_WEBSOCKETS_LOGGER),
            )
    except InvalidStatus as exc:
        raise _refused(exc) from None
    except TimeoutError:
        log.warning("upstream.connect_timeout", timeout_s=connect_timeout)
        raise UpstreamTimeout("the upstream did not answer in time") from None
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        log.warning("upstream.connect_failed", error=type(exc).__name__)
        raise UpstreamUnavailable("the upstream is unavailable") from None


def _refused(exc: InvalidStatus) -> UpstreamRefused:
    response = exc.response
    upstream_status = response.status_code
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
    retry_after = response.headers.get("Retry-After")
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


def _error_body(body: bytes | None) -> dict[str, object] | None:
    if not body or len(body) > _MAX_PASSED_BODY:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return parsed
    return None
