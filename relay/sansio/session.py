"""The state machine of one relayed session.

Life cycle::

    INITIALIZING --session.updated--> OPEN --first close--> CLOSING --both legs--> CLOSED
         (policy has an initial update)     (otherwise Started opens at once)

**Initializing.** When the client's policy has values to apply, the relay waits
for the upstream's ``session.created``, sends its own ``session.update``, and
holds everything until the matching ``session.updated``: upstream events in
order, client frames in order. The client's first event is then
``session.created`` carrying the *effective* configuration (the
``session.updated`` body), followed by what the upstream sent meanwhile; held
client frames are judged and released in order. An ``error`` answering the
relay's update, or no answer by the deadline, fails the session: the client
gets an ``error`` event and close 1011, the upstream a normal close.

**Open.** Every client text frame is parsed strictly and judged by the policy
(:func:`relay.sansio.policy.judge`): forwarded (rewritten if needed) or refused
with an ``error`` event, the session staying open. Binary client frames are
refused: the protocol is JSON text. Upstream frames pass through unchanged,
except ``session.created``/``session.updated`` when the policy hides fields.

**Closing.** The first close, from either side or from the relay, decides the
outcome (:class:`~relay.sansio.commands.Ended`, exactly once) and closes every
leg still open. Every event is accepted in every state, so a late frame or a
duplicate close can never crash a session; they produce no commands.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final, assert_never

from relay.sansio.closes import (
    CLIENT_GONE,
    DRAINED,
    EXPIRED,
    IDLE_TIMEOUT,
    MAX_DURATION,
    RATE_LIMITED,
    STALLED,
    client_close_for_upstream,
    truncate_reason,
)
from relay.sansio.commands import Abort, Applied, Close, Command, Ended, Send, Wakeup
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    Draining,
    Event,
    Failed,
    Stalled,
    Started,
    Tick,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.fields import FIELDS, JSON, write
from relay.sansio.limits import EXPIRY_WINDOW, InboundRate, SessionLimits
from relay.sansio.meter import Meter
from relay.sansio.policy import EMPTY_POLICY, GOVERNED_EVENTS, Forward, Policy, judge
from relay.sansio.wire import (
    InvalidEvent,
    dump,
    error_event,
    parse_event,
    parse_upstream,
    plain_append,
)
from relay.typing import DrainNotice, Family, Side


APPEND: Final = "input_audio_buffer.append"


__all__ = ["INIT_EVENT_ID", "RelaySession", "State"]

INIT_EVENT_ID: Final = "relay_policy_init"
NO_LIMITS: Final = SessionLimits()
"""Only Azure's own duration cap applies."""
"""``event_id`` of the relay's own first ``session.update``."""
_HIDDEN_VALUES: Final[dict[str, JSON]] = {"instructions": "", "tools": []}


