"""Session limits shared by every replica, kept in Redis.

Key layout, per client (``{prefix}`` is ``key_prefix``, the client id sits in
a Redis Cluster hash tag so both keys of a client share one slot):

* ``{prefix}{<client>}:slots`` — sorted set; member: session id, score: lease
  expiry in Redis server milliseconds. Expires with the newest lease.
* ``{prefix}{<client>}:starts`` — sorted set; member: a unique start token,
  score: start time in Redis server milliseconds. Expires with the window.

Times come from ``TIME`` inside the Lua scripts, so replicas whose clocks
disagree still agree on leases and windows. Scripts need Redis 5 or later
(effect replication of scripts that read ``TIME``).

A slot is a lease: the backend renews every slot it holds every third of
``lease_seconds``, so a replica that dies without releasing loses its slots
within ``lease_seconds``. Renewal re-creates missing slots (``ZADD``, not
``ZADD XX``), so a Redis that restarted empty learns the live sessions again.

When Redis cannot answer within ``timeout``:

* ``fail_closed`` — :meth:`RedisBackend.acquire` raises
  :exc:`~relay.exceptions.LimitsUnavailable` (503, short ``Retry-After``).
* ``fail_open`` — sessions are admitted under per-replica limits: at most
  ``max_sessions`` slots held by this replica, and at most
  ``sessions_per_minute`` starts counted by an embedded
  :class:`~relay.service.limits.MemoryBackend` while Redis is unreachable.
  :meth:`RedisBackend.status` reports ``degraded``.

Sessions admitted while degraded are held like any other: once Redis answers,
renewal writes their slots, so the shared cap sees them for as long as they
last (and may refuse new sessions until enough end). Their starts are not
written: the start window is a minute, and back-dating starts would refuse
clients for an outage they did not cause.

While Redis is unreachable, at most one acquire per :data:`PROBE_INTERVAL`
tries it (the others go straight to the failure mode), so a blackholed Redis
adds ``timeout`` to one session start per interval, not to all of them.
The renewal task also probes, so recovery needs no traffic, and runs at once
when another call sees Redis come back.

Known edges, each bounded:

* An acquire whose reply is lost (timeout or cancellation after Redis ran the
  script) leaves a slot nobody renews, gone within ``lease_seconds``; its
  start stays counted.
  A connection error is retried once, which can count a start twice.
* A replica stalled for longer than a lease loses its slots, and its next
  renewal puts them back even if others took them meanwhile: the cap can be
  exceeded until sessions end.
* A release that fails leaves the slot until its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.exceptions import LimitsUnavailable, QuotaExceeded
from relay.sansio.quotas import WINDOW, Denial, SessionQuota
from relay.service.limits import BackendStatus, MemoryBackend
from relay.service.tasks import TaskSet
from relay.typing import ClientId


__all__ = [
    "PROBE_INTERVAL",
    "SLOTS_FULL_RETRY_AFTER",
    "UNAVAILABLE_RETRY_AFTER",
    "RedisBackend",
    "client_keys",
]

T = TypeVar("T")

log = structlog.get_logger("relay.limits")

PROBE_INTERVAL: Final = 1.0
"""While Redis is unreachable, seconds between acquires that try it again."""
UNAVAILABLE_RETRY_AFTER: Final = 2.0
"""``Retry-After`` of :exc:`LimitsUnavailable`: Redis outages are often blips."""
SLOTS_FULL_RETRY_AFTER: Final = 5.0
"""``retry_after`` when all slots are taken (as :class:`QuotaLedger` answers)."""

# Redis errors and socket errors (TimeoutError, from asyncio.timeout too, is an
# OSError): the only exceptions that mean "Redis could not answer".
_UNREACHABLE = (RedisError, OSError)
# Operations of the renewal task itself, which need not wake it.
_RENEWAL: Final = frozenset({"renew", "ping", "renew_release"})

# KEYS[1]: slots, KEYS[2]: starts.
# ARGV: max_sessions, sessions_per_minute, lease ms, window ms, session id.
# Returns {1} when the slot is taken and the start counted; {0, limit} or
# {0, limit, retry ms} when refused, in which case nothing was counted.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return {0, 'max_sessions'}
end
local starts = redis.call('ZCARD', KEYS[2])
if starts >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, 'sessions_per_minute', tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
-- Unique even for two starts in one millisecond: the count differs.
redis.call('ZADD', KEYS[2], now, t[1] .. '.' .. t[2] .. '-' .. starts)
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
redis.call('PEXPIRE', KEYS[2], window)
return {1}
"""

