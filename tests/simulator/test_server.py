"""The simulator over real sockets on 127.0.0.1: handshakes, sessions, stats, shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.simulator import Simulator, speech_like_pcm16
from relay.simulator.wire import Family
from tests.helpers.timing import SECOND, within
from tests.simulator.helpers import (
    KEY,
    TOKEN,
    b64,
    receive,
    receive_until,
    session,
    ws_url,
)


PREVIEW_PATH = "/openai/realtime"
GA_PATH = "/openai/v1/realtime"
PREVIEW_QUERY = "api-version=2025-04-01-preview&deployment=dep"


async def refused(url: str, headers: dict[str, str] | None = None) -> InvalidStatus:
    """Connect, expecting the handshake to be refused; return the refusal."""
    with pytest.raises(InvalidStatus) as refusal:
        async with connect(
            url, additional_headers=headers or {}, open_timeout=5 * SECOND
        ):
            pass
    return refusal.value


class TestHandshake:
    async def test_missing_credentials_are_401_with_an_azure_body(self) -> None:
        """No key: 401, {"error": {"code", "message"}}, Azure's correlation headers."""
        async with Simulator.start(api_keys={KEY}) as sim:
            refusal = await refused(ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY))
            response = refusal.response
            assert response.status_code == 401
            assert json.loads(bytes(response.body))["error"]["code"] == "401"
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["x-ms-region"] == "Sweden Central"
            assert len(response.headers["apim-request-id"]) == 36
            [record] = sim.stats.handshakes
            assert record.status == 401

    async def test_a_ga_only_simulator_refuses_the_retired_preview(self) -> None:
        """families=GA: a preview client gets 400 BadRequest over HTTP; a GA client opens a session."""
        async with Simulator.start(api_keys={KEY}, families=[Family.GA]) as sim:
            refusal = await refused(
                ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY), {"api-key": KEY}
            )
            assert refusal.response.status_code == 400
            assert json.loads(bytes(refusal.response.body)) == {
                "error": {"code": "BadRequest", "message": "API version not supported"}
            }
            async with connect(
                ws_url(sim, GA_PATH, "model=dep"),
                additional_headers={"api-key": KEY},
                open_timeout=5 * SECOND,
            ) as ws:
                created = json.loads(await ws.recv())
                assert created["type"] == "session.created"
                assert created["session"]["type"] == "realtime"

    async def test_wrong_key_is_401(self) -> None:
        """A key that is not accepted is refused."""
        async with Simulator.start(api_keys={KEY}) as sim:
            refusal = await refused(
                ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY), {"api-key": "wrong"}
            )
            assert refusal.response.status_code == 401

    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            (PREVIEW_PATH, {"api-key": KEY}),
            (PREVIEW_PATH, {"Authorization": f"Bearer {TOKEN}"}),
            (GA_PATH, {"Authorization": f"Bearer {TOKEN}"}),
            (GA_PATH, {"Authorization": f"Bearer {KEY}"}),
            (GA_PATH, {"api-key": KEY}),
        ],
    )
    async def test_accepted_credentials(
        self, path: str, headers: dict[str, str]
    ) -> None:
        """api-key, Entra-style Bearer, and (GA path only) the key as a Bearer token."""
        query = PREVIEW_QUERY if path == PREVIEW_PATH else "model=dep"
        async with (
            Simulator.start(api_keys={KEY}, bearer_tokens={TOKEN}) as sim,
            connect(ws_url(sim, path, query), additional_headers=headers) as ws,
        ):
            assert (await receive(ws))["type"] == "session.created"

    async def test_key_as_bearer_is_refused_on_the_preview_path(self) -> None:
        """Only the GA path takes an API key as a Bearer token."""
        async with Simulator.start(api_keys={KEY}) as sim:
            url = ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY)
            refusal = await refused(url, {"Authorization": f"Bearer {KEY}"})
            assert refusal.response.status_code == 401

    @pytest.mark.parametrize(
        ("path", "query", "status", "code"),
        [
            (PREVIEW_PATH, "deployment=dep", 400, "MissingApiVersionParameter"),
            (PREVIEW_PATH, "api-version=alpha&deployment=dep", 404, "404"),
            (PREVIEW_PATH, "api-version=2025-04-01-preview", 404, "DeploymentNotFound"),
            (
                PREVIEW_PATH,
                "api-version=2025-04-01-preview&deployment=other",
                404,
                "DeploymentNotFound",
            ),
            (GA_PATH, "model=dep&api-version=2025-08-28", 401, "401"),
            (GA_PATH, "", 400, "BadRequest"),
            (GA_PATH, "model=other", 404, "DeploymentNotFound"),
            (
                "/openai/deployments/dep/realtime",
                "api-version=2025-04-01-preview",
                404,
                "404",
            ),
        ],
    )
    async def test_request_rules(
        self, path: str, query: str, status: int, code: str
    ) -> None:
        """400/401/404 per protocol.md §1.1 and §1.4."""
        async with Simulator.start(api_keys={KEY}, deployments={"dep"}) as sim:
            refusal = await refused(ws_url(sim, path, query), {"api-key": KEY})
            assert refusal.response.status_code == status
            assert json.loads(bytes(refusal.response.body))["error"]["code"] == code

    async def test_dev_mode_accepts_any_credential(self) -> None:
        """With no keys and no tokens, any non-empty credential is accepted."""
        async with Simulator.start() as sim:
            async with session(sim, headers={"api-key": "anything"}) as ws:
                assert (await receive(ws))["type"] == "session.created"
            refusal = await refused(ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY))
            assert refusal.response.status_code == 401

    async def test_upgrade_answer_carries_azure_headers(self) -> None:
        """The 101 response has apim-request-id and x-ms-region too."""
        async with (
            Simulator.start(api_keys={KEY}, region="East US 2") as sim,
            session(sim) as ws,
        ):
            assert ws.response is not None
            assert ws.response.headers["x-ms-region"] == "East US 2"
            assert "apim-request-id" in ws.response.headers


