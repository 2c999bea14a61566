"""A session's own limits in the core: duration cap, idle timeout, inbound rate."""

from __future__ import annotations

import json

from relay.sansio.commands import Applied, Close, Ended, Send, Wakeup
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Started,
    Tick,
    UpstreamMessage,
)
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


class TestAdmissionAtTheHeader:
    """``client_frame``: the rate limits decide from a frame's header, before its payload."""

    def test_a_refused_message_is_answered_before_its_payload(self) -> None:
        session = RelaySession(
            limits=SessionLimits(bytes_per_second=1000, burst_bytes=2000)
        )
        session.handle(Started(0.0))
        assert session.client_frame(50_000, True, 0.0) is None  # admitted, in debt
        refused = session.client_frame(10, True, 0.5)
        assert refused is not None
        assert refused[0] == Applied("refuse", "rate_limit")  # logged: told
        assert error_code(refused[1]) == "rate_limit_exceeded"
        # Silent for the rest of that second; then admitted once repaid.
        assert session.client_frame(10, True, 0.6) == [
            Applied("refuse", "rate_limit", logged=False)  # counted, not logged
        ]
        assert session.client_frame(10, True, 48.1) is None

    def test_later_fragments_are_charged_and_never_refused(self) -> None:
        session = RelaySession(limits=SessionLimits(bytes_per_second=1000))
        session.handle(Started(0.0))
        assert session.client_frame(100, True, 0.0) is None
        for _ in range(10):  # far beyond the 2,000-byte burst
            assert session.client_frame(1000, False, 0.0) is None
        assert session.client_frame(1, True, 0.0) is not None  # repaid in 8 s
        assert session.client_frame(1, True, 8.2) is None

    def test_an_admitted_message_is_not_charged_again(self) -> None:
        session = RelaySession(limits=SessionLimits(messages_per_second=1))
        session.handle(Started(0.0))
        assert session.client_frame(len(APPEND), True, 0.0) is None
        assert session.client_frame(len(APPEND), True, 0.0) is None  # burst of 2
        for _ in range(5):
            commands = session.client_message(APPEND, 0.0, admitted=True)
            assert Applied("refuse", "rate_limit") not in commands
        assert session.client_frame(len(APPEND), True, 0.0) is not None

    def test_a_session_that_ended_refuses_silently(self) -> None:
        session = RelaySession(limits=SessionLimits())
        assert session.client_frame(10, True, 0.0) == []  # not started
        session.handle(Started(0.0))
        session.handle(ClientClosed(1000, ""))
        assert session.client_frame(10, True, 1.0) == []


