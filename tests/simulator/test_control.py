"""The control API's routes, without sockets."""

from __future__ import annotations

import json

from relay.simulator.control import handle_control
from relay.simulator.faults import Faults
from relay.simulator.stats import REDACTED, HandshakeRecord, Stats


def record() -> HandshakeRecord:
    return HandshakeRecord(
        path="/openai/realtime",
        query={"api-key": "secret", "deployment": "d"},
        headers=(("Host", "x"), ("api-key", "secret"), ("Authorization", "Bearer t")),
        status=101,
    )


def test_stats_are_redacted() -> None:
    """Credential values never leave the process."""
    stats = Stats(handshakes=[record()], connections_opened=2, connections_closed=1)
    status, body = handle_control("/_sim/stats", {}, Faults(), stats)
    assert status == 200
    assert body["connections_active"] == 1
    [handshake] = body["handshakes"]
    assert handshake["query"] == {"api-key": REDACTED, "deployment": "d"}
    assert handshake["headers"] == [
        ["Host", "x"],
        ["api-key", REDACTED],
        ["Authorization", REDACTED],
    ]
    assert "secret" not in json.dumps(body)


def test_stats_reset_keeps_active_connections() -> None:
    """Counters restart from the connections still open."""
    stats = Stats(handshakes=[record()], connections_opened=3, connections_closed=1)
    status, body = handle_control("/_sim/stats/reset", {}, Faults(), stats)
    assert status == 200
    assert (
        body["handshakes"],
        body["connections_opened"],
        body["connections_closed"],
    ) == ([], 2, 0)


def test_faults_get_set_and_reset() -> None:
    """?set= applies a JSON object; /reset turns everything off."""
    faults = Faults()
    status, body = handle_control(
        "/_sim/faults",
        {"set": '{"refuse_count": 2, "refuse_status": 429}'},
        faults,
        Stats(),
    )
    assert status == 200
    assert (body["refuse_count"], body["refuse_status"]) == (2, 429)
    assert handle_control("/_sim/faults", {}, faults, Stats()) == (
        200,
        faults.as_json(),
    )
    status, body = handle_control("/_sim/faults/reset", {}, faults, Stats())
    assert (status, body["refuse_count"]) == (200, 0)


def test_bad_fault_updates_are_400() -> None:
    """Malformed JSON, non-objects and invalid switches are rejected."""
    for value in ("{", "[1]", '{"refuse_status": 200}'):
        status, body = handle_control("/_sim/faults", {"set": value}, Faults(), Stats())
        assert status == 400
        assert body["error"]["code"] == "InvalidFault"


def test_unknown_route() -> None:
    """Other /_sim/ paths are 404."""
    assert handle_control("/_sim/nope", {}, Faults(), Stats())[0] == 404


def test_handshake_record_header_lookup() -> None:
    """header() is case-insensitive; as_json(redact=False) keeps values."""
    entry = record()
    assert entry.header("API-KEY") == "secret"
    assert entry.header("missing") is None
    assert entry.as_json(redact=False)["query"]["api-key"] == "secret"
