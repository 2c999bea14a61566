"""How closes and upstream refusals are mapped between the two legs.

The table, from the upstream's close to what the client receives:

======================  ===========  ==========================================
upstream sent           client gets  why
======================  ===========  ==========================================
1000 normal             1000         the session ended normally
1001 going away         1001         the upstream is shutting down
1005 no status          1000         a close frame without a code is a normal end
1006 connection lost    1014         bad gateway: the upstream vanished
1008 policy violation   1008         the upstream refused what was sent
1009 message too big    1009         a message was too big for the upstream
1011 internal error     1011         the upstream failed
1012 service restart    1012         the upstream restarts; retry
1013 try again later    1013         the upstream is overloaded; retry
1002/1003/1007/1010     1011         a protocol disagreement on the upstream leg
3000–4999               same code    application codes carry meaning for clients
anything else           1011         unknown: treat as an upstream failure
======================  ===========  ==========================================

When the client closes (any code, or a lost connection), the upstream leg is
closed with 1000: the session is over and Azure should stop billing it.

Closes the relay initiates itself (the upstream leg always gets 1000 unless the
relay failed):

======  ============================================  =========================
code    when                                          client should
======  ============================================  =========================
1008    the upstream refused the content (mapped)     not retry as is
1009    a message over ``limits.max_message_bytes``   send smaller messages
1011    internal relay error; policy not applied      retry later
1012    the relay is draining (restart, deploy)       reconnect (another replica)
1013    overloaded                                    retry later
1014    the upstream vanished                         retry
4000    the session's maximum duration was reached    start a new session
        (the client's ``max_session_seconds``, or
        Azure's ``session_expired``, forwarded first)
4001    no client event for ``idle_seconds``          start a new session
4002    a leg stopped reading for                     retry
        ``flow.stall_timeout``
4003    the client was removed from the relay's       not reconnect with the
        configuration (after                          same credentials
        ``reload.removed_client_grace_seconds``)
4029    inbound rate limit exceeded for too long      slow down, then retry
======  ============================================  =========================

The limit closes and 4003 are preceded by an ``error`` event that explains them; the
drain by a ``relay.draining`` event. A client that stops reading for
``flow.stall_timeout`` cannot be sent anything: its connection is dropped
(it sees 1006; logs and metrics record 4002) and the upstream leg is closed
with 1000.

Reasons are the relay's own short texts: upstream reasons may carry internals
and are never passed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


__all__ = [
    "CLIENT_GONE",
    "CLIENT_REMOVED",
    "DRAINED",
    "DRAIN_CUTOFF",
    "DURATION_CUTOFF",
    "EXPIRED",
    "IDLE_TIMEOUT",
    "MAX_DURATION",
    "OUTCOMES",
    "RATE_CUTOFF",
    "RATE_LIMITED",
    "REMOVED_CUTOFF",
    "STALLED",
    "Cutoff",
    "client_close_for_upstream",
    "client_status_for_upstream",
    "idle_cutoff",
    "is_sendable",
    "policy_cutoff",
    "truncate_reason",
]

OUTCOMES: Final = (
    "client_closed",
    "upstream_closed",
    "upstream_lost",
    "message_too_big",
    "policy_failed",
    "max_duration",
    "idle_timeout",
    "rate_limited",
    "stalled",
    "drained",
    "client_removed",
    "session_expired",
    "relay_error",
    "rejected_auth",
    "rejected_forbidden",
    "rejected_quota",
    "rejected_capacity",
    "rejected_draining",
    "limits_unavailable",
    "rejected_request",
    "upstream_error",
)
"""Every value of the sessions-by-outcome label."""

CLIENT_GONE: Final = (1000, "client closed")
MAX_DURATION: Final = (4000, "session duration limit reached")
IDLE_TIMEOUT: Final = (4001, "idle timeout")
RATE_LIMITED: Final = (4029, "rate limit exceeded")
STALLED: Final = (4002, "peer stopped reading")
DRAINED: Final = (1012, "relay restarting; reconnect")
CLIENT_REMOVED: Final = (4003, "client removed from the relay's configuration")
EXPIRED: Final = (4000, "upstream session expired")
"""Upstream close code and reason used whenever the client's leg ends."""

