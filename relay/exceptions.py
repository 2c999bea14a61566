"""The relay's exceptions: one tree, each leaf knows how it is answered.

A failure before the client's WebSocket is accepted is answered with an HTTP
status and a JSON body (a denial response); after acceptance it becomes a close
frame. Every leaf therefore carries both, so no caller has to map errors itself:

* :exc:`RelayError` (500 / 1011)
    * :exc:`ConfigError` — the configuration is invalid; raised at start-up only.
    * :exc:`ClientRejected` — the client's request breaks the relay's rules.
        * :exc:`Unauthenticated` (401 / 1008)
        * :exc:`Forbidden` (403 / 1008)
        * :exc:`BadRequest` (400 / 1008)
        * :exc:`NotFound` (404 / 1008)
        * :exc:`QuotaExceeded` (429 / 1008)
    * :exc:`Overloaded` (503 / 1013) — this replica cannot take the session now.
        * :exc:`ShuttingDown` — this replica is draining.
        * :exc:`LimitsUnavailable` — the shared limits store is unreachable.
    * :exc:`UpstreamError` — the upstream could not serve the session.
        * :exc:`UpstreamRefused` (mirrors or maps the upstream's status / 1014)
        * :exc:`UpstreamUnavailable` (502 / 1014)
        * :exc:`UpstreamTimeout` (504 / 1014)
        * :exc:`CredentialUnavailable` (503 / 1013)

Messages are written for the client: they never carry upstream URLs, keys,
tokens or upstream internals. Details for operators go to the log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


__all__ = [
    "BadRequest",
    "ClientRejected",
    "ConfigError",
    "CredentialUnavailable",
    "Forbidden",
    "HandshakeTimeout",
    "LimitsUnavailable",
    "NotFound",
    "Overloaded",
    "QuotaExceeded",
    "RelayError",
    "ShuttingDown",
    "Unauthenticated",
    "UpstreamError",
    "UpstreamRefused",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class RelayError(Exception):
    """Root of the relay's exceptions.

    Attributes:
        http_status: HTTP status answered when raised before the WebSocket
            handshake completed.
        close_code: WebSocket close code used when raised afterwards.
        error_code: Short machine-readable code for JSON bodies and
            ``error`` events (``{"error": {"code": ...}}``).
        outcome: Bounded label value for the sessions-by-outcome metric.
    """

    http_status: int = 500
    close_code: int = 1011
    error_code: str = "internal_error"
    outcome: str = "relay_error"

    def __init__(self, message: str = "internal relay error") -> None:
        super().__init__(message)
        self.message = message
        """Client-safe explanation."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Extra HTTP headers for the denial response (e.g. ``Retry-After``)."""
        return {}

    def body(self) -> dict[str, object]:
        """Azure-style JSON error body for the denial response."""
        return {"error": {"code": self.error_code, "message": self.message}}


class ConfigError(RelayError, ValueError):
    """The configuration file is invalid; the message names file, key and expectation."""

    error_code = "config_error"


class ClientRejected(RelayError):
    """The client's handshake breaks the relay's rules."""

    close_code = 1008
    outcome = "rejected_request"


class Unauthenticated(ClientRejected):
    """No credential, or one that matches no configured client.

    ``reason`` is a bounded label for metrics and logs (``missing``,
    ``malformed``, ``invalid``, ``expired``, ``not_yet_valid``,
    ``bad_signature``, ``bad_issuer``, ``bad_audience``, ``bad_algorithm``,
    ``unknown_kid``, ``unknown_client``, ``jwks_unavailable``,
    ``query_auth_disabled``); the message stays generic for the client.
    """

    http_status = 401
    error_code = "unauthorized"
    outcome = "rejected_auth"

    def __init__(
        self, message: str = "invalid credentials", *, reason: str = "invalid"
    ) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def headers(self) -> Mapping[str, str]:
        """Tell the client which schemes are accepted (RFC 9110 §11.6.1)."""
        return {"WWW-Authenticate": 'Bearer realm="realtime-relay"'}


class Forbidden(ClientRejected):
    """An authenticated client asks for what it may not have (a deployment, an Origin).

    ``reason`` is ``origin`` or ``deployment`` (a bounded label).
    """

    http_status = 403
    error_code = "forbidden"
    outcome = "rejected_forbidden"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class QuotaExceeded(ClientRejected):
    """The client is over one of its limits; it may retry after ``retry_after`` seconds."""

    http_status = 429
    error_code = "quota_exceeded"
    outcome = "rejected_quota"

    def __init__(self, message: str, *, retry_after: float, limit: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        """Which limit: ``max_sessions`` or ``sessions_per_minute``."""

    @property
    def headers(self) -> Mapping[str, str]:
        """Whole seconds, at least 1 (RFC 9110 §10.2.3)."""
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class Overloaded(RelayError):
    """This replica cannot take the session now (at its cap, or draining)."""

    http_status = 503
    close_code = 1013  # try again later
    error_code = "overloaded"
    outcome = "rejected_capacity"

    def __init__(
        self,
        message: str = "this relay is at capacity; retry",
        *,
        retry_after: float = 5.0,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> Mapping[str, str]:
        """Whole seconds, at least 1."""
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class ShuttingDown(Overloaded):
    """This replica is draining: connect again (another replica will answer)."""

    error_code = "draining"
    outcome = "rejected_draining"


class LimitsUnavailable(Overloaded):
    """The shared limits store (Redis) is unreachable and the relay fails closed."""

    error_code = "limits_unavailable"
    outcome = "limits_unavailable"


class BadRequest(ClientRejected):
    """A required query parameter is missing or malformed."""

    http_status = 400
    error_code = "bad_request"


class NotFound(ClientRejected):
    """Unknown path or deployment."""

    http_status = 404
    error_code = "not_found"


class UpstreamError(RelayError):
    """The upstream could not serve the session."""

    close_code = 1014  # IANA "Bad Gateway"
    outcome = "upstream_error"


class UpstreamRefused(UpstreamError):
    """The upstream answered the handshake with an HTTP error status.

    The status the client sees is chosen by
    :func:`relay.sansio.closes.client_status_for_upstream`; ``upstream_status``
    keeps what Azure said, for logs and metrics.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        upstream_status: int,
        retry_after: str | None = None,
        body: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = status
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self._body = body

    @property
    def headers(self) -> Mapping[str, str]:
        """``Retry-After`` is passed on so clients back off as Azure asked."""
        return {"Retry-After": self.retry_after} if self.retry_after else {}

    def body(self) -> dict[str, object]:
        """The upstream's own body where it is safe to pass on, else ours."""
        return self._body if self._body is not None else super().body()


class UpstreamUnavailable(UpstreamError):
    """The upstream connection failed (refused, reset, TLS or DNS error)."""

    http_status = 502
    error_code = "upstream_unavailable"


class HandshakeTimeout(RelayError):
    """The relay could not decide and prepare the session within ``limits.handshake_timeout``."""

    http_status = 504
    close_code = 1013
    error_code = "handshake_timeout"
    outcome = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream did not complete its handshake in time."""

    http_status = 504
    error_code = "upstream_timeout"


class CredentialUnavailable(UpstreamError):
    """The relay could not obtain its own upstream credential (e.g. Entra token)."""

    http_status = 503
    close_code = 1013  # try again later
    error_code = "upstream_credential_unavailable"

    @property
    def headers(self) -> Mapping[str, str]:
        """A short back-off: token endpoints usually recover quickly."""
        return {"Retry-After": "5"}
