"""The HTTP control API, for driving a simulator from another process.

Served on the simulator's own port, under :data:`CONTROL_PREFIX`. Every route
is a ``GET``: the listener is websockets' HTTP/1.1 handshake parser, which
accepts ``GET`` requests without a body only. Answers are JSON.

* ``GET /_sim/stats`` — handshakes (credential values redacted) and counters.
* ``GET /_sim/stats/reset`` — forget handshakes, restart the counters.
* ``GET /_sim/faults`` — the fault switches.
* ``GET /_sim/faults?set=<JSON object>`` — set switches, all or none; answers
  the new switches, or 400 naming the bad switch.
* ``GET /_sim/faults/reset`` — turn every switch off.

The API is unauthenticated, like the simulator's dev mode: do not expose the
port beyond the machine (``Simulator.start(control_api=False)`` turns it off).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from relay.simulator.faults import Faults
from relay.simulator.stats import Stats


CONTROL_PREFIX = "/_sim/"
"""Paths under this prefix are control API routes, never upgrades."""


def handle_control(
    path: str, query: Mapping[str, str], faults: Faults, stats: Stats
) -> tuple[int, dict[str, Any]]:
    """Serve one control request; return the HTTP status and the JSON body."""
    if path == "/_sim/stats":
        return 200, stats.as_json(redact=True)
    if path == "/_sim/stats/reset":
        stats.reset()
        return 200, stats.as_json(redact=True)
    if path == "/_sim/faults/reset":
        faults.reset()
        return 200, faults.as_json()
    if path == "/_sim/faults":
        if "set" in query:
            try:
                changes = json.loads(query["set"])
            except ValueError as exc:  # JSONDecodeError, or digits beyond the limit.
                return 400, _error("InvalidFault", f"set is not JSON: {exc}")
            if not isinstance(changes, dict):
                return 400, _error("InvalidFault", "set must be a JSON object")
            try:
                faults.update(changes)
            except ValueError as exc:
                return 400, _error("InvalidFault", str(exc))
        return 200, faults.as_json()
    return 404, _error("404", "Unknown control route.")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
