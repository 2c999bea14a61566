"""The WebSocket endpoint: a client's handshake, its upstream, then the relay.

Order matters and is the point of this module:

1. the handshake is judged and the session's place reserved
   (:class:`~relay.service.gate.Gate`: identity, Origin, deployment, replica capacity,
   client quota) before any upstream connection exists;
2. the relay obtains its own credential and opens the upstream, failing over
   between the deployment's upstreams (:mod:`relay.service.pools`);
3. only then is the client accepted, selecting a safe subprotocol;
4. the :class:`~relay.service.driver.SessionDriver` relays until both legs close.

Steps 1-2 are bounded together by ``limits.handshake_timeout``. Any failure in
them is answered with an HTTP status and a JSON body before accept (a denial
response), so SDKs raise their usual handshake errors. Every upstream
connection opened is closed, and every reservation released, before this
handler returns.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from relay import __version__
from relay.config import ClientSettings, Settings
from relay.exceptions import (
    Forbidden,
    HandshakeTimeout,
    RelayError,
    Unauthenticated,
)
from relay.sansio.handshake import Admission, HandshakeRequest
from relay.sansio.meter import SessionCounters
from relay.sansio.reload import ReloadPlan
from relay.sansio.session import RelaySession
from relay.service.drain import Drain
from relay.service.driver import SessionDriver
from relay.service.gate import Gate, Reservation, session_limits
from relay.service.metrics import RelayMetrics
from relay.service.pools import UpstreamPools
from relay.ws.leg import Leg
from relay.ws.upstream import UpstreamConnection
from relay.ws.uvicorn_websocket import ADOPT_EXTENSION, Adopt


__all__ = ["RAW_QUERY_KEY", "RealtimeEndpoint", "deny"]

log = structlog.get_logger("relay.endpoint")

RAW_QUERY_KEY = "relay.raw_query_string"
"""Scope key holding the query string as received, before redaction for logs."""
USER_AGENT = f"realtime-relay/{__version__}"


@dataclass(frozen=True, slots=True)
class _Upstream:
    connection: UpstreamConnection
    request_id: str


async def deny(websocket: WebSocket, error: RelayError) -> None:
    """Answer the handshake with ``error``'s status, headers and JSON body."""
    response = JSONResponse(
        error.body(), status_code=error.http_status, headers=dict(error.headers)
    )
    try:
        await websocket.send_denial_response(response)
    except (OSError, RuntimeError):
        # The client left before the answer; nothing else to do.
        log.debug("handshake.client_gone")


