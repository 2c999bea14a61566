"""Freshness rules for the relay's upstream access tokens (Microsoft Entra ID).

An Entra token typically lives about an hour. The relay refreshes it ahead of
expiry so a session start never waits for the token endpoint, and it never
starts a session with a token that could expire during the upstream
handshake. Times are seconds on the same clock as the token's ``expires_on``
(Unix time, as ``azure.core.credentials.AccessToken`` reports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


__all__ = ["REFRESH_MARGIN", "USABLE_MARGIN", "CachedToken", "refresh_due", "usable"]

REFRESH_MARGIN: Final = 300.0
"""Refresh this long before expiry (azure-identity's own default is 5 minutes)."""
USABLE_MARGIN: Final = 30.0
"""A token closer than this to expiry is not used for a new upstream handshake."""


@dataclass(frozen=True, slots=True)
class CachedToken:
    """An access token and when it expires."""

    value: str = field(repr=False)
    expires_on: float


def refresh_due(
    token: CachedToken | None, now: float, margin: float = REFRESH_MARGIN
) -> bool:
    """Whether a refresh should start: no token yet, or expiry within ``margin``."""
    return token is None or now >= token.expires_on - margin


def usable(
    token: CachedToken | None, now: float, margin: float = USABLE_MARGIN
) -> bool:
    """Whether ``token`` may authenticate a handshake starting at ``now``."""
    return token is not None and token.expires_on - now > margin