class TestSessions:
    async def test_preview_session_created(self) -> None:
        """Preview: session.created with the full session, and no conversation.created."""
        async with Simulator.start(api_keys={KEY}) as sim:
            before = time.time()
            async with session(sim) as ws:
                created = await receive(ws)
                after = time.time()
                assert created["type"] == "session.created"
                session_object = created["session"]
                assert session_object["model"] == "gpt-4o-realtime-preview"
                assert session_object["turn_detection"]["type"] == "server_vad"
                assert session_object["input_audio_noise_reduction"] is None
                # The next event answers the client: nothing came in between.
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                assert (await receive(ws))["type"] == "input_audio_buffer.cleared"
        # Azure's 60 minutes, from the moment the session opened.
        assert int(before) + 3600 <= session_object["expires_at"] <= after + 3600

    async def test_conversation_created_on_request(self) -> None:
        """conversation_created=True: preview sessions get conversation.created too."""
        async with (
            Simulator.start(api_keys={KEY}, conversation_created=True) as sim,
            session(sim) as ws,
        ):
            assert (await receive(ws))["type"] == "session.created"
            assert (await receive(ws))["type"] == "conversation.created"

    @pytest.mark.parametrize(
        ("path", "query"),
        [
            (GA_PATH, "model=gpt-realtime"),
            (PREVIEW_PATH, "api-version=2025-08-28&deployment=gpt-realtime"),
        ],
    )
    async def test_ga_session_created(self, path: str, query: str) -> None:
        """GA (the /v1 path, or a non-preview api-version): the GA session object."""
        async with (
            Simulator.start(api_keys={KEY}, audio_speed=None) as sim,
            connect(
                ws_url(sim, path, query), additional_headers={"api-key": KEY}
            ) as ws,
        ):
            created = await receive(ws)
            assert created["session"]["type"] == "realtime"
            assert created["session"]["model"] == "gpt-realtime"
            await ws.send(json.dumps({"type": "response.create"}))
            events = await receive_until(ws, "response.done")
            assert "response.output_audio.delta" in [e["type"] for e in events]

    async def test_full_audio_turn_with_server_vad(self) -> None:
        """Speech-like PCM16 in 100 ms appends: VAD turn, auto-commit, audio response."""
        audio = speech_like_pcm16(1.0, leading_silence=0.3, trailing_silence=0.6)
        async with (
            Simulator.start(api_keys={KEY}, audio_speed=None) as sim,
            session(sim) as ws,
        ):
            await receive_until(ws, "session.created")
            for start in range(0, len(audio), 4800):
                chunk = audio[start : start + 4800]
                await ws.send(
                    json.dumps(
                        {"type": "input_audio_buffer.append", "audio": b64(chunk)}
                    )
                )
            events = await receive_until(ws, "response.done")
        names = [event["type"] for event in events]
        assert names[:6] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.created",
            "response.created",
            "rate_limits.updated",
        ]
        deltas = [
            base64.b64decode(e["delta"])
            for e in events
            if e["type"] == "response.audio.delta"
        ]
        assert sum(len(d) for d in deltas) == 48_000
        assert events[0]["audio_start_ms"] == 0
        done = events[-1]["response"]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["transcript"].startswith(
            "This is the Realtime simulator."
        )

    async def test_errors_keep_the_socket_open(self) -> None:
        """Garbage text and binary frames get error events; the session continues."""
        async with Simulator.start(api_keys={KEY}) as sim, session(sim) as ws:
            await receive_until(ws, "session.created")
            await ws.send("not json")
            assert (await receive(ws))["error"]["code"] == "invalid_json"
            await ws.send(b"\x00\x01")
            assert (await receive(ws))["error"]["code"] == "unsupported_binary_frame"
            await ws.send(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"input_audio_noise_reduction": True},
                    }
                )
            )
            error = (await receive(ws))["error"]
            assert (error["code"], error["param"]) == (
                "invalid_type",
                "session.input_audio_noise_reduction",
            )
            await ws.send(
                json.dumps({"type": "session.update", "session": {"voice": "sage"}})
            )
            assert (await receive(ws))["session"]["voice"] == "sage"

    async def test_large_frames_are_accepted(self) -> None:
        """Appends of several MiB fit the 16 MiB frame limit."""
        audio = bytes(4 * 2**20)
        async with Simulator.start(api_keys={KEY}) as sim, session(sim) as ws:
            await receive_until(ws, "session.created")
            await ws.send(
                json.dumps(
                    {"type": "session.update", "session": {"turn_detection": None}}
                )
            )
            await receive(ws)
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": b64(audio)})
            )
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            assert (await receive(ws))["type"] == "input_audio_buffer.committed"

    @pytest.mark.parametrize(
        ("options", "speed"),
        [
            # The default, on half a second of audio: 100, 150, 200 and 50 ms.
            ({"response_audio_seconds": 0.5}, 2.0),
            ({"audio_speed": 4.0}, 4.0),
        ],
    )
    async def test_audio_is_paced_at_a_multiple_of_real_time(
        self, options: dict[str, Any], speed: float
    ) -> None:
        """Each audio delta of N ms is followed by N / audio_speed ms (default 2x)."""
        async with (
            Simulator.start(api_keys={KEY}, **options) as sim,
            session(sim) as ws,
        ):
            await receive_until(ws, "session.created")
            loop = asyncio.get_running_loop()
            # Read before asking: the first delta is sent after it, and each
            # next one at least its predecessor's length / speed later. (Gaps
            # between arrivals are not bounded below: a busy reader may see
            # two deltas at once.)
            started = loop.time()
            await ws.send(json.dumps({"type": "response.create"}))
            lengths, arrivals = [], []
            async with asyncio.timeout(10 * SECOND):
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    if event["type"] == "response.audio.delta":
                        arrivals.append(loop.time())
                        lengths.append(len(base64.b64decode(event["delta"])) / 48_000)
        assert len(arrivals) >= 4
        assert arrivals[-1] - started >= sum(lengths[:-1]) / speed

    async def test_paced_response_can_be_cancelled(self) -> None:
        """While deltas are paced, a response.cancel is answered promptly."""
        async with (
            # 100 ms of audio, then a second before the next delta.
            Simulator.start(api_keys={KEY}, audio_speed=0.1) as sim,
            session(sim) as ws,
        ):
            await receive_until(ws, "session.created")
            await ws.send(json.dumps({"type": "response.create"}))
            await receive_until(ws, "response.audio.delta")
            await ws.send(json.dumps({"type": "response.cancel"}))
            # At once; the margin stays below the pace: a cancel that waited
            # for the next paced delta fails.
            async with asyncio.timeout(within(0, 0.8 * SECOND)):
                events = await receive_until(ws, "response.done")
            assert events[-1]["response"]["status"] == "cancelled"

    async def test_session_expiry(self) -> None:
        """At max_session_seconds: error session_expired, then a close."""
        async with (
            Simulator.start(api_keys={KEY}, max_session_seconds=0.2) as sim,
            session(sim) as ws,
        ):
            events = await receive_until(ws, "error")
            assert events[-1]["error"]["code"] == "session_expired"
            with pytest.raises(ConnectionClosed):
                await receive(ws)
            assert ws.close_code == 1000
            await sim.wait_idle(timeout=5 * SECOND)


