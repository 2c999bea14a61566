"""Fault switches: failures the simulator injects on demand.

A :class:`Faults` object is plain mutable state, shared by every connection
and read at the moment a fault can apply, so tests may flip switches at any
time (directly, or through the control API with :meth:`Faults.update`).

Handshake faults:

* ``refuse_count`` > 0 refuses that many next handshakes with
  ``refuse_status``, ``refuse_headers`` (e.g. ``Retry-After``) and
  ``refuse_body`` (default: an Azure-style JSON error for the status).
* ``handshake_delay`` delays every handshake answer by that many seconds
  (from 10 s on, the server's open timeout drops the connection unanswered).

Mid-session faults are one-shot: the first connection they apply to consumes
them (the switch resets). "Mid-response" means right after the first content
delta (audio delta; text delta for text-only responses) of a response:

* ``close_mid_response``: close the WebSocket with this close code.
* ``reset_mid_response``: abort the TCP connection (RST, no close frame).
* ``stall_mid_response`` / ``stall_after_session_created``: stop sending
  anything, keep the socket open and keep reading (WebSocket pings are still
  answered, as a healthy TCP front end would).
* ``oversized_frame_bytes``: pad the first content delta of the next response
  with trailing JSON whitespace to this many bytes (still valid JSON, same
  event), to exercise frame-size limits.
* ``fail_transcription``: the next input audio transcription (of a session
  with transcription on) fails with
  ``conversation.item.input_audio_transcription.failed`` instead of deltas
  and ``.completed``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


MAX_OVERSIZED_FRAME_BYTES = 64 * 2**20
"""Upper bound of ``oversized_frame_bytes``: the frame is built in memory."""

# Close codes an endpoint may send (RFC 6455 §7.4; what websockets accepts).
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})


@dataclass
class Refusal:
    """One refused handshake: the HTTP answer to send."""

    status: int
    headers: dict[str, str]
    body: str | None


@dataclass
class Faults:
    """The fault switches (see the module docstring)."""

    # Handshake
    refuse_count: int = 0
    refuse_status: int = 503
    refuse_headers: dict[str, str] = field(default_factory=dict)
    refuse_body: str | None = None
    handshake_delay: float = 0.0
    # Mid-session, one-shot
    close_mid_response: int | None = None
    reset_mid_response: bool = False
    stall_after_session_created: bool = False
    stall_mid_response: bool = False
    oversized_frame_bytes: int | None = None
    fail_transcription: bool = False

    def refuse(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        count: int = 1,
    ) -> None:
        """Refuse the next ``count`` handshakes with ``status`` (convenience setter)."""
        self.update(
            {
                "refuse_count": count,
                "refuse_status": status,
                "refuse_headers": dict(headers or {}),
                "refuse_body": body,
            }
        )

    def update(self, changes: Mapping[str, object]) -> None:
        """Set several switches at once, all or none.

        Raises:
            ValueError: Unknown switch or invalid value; the message names it.
        """
        validated = {name: _validate(name, value) for name, value in changes.items()}
        for name, value in validated.items():
            setattr(self, name, value)

    def reset(self) -> None:
        """Turn every switch off."""
        for spec in dataclasses.fields(self):
            setattr(self, spec.name, getattr(Faults(), spec.name))

    def as_json(self) -> dict[str, Any]:
        """Return the switches as a JSON object (the control API's shape)."""
        return dataclasses.asdict(self)

    # Consumption, by the network edge

    def take_refusal(self) -> Refusal | None:
        """Consume one refusal, if any is armed."""
        if self.refuse_count <= 0:
            return None
        self.refuse_count -= 1
        return Refusal(self.refuse_status, dict(self.refuse_headers), self.refuse_body)

    def take_close(self) -> int | None:
        """Consume the mid-response close code, if armed."""
        code, self.close_mid_response = self.close_mid_response, None
        return code

    def take_reset(self) -> bool:
        """Consume the mid-response reset, if armed."""
        armed, self.reset_mid_response = self.reset_mid_response, False
        return armed

    def take_stall(self, point: Literal["session_created", "mid_response"]) -> bool:
        """Consume the stall armed for ``point``, if any."""
        name = (
            f"stall_after_{point}" if point == "session_created" else f"stall_{point}"
        )
        armed = bool(getattr(self, name))
        setattr(self, name, False)
        return armed

    def take_transcription_failure(self) -> bool:
        """Consume the transcription failure, if armed."""
        armed, self.fail_transcription = self.fail_transcription, False
        return armed

    def take_oversized(self) -> int | None:
        """Consume the oversized-frame size, if armed."""
        size, self.oversized_frame_bytes = self.oversized_frame_bytes, None
        return size


def _validate(name: str, value: object) -> object:
    if name == "refuse_count":
        return _int(name, value, minimum=0)
    if name == "refuse_status":
        status = _int(name, value, minimum=400)
        if status > 599:
            raise ValueError(f"{name} must be an HTTP error status (400-599)")
        return status
    if name == "refuse_headers":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ValueError(f"{name} must be an object of string values")
        return dict(value)
    if name == "refuse_body":
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string or null")
        return value
    if name == "handshake_delay":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number of seconds")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0")
        return float(value)
    if name == "close_mid_response":
        if value is None:
            return None
        code = _int(name, value, minimum=1000)
        if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code < 5000:
            raise ValueError(f"{name} must be a close code an endpoint may send")
        return code
    if name in (
        "reset_mid_response",
        "stall_after_session_created",
        "stall_mid_response",
        "fail_transcription",
    ):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if name == "oversized_frame_bytes":
        if value is None:
            return None
        size = _int(name, value, minimum=1)
        if size > MAX_OVERSIZED_FRAME_BYTES:
            raise ValueError(f"{name} must be <= {MAX_OVERSIZED_FRAME_BYTES}")
        return size
    raise ValueError(f"unknown fault switch: {name[:64]}")


def _int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value
