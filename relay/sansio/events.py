"""Inputs of a relayed session (see :class:`relay.sansio.session.RelaySession`)."""

from __future__ import annotations

from dataclasses import dataclass

from relay.exceptions import RelayError
from relay.sansio.policy import Policy
from relay.typing import Side


__all__ = [
    "ClientClosed",
    "ClientMessage",
    "ClientRemoved",
    "Draining",
    "Event",
    "Failed",
    "PolicyChanged",
    "Stalled",
    "Started",
    "Tick",
    "UpstreamClosed",
    "UpstreamMessage",
]


@dataclass(frozen=True, slots=True)
class Started:
    """Both legs are open; the session begins at ``now`` (seconds, monotonic).

    ``wall`` is the wall clock at that moment (Unix seconds), so times the
    upstream states in Unix seconds (``expires_at``) can be placed on the
    monotonic clock; ``None`` if unknown (those times are then ignored).
    """

    now: float
    wall: float | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """A :class:`~relay.sansio.commands.Wakeup` came due; it is now ``now``."""

    now: float


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A complete WebSocket message from the client (text as ``str``, binary as ``bytes``).

    ``now`` is when it arrived (seconds, monotonic): it feeds the idle timer
    and the inbound rate limits. ``admitted``: the rate limits already
    admitted it from its first frame's header (``RelaySession.client_frame``).
    """

    data: str | bytes
    now: float = 0.0
    admitted: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamMessage:
    """A complete WebSocket message from the upstream, arrived at ``now`` (monotonic)."""

    data: str | bytes
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client's leg ended: a close frame (``code``), or a lost connection (``code`` 1006)."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    """The upstream's leg ended.

    ``code`` is the code the upstream sent, 1005 when its close frame had none,
    1006 when the connection was lost without a close frame.
    """

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stalled:
    """``side`` took no data for ``flow.stall_timeout`` the relay could run: it stopped reading."""

    side: Side


@dataclass(frozen=True, slots=True)
class Draining:
    """The relay is draining: tell the client, and end the session by ``deadline``."""

    deadline: float
    """Monotonic time by which the session must have ended."""
    grace_seconds: float
    """The same deadline, as seconds from now (for the client's notice)."""


@dataclass(frozen=True, slots=True)
class PolicyChanged:
    """A configuration reload changed the client's policy (``policy_reload: all_sessions``).

    Every later client event is judged by ``policy``, and its forced values
    (and defaults of fields the client has not set) are sent upstream.
    """

    policy: Policy


@dataclass(frozen=True, slots=True)
class ClientRemoved:
    """A configuration reload removed the session's client: end it by ``deadline``."""

    deadline: float
    """Monotonic time by which the session must have ended."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The relay itself must end the session (e.g. a leg misbehaved or a bug)."""

    error: RelayError


Event = (
    Started
    | Tick
    | ClientMessage
    | UpstreamMessage
    | ClientClosed
    | UpstreamClosed
    | Stalled
    | Draining
    | PolicyChanged
    | ClientRemoved
    | Failed
)