class FakeClock:
    """Unix time that a test moves forward (the simulator's timers read it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def send(ws: ClientConnection, event: dict[str, Any]) -> None:
    await ws.send(json.dumps(event))


class TestFidelity:
    @pytest.mark.parametrize("ga", [False, True])
    async def test_function_call_round_trip(self, ga: bool) -> None:
        """A call, no answer until function_call_output and response.create, then it."""
        tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
        update: dict[str, Any] = {"tools": [tool], "tool_choice": "required"}
        if ga:
            update["type"] = "realtime"
        async with (
            Simulator.start(api_keys={KEY}, audio_speed=None) as sim,
            session(sim, ga=ga) as ws,
        ):
            await receive_until(ws, "session.created")
            await send(ws, {"type": "session.update", "session": update})
            await receive_until(ws, "session.updated")
            await send(ws, {"type": "response.create"})
            events = await receive_until(ws, "response.done")
            [done] = [
                e
                for e in events
                if e["type"] == "response.function_call_arguments.done"
            ]
            assert events[-1]["response"]["status"] == "completed"
            # It waits: the next event answers the next client event.
            await send(ws, {"type": "input_audio_buffer.clear"})
            assert (await receive(ws))["type"] == "input_audio_buffer.cleared"
            output = {
                "type": "function_call_output",
                "call_id": done["call_id"],
                "output": "{}",
            }
            await send(ws, {"type": "conversation.item.create", "item": output})
            await send(
                ws, {"type": "response.create", "response": {"tool_choice": "auto"}}
            )
            events = await receive_until(ws, "response.done")
        answer = events[-1]["response"]["output"][0]
        assert answer["content"][0]["transcript"].endswith(
            "The lookup tool returned 2 characters."
        )

    async def test_barge_in_cancels_a_paced_response(self) -> None:
        """At the default pace a response still runs when the user speaks: cancelled."""
        async with (
            Simulator.start(api_keys={KEY}, response_audio_seconds=3) as sim,
            session(sim) as ws,
        ):
            await receive_until(ws, "session.created")
            await send(ws, {"type": "response.create"})
            await receive_until(ws, "response.audio.delta")
            speech = speech_like_pcm16(0.3)
            await send(ws, {"type": "input_audio_buffer.append", "audio": b64(speech)})
            events = await receive_until(ws, "response.done")
        assert "input_audio_buffer.speech_started" in [e["type"] for e in events]
        response = events[-1]["response"]
        assert response["status"] == "cancelled"
        assert response["status_details"]["reason"] == "turn_detected"

    async def test_idle_timeout_over_the_wire(self) -> None:
        """After a response and idle_timeout_ms of nothing: timeout_triggered and a prompt."""
        clock = FakeClock()
        vad = {"type": "server_vad", "idle_timeout_ms": 5000}
        update = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
        async with (
            Simulator.start(api_keys={KEY}, audio_speed=None, clock=clock) as sim,
            session(sim, ga=True) as ws,
        ):
            await receive_until(ws, "session.created")
            await send(ws, {"type": "session.update", "session": update})
            await receive_until(ws, "session.updated")
            await send(ws, {"type": "response.create"})
            await receive_until(ws, "response.done")
            # Any client event lets the session see the time that passed.
            clock.offset += 6.5
            await send(ws, {"type": "input_audio_buffer.clear"})
            events = await receive_until(ws, "response.done")
        names = [e["type"] for e in events]
        assert names[:3] == [
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.committed",
            "conversation.item.added",
        ]
        assert "input_audio_buffer.cleared" in names
        assert events[-1]["response"]["status"] == "completed"

    async def test_transcription_failure_switch(self) -> None:
        """sim.faults.fail_transcription: the next transcription fails."""
        update = {
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": None,
        }
        async with (
            Simulator.start(api_keys={KEY}, audio_speed=None) as sim,
            session(sim) as ws,
        ):
            await receive_until(ws, "session.created")
            await send(ws, {"type": "session.update", "session": update})
            await receive_until(ws, "session.updated")
            sim.faults.update({"fail_transcription": True})
            audio = b64(bytes(9600))
            await send(ws, {"type": "input_audio_buffer.append", "audio": audio})
            await send(ws, {"type": "input_audio_buffer.commit"})
            events = await receive_until(
                ws, "conversation.item.input_audio_transcription.failed"
            )
            assert events[0]["type"] == "input_audio_buffer.committed"
            assert not sim.faults.fail_transcription


class TestStatsAndLifecycle:
    async def test_handshake_records_keep_all_headers(self) -> None:
        """Records hold path, query, every request header as sent, and the status."""
        async with Simulator.start(api_keys={KEY}) as sim:
            async with session(
                sim, headers={"api-key": KEY, "X-Trace": "a", "x-trace": "b"}
            ) as ws:
                await receive(ws)
            [record] = sim.stats.handshakes
        assert record.path == PREVIEW_PATH
        assert record.query == {
            "api-version": "2025-04-01-preview",
            "deployment": "gpt-4o-realtime-preview",
        }
        assert ("X-Trace", "a") in record.headers
        assert ("x-trace", "b") in record.headers
        assert record.header("API-KEY") == KEY
        assert record.status == 101

    async def test_connections_are_counted_and_wait_idle_waits(self) -> None:
        """opened == closed once wait_idle returns; it times out while one is open."""
        async with Simulator.start(api_keys={KEY}) as sim:
            async with session(sim) as first, session(sim) as second:
                await receive(first)
                await receive(second)
                assert sim.stats.connections_active == 2
                with pytest.raises(TimeoutError):
                    await sim.wait_idle(timeout=0.05)
            await sim.wait_idle(timeout=5 * SECOND)
            assert sim.stats.connections_opened == sim.stats.connections_closed == 2
            assert sim.stats.connections_active == 0

    async def test_refused_handshakes_are_not_connections(self) -> None:
        """A refused handshake is recorded, but never counted as a connection."""
        async with Simulator.start(api_keys={KEY}) as sim:
            await refused(ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY))
            assert sim.stats.connections_opened == 0
            await sim.wait_idle(timeout=0)

    async def test_closing_the_simulator_closes_everything(self) -> None:
        """Leaving start() closes open sessions with 1001 and leaves no task behind."""
        before = asyncio.all_tasks()
        async with Simulator.start(api_keys={KEY}, audio_speed=0.2) as sim:
            url = ws_url(sim, PREVIEW_PATH, PREVIEW_QUERY)
            ws = await connect(url, additional_headers={"api-key": KEY})
            await receive_until(ws, "session.created")
            await ws.send(json.dumps({"type": "response.create"}))
            await receive_until(ws, "response.audio.delta")  # Mid-response, paced.
        async with asyncio.timeout(5 * SECOND):
            await ws.wait_closed()
        assert ws.close_code == 1001
        assert asyncio.all_tasks() == before

    async def test_port_and_url(self) -> None:
        """port is the bound port; url is http://host:port."""
        async with Simulator.start(api_keys={KEY}) as sim:
            assert sim.url == f"http://127.0.0.1:{sim.port}"
            assert sim.port > 0
