"""Token freshness rules."""

from __future__ import annotations

from relay.sansio.tokens import (
    REFRESH_MARGIN,
    USABLE_MARGIN,
    CachedToken,
    refresh_due,
    usable,
)


def test_no_token_needs_a_refresh_and_is_unusable() -> None:
    """Before the first fetch there is nothing to use."""
    assert refresh_due(None, 0.0)
    assert not usable(None, 0.0)


def test_fresh_token_is_used_without_refresh() -> None:
    """A token far from expiry is used as is."""
    token = CachedToken("t", expires_on=10_000.0)
    assert usable(token, 0.0)
    assert not refresh_due(token, 0.0)


def test_refresh_starts_ahead_of_expiry_while_still_usable() -> None:
    """Inside the refresh margin the old token still serves sessions."""
    token = CachedToken("t", expires_on=1_000.0)
    now = 1_000.0 - REFRESH_MARGIN + 1
    assert refresh_due(token, now)
    assert usable(token, now)


def test_nearly_expired_token_is_not_used() -> None:
    """A token that could expire during a handshake is not used."""
    token = CachedToken("t", expires_on=1_000.0)
    assert not usable(token, 1_000.0 - USABLE_MARGIN)


def test_token_value_is_not_in_repr() -> None:
    """A token printed by accident does not leak."""
    assert "secret-value" not in repr(CachedToken("secret-value", 1.0))
