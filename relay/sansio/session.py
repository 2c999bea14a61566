"""The state machine of one relayed session.

A session starts :attr:`~State.OPEN` once both legs are up. Messages from one
leg become :class:`~relay.sansio.commands.Send` commands for the other. The
first close, from either side or from the relay, decides the outcome
(:class:`~relay.sansio.commands.Ended`, exactly once) and moves the session to
:attr:`~State.CLOSING`, with a :class:`~relay.sansio.commands.Close` for every
leg still open. When both legs have been seen closed the session is
:attr:`~State.CLOSED`. Every event is accepted in every state, so a late frame
or a duplicate close can never crash a session; they produce no commands.
"""

from __future__ import annotations

import enum
from typing import assert_never

from relay.exceptions import RelayError
from relay.sansio.closes import CLIENT_GONE, client_close_for_upstream, truncate_reason
from relay.sansio.commands import Close, Command, Ended, Send
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Event,
    Failed,
    UpstreamClosed,
    UpstreamMessage,
)


__all__ = ["RelaySession", "State"]


class State(enum.Enum):
    """Life cycle of a relayed session."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class RelaySession:
    """Sans-I/O rules of one session; feed :meth:`handle` and execute what it returns.

    The driver must execute the returned commands in order: ``Send``/``Close``
    for one side are delivered in the order given.
    """

    def __init__(self) -> None:
        # Life-cycle state; see the module docstring.
        self.state = State.OPEN
        # Whether each leg has been seen closed (by an event, not by our command).
        self.client_closed = False
        self.upstream_closed = False
        # The outcome once decided; None while the session is open.
        self.outcome: str | None = None

    def handle(self, event: Event) -> list[Command]:
        """Apply ``event`` and return the commands it causes."""
        match event:
            case ClientMessage(data=data):
                if self.state is State.OPEN:
                    return [Send("upstream", data)]
                return []
            case UpstreamMessage(data=data):
                if self.state is State.OPEN:
                    return [Send("client", data)]
                return []
            case ClientClosed(code=code):
                self.client_closed = True
                if self.state is State.OPEN:
                    upstream_code, reason = CLIENT_GONE
                    return self._end(
                        Ended("client_closed", code, "client closed"),
                        Close("upstream", upstream_code, reason),
                    )
                self._settle()
                return []
            case UpstreamClosed(code=code):
                self.upstream_closed = True
                if self.state is State.OPEN:
                    client_code, reason, outcome = client_close_for_upstream(code)
                    return self._end(
                        Ended(outcome, client_code, reason),
                        Close("client", client_code, reason),
                    )
                self._settle()
                return []
            case Failed(error=error):
                if self.state is State.OPEN:
                    return self._fail(error)
                return []
            case _:  # pragma: no cover - exhaustiveness is checked by mypy
                assert_never(event)

    def _fail(self, error: RelayError) -> list[Command]:
        reason = truncate_reason(error.message)
        commands: list[Command] = [Ended(error.outcome, error.close_code, reason)]
        if not self.client_closed:
            commands.append(Close("client", error.close_code, reason))
        if not self.upstream_closed:
            # The upstream did nothing wrong from its side: end the session normally
            # unless the relay itself failed.
            code = 1011 if error.close_code == 1011 else 1000
            commands.append(Close("upstream", code, "session ended by the relay"))
        self.outcome = error.outcome
        self.state = State.CLOSING
        self._settle()
        return commands

    def _end(self, ended: Ended, close: Close) -> list[Command]:
        self.outcome = ended.outcome
        self.state = State.CLOSING
        self._settle()
        return [ended, close]

    def _settle(self) -> None:
        if self.client_closed and self.upstream_closed:
            self.state = State.CLOSED
