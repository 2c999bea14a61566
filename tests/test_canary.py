"""Canary secrets: none may appear in logs, metrics, close reasons or error events.

A relay process runs with JSON logs at debug level. Every secret it handles is a
unique canary: the upstream key, client keys (right and wrong, in every place a
client can put one), the organisation's instructions (set by the policy and
hidden), a client's denied instructions, audio bytes and the model's transcript.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.simulator import Simulator
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.processes import RelayProcess, relay_process


def canary(kind: str) -> str:
    return f"canary{kind}{uuid.uuid4().hex}"


UPSTREAM_KEY = canary("upstream")
CLIENT_KEY = canary("client")
WRONG_KEY = canary("wrong")
ORG_INSTRUCTIONS = canary("orgprompt")
CLIENT_INSTRUCTIONS = canary("clientprompt")
# Audio whose base64 is recognisable: bytes chosen to encode to a canary.
AUDIO = base64.b64decode("Q2FuYXJ5QXVkaW8" + "A" * 4781 + "=")
AUDIO_B64 = base64.b64encode(AUDIO).decode()
TRANSCRIPT_MARKER = "This is the Realtime simulator"
SECRETS = (
    UPSTREAM_KEY,
    CLIENT_KEY,
    WRONG_KEY,
    ORG_INSTRUCTIONS,
    CLIENT_INSTRUCTIONS,
    AUDIO_B64[:40],
    TRANSCRIPT_MARKER,
)


def config(upstream: str) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: CANARY_UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}", policy: guarded}}
policies:
  guarded:
    on_violation: refuse
    set: {{instructions: "{ORG_INSTRUCTIONS}"}}
    deny: [instructions]
    hide: [instructions]
log: {{format: json, level: debug}}
"""


def url(relay: RelayProcess, query: str = "") -> str:
    return f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime{query}"


async def test_no_secret_is_observable(tmp_path: Path) -> None:
    """Handshakes in every credential place, a guarded session, refusals, a scrape and a stop: no canary leaks."""
    seen_by_clients: list[str] = []
    async with Simulator.start(api_keys={UPSTREAM_KEY}, audio_speed=None) as simulator:
        path = tmp_path / "relay.yaml"
        path.write_text(config(simulator.url))
        async with relay_process(path, {"CANARY_UPSTREAM_KEY": UPSTREAM_KEY}) as relay:
            # Wrong keys, in every place a client can put one.
            for options in (
                {"key": WRONG_KEY},
                {"key": None, "headers": [("Authorization", f"Bearer {WRONG_KEY}")]},
                {
                    "key": None,
                    "subprotocols": [
                        "realtime",
                        f"openai-insecure-api-key.{WRONG_KEY}",
                    ],
                },
            ):
                with pytest.raises(InvalidStatus) as info:
                    async with connect_relay(url(relay), **options):
                        pass
                seen_by_clients.append((info.value.response.body or b"").decode())
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(url(relay, f"&api-key={WRONG_KEY}"), key=None):
                    pass
            seen_by_clients.append((info.value.response.body or b"").decode())

            # A guarded session, authenticated through the query string.
            async with connect_relay(
                url(relay, f"&api-key={CLIENT_KEY}"), key=None
            ) as ws:
                created = await receive_event(ws)
                assert (
                    created["session"]["instructions"] == ""
                )  # hidden from the client
                await send_event(
                    ws,
                    {
                        "type": "session.update",
                        "event_id": "c1",
                        "session": {
                            "type": "realtime",
                            "instructions": CLIENT_INSTRUCTIONS,
                        },
                    },
                )
                refusal = (await events_until(ws, "error"))[-1]
                seen_by_clients.append(json.dumps(refusal))
                await send_event(ws, append_event(AUDIO))
                await send_event(ws, {"type": "input_audio_buffer.commit"})
                await send_event(ws, {"type": "response.create"})
                events = await events_until(ws, "response.done")
                assert any(TRANSCRIPT_MARKER in json.dumps(event) for event in events)
                seen_by_clients.extend(
                    json.dumps(event) for event in events if event["type"] == "error"
                )

            # The upstream refusing the relay's own key.
            simulator.faults.refuse(401)
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(url(relay), key=CLIENT_KEY):
                    pass
            seen_by_clients.append((info.value.response.body or b"").decode())

            # A session the relay ends itself (close reason to the client).
            simulator.faults.close_mid_response = 1011
            async with connect_relay(url(relay), key=CLIENT_KEY) as ws:
                await receive_event(ws)
                await send_event(ws, {"type": "response.create"})
                with pytest.raises(ConnectionClosed):
                    await events_until(ws, "response.done")
                seen_by_clients.append(ws.close_reason or "")

            async with httpx.AsyncClient() as http:
                exposition = (
                    await http.get(f"http://127.0.0.1:{relay.metrics_port}/metrics")
                ).text
                readiness = (
                    await http.get(f"http://127.0.0.1:{relay.port}/readyz")
                ).text
            relay.process.send_signal(signal.SIGTERM)
            assert await relay.stop() == 0
            logs = b"".join(relay.output).decode()
    assert '"event": "session.end"' in logs or '"event":"session.end"' in logs
    assert "policy.applied" in logs
    # uvicorn did log the query strings, with the keys redacted.
    assert "api-key=REDACTED" in logs
    for where, text in (
        ("logs", logs),
        ("metrics", exposition),
        ("readyz", readiness),
        ("client-visible", "\n".join(seen_by_clients)),
    ):
        for secret in SECRETS:
            assert secret not in text, f"{secret[:24]}... leaked into {where}"