class TestDuration:
    def test_the_cap_ends_the_session_with_an_explanation(self) -> None:
        """At max_session_seconds: an error event, close 4000, upstream closed normally."""
        book = Playbook(
            RelaySession(limits=SessionLimits(max_session_seconds=60)), now=10.0
        )
        assert book.started == [Wakeup(70.0)]
        book >> Tick(70.0)
        assert error_code(book.next()) == "session_duration_limit_reached"
        (
            book
            << Ended("max_duration", 4000, "session duration limit reached")
            << Close("client", 4000, "session duration limit reached")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_never_after_azures_own_cap(self) -> None:
        """A longer (or no) configured cap still ends the session before Azure's 60 minutes."""
        assert AZURE_MAX_SESSION == 3600
        for limit in (None, 3600.0, 7200.0):
            book = Playbook(
                RelaySession(limits=SessionLimits(max_session_seconds=limit))
            )
            assert book.started == [Wakeup(AZURE_MAX_SESSION - AZURE_MARGIN)]


WALL = 1_790_000_000.0  # Unix seconds at the session's start (monotonic 100)


def created(expires_at: object) -> str:
    return json.dumps(
        {
            "type": "session.created",
            "event_id": "e1",
            "session": {"id": "s", "expires_at": expires_at},
        }
    )


class TestExpiresAt:
    """Azure's ``expires_at`` in ``session.created`` is authoritative for the cap."""

    def open_session(self, limits: SessionLimits, expires_at: object) -> list[object]:
        session = RelaySession(limits=limits)
        assert session.handle(Started(100.0, WALL)) == [
            Wakeup(limits.session_end(100.0))
        ]
        self.session = session
        return list(session.handle(UpstreamMessage(created(expires_at), 100.5)))

    def test_the_upstreams_expiry_moves_the_cap(self) -> None:
        """Later than the documented 60 minutes (Azure changed it once): believed."""
        commands = self.open_session(SessionLimits(), WALL + 7200)
        assert commands[0] == Wakeup(100.0 + 7200 - AZURE_MARGIN)
        # A 45-minute session is not cut; the end comes 5 s before Azure's.
        assert self.session.handle(Tick(100.0 + 45 * 60)) == [
            Wakeup(100.0 + 7200 - AZURE_MARGIN)
        ]
        ending = self.session.handle(Tick(100.0 + 7200 - AZURE_MARGIN))
        assert error_code(ending[0]) == "session_duration_limit_reached"

    def test_an_earlier_expiry_ends_the_session_earlier(self) -> None:
        commands = self.open_session(SessionLimits(), WALL + 1800)
        assert commands[0] == Wakeup(100.0 + 1800 - AZURE_MARGIN)

    def test_the_clients_own_cap_still_holds(self) -> None:
        commands = self.open_session(
            SessionLimits(max_session_seconds=600), WALL + 3600
        )
        assert not any(isinstance(c, Wakeup) for c in commands)  # 600 s is sooner

    def test_a_45_minute_session_is_not_cut(self) -> None:
        """The default client cap (60 minutes) and Azure's 60-minute expiry."""
        commands = self.open_session(
            SessionLimits(max_session_seconds=3600), WALL + 3600
        )
        assert not any(isinstance(c, Wakeup) for c in commands)  # as assumed
        for minute in range(1, 46):
            assert not any(
                isinstance(c, Ended)
                for c in self.session.handle(Tick(100.0 + 60 * minute))
            )
        assert self.session.state is not None
        assert self.session.outcome is None

    def test_unbelievable_expiries_leave_the_documented_cap(self) -> None:
        for expires_at in (
            WALL - 10,  # past
            WALL + 30,  # sooner than a minute: a skewed clock
            WALL + 10 * 86400,  # days ahead
            True,
            "soon",
            None,
            float("nan"),
        ):
            commands = self.open_session(SessionLimits(), expires_at)
            assert not any(isinstance(c, Wakeup) for c in commands), expires_at

    def test_without_the_wall_clock_expires_at_is_ignored(self) -> None:
        session = RelaySession(limits=SessionLimits())
        session.handle(Started(100.0))
        commands = session.handle(UpstreamMessage(created(WALL + 7200), 100.5))
        assert not any(isinstance(c, Wakeup) for c in commands)


class TestIdle:
    def test_activity_moves_the_idle_deadline(self) -> None:
        """A Tick at the old deadline re-arms for the new one; silence ends the session."""
        book = Playbook(RelaySession(limits=SessionLimits(idle_seconds=10)), now=0.0)
        assert book.started == [Wakeup(10.0)]
        (book >> ClientMessage(APPEND, now=6.0) << Send("upstream", APPEND)).done()
        (book >> Tick(10.0) << Wakeup(16.0)).done()
        book >> Tick(16.0)
        assert error_code(book.next()) == "idle_timeout"
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
        assert error_code(book.next()) == "rate_limit_exceeded"
        (
            book
            >> ClientMessage(APPEND, now=0.1)
            << Applied("refuse", "rate_limit", logged=False)
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

    def test_skipping_a_refused_message_prolongs_the_time_over_the_rate(
        self,
    ) -> None:
        """One endless refused message (fragments skipped unread) is closed like a stream of refused ones."""
        session = RelaySession(
            limits=SessionLimits(messages_per_second=1, rate_grace=2.0)
        )
        session.handle(Started(0.0))
        assert session.client_frame(10, True, now=0.0) is None  # the burst: two
        assert session.client_frame(10, True, now=0.0) is None
        refused = session.client_frame(10, True, now=0.0)
        assert refused is not None
        assert Applied("refuse", "rate_limit") in refused
        # Its later fragments are skipped by the reader: reported as skipping.
        closed_at = None
        for step in range(1, 40):
            now = step / 10
            commands = session.client_skipping(now)
            if commands:
                assert error_code(commands[0]) == "rate_limit_exceeded"
                assert Ended("rate_limited", 4029, "rate limit exceeded") in commands
                closed_at = now
                break
        assert closed_at == 2.0
        assert session.client_skipping(2.1) == []  # ending: nothing more

    def test_a_pause_in_skipping_ends_the_streak(self) -> None:
        rate = InboundRate(SessionLimits(messages_per_second=1, rate_grace=2.0), 0.0)
        assert not rate.refusing(0.0)
        assert not rate.refusing(0.9)
        assert not rate.refusing(1.8)
        assert rate.refusing(2.0)  # two seconds over the rate
        assert not rate.refusing(3.1)  # over a second since 2.0: a new streak
        assert not rate.refusing(4.0)
        assert not rate.refusing(5.0)
        assert rate.refusing(5.2)

    def test_a_message_larger_than_the_burst_passes_once_then_the_debt_is_repaid(
        self,
    ) -> None:
        """The byte bucket need not hold the largest message; the sustained rate still holds."""
        rate = InboundRate(
            SessionLimits(bytes_per_second=1000, burst_bytes=2000), now=0.0
        )
        assert rate.check(10_000, now=0.0).allowed  # 8,000 bytes in debt
        assert not rate.check(10, now=0.0).allowed
        assert not rate.check(10, now=7.9).allowed  # still in debt
        assert rate.check(10, now=8.1).allowed
        rate.charge(5000, now=8.1)  # a later fragment: charged whatever the balance
        assert not rate.check(10, now=9.0).allowed

    def test_without_a_byte_rate_later_fragments_cost_nothing(self) -> None:
        """A message rate alone counts messages: fragments never spend a message token."""
        rate = InboundRate(SessionLimits(messages_per_second=1), now=0.0)
        assert rate.check(10, now=0.0).allowed
        rate.charge(10**9, now=0.0)
        assert rate.check(10, now=0.0).allowed  # the burst's second token
        assert not rate.check(10, now=0.0).allowed

    def test_the_byte_burst_defaults_to_two_seconds_of_the_rate(self) -> None:
        rate = InboundRate(SessionLimits(bytes_per_second=1000), now=0.0)
        assert rate.check(1500, now=0.0).allowed
        assert rate.check(600, now=0.0).allowed  # 2,100 of 2,000: 100 in debt
        assert not rate.check(1, now=0.0).allowed
        assert rate.check(1, now=0.11).allowed
