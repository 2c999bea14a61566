"""The HTTP control API on the simulator's own port, used out of process."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from relay.simulator import Simulator
from tests.helpers.timing import SECOND
from tests.simulator.helpers import KEY, receive, session


async def get(sim: Simulator, path: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5 * SECOND) as client:
        return await client.get(path, params=params)


async def test_stats_over_http_are_redacted() -> None:
    """GET /_sim/stats: handshakes (credentials redacted) and counters."""
    async with Simulator.start(api_keys={KEY}) as sim:
        async with session(sim) as ws:
            await receive(ws)
        await sim.wait_idle(timeout=5 * SECOND)
        response = await get(sim, "/_sim/stats")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (
        body["connections_opened"],
        body["connections_closed"],
        body["connections_active"],
    ) == (1, 1, 0)
    [handshake] = body["handshakes"]
    assert handshake["status"] == 101
    assert ["api-key", "<redacted>"] in handshake["headers"]
    assert KEY not in response.text


async def test_control_requests_are_not_handshakes() -> None:
    """Control API calls do not show up in the handshake records."""
    async with Simulator.start(api_keys={KEY}) as sim:
        await get(sim, "/_sim/stats")
        await get(sim, "/_sim/faults")
        assert sim.stats.handshakes == []


async def test_faults_over_http() -> None:
    """?set= arms faults for the next handshakes; /reset disarms them."""
    async with Simulator.start(api_keys={KEY}) as sim:
        change = json.dumps(
            {
                "refuse_count": 2,
                "refuse_status": 503,
                "refuse_headers": {"Retry-After": "1"},
            }
        )
        response = await get(sim, "/_sim/faults", set=change)
        assert response.status_code == 200
        assert response.json()["refuse_count"] == 2
        with pytest.raises(InvalidStatus) as refusal:
            async with session(sim):
                pass
        assert refusal.value.response.status_code == 503
        assert (await get(sim, "/_sim/faults")).json()["refuse_count"] == 1
        assert (await get(sim, "/_sim/faults/reset")).json()["refuse_count"] == 0
        async with session(sim) as ws:
            await receive(ws)


async def test_invalid_fault_is_400() -> None:
    """A bad switch value is refused and changes nothing."""
    async with Simulator.start(api_keys={KEY}) as sim:
        response = await get(sim, "/_sim/faults", set='{"close_mid_response": 1006}')
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "InvalidFault"
        assert sim.faults.close_mid_response is None


async def test_stats_reset_over_http() -> None:
    """/_sim/stats/reset forgets the handshakes."""
    async with Simulator.start(api_keys={KEY}) as sim:
        async with session(sim) as ws:
            await receive(ws)
        await sim.wait_idle(timeout=5 * SECOND)
        body = (await get(sim, "/_sim/stats/reset")).json()
        assert (body["handshakes"], body["connections_opened"]) == ([], 0)


async def test_control_api_can_be_disabled() -> None:
    """With control_api=False, /_sim/ paths are ordinary unknown paths (404)."""
    async with Simulator.start(api_keys={KEY}, control_api=False) as sim:
        response = await get(sim, "/_sim/stats")
        assert response.status_code == 404
        assert response.json() == {
            "error": {"code": "404", "message": "Resource not found"}
        }


async def test_plain_http_to_the_realtime_path_needs_an_upgrade() -> None:
    """A non-WebSocket request to the realtime path is answered, not upgraded."""
    async with Simulator.start(api_keys={KEY}) as sim:
        response = await get(
            sim,
            "/openai/realtime",
            **{"api-version": "2025-04-01-preview", "deployment": "d"},
        )
        assert response.status_code == 401  # Credentials are checked first.
        async with httpx.AsyncClient(
            base_url=sim.url, headers={"api-key": KEY}
        ) as client:
            upgraded = await client.get(
                "/openai/realtime",
                params={"api-version": "2025-04-01-preview", "deployment": "d"},
            )
        assert upgraded.status_code == 426
        assert [record.status for record in sim.stats.handshakes] == [401, 426]
