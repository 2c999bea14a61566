"""The simulator's network edge: a websockets server that looks like Azure.

:meth:`Simulator.start` listens, answers handshakes the way Azure does
(:mod:`~relay.simulator.handshake`), serves the control API
(:mod:`~relay.simulator.control`) on the same port, and runs one
:class:`~relay.simulator.driver.ConnectionDriver` per upgraded connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import logging
import secrets
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from relay.simulator.control import CONTROL_PREFIX, handle_control
from relay.simulator.driver import ConnectionDriver
from relay.simulator.engine import SessionOptions, SimSession
from relay.simulator.faults import Faults
from relay.simulator.handshake import Accept, AccessPolicy, Reject, decide, split_target
from relay.simulator.stats import HandshakeRecord, Stats
from relay.simulator.wire import Family, IdFactory


logger = logging.getLogger("relay.simulator")

MAX_FRAME_BYTES = 16 * 2**20
"""Largest client frame accepted: a 15 MiB append plus JSON overhead (protocol.md §7)."""

OPEN_TIMEOUT = 10.0
"""Seconds a handshake may take before the server drops the connection (this
also cuts ``handshake_delay`` faults of 10 s or more: no answer at all)."""

DEFAULT_AUDIO_SPEED = 2.0
"""Response audio streams at twice real time by default, so that a cancel or a
barge-in finds a response still running. Azure generates audio faster than
real time; by how much is undocumented (UNVERIFIED)."""

CLOSE_TIMEOUT = 2.0
"""Seconds to wait for a peer's close frame; short, because peers are local."""


