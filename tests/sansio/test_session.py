"""The relayed session's state machine, as scripts of events and commands."""

from __future__ import annotations

from hypothesis import given, strategies as st

from relay.exceptions import RelayError, UpstreamUnavailable
from relay.sansio.closes import OUTCOMES, is_sendable
from relay.sansio.commands import Close, Ended, Send
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Event,
    Failed,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.session import RelaySession, State
from tests.helpers.playbook import Playbook


def state_of(book: Playbook) -> State:
    """The session's state, read afresh (keeps mypy from narrowing across events)."""
    return book.session.state


class TestRelaying:
    def test_messages_pass_both_ways_unchanged(self) -> None:
        """Text stays text, binary stays binary, in each direction."""
        (
            Playbook()
            >> ClientMessage('{"type":"session.update"}')
            << Send("upstream", '{"type":"session.update"}')
            >> ClientMessage(b"\x00\x01")
            << Send("upstream", b"\x00\x01")
            >> UpstreamMessage('{"type":"session.created"}')
            << Send("client", '{"type":"session.created"}')
            >> UpstreamMessage(b"\xff")
            << Send("client", b"\xff")
        ).done()


class TestClosing:
    def test_client_close_closes_upstream_normally(self) -> None:
        """Whatever code the client used, the upstream leg gets 1000."""
        book = Playbook()
        (
            book
            >> ClientClosed(4000, "bye")
            << Ended("client_closed", 4000, "client closed")
            << Close("upstream", 1000, "client closed")
        ).done()
        assert state_of(book) is State.CLOSING
        (book >> UpstreamClosed(1000)).done()
        assert state_of(book) is State.CLOSED

    def test_lost_client_closes_upstream(self) -> None:
        """A vanished client (1006) still ends the upstream leg."""
        (
            Playbook()
            >> ClientClosed(1006)
            << Ended("client_closed", 1006, "client closed")
            << Close("upstream", 1000, "client closed")
        ).done()

    def test_upstream_close_is_mapped_for_the_client(self) -> None:
        """A normal upstream close reaches the client as 1000 with the relay's reason."""
        book = Playbook()
        (
            book
            >> UpstreamClosed(1000, "secret internal detail")
            << Ended("upstream_closed", 1000, "upstream closed the session")
            << Close("client", 1000, "upstream closed the session")
        ).done()
        (book >> ClientClosed(1000)).done()
        assert state_of(book) is State.CLOSED
        assert book.session.outcome == "upstream_closed"

    def test_lost_upstream_is_a_bad_gateway(self) -> None:
        """An upstream that vanished without a close frame becomes 1014 for the client."""
        (
            Playbook()
            >> UpstreamClosed(1006)
            << Ended("upstream_lost", 1014, "upstream connection lost")
            << Close("client", 1014, "upstream connection lost")
        ).done()

    def test_messages_after_close_are_dropped(self) -> None:
        """Once closing, late frames from either side produce nothing."""
        book = Playbook()
        (
            book
            >> ClientClosed(1000)
            << Ended("client_closed", 1000, "client closed")
            << Close("upstream", 1000, "client closed")
        ).done()
        (book >> UpstreamMessage("late") >> ClientMessage("late too")).done()

    def test_duplicate_closes_are_harmless(self) -> None:
        """A second close event of the same leg produces nothing."""
        book = Playbook()
        (
            book
            >> UpstreamClosed(1001)
            << Ended("upstream_closed", 1001, "upstream going away")
            << Close("client", 1001, "upstream going away")
        ).done()
        (
            book >> UpstreamClosed(1001) >> ClientClosed(1000) >> ClientClosed(1000)
        ).done()
        assert state_of(book) is State.CLOSED


class TestFailures:
    def test_relay_failure_closes_both_legs(self) -> None:
        """A relay-side failure closes the client with its code and the upstream normally."""
        error = UpstreamUnavailable("the upstream is unavailable")
        (
            Playbook()
            >> Failed(error)
            << Ended("upstream_error", 1014, "the upstream is unavailable")
            << Close("client", 1014, "the upstream is unavailable")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_internal_error_closes_upstream_with_1011(self) -> None:
        """Only the relay's own bugs are reported upstream as internal errors."""
        book = Playbook()
        (
            book
            >> Failed(RelayError())
            << Ended("relay_error", 1011, "internal relay error")
            << Close("client", 1011, "internal relay error")
            << Close("upstream", 1011, "session ended by the relay")
        ).done()
        assert book.session.outcome == "relay_error"

    def test_failure_after_a_leg_closed_spares_it(self) -> None:
        """A failure once closing produces nothing more."""
        book = Playbook()
        (
            book
            >> ClientClosed(1000)
            << Ended("client_closed", 1000, "client closed")
            << Close("upstream", 1000, "client closed")
        ).done()
        (book >> Failed(RelayError())).done()

    def test_long_failure_reason_is_truncated(self) -> None:
        """Close reasons never exceed 123 bytes."""
        commands = RelaySession().handle(Failed(RelayError("é" * 200)))
        closes = [c for c in commands if isinstance(c, Close)]
        assert all(len(c.reason.encode()) <= 123 for c in closes)


_events = st.one_of(
    st.builds(ClientMessage, st.one_of(st.text(max_size=20), st.binary(max_size=20))),
    st.builds(UpstreamMessage, st.one_of(st.text(max_size=20), st.binary(max_size=20))),
    st.builds(
        ClientClosed, st.integers(min_value=0, max_value=5000), st.text(max_size=200)
    ),
    st.builds(
        UpstreamClosed, st.integers(min_value=0, max_value=5000), st.text(max_size=200)
    ),
    st.builds(Failed, st.just(RelayError())),
)


@given(st.lists(_events, max_size=30))
def test_any_event_sequence_keeps_the_invariants(events: list[Event]) -> None:
    """For any sequence: one Ended at most, valid close codes and reasons, no close twice."""
    session = RelaySession()
    ended = 0
    closed: set[str] = set()
    for event in events:
        for command in session.handle(event):
            if isinstance(command, Ended):
                ended += 1
                assert command.outcome in OUTCOMES
            elif isinstance(command, Close):
                assert is_sendable(command.code)
                assert len(command.reason.encode()) <= 123
                assert command.side not in closed
                closed.add(command.side)
            else:
                assert session.state is State.OPEN
    assert ended <= 1
    if any(isinstance(e, ClientClosed | UpstreamClosed | Failed) for e in events):
        assert ended == 1
        assert session.state is not State.OPEN
