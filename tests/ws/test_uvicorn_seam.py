"""The seam with uvicorn: every assumption the relay makes of uvicorn's internals, pinned.

uvicorn has no public API for what the relay needs (bounds on request heads,
JSON answers to upgrades it cannot serve, taking an accepted connection over,
draining on SIGTERM), so the relay subclasses three of its classes:
``relay.ws.uvicorn_http.RelayHttpProtocol`` (httptools), ``relay.ws.uvicorn_websocket.RelayWebSocketProtocol``
(websockets sans-I/O) and ``relay.service.server.RelayServer``. :data:`CONTRACT` maps
each overridden method to the tests that fail when a uvicorn release stops
behaving as the override assumes; :func:`test_every_override_has_a_contract`
keeps the map complete and checks that uvicorn still has each method with
the parameters the override was written against.

uvicorn 0.55 already moved one refusal path (it answers unparsable upgrades
itself, in plain text), which nothing caught at the time. Both ``make test``
(the locked uvicorn) and ``make test-latest`` (the newest the range allows)
run this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import http
import inspect
import json
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidStatus

from relay.config import LimitsSettings
from relay.service.metrics import HTTP_REFUSALS
from relay.service.server import RelayServer
from relay.simulator import Simulator
from relay.ws.uvicorn_http import MAX_HEAD_BYTES, RelayHttpProtocol
from relay.ws.uvicorn_websocket import RelayWebSocketProtocol
from tests.helpers.clients import connect_relay, receive_event, send_event
from tests.helpers.processes import RelayProcess, relay_process
from tests.helpers.raw_http import raw_connection, refusal_counts
from tests.helpers.servers import CLIENT_KEY, Stack, relay_stack
from tests.helpers.timing import SECOND


CONTRACT: Final[dict[str, tuple[str, ...]]] = {
    # RelayHttpProtocol (uvicorn's HttpToolsProtocol): a deadline and a size
    # limit on request heads. uvicorn must call the parser callbacks for each
    # piece of the head, answer parser errors through send_400_response, and
    # call on_response_complete after each response.
    "RelayHttpProtocol.connection_made": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[slow head]",
    ),
    "RelayHttpProtocol.connection_lost": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[slow head]",
    ),
    "RelayHttpProtocol.data_received": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[head still arriving past 64 KiB]",
    ),
    "RelayHttpProtocol.on_message_begin": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_keep_alive_heads_are_bounded_one_by_one",
    ),
    "RelayHttpProtocol.on_url": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[URL over 64 KiB]",
    ),
    "RelayHttpProtocol.on_header": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[whole head over 64 KiB]",
    ),
    "RelayHttpProtocol.on_headers_complete": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_a_head_just_under_64_kib_is_served",
    ),
    "RelayHttpProtocol.on_response_complete": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_keep_alive_heads_are_bounded_one_by_one",
    ),
    "RelayHttpProtocol.handle_websocket_upgrade": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[upgrade over HTTP/1.0]",
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayHttpProtocol.send_400_response": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[garbage]",
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[whole head over 64 KiB]",
    ),
    # RelayWebSocketProtocol (uvicorn's WebSocketsSansIOProtocol): JSON
    # answers to upgrades websockets refuses, quiet denial responses, and the
    # accepted connection handed to a leg.
    "RelayWebSocketProtocol.__init__": (
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayWebSocketProtocol.handle_connect": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[upgrade without Sec-WebSocket-Key]",
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayWebSocketProtocol.data_received": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[one upgrade header line of 10 KB]",
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayWebSocketProtocol.connection_lost": (
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_a_client_gone_is_a_leg_gone",
    ),
    "RelayWebSocketProtocol.pause_writing": (
        "tests/test_backpressure_e2e.py::test_stalled_clients_while_the_upstream_floods_audio",
    ),
    "RelayWebSocketProtocol.resume_writing": (
        "tests/test_backpressure_e2e.py::test_stalled_clients_while_the_upstream_floods_audio",
    ),
    "RelayWebSocketProtocol.shutdown": (
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_server_exit_closes_adopted_connections_with_1012",
    ),
    "RelayWebSocketProtocol.send": (
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_a_denied_upgrade_completes_quietly",
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayWebSocketProtocol.handle_handshake_exception": (
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[one upgrade header line of 10 KB]",
        "tests/ws/test_uvicorn_seam.py::TestRefusals::test_refused[upgrade request line over 8 KiB]",
    ),
    # RelayServer (uvicorn.Server): its signal handler drains, then stops,
    # then forces, and the process exits 0.
    "RelayServer.__init__": (
        "tests/ws/test_uvicorn_seam.py::test_signals_drain_then_stop_then_force",
    ),
    "RelayServer.startup": (
        "tests/ws/test_uvicorn_seam.py::TestAdoption::test_an_accepted_connection_is_adopted",
    ),
    "RelayServer.handle_exit": (
        "tests/ws/test_uvicorn_seam.py::test_signals_drain_then_stop_then_force",
        "tests/test_drain_e2e.py::test_sigterm_with_50_sessions",
    ),
}
"""Each method a relay class overrides on uvicorn, and the tests that pin what it assumes."""

_SUBCLASSES: Final = (
    (RelayHttpProtocol, HttpToolsProtocol),
    (RelayWebSocketProtocol, WebSocketsSansIOProtocol),
    (RelayServer, uvicorn.Server),
)
# Methods uvicorn does not have (yet or any more) but the relay defines to
# meet it either way: uvicorn 0.55 calls handle_handshake_exception, 0.54 does
# not (data_received covers it there).
_OPTIONAL_IN_UVICORN: Final = {"RelayWebSocketProtocol.handle_handshake_exception"}


def _test_exists(node_id: str) -> bool:
    path, _, name = node_id.partition("::")
    source = (Path(__file__).parents[2] / path).read_text()
    function = name.split("::")[-1].split("[")[0]
    return f"def {function}(" in source


def test_every_override_has_a_contract() -> None:
    """Each overridden uvicorn method is listed with existing tests, and uvicorn still has it as assumed."""
    overridden: set[str] = set()
    for relay_class, base in _SUBCLASSES:
        for name, member in vars(relay_class).items():
            if not callable(member) or (name.startswith("__") and name != "__init__"):
                continue
            key = f"{relay_class.__name__}.{name}"
            inherited = getattr(base, name, None)
            if inherited is None:
                if key in _OPTIONAL_IN_UVICORN:
                    overridden.add(key)
                continue
            overridden.add(key)
            # Same parameters, so uvicorn's calls still reach the override.
            ours = list(inspect.signature(member).parameters)
            theirs = list(inspect.signature(inherited).parameters)
            assert ours[: len(theirs)] == theirs, f"{key}: {ours} vs uvicorn's {theirs}"
    assert overridden == set(CONTRACT)
    missing = [t for tests in CONTRACT.values() for t in tests if not _test_exists(t)]
    assert not missing


# Refusals before routing ------------------------------------------------------

HEADER_TIMEOUT: Final = 1.0
UPGRADE: Final = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
)
KEY: Final = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
GA: Final = b"GET /openai/v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: relay\r\n"
HEALTH: Final = b"GET /livez HTTP/1.1\r\nHost: relay\r\n"
# A valid client key and the head's end: only the fault under test keeps such
# a request from the upstream.
AUTHORIZED: Final = b"api-key: " + CLIENT_KEY.encode() + b"\r\n\r\n"


@dataclass(frozen=True)
class Refusal:
    """A request the relay answers before routing, and the answer."""

    name: str
    request: bytes | None  # None: connect and send nothing
    statuses: tuple[int, ...]  # websockets 17 answers POST with 405, 15 with 400
    reason: str  # the JSON error code, and the counter's reason

    @property
    def id(self) -> str:
        return self.name


REFUSALS: Final = [
    Refusal("slow head", None, (408,), "request_timeout"),
    Refusal(
        "whole head over 64 KiB",
        HEALTH + b"X-Big: " + b"a" * (MAX_HEAD_BYTES + 1000) + b"\r\n\r\n",
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "URL over 64 KiB",
        b"GET /livez?" + b"q" * (MAX_HEAD_BYTES + 1000) + b" HTTP/1.1\r\n\r\n",
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "head still arriving past 64 KiB",
        HEALTH + b"X-Big: " + b"a" * (2 * MAX_HEAD_BYTES),
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "one upgrade header line of 10 KB",
        GA + UPGRADE + KEY + b"X-Big: " + b"a" * 10_000 + b"\r\n\r\n",
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "upgrade request line over 8 KiB",
        b"GET /openai/v1/realtime?model="
        + b"m" * 9000
        + b" HTTP/1.1\r\nHost: relay\r\n"
        + UPGRADE
        + KEY
        + b"\r\n",
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "upgrade with 200 headers",
        GA + UPGRADE + KEY + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
        (431,),
        "request_header_fields_too_large",
    ),
    Refusal(
        "garbage",
        b"\x00\xff\x16\x03\x01 not http at all\r\n\r\n",
        (400,),
        "bad_request",
    ),
    Refusal(
        "upgrade without Sec-WebSocket-Key",
        GA + UPGRADE + b"\r\n",
        (400,),
        "bad_request",
    ),
    Refusal(
        "upgrade with a malformed Sec-WebSocket-Key",
        GA + UPGRADE + b"Sec-WebSocket-Key: abc\r\n\r\n",
        (400,),
        "bad_request",
    ),
    Refusal(
        "upgrade to WebSocket version 8",
        GA + UPGRADE.replace(b"Version: 13", b"Version: 8") + KEY + b"\r\n",
        (426,),
        "bad_request",
    ),
    Refusal(
        "upgrade without Sec-WebSocket-Version",
        GA + UPGRADE.replace(b"Sec-WebSocket-Version: 13\r\n", b"") + KEY + b"\r\n",
        (426,),
        "bad_request",
    ),
    Refusal(
        "upgrade with a request line ended by a bare LF",
        GA.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\n") + UPGRADE + KEY + AUTHORIZED,
        (400,),
        "bad_request",
    ),
    Refusal(
        "upgrade over HTTP/1.0",
        # With a valid key: only the version keeps it from the upstream.
        GA.replace(b"HTTP/1.1", b"HTTP/1.0") + UPGRADE + KEY + AUTHORIZED,
        (400,),
        "bad_request",
    ),
    Refusal(
        "upgrade by POST",
        GA.replace(b"GET", b"POST")
        + b"Content-Length: 0\r\n"
        + UPGRADE
        + KEY
        + b"\r\n",
        (400, 405),
        "bad_request",
    ),
]


@dataclass(frozen=True)
class Answer:
    """A parsed HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes


