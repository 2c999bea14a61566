"""RedisBackend against a real redis-server: shared caps, leases, outages."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from relay.exceptions import LimitsUnavailable, QuotaExceeded
from relay.sansio.quotas import QuotaLedger, SessionQuota
from relay.service.limits_redis import (
    SLOTS_FULL_RETRY_AFTER,
    UNAVAILABLE_RETRY_AFTER,
    RedisBackend,
    client_keys,
)
from relay.typing import ClientId
from tests.helpers.redis_server import RedisServer, free_port, running_redis
from tests.helpers.timing import SECOND, within


APP = ClientId("app-a")
PREFIX = "relay:"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(name="redis_server")
async def _redis_server() -> AsyncIterator[RedisServer]:
    async with running_redis() as server:
        yield server


@pytest.fixture(name="inspector")
async def _inspector(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain client to look at the keys the backend writes.

    It redials once, as its pooled connection dies when the server restarts.
    """
    client = Redis.from_url(
        redis_server.url,
        socket_timeout=5 * SECOND,
        socket_connect_timeout=5 * SECOND,
        retry=Retry(NoBackoff(), 1),
    )
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def started(url: str, **options: Any) -> AsyncIterator[RedisBackend]:
    """A started backend ("a replica"), closed on exit."""
    backend = RedisBackend(url, **options)
    try:
        await backend.start()
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """The URL of a TCP server that accepts connections and never answers."""
    connections: set[asyncio.Task[Any]] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await reader.read()  # until the client hangs up
        finally:
            writer.close()
            connections.discard(task)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()
        if connections:
            async with asyncio.timeout(5 * SECOND):
                await asyncio.wait(connections)