class RealtimeEndpoint:
    """Serves the realtime WebSocket paths for one configured relay.

    :meth:`swap` changes the settings new connections read (a configuration
    reload); each connection reads the settings current when it arrived. With
    the reload's plan it also reaches live sessions, as the new settings'
    ``reload`` section says.

    ``responsive`` is the sessions' stall clock (see
    :class:`~relay.service.driver.SessionDriver`); the loop's own time by default.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        upstreams: UpstreamPools,
        metrics: RelayMetrics,
        gate: Gate,
        drain: Drain | None = None,
        responsive: Callable[[float], float] | None = None,
    ) -> None:
        self._settings = settings
        self._responsive = responsive
        self.upstreams = upstreams
        """Every deployment's upstreams; sessions start on one of them."""
        self._metrics = metrics
        self._gate = gate
        self._drain = drain
        self.drivers: set[SessionDriver] = set()
        """Sessions relaying now (accepted, both legs open)."""
        self.by_client: dict[str, set[SessionDriver]] = {}
        """The same sessions by client id (a reload reaches a client's); a
        client with none has no entry."""
        # Connections inside `handle`, from upgrade request to the end of both legs.
        self.connections = 0
        self._connections_changed = asyncio.Condition()

    def swap(self, settings: Settings, plan: ReloadPlan | None = None) -> None:
        """Connections arriving from now on read ``settings``.

        With ``plan`` (what the reload changes), live sessions are reached as
        ``settings.reload`` says: with ``policy_reload: all_sessions`` each
        session of a changed client whose policy differs switches to the new
        one; with ``removed_client_grace_seconds`` each session of a removed
        client is closed that long from now. A session starting from a
        handshake admitted before the swap is reached when it registers.
        """
        self._settings = settings
        if plan is None:
            return
        clients: dict[str, ClientSettings] = {c.id: c for c in settings.clients}
        switched = closing = 0
        if settings.reload.policy_reload == "all_sessions":
            for client_id in plan.clients_changed:
                policy = clients[client_id].policy
                for driver in list(self.by_client.get(client_id, ())):
                    if driver.session.policy != policy:
                        driver.change_policy(policy)
                        switched += 1
        grace = settings.reload.removed_client_grace_seconds
        if grace is not None:
            deadline = asyncio.get_running_loop().time() + grace
            for client_id in plan.clients_removed:
                for driver in list(self.by_client.get(client_id, ())):
                    driver.remove_client(deadline)
                    closing += 1
        if switched or closing:
            log.info(
                "config.live_sessions",
                policy_switched=switched,
                removed_closing=closing,
                grace_s=grace,
            )

    def _register(
        self, driver: SessionDriver, client_id: str, settings: Settings
    ) -> None:
        """Track a session starting; catch up with a reload since its handshake began."""
        self.drivers.add(driver)
        self.by_client.setdefault(client_id, set()).add(driver)
        current = self._settings
        if current is settings:
            return
        client = next((c for c in current.clients if c.id == client_id), None)
        grace = current.reload.removed_client_grace_seconds
        if client is None:
            if grace is not None:
                driver.remove_client(asyncio.get_running_loop().time() + grace)
        elif (
            current.reload.policy_reload == "all_sessions"
            and client.policy != driver.session.policy
        ):
            driver.change_policy(client.policy)

    def _unregister(self, driver: SessionDriver, client_id: str) -> None:
        self.drivers.discard(driver)
        sessions = self.by_client.get(client_id)
        if sessions is not None:
            sessions.discard(driver)
            if not sessions:
                del self.by_client[client_id]

    def drain_sessions(self, deadline: float, grace_seconds: float) -> None:
        """Tell every live session the relay drains; each ends by ``deadline``."""
        for driver in list(self.drivers):
            driver.drain(deadline, grace_seconds)

    async def wait_connections(self, at_most: int = 0) -> None:
        """Return once at most ``at_most`` connections are being handled.

        A connection counts until both of its legs are closed, so 0 means no
        upstream leg is open either.
        """
        async with self._connections_changed:
            await self._connections_changed.wait_for(
                lambda: self.connections <= at_most
            )

    async def handle(self, websocket: WebSocket) -> None:
        """Handle one client connection from upgrade request to the end of its session."""
        self.connections += 1
        try:
            await self._handle(websocket)
        finally:
            self.connections -= 1
            async with self._connections_changed:
                self._connections_changed.notify_all()

    async def _handle(self, websocket: WebSocket) -> None:
        scope = websocket.scope
        # The path as sent: a percent-encoded alias of a realtime path
        # (/openai%2Fv1%2Frealtime, /%6Fpenai/...) is not that path, for the
        # relay as for any proxy or policy in front of it that reads it raw.
        raw_path = scope.get("raw_path")
        request = HandshakeRequest(
            path=raw_path.decode("latin-1")
            if isinstance(raw_path, bytes)
            else scope["path"],
            query=scope.get(RAW_QUERY_KEY, scope["query_string"]),
            headers=[
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in scope["headers"]
            ],
            subprotocols=scope.get("subprotocols", []),
        )
        session_id = "rs_" + uuid.uuid4().hex
        # This connection's generation, whatever a reload swaps meanwhile.
        settings = self._settings
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            started = time.monotonic()
            reservation: Reservation | None = None
            upstream: _Upstream | None = None
            try:
                try:
                    async with asyncio.timeout(settings.limits.handshake_timeout):
                        admission = await self._gate.admit(request)
                        structlog.contextvars.bind_contextvars(
                            client_id=admission.client_id,
                            deployment=admission.deployment.name,
                            family=admission.route.family,
                            policy=admission.client.policy.name,
                            auth=admission.credential_source,
                        )
                        reservation = await self._gate.reserve(admission, session_id)
                        upstream = await self._connect(admission)
                except TimeoutError:
                    error: RelayError = HandshakeTimeout(
                        "the relay could not prepare the session in time"
                    )
                    self._refused(error)
                    await deny(websocket, error)
                    return
                except RelayError as error:
                    self._refused(error)
                    await deny(websocket, error)
                    return
                self._metrics.handshake_duration.observe(time.monotonic() - started)
                await self._relay(websocket, settings, reservation, upstream)
            finally:
                if upstream is not None:
                    await self._close_upstream(settings, upstream.connection)
                if reservation is not None:
                    await self._gate.release(reservation)
                structlog.contextvars.unbind_contextvars(
                    "client_id", "deployment", "family", "policy", "auth"
                )

    def _refused(self, error: RelayError) -> None:
        self._metrics.sessions.labels(error.outcome).inc()
        if isinstance(error, Unauthenticated | Forbidden):
            self._metrics.auth_failures.labels(error.reason).inc()
        log.info(
            "handshake.rejected",
            status=error.http_status,
            error_code=error.error_code,
            reason=error.message,
        )

    async def _connect(self, admission: Admission) -> _Upstream:
        """Open the deployment's upstream, failing over between its targets.

        See :meth:`relay.service.pools.UpstreamPools.connect`: attempts, breakers and
        metrics are handled there; the caller's handshake timeout bounds it.
        Never called once the client is accepted: a session is never moved.
        """
        opened = await self.upstreams.connect(
            admission.deployment.name, admission.upstream_route, user_agent=USER_AGENT
        )
        # Every later log line of the session names the upstream it runs on.
        structlog.contextvars.bind_contextvars(upstream=opened.target.name)
        return _Upstream(opened.connection, opened.request_id)

    async def _relay(
        self,
        websocket: WebSocket,
        settings: Settings,
        reservation: Reservation,
        upstream: _Upstream,
    ) -> None:
        admission = reservation.admission
        headers = upstream.connection.response.headers
        with structlog.contextvars.bound_contextvars(
            upstream_request_id=upstream.request_id,
            apim_request_id=headers.get("apim-request-id"),
            region=headers.get("x-ms-region"),
        ):
            extension = websocket.scope.get("extensions", {}).get(ADOPT_EXTENSION)
            if extension is None:
                # Only the relay's own protocol (relay.service.server) can hand over
                # an accepted connection; refuse rather than half-work.
                log.error("session.unsupported_server")
                await websocket.close(1011)
                return
            adopt: Adopt = extension["adopt"]
            adopt.prepare()
            await websocket.accept(subprotocol=admission.subprotocol)
            flow = settings.flow
            client = adopt.leg(
                max_size=settings.limits.max_message_bytes,
                ping_interval=flow.ping_interval,
                ping_timeout=flow.ping_timeout,
                close_timeout=flow.close_timeout,
                write_limit=flow.buffer_bytes,
            )
            log.info(
                "session.start",
                api_version=admission.route.api_version,
                bridged=admission.bridged,
            )
            session = RelaySession(
                admission.client.policy,
                admission.upstream_route.family,
                init_timeout=settings.limits.policy_timeout,
                limits=session_limits(admission.client, settings),
                drain_notice=admission.client.drain_notice,
                bridged=admission.bridged,
            )
            # Which apps still speak the preview protocol: the migration's progress.
            self._metrics.session_protocols.labels(
                admission.client_id,
                admission.deployment.name,
                admission.route.family,
                admission.upstream_route.family,
            ).inc()
            counters = SessionCounters()
            observer = self._metrics.for_session(
                admission.client_id, admission.deployment.name, counters
            )
            driver = SessionDriver(
                client,
                upstream.connection.leg,
                session,
                flow=settings.flow,
                observer=observer,
                counters=counters,
                responsive=self._responsive,
            )
            started = time.monotonic()
            self._metrics.sessions_active.inc()
            self._register(driver, admission.client_id, settings)
            if self._drain is not None and self._drain.draining:
                driver.drain(*self._drain.deadline())
            outcome, code, reason = "relay_error", 1011, "internal relay error"
            try:
                ended = await driver.run()
                outcome, code, reason = ended.outcome, ended.client_code, ended.reason
            except Exception:
                # A bug in the relay must end this session cleanly and no other.
                log.exception("session.crashed")
                client.close(1011, "internal relay error")
                await self._wait_closed(settings, client)
            finally:
                observer.close()
                self._unregister(driver, admission.client_id)
                for side, leg_code in driver.close_codes.items():
                    # A leg not seen closing was dropped with the connection.
                    self._metrics.session_closed(
                        side, 1006 if leg_code is None else leg_code
                    )
                duration = time.monotonic() - started
                self._metrics.sessions_active.dec()
                self._metrics.sessions.labels(outcome).inc()
                self._metrics.session_duration.observe(duration)
                log.info(
                    "session.end",
                    outcome=outcome,
                    close_code=code,
                    close_reason=reason,
                    duration_s=round(duration, 3),
                    client_messages=counters.client_messages,
                    client_bytes=counters.client_bytes,
                    upstream_messages=counters.upstream_messages,
                    upstream_bytes=counters.upstream_bytes,
                    input_tokens=counters.input_tokens,
                    output_tokens=counters.output_tokens,
                    audio_in_s=round(counters.audio_in_seconds, 3),
                    audio_out_s=round(counters.audio_out_seconds, 3),
                )

    async def _wait_closed(self, settings: Settings, leg: Leg) -> None:
        # The leg drops the connection after close_timeout; the outer bound
        # also covers a transport that never reports its end.
        try:
            async with asyncio.timeout(settings.flow.close_timeout + 1):
                await asyncio.shield(leg.done)
        except TimeoutError:
            leg.abort()

    async def _close_upstream(
        self, settings: Settings, connection: UpstreamConnection
    ) -> None:
        # close() is idempotent and bounded by close_timeout; the outer bound
        # also covers a transport that never finishes closing.
        try:
            async with asyncio.timeout(settings.flow.close_timeout + 1):
                await connection.close(1000, "session ended")
        except TimeoutError:
            log.warning("upstream.close_timeout")
            connection.leg.abort()