def parse_answer(raw: bytes) -> Answer:
    """The one response in ``raw`` (the relay closes after it)."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, raw[:200]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split(" ")[1]), headers, body)


class TestRefusals:
    @pytest.mark.parametrize("case", REFUSALS, ids=[case.name for case in REFUSALS])
    async def test_refused(self, case: Refusal) -> None:
        """Answered with the relay's JSON error and its status, counted once, upstream untouched."""
        async with (
            relay_stack(limits=LimitsSettings(header_timeout=HEADER_TIMEOUT)) as stack,
            raw_connection(stack) as (reader, writer),
        ):
            if case.request is not None:
                writer.write(case.request)
            # The relay closes after its answer: bounded by the head deadline.
            async with asyncio.timeout(HEADER_TIMEOUT + 5 * SECOND):
                answer = parse_answer(await reader.read())
            counts = refusal_counts(stack)
            assert stack.simulator.stats.handshakes == []
        assert answer.status in case.statuses
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["connection"] == "close"
        assert int(answer.headers["content-length"]) == len(answer.body)
        error = json.loads(answer.body)["error"]
        assert error["code"] == case.reason
        assert isinstance(error["message"], str)
        if answer.status == http.HTTPStatus.METHOD_NOT_ALLOWED:
            assert answer.headers["allow"] == "GET"
        if answer.status == http.HTTPStatus.UPGRADE_REQUIRED:
            assert answer.headers["sec-websocket-version"] == "13"
        assert counts == {r: (1 if r == case.reason else 0) for r in HTTP_REFUSALS}

    async def test_a_head_just_under_64_kib_is_served(self) -> None:
        """The size limit counts what httptools parsed: a 63 KB head is served, with no deadline left behind."""
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 7200) for i in range(9))
        request = HEALTH + headers + b"\r\n"
        assert MAX_HEAD_BYTES - 2000 < len(request) < MAX_HEAD_BYTES
        async with (
            relay_stack(limits=LimitsSettings(header_timeout=HEADER_TIMEOUT)) as stack,
            raw_connection(stack) as (reader, writer),
        ):
            writer.write(request.replace(b"Host: relay", b"Connection: close"))
            async with asyncio.timeout(HEADER_TIMEOUT + 5 * SECOND):
                answer = parse_answer(await reader.read())
            assert answer.status == 200
            assert set(refusal_counts(stack).values()) == {0}

    async def test_keep_alive_heads_are_bounded_one_by_one(self) -> None:
        """Each request on a connection gets the whole limit and its own deadline after a response."""
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 7200) for i in range(8))
        request = HEALTH + headers + b"\r\n"
        async with (
            relay_stack(limits=LimitsSettings(header_timeout=HEADER_TIMEOUT)) as stack,
            raw_connection(stack) as (reader, writer),
        ):
            # Three heads of 58 KB on one connection: not counted together.
            for _ in range(3):
                writer.write(request)
                async with asyncio.timeout(5 * SECOND):
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200 ")
                    length = parse_answer(head).headers["content-length"]
                    await reader.readexactly(int(length))
            # Then silence: the next head's deadline started at the last response.
            async with asyncio.timeout(HEADER_TIMEOUT + 5 * SECOND):
                answer = parse_answer(await reader.read())
            assert answer.status == 408
            assert refusal_counts(stack)["request_timeout"] == 1

    async def test_a_10_kb_header_on_plain_http_is_served(self) -> None:
        """The 8 KiB line limit is websockets' (upgrades only); plain HTTP has the 64 KiB head limit."""
        async with (
            relay_stack(limits=LimitsSettings(header_timeout=HEADER_TIMEOUT)) as stack,
            raw_connection(stack) as (reader, writer),
        ):
            writer.write(
                HEALTH + b"Connection: close\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
            )
            async with asyncio.timeout(5 * SECOND):
                answer = parse_answer(await reader.read())
        assert answer.status == 200