_UPSTREAM_TO_CLIENT: Final[dict[int, tuple[int, str]]] = {
    1000: (1000, "upstream closed the session"),
    1001: (1001, "upstream going away"),
    1005: (1000, "upstream closed the session"),
    1006: (1014, "upstream connection lost"),
    1008: (1008, "upstream refused the session's content"),
    1009: (1009, "message too big for the upstream"),
    1011: (1011, "upstream internal error"),
    1012: (1012, "upstream restarting, retry"),
    1013: (1013, "upstream overloaded, retry later"),
}
_NORMAL_UPSTREAM_CLOSES: Final = frozenset({1000, 1001, 1005})
MAX_REASON_BYTES: Final = 123


def is_sendable(code: int) -> bool:
    """Whether an endpoint may put ``code`` in a close frame (RFC 6455 §7.4)."""
    return code in (
        1000,
        1001,
        1002,
        1003,
        1007,
        1008,
        1009,
        1010,
        1011,
        1012,
        1013,
        1014,
    ) or (3000 <= code <= 4999)


def client_close_for_upstream(code: int) -> tuple[int, str, str]:
    """Map the upstream's close ``code`` to ``(client code, reason, outcome)``; see the table."""
    if code in _UPSTREAM_TO_CLIENT:
        client_code, reason = _UPSTREAM_TO_CLIENT[code]
    elif 3000 <= code <= 4999:
        client_code, reason = code, "upstream closed the session"
    else:
        client_code, reason = 1011, "upstream closed with an error"
    outcome = "upstream_closed" if code in _NORMAL_UPSTREAM_CLOSES else "upstream_lost"
    return client_code, reason, outcome


def client_status_for_upstream(status: int) -> int:
    """The HTTP status answered to the client when the upstream refused the handshake.

    429 stays 429 (the client should back off, with Azure's ``Retry-After``);
    400 and 404 stay as they are (the client's request is what is wrong);
    401 and 403 become 502 (the relay's own credentials are wrong: the client
    can do nothing about it); 503 stays 503; every other status becomes 502.
    """
    if status in (400, 404, 429, 503):
        return status
    return 502


def truncate_reason(reason: str) -> str:
    """Cut ``reason`` to at most 123 bytes of UTF-8 without splitting a character."""
    encoded = reason.encode()
    if len(encoded) <= MAX_REASON_BYTES:
        return reason
    return encoded[:MAX_REASON_BYTES].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Cutoff:
    """A session the relay ends itself: the outcome, the client's close, and what explains it.

    The client gets the ``error`` event first, then the close; the upstream
    leg is closed with 1000.
    """

    outcome: str
    close: tuple[int, str]
    """Close code and reason for the client (see the table above)."""
    code: str | None = None
    """Code of the ``error`` event sent first; ``None``: no event (the drain
    was announced when it began)."""
    message: str = ""
    error_type: str = "invalid_request_error"


DURATION_CUTOFF: Final = Cutoff(
    "max_duration",
    MAX_DURATION,
    "session_duration_limit_reached",
    "the session reached its maximum duration",
)
RATE_CUTOFF: Final = Cutoff(
    "rate_limited",
    RATE_LIMITED,
    "rate_limit_exceeded",
    "inbound rate limit exceeded for too long",
)
DRAIN_CUTOFF: Final = Cutoff("drained", DRAINED)
REMOVED_CUTOFF: Final = Cutoff(
    "client_removed",
    CLIENT_REMOVED,
    "client_removed",
    "this client was removed from the relay's configuration: its sessions are closed",
)


def idle_cutoff(seconds: float) -> Cutoff:
    """The end of a session whose client sent nothing for ``seconds``."""
    return Cutoff(
        "idle_timeout",
        IDLE_TIMEOUT,
        "idle_timeout",
        f"no client event for {seconds:g} seconds",
    )


def policy_cutoff(reason: str) -> Cutoff:
    """The end of a session whose initial policy could not be applied, for ``reason``."""
    return Cutoff(
        "policy_failed",
        (1011, "session policy could not be applied"),
        "policy_not_applied",
        f"session policy could not be applied: {reason}",
        "server_error",
    )
