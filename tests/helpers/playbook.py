"""A script-like way to test the sans-I/O session: ``playbook >> event << command``."""

from __future__ import annotations

from relay.sansio.commands import Command, FirstAudio, Metered, TokensUsed
from relay.sansio.events import Event, Started
from relay.sansio.session import RelaySession


class Playbook:
    """Feed events with ``>>``; assert the next produced command with ``<<``.

    Every command produced must be asserted, in order: :meth:`__rshift__`
    refuses to feed a new event while earlier commands are unchecked, and
    :meth:`done` checks nothing is left.
    """

    def __init__(
        self, session: RelaySession | None = None, *, now: float = 0.0
    ) -> None:
        self.session = session if session is not None else RelaySession()
        # Every session starts with Started; its commands (the first Wakeup) are
        # kept apart so scripts only check what their own events cause.
        self.started: list[Command] = list(self.session.handle(Started(now)))
        self._pending: list[Command] = []
        self.facts: list[Metered | TokensUsed | FirstAudio] = []

    def __rshift__(self, event: Event) -> Playbook:
        assert not self._pending, (
            f"unchecked commands before {event!r}: {self._pending!r}"
        )
        for command in self.session.handle(event):
            # Metering facts are collected apart: scripts check what the relay
            # does, tests of the meter read `facts`.
            if isinstance(command, Metered | TokensUsed | FirstAudio):
                self.facts.append(command)
            else:
                self._pending.append(command)
        return self

    def __lshift__(self, expected: Command) -> Playbook:
        assert self._pending, f"expected {expected!r}, but no command is left"
        actual = self.next()
        assert actual == expected, f"expected {expected!r}, got {actual!r}"
        return self

    def next(self) -> Command:
        """The next unchecked command, now checked: for a test that inspects it itself."""
        assert self._pending, "expected a command, but no command is left"
        return self._pending.pop(0)

    def discard(self) -> None:
        """Let the unchecked commands go: the script checks what follows, not them."""
        self._pending.clear()

    def done(self) -> None:
        """Assert that every produced command was checked."""
        assert not self._pending, f"unchecked commands: {self._pending!r}"
