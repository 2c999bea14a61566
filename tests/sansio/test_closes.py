"""The close-code and status mapping tables."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from relay.sansio.closes import (
    client_close_for_upstream,
    client_status_for_upstream,
    is_sendable,
    truncate_reason,
)


@pytest.mark.parametrize(
    ("upstream", "client", "outcome"),
    [
        (1000, 1000, "upstream_closed"),
        (1001, 1001, "upstream_closed"),
        (1005, 1000, "upstream_closed"),
        (1006, 1014, "upstream_lost"),
        (1008, 1008, "upstream_lost"),
        (1009, 1009, "upstream_lost"),
        (1011, 1011, "upstream_lost"),
        (1012, 1012, "upstream_lost"),
        (1013, 1013, "upstream_lost"),
        (1002, 1011, "upstream_lost"),
        (1007, 1011, "upstream_lost"),
        (4000, 4000, "upstream_lost"),
        (3001, 3001, "upstream_lost"),
        (1015, 1011, "upstream_lost"),
        (999, 1011, "upstream_lost"),
    ],
)
def test_upstream_close_mapping(upstream: int, client: int, outcome: str) -> None:
    """Each row of the documented table."""
    code, reason, got_outcome = client_close_for_upstream(upstream)
    assert (code, got_outcome) == (client, outcome)
    assert reason


@given(st.integers(min_value=-(2**31), max_value=2**31))
def test_mapped_codes_are_always_sendable(code: int) -> None:
    """No upstream code, however odd, makes the relay send 1005, 1006 or 1015."""
    assert is_sendable(client_close_for_upstream(code)[0])


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 999, 2000, 5000])
def test_reserved_codes_are_not_sendable(code: int) -> None:
    """Codes RFC 6455 reserves for reporting are never put on the wire."""
    assert not is_sendable(code)


@pytest.mark.parametrize(
    ("upstream", "client"),
    [
        (400, 400),
        (401, 502),
        (403, 502),
        (404, 404),
        (429, 429),
        (500, 502),
        (503, 503),
        (418, 502),
    ],
)
def test_upstream_status_mapping(upstream: int, client: int) -> None:
    """Refusals the client can act on keep their status; the relay's own faults become 502."""
    assert client_status_for_upstream(upstream) == client


@given(st.text(max_size=300))
def test_reasons_fit_a_close_frame(reason: str) -> None:
    """Truncated reasons are valid UTF-8 of at most 123 bytes and a prefix of the input."""
    cut = truncate_reason(reason)
    assert len(cut.encode()) <= 123
    assert reason.startswith(cut)