def down_url() -> str:
    """A Redis URL where nothing listens: connections are refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, step: float = 0.05
) -> float:
    """Poll ``check`` until it holds; return the seconds it took.

    Bounded in count and time: fails if ``check`` does not hold ``within``.
    """
    started_at = time.monotonic()
    try:
        async with asyncio.timeout(within):
            for _ in range(int(within / step) + 1):
                if await check():
                    return time.monotonic() - started_at
                await asyncio.sleep(step)
    except TimeoutError:
        pass
    raise AssertionError(f"condition not met within {within} s")


async def admitted(
    backend: RedisBackend,
    session_id: str,
    quota: SessionQuota,
    client: ClientId = APP,
) -> bool:
    """Whether ``acquire`` admits the session (False when over a limit)."""
    try:
        await backend.acquire(client, session_id, quota)
    except QuotaExceeded:
        return False
    return True


async def refusal(
    backend: RedisBackend, session_id: str, quota: SessionQuota, client: ClientId = APP
) -> QuotaExceeded:
    """The QuotaExceeded that ``acquire`` must raise."""
    with pytest.raises(QuotaExceeded) as info:
        await backend.acquire(client, session_id, quota)
    return info.value


class TestSharedLimits:
    async def test_cap_holds_across_replicas(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """Two backends on one Redis share one max_sessions cap."""
        quota = SessionQuota(max_sessions=3, sessions_per_minute=100)
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            await a.acquire(APP, "s1", quota)
            await b.acquire(APP, "s2", quota)
            await a.acquire(APP, "s3", quota)
            for backend in (a, b):
                denied = await refusal(backend, "s4", quota)
                assert denied.limit == "max_sessions"
                assert denied.retry_after == SLOTS_FULL_RETRY_AFTER
            slots, _ = client_keys(PREFIX, APP)
            assert set(await inspector.zrange(slots, 0, -1)) == {b"s1", b"s2", b"s3"}
            # Another client has its own cap.
            await b.acquire(ClientId("app-b"), "s1", quota)

    async def test_start_rate_holds_across_replicas(
        self, redis_server: RedisServer
    ) -> None:
        """Starts are counted across replicas; retry_after is when the oldest leaves."""
        quota = SessionQuota(max_sessions=100, sessions_per_minute=3)
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            first = time.monotonic()
            await a.acquire(APP, "s1", quota)
            await b.acquire(APP, "s2", quota)
            await a.acquire(APP, "s3", quota)
            # Releasing frees slots, not starts.
            for session_id in ("s1", "s2", "s3"):
                await a.release(APP, session_id)
            denied = await refusal(b, "s4", quota)
            elapsed = time.monotonic() - first
        assert denied.limit == "sessions_per_minute"
        # Milliseconds on the server's clock: allow one of rounding.
        assert 60.0 - elapsed - 0.002 <= denied.retry_after <= 60.0
        assert denied.headers["Retry-After"] == "60"

    async def test_refused_attempt_counts_nothing(
        self, redis_server: RedisServer
    ) -> None:
        """A refusal takes no slot and counts no start, as QuotaLedger does."""
        quota = SessionQuota(max_sessions=1, sessions_per_minute=2)
        async with started(redis_server.url) as a:
            await a.acquire(APP, "s1", quota)
            assert (await refusal(a, "s2", quota)).limit == "max_sessions"
            await a.release(APP, "s1")
            await a.acquire(APP, "s2", quota)
            await a.release(APP, "s2")
            assert (await refusal(a, "s3", quota)).limit == "sessions_per_minute"

    async def test_release_frees_a_slot_and_is_idempotent(
        self, redis_server: RedisServer
    ) -> None:
        """A released slot can be taken by another replica; releasing twice is harmless."""
        quota = SessionQuota(max_sessions=1, sessions_per_minute=100)
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            await a.acquire(APP, "s1", quota)
            assert a.sessions(APP) == 1
            await refusal(b, "s2", quota)
            await a.release(APP, "s1")
            await a.release(APP, "s1")
            await a.release(ClientId("never-seen"), "nothing")
            assert a.sessions(APP) == 0
            await b.acquire(APP, "s2", quota)

    async def test_keys_expire_when_idle(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """Both keys of a client carry a TTL: the lease for slots, the window for starts."""
        quota = SessionQuota(max_sessions=2, sessions_per_minute=10)
        async with started(redis_server.url, lease_seconds=2.0) as a:
            await a.acquire(APP, "s1", quota)
            slots, starts = client_keys(PREFIX, APP)
            assert 0 < await inspector.pttl(slots) <= 2000
            assert 0 < await inspector.pttl(starts) <= 60_000
            expiry = await inspector.zscore(slots, "s1")
            seconds, micros = await inspector.time()
            now_ms = seconds * 1000 + micros // 1000
            assert expiry is not None
            assert now_ms < expiry <= now_ms + 2000

    async def test_odd_identifiers(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """Client and session ids with spaces, unicode, braces, NUL or great length work."""
        quota = SessionQuota(max_sessions=1, sessions_per_minute=10)
        clients = [
            ClientId("app with spaces ünïcødé 🎧"),
            ClientId("a}b"),
            ClientId("a}c"),  # same hash tag as "a}b", different keys
            ClientId("{x}:slots"),
            ClientId("c" * 5000),
        ]
        session_id = "sess ion\n\x00\u2028🎧" + "é" * 10_000
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            for client in clients:
                await a.acquire(client, session_id, quota)
            for client in clients:
                assert (
                    await refusal(b, "other", quota, client)
                ).limit == "max_sessions"
                slots, _ = client_keys(PREFIX, client)
                assert await inspector.zscore(slots, session_id) is not None
            for client in clients:
                await a.release(client, session_id)
                await b.acquire(client, "other", quota)

    async def test_concurrent_acquires_admit_exactly_the_cap(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """50 concurrent acquires on two replicas against max_sessions=10 admit 10."""
        quota = SessionQuota(max_sessions=10, sessions_per_minute=100)
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            async with asyncio.timeout(10 * SECOND):
                results = await asyncio.gather(
                    *(admitted(a if i % 2 else b, f"s{i}", quota) for i in range(50))
                )
            assert results.count(True) == 10
            assert a.sessions(APP) + b.sessions(APP) == 10
            assert await inspector.zcard(client_keys(PREFIX, APP)[0]) == 10

    async def test_matches_quota_ledger(self, redis_server: RedisServer) -> None:
        """Random acquires and releases on two replicas decide as QuotaLedger does."""
        rng = random.Random(20250501)
        quota = SessionQuota(max_sessions=4, sessions_per_minute=15)
        clients = [ClientId("app-a"), ClientId("app-b")]
        ledger = QuotaLedger()
        live: dict[ClientId, list[tuple[RedisBackend, str]]] = {c: [] for c in clients}
        async with started(redis_server.url) as a, started(redis_server.url) as b:
            for step in range(150):
                client = rng.choice(clients)
                if live[client] and rng.random() < 0.4:
                    backend, session_id = live[client].pop(
                        rng.randrange(len(live[client]))
                    )
                    ledger.release(client, session_id)
                    await backend.release(client, session_id)
                    continue
                backend = rng.choice((a, b))
                session_id = f"s{step}"
                # All of this runs well within one window: time is 0 for the ledger.
                denial = ledger.acquire(client, session_id, quota, 0.0)
                expected = denial.limit if denial is not None else None
                try:
                    await backend.acquire(client, session_id, quota)
                except QuotaExceeded as exc:
                    outcome: str | None = exc.limit
                else:
                    outcome = None
                    live[client].append((backend, session_id))
                assert outcome == expected, step


class TestLeases:
    async def test_unreleased_slots_expire_after_close(
        self, redis_server: RedisServer
    ) -> None:
        """Slots of a backend closed without releasing come back within the lease."""
        lease = 1.0
        quota = SessionQuota(max_sessions=2, sessions_per_minute=100)
        async with started(redis_server.url) as b:
            async with started(redis_server.url, lease_seconds=lease) as a:
                await a.acquire(APP, "s1", quota)
                await a.acquire(APP, "s2", quota)
            # a stopped renewing; its slots still count until their lease ends.
            await refusal(b, "t1", quota)
            took = await eventually(
                lambda: admitted(b, "t1", quota), within=lease + 2 * SECOND
            )
            assert took < within(lease)

    async def test_renewal_keeps_sessions_past_the_lease(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """A live backend keeps its slot for several leases."""
        lease = 0.6
        quota = SessionQuota(max_sessions=1, sessions_per_minute=100)
        slots, _ = client_keys(PREFIX, APP)
        async with (
            started(redis_server.url, lease_seconds=lease) as a,
            started(redis_server.url) as b,
        ):
            await a.acquire(APP, "long", quota)
            first_expiry = await inspector.zscore(slots, "long")
            assert first_expiry is not None

            async def three_leases_later() -> bool:
                # Each look in between also checks the slot is still held.
                assert (await refusal(b, "other", quota)).limit == "max_sessions"
                seconds, micros = await inspector.time()
                return seconds * 1000 + micros // 1000 > first_expiry + 2 * lease * 1000

            await eventually(three_leases_later, within=3 * lease + 3 * SECOND)
            renewed = await inspector.zscore(slots, "long")
            assert renewed is not None
            assert renewed > first_expiry + lease * 1000

    async def test_sigkilled_replica_frees_its_slots(
        self, redis_server: RedisServer, inspector: Redis, tmp_path: Path
    ) -> None:
        """A replica killed with SIGKILL keeps slots while alive, loses them within the lease."""
        lease, count = 1.0, 3
        quota = SessionQuota(max_sessions=count, sessions_per_minute=100)
        script = tmp_path / "replica.py"
        script.write_text(_REPLICA_SCRIPT)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            redis_server.url,
            str(count),
            str(lease),
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        output = b""
        try:
            async with asyncio.timeout(20 * SECOND):
                while b"ready" not in output:
                    line = await process.stdout.readline()
                    assert line, output.decode()
                    output += line
            async with started(redis_server.url) as b:
                # Alive, the child renews: its slots outlast a lease and a half.
                seconds, micros = await inspector.time()
                alive_until = seconds * 1000 + micros // 1000 + 1500 * lease

                async def held_past_the_lease() -> bool:
                    assert (await refusal(b, "t", quota)).limit == "max_sessions"
                    seconds, micros = await inspector.time()
                    return seconds * 1000 + micros // 1000 > alive_until

                await eventually(held_past_the_lease, within=2 * lease + 3 * SECOND)
                killed_at = time.monotonic()
                process.send_signal(signal.SIGKILL)
                async with asyncio.timeout(5 * SECOND):
                    assert await process.wait() == -signal.SIGKILL
                await eventually(
                    lambda: admitted(b, "t", quota), within=lease + 3 * SECOND
                )
                assert time.monotonic() - killed_at < within(lease)
        finally:
            if process.returncode is None:
                process.kill()
            async with asyncio.timeout(5 * SECOND):
                await process.communicate()


_REPLICA_SCRIPT = """
import asyncio
import sys

