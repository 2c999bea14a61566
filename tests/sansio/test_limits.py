"""A session's own limits in the core: duration cap, idle timeout, inbound rate."""

from __future__ import annotations

import json

from relay.sansio.commands import Applied, Close, Ended, Send, Wakeup
from relay.sansio.events import ClientMessage, Tick
from relay.sansio.limits import (
    AZURE_MARGIN,
    AZURE_MAX_SESSION,
    InboundRate,
    SessionLimits,
)
from relay.sansio.session import RelaySession
from tests.helpers.playbook import Playbook


APPEND = '{"type":"input_audio_buffer.append","audio":"AAAA"}'


def error_code(command: object) -> str:
    assert isinstance(command, Send)
    assert isinstance(command.data, str)
    event = json.loads(command.data)
    assert event["type"] == "error"
    return str(event["error"]["code"])


class TestDuration:
    def test_the_cap_ends_the_session_with_an_explanation(self) -> None:
        """At max_session_seconds: an error event, close 4000, upstream closed normally."""
        book = Playbook(
            RelaySession(limits=SessionLimits(max_session_seconds=60)), now=10.0
        )
        assert book.started == [Wakeup(70.0)]
        book >> Tick(70.0)
        assert error_code(book._pending.pop(0)) == "session_duration_limit_reached"
        (
            book
            << Ended("max_duration", 4000, "session duration limit reached")
            << Close("client", 4000, "session duration limit reached")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_never_after_azures_own_cap(self) -> None:
        """A longer (or no) configured cap still ends the session before Azure's 30 minutes."""
        for limit in (None, 1800.0):
            book = Playbook(
                RelaySession(limits=SessionLimits(max_session_seconds=limit))
            )
            assert book.started == [Wakeup(AZURE_MAX_SESSION - AZURE_MARGIN)]


class TestIdle:
    def test_activity_moves_the_idle_deadline(self) -> None:
        """A Tick at the old deadline re-arms for the new one; silence ends the session."""
        book = Playbook(RelaySession(limits=SessionLimits(idle_seconds=10)), now=0.0)
        assert book.started == [Wakeup(10.0)]
        (book >> ClientMessage(APPEND, now=6.0) << Send("upstream", APPEND)).done()
        (book >> Tick(10.0) << Wakeup(16.0)).done()
        book >> Tick(16.0)
        assert error_code(book._pending.pop(0)) == "idle_timeout"
        (
            book
            << Ended("idle_timeout", 4001, "idle timeout")
            << Close("client", 4001, "idle timeout")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()


class TestRate:
    def test_over_the_rate_frames_are_dropped_and_the_client_told(self) -> None:
        """Within the burst frames pass; beyond it they are dropped with one notice per second."""
        book = Playbook(
            RelaySession(limits=SessionLimits(messages_per_second=2)), now=0.0
        )
        for _ in range(4):  # the burst is two seconds' worth
            (book >> ClientMessage(APPEND, now=0.0) << Send("upstream", APPEND)).done()
        book >> ClientMessage(APPEND, now=0.0) << Applied("refuse", "rate_limit")
        assert error_code(book._pending.pop(0)) == "rate_limit_exceeded"
        (
            book >> ClientMessage(APPEND, now=0.1) << Applied("refuse", "rate_limit")
        ).done()
        # Half a second later one token is back.
        (book >> ClientMessage(APPEND, now=0.6) << Send("upstream", APPEND)).done()

    def test_persisting_over_the_rate_closes_with_4029(self) -> None:
        """A client over its rate for longer than the grace period is closed."""
        book = Playbook(
            RelaySession(limits=SessionLimits(messages_per_second=1, rate_grace=2.0)),
            now=0.0,
        )
        # Ten messages a second against a rate of one: some pass, most are dropped,
        # and the first refusal (at 0.2 s, after the burst) starts the grace period.
        session = book.session
        closed_at = None
        for step in range(40):
            now = step / 10
            commands = session.handle(ClientMessage(APPEND, now=now))
            if Ended("rate_limited", 4029, "rate limit exceeded") in commands:
                assert error_code(commands[0]) == "rate_limit_exceeded"
                closed_at = now
                break
        assert closed_at == 2.2

    def test_byte_rate_admits_one_message_as_large_as_allowed(self) -> None:
        """The byte bucket's burst covers the largest message; the sustained rate still holds."""
        rate = InboundRate(
            SessionLimits(bytes_per_second=1000, burst_bytes=100_000), now=0.0
        )
        assert rate.check(100_000, now=0.0).allowed
        assert not rate.check(10, now=0.0).allowed
        assert rate.check(10, now=0.1).allowed
