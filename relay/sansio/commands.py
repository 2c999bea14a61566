"""Outputs of a relayed session: what the I/O driver must do next."""

from __future__ import annotations

from dataclasses import dataclass

from relay.typing import Side


__all__ = [
    "Abort",
    "Applied",
    "Close",
    "Command",
    "Ended",
    "FirstAudio",
    "Metered",
    "Send",
    "SendEdited",
    "TokensUsed",
    "Wakeup",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Queue ``data`` for delivery on ``side``, after anything already queued there."""

    side: Side
    data: str | bytes


@dataclass(frozen=True, slots=True)
class SendEdited:
    """Queue ``head + text[cut:]`` for delivery on ``side``, like :class:`Send`.

    ``text`` is a message as received and ``head`` replaces its first ``cut``
    characters, both ASCII (a renamed event type): a driver holding the
    frame ``text`` came in may build the new one from its bytes, without
    encoding the rest of the message again.
    """

    side: Side
    text: str
    head: str
    cut: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close ``side`` with ``code`` and ``reason`` once its queued frames are delivered.

    ``code`` is always a code an endpoint may send (never 1005, 1006 or 1015)
    and ``reason`` is at most 123 bytes of UTF-8 (RFC 6455 §5.5.1).
    """

    side: Side
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop ``side``'s connection without a closing handshake.

    For a peer that stopped reading: a close frame could never reach it, and
    waiting for the transport to flush would hold the connection forever.
    """

    side: Side


@dataclass(frozen=True, slots=True)
class Ended:
    """The session's outcome is decided; emitted exactly once per session.

    ``outcome`` is a bounded label (see :data:`relay.sansio.closes.OUTCOMES`);
    ``client_code`` is the close code on the client's leg, whoever sent it.
    """

    outcome: str
    client_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Wakeup:
    """Feed a :class:`~relay.sansio.events.Tick` at time ``at`` (replaces any earlier request)."""

    at: float


@dataclass(frozen=True, slots=True)
class Applied:
    """The policy acted (``overwrite``, ``clamp``, ``refuse``, ``hide``) on ``field``.

    A fact for metrics and logs; ``field`` is a bounded name (a rule target,
    ``event_type`` or ``message``), never a value. ``logged``: worth a log
    line too (a flood of refusals is counted, and logged when the client is
    told, at most once a second).
    """

    action: str
    field: str
    logged: bool = True


@dataclass(frozen=True, slots=True)
class Metered:
    """A fact about one relayed frame: its event type label and audio seconds."""

    direction: str
    """``client_to_upstream`` or ``upstream_to_client``."""
    event_type: str
    """A known event type (bounded), or ``other``."""
    audio_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class TokensUsed:
    """The token usage of one ``response.done`` (``cached`` is part of ``input_*``)."""

    input_text: int = 0
    input_audio: int = 0
    input_cached: int = 0
    output_text: int = 0
    output_audio: int = 0


@dataclass(frozen=True, slots=True)
class FirstAudio:
    """Seconds from the end of user speech (or ``response.create``) to the first audio."""

    seconds: float


Command = (
    Send
    | SendEdited
    | Close
    | Abort
    | Ended
    | Wakeup
    | Applied
    | Metered
    | TokensUsed
    | FirstAudio
)
