"""What the simulator saw: handshake records and connection counters."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any


# Credential-bearing names, redacted when stats leave the process (control API).
_SECRET_HEADERS = frozenset({"api-key", "authorization", "ocp-apim-subscription-key"})
_SECRET_QUERY = frozenset({"api-key", "authorization"})
REDACTED = "<redacted>"
MAX_RECORDED_EVENTS = 1000
"""Client events kept in :attr:`Stats.client_events` (older ones are forgotten)."""


@dataclass(frozen=True)
class HandshakeRecord:
    """One upgrade request and the HTTP status it was answered with."""

    path: str
    """Request path, without the query."""
    query: dict[str, str]
    """Query parameters (first value of a repeated key)."""
    headers: tuple[tuple[str, str], ...]
    """All request headers as received: original case, order and repeats."""
    status: int
    """Status answered: 101 when upgraded."""

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), if present."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def as_json(self, *, redact: bool) -> dict[str, Any]:
        """Return the record as JSON; ``redact`` hides credential values."""

        def hide(key: str, value: str, secrets: frozenset[str]) -> str:
            return REDACTED if redact and key.lower() in secrets else value

        return {
            "path": self.path,
            "query": {k: hide(k, v, _SECRET_QUERY) for k, v in self.query.items()},
            "headers": [[k, hide(k, v, _SECRET_HEADERS)] for k, v in self.headers],
            "status": self.status,
        }


@dataclass
class Stats:
    """Counters of a running simulator; only the simulator's event loop mutates them."""

    handshakes: list[HandshakeRecord] = field(default_factory=list)
    """Every upgrade request answered (control API requests excluded), in order."""
    connections_opened: int = 0
    """WebSocket connections upgraded."""
    connections_closed: int = 0
    """Upgraded connections whose TCP connection has closed."""
    client_events: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_EVENTS)
    )
    """The latest client events received, parsed, with audio payloads cut out."""

    def record_client_frame(self, message: str | bytes) -> None:
        """Remember a received client frame (what the upstream acted on)."""
        try:
            event = json.loads(message)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            kind = "binary" if isinstance(message, bytes) else "text"
            event = {"type": f"(non-event {kind} frame)", "size": len(message)}
        elif isinstance(event.get("audio"), str):
            # Appends can be megabytes: keep their size, not their audio.
            event["audio"] = f"<{len(event['audio'])} base64 chars>"
        self.client_events.append(event)

    def events_of_type(self, kind: str) -> list[dict[str, Any]]:
        """Recorded client events of type ``kind``, oldest first."""
        return [event for event in self.client_events if event.get("type") == kind]

    @property
    def connections_active(self) -> int:
        """Upgraded connections not closed yet."""
        return self.connections_opened - self.connections_closed

    def reset(self) -> None:
        """Forget handshakes; restart the counters from the active connections."""
        active = self.connections_active
        self.handshakes.clear()
        self.client_events.clear()
        self.connections_opened, self.connections_closed = active, 0

    def as_json(self, *, redact: bool = True) -> dict[str, Any]:
        """Return the stats as JSON (the control API's shape)."""
        return {
            "handshakes": [record.as_json(redact=redact) for record in self.handshakes],
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "connections_active": self.connections_active,
            "client_events": list(self.client_events),
        }