# KEYS[1]: slots. ARGV: lease ms, then the session ids this replica holds.
# Sets each slot's expiry to now + lease, re-creating missing ones; returns how
# many were missing.
_RENEW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local created = 0
for i = 2, #ARGV do
  created = created + redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return created
"""


def client_keys(key_prefix: str, client: str) -> tuple[str, str]:
    """The Redis keys of ``client``: ``(slots, starts)``."""
    return f"{key_prefix}{{{client}}}:slots", f"{key_prefix}{{{client}}}:starts"


class _Unreachable(Exception):
    """A round trip failed; reachability is already recorded and logged."""


class RedisBackend:
    """Implements :class:`relay.service.limits.LimitsBackend` on a shared Redis.

    Call :meth:`start` before the first :meth:`acquire` (it starts lease
    renewal) and :meth:`close` at shutdown. :meth:`close` does not release
    slots: sessions release their own, and any still held expire within
    ``lease_seconds``, as if this replica had died.
    """

    def __init__(
        self,
        url: str,
        *,
        failure_mode: Literal["fail_open", "fail_closed"] = "fail_closed",
        lease_seconds: float = 30.0,
        key_prefix: str = "relay:",
        timeout: float = 1.0,
    ) -> None:
        """Build the client; nothing is connected until the first round trip.

        Raises:
            ValueError: ``url`` is not a ``redis://``, ``rediss://`` or
                ``unix://`` URL, a duration is not positive, or
                ``key_prefix`` holds a brace (it would break the hash tag).
        """
        if failure_mode not in ("fail_open", "fail_closed"):
            raise ValueError("failure_mode must be fail_open or fail_closed")
        if not lease_seconds > 0 or not timeout > 0:
            raise ValueError("lease_seconds and timeout must be positive")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces")
        # One immediate retry on a connection error: after a Redis restart or
        # failover every pooled connection is dead, and without a redial each
        # would fail one session start. redis-py's default (ten retries with
        # back-off) would only run into the timeout.
        # No socket_timeout: every call already runs under asyncio.timeout, and
        # with one redis-py writes through asyncio.wait_for, which on Python
        # 3.11 can swallow a cancellation (a closing backend would never stop).
        self._redis = Redis.from_url(
            url,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        # Where Redis is, for logs: the URL may carry a password.
        self._where = _describe(url)
        self._failure_mode = failure_mode
        # Leases are kept in Redis milliseconds.
        self._lease_ms = max(1, round(lease_seconds * 1000))
        # Three renewals per lease: one lost renewal costs no slot.
        self._renew_interval = lease_seconds / 3
        self._prefix = key_prefix
        # Bound on every round trip, including (re)connecting.
        self._timeout = timeout
        # Scripts are sent by SHA and reloaded when Redis lost them.
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._renew_script = self._redis.register_script(_RENEW)
        # Session ids whose slots this replica holds, to renew and release.
        self._held: dict[ClientId, set[str]] = {}
        # Per-replica limits while failing open.
        self._fallback = MemoryBackend()
        # Outcome of the last round trip; None before the first one.
        self._reachable: bool | None = None
        # While unreachable, acquires before this monotonic time skip Redis.
        self._next_probe = 0.0
        # Owns the renewal task.
        self._tasks = TaskSet()
        self._started = False
        # Set by close(): the renewal loop ends.
        self._closing = False
        # Set to run a renewal pass now rather than at the next interval.
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Probe Redis once (bounded) and start lease renewal; idempotent.

        Never fails because Redis is down: :meth:`status` says so instead.
        """
        if self._started:
            return
        self._started = True
        # A failure is recorded (and logged) by _round_trip; start-up goes on.
        with contextlib.suppress(_Unreachable):
            await self._round_trip("start", self._redis.ping)
        self._tasks.spawn(self._renew_forever(), name="limits-lease-renewal")
        log.info(
            "limits.redis_started",
            redis=self._where,
            failure_mode=self._failure_mode,
            lease_s=self._lease_ms / 1000,
            reachable=self._reachable is True,
        )

    async def acquire(
        self, client: ClientId, session_id: str, quota: SessionQuota
    ) -> None:
        """See :meth:`relay.service.limits.LimitsBackend.acquire`.

        On success the slot is held, and renewed, until :meth:`release`.

        Raises:
            QuotaExceeded: over a limit (shared, or per replica while
                failing open).
            LimitsUnavailable: Redis is unreachable and the backend fails
                closed.
        """
        if self._should_try():
            slots, starts = client_keys(self._prefix, client)
            args = (
                quota.max_sessions,
                quota.sessions_per_minute,
                self._lease_ms,
                round(WINDOW * 1000),
                session_id,
            )

            async def run() -> Denial | None:
                return _denial(
                    await self._acquire_script(keys=[slots, starts], args=args)
                )

            try:
                denial = await self._round_trip("acquire", run)
            except _Unreachable:
                pass
            else:
                if denial is not None:
                    raise QuotaExceeded(
                        f"client over its {denial.limit} limit; retry later",
                        retry_after=denial.retry_after,
                        limit=denial.limit,
                    )
                self._held.setdefault(client, set()).add(session_id)
                return
        if self._failure_mode == "fail_closed":
            raise LimitsUnavailable(
                "session limits are unavailable; retry shortly",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            )
        await self._acquire_locally(client, session_id, quota)

    async def release(self, client: ClientId, session_id: str) -> None:
        """See :meth:`relay.service.limits.LimitsBackend.release`.

        The slot is forgotten locally at once; if Redis cannot remove it, the
        failure is logged and the slot expires within ``lease_seconds``.
        """
        held = self._held.get(client)
        if held is not None:
            held.discard(session_id)
            if not held:
                del self._held[client]
        await self._fallback.release(client, session_id)
        slots, _ = client_keys(self._prefix, client)
        # On failure the slot's lease runs out: nothing renews it any more.
        with contextlib.suppress(_Unreachable):
            await self._round_trip(
                "release", lambda: self._redis.zrem(slots, session_id)
            )

    def status(self) -> BackendStatus:
        """Health for readiness and metrics.

        ``reachable``: the last round trip succeeded (false before the first);
        ``degraded``: failing open right now, so limits hold per replica only.
        """
        reachable = self._reachable is True
        return BackendStatus(
            "redis",
            reachable=reachable,
            degraded=self._failure_mode == "fail_open" and not reachable,
        )

    async def close(self) -> None:
        """Stop renewing and disconnect; idempotent. Held slots expire."""
        # The flag and the wake-up end the renewal loop even if a library
        # swallowed the cancellation; cancelling ends it mid-round-trip.
        self._closing = True
        self._wake.set()
        await self._tasks.cancel_all()
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.aclose()
        except _UNREACHABLE as exc:
            log.debug("limits.redis_close_failed", error=type(exc).__name__)

    def sessions(self, client: ClientId) -> int:
        """Slots ``client`` holds through this replica (as :class:`MemoryBackend`)."""
        return len(self._held.get(client, ()))

    async def _acquire_locally(
        self, client: ClientId, session_id: str, quota: SessionQuota
    ) -> None:
        # Slots count every session this replica holds, however admitted;
        # starts count those admitted while failing open.
        if self.sessions(client) >= quota.max_sessions:
            raise QuotaExceeded(
                "client over its max_sessions limit; retry later",
                retry_after=SLOTS_FULL_RETRY_AFTER,
                limit="max_sessions",
            )
        await self._fallback.acquire(client, session_id, quota)
        self._held.setdefault(client, set()).add(session_id)
        log.debug("limits.admitted_degraded", client=client)

    async def _renew_forever(self) -> None:
        # Runs for the backend's lifetime, until close(); each pass is bounded
        # by the round-trip timeout, each wait by the interval.
        while True:
            # While Redis is unreachable, passes come sooner: they are also
            # what notices it is back when no session starts.
            delay = self._renew_interval
            if self._reachable is not True:
                delay = min(delay, PROBE_INTERVAL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            with contextlib.suppress(_Unreachable):
                await self._renew()

    async def _renew(self) -> None:
        held = {client: sorted(ids) for client, ids in self._held.items()}
        if not held:
            # Nothing to renew: a ping keeps status() current for readiness.
            await self._round_trip("ping", self._redis.ping)
            return

        async def renew_all() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for client, ids in held.items():
                    slots, _ = client_keys(self._prefix, client)
                    await self._renew_script(
                        keys=[slots], args=[self._lease_ms, *ids], client=pipe
                    )
                return await pipe.execute()

        created = sum(await self._round_trip("renew", renew_all))
        if created:
            # Redis lost them (restart, failover) or this replica stalled
            # longer than a lease; either way the sessions are alive.
            log.warning("limits.slots_recreated", count=created)
        # A release that ran during the renewal may have been overtaken by it.
        stale = [
            (client, session_id)
            for client, ids in held.items()
            for session_id in ids
            if session_id not in self._held.get(client, ())
        ]
        if stale:
            await self._remove(stale)

    async def _remove(self, slots: Iterable[tuple[ClientId, str]]) -> None:
        async def remove_all() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for client, session_id in slots:
                    pipe.zrem(client_keys(self._prefix, client)[0], session_id)
                return await pipe.execute()

        await self._round_trip("renew_release", remove_all)

    def _should_try(self) -> bool:
        """Whether an acquire should ask Redis, or go straight to the failure mode."""
        if self._reachable is not False:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_INTERVAL
        return True

    async def _round_trip(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` under ``timeout`` and record whether Redis answered.

        Raises:
            _Unreachable: Redis did not answer (already logged).
        """
        try:
            async with asyncio.timeout(self._timeout):
                result = await call()
        except _UNREACHABLE as exc:
            self._record(operation, exc)
            raise _Unreachable from exc
        self._record(operation, None)
        return result

    def _record(self, operation: str, error: BaseException | None) -> None:
        """Track reachability; log and react to changes, not to every call."""
        was = self._reachable
        self._reachable = error is None
        if error is not None:
            self._next_probe = time.monotonic() + PROBE_INTERVAL
            # Only the error's type is logged: messages may quote connection details.
            if was is not False:
                log.warning(
                    "limits.redis_unreachable",
                    redis=self._where,
                    operation=operation,
                    error=type(error).__name__,
                    failure_mode=self._failure_mode,
                )
            else:
                log.debug(
                    "limits.redis_call_failed",
                    operation=operation,
                    error=type(error).__name__,
                )
        elif was is False:
            log.info("limits.redis_recovered", redis=self._where, operation=operation)
        if was is not None and was != self._reachable and operation not in _RENEWAL:
            # Renew now: on recovery, slots admitted while failing open get
            # written at once; on failure, renewal switches to probing.
            self._wake.set()


def _denial(reply: object) -> Denial | None:
    """Read the acquire script's reply: None when admitted.

    Raises:
        RedisError: the reply is not one the script gives (a proxy in the way?),
            which is handled as Redis not answering.
    """
    match reply:
        case [1]:
            return None
        case [0, b"max_sessions" | "max_sessions"]:
            return Denial("max_sessions", SLOTS_FULL_RETRY_AFTER)
        case [0, b"sessions_per_minute" | "sessions_per_minute", int(retry_ms)]:
            return Denial("sessions_per_minute", retry_ms / 1000)
    raise RedisError("unexpected reply from the acquire script")


def _describe(url: str) -> str:
    """``url`` without credentials or query, safe to log."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
