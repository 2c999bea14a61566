"""Runs one relayed session: the I/O around :class:`relay.sansio.session.RelaySession`.

The driver owns no task per leg and no queue. Each :class:`~relay.ws.leg.Leg`
calls it from its transport's callbacks; each message becomes one event for
the core, whose commands are executed at once, so nothing interleaves with
them. A frame the core passes on unchanged is forwarded as the bytes it
arrived as (only the frames the relay changes or creates are built anew).

Backpressure is end to end: every leg's transport has a high-water mark of
``flow.buffer_bytes``. While either leg is over it, neither leg is read (a
message read from one leg can produce writes to both), so TCP pushes back on
whoever sends too fast. Client frames the core holds while the policy is
being applied count against the same bound.

A leg over its mark whose peer takes nothing for ``flow.stall_timeout`` is
reported to the core as :class:`Stalled`, which ends the session. That time
is counted on the ``responsive`` clock, which stops while the relay's event
loop is blocked (:mod:`relay.service.lag`): a relay that could not run does not blame
its peers for not reading. Any progress of the peer (fewer bytes waiting for
it, in the transport or the kernel) restarts the count, so a slow reader is
not a stalled one (:mod:`relay.sansio.stalls`). A watchdog timer looks once a
second (``min(1, stall_timeout / 2)``), so no timer is armed per frame: a
stall is reported between ``stall_timeout`` and ``stall_timeout`` plus that
period after the peer's last progress, on the responsive clock.

Events caused while another is being handled (a leg that ends because the
driver aborted it) are queued and handled next, never nested.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, assert_never

import structlog

from relay.config import FlowSettings
from relay.sansio.commands import (
    Abort,
    Applied,
    Close,
    Command,
    Ended,
    FirstAudio,
    Metered,
    Send,
    SendEdited,
    TokensUsed,
    Wakeup,
)
from relay.sansio.events import (
    ClientClosed,
    ClientMessage,
    ClientRemoved,
    Draining,
    Event,
    PolicyChanged,
    Stalled,
    Started,
    Tick,
    UpstreamClosed,
    UpstreamMessage,
)
from relay.sansio.meter import SessionCounters
from relay.sansio.policy import Policy
from relay.sansio.session import RelaySession
from relay.sansio.stalls import StallWatch
from relay.typing import Side
from relay.ws.leg import Leg


__all__ = ["Observer", "SessionDriver"]

log = structlog.get_logger("relay.session")


def _loop_time(now: float) -> float:
    return now


_CRASHED = Ended("relay_error", 1011, "internal relay error")


class Observer(Protocol):
    """Where the driver reports facts of a session (metrics, at the edge)."""

    def policy_applied(self, action: str, field: str) -> None: ...

    def stalled(self, side: Side) -> None: ...

    def metered(self, fact: Metered) -> None: ...

    def tokens(self, usage: TokensUsed) -> None: ...

    def first_audio(self, seconds: float) -> None: ...


# An event to handle, with the frame it came in (for unchanged forwarding).
_Queued = tuple[Event, "str | bytes | None", "bytes | None", "Side | None"]


class SessionDriver:
    """Relays between the client's leg and the upstream's leg of one session.

    Args:
        counters: where the session's counts go (one made if not given):
            the endpoint shares it with the session's metrics.
        responsive: maps the loop's time to the stall watchdog's clock, which
            stops while the loop is blocked (:meth:`relay.service.lag.LoopLagProbe.responsive`);
            the loop's own time by default.
    """

    def __init__(
        self,
        client: Leg,
        upstream: Leg,
        session: RelaySession,
        *,
        flow: FlowSettings,
        observer: Observer,
        counters: SessionCounters | None = None,
        responsive: Callable[[float], float] | None = None,
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._flow = flow
        self._observer = observer
        self.session = session
        self.counters = SessionCounters() if counters is None else counters
        """What the session relayed (the observer may read the same object)."""
        self._loop = asyncio.get_running_loop()
        # The outcome, once the core (or a crash) has decided it.
        self.ended: Ended | None = None
        self._ended: asyncio.Future[None] = self._loop.create_future()
        self._queue: deque[_Queued] = deque()
        self._handling = False
        self._held_full = False
        self._upstream_held_full = False
        # The pending Wakeup, if any, and the stall watchdog.
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._responsive = responsive if responsive is not None else _loop_time
        self._stalls: dict[Side, StallWatch] = {
            "client": StallWatch(flow.stall_timeout),
            "upstream": StallWatch(flow.stall_timeout),
        }
        self.close_codes: dict[Side, int | None] = {"client": None, "upstream": None}
        """How each leg ended (code received first, or sent first)."""
        # What the relay decided before the session started (a drain, a
        # reload): fed right after Started, in order; a few at most.
        self._started = False
        self._early: list[Event] = []

    async def run(self) -> Ended:
        """Relay until both legs are closed; return how the session ended."""
        self._feed(Started(self._loop.time(), time.time()))
        self._started = True
        early, self._early = self._early, []
        for event in early:
            self._feed(event)
        self._client.attach(
            self._client_message,
            self._client_closed,
            self._writable_changed,
            self._admit,
            self._skipping,
        )
        self._upstream.attach(
            self._upstream_message, self._upstream_closed, self._writable_changed
        )
        # A leg may have gone over its mark before it was attached.
        self._writable_changed()
        self._arm_watchdog()
        try:
            await self._ended
            # Each leg finishes its closing handshake within close_timeout
            # (then it is dropped); the final bound covers a transport that
            # never reports its end.
            legs = asyncio.gather(self._client.done, self._upstream.done)
            try:
                async with asyncio.timeout(2 * self._flow.close_timeout + 1):
                    await asyncio.shield(legs)
            except TimeoutError:
                log.warning("session.legs_not_closed")
                self._client.abort()
                self._upstream.abort()
        finally:
            for timer in (self._timer, self._watchdog):
                if timer is not None:
                    timer.cancel()
        assert self.ended is not None
        return self.ended

    def writable(self, side: Side) -> bool:
        """Whether ``side``'s leg can take more now (it is under its high-water mark)."""
        return (self._client if side == "client" else self._upstream).writable

    def drain(self, deadline: float, grace_seconds: float) -> None:
        """Tell the client the relay is draining; end the session by ``deadline``.

        Before :meth:`run` has started the session, the request waits for it.
        """
        self._deliver(Draining(deadline, grace_seconds))

    def change_policy(self, policy: Policy) -> None:
        """A reload changed the client's policy: the session switches to it.

        Before :meth:`run` has started the session, the change waits for it.
        """
        self._deliver(PolicyChanged(policy))

    def remove_client(self, deadline: float) -> None:
        """A reload removed the session's client: end the session by ``deadline`` (loop time).

        Before :meth:`run` has started the session, the request waits for it.
        """
        self._deliver(ClientRemoved(deadline))

    def _deliver(self, event: Event) -> None:
        if not self._started:
            self._early.append(event)
            return
        self._feed(event)

    # Leg callbacks

    def _admit(self, size: int, first: bool) -> bool:
        """The client leg's :data:`~relay.ws.frames.Admission`: the core decides at the header.

        A refusal's commands (notices and, past the grace period, the
        closing handshake) are executed at once: admission is asked from
        inside the client leg's read, never while an event is handled.
        """
        refused = self._run(self.session.client_frame, (size, first, self._loop.time()))
        return refused is None

    def _skipping(self) -> None:
        """The client leg skipped bytes of refused messages in its last read."""
        self._run(self.session.client_skipping, (self._loop.time(),))

    def _client_message(self, data: str | bytes, raw: bytes | None, size: int) -> None:
        counters = self.counters
        counters.client_messages += 1
        counters.client_bytes += size
        if self._handling:
            self._queue.append(
                (
                    ClientMessage(data, self._loop.time(), admitted=True),
                    data,
                    raw,
                    "upstream",
                )
            )
            return
        # The hot path: what _feed does, without building the event.
        self._run(
            self.session.client_message,
            (data, self._loop.time(), True),
            data,
            raw,
            "upstream",
        )

    def _upstream_message(
        self, data: str | bytes, raw: bytes | None, size: int
    ) -> None:
        counters = self.counters
        counters.upstream_messages += 1
        counters.upstream_bytes += size
        if self._handling:
            self._queue.append(
                (UpstreamMessage(data, self._loop.time()), data, raw, "client")
            )
            return
        self._run(
            self.session.upstream_message,
            (data, self._loop.time()),
            data,
            raw,
            "client",
        )

    def _client_closed(self, code: int, reason: str) -> None:
        self._closed_with("client", code)
        self._feed(ClientClosed(code, reason))

    def _upstream_closed(self, code: int, reason: str) -> None:
        self._closed_with("upstream", code)
        self._feed(UpstreamClosed(code, reason))

    def _writable_changed(self) -> None:
        # A leg went over its mark or drained: (dis)arm its stall clock. Once
        # per transition, never per frame.
        at: float | None = None
        for side, leg in self._legs():
            watch = self._stalls[side]
            if leg.writable:
                watch.unblocked()
            elif not watch.armed:
                if at is None:
                    at = self._responsive(self._loop.time())
                watch.blocked(at)
        self._update_reading()

    def _update_reading(self) -> None:
        # A message from either leg may cause writes to both: read only while
        # both can take more.
        # Frames held while the policy is applied count against the same
        # bound, each leg its own (pausing the upstream for the client's hold
        # would keep the session.updated the hold waits for from arriving).
        both = self._client.writable and self._upstream.writable
        bound = self._flow.buffer_bytes
        self._held_full = self.session.held_bytes >= bound
        self._upstream_held_full = self.session.held_upstream_bytes >= bound
        self._upstream.set_reading(both and not self._upstream_held_full)
        self._client.set_reading(both and not self._held_full)

    # Events and commands

    def _feed(
        self,
        event: Event,
        data: str | bytes | None = None,
        raw: bytes | None = None,
        raw_to: Side | None = None,
    ) -> None:
        """Handle ``event`` now, or after the event being handled."""
        if self._handling:
            self._queue.append((event, data, raw, raw_to))
            return
        self._run(self.session.handle, (event,), data, raw, raw_to)

    def _run(
        self,
        decide: Callable[..., list[Command] | None],
        args: tuple[Any, ...],
        data: str | bytes | None = None,
        raw: bytes | None = None,
        raw_to: Side | None = None,
    ) -> list[Command] | None:
        """The one way into the core: ``decide(*args)``, its commands executed, then what was queued meanwhile.

        Returns what the core decided (``None``: an admission's yes). A bug
        in the relay, in the core or in executing its commands, must end
        this session cleanly and no other: it is logged, the session is
        closed with 1011, and the answer is ``[]``.
        """
        handling, self._handling = self._handling, True
        try:
            commands = decide(*args)
            if commands is not None:
                self._execute(commands, data, raw, raw_to)
            if not handling:
                self._settle()
        except Exception:
            log.exception("session.crashed")
            self._crash()
            return []
        finally:
            self._handling = handling
        return commands

    def _settle(self) -> None:
        """Handle the events queued meanwhile; adjust reading to the hold."""
        session = self.session
        while self._queue:
            queued = self._queue.popleft()
            self._execute(session.handle(queued[0]), *queued[1:])
        # Writability changes call _update_reading themselves; what remains
        # is a hold of frames filling up or being released.
        bound = self._flow.buffer_bytes
        if (
            self._held_full
            or self._upstream_held_full
            or session.held_bytes >= bound
            or session.held_upstream_bytes >= bound
        ):
            self._update_reading()

    def _crash(self) -> None:
        self._queue.clear()
        for side, leg in self._legs():
            self._closed_with(side, 1011)
            leg.close(1011, "internal relay error")
        if self.ended is None:
            self.ended = _CRASHED
        if not self._ended.done():
            self._ended.set_result(None)

    def _execute(
        self,
        commands: list[Command],
        data: str | bytes | None,
        raw: bytes | None,
        raw_to: Side | None,
    ) -> None:
        for command in commands:
            match command:
                case Send(side=side, data=out):
                    leg = self._client if side == "client" else self._upstream
                    if raw is not None and out is data and side == raw_to:
                        # Unchanged: forward the frame as it arrived.
                        leg.send_raw(raw)
                    elif isinstance(out, str):
                        leg.send_text(out)
                    else:
                        leg.send_binary(out)
                case SendEdited(side=side, text=text, head=head, cut=cut):
                    leg = self._client if side == "client" else self._upstream
                    if raw is not None and text is data and side == raw_to:
                        # The frame as it arrived, its beginning changed: the
                        # rest is copied once, never encoded again.
                        leg.send_edited(raw, head.encode("ascii"), cut)
                    else:
                        leg.send_text(head + text[cut:])
                case Close(side=side, code=code, reason=reason):
                    self._closed_with(side, code)
                    (self._client if side == "client" else self._upstream).close(
                        code, reason
                    )
                case Abort(side=side):
                    self._closed_with(side, 1006)
                    (self._client if side == "client" else self._upstream).abort()
                case Applied(action=action, field=field, logged=logged):
                    self._observer.policy_applied(action, field)
                    if logged:
                        log.info("policy.applied", action=action, field=field)
                case Metered():
                    self._observer.metered(command)
                    if command.audio_seconds:
                        if command.direction == "client_to_upstream":
                            self.counters.audio_in_seconds += command.audio_seconds
                        else:
                            self.counters.audio_out_seconds += command.audio_seconds
                case TokensUsed():
                    self._observer.tokens(command)
                    self.counters.input_tokens += (
                        command.input_text + command.input_audio
                    )
                    self.counters.output_tokens += (
                        command.output_text + command.output_audio
                    )
                case FirstAudio(seconds=seconds):
                    self._observer.first_audio(seconds)
                case Wakeup(at=at):
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = self._loop.call_at(at, self._tick)
                case Ended():
                    if self.ended is None:
                        self.ended = command
                    if not self._ended.done():
                        self._ended.set_result(None)
                case _:  # pragma: no cover - exhaustiveness is checked by mypy
                    assert_never(command)

    def _legs(self) -> tuple[tuple[Side, Leg], tuple[Side, Leg]]:
        return (("client", self._client), ("upstream", self._upstream))

    def _closed_with(self, side: Side, code: int) -> None:
        # The first close on a leg is how it ended: the peer's, or the relay's.
        if self.close_codes[side] is None:
            self.close_codes[side] = code

    def _tick(self) -> None:
        self._timer = None
        self._feed(Tick(self._loop.time()))

    # Stall watchdog

    def _arm_watchdog(self) -> None:
        interval = min(1.0, self._flow.stall_timeout / 2)
        self._watchdog = self._loop.call_later(interval, self._check_stalls)

    def _check_stalls(self) -> None:
        at = self._responsive(self._loop.time())
        for side, leg in self._legs():
            watch = self._stalls[side]
            if watch.armed and watch.look(at, leg.pending_bytes()):
                self._observer.stalled(side)
                log.warning(
                    "session.stalled",
                    side=side,
                    stall_timeout_s=self._flow.stall_timeout,
                )
                self._feed(Stalled(side))
        if self.ended is None:
            self._arm_watchdog()
