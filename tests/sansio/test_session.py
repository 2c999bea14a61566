"""The relayed session's state machine, as scripts of events and commands."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from relay.exceptions import RelayError, UpstreamUnavailable
from relay.sansio.closes import OUTCOMES, is_sendable
from relay.sansio.commands import (
    Abort,
    Applied,
    Close,
    Ended,
    Send,
    SendEdited,
    Wakeup,
)
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    ClientRemoved,
    Draining,
    Event,
    Failed,
    PolicyChanged,
    Stalled,
    Started,
    Tick,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.limits import AZURE_MARGIN, AZURE_MAX_SESSION
from relay.sansio.policy import Policy
from relay.sansio.session import INIT_EVENT_ID, RelaySession, State
from relay.sansio.wire import UPSTREAM_MAX_VALUES
from relay.typing import Family
from tests.helpers.playbook import Playbook


def state_of(book: Playbook) -> State:
    """The session's state, read afresh (keeps mypy from narrowing across events)."""
    return book.session.state


def error_to_client(
    code: str,
    event_id: str = "event_relay_1",
    client_event_id: str | None = None,
    param: str | None = None,
    message: str = "",
    kind: str = "invalid_request_error",
) -> Send:
    return Send(
        "client",
        json.dumps(
            {
                "type": "error",
                "event_id": event_id,
                "error": {
                    "type": kind,
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            },
            separators=(",", ":"),
        ),
    )


def sent(command: Any) -> dict[str, Any]:
    assert isinstance(command, Send)
    assert isinstance(command.data, str)
    result = json.loads(command.data)
    assert isinstance(result, dict)
    return result


STANDARD = Policy(
    "standard",
    set={"input_audio_noise_reduction": {"type": "near_field"}},
    default={"voice": "alloy"},
    deny=frozenset({"tools"}),
    hide=frozenset({"instructions"}),
    on_violation="refuse",
)
CREATED = json.dumps(
    {
        "type": "session.created",
        "event_id": "e1",
        "session": {
            "id": "s",
            "voice": "alloy",
            "instructions": "secret persona",
            "input_audio_noise_reduction": None,
        },
    }
)
UPDATED = json.dumps(
    {
        "type": "session.updated",
        "event_id": "e3",
        "session": {
            "id": "s",
            "voice": "alloy",
            "instructions": "secret persona",
            "input_audio_noise_reduction": {"type": "near_field"},
        },
    }
)
CONVERSATION = '{"type":"conversation.created","event_id":"e2"}'


class TestRelaying:
    def test_frames_pass_both_ways(self) -> None:
        """Ungoverned client events go upstream byte for byte; upstream frames come back unchanged."""
        append = '{ "type" : "input_audio_buffer.append", "audio": "AAAA" }'
        (
            Playbook()
            >> ClientMessage(append)
            << Send("upstream", append)
            >> UpstreamMessage('{"type":"session.created"}')
            << Send("client", '{"type":"session.created"}')
            >> UpstreamMessage(b"\xff")
            << Send("client", b"\xff")
        ).done()

    def test_governed_events_go_upstream_as_inspected(self) -> None:
        """session.update is re-serialized from what the policy read (no parser differential)."""
        book = Playbook() >> ClientMessage(
            '{"type": "session.update", "session": {"voice": "verse"}}'
        )
        (
            book
            << Send("upstream", '{"type":"session.update","session":{"voice":"verse"}}')
        ).done()

    def test_binary_client_frames_are_refused(self) -> None:
        """The protocol is JSON text: a binary frame gets an error event, nothing goes upstream."""
        (
            Playbook()
            >> ClientMessage(b"\x00\x01")
            << Applied("refuse", "message")
            << error_to_client(
                "invalid_event",
                message="binary frames are not supported: send JSON text events",
            )
        ).done()

    def test_a_flood_of_refusals_is_counted_each_time_and_logged_once_a_second(
        self,
    ) -> None:
        session = RelaySession()
        session.handle(Started(0.0))
        logged = [
            next(c for c in session.client_message("{}", now) if isinstance(c, Applied))
            for now in (0.0, 0.1, 0.9, 1.0, 1.5, 2.2)
        ]
        assert [a.logged for a in logged] == [True, False, False, True, False, True]
        assert {(a.action, a.field) for a in logged} == {("refuse", "message")}

    def test_malformed_client_frames_are_refused_and_the_session_stays_open(
        self,
    ) -> None:
        """Each garbage frame is answered; the session goes on."""
        book = Playbook()
        for number, garbage in enumerate(
            [
                '{"type":',
                "[1, 2]",
                '"text"',
                '{"no_type": 1}',
                '{"type": 7}',
                '{"type":"a","type":"b"}',
                '{"type":"x","n":NaN}',
                '{"type":"x","n":1e999}',
                "[" * 5000 + "]" * 5000,
            ],
            start=1,
        ):
            book >> ClientMessage(garbage, now=float(number))  # a second apart
            book << Applied("refuse", "message")
            command = book.next()
            event = sent(command)
            assert event["type"] == "error"
            assert event["event_id"] == f"event_relay_{number}"
            assert event["error"]["code"] == "invalid_event"
            book.done()
        assert state_of(book) is State.OPEN


class TestInitialization:
    def test_policy_is_in_force_before_the_first_client_frame(self) -> None:
        """The client's first event is session.created with the effective configuration."""
        book = Playbook(RelaySession(STANDARD, "preview", init_timeout=5.0), now=100.0)
        assert book.started == [Wakeup(105.0)]
        assert state_of(book) is State.INITIALIZING
        # A client frame arriving early is held, not forwarded.
        (
            book >> ClientMessage('{"type":"input_audio_buffer.append","audio":"AA=="}')
        ).done()
        assert book.session.held_bytes > 0
        book >> UpstreamMessage(CREATED)
        init = sent(book.next())
        assert init == {
            "type": "session.update",
            "event_id": INIT_EVENT_ID,
            "session": {
                "voice": "alloy",
                "input_audio_noise_reduction": {"type": "near_field"},
            },
        }
        book.done()
        (book >> UpstreamMessage(CONVERSATION)).done()
        book >> UpstreamMessage(UPDATED)
        created = sent(book.next())
        assert created["type"] == "session.created"
        assert created["event_id"] == "e1"
        assert created["session"]["input_audio_noise_reduction"] == {
            "type": "near_field"
        }
        assert created["session"]["instructions"] == ""  # hidden
        (
            book
            << Send("client", CONVERSATION)
            << Send("upstream", '{"type":"input_audio_buffer.append","audio":"AA=="}')
        ).done()
        assert state_of(book) is State.OPEN
        assert book.session.held_bytes == 0
        # The init deadline no longer matters: the next one is the duration cap.
        (book >> Tick(200.0) << Wakeup(100.0 + AZURE_MAX_SESSION - AZURE_MARGIN)).done()

    def test_ga_initial_update_has_the_ga_shape(self) -> None:
        """In GA the update carries type realtime and the audio.input paths."""
        book = Playbook(RelaySession(STANDARD, "ga"))
        book >> UpstreamMessage(
            '{"type":"session.created","event_id":"e1","session":{"type":"realtime"}}'
        )
        assert sent(book.next())["session"] == {
            "type": "realtime",
            "audio": {
                "output": {"voice": "alloy"},
                "input": {"noise_reduction": {"type": "near_field"}},
            },
        }

    def test_held_frames_are_judged_on_release(self) -> None:
        """A denied field sent before the policy was in force is still refused."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        book >> ClientMessage(
            '{"type":"session.update","event_id":"c1","session":{"tools":[{"type":"function","name":"f"}]}}'
        )
        book >> UpstreamMessage(CREATED)
        book.discard()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["type"] == "session.created"
        book << Applied("refuse", "tools")
        refusal = sent(book.next())
        assert refusal["error"]["code"] == "policy_violation"
        assert refusal["error"]["param"] == "session.tools"
        assert refusal["error"]["event_id"] == "c1"
        book.done()

    def test_no_confirmation_in_time_fails_the_session(self) -> None:
        """Without session.updated by the deadline the client is told and both legs close."""
        book = Playbook(RelaySession(STANDARD, "preview", init_timeout=5.0))
        assert book.started == [Wakeup(5.0)]
        (book >> Tick(4.9) << Wakeup(5.0)).done()
        book >> Tick(5.0)
        notice = sent(book.next())
        assert notice["error"]["code"] == "policy_not_applied"
        assert notice["error"]["type"] == "server_error"
        (
            book
            << Ended("policy_failed", 1011, "session policy could not be applied")
            << Close("client", 1011, "session policy could not be applied")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_upstream_refusing_the_policy_fails_the_session(self) -> None:
        """An error answering the relay's own update ends the session clearly."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        book >> UpstreamMessage(CREATED)
        book.discard()
        book >> UpstreamMessage(
            json.dumps(
                {
                    "type": "error",
                    "event_id": "e9",
                    "error": {"code": "invalid_value", "event_id": INIT_EVENT_ID},
                }
            )
        )
        assert "the upstream refused" in sent(book.next())["error"]["message"]
        book << Ended("policy_failed", 1011, "session policy could not be applied")
        book.discard()
        assert book.session.outcome == "policy_failed"

    def test_other_upstream_errors_during_init_are_held(self) -> None:
        """An unrelated error is delivered after session.created, in order."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        other = '{"type":"error","event_id":"e7","error":{"code":"x","event_id":"c5"}}'
        book >> UpstreamMessage(CREATED)
        book.discard()
        (book >> UpstreamMessage(other)).done()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["type"] == "session.created"
        (book << Send("client", other)).done()

    def test_client_leaving_during_init_closes_upstream(self) -> None:
        """A client that leaves before the policy is in force ends the session normally."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        book >> ClientMessage('{"type":"response.create"}')
        (
            book
            >> ClientClosed(1000)
            << Ended("client_closed", 1000, "client closed")
            << Close("upstream", 1000, "client closed")
        ).done()
        assert book.session.held_bytes == 0

    def test_empty_policy_opens_at_once(self) -> None:
        """A policy with nothing to apply sends no update and holds nothing."""
        book = Playbook(RelaySession(Policy("empty", deny=frozenset({"tools"})), "ga"))
        book.done()
        assert state_of(book) is State.OPEN


class TestStripping:
    def test_the_rest_goes_upstream_and_the_client_gets_no_error(self) -> None:
        """A stripped field is a fact for metrics and logs; the client sees only Azure's answer."""
        book = Playbook(RelaySession(Policy("p", deny=frozenset({"tools"})), "ga"))
        book >> ClientMessage(
            '{"type":"session.update","event_id":"c1","session":{"type":"realtime",'
            '"tools":[{"type":"function","name":"f"}],"instructions":"Be brief."}}'
        )
        (
            book
            << Applied("strip", "tools")
            << Send(
                "upstream",
                '{"type":"session.update","event_id":"c1","session":{"type":"realtime",'
                '"instructions":"Be brief."}}',
            )
        ).done()

    def test_framework_defaults_pass_as_sent(self) -> None:
        """tools: [] under denied tools is not even a rewrite."""
        book = Playbook(RelaySession(Policy("p", deny=frozenset({"tools"})), "ga"))
        frame = '{"type":"session.update","session":{"type":"realtime","tools":[]}}'
        (book >> ClientMessage(frame) << Send("upstream", frame)).done()


class TestHiding:
    def test_hidden_fields_blank_until_the_client_sets_them(self) -> None:
        """instructions the client did not set are blanked in session.updated."""
        book = Playbook(
            RelaySession(
                Policy("p", hide=frozenset({"instructions", "tools"})), "preview"
            )
        )
        updated = '{"type":"session.updated","event_id":"e","session":{"instructions":"org secret","tools":[{"type":"function","name":"f"}]}}'
        book >> UpstreamMessage(updated)
        assert sent(book.next())["session"] == {
            "instructions": "",
            "tools": [],
        }
        book >> ClientMessage(
            '{"type":"session.update","session":{"instructions":"mine"}}'
        )
        book.discard()
        book >> UpstreamMessage(updated)
        assert sent(book.next())["session"] == {
            "instructions": "org secret",
            "tools": [],
        }

    def test_an_unreadable_session_event_is_withheld_when_fields_are_hidden(
        self,
    ) -> None:
        """Too complex to read, it could carry the hidden instructions: not passed on."""
        book = Playbook(
            RelaySession(Policy("p", hide=frozenset({"instructions"})), "preview")
        )
        padding = ",".join(["0"] * (UPSTREAM_MAX_VALUES + 1))
        updated = (
            '{"type":"session.updated","event_id":"e",'
            f'"session":{{"instructions":"org secret","x":[{padding}]}}}}'
        )
        book >> UpstreamMessage(updated)
        error = sent(book.next())
        assert error["error"]["code"] == "upstream_event_withheld"
        assert "org secret" not in json.dumps(error)

    def test_audio_frames_are_not_parsed_for_hiding(self) -> None:
        """Frames that cannot be session events pass as they are."""
        book = Playbook(
            RelaySession(Policy("p", hide=frozenset({"instructions"})), "preview")
        )
        delta = '{"type":"response.audio.delta","delta":"AAAA"}'
        (book >> UpstreamMessage(delta) << Send("client", delta)).done()


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

    def test_lost_upstream_is_a_bad_gateway(self) -> None:
        """An upstream that vanished without a close frame becomes 1014 for the client."""
        (
            Playbook()
            >> UpstreamClosed(1006)
            << Ended("upstream_lost", 1014, "upstream connection lost")
            << Close("client", 1014, "upstream connection lost")
        ).done()

    def test_late_frames_and_duplicate_closes_are_harmless(self) -> None:
        """Once closing, nothing produces commands."""
        book = Playbook()
        (
            book
            >> UpstreamClosed(1001)
            << Ended("upstream_closed", 1001, "upstream going away")
            << Close("client", 1001, "upstream going away")
        ).done()
        (
            book
            >> UpstreamMessage("late")
            >> ClientMessage("late too")
            >> UpstreamClosed(1001)
            >> ClientClosed(1000)
            >> ClientClosed(1000)
            >> Failed(RelayError())
            >> Started(1.0)
            >> Tick(9.0)
        ).done()
        assert state_of(book) is State.CLOSED

    def test_relay_failure_closes_both_legs(self) -> None:
        """A relay-side failure closes the client with its code and the upstream normally."""
        (
            Playbook()
            >> Failed(UpstreamUnavailable("the upstream is unavailable"))
            << Ended("upstream_error", 1014, "the upstream is unavailable")
            << Close("client", 1014, "the upstream is unavailable")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_internal_error_closes_upstream_with_1011(self) -> None:
        """Only the relay's own bugs are reported upstream as internal errors."""
        (
            Playbook()
            >> Failed(RelayError("é" * 200))
            << Ended("relay_error", 1011, "é" * 61)
            << Close("client", 1011, "é" * 61)
            << Close("upstream", 1011, "session ended by the relay")
        ).done()


_frames = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(
        [
            CREATED,
            UPDATED,
            CONVERSATION,
            '{"type":"session.update","session":{"tools":[]}}',
            '{"type":"response.create"}',
        ]
    ),
)
_events = st.one_of(
    st.builds(ClientMessage, _frames),
    st.builds(UpstreamMessage, _frames),
    st.builds(
        ClientClosed, st.integers(min_value=0, max_value=5000), st.text(max_size=200)
    ),
    st.builds(
        UpstreamClosed, st.integers(min_value=0, max_value=5000), st.text(max_size=200)
    ),
    st.builds(Failed, st.just(RelayError())),
    st.builds(Tick, st.floats(min_value=0, max_value=20)),
    st.builds(Stalled, st.sampled_from(["client", "upstream"])),
    st.builds(Draining, st.floats(min_value=0, max_value=20), st.just(10.0)),
    st.builds(ClientRemoved, st.floats(min_value=0, max_value=20)),
    st.builds(PolicyChanged, st.sampled_from([Policy("empty"), STANDARD])),
)


@given(st.sampled_from([Policy("empty"), STANDARD]), st.lists(_events, max_size=30))
def test_any_event_sequence_keeps_the_invariants(
    policy: Policy, events: list[Event]
) -> None:
    """For any sequence: one Ended at most, valid closes, sends only while running, holds freed."""
    session = RelaySession(policy, "preview", init_timeout=5.0)
    session.handle(Started(0.0))
    ended = 0
    closed: set[str] = set()
    to_client: list[str | bytes] = []
    for event in events:
        running = session.state in (State.INITIALIZING, State.OPEN)
        for command in session.handle(event):
            if isinstance(command, Send) and command.side == "client":
                to_client.append(command.data)
            if isinstance(command, Ended):
                ended += 1
                assert command.outcome in OUTCOMES
            elif isinstance(command, Close):
                assert is_sendable(command.code)
                assert len(command.reason.encode()) <= 123
                assert command.side not in closed
                closed.add(command.side)
            elif isinstance(command, Send):
                assert running
    assert ended <= 1
    if session.state in (State.CLOSING, State.CLOSED):
        assert ended == 1
        assert session.held_bytes == 0
    # The relay never speaks first: its drain notice follows an upstream event.
    if to_client:
        assert '"relay.draining"' not in str(to_client[0])


def closes_at_the_deadline(book: Playbook, deadline: float) -> None:
    """At the drain deadline the relay ends the session with 1012."""
    (
        book
        >> Tick(deadline)
        << Ended("drained", 1012, "relay restarting; reconnect")
        << Close("client", 1012, "relay restarting; reconnect")
        << Close("upstream", 1000, "session ended by the relay")
    ).done()


class TestStallsExpiryAndDrain:
    def test_a_client_that_stops_reading_is_dropped(self) -> None:
        """Nothing can reach it: abort its connection, close the upstream normally."""
        (
            Playbook()
            >> Stalled("client")
            << Ended("stalled", 4002, "client stopped reading")
            << Abort("client")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_an_upstream_that_stops_reading_is_dropped(self) -> None:
        """The client is told with 4002; the upstream connection is aborted."""
        (
            Playbook()
            >> Stalled("upstream")
            << Ended("stalled", 4002, "peer stopped reading")
            << Close("client", 4002, "peer stopped reading")
            << Abort("upstream")
        ).done()

    def test_session_expired_is_forwarded_then_both_legs_close(self) -> None:
        """Azure's explanation reaches the client before the relay's own close."""
        expired = json.dumps(
            {
                "type": "error",
                "event_id": "e9",
                "error": {
                    "type": "invalid_request_error",
                    "code": "session_expired",
                    "message": "Your session hit the maximum duration of 30 minutes.",
                },
            }
        )
        (
            Playbook()
            >> UpstreamMessage(expired)
            << Send("client", expired)
            << Ended("session_expired", 4000, "upstream session expired")
            << Close("client", 4000, "upstream session expired")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_other_errors_mentioning_expiry_pass_through(self) -> None:
        """Only the error event with that code ends the session."""
        text = '{"type":"response.audio_transcript.delta","delta":"session_expired"}'
        (Playbook() >> UpstreamMessage(text) << Send("client", text)).done()

    def test_drain_notice_then_1012_at_the_deadline(self) -> None:
        """The client is told how long it has; at the deadline the relay closes with 1012."""
        book = Playbook(RelaySession(), now=0.0)
        (book >> UpstreamMessage(CREATED) << Send("client", CREATED)).done()
        book >> Draining(deadline=30.0, grace_seconds=30.0)
        notice = sent(book.next())
        assert notice["type"] == "relay.draining"
        assert notice["grace_ms"] == 30000
        assert notice["event_id"].startswith("event_relay_")
        (book << Wakeup(30.0)).done()
        (book >> Draining(deadline=99.0, grace_seconds=99.0)).done()  # idempotent
        closes_at_the_deadline(book, 30.0)

    def test_drain_notice_as_an_error_event(self) -> None:
        """For clients that refuse unknown event types: a standard error event."""
        book = Playbook(RelaySession(drain_notice="error"), now=0.0)
        (book >> UpstreamMessage(CREATED) << Send("client", CREATED)).done()
        book >> Draining(deadline=30.0, grace_seconds=30.0)
        notice = sent(book.next())
        assert notice["type"] == "error"
        assert notice["error"]["type"] == "server_error"
        assert notice["error"]["code"] == "relay_draining"
        assert "30 s" in notice["error"]["message"]
        (book << Wakeup(30.0)).done()

    def test_no_drain_notice_still_ends_at_the_deadline(self) -> None:
        book = Playbook(RelaySession(drain_notice="none"), now=0.0)
        (book >> UpstreamMessage(CREATED) << Send("client", CREATED)).done()
        (book >> Draining(deadline=30.0, grace_seconds=30.0) << Wakeup(30.0)).done()
        closes_at_the_deadline(book, 30.0)

    def test_drain_before_the_greeting_waits_for_session_created(self) -> None:
        """Without an initial policy the session is open at once; the notice still waits."""
        book = Playbook(RelaySession(), now=0.0)
        (book >> Draining(deadline=10.0, grace_seconds=10.0) << Wakeup(10.0)).done()
        book >> UpstreamMessage(CREATED)
        assert book.next() == Send("client", CREATED)
        assert sent(book.next())["type"] == "relay.draining"

    def test_drain_during_initialization_keeps_session_created_first(self) -> None:
        """The notice waits behind session.created."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        (book >> Draining(deadline=10.0, grace_seconds=10.0) << Wakeup(5.0)).done()
        book >> UpstreamMessage(CREATED)
        book.discard()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["type"] == "session.created"
        assert sent(book.next())["type"] == "relay.draining"


class TestBridged:
    """A preview client on a GA upstream: translated at the core's edges."""

    GA_CREATED = json.dumps(
        {
            "type": "session.created",
            "event_id": "e1",
            "session": {
                "type": "realtime",
                "id": "s",
                "output_modalities": ["audio"],
                "audio": {"output": {"voice": "alloy"}},
            },
        }
    )

    def open_book(self, policy: Policy | None = None) -> Playbook:
        session = RelaySession(policy or Policy("none"), "ga", bridged=True)
        book = Playbook(session)
        book >> UpstreamMessage(self.GA_CREATED, 0.1)
        created = sent(book.next())
        assert created["session"] == {
            "id": "s",
            "modalities": ["text", "audio"],
            "voice": "alloy",
            "temperature": 0.8,
        }
        book.discard()
        return book

    def test_only_a_preview_client_on_a_ga_upstream_is_bridged(self) -> None:
        with pytest.raises(ValueError, match="only a preview client"):
            RelaySession(family="preview", bridged=True)

    def test_events_are_translated_both_ways(self) -> None:
        book = self.open_book()
        update = (
            '{"type":"session.update","session":{"voice":"verse","temperature":1.0}}'
        )
        book >> ClientMessage(update, 0.2)
        assert sent(book.next()) == {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"output": {"voice": "verse"}}},
        }
        book.discard()
        delta = '{"type":"response.output_audio.delta","event_id":"e","delta":"AAAA"}'
        book >> UpstreamMessage(delta, 0.3)
        assert book.next() == SendEdited(
            "client", delta, '{"type":"response.audio.delta"', 37
        )
        # Metered as GA said it: the delta's audio counts.
        assert book.facts
        book.discard()
        # Events the same in both pass as the client's own text.
        cancel = '{"type":"response.cancel","event_id":"c9"}'
        book >> ClientMessage(cancel, 0.4)
        command = book.next()
        assert isinstance(command, Send)
        assert command.data is cancel
        book.discard()

    def test_an_upstream_event_without_a_preview_counterpart_is_not_sent(self) -> None:
        book = self.open_book()
        book >> UpstreamMessage(
            '{"type":"conversation.item.done","event_id":"e","item":{"id":"i"}}', 0.2
        )
        book.done()

    def test_a_refusal_names_the_clients_parameter(self) -> None:
        book = self.open_book(
            Policy("p", allow={"voice": frozenset({"alloy"})}, on_violation="refuse")
        )
        book >> ClientMessage(
            '{"type":"session.update","event_id":"c1","session":{"voice":"echo"}}', 0.2
        )
        assert isinstance(book.next(), Applied)
        error = sent(book.next())
        assert error["error"]["param"] == "session.voice"
        assert error["error"]["event_id"] == "c1"
        book.done()


TIGHT = Policy(
    "tight",
    set={"voice": "echo"},
    default={"input_audio_noise_reduction": {"type": "far_field"}, "temperature": 0.7},
    deny=frozenset({"tools"}),
    events_deny=frozenset({"input_audio_buffer.append"}),
    on_violation="refuse",
)
APPEND_EVENT = '{"type":"input_audio_buffer.append","audio":"AA=="}'


def reload_update(event_id: str = "relay_policy_reload_1", **session: Any) -> Send:
    return Send(
        "upstream",
        json.dumps(
            {"type": "session.update", "event_id": event_id, "session": session},
            separators=(",", ":"),
        ),
    )


def opened(policy: Policy, family: Family = "preview") -> Playbook:
    """A session of ``policy`` past its initialization, every command checked."""
    book = Playbook(RelaySession(policy, family))
    book >> UpstreamMessage(CREATED)
    book.discard()
    book >> UpstreamMessage(UPDATED)
    book.discard()
    assert state_of(book) is State.OPEN
    return book


class TestPolicyReload:
    """PolicyChanged: a reload with ``policy_reload: all_sessions`` reaches a live session."""

    def test_the_new_policy_is_sent_upstream_and_judges_later_events(self) -> None:
        """Forced values and defaults go upstream at once; the next client event meets the new rules."""
        book = opened(STANDARD)
        (
            book
            >> PolicyChanged(TIGHT)
            << reload_update(
                input_audio_noise_reduction={"type": "far_field"},
                temperature=0.7,
                voice="echo",
            )
        ).done()
        assert book.session.policy is TIGHT
        book >> ClientMessage(
            '{"type":"session.update","session":{"voice":"alloy","temperature":0.9}}'
        )
        book << Applied("overwrite", "voice")
        assert sent(book.next())["session"] == {"voice": "echo", "temperature": 0.9}
        book.done()
        # The audio fast path asks the new policy too.
        book >> ClientMessage(APPEND_EVENT, now=2.0)
        book << Applied("refuse", "event_type")
        assert sent(book.next())["error"]["code"] == "policy_violation"
        book.done()

    def test_defaults_do_not_overwrite_what_the_client_chose(self) -> None:
        """A field the client set keeps its value; one the old policy forced takes the new default."""
        book = opened(STANDARD)
        book >> ClientMessage(
            '{"type":"session.update","session":{"temperature":0.9,'
            '"input_audio_noise_reduction":{"type":"far_field"}}}'
        )
        book.discard()
        # The second update is the client's second choice; both are its own.
        (
            book
            >> PolicyChanged(TIGHT)
            << reload_update(
                input_audio_noise_reduction={"type": "far_field"}, voice="echo"
            )
        ).done()

    def test_a_second_reload_has_its_own_event_id(self) -> None:
        book = opened(STANDARD)
        book >> PolicyChanged(TIGHT)
        book.discard()
        (
            book
            >> PolicyChanged(STANDARD)
            << reload_update(
                "relay_policy_reload_2",
                voice="alloy",
                input_audio_noise_reduction={"type": "near_field"},
            )
        ).done()

    def test_a_policy_with_nothing_to_force_sends_nothing(self) -> None:
        """Its rules judge later events; no update is due."""
        book = opened(STANDARD)
        (book >> PolicyChanged(Policy("open"))).done()
        (book >> ClientMessage(APPEND_EVENT) << Send("upstream", APPEND_EVENT)).done()
        book.facts.clear()

    @pytest.mark.parametrize(
        "layout",
        [
            {},  # json.dumps' own spacing
            {"separators": (",", ":")},  # Azure's: compact, type first
            {"separators": (",", ":"), "sort_keys": True},  # error first
        ],
    )
    def test_the_upstream_refusing_the_update_ends_the_session_as_at_start(
        self, layout: dict[str, Any]
    ) -> None:
        """An error naming the relay's update: policy_not_applied, then 1011, however it is laid out."""
        book = opened(STANDARD)
        book >> PolicyChanged(TIGHT)
        book.discard()
        other = json.dumps(
            {
                "type": "conversation.item.created",
                "event_id": "e5",
                "item": {"note": "relay_policy_reload_1"},
            }
        )
        (book >> UpstreamMessage(other) << Send("client", other)).done()
        book >> UpstreamMessage(
            json.dumps(
                {
                    "type": "error",
                    "event_id": "e9",
                    "error": {
                        "code": "invalid_value",
                        "event_id": "relay_policy_reload_1",
                    },
                },
                **layout,
            )
        )
        notice = sent(book.next())
        assert notice["error"]["code"] == "policy_not_applied"
        assert "refused the new session policy" in notice["error"]["message"]
        (
            book
            << Ended("policy_failed", 1011, "session policy could not be applied")
            << Close("client", 1011, "session policy could not be applied")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()

    def test_the_confirmation_reaches_the_client_with_the_new_hiding(self) -> None:
        """session.updated is relayed; a field the new policy no longer hides is shown."""
        book = opened(STANDARD)
        (book >> PolicyChanged(Policy("plain", set={"voice": "echo"}))).discard()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["session"]["instructions"] == "secret persona"
        book.done()
        (book >> PolicyChanged(STANDARD)).discard()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["session"]["instructions"] == ""

    def test_a_change_while_initializing_waits_for_the_opening(self) -> None:
        """Greeting first, then the new policy's update, then held frames judged by it."""
        book = Playbook(RelaySession(STANDARD, "preview"))
        (book >> ClientMessage(APPEND_EVENT)).done()
        (book >> PolicyChanged(TIGHT)).done()
        book >> UpstreamMessage(CREATED)
        assert sent(book.next())["event_id"] == INIT_EVENT_ID
        book.done()
        book >> UpstreamMessage(UPDATED)
        assert sent(book.next())["type"] == "session.created"
        book << reload_update(
            input_audio_noise_reduction={"type": "far_field"},
            temperature=0.7,
            voice="echo",
        )
        book << Applied("refuse", "event_type")
        assert sent(book.next())["error"]["code"] == "policy_violation"
        book.done()

    def test_a_change_before_the_start_is_the_initial_policy(self) -> None:
        """Not started yet: the session starts as if admitted with the new policy."""
        session = RelaySession(Policy("open"), "ga")
        assert session.handle(PolicyChanged(TIGHT)) == []
        book = Playbook(session)
        assert state_of(book) is State.INITIALIZING
        book >> UpstreamMessage(
            '{"type":"session.created","event_id":"e1","session":{"type":"realtime"}}'
        )
        update = sent(book.next())
        assert update["event_id"] == INIT_EVENT_ID
        assert update["session"] == {
            "type": "realtime",
            "audio": {
                "input": {"noise_reduction": {"type": "far_field"}},
                "output": {"voice": "echo"},
            },
        }

    def test_a_bridged_session_gets_the_ga_update(self) -> None:
        """The upstream's family decides the shape (GA: type realtime, audio paths)."""
        book = Playbook(RelaySession(Policy("open"), "ga", bridged=True))
        book >> PolicyChanged(Policy("voice", set={"voice": "echo"}))
        assert sent(book.next()) == {
            "type": "session.update",
            "event_id": "relay_policy_reload_1",
            "session": {"type": "realtime", "audio": {"output": {"voice": "echo"}}},
        }

    def test_an_ended_session_ignores_a_change(self) -> None:
        book = opened(STANDARD)
        book >> ClientClosed(1000)
        book.discard()
        (book >> PolicyChanged(TIGHT)).done()
        assert book.session.policy is STANDARD


class TestClientRemoved:
    """ClientRemoved: a reload removed the client; the session ends by the deadline."""

    def test_closed_with_4003_after_an_explanation(self) -> None:
        book = opened(STANDARD)
        (book >> ClientRemoved(30.0) << Wakeup(30.0)).done()
        (book >> ClientRemoved(5.0)).done()  # the first removal counts
        (book >> Tick(29.0) << Wakeup(30.0)).done()
        book >> Tick(30.0)
        notice = sent(book.next())
        assert notice["error"]["code"] == "client_removed"
        (
            book
            << Ended(
                "client_removed", 4003, "client removed from the relay's configuration"
            )
            << Close("client", 4003, "client removed from the relay's configuration")
            << Close("upstream", 1000, "session ended by the relay")
        ).done()
        (book >> ClientRemoved(40.0)).done()

    def test_a_drain_due_at_the_same_time_wins(self) -> None:
        """Both due: the drain's 1012 tells the client to reconnect elsewhere."""
        book = opened(STANDARD)
        (book >> ClientRemoved(30.0) << Wakeup(30.0)).done()
        book >> Draining(deadline=30.0, grace_seconds=30.0)
        book.discard()
        closes_at_the_deadline(book, 30.0)


@given(st.lists(_events, max_size=25), st.integers(min_value=0, max_value=25))
def test_after_a_change_every_client_update_meets_the_new_policy(
    events: list[Event], at: int
) -> None:
    """For any event order: once PolicyChanged is handled, the relay's update precedes every client session.update forwarded, and each carries the forced voice."""
    events = [e for e in events if not isinstance(e, PolicyChanged)]
    events.insert(min(at, len(events)), PolicyChanged(TIGHT))
    events += [
        UpstreamMessage(CREATED),
        UpstreamMessage(UPDATED),
        ClientMessage('{"type":"session.update","session":{"voice":"ash"}}'),
    ]
    session = RelaySession(STANDARD, "preview", init_timeout=5.0)
    session.handle(Started(0.0))
    changed = reloaded = False
    for event in events:
        for command in session.handle(event):
            if not (isinstance(command, Send) and command.side == "upstream"):
                continue
            update = json.loads(command.data)
            if update.get("type") != "session.update":
                continue
            event_id = update.get("event_id")
            if isinstance(event_id, str) and event_id.startswith("relay_policy_reload"):
                assert changed
                assert update["session"]["voice"] == "echo"
                reloaded = True
            elif changed and event_id != INIT_EVENT_ID:
                assert reloaded
                assert update["session"].get("voice", "echo") == "echo"
        changed = changed or isinstance(event, PolicyChanged)
