"""Decoding client frames: strict JSON, objects only, bounded nesting."""

from __future__ import annotations

import pytest

from relay.simulator._checks import Invalid
from relay.simulator._frames import MAX_NESTING, client_event_id, parse_client_event


def test_valid_event() -> None:
    """An object with a type decodes to a dict."""
    assert parse_client_event('{"type": "x", "event_id": "c_1"}') == {
        "type": "x",
        "event_id": "c_1",
    }


@pytest.mark.parametrize(
    "text", ["NaN", '{"type": -Infinity}', '{"type": 1e400}', "{'type': 1}", "\x00"]
)
def test_not_strict_json(text: str) -> None:
    """Python's JSON extensions and overflowing numbers are not accepted."""
    with pytest.raises(Invalid) as error:
        parse_client_event(text)
    assert error.value.code == "invalid_json"


def test_nesting_limit_is_exact() -> None:
    """MAX_NESTING levels pass; one more fails."""

    def nested(levels: int) -> str:
        return '{"type": "x", "a": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"

    assert parse_client_event(nested(MAX_NESTING))["type"] == "x"
    with pytest.raises(Invalid):
        parse_client_event(nested(MAX_NESTING + 1))


def test_client_event_id() -> None:
    """event_id is optional, and a string when present."""
    assert client_event_id({"type": "x"}) is None
    assert client_event_id({"type": "x", "event_id": None}) is None
    with pytest.raises(Invalid):
        client_event_id({"type": "x", "event_id": 1})
