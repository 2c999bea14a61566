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
A *bridged* session (a preview-protocol client on a GA upstream) translates
client events to GA before they are judged, and upstream events to preview
after they are metered and hidden (:mod:`relay.sansio.bridge`): everything
else sees the upstream's family.

**A new policy.** A configuration reload with ``policy_reload:
all_sessions`` feeds :class:`~relay.sansio.events.PolicyChanged`: every later
client event is judged by the new policy, the fields it hides are hidden from
the next session event on, and the relay sends the upstream its own
``session.update`` (event_id ``relay_policy_reload_<n>``) with the new
policy's ``set`` values and the ``default`` values of fields the client has
not set itself, rendered as at the start. The session is not held for the
answer: the upstream applies events in order, so every client event relayed
after the update meets the new configuration. The upstream's
``session.updated`` reaches the client like any other (hidden fields
hidden); an ``error`` naming the relay's update ends the session as at the
start (``policy_not_applied``, 1011). Before the session opens, the change
waits for the opening: held client frames are judged by the new policy, and
its update follows the relay's first one. The session's limits stay those it
was admitted with.

**Closing.** The first close, from either side or from the relay, decides the
outcome (:class:`~relay.sansio.commands.Ended`, exactly once) and closes every
leg still open. Every event is accepted in every state, so a late frame or a
duplicate close can never crash a session; they produce no commands.

