"""What the relay itself tells the client of one session.

The relay's own events (``error`` events, the drain notice) are numbered
``event_relay_1``, ``event_relay_2``... in the order they are built. Each
policy action is counted (``Applied``), but logged at most once a second
(:meth:`Notices.log_due`). A notice decided before the client has seen
``session.created`` waits for it (:meth:`Notices.deliver`, :meth:`Notices.release`):
that must be the first event a client sees.
"""

from __future__ import annotations

from relay.sansio.closes import Cutoff
from relay.sansio.commands import Applied, Command, Send
from relay.sansio.fields import JSON
from relay.sansio.policy import Refuse
from relay.sansio.wire import dump, error_event
from relay.typing import DrainNotice


__all__ = ["Notices"]


class Notices:
    """The relay's own events for one session's client.

    Args:
        drain_notice: how a drain is announced (``event``: a
            ``relay.draining`` event; ``error``: an ``error`` event; ``none``).
    """

    __slots__ = ("_count", "_drain_notice", "_logged_at", "_waiting")

    def __init__(self, drain_notice: DrainNotice) -> None:
        self._drain_notice: DrainNotice = drain_notice
        # The relay's events so far: the number in the next one's event_id.
        self._count = 0
        # When a policy action was last logged (see log_due).
        self._logged_at = float("-inf")
        # Notices waiting for session.created to reach the client.
        self._waiting: list[str] = []

    def event_id(self) -> str:
        """The ``event_id`` of the relay's next own event."""
        self._count += 1
        return f"event_relay_{self._count}"

    def error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        client_event_id: JSON = None,
        error_type: str = "invalid_request_error",
    ) -> str:
        """An ``error`` event of the relay's, in the shape Azure uses."""
        return error_event(
            self.event_id(),
            code=code,
            message=message,
            param=param,
            client_event_id=client_event_id,
            error_type=error_type,
        )

    def log_due(self, now: float) -> bool:
        """Whether a policy action at ``now`` is worth a log line: one a second.

        Every action is counted (``Applied``); a client repeating one hundreds
        of times a second would otherwise make the relay spend more on log
        lines than on relaying (a log line costs more than the event).
        """
        if now - self._logged_at < 1.0:
            return False
        self._logged_at = now
        return True

    # Answers to the client's events

    def invalid(self, message: str, now: float) -> list[Command]:
        """A client message that is not a JSON event the relay can read: refused, and why."""
        notice = self.error("invalid_event", message)
        return [Applied("refuse", "message", self.log_due(now)), Send("client", notice)]

    def refused(
        self, verdict: Refuse, client_event_id: JSON, now: float
    ) -> list[Command]:
        """An event the policy refused: its actions, then the client's ``error`` event."""
        logged = self.log_due(now)
        commands: list[Command] = [
            Applied(a.action, a.field, logged) for a in verdict.actions
        ]
        commands.append(
            Send(
                "client",
                self.error(
                    verdict.code,
                    verdict.message,
                    param=verdict.param,
                    client_event_id=client_event_id,
                ),
            )
        )
        return commands

    def rate_refused(self, notify: bool) -> list[Command]:
        """A message over the inbound rate, dropped; the client is told if ``notify``."""
        commands: list[Command] = [Applied("refuse", "rate_limit", logged=notify)]
        if notify:
            commands.append(
                Send(
                    "client",
                    self.error(
                        "rate_limit_exceeded",
                        "inbound rate limit exceeded: messages are being dropped; slow down",
                    ),
                )
            )
        return commands

    # The relay's own news

    def withheld(self) -> str:
        """What the client gets instead of an upstream event that may hide fields but cannot be read."""
        return self.error(
            "upstream_event_withheld",
            "an upstream event could not be read and was withheld",
            error_type="server_error",
        )

    def explain(self, cutoff: Cutoff) -> list[Command]:
        """The ``error`` event that comes before the relay's close, if the cutoff has one."""
        if cutoff.code is None:
            return []
        notice = self.error(cutoff.code, cutoff.message, error_type=cutoff.error_type)
        return [Send("client", notice)]

    def drain(self, grace: float) -> str | None:
        """The notice that the relay drains, leaving ``grace`` seconds (``None``: not announced)."""
        if self._drain_notice == "none":
            return None
        if self._drain_notice == "error":
            # Every client parses error events; Azure announces its own
            # session end (session_expired) the same way.
            return self.error(
                "relay_draining",
                f"this relay is restarting: finish within {round(grace)} s, then reconnect",
                error_type="server_error",
            )
        return dump(
            {
                "type": "relay.draining",
                "event_id": self.event_id(),
                "grace_ms": round(grace * 1000),
            }
        )

    # Waiting for the greeting

    def deliver(self, notice: str, greeted: bool) -> list[Command]:
        """Send ``notice`` now if the client was ``greeted``, else keep it for :meth:`release`."""
        if greeted:
            return [Send("client", notice)]
        self._waiting.append(notice)
        return []

    def release(self) -> list[Command]:
        """session.created has just been sent: the notices that waited for it."""
        notices: list[Command] = [Send("client", notice) for notice in self._waiting]
        self._waiting.clear()
        return notices
