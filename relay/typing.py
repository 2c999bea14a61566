"""The relay's vocabulary: identifiers, wire literals and the seams between layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NewType, Protocol


__all__ = [
    "ClientId",
    "ClientTokenVerifier",
    "CredentialStatus",
    "DrainNotice",
    "Family",
    "Side",
    "TokenProvider",
]

ClientId = NewType("ClientId", str)
"""A configured client's ``id``: a bounded set, safe as a metric label."""

Family = Literal["preview", "ga"]
"""Protocol family: preview/beta event names, or the GA names (protocol.md §4.2)."""

Side = Literal["client", "upstream"]
"""One leg of a relayed session."""

DrainNotice = Literal["event", "error", "none"]
"""How a session is told the relay drains: ``relay.draining``, an ``error`` event, or not."""


class ClientTokenVerifier(Protocol):
    """Validates a client's bearer token (a JWT) and names the client it identifies."""

    async def verify(self, token: str) -> str:
        """Return the token's client claim.

        Raises:
            relay.exceptions.Unauthenticated: the token is not valid (with a reason).
        """
        ...


@dataclass(frozen=True, slots=True)
class CredentialStatus:
    """What ``/readyz`` and the metrics say about one upstream credential."""

    kind: str
    """``api_key`` or ``entra``."""
    ok: bool
    """A credential usable for a new upstream handshake is held."""
    expires_in: float | None = None
    """Seconds until the held token expires (Entra)."""
    last_error: str | None = None
    """Type of the last refresh failure, until a refresh succeeds."""


class TokenProvider(Protocol):
    """Something that produces the relay's upstream ``Authorization`` material."""

    async def auth_header(self) -> tuple[str, str]:
        """Return one header ``(name, value)`` that authenticates the relay upstream.

        Raises:
            relay.exceptions.CredentialUnavailable: no credential can be had now.
        """
        ...

    async def close(self) -> None:
        """Release network resources; idempotent."""
        ...

    def status(self) -> CredentialStatus:
        """Health of the credential, for readiness and metrics."""
        ...