from relay.service.limits_redis import RedisBackend
from relay.sansio.quotas import SessionQuota
from relay.typing import ClientId


async def main() -> None:
    url, count, lease = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    backend = RedisBackend(url, lease_seconds=lease)
    await backend.start()
    quota = SessionQuota(max_sessions=count, sessions_per_minute=100)
    for i in range(count):
        await backend.acquire(ClientId("app-a"), f"child-{i}", quota)
    print("ready", flush=True)
    await asyncio.sleep(120)  # killed long before


asyncio.run(main())
"""


class TestOutages:
    async def test_start_survives_redis_down(self) -> None:
        """start() does not fail when Redis is down; status says unreachable."""
        async with started(down_url()) as backend:
            assert backend.status().backend == "redis"
            assert not backend.status().reachable
            assert not backend.status().degraded

    async def test_fail_closed_refuses_fast_when_down(self) -> None:
        """Redis refusing connections: LimitsUnavailable within the timeout."""
        timeout = 0.5
        quota = SessionQuota(max_sessions=5, sessions_per_minute=100)
        async with started(down_url(), timeout=timeout) as backend:
            for session_id in ("s1", "s2"):
                began = time.monotonic()
                with pytest.raises(LimitsUnavailable) as info:
                    await backend.acquire(APP, session_id, quota)
                # The margin stays below the timeout: a second wait fails.
                assert time.monotonic() - began < within(timeout, 0.2 * SECOND)
            assert info.value.headers["Retry-After"] == str(
                int(UNAVAILABLE_RETRY_AFTER)
            )
            assert info.value.http_status == 503
            assert backend.sessions(APP) == 0

    async def test_fail_closed_bounds_a_silent_redis(self) -> None:
        """Redis accepting but never answering: acquire and start end within the timeout."""
        timeout = 0.3
        quota = SessionQuota(max_sessions=5, sessions_per_minute=100)
        async with silent_server() as url:
            backend = RedisBackend(url, timeout=timeout)
            try:
                # Each wait on the silent server lasts exactly the timeout, so one
                # wait takes less than 2 * timeout and none less than timeout:
                # the rest is loopback work, far shorter even on a busy machine.
                began = time.monotonic()
                with pytest.raises(LimitsUnavailable):
                    await backend.acquire(APP, "s1", quota)
                assert timeout <= time.monotonic() - began < 2 * timeout
                # Known unreachable: the next acquires do not wait again.
                began = time.monotonic()
                for session_id in ("s2", "s3"):
                    with pytest.raises(LimitsUnavailable):
                        await backend.acquire(APP, session_id, quota)
                assert time.monotonic() - began < timeout
                began = time.monotonic()
                await backend.start()
                assert time.monotonic() - began < 2 * timeout
                assert not backend.status().reachable
            finally:
                await backend.close()

    async def test_fail_open_enforces_limits_per_replica(self) -> None:
        """Failing open admits under per-replica limits and reports degraded."""
        quota = SessionQuota(max_sessions=2, sessions_per_minute=3)
        url = down_url()
        async with (
            started(url, failure_mode="fail_open") as a,
            started(url, failure_mode="fail_open") as b,
        ):
            assert a.status().degraded
            assert not a.status().reachable
            await a.acquire(APP, "a1", quota)
            await a.acquire(APP, "a2", quota)
            assert (await refusal(a, "a3", quota)).limit == "max_sessions"
            # The other replica has limits of its own.
            await b.acquire(APP, "b1", quota)
            await b.acquire(APP, "b2", quota)
            await a.release(APP, "a1")
            await a.acquire(APP, "a3", quota)
            await a.release(APP, "a3")
            assert (await refusal(a, "a4", quota)).limit == "sessions_per_minute"

    async def test_fail_open_with_a_silent_redis(self) -> None:
        """A silent Redis costs at most one timeout per probe interval when failing open."""
        timeout = 0.3
        quota = SessionQuota(max_sessions=10, sessions_per_minute=100)
        async with (
            silent_server() as url,
            started(url, failure_mode="fail_open", timeout=timeout) as backend,
        ):
            began = time.monotonic()
            for i in range(5):
                await backend.acquire(APP, f"s{i}", quota)
            # One wait on the silent server lasts exactly the timeout; a second
            # would make it 2 * timeout at least, however fast the machine.
            assert time.monotonic() - began < 2 * timeout
            assert backend.status().degraded

    async def test_redis_restart_recovers_and_recreates_slots(
        self, redis_server: RedisServer, inspector: Redis
    ) -> None:
        """Redis lost and back empty: live slots are re-created, acquires work again."""
        quota = SessionQuota(max_sessions=3, sessions_per_minute=100)
        slots, _ = client_keys(PREFIX, APP)
        async with (
            started(redis_server.url, lease_seconds=0.9) as a,
            started(redis_server.url, failure_mode="fail_open") as b,
        ):
            await a.acquire(APP, "s1", quota)
            await a.acquire(APP, "s2", quota)
            await inspector.set("marker", "before the restart")
            await redis_server.stop()
            with pytest.raises(LimitsUnavailable):
                await a.acquire(APP, "s3", quota)
            # Failing open, b admits while Redis is away.
            await b.acquire(APP, "d1", quota)
            assert b.status().degraded
            await redis_server.start()
            # Back empty (renewals may already be writing slots again).
            assert await inspector.get("marker") is None

            async def all_slots_back() -> bool:
                members = set(await inspector.zrange(slots, 0, -1))
                return members == {b"s1", b"s2", b"d1"}

            await eventually(all_slots_back, within=5 * SECOND)

            async def recovered() -> bool:
                return a.status().reachable and not b.status().degraded

            await eventually(recovered, within=5 * SECOND)
            # The re-created slots count against the shared cap.
            assert (await refusal(a, "s3", quota)).limit == "max_sessions"
            await b.release(APP, "d1")
            await a.acquire(APP, "s3", quota)

    async def test_first_acquire_after_a_restart_succeeds(
        self, redis_server: RedisServer
    ) -> None:
        """Pooled connections that died with Redis are redialled, not failed on."""
        quota = SessionQuota(max_sessions=100, sessions_per_minute=100)
        async with started(redis_server.url) as backend:
            # Several connections in the pool, all about to go stale.
            async with asyncio.timeout(5 * SECOND):
                await asyncio.gather(
                    *(backend.acquire(APP, f"s{i}", quota) for i in range(5))
                )
            await redis_server.stop()
            await redis_server.start()
            for i in range(5):
                await backend.acquire(APP, f"t{i}", quota)
            assert backend.status().reachable


class TestLifecycle:
    async def test_start_and_close_are_idempotent(
        self, redis_server: RedisServer
    ) -> None:
        """start() and close() may be called twice."""
        backend = RedisBackend(redis_server.url)
        await backend.start()
        await backend.start()
        assert backend.status().reachable
        await backend.close()
        await backend.close()

    def test_rejects_bad_arguments(self) -> None:
        """Bad URLs and durations fail at construction, before any I/O."""
        with pytest.raises(ValueError, match="scheme"):
            RedisBackend("http://127.0.0.1:6379")
        with pytest.raises(ValueError, match="positive"):
            RedisBackend("redis://127.0.0.1:6379", lease_seconds=0)
        with pytest.raises(ValueError, match="braces"):
            RedisBackend("redis://127.0.0.1:6379", key_prefix="{relay}:")

    def test_missing_redis_server_fails_loudly(self, tmp_path: Path) -> None:
        """Without the binary the test helper raises, naming what to install."""
        with pytest.raises(RuntimeError, match="apt-get install redis-server"):
            RedisServer(free_port(), tmp_path, binary=str(tmp_path / "redis-server"))

    async def test_taken_port_fails_with_the_servers_reason(
        self, tmp_path: Path
    ) -> None:
        """A redis-server that cannot bind is reported with its own output."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            server = RedisServer(taken.getsockname()[1], tmp_path)
            with pytest.raises(RuntimeError, match="did not start") as info:
                await server.start()
        assert "Address already in use" in str(info.value)
        assert not server.running

    async def test_logs_never_carry_the_password(self) -> None:
        """The Redis URL's credentials never reach the logs."""
        url = f"redis://user:s3cret-pass@127.0.0.1:{free_port()}/0"
        quota = SessionQuota(max_sessions=5, sessions_per_minute=100)
        with capture_logs() as logs:
            async with started(url, failure_mode="fail_open") as backend:
                await backend.acquire(APP, "s1", quota)
                await backend.release(APP, "s1")
        assert any(entry["event"] == "limits.redis_unreachable" for entry in logs)
        assert "s3cret-pass" not in repr(logs)
