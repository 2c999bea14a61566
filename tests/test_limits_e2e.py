"""Identity restrictions and limits through a real relay: answers before upgrade, closes after."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import structlog
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from relay.config import ClientLimits, ClientSettings, LimitsSettings
from tests.helpers.clients import connect_relay, events_until, receive_event, send_event
from tests.helpers.servers import (
    CLIENT_KEY,
    OTHER_CLIENT_KEY,
    Stack,
    clients_with,
    relay_stack,
)
from tests.helpers.timing import SECOND, within


def limited(**limits: Any) -> tuple[ClientSettings, ...]:
    return clients_with(limits=ClientLimits(**limits))


async def refused(
    url: str, key: str | None = CLIENT_KEY, **options: Any
) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as info:
        async with connect_relay(url, key=key, **options):
            pass
    return info.value


def metric(stack: Stack, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(
        generate_latest(stack.registry).decode()
    ):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels}")


class TestQuotas:
    async def test_concurrency_cap_is_429_before_any_upstream_connection(self) -> None:
        """The third concurrent session of a client capped at two gets 429 with Retry-After."""
        async with relay_stack(clients=limited(max_sessions=2)) as stack:
            async with (
                connect_relay(stack.preview_url()) as one,
                connect_relay(stack.preview_url()) as two,
            ):
                await receive_event(one)
                await receive_event(two)
                error = await refused(stack.preview_url())
                assert error.response.status_code == 429
                assert int(error.response.headers["Retry-After"]) >= 1
                assert (
                    json.loads(error.response.body or b"")["error"]["code"]
                    == "quota_exceeded"
                )
                assert len(stack.simulator.stats.handshakes) == 2
                # Another client is not affected.
                async with connect_relay(
                    stack.preview_url(), key=OTHER_CLIENT_KEY
                ) as other:
                    await receive_event(other)
            await stack.settle()
            # The slots came back.
            async with connect_relay(stack.preview_url()) as three:
                await receive_event(three)
            assert metric(stack, "relay_sessions_total", outcome="rejected_quota") == 1

    async def test_session_starts_per_minute(self) -> None:
        """Over sessions_per_minute, 429 says when the window frees a start."""
        async with relay_stack(clients=limited(sessions_per_minute=2)) as stack:
            for _ in range(2):
                async with connect_relay(stack.preview_url()) as ws:
                    await receive_event(ws)
            error = await refused(stack.preview_url())
            assert error.response.status_code == 429
            assert 55 <= int(error.response.headers["Retry-After"]) <= 60

    async def test_replica_cap_is_503(self) -> None:
        """This replica at limits.max_sessions: 503 with Retry-After, for every client."""
        async with relay_stack(limits=LimitsSettings(max_sessions=1)) as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                error = await refused(stack.preview_url(), key=OTHER_CLIENT_KEY)
                assert error.response.status_code == 503
                assert error.response.headers["Retry-After"] == "5"
            await stack.settle()
            async with connect_relay(stack.preview_url(), key=OTHER_CLIENT_KEY) as ws:
                await receive_event(ws)


class TestRestrictions:
    async def test_origin_not_listed_is_403(self) -> None:
        """A browser Origin is refused unless listed; server-to-server callers send none."""
        clients = clients_with(allowed_origins=frozenset({"https://app.example.com"}))
        async with relay_stack(clients=clients) as stack:
            error = await refused(
                stack.preview_url(), origin="https://evil.example.com"
            )
            assert error.response.status_code == 403
            async with connect_relay(
                stack.preview_url(), origin="https://app.example.com"
            ) as ws:
                await receive_event(ws)
            assert metric(stack, "relay_auth_failures_total", reason="origin") == 1
            assert len(stack.simulator.stats.handshakes) == 1

    async def test_query_auth_can_be_disabled(self) -> None:
        """allow_query_auth: false turns the query-string key into a 401."""
        async with relay_stack(clients=clients_with(allow_query_auth=False)) as stack:
            error = await refused(
                stack.preview_url() + f"&api-key={CLIENT_KEY}", key=None
            )
            assert error.response.status_code == 401
            assert (
                metric(stack, "relay_auth_failures_total", reason="query_auth_disabled")
                == 1
            )

    async def test_deployment_not_allowed_is_403(self) -> None:
        """A client limited to some deployments is refused the others."""
        async with relay_stack(
            clients=clients_with(deployments=frozenset({"gpt-realtime"}))
        ) as stack:
            assert (await refused(stack.preview_url())).response.status_code == 403
            async with connect_relay(stack.ga_url()) as ws:
                await receive_event(ws)

    async def test_oversized_headers_get_431(self) -> None:
        """A 100 KB header is answered (uvicorn alone left such a handshake hanging)."""
        async with relay_stack() as stack:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", stack.relay.port
            )
            writer.write(
                b"GET /openai/realtime HTTP/1.1\r\nHost: x\r\nX-Big: "
                + b"a" * 100_000
                + b"\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            async with asyncio.timeout(5 * SECOND):
                answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 431 ")
            assert stack.simulator.stats.handshakes == []

    async def test_handshake_timeout_is_504(self) -> None:
        """Nothing between upgrade and accept may take longer than limits.handshake_timeout."""
        limits = LimitsSettings(handshake_timeout=1.0)
        async with relay_stack(limits=limits, connect_timeout=30) as stack:
            stack.simulator.faults.handshake_delay = 5
            started = time.monotonic()
            error = await refused(stack.preview_url())
            assert error.response.status_code == 504
            took = time.monotonic() - started
            budget = limits.handshake_timeout
            assert budget <= took < within(budget, 2 * SECOND)
            stack.simulator.faults.handshake_delay = 0
            await stack.settle()


class TestSessionLimits:
    async def test_max_session_seconds(self) -> None:
        """The relay explains, then closes with 4000, and the upstream leg is closed."""
        limits = ClientLimits(max_session_seconds=1.0)
        async with relay_stack(clients=clients_with(limits=limits)) as stack:
            # Read before connecting: the session's clock starts after it.
            started = time.monotonic()
            async with connect_relay(stack.preview_url()) as ws:
                error = (await events_until(ws, "error", within=5 * SECOND))[-1]
                assert error["error"]["code"] == "session_duration_limit_reached"
                async with asyncio.timeout(within(stack.settings.flow.close_timeout)):
                    await ws.wait_closed()
                assert ws.close_code == 4000
                took = time.monotonic() - started
                promised = limits.max_session_seconds
                assert promised <= took < within(promised, 2 * SECOND)
            await stack.settle()
            assert metric(stack, "relay_sessions_total", outcome="max_duration") == 1

    async def test_idle_timeout(self) -> None:
        """No client event for idle_seconds: error event, close 4001; activity keeps it open."""
        limits = ClientLimits(idle_seconds=1.0)
        async with relay_stack(clients=clients_with(limits=limits)) as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                for _ in range(3):  # 1.5 idle periods in all: kept open by activity
                    sent = time.monotonic()
                    await send_event(ws, {"type": "input_audio_buffer.clear"})
                    await events_until(ws, "input_audio_buffer.cleared")
                    # Real idle time is what is under test.
                    await asyncio.sleep(limits.idle_seconds / 2)
                error = (await events_until(ws, "error", within=5 * SECOND))[-1]
                assert error["error"]["code"] == "idle_timeout"
                # The last event reached the relay after it was sent: not before.
                idle = time.monotonic() - sent
                assert limits.idle_seconds <= idle < within(limits.idle_seconds)
                async with asyncio.timeout(within(stack.settings.flow.close_timeout)):
                    await ws.wait_closed()
                assert ws.close_code == 4001
            await stack.settle()

    async def test_inbound_rate_limit(self) -> None:
        """Over messages_per_second, frames are dropped and the client is told; the session survives a short burst."""
        limits = ClientLimits(messages_per_second=5)
        rate = limits.messages_per_second
        async with relay_stack(clients=clients_with(limits=limits)) as stack:
            # Read before the session exists: its bucket starts full with a
            # 2 s burst (README) and refills at the rate from then on.
            started = time.monotonic()
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                for _ in range(30):
                    await send_event(ws, {"type": "input_audio_buffer.clear"})
                events = await events_until(ws, "error")
                assert events[-1]["error"]["code"] == "rate_limit_exceeded"
            # The client's close follows its 30 events: once the session is
            # over, the relay has handled every one, and the simulator has seen
            # every one forwarded.
            await stack.settle()
            elapsed = time.monotonic() - started
            forwarded = stack.simulator.stats.events_of_type("input_audio_buffer.clear")
            refused = metric(
                stack, "relay_policy_actions_total", action="refuse", field="rate_limit"
            )
        assert len(forwarded) + refused == 30
        # The burst and what was refilled meanwhile, however slow the machine
        # (a fixed count assumed the 30 events were sent within one refill):
        # not one more.
        assert len(forwarded) <= 2 * rate + rate * elapsed


async def test_the_end_line_and_the_metrics_count_the_same() -> None:
    """One count per session feeds both: totals in session.end equal the series, scraped mid-session too."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with relay_stack() as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                audio = "AAAA" * 2400  # 7,200 bytes: 0.15 s of PCM16 24 kHz
                for _ in range(3):
                    await send_event(
                        ws, {"type": "input_audio_buffer.append", "audio": audio}
                    )
                await send_event(ws, {"type": "input_audio_buffer.clear"})
                await events_until(ws, "input_audio_buffer.cleared")
                # A scrape in the middle flushes what was counted so far.
                middle = metric(
                    stack, "relay_messages_total", direction="client_to_upstream"
                )
                assert middle == 4
                await send_event(ws, {"type": "input_audio_buffer.clear"})
                await events_until(ws, "input_audio_buffer.cleared")
            await stack.settle()
    end = next(line for line in logs if line["event"] == "session.end")
    assert end["client_messages"] == 5
    for direction, messages, size in (
        ("client_to_upstream", "client_messages", "client_bytes"),
        ("upstream_to_client", "upstream_messages", "upstream_bytes"),
    ):
        assert (
            metric(stack, "relay_messages_total", direction=direction) == end[messages]
        )
        assert (
            metric(stack, "relay_message_bytes_total", direction=direction) == end[size]
        )
    assert end["audio_in_s"] == pytest.approx(0.45)
    assert metric(
        stack, "relay_audio_seconds_total", client="app-a", direction="input"
    ) == pytest.approx(end["audio_in_s"])


async def test_audit_trail() -> None:
    """One line at session start and one at the end carry who, what, how long and how much."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with relay_stack() as stack:
            async with connect_relay(stack.preview_url()) as ws:
                await receive_event(ws)
                await send_event(ws, {"type": "input_audio_buffer.clear"})
                await events_until(ws, "input_audio_buffer.cleared")
            await stack.settle()
    start = next(line for line in logs if line["event"] == "session.start")
    end = next(line for line in logs if line["event"] == "session.end")
    for line in (start, end):
        assert line["client_id"] == "app-a"
        assert line["auth"] == "api-key-header"
        assert line["deployment"] == "gpt-4o-realtime-preview"
        assert line["policy"] == "default"
        assert line["session_id"].startswith("rs_")
    assert end["close_code"] == 1000
    assert end["close_reason"] == "client closed"
    assert end["client_messages"] == 1
    assert end["upstream_messages"] >= 2  # session.created, input_audio_buffer.cleared
    assert end["duration_s"] >= 0
    assert CLIENT_KEY not in json.dumps(logs, default=str)
