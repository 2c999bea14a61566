"""A session's own limits: how long it may last, stay idle, and how fast it may send.

:class:`SessionLimits` is what the relay enforces inside one session (the
per-client session counts live in :mod:`relay.sansio.quotas`). All times are
seconds on the monotonic clock of the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from relay.sansio.quotas import TokenBucket


__all__ = [
    "AZURE_MARGIN",
    "AZURE_MAX_SESSION",
    "EXPIRY_WINDOW",
    "InboundRate",
    "RateVerdict",
    "SessionLimits",
]

AZURE_MAX_SESSION: Final = 3600.0
"""Azure ends a realtime session after 60 minutes (its 2026 how-to). What the
upstream states in ``session.created`` (``expires_at``) takes precedence: this
is the cap until it is known, and if it never is."""
AZURE_MARGIN: Final = 5.0
"""The relay ends sessions this long before Azure would: the client gets the relay's explanation."""
EXPIRY_WINDOW: Final = (60.0, 86400.0)
"""An ``expires_at`` this many seconds ahead (at least, at most) is believed;
one outside (a skewed clock, a stale or absurd value) leaves the cap as it was."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Limits of one session; ``None`` disables a limit."""

    max_session_seconds: float | None = None
    idle_seconds: float | None = None
    messages_per_second: float | None = None
    bytes_per_second: float | None = None
    burst_bytes: float | None = None
    """What the byte bucket holds (``None``: two seconds of ``bytes_per_second``).

    It need not cover the largest message: a message larger than what is
    left passes while the bucket is not in debt (see :meth:`InboundRate.check`)."""
    rate_grace: float = 5.0
    """How long a client may stay over its rate before the session is closed."""

    def session_end(self, started: float, expires: float | None = None) -> float:
        """When the session must end: its own cap, and a margin before Azure's.

        ``expires`` is when the upstream said the session expires (monotonic
        seconds, from ``expires_at``); without it Azure's documented cap
        (:data:`AZURE_MAX_SESSION` from ``started``) is assumed.
        """
        azure = (
            started + AZURE_MAX_SESSION if expires is None else expires
        ) - AZURE_MARGIN
        if self.max_session_seconds is None:
            return azure
        return min(started + self.max_session_seconds, azure)


@dataclass(frozen=True, slots=True)
class RateVerdict:
    """What the rate limits say about one inbound message."""

    allowed: bool
    notify: bool = False
    """Tell the client (first refusal of a streak, then at most once a second)."""
    close: bool = False
    """The client stayed over its rate for longer than the grace period."""


class InboundRate:
    """Messages-per-second and bytes-per-second buckets of one session, with a grace period."""

    def __init__(self, limits: SessionLimits, now: float) -> None:
        self._grace = limits.rate_grace
        self._messages = (
            None
            if limits.messages_per_second is None
            else TokenBucket(
                limits.messages_per_second, 2 * limits.messages_per_second, now
            )
        )
        self._bytes = (
            None
            if limits.bytes_per_second is None
            else TokenBucket(
                limits.bytes_per_second,
                2 * limits.bytes_per_second
                if limits.burst_bytes is None
                else limits.burst_bytes,
                now,
            )
        )
        # Start of the current run of refusals, and the latest refusal. A run
        # ends after a second without refusals: a client persistently over its
        # rate also gets some messages through, and is still over it.
        self._streak = 0.0
        self._last_refusal = float("-inf")
        self._last_notice = float("-inf")

    def check(self, size: int, now: float) -> RateVerdict:
        """Account a message whose first frame (of ``size`` bytes) arrives at ``now``.

        The message passes if the message bucket has a token and the byte
        bucket is not in debt; its bytes are charged whole, even beyond what
        the byte bucket holds, so one message larger than the burst passes and
        the next ones wait for the debt to be repaid. Later fragments of a
        message are charged with :meth:`charge`.
        """
        allowed = (self._messages is None or self._messages.take(1, now)) and (
            self._bytes is None or self._bytes.charge(size, now)
        )
        if allowed:
            return RateVerdict(True)
        if self.refusing(now):
            return RateVerdict(False, close=True)
        notify = now - self._last_notice >= 1.0
        if notify:
            self._last_notice = now
        return RateVerdict(False, notify=notify)

    def refusing(self, now: float) -> bool:
        """Note that the client is sending refused data at ``now``; say whether it is past the grace period.

        Called for each refused message, and while the rest of a refused
        message (its later fragments, or the rest of a long frame) is being
        skipped: a client sending one endless refused message is over its
        rate as much as one sending refused messages one after another.
        """
        if now - self._last_refusal > 1.0:
            self._streak = now
        self._last_refusal = now
        return now - self._streak >= self._grace

    def charge(self, size: int, now: float) -> None:
        """Charge ``size`` bytes of a message already decided on (a later fragment)."""
        if self._bytes is not None:
            self._bytes.debit(size, now)
