"""What a new configuration changes while serving, and what it may not change.

:func:`plan_reload` compares the generation being served with a new, already
validated one and decides, without doing anything: :mod:`relay.service.reload`
reads the file, parses it with the same parser as at start-up, and applies a
plan only when nothing in it is refused.

A key is *fixed* when the running process built something from it that cannot
be rebuilt without disturbing live sessions or the listeners: the sockets
(``listen``, ``metrics``), the HTTP and WebSocket protocols uvicorn was set up
with (``limits.max_message_bytes``, ``limits.header_timeout``,
``flow.ping_*``, ``flow.close_timeout``), the limits backend (its kind, URL
and failure behaviour), the drain (its grace must not move under a drain in
progress) and the log format (one process writes one format). Changing one of
them is refused as a whole: nothing changes, and the message names the key.
Everything else applies to handshakes from the swap on; a live session keeps
the client, policy and limits it was admitted with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from relay.sansio.settings import Settings


__all__ = ["FIXED_KEYS", "ReloadPlan", "plan_reload"]


@dataclass(frozen=True, slots=True)
class _Key:
    path: str
    read: Callable[[Settings], object]
    why: str
    """Why the key needs a restart, for the refusal message."""
    secret: bool = False
    """Its values are never quoted (a Redis URL may hold a password)."""


_BOUND: Final = "the listener is bound at start-up"
_UVICORN: Final = "the server's protocols are set up at start-up"
_BACKEND: Final = "the limits backend is built at start-up"

FIXED: Final[tuple[_Key, ...]] = (
    _Key("listen.host", lambda s: s.listen.host, _BOUND),
    _Key("listen.port", lambda s: s.listen.port, _BOUND),
    _Key(
        "listen.tls",
        lambda s: s.listen.tls,
        "the TLS listener is set up at start-up (the certificate files "
        "themselves are reloaded every listen.tls.reload_interval)",
        secret=True,
    ),
    _Key("metrics.host", lambda s: s.metrics.host, _BOUND),
    _Key("metrics.port", lambda s: s.metrics.port, _BOUND),
    _Key("limits.max_message_bytes", lambda s: s.limits.max_message_bytes, _UVICORN),
    _Key("limits.header_timeout", lambda s: s.limits.header_timeout, _UVICORN),
    _Key("limits.backend", lambda s: s.limits.backend, _BACKEND),
    _Key("limits.redis_url", lambda s: s.limits.redis_url, _BACKEND, secret=True),
    _Key("limits.failure_mode", lambda s: s.limits.failure_mode, _BACKEND),
    _Key("limits.lease_seconds", lambda s: s.limits.lease_seconds, _BACKEND),
    _Key("flow.ping_interval", lambda s: s.flow.ping_interval, _UVICORN),
    _Key("flow.ping_timeout", lambda s: s.flow.ping_timeout, _UVICORN),
    _Key("flow.close_timeout", lambda s: s.flow.close_timeout, _UVICORN),
    _Key(
        "drain.grace_seconds",
        lambda s: s.drain.grace_seconds,
        "a drain in progress keeps the deadline it announced",
    ),
    _Key(
        "drain.propagation_delay",
        lambda s: s.drain.propagation_delay,
        "a drain in progress keeps the deadline it announced",
    ),
    _Key(
        "log.format",
        lambda s: s.log.format,
        "one process writes one log format (log.level does reload)",
    ),
)

FIXED_KEYS: Final = tuple(key.path for key in FIXED)
"""Every key a reload refuses to change, in the order they are checked."""

# What applies to new handshakes from the swap on, in the order reported.
_RELOADABLE: Final[tuple[tuple[str, Callable[[Settings], object]], ...]] = (
    ("upstream", lambda s: s.upstream),
    ("deployments", lambda s: dict(s.deployments)),
    ("clients", lambda s: s.clients),
    ("auth.jwt", lambda s: s.jwt),
    ("failover", lambda s: s.failover),
    ("limits.max_sessions", lambda s: s.limits.max_sessions),
    ("limits.policy_timeout", lambda s: s.limits.policy_timeout),
    ("limits.handshake_timeout", lambda s: s.limits.handshake_timeout),
    ("flow.buffer_bytes", lambda s: s.flow.buffer_bytes),
    ("flow.stall_timeout", lambda s: s.flow.stall_timeout),
    ("log.level", lambda s: s.log.level),
    ("reload.policy_reload", lambda s: s.reload.policy_reload),
    (
        "reload.removed_client_grace_seconds",
        lambda s: s.reload.removed_client_grace_seconds,
    ),
)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The verdict on a new configuration.

    Apply it only when :attr:`refused` is empty; with :attr:`unchanged` there
    is nothing to apply (the file changed, the configuration did not).
    """

    changed: tuple[str, ...] = ()
    """Key paths whose values change (``clients`` covers keys, policies and limits)."""
    refused: tuple[str, ...] = ()
    """One message per fixed key that would change, naming it and why."""
    clients_added: tuple[str, ...] = ()
    clients_removed: tuple[str, ...] = ()
    clients_changed: tuple[str, ...] = ()
    """Clients whose keys, policy, limits or other settings change."""
    deployments_added: tuple[str, ...] = ()
    deployments_removed: tuple[str, ...] = ()

    @property
    def unchanged(self) -> bool:
        """Nothing differs: not a reload."""
        return not self.changed and not self.refused


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Compare the served ``old`` with the validated ``new``; see :class:`ReloadPlan`."""
    refused = tuple(
        _refusal(key, key.read(old), key.read(new))
        for key in FIXED
        if key.read(old) != key.read(new)
    )
    changed = tuple(path for path, read in _RELOADABLE if read(old) != read(new))
    old_clients = {client.id: client for client in old.clients}
    new_clients = {client.id: client for client in new.clients}
    return ReloadPlan(
        changed=changed,
        refused=refused,
        clients_added=tuple(sorted(new_clients.keys() - old_clients.keys())),
        clients_removed=tuple(sorted(old_clients.keys() - new_clients.keys())),
        clients_changed=tuple(
            sorted(
                client_id
                for client_id in old_clients.keys() & new_clients.keys()
                if old_clients[client_id] != new_clients[client_id]
            )
        ),
        deployments_added=tuple(
            sorted(new.deployments.keys() - old.deployments.keys())
        ),
        deployments_removed=tuple(
            sorted(old.deployments.keys() - new.deployments.keys())
        ),
    )


def _refusal(key: _Key, old: object, new: object) -> str:
    values = "" if key.secret else f" ({old!r} -> {new!r})"
    return f"{key.path}: cannot change without a restart{values}: {key.why}"