**Parts.** :class:`RelaySession` dispatches events and keeps the life cycle;
each concern it consults is a small object of its own, holding that concern's
state: :class:`~relay.sansio.initial.Initial` (the initializing hold),
:class:`~relay.sansio.deadlines.Deadlines` (when the session must end),
:class:`~relay.sansio.limits.InboundRate` (how fast the client may send),
:class:`~relay.sansio.notices.Notices` (the relay's own events to the client),
:class:`~relay.sansio.hiding.Hiding` (fields the policy hides),
:class:`~relay.sansio.meter.Meter` (facts for metrics) and
:class:`~relay.sansio.bridge.Bridge` (a bridged client's translation). The relaying of one
message in the open state stays inline here: it is the relay's hot path.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final, assert_never

from relay.sansio.bridge import Bridge, Renamed, preview_param
from relay.sansio.closes import (
    CLIENT_GONE,
    EXPIRED,
    RATE_CUTOFF,
    STALLED,
    Cutoff,
    client_close_for_upstream,
    policy_cutoff,
    truncate_reason,
)
from relay.sansio.commands import (
    Abort,
    Applied,
    Close,
    Command,
    Ended,
    Send,
    SendEdited,
    Wakeup,
)
from relay.sansio.deadlines import Deadlines
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
from relay.sansio.fields import FIELDS, JSON, read
from relay.sansio.hiding import Hiding
from relay.sansio.initial import (
    INIT_EVENT_ID,
    RELOAD_EVENT_ID,
    Confirmed,
    Initial,
    Update,
    answers,
)
from relay.sansio.limits import InboundRate, SessionLimits
from relay.sansio.meter import Meter
from relay.sansio.notices import Notices
from relay.sansio.policy import EMPTY_POLICY, GOVERNED_EVENTS, Forward, Policy, judge
from relay.sansio.wire import (
    InvalidEvent,
    dump,
    parse_event,
    parse_upstream,
    plain_append,
)
from relay.typing import DrainNotice, Family, Side


__all__ = ["INIT_EVENT_ID", "RelaySession", "State"]

APPEND: Final = "input_audio_buffer.append"
NO_LIMITS: Final = SessionLimits()
"""Only Azure's own duration cap applies."""


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
        bridged: bool = False,
    ) -> None:
        if bridged and family != "ga":
            raise ValueError("only a preview client on a GA upstream is bridged")
        self.policy = policy
        self.family: Family = family
        """The upstream's protocol family: the one policy, hiding and metering see."""
        # Life-cycle state; see the module docstring.
        self.state = State.INITIALIZING
        # Whether each leg has been seen closed (by an event, not by our command).
        self.client_closed = False
        self.upstream_closed = False
        # The outcome once decided; None while the session runs.
        self.outcome: str | None = None
        # The concerns; see "Parts" in the module docstring. The rate exists
        # once Started came (None: not started).
        self._init_timeout = init_timeout
        self._initial = Initial(policy.initial_session(family), init_timeout)
        self._deadlines = Deadlines(limits)
        self._rate: InboundRate | None = None
        self._notices = Notices(drain_notice)
        self._hiding = Hiding(policy.hide, family)
        self._meter = Meter(family)
        # The preview client's translator (see relay.sansio.bridge); None
        # when the client speaks the upstream's protocol.
        self._bridge = Bridge() if bridged else None
        # The hot path's own state, read or written on every message:
        # When the client's latest message came (idleness, see Deadlines.next).
        self._last_client = 0.0
        # Whether session.created has reached the client: it must be the first
        # event a client sees, so the relay's own notices wait for it.
        self._greeted = False
        # Whether the policy lets audio appends through (the fast path's question).
        self._appends_allowed = _appends_allowed(policy)
        # A policy reload (see "A new policy" in the module docstring): the
        # fields the client set itself (their defaults are not sent again),
        # whether a change waits for the opening, how many updates the relay
        # sent, and the event_id of the latest (its refusal ends the session).
        self._client_fields: set[str] = set()
        self._switch_pending = False
        self._reloads = 0
        self._reload_id: str | None = None
        self.held_bytes = 0
        """Bytes of client frames held until the policy is in force."""
        self.held_upstream_bytes = 0
        """Bytes of upstream frames held until the policy is in force: a
        flooding upstream is not read while they exceed the buffer bound."""

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
            case PolicyChanged(policy=policy):
                return self._policy_changed(policy) if self._running else []
            case ClientRemoved(deadline=deadline):
                return self._removed(deadline) if self._running else []
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
        return self._cut(RATE_CUTOFF)

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
            self._initial.held_client.append(data)
            self.held_bytes += len(data)
            return []
        return self._from_client(data, now)

    def upstream_message(self, data: str | bytes, now: float) -> list[Command]:
        """``handle(UpstreamMessage(data, now))``, without building the event."""
        state = self.state
        if state is State.OPEN:
            reload_id = self._reload_id
            if (
                reload_id is not None
                and isinstance(data, str)
                and _may_be_error(data)
                and reload_id in data
                and answers(data, reload_id)
            ):
                return self._cut(
                    policy_cutoff("the upstream refused the new session policy")
                )
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
        return self._notices.release()

    @property
    def _running(self) -> bool:
        return self.state in (State.INITIALIZING, State.OPEN)

    # Initialization

    def _start(self, now: float, wall: float | None) -> list[Command]:
        if self.state is not State.INITIALIZING or self._rate is not None:
            return []
        self._deadlines.start(now, wall)
        self._last_client = now
        self._rate = InboundRate(self._deadlines.limits, now)
        if self._initial.session is None:
            self.state = State.OPEN
        else:
            self._initial.start(now)
        return [self._wakeup()]

    def _initializing(self, data: str | bytes, now: float) -> list[Command]:
        step = self._initial.upstream(data)
        if isinstance(step, Update):
            return [*self._expires(step.created, now), step.command]
        if isinstance(step, Confirmed):
            return self._open(step.greeting, now)
        if step == "refused":
            return self._cut(policy_cutoff("the upstream refused the session policy"))
        self.held_upstream_bytes += len(data)
        return []

    def _open(self, greeting: dict[str, JSON], now: float) -> list[Command]:
        self.state = State.OPEN
        self._hiding.hide(greeting)
        commands = [*self._relay_upstream(dump(greeting), now), *self._greet()]
        initial = self._initial
        for data in initial.held_upstream:
            commands.extend(self._relay_upstream(data, now))
        initial.held_upstream.clear()
        self.held_upstream_bytes = 0
        if self._switch_pending:
            # The policy changed while initializing: its update goes before
            # the client frames it judges.
            self._switch_pending = False
            commands.extend(self._policy_update())
        while initial.held_client and self.state is State.OPEN:
            commands.extend(self._from_client(initial.held_client.popleft(), now))
        initial.held_client.clear()
        self.held_bytes = 0
        return commands

    # Limits

    def _wakeup(self) -> Wakeup:
        initial = self._initial.deadline if self.state is State.INITIALIZING else None
        return Wakeup(self._deadlines.next(self._last_client, initial))

    def _expires(self, created: dict[str, JSON], now: float) -> list[Command]:
        """The ``Wakeup`` for a cap the upstream's ``expires_at`` moved (none if it did not)."""
        return [self._wakeup()] if self._deadlines.expires(created, now) else []

    def _tick(self, now: float) -> list[Command]:
        if self.state is State.INITIALIZING and now >= self._initial.deadline:
            return self._cut(
                policy_cutoff("the upstream did not confirm the session policy in time")
            )
        cutoff = self._deadlines.due(now, self._last_client)
        if cutoff is not None:
            return self._cut(cutoff)
        return [self._wakeup()]

    def _over_rate(self, size: int, now: float) -> list[Command] | None:
        assert self._rate is not None, "Started must come first"
        verdict = self._rate.check(size, now)
        if verdict.allowed:
            return None
        if verdict.close:
            return self._cut(RATE_CUTOFF)
        return self._notices.rate_refused(verdict.notify)

    def _draining(self, deadline: float, grace: float) -> list[Command]:
        if not self._deadlines.drain(deadline):
            return []
        notice = self._notices.drain(grace)
        # The client's first event must stay session.created: before it the
        # notice waits.
        sent = [] if notice is None else self._notices.deliver(notice, self._greeted)
        return [*sent, self._wakeup()]

    # A new policy

    def _policy_changed(self, policy: Policy) -> list[Command]:
        self.policy = policy
        self._hiding.change(policy.hide)
        self._appends_allowed = _appends_allowed(policy)
        if self._rate is None:
            # Not started: the session starts as if admitted with it.
            self._initial = Initial(
                policy.initial_session(self.family), self._init_timeout
            )
            return []
        if self.state is State.INITIALIZING:
            self._switch_pending = True
            return []
        return self._policy_update()

    def _policy_update(self) -> list[Command]:
        """The relay's ``session.update`` putting :attr:`policy` in force mid-session."""
        session = self.policy.initial_session(
            self.family, frozenset(self._client_fields)
        )
        if session is None:
            return []
        self._reloads += 1
        self._reload_id = f"{RELOAD_EVENT_ID}_{self._reloads}"
        update = {
            "type": "session.update",
            "event_id": self._reload_id,
            "session": session,
        }
        return [Send("upstream", dump(update))]

    def _client_set_fields(self, event: dict[str, JSON]) -> None:
        """Remember the fields a forwarded ``session.update`` of the client's sets.

        What the policy forces is not the client's choice; the rest is, and
        a later policy's defaults must not overwrite it.
        """
        # judge forwards a session.update only with a session object.
        session: dict[str, JSON] = event["session"]
        forced = self.policy.set
        for name, field in FIELDS.items():
            if name not in forced and read(session, field, self.family, response=False):
                self._client_fields.add(name)

    def _removed(self, deadline: float) -> list[Command]:
        if not self._deadlines.remove(deadline):
            return []
        return [self._wakeup()]

    # Open

    def _relay_upstream(self, data: str | bytes, now: float) -> list[Command]:
        if self._hiding.hidden and isinstance(data, str):
            frame = self._hiding.frame(data)
            # Unreadable, it could hold what the policy hides: not passed on.
            data = self._notices.withheld() if frame is None else frame
        metered = self._meter.upstream_frame(data, now)
        bridge = self._bridge
        if bridge is None:
            return [Send("client", data), *metered]
        # Metered as the upstream said it; shown as the preview client reads it.
        shown = bridge.upstream_frame(data)
        if shown is None:
            return [*metered]
        if isinstance(shown, Renamed):
            assert isinstance(data, str), "only text is renamed"
            return [SendEdited("client", data, shown.head, shown.cut), *metered]
        return [Send("client", shown), *metered]

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
            return self._notices.invalid(
                "binary frames are not supported: send JSON text events", now
            )
        try:
            event = parse_event(data)
        except InvalidEvent as exc:
            return self._notices.invalid(str(exc), now)
        client_event_id = event.get("event_id")
        bridge = self._bridge
        # A bridged client's event is judged as the upstream will read it.
        translated = bridge is not None and bridge.client_event(event)
        verdict = judge(self.policy, self.family, event)
        if not isinstance(verdict, Forward):
            if bridge is not None:
                verdict = dataclasses.replace(
                    verdict, param=preview_param(verdict.param)
                )
            return self._notices.refused(verdict, client_event_id, now)
        logged = self._notices.log_due(now) if verdict.actions else False
        commands: list[Command] = [
            Applied(a.action, a.field, logged) for a in verdict.actions
        ]
        self._hiding.client_set(verdict.client_set)
        if verdict.event["type"] == "session.update":
            self._client_set_fields(verdict.event)
        governed = translated or event["type"] in GOVERNED_EVENTS
        # Governed (or translated) events go upstream exactly as inspected;
        # others as received (the strict parse proved they cannot be read
        # differently).
        commands.append(Send("upstream", dump(verdict.event) if governed else data))
        commands.append(self._meter.client_event(verdict.event, now))
        return commands

    # Ending

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

    def _cut(self, cutoff: Cutoff) -> list[Command]:
        """End the session on the relay's own decision: the client is told why first."""
        code, reason = cutoff.close
        return [
            *self._notices.explain(cutoff),
            *self._fail(cutoff.outcome, code, reason, upstream_code=1000),
        ]

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
        self._initial.clear()
        self.held_bytes = self.held_upstream_bytes = 0
        self._settle()
        return [ended, *closes]

    def _settle(self) -> None:
        if self.client_closed and self.upstream_closed:
            self.state = State.CLOSED


def _appends_allowed(policy: Policy) -> bool:
    """Whether ``policy`` lets audio appends through (the fast path's question)."""
    return (
        policy.events_allow is None or APPEND in policy.events_allow
    ) and APPEND not in policy.events_deny


def _may_be_error(data: str) -> bool:
    """Whether ``data`` could be an ``error`` event: a prefix check for the usual
    form (``type`` first), so that an audio delta is not scanned whole."""
    return data.startswith('{"type":"error"') or not data.startswith('{"type":"')


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