# The accepted connection ------------------------------------------------------


def ws_protocols(stack: Stack) -> list[RelayWebSocketProtocol]:
    """The relay's WebSocket connections, as uvicorn tracks them."""
    return [
        c
        for c in stack.relay.server.server_state.connections
        if isinstance(c, RelayWebSocketProtocol)
    ]


class TestAdoption:
    async def test_an_accepted_connection_is_adopted(self) -> None:
        """After accept, a leg owns the socket: uvicorn queues no message and runs no keepalive."""
        async with relay_stack() as stack, connect_relay(stack.ga_url()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
            for _ in range(3):
                await send_event(ws, {"type": "input_audio_buffer.clear"})
                assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
            (protocol,) = ws_protocols(stack)
            assert protocol.adopted
            assert protocol.queue.empty()
            assert protocol.ping_timer is None

    async def test_a_client_gone_is_a_leg_gone(self) -> None:
        """uvicorn's connection_lost reaches the leg: the session ends and is counted."""
        async with relay_stack() as stack:
            async with connect_relay(stack.ga_url()) as ws:
                await receive_event(ws)
                ws.transport.abort()  # no close frame: only connection_lost tells
            await stack.settle()
            assert ws_protocols(stack) == []
            closed = stack.registry.get_sample_value(
                "relay_close_codes_total", {"side": "client", "code": "1006"}
            )
            assert closed == 1

    async def test_server_exit_closes_adopted_connections_with_1012(self) -> None:
        """uvicorn's shutdown() reaches each adopted connection: the session closes it with 1012."""
        async with relay_stack() as stack, connect_relay(stack.ga_url()) as ws:
            await receive_event(ws)
            # What uvicorn's own signal handler sets; RelayServer drains first.
            stack.relay.server.should_exit = True
            async with asyncio.timeout(stack.settings.flow.close_timeout + 5 * SECOND):
                await ws.wait_closed()
                await stack.relay.server.stopped_event.wait()
            assert ws.close_code == 1012
            # The session itself closed the leg (uvicorn alone would drop the
            # socket under it: a 1006 here).
            closed = stack.registry.get_sample_value(
                "relay_close_codes_total", {"side": "client", "code": "1012"}
            )
            assert closed == 1

    async def test_a_denied_upgrade_completes_quietly(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 401 from the application is a complete handshake: no ERROR from uvicorn."""
        caplog.set_level(logging.INFO, logger="uvicorn.error")
        async with relay_stack() as stack:
            with pytest.raises(InvalidStatus) as refused:
                async with connect_relay(stack.ga_url(), key="wrong"):
                    pass
            assert refused.value.response.status_code == 401
            await stack.settle()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []


# Signals ------------------------------------------------------------------------

CLOSE_TIMEOUT: Final = 30.0  # a client that never answers a close holds this long


def _config(upstream: str) -> str:
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    return f"""
listen: {{host: 127.0.0.1, port: 0}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: {upstream}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients: [{{id: app-a, key_sha256: "{digest}"}}]
flow: {{close_timeout: {CLOSE_TIMEOUT}}}
drain: {{grace_seconds: 600, propagation_delay: 0}}
log: {{format: console, level: info}}
"""


async def _silent_session(relay: RelayProcess) -> asyncio.StreamWriter:
    """A session whose client then never reads again (nor answers a close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(GA + UPGRADE + KEY + AUTHORIZED)
    async with asyncio.timeout(10 * SECOND):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return writer


async def _exit_status(relay: RelayProcess, within: float) -> int | None:
    """The exit status if the process ends within ``within`` seconds, else None."""
    try:
        async with asyncio.timeout(within):
            return await relay.process.wait()
    except TimeoutError:
        return None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_signals_drain_then_stop_then_force(tmp_path: Path) -> None:
    """uvicorn routes SIGTERM to handle_exit: 1st drains, 2nd stops (1012), 3rd forces; exit 0."""
    async with Simulator.start(
        api_keys={"upstream-key"}, audio_speed=None
    ) as simulator:
        path = tmp_path / "relay.yaml"
        path.write_text(_config(simulator.url))
        async with relay_process(path, {"UPSTREAM_KEY": "upstream-key"}) as relay:
            silent = await _silent_session(relay)
            async with connect_relay(
                f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime"
            ) as ws:
                await receive_event(ws)
                # 1st: the drain starts; sessions go on, the process stays.
                relay.process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5 * SECOND):
                    while (await receive_event(ws))["type"] != "relay.draining":
                        pass
                await send_event(ws, {"type": "input_audio_buffer.clear"})
                assert (await receive_event(ws))["type"] == "input_audio_buffer.cleared"
                # 2nd: stop; each leg is closed with 1012.
                relay.process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5 * SECOND):
                    await ws.wait_closed()
                assert ws.close_code == 1012
            # The silent client holds the exit for up to close_timeout...
            assert await _exit_status(relay, 1.0) is None
            # ... unless a 3rd signal forces it.
            relay.process.send_signal(signal.SIGTERM)
            assert await _exit_status(relay, 5 * SECOND) == 0
            silent.close()