class State(enum.Enum):
    """Life cycle of a relayed session."""

    INITIALIZING = "initializing"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class RelaySession:
    """Sans-I/O rules of one session; feed :meth:`handle` and execute what it returns.

    The driver must feed :class:`~relay.sansio.events.Started` first, execute
    the returned commands in order (``Send``/``Close`` for one side are
    delivered in the order given), and feed a ``Tick`` when a ``Wakeup`` comes
    due. While :attr:`held_bytes` exceeds its buffer bound it should stop
    reading the client until the value drops; the same for
    :attr:`held_upstream_bytes` and the upstream.
    """

    def __init__(
        self,
        policy: Policy = EMPTY_POLICY,
        family: Family = "preview",
        *,
        init_timeout: float = 5.0,
        limits: SessionLimits = NO_LIMITS,
        drain_notice: DrainNotice = "event",
    ) -> None:
        self.policy = policy
        self._drain_notice: DrainNotice = drain_notice
        self.family: Family = family
        self._init_timeout = init_timeout
        self._limits = limits
        # Deadlines (monotonic seconds), set by Started; the wall clock minus
        # the monotonic one, to read the upstream's expires_at.
        self._end_at = float("inf")
        self._started_at = 0.0
        self._wall_offset: float | None = None
        self._last_client = 0.0
        self._rate: InboundRate | None = None
        self._drain_at: float | None = None
        # Realtime facts about the frames, for metrics.
        self._meter = Meter(family)
        # Life-cycle state; see the module docstring.
        self.state = State.INITIALIZING
        # Whether each leg has been seen closed (by an event, not by our command).
        self.client_closed = False
        self.upstream_closed = False
        # The outcome once decided; None while the session runs.
        self.outcome: str | None = None
        # Initialization: the upstream's session.created, once received.
        self._created: dict[str, JSON] | None = None
        self._deadline = 0.0
        # Frames held during initialization, in arrival order.
        self._held_upstream: deque[str | bytes] = deque()
        # Whether session.created has reached the client: it must be the first
        # event a client sees, so the relay's own notices wait for it.
        self._greeted = False
        self._notices: list[str] = []
        self._held_client: deque[str | bytes] = deque()
        self.held_bytes = 0
        """Bytes of client frames held until the policy is in force."""
        self.held_upstream_bytes = 0
        """Bytes of upstream frames held until the policy is in force: a
        flooding upstream is not read while they exceed the buffer bound."""
        # When a policy action was last logged (see _log_due).
        self._logged_at = float("-inf")
        # Hidden fields the client set itself: no longer hidden from it.
        self._client_set: set[str] = set()
        self._relay_events = 0
        # Whether the policy lets audio appends through (the fast path's question).
        self._appends_allowed = (
            policy.events_allow is None or APPEND in policy.events_allow
        ) and APPEND not in policy.events_deny

    # Events

    def handle(self, event: Event) -> list[Command]:
        """Apply ``event`` and return the commands it causes."""
        match event:
            case Started(now=now, wall=wall):
                return self._start(now, wall)
            case Tick(now=now):
                return self._tick(now) if self._running else []
            case ClientMessage(data=data, now=now, admitted=admitted):
                return self.client_message(data, now, admitted=admitted)
            case UpstreamMessage(data=data, now=now):
                return self.upstream_message(data, now)
            case Stalled(side=side):
                return self._stalled(side) if self._running else []
            case Draining(deadline=deadline, grace_seconds=grace):
                return self._draining(deadline, grace) if self._running else []
            case ClientClosed(code=code):
                self.client_closed = True
                if self._running:
                    upstream_code, reason = CLIENT_GONE
                    return self._end(
                        Ended("client_closed", code, "client closed"),
                        [Close("upstream", upstream_code, reason)],
                    )
                self._settle()
                return []
            case UpstreamClosed(code=code):
                self.upstream_closed = True
                if self._running:
                    client_code, reason, outcome = client_close_for_upstream(code)
                    return self._end(
                        Ended(outcome, client_code, reason),
                        [Close("client", client_code, reason)],
                    )
                self._settle()
                return []
            case Failed(error=error):
                if self._running:
                    return self._fail(
                        error.outcome,
                        error.close_code,
                        error.message,
                        upstream_code=1011 if error.close_code == 1011 else 1000,
                    )
                return []
            case _:  # pragma: no cover - exhaustiveness is checked by mypy
                assert_never(event)

    def client_frame(self, size: int, first: bool, now: float) -> list[Command] | None:
        """Decide on a client data frame from its header, before its payload is read.

        ``first`` says the frame starts a message; its answer decides the
        whole message. ``None`` admits it (its bytes are charged to the
        inbound rate); a list refuses it, with what to do about that (the
        caller drops the message unread). For a later fragment the bytes are
        charged and the answer is always ``None``.
        """
        rate = self._rate
        if not self._running or rate is None:
            return []  # not started, or ending: nothing more is relayed
        if now > self._last_client:
            self._last_client = now
        if not first:
            rate.charge(size, now)
            return None
        return self._over_rate(size, now)

    def client_skipping(self, now: float) -> list[Command]:
        """The client's reader skipped bytes of refused messages at ``now``.

        They prolong the client's time over its rate (see
        :meth:`~relay.sansio.limits.InboundRate.refusing`): past the grace
        period the session is closed as when a refused message arrives. The
        caller reports this at most once per read.
        """
        rate = self._rate
        if not self._running or rate is None or not rate.refusing(now):
            return []
        return self._rate_close()

    def _rate_close(self) -> list[Command]:
        return self._limit_close(
            RATE_LIMITED,
            "rate_limited",
            "rate_limit_exceeded",
            "inbound rate limit exceeded for too long",
        )

    def client_message(
        self, data: str | bytes, now: float, admitted: bool = False
    ) -> list[Command]:
        """``handle(ClientMessage(data, now, admitted))``, without building the event.

        The relay's hot path calls this (and :meth:`upstream_message`) once per
        frame; :meth:`handle` is the same thing for every other caller.
        ``admitted`` says :meth:`client_frame` already admitted (and charged)
        the message; otherwise it is charged here, whole.
        """
        if not self._running:
            return []
        if now > self._last_client:
            self._last_client = now
        if not admitted:
            refused = self._over_rate(len(data), now)
            if refused is not None:
                return refused
        if self.state is State.INITIALIZING:
            self._held_client.append(data)
            self.held_bytes += len(data)
            return []
        return self._from_client(data, now)

    def upstream_message(self, data: str | bytes, now: float) -> list[Command]:
        """``handle(UpstreamMessage(data, now))``, without building the event."""
        state = self.state
        if state is State.OPEN:
            if isinstance(data, str) and "session_expired" in data and _expired(data):
                # Forward Azure's explanation, then end both legs: Azure
                # closes its side anyway, with an undocumented code.
                code, reason = EXPIRED
                return [
                    Send("client", data),
                    *self._fail("session_expired", code, reason, upstream_code=1000),
                ]
            if not self._greeted:
                # Open from the start (no initial policy): the upstream's first
                # event, session.created by the protocol, is the greeting.
                created = _peek(data)
                rearm = (
                    self._expires(created, now)
                    if created is not None and created.get("type") == "session.created"
                    else []
                )
                return [*rearm, *self._relay_upstream(data, now), *self._greet()]
            return self._relay_upstream(data, now)
        if state is State.INITIALIZING:
            return self._initializing(data, now)
        return []

    def _greet(self) -> list[Command]:
        """session.created has just been sent: the notices that waited for it follow."""
        self._greeted = True
        notices: list[Command] = [Send("client", notice) for notice in self._notices]
        self._notices.clear()
        return notices

    @property
    def _running(self) -> bool:
        return self.state in (State.INITIALIZING, State.OPEN)

    # Initialization

    def _start(self, now: float, wall: float | None) -> list[Command]:
        if self.state is not State.INITIALIZING or self._rate is not None:
            return []
        self._started_at = now
        self._wall_offset = None if wall is None else wall - now
        self._end_at = self._limits.session_end(now)
        self._last_client = now
        self._rate = InboundRate(self._limits, now)
        if self.policy.initial_session(self.family) is None:
            self.state = State.OPEN
        else:
            self._deadline = now + self._init_timeout
        return [Wakeup(self._next_deadline())]

    # Limits

    def _stalled(self, side: Side) -> list[Command]:
        if side == "client":
            # Nothing can reach a client that stopped reading, not even a close:
            # its connection is dropped. The stall code is what logs record.
            code, _ = STALLED
            ended = Ended("stalled", code, "client stopped reading")
            return self._end(
                ended,
                [
                    Abort("client"),
                    Close("upstream", 1000, "session ended by the relay"),
                ],
            )
        code, reason = STALLED
        return self._end(
            Ended("stalled", code, reason),
            [Close("client", code, reason), Abort("upstream")],
        )

    def _draining(self, deadline: float, grace: float) -> list[Command]:
        if self._drain_at is not None:
            return []
        self._drain_at = deadline
        if self._drain_notice == "none":
            return [Wakeup(self._next_deadline())]
        notice = self._drain_notice_event(grace)
        if not self._greeted:
            # The client's first event must stay session.created.
            self._notices.append(notice)
            return [Wakeup(self._next_deadline())]
        return [Send("client", notice), Wakeup(self._next_deadline())]

    def _drain_notice_event(self, grace: float) -> str:
        if self._drain_notice == "error":
            # Every client parses error events; Azure announces its own
            # session end (session_expired) the same way.
            return error_event(
                self._event_id(),
                code="relay_draining",
                message=(
                    "this relay is restarting: finish within "
                    f"{round(grace)} s, then reconnect"
                ),
                param=None,
                client_event_id=None,
                error_type="server_error",
            )
        return dump(
            {
                "type": "relay.draining",
                "event_id": self._event_id(),
                "grace_ms": round(grace * 1000),
            }
        )

    def _expires(self, created: dict[str, JSON], now: float) -> list[Command]:
        """Cap the session by the ``expires_at`` of the upstream's ``session.created``.

        Azure's value is authoritative (its documented cap changed from 30 to
        60 minutes in 2026); one outside :data:`EXPIRY_WINDOW` from now is
        not believed and the documented cap stays. Returns the ``Wakeup`` for
        a deadline that moved (none if it did not).
        """
        session = created.get("session")
        expires_at = session.get("expires_at") if isinstance(session, dict) else None
        if (
            self._wall_offset is None
            or isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
        ):
            return []
        expires = expires_at - self._wall_offset
        low, high = EXPIRY_WINDOW
        if not low <= expires - now <= high:
            return []
        end = self._limits.session_end(self._started_at, expires)
        if end == self._end_at:
            return []
        self._end_at = end
        return [Wakeup(self._next_deadline())]

    def _next_deadline(self) -> float:
        deadlines = [self._end_at]
        if self._drain_at is not None:
            deadlines.append(self._drain_at)
        if self.state is State.INITIALIZING:
            deadlines.append(self._deadline)
        if self._limits.idle_seconds is not None:
            deadlines.append(self._last_client + self._limits.idle_seconds)
        return min(deadlines)

    def _tick(self, now: float) -> list[Command]:
        if self.state is State.INITIALIZING and now >= self._deadline:
            return self._fail_init(
                "the upstream did not confirm the session policy in time"
            )
        if self._drain_at is not None and now >= self._drain_at:
            code, reason = DRAINED
            return self._fail("drained", code, reason, upstream_code=1000)
        if now >= self._end_at:
            return self._limit_close(
                MAX_DURATION,
                "max_duration",
                "session_duration_limit_reached",
                "the session reached its maximum duration",
            )
        idle = self._limits.idle_seconds
        if idle is not None and now >= self._last_client + idle:
            return self._limit_close(
                IDLE_TIMEOUT,
                "idle_timeout",
                "idle_timeout",
                f"no client event for {idle:g} seconds",
            )
        return [Wakeup(self._next_deadline())]

    def _over_rate(self, size: int, now: float) -> list[Command] | None:
        assert self._rate is not None, "Started must come first"
        verdict = self._rate.check(size, now)
        if verdict.allowed:
            return None
        if verdict.close:
            return self._rate_close()
        commands: list[Command] = [
            Applied("refuse", "rate_limit", logged=verdict.notify)
        ]
        if verdict.notify:
            commands.append(
                Send(
                    "client",
                    error_event(
                        self._event_id(),
                        code="rate_limit_exceeded",
                        message="inbound rate limit exceeded: messages are being dropped; slow down",
                        param=None,
                        client_event_id=None,
                    ),
                )
            )
        return commands

    def _limit_close(
        self, close: tuple[int, str], outcome: str, code: str, message: str
    ) -> list[Command]:
        notice = error_event(
            self._event_id(),
            code=code,
            message=message,
            param=None,
            client_event_id=None,
        )
        close_code, reason = close
        return [
            Send("client", notice),
            *self._fail(outcome, close_code, reason, upstream_code=1000),
        ]

    def _initializing(self, data: str | bytes, now: float) -> list[Command]:
        event = _peek(data)
        kind = event.get("type") if event is not None else None
        if self._created is None and kind == "session.created":
            assert event is not None
            self._created = event
            rearm = self._expires(event, now)
            session = self.policy.initial_session(self.family)
            return [
                *rearm,
                Send(
                    "upstream",
                    dump(
                        {
                            "type": "session.update",
                            "event_id": INIT_EVENT_ID,
                            "session": session,
                        }
                    ),
                ),
            ]
        if self._created is not None and kind == "session.updated":
            assert event is not None
            return self._open(event, now)
        if kind == "error" and event is not None:
            error = event.get("error")
            if isinstance(error, dict) and error.get("event_id") == INIT_EVENT_ID:
                return self._fail_init("the upstream refused the session policy")
        self._held_upstream.append(data)
        self.held_upstream_bytes += len(data)
        return []

    def _open(self, updated: dict[str, JSON], now: float) -> list[Command]:
        assert self._created is not None
        self.state = State.OPEN
        created = dict(self._created)
        created["session"] = updated.get("session", created.get("session"))
        self._hide(created)
        commands = [*self._relay_upstream(dump(created), now), *self._greet()]
        for data in self._held_upstream:
            commands.extend(self._relay_upstream(data, now))
        self._held_upstream.clear()
        self.held_upstream_bytes = 0
        while self._held_client and self.state is State.OPEN:
            commands.extend(self._from_client(self._held_client.popleft(), now))
        self._held_client.clear()
        self.held_bytes = 0
        return commands

    def _fail_init(self, reason: str) -> list[Command]:
        notice = error_event(
            self._event_id(),
            code="policy_not_applied",
            message=f"session policy could not be applied: {reason}",
            param=None,
            client_event_id=None,
            error_type="server_error",
        )
        return [
            Send("client", notice),
            *self._fail(
                "policy_failed",
                1011,
                "session policy could not be applied",
                upstream_code=1000,
            ),
        ]

    # Open

    def _relay_upstream(self, data: str | bytes, now: float) -> list[Command]:
        frame = self._from_upstream(data)
        return [Send("client", frame), *self._meter.upstream_frame(frame, now)]

    def _from_client(self, data: str | bytes, now: float) -> list[Command]:
        if isinstance(data, str) and self._appends_allowed:
            audio = plain_append(data)
            if audio is not None:
                # Exactly what the full parse would conclude for this event
                # (an ungoverned type, forwarded as received), without it.
                return [
                    Send("upstream", data),
                    self._meter.client_append(len(audio), audio[-2:]),
                ]
        return self._from_client_parsed(data, now)

    def _from_client_parsed(self, data: str | bytes, now: float) -> list[Command]:
        if isinstance(data, bytes):
            return self._invalid(
                None,
                "binary frames are not supported: send JSON text events",
                "message",
                now,
            )
        try:
            event = parse_event(data)
        except InvalidEvent as exc:
            return self._invalid(None, str(exc), "message", now)
        client_event_id = event.get("event_id")
        verdict = judge(self.policy, self.family, event)
        commands: list[Command] = []
        if isinstance(verdict, Forward):
            logged = self._log_due(now) if verdict.actions else False
            commands.extend(Applied(a.action, a.field, logged) for a in verdict.actions)
            self._client_set |= verdict.client_set
            governed = event["type"] in GOVERNED_EVENTS
            # Governed events go upstream exactly as inspected; others as received
            # (the strict parse proved they cannot be read differently).
            commands.append(Send("upstream", dump(verdict.event) if governed else data))
            commands.append(self._meter.client_event(verdict.event, now))
            return commands
        logged = self._log_due(now)
        commands.extend(Applied(a.action, a.field, logged) for a in verdict.actions)
        commands.append(
            Send(
                "client",
                error_event(
                    self._event_id(),
                    code=verdict.code,
                    message=verdict.message,
                    param=verdict.param,
                    client_event_id=client_event_id,
                ),
            )
        )
        return commands

    def _invalid(
        self, client_event_id: JSON, message: str, field: str, now: float
    ) -> list[Command]:
        notice = error_event(
            self._event_id(),
            code="invalid_event",
            message=message,
            param=None,
            client_event_id=client_event_id,
        )
        return [Applied("refuse", field, self._log_due(now)), Send("client", notice)]

    def _log_due(self, now: float) -> bool:
        """Whether a policy action at ``now`` is worth a log line: one a second.

        Every action is counted (``Applied``); a client repeating one hundreds
        of times a second would otherwise make the relay spend more on log
        lines than on relaying (a log line costs more than the event).
        """
        if now - self._logged_at < 1.0:
            return False
        self._logged_at = now
        return True

    def _from_upstream(self, data: str | bytes) -> str | bytes:
        # Only session.created/updated can need hiding; base64 audio cannot
        # contain these names, so most frames skip parsing entirely.
        if not self._hidden or isinstance(data, bytes):
            return data
        if "session.created" not in data and "session.updated" not in data:
            return data
        event = _peek(data)
        if event is None:
            # Unreadable (past the bounds, or not JSON): it could hold what
            # the policy hides, so it is not passed on.
            return error_event(
                self._event_id(),
                code="upstream_event_withheld",
                message="an upstream event could not be read and was withheld",
                param=None,
                client_event_id=None,
                error_type="server_error",
            )
        if event.get("type") not in ("session.created", "session.updated"):
            return data
        return dump(event) if self._hide(event) else data

    @property
    def _hidden(self) -> frozenset[str]:
        return self.policy.hide - self._client_set

    def _hide(self, event: dict[str, JSON]) -> bool:
        session = event.get("session")
        if not isinstance(session, dict):
            return False
        for name in sorted(self._hidden):
            write(
                session, FIELDS[name], self.family, _HIDDEN_VALUES[name], response=False
            )
        return bool(self._hidden)

    # Ending

    def _fail(
        self, outcome: str, code: int, message: str, *, upstream_code: int
    ) -> list[Command]:
        reason = truncate_reason(message)
        closes: list[Command] = []
        if not self.client_closed:
            closes.append(Close("client", code, reason))
        if not self.upstream_closed:
            closes.append(
                Close("upstream", upstream_code, "session ended by the relay")
            )
        return self._end(Ended(outcome, code, reason), closes)

    def _end(self, ended: Ended, closes: list[Command]) -> list[Command]:
        self.outcome = ended.outcome
        self.state = State.CLOSING
        self._held_client.clear()
        self._held_upstream.clear()
        self.held_bytes = self.held_upstream_bytes = 0
        self._settle()
        return [ended, *closes]

    def _settle(self) -> None:
        if self.client_closed and self.upstream_closed:
            self.state = State.CLOSED

    def _event_id(self) -> str:
        self._relay_events += 1
        return f"event_relay_{self._relay_events}"


def _expired(data: str) -> bool:
    """Whether an upstream frame is Azure's ``session_expired`` error (protocol.md §1.4)."""
    event = _peek(data)
    if event is None or event.get("type") != "error":
        return False
    error = event.get("error")
    return isinstance(error, dict) and error.get("code") == "session_expired"


def _peek(data: str | bytes) -> dict[str, JSON] | None:
    """The upstream event as an object, if it is one within the bounds of :func:`parse_upstream`."""
    return parse_upstream(data)
