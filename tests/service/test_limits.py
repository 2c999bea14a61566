"""The in-process limits backend and the gate's replica accounting."""

from __future__ import annotations

import pytest

from relay.config import LimitsSettings
from relay.exceptions import Overloaded, QuotaExceeded
from relay.sansio.handshake import HandshakeRequest
from relay.sansio.quotas import SessionQuota
from relay.service.gate import Gate
from relay.service.limits import BackendStatus, MemoryBackend
from relay.typing import ClientId
from tests.helpers.servers import CLIENT_KEY, make_settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_memory_backend_enforces_the_quota() -> None:
    """Slots and starts are counted per client; refusals carry the limit and a retry time."""
    clock = Clock()
    backend = MemoryBackend(clock)
    await backend.start()
    quota = SessionQuota(max_sessions=1, sessions_per_minute=2)
    await backend.acquire(ClientId("a"), "s1", quota)
    with pytest.raises(QuotaExceeded) as info:
        await backend.acquire(ClientId("a"), "s2", quota)
    assert (info.value.limit, info.value.headers["Retry-After"]) == (
        "max_sessions",
        "5",
    )
    await backend.release(ClientId("a"), "s1")
    await backend.release(ClientId("a"), "s1")
    await backend.acquire(ClientId("a"), "s2", quota)
    await backend.release(ClientId("a"), "s2")
    clock.now = 10.0
    with pytest.raises(QuotaExceeded) as info:
        await backend.acquire(ClientId("a"), "s3", quota)
    assert (info.value.limit, info.value.headers["Retry-After"]) == (
        "sessions_per_minute",
        "50",
    )
    assert backend.sessions(ClientId("a")) == 0
    assert backend.status() == BackendStatus("memory", reachable=True)
    await backend.close()


async def test_gate_counts_replica_places_and_gives_them_back() -> None:
    """A refused quota gives the replica place back; release frees both."""
    settings = make_settings(
        "http://127.0.0.1:1", limits=LimitsSettings(max_sessions=2)
    )
    gate = Gate(settings, limits=MemoryBackend(), verifier=None)
    request = HandshakeRequest(
        path="/openai/v1/realtime",
        query=b"model=gpt-realtime",
        headers=[("api-key", CLIENT_KEY)],
        subprotocols=[],
    )
    admission = await gate.admit(request)
    first = await gate.reserve(admission, "s1")
    second = await gate.reserve(admission, "s2")
    with pytest.raises(Overloaded):
        await gate.reserve(admission, "s3")
    assert gate.reserved == 2
    await gate.release(first)
    await gate.release(second)
    assert gate.reserved == 0
