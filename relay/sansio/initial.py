"""The initializing phase: the client's policy is put in force before anything is relayed.

When the policy has values to apply, the relay waits for the upstream's
``session.created``, sends its own ``session.update`` (event_id
:data:`INIT_EVENT_ID`), and holds every frame, from both sides and in order,
until the matching ``session.updated``. :class:`Initial` keeps that hold and
reads the upstream's frames meanwhile; what the session does about each is in
:mod:`relay.sansio.session`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from relay.sansio.commands import Send
from relay.sansio.fields import JSON
from relay.sansio.wire import dump, parse_upstream


__all__ = [
    "INIT_EVENT_ID",
    "RELOAD_EVENT_ID",
    "Confirmed",
    "Initial",
    "Step",
    "Update",
    "answers",
]

INIT_EVENT_ID: Final = "relay_policy_init"
"""``event_id`` of the relay's own first ``session.update``."""
RELOAD_EVENT_ID: Final = "relay_policy_reload"
"""``event_id`` prefix of the relay's own updates putting a reloaded policy in
force; ``_1``, ``_2``... follow, one per reload."""


@dataclass(frozen=True, slots=True)
class Update:
    """The upstream's ``session.created`` came: send ``command`` (the relay's update)."""

    created: dict[str, JSON]
    command: Send


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The upstream applied the update: greet the client with ``greeting``.

    ``greeting`` is the upstream's ``session.created`` carrying the effective
    configuration (the ``session.updated`` body), before any hiding.
    """

    greeting: dict[str, JSON]


Step = Update | Confirmed | Literal["refused", "held"]
"""What an upstream frame means while initializing: ``refused`` is an
``error`` answering the relay's update; ``held`` frames wait for the opening."""


class Initial:
    """The hold of one initializing session.

    Args:
        session: the ``session`` of the relay's own update (the policy's
            initial values), or ``None``: nothing to apply, the session opens
            at once.
        timeout: how long the upstream has to confirm it, from :meth:`start`.
    """

    __slots__ = (
        "_created",
        "_timeout",
        "deadline",
        "held_client",
        "held_upstream",
        "session",
    )

    def __init__(self, session: dict[str, JSON] | None, timeout: float) -> None:
        self.session = session
        self._timeout = timeout
        self.deadline = 0.0
        """When the upstream must have confirmed the update (monotonic seconds)."""
        # The upstream's session.created, once received.
        self._created: dict[str, JSON] | None = None
        self.held_client: deque[str | bytes] = deque()
        """Client frames held until the policy is in force, in arrival order."""
        self.held_upstream: deque[str | bytes] = deque()
        """Upstream frames held until the policy is in force, in arrival order."""

    def start(self, now: float) -> None:
        """The session started at ``now``: the confirmation is due :attr:`deadline`."""
        self.deadline = now + self._timeout

    def upstream(self, data: str | bytes) -> Step:
        """Read one upstream frame; a ``held`` one is kept in :attr:`held_upstream`."""
        event = parse_upstream(data)
        kind = event.get("type") if event is not None else None
        if self._created is None and kind == "session.created":
            assert event is not None
            self._created = event
            update = {
                "type": "session.update",
                "event_id": INIT_EVENT_ID,
                "session": self.session,
            }
            return Update(event, Send("upstream", dump(update)))
        if self._created is not None and kind == "session.updated":
            assert event is not None
            greeting = dict(self._created)
            greeting["session"] = event.get("session", greeting.get("session"))
            return Confirmed(greeting)
        if kind == "error" and event is not None and _names(event, INIT_EVENT_ID):
            return "refused"
        self.held_upstream.append(data)
        return "held"

    def clear(self) -> None:
        """Drop what is held: the session opened (after relaying it) or ended."""
        self.held_client.clear()
        self.held_upstream.clear()


def answers(data: str | bytes, event_id: str) -> bool:
    """Whether an upstream frame is an ``error`` answering the relay's event ``event_id``."""
    event = parse_upstream(data)
    return (
        event is not None and event.get("type") == "error" and _names(event, event_id)
    )


def _names(error_event: dict[str, JSON], event_id: str) -> bool:
    error = error_event.get("error")
    return isinstance(error, dict) and error.get("event_id") == event_id
