"""Everything decided before an upstream connection exists: who, whether, and how much.

:class:`Gate` runs the pure :class:`~relay.sansio.handshake.Gatekeeper` rules,
verifies client JWTs (the only network work of this phase, and bounded), and
reserves the session's place: one of this replica's ``limits.max_sessions``
(else 503) and one of the client's slots in the limits backend (else 429). A
reservation is released exactly once, whatever happens later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from relay.config import ClientSettings, Settings
from relay.exceptions import Overloaded, ShuttingDown, Unauthenticated
from relay.sansio.handshake import Admission, Gatekeeper, HandshakeRequest
from relay.sansio.limits import SessionLimits
from relay.sansio.quotas import SessionQuota
from relay.service.drain import Drain
from relay.service.limits import LimitsBackend
from relay.typing import ClientTokenVerifier


__all__ = ["Gate", "Reservation"]

# Three base64url segments: a JWT, as opposed to an opaque relay key.
_JWT_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Reservation:
    """A session's place on this replica and in its client's quota."""

    admission: Admission
    session_id: str


def session_limits(client: ClientSettings, settings: Settings) -> SessionLimits:
    """The limits the core enforces inside one session of ``client``."""
    limits = client.limits
    return SessionLimits(
        max_session_seconds=limits.max_session_seconds,
        idle_seconds=limits.idle_seconds,
        messages_per_second=limits.messages_per_second,
        bytes_per_second=limits.bytes_per_second,
        burst_bytes=limits.burst_bytes,
    )


class Gate:
    """Admits handshakes and reserves their sessions' places.

    :meth:`swap` replaces the clients, deployments, limits and JWT verifier
    for handshakes from then on (a configuration reload); a handshake judged
    before keeps the :class:`Admission` it got.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limits: LimitsBackend,
        verifier: ClientTokenVerifier | None,
        drain: Drain | None = None,
    ) -> None:
        self._settings = settings
        self._limits = limits
        self._verifier = verifier
        self._drain = drain
        self._gatekeeper = Gatekeeper(settings.clients, settings.deployments)
        # Sessions holding a place on this replica (handshaking or running).
        self.reserved = 0

    @property
    def verifier(self) -> ClientTokenVerifier | None:
        """The JWT verifier new handshakes use."""
        return self._verifier

    def swap(self, settings: Settings, verifier: ClientTokenVerifier | None) -> None:
        """Judge handshakes by ``settings`` (and ``verifier``) from now on.

        Reservations taken before are released as taken: the limits backend
        is the same one, keyed by client id.
        """
        self._settings = settings
        self._verifier = verifier
        self._gatekeeper = Gatekeeper(settings.clients, settings.deployments)

    async def admit(self, request: HandshakeRequest) -> Admission:
        """Identify the client and judge its request (see :class:`Gatekeeper`).

        A credential that is none of the static keys is verified as a JWT when
        ``auth.jwt`` is configured and it has a JWT's shape.

        Raises:
            relay.exceptions.ClientRejected: the leaf that answers the request.
        """
        # One generation judges the whole handshake, even if a reload swaps
        # the gate while a JWT is verified.
        gatekeeper, verifier = self._gatekeeper, self._verifier
        credential = gatekeeper.credential(request)
        client = gatekeeper.identify(credential)
        if (
            client is None
            and verifier is not None
            and _JWT_SHAPE.fullmatch(credential.secret)
        ):
            client_id = await verifier.verify(credential.secret)
            client = gatekeeper.client_by_id(client_id)
            if client is None:
                raise Unauthenticated("invalid credentials", reason="unknown_client")
        return gatekeeper.admit(request, client, credential)

    async def reserve(self, admission: Admission, session_id: str) -> Reservation:
        """Take a place on this replica and a slot of the client's quota.

        Raises:
            ShuttingDown: this replica is draining (past the propagation delay).
            Overloaded: this replica is at ``limits.max_sessions``.
            relay.exceptions.QuotaExceeded: the client is over a limit.
            relay.exceptions.LimitsUnavailable: the shared store is down (fail closed).
        """
        if self._drain is not None and self._drain.refusing():
            raise ShuttingDown(
                "this relay is shutting down; reconnect", retry_after=1.0
            )
        if self.reserved >= self._settings.limits.max_sessions:
            raise Overloaded(
                "this relay is at its session capacity; retry", retry_after=5.0
            )
        self.reserved += 1
        client = admission.client
        quota = SessionQuota(
            client.limits.max_sessions, client.limits.sessions_per_minute
        )
        try:
            await self._limits.acquire(client.id, session_id, quota)
        except BaseException:
            self.reserved -= 1
            raise
        return Reservation(admission, session_id)

    async def release(self, reservation: Reservation) -> None:
        """Give the places back; call exactly once per reservation."""
        self.reserved -= 1
        await self._limits.release(
            reservation.admission.client.id, reservation.session_id
        )
