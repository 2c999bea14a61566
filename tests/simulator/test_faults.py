"""Fault switches: validation, atomic updates, one-shot consumption."""

from __future__ import annotations

import pytest

from relay.simulator.faults import Faults, Refusal


def test_defaults_are_off() -> None:
    """A fresh Faults injects nothing."""
    faults = Faults()
    assert faults.take_refusal() is None
    assert faults.take_close() is None
    assert not faults.take_reset()
    assert not faults.take_stall("session_created")
    assert not faults.take_stall("mid_response")
    assert faults.take_oversized() is None
    assert not faults.take_transcription_failure()
    assert faults.handshake_delay == 0


def test_refusals_count_down() -> None:
    """refuse(..., count=2) refuses exactly two handshakes."""
    faults = Faults()
    faults.refuse(429, headers={"Retry-After": "3"}, count=2)
    expected = Refusal(429, {"Retry-After": "3"}, None)
    assert [faults.take_refusal(), faults.take_refusal(), faults.take_refusal()] == [
        expected,
        expected,
        None,
    ]


def test_mid_session_faults_are_one_shot() -> None:
    """Each mid-session fault fires once and resets."""
    faults = Faults()
    faults.update(
        {
            "close_mid_response": 1011,
            "reset_mid_response": True,
            "stall_after_session_created": True,
            "stall_mid_response": True,
            "oversized_frame_bytes": 2_000_000,
            "fail_transcription": True,
        }
    )
    assert (faults.take_close(), faults.take_close()) == (1011, None)
    assert (faults.take_reset(), faults.take_reset()) == (True, False)
    assert (
        faults.take_stall("session_created"),
        faults.take_stall("session_created"),
    ) == (True, False)
    assert (faults.take_stall("mid_response"), faults.take_stall("mid_response")) == (
        True,
        False,
    )
    assert (faults.take_oversized(), faults.take_oversized()) == (2_000_000, None)
    assert (
        faults.take_transcription_failure(),
        faults.take_transcription_failure(),
    ) == (True, False)


@pytest.mark.parametrize(
    "changes",
    [
        {"refuse_count": -1},
        {"refuse_count": True},
        {"refuse_status": 200},
        {"refuse_status": 600},
        {"refuse_headers": {"Retry-After": 3}},
        {"refuse_headers": ["x"]},
        {"refuse_body": 1},
        {"handshake_delay": -1},
        {"handshake_delay": float("inf")},
        {"handshake_delay": "1"},
        {"close_mid_response": 1006},
        {"close_mid_response": 1005},
        {"close_mid_response": 999},
        {"close_mid_response": 5000},
        {"reset_mid_response": 1},
        {"fail_transcription": "yes"},
        {"oversized_frame_bytes": 0},
        {"oversized_frame_bytes": 2**40},
        {"explode": True},
    ],
)
def test_invalid_switches_are_rejected_atomically(changes: dict[str, object]) -> None:
    """A bad value raises ValueError naming the switch, and nothing changes."""
    faults = Faults()
    with pytest.raises(ValueError, match=next(iter(changes))):
        faults.update({"refuse_count": 5, **changes})
    assert faults == Faults()


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1013, 3000, 4999])
def test_sendable_close_codes(code: int) -> None:
    """Codes an endpoint may send are accepted."""
    faults = Faults()
    faults.update({"close_mid_response": code})
    assert faults.close_mid_response == code


def test_reset_turns_everything_off() -> None:
    """reset() restores the defaults."""
    faults = Faults()
    faults.update(
        {"refuse_count": 1, "handshake_delay": 2.5, "stall_mid_response": True}
    )
    faults.reset()
    assert faults == Faults()


def test_json_round_trip() -> None:
    """as_json() output is accepted by update()."""
    faults = Faults()
    faults.refuse(503, body="busy")
    copy = Faults()
    copy.update(faults.as_json())
    assert copy == faults
