"""What the simulator saw: handshake records and connection counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Credential-bearing names, redacted when stats leave the process (control API).
_SECRET_HEADERS = frozenset({"api-key", "authorization", "ocp-apim-subscription-key"})
_SECRET_QUERY = frozenset({"api-key", "authorization"})
REDACTED = "<redacted>"


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

    @property
    def connections_active(self) -> int:
        """Upgraded connections not closed yet."""
        return self.connections_opened - self.connections_closed

    def reset(self) -> None:
        """Forget handshakes; restart the counters from the active connections."""
        active = self.connections_active
        self.handshakes.clear()
        self.connections_opened, self.connections_closed = active, 0

    def as_json(self, *, redact: bool = True) -> dict[str, Any]:
        """Return the stats as JSON (the control API's shape)."""
        return {
            "handshakes": [record.as_json(redact=redact) for record in self.handshakes],
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "connections_active": self.connections_active,
        }
