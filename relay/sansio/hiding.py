"""The session fields a policy hides from the client (its ``hide`` list).

The upstream states the session's configuration in ``session.created`` and
``session.updated``; a hidden field (the organisation's instructions, its
tools) is shown to the client as empty there. A field the client set itself
is its own: from then on it is shown as the upstream states it.
"""

from __future__ import annotations

from typing import Final

from relay.sansio.fields import FIELDS, JSON, write
from relay.sansio.wire import dump, parse_upstream
from relay.typing import Family


__all__ = ["Hiding"]

_HIDDEN_VALUES: Final[dict[str, JSON]] = {"instructions": "", "tools": []}


class Hiding:
    """What one session hides from its client, and the hiding itself.

    Args:
        hide: the policy's ``hide`` field names.
        family: the protocol family, for where each field sits.
    """

    __slots__ = ("_client_set", "_family", "_hide", "hidden")

    def __init__(self, hide: frozenset[str], family: Family) -> None:
        self._hide = hide
        self._family: Family = family
        # Hidden fields the client set itself: no longer hidden from it.
        self._client_set: set[str] = set()
        self.hidden: frozenset[str] = hide
        """The fields still hidden; empty (most policies) means frames pass untouched."""

    def client_set(self, names: frozenset[str]) -> None:
        """The client set these hidden fields itself: stop hiding them."""
        if names:
            self._client_set |= names
            self.hidden = self._hide - self._client_set

    def change(self, hide: frozenset[str]) -> None:
        """The session switched to a policy hiding ``hide``.

        Fields the client set itself stay visible to it; a field the new
        policy hides that the client set before is hidden from now on (the
        relay did not track it as the client's while it was not hidden).
        """
        self._hide = hide
        self.hidden = hide - self._client_set

    def hide(self, event: dict[str, JSON]) -> bool:
        """Blank the hidden fields in a session event's ``session``; whether any are hidden."""
        session = event.get("session")
        if not isinstance(session, dict):
            return False
        for name in sorted(self.hidden):
            write(
                session,
                FIELDS[name],
                self._family,
                _HIDDEN_VALUES[name],
                response=False,
            )
        return bool(self.hidden)

    def frame(self, data: str) -> str | None:
        """An upstream text frame as the client may see it; ``None``: withhold it.

        Call it only while :attr:`hidden` is not empty. An unreadable frame
        (past the bounds of :func:`~relay.sansio.wire.parse_upstream`, or not
        JSON) that names a session event could hold what is hidden: the
        caller sends an explanation instead.
        """
        # Only session.created/updated can need hiding; base64 audio cannot
        # contain these names, so most frames skip parsing entirely.
        if "session.created" not in data and "session.updated" not in data:
            return data
        event = parse_upstream(data)
        if event is None:
            return None
        if event.get("type") not in ("session.created", "session.updated"):
            return data
        return dump(event) if self.hide(event) else data