class Simulator:
    """A running Azure OpenAI Realtime simulator. Create it with :meth:`start`."""

    def __init__(
        self,
        *,
        policy: AccessPolicy,
        options: SessionOptions,
        audio_speed: float | None,
        region: str,
        control_api: bool,
        clock: Callable[[], float],
    ) -> None:
        self._policy = policy
        self._options = options
        self._audio_speed = audio_speed
        self._clock = clock
        self._region = region
        self._control_api = control_api
        self.faults = Faults()
        """Fault switches, read when they apply: flip them at any time."""
        self.stats = Stats()
        """Handshakes seen and connections opened/closed."""
        # Set while no upgraded connection is open.
        self._idle = asyncio.Event()
        self._idle.set()
        # Set when the simulator shuts down: cuts handshake delays short.
        self._closing = asyncio.Event()
        # Decisions of process_request, picked up by the connection handler.
        self._accepted: weakref.WeakKeyDictionary[ServerConnection, Accept] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Iterable[str] = (),
        bearer_tokens: Iterable[str] = (),
        deployments: Iterable[str] | None = None,
        families: Iterable[Family] = tuple(Family),
        audio_speed: float | None = DEFAULT_AUDIO_SPEED,
        max_session_seconds: float | None = None,
        response_audio_seconds: float = 1.0,
        conversation_created: bool = False,
        region: str = "Sweden Central",
        control_api: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[Self]:
        """Run a simulator for the duration of the ``async with`` block.

        Args:
            host: Interface to listen on.
            port: TCP port; 0 picks a free one (see :attr:`port`).
            api_keys: Accepted ``api-key`` values.
            bearer_tokens: Accepted ``Authorization: Bearer`` tokens. With no
                keys and no tokens, any non-empty credential is accepted.
            deployments: Known deployment names; None accepts any.
            families: Protocol families served; without preview, a
                ``-preview`` api-version is refused as Azure refuses a
                retired API version (rehearsing the preview's retirement).
            audio_speed: Stream response audio at this multiple of real time
                (each delta of N ms is followed by N / speed ms); None sends
                it as fast as the socket takes it (tests that need speed).
            max_session_seconds: Expire sessions after this long with
                ``session_expired``; None never expires, and ``expires_at``
                shows Azure's 60 minutes.
            response_audio_seconds: Length of each answer's audio.
            conversation_created: Greet preview sessions with
                ``conversation.created`` (Azure's rtclient rejects it).
            region: Value of the ``x-ms-region`` response header.
            control_api: Serve the HTTP control API under ``/_sim/``.
            clock: Source of Unix time for sessions (expiry, idle timeout);
                tests may pass one they move forward.

        Leaving the block closes every connection (code 1001) and the
        listener, and waits for all connection tasks to end.
        """
        sim = cls(
            policy=AccessPolicy(
                api_keys=frozenset(api_keys),
                bearer_tokens=frozenset(bearer_tokens),
                deployments=None if deployments is None else frozenset(deployments),
                families=frozenset(families),
            ),
            options=SessionOptions(
                max_session_seconds=max_session_seconds,
                response_audio_ms=round(response_audio_seconds * 1000),
                conversation_created=conversation_created,
            ),
            audio_speed=audio_speed,
            region=region,
            control_api=control_api,
            clock=clock,
        )
        async with serve(
            sim._handle,
            host,
            port,
            process_request=sim._process_request,
            process_response=sim._process_response,
            server_header=None,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
        ) as server:
            sim._server = server
            logger.info("simulator.listening url=%s", sim.url)
            try:
                yield sim
            finally:
                # Before serve() closes the server: delayed handshakes end now.
                sim._closing.set()

    @property
    def port(self) -> int:
        """The TCP port the simulator listens on."""
        return self._address()[1]

    @property
    def url(self) -> str:
        """Base URL for clients, ``http://host:port`` (use ``ws://`` for WebSockets)."""
        host, port = self._address()
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("The simulator is not running; use Simulator.start().")
        sockname = next(iter(self._server.sockets)).getsockname()
        return str(sockname[0]), int(sockname[1])

    # The brief's API is `wait_idle(timeout=...)`; the bound is enforced inside.
    async def wait_idle(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until no upgraded connection is open.

        Raises:
            TimeoutError: Connections are still open after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    # Handshake

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path, query = split_target(request.path)
        if self._control_api and path.startswith(CONTROL_PREFIX):
            status, answer = handle_control(path, query, self.faults, self.stats)
            return self._response(status, json.dumps(answer).encode())
        delay = self.faults.handshake_delay
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._closing.wait()
        refusal = self.faults.take_refusal()
        if refusal is not None:
            logger.info("simulator.fault refuse_handshake status=%d", refusal.status)
            if refusal.body is None:
                phrase = _phrase(refusal.status)
                payload = Reject(refusal.status, str(refusal.status), phrase).body()
            else:
                payload = refusal.body.encode()
            return self._response(refusal.status, payload, refusal.headers)
        headers: dict[str, str] = {}
        for name, value in request.headers.raw_items():
            headers.setdefault(name.lower(), value)
        decision = decide(path, query, headers, self._policy)
        if isinstance(decision, Reject):
            logger.info(
                "simulator.handshake_rejected status=%d code=%s path=%s",
                decision.status,
                decision.code,
                path,
            )
            return self._response(decision.status, decision.body())
        self._accepted[connection] = decision
        return None

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        path, query = split_target(request.path)
        if self._control_api and path.startswith(CONTROL_PREFIX):
            return
        # Azure's correlation headers, on every answer (protocol.md §1.3).
        if "apim-request-id" not in response.headers:
            response.headers["apim-request-id"] = str(uuid.uuid4())
        if "x-ms-region" not in response.headers:
            response.headers["x-ms-region"] = self._region
        record = HandshakeRecord(
            path=path,
            query=query,
            headers=tuple(request.headers.raw_items()),
            status=response.status_code,
        )
        self.stats.handshakes.append(record)

    def _response(
        self, status: int, body: bytes, extra: Mapping[str, str] | None = None
    ) -> Response:
        headers = Headers()
        headers["Date"] = email.utils.formatdate(usegmt=True)
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        for name, value in (extra or {}).items():
            if name in headers:
                del headers[name]  # A fault's headers replace the defaults.
            headers[name] = value
        return Response(status, _phrase(status), headers, body)

    # Connections

    async def _handle(self, ws: ServerConnection) -> None:
        accept = self._accepted.pop(ws)
        session = SimSession(
            accept.family,
            accept.deployment,
            now=self._clock(),
            options=self._options,
            ids=IdFactory(secrets.randbits(64)),
            faults=self.faults,
        )
        self.stats.connections_opened += 1
        self._idle.clear()
        logger.info(
            "simulator.session_opened family=%s deployment=%s",
            accept.family,
            accept.deployment,
        )
        driver = ConnectionDriver(
            ws,
            session,
            faults=self.faults,
            audio_speed=self._audio_speed,
            clock=self._clock,
            record=self.stats.record_client_frame,
        )
        try:
            await driver.run()
        finally:
            try:
                # Count the connection closed only once its TCP connection is gone.
                await ws.close()
            finally:
                self.stats.connections_closed += 1
                if self.stats.connections_active <= 0:
                    self._idle.set()
                logger.info("simulator.session_closed code=%s", ws.close_code)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"
