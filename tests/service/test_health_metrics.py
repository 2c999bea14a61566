"""Health endpoints and the separate metrics listener."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.servers import Stack, relay_stack


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"http://127.0.0.1:{stack.relay.metrics_port}/metrics"
        )
    assert response.status_code == 200
    return samples(response.text)


async def test_livez_and_readyz() -> None:
    """Both answer 200 with JSON once the relay is serving."""
    async with relay_stack() as stack, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{stack.relay.port}"
        live = await http.get(f"{base}/livez")
        ready = await http.get(f"{base}/readyz")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "config": {"generation": 1},
        "checks": {
            "started": True,
            "limits": {"backend": "memory", "reachable": True, "degraded": False},
            "credentials": [
                {
                    "upstream": name,
                    "kind": "api_key",
                    "ok": True,
                    "expires_in_s": None,
                    "last_error": None,
                }
                for name in (
                    "gpt-4o-realtime-preview/0",
                    "gpt-4o-realtime-legacy/0",
                    "gpt-realtime/0",
                )
            ],
            "draining": False,
        },
    }


async def test_metrics_live_on_their_own_port_only() -> None:
    """/metrics is not served on the WebSocket port, and the metrics port serves nothing else."""
    async with relay_stack() as stack, httpx.AsyncClient() as http:
        assert (
            await http.get(f"http://127.0.0.1:{stack.relay.port}/metrics")
        ).status_code == 404
        assert (
            await http.get(f"http://127.0.0.1:{stack.relay.metrics_port}/livez")
        ).status_code == 404
        assert (
            await http.get(f"http://127.0.0.1:{stack.relay.metrics_port}/metrics")
        ).status_code == 200


async def test_session_metrics_move() -> None:
    """Sessions, outcomes, messages and bytes are counted per direction."""
    async with relay_stack() as stack:
        before = await scrape(stack)
        assert before[("relay_sessions_total", (("outcome", "client_closed"),))] == 0
        assert before[("relay_sessions_active", ())] == 0
        async with connect_relay(stack.preview_url()) as ws:
            await receive_event(ws)
            during = await scrape(stack)
            assert during[("relay_sessions_active", ())] == 1
            await ws.send('{"type":"input_audio_buffer.clear"}')
            await receive_event(ws)
        await stack.settle()
        with pytest.raises(InvalidStatus):
            async with connect_relay(stack.preview_url(), key="wrong"):
                pass
        after = await scrape(stack)
    assert after[("relay_sessions_total", (("outcome", "rejected_auth"),))] == 1
    assert after[("relay_sessions_active", ())] == 0
    assert after[("relay_sessions_total", (("outcome", "client_closed"),))] == 1
    assert after[("relay_messages_total", (("direction", "client_to_upstream"),))] == 1
    assert after[
        ("relay_message_bytes_total", (("direction", "client_to_upstream"),))
    ] == len('{"type":"input_audio_buffer.clear"}')
    assert after[("relay_messages_total", (("direction", "upstream_to_client"),))] >= 2
    upstream = ("upstream", "gpt-4o-realtime-preview/0")
    assert after[("relay_upstream_connect_total", (("result", "ok"), upstream))] == 1
    assert after[("relay_upstream_breaker_state", (upstream,))] == 0
    assert after[("relay_handshake_duration_seconds_count", ())] == 1
    assert after[("relay_session_duration_seconds_count", ())] == 1
