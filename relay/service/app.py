"""The relay's ASGI application: routes, health, metrics listener and lifespan.

:func:`create_app` builds everything from one :class:`~relay.config.Settings`.
The returned :class:`RelayApp` is the outermost ASGI callable uvicorn runs: it
redacts credentials from query strings *in the scope uvicorn logs from*, sends
requests that arrived on the metrics listener to ``/metrics`` only, and hands
everything else to the Starlette application.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from relay.config import Settings
from relay.exceptions import NotFound
from relay.sansio.handshake import GA_PATHS, PREVIEW_PATH, redact_query
from relay.service.drain import Drain
from relay.service.endpoint import RAW_QUERY_KEY, RealtimeEndpoint, deny
from relay.service.gate import Gate
from relay.service.jwt_auth import JwtVerifier
from relay.service.lag import LoopLagProbe
from relay.service.limits import LimitsBackend, MemoryBackend
from relay.service.logs import guard_library_loggers
from relay.service.metrics import RelayMetrics
from relay.service.pools import UpstreamPools
from relay.typing import TokenProvider


__all__ = ["RelayApp", "create_app", "jwt_verifier_for", "prepare_metrics"]

log = structlog.get_logger("relay.app")

REALTIME_PATHS = (PREVIEW_PATH, *sorted(GA_PATHS))


class RelayApp:
    """Outermost ASGI callable; see the module docstring.

    ``/internal/drain`` (GET or POST, metrics port only, so it is never exposed
    with the WebSocket listener) starts the drain for a Kubernetes preStop
    hook; with ``?wait=1`` it answers once drained (or after the grace period).

    Attributes:
        settings: the configuration new handshakes use (swapped by a reload,
            :mod:`relay.service.reload`).
        generation: that configuration's generation: 1 at start, one more per
            applied reload.
        gate: admission and reservations (:class:`~relay.service.gate.Gate`).
        upstreams: every deployment's upstreams (:class:`~relay.service.pools.UpstreamPools`).
        verifier: the client JWT verifier new handshakes use, if ``auth.jwt``
            is configured; the lifespan closes the current one.
        endpoint: the realtime WebSocket endpoint (it knows the live connections).
        drain: the replica's drain (SIGTERM and ``/internal/drain`` start it).
        metrics: the relay's metrics (on the registry given to :func:`create_app`).
        metrics_port: port of the metrics listener, or ``None`` when requests on
            every port go to the main application (tests without a metrics socket).
        health_on_metrics_port: ``/livez`` and ``/readyz`` are served on the
            metrics port too: set when the main listener requires client
            certificates (mutual TLS), which Kubernetes probes cannot present.
    """

    health_on_metrics_port = False

    def __init__(
        self,
        main: Starlette,
        endpoint: RealtimeEndpoint,
        metrics: RelayMetrics,
        metrics_port: int | None,
        drain: Drain,
        *,
        settings: Settings,
        gate: Gate,
        upstreams: UpstreamPools,
        verifier: JwtVerifier | None,
    ) -> None:
        self.main = main
        self.settings = settings
        self.generation = 1
        self.gate = gate
        self.upstreams = upstreams
        self.verifier = verifier
        self.endpoint = endpoint
        self.drain = drain
        self.metrics = metrics
        self.metrics_port = metrics_port
        self._metrics_app: ASGIApp = make_asgi_app(registry=metrics.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] in ("http", "websocket"):
            raw = scope.get("query_string", b"")
            redacted = redact_query(raw)
            if redacted != raw:
                # uvicorn logs from this very dict; keep the original for auth.
                scope[RAW_QUERY_KEY] = raw
                scope["query_string"] = redacted
            server = scope.get("server")
            if (
                self.metrics_port is not None
                and server is not None
                and server[1] == self.metrics_port
            ):
                await self._serve_metrics(scope, receive, send)
                return
        await self.main(scope, receive, send)

    async def _drain_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        if request.method not in ("GET", "POST"):
            response: Response = Response(
                status_code=405, headers={"Allow": "GET, POST"}
            )
        else:
            response = await _drain_answer(self, request)
        await response(scope, receive, send)

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await self._metrics_app(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/internal/drain":
            await self._drain_endpoint(scope, receive, send)
        elif (
            scope["type"] == "http"
            and scope["path"] in ("/livez", "/readyz")
            and self.health_on_metrics_port
        ):
            await self.main(scope, receive, send)
        elif scope["type"] == "http":
            await Response("not found\n", status_code=404, media_type="text/plain")(
                scope, receive, send
            )
        else:
            await deny(
                WebSocket(scope, receive, send),
                NotFound("no WebSocket endpoint on the metrics port"),
            )


async def _drain_answer(app: RelayApp, request: Request) -> Response:
    # The preStop path: hold the pod for the endpoints' propagation delay.
    app.drain.begin(hold=True)
    if request.query_params.get("wait") in ("1", "true"):
        # Sessions close at the deadline; give their closing handshakes a moment.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(app.drain.time_left() + 15):
                await app.drain.drained.wait()
    return JSONResponse(
        {
            "draining": True,
            "drained": app.drain.drained.is_set(),
            "connections": app.endpoint.connections,
        },
        status_code=202 if not app.drain.drained.is_set() else 200,
    )


def limits_backend_for(settings: Settings) -> LimitsBackend:
    """The configured limits backend (``memory`` by default, or ``redis``)."""
    limits = settings.limits
    if limits.backend == "memory":
        return MemoryBackend()
    from relay.service.limits_redis import RedisBackend

    assert limits.redis_url is not None  # checked by the configuration
    return RedisBackend(
        limits.redis_url,
        failure_mode=limits.failure_mode,
        lease_seconds=limits.lease_seconds,
    )


def jwt_verifier_for(settings: Settings) -> JwtVerifier | None:
    """The client JWT verifier, when ``auth.jwt`` is configured."""
    return JwtVerifier(settings.jwt) if settings.jwt is not None else None


def prepare_metrics(metrics: RelayMetrics, settings: Settings) -> None:
    """Create ``settings``' per-client and per-policy series at 0 (again after a reload)."""
    metrics.max_sessions.set(settings.limits.max_sessions)
    metrics.prepare_clients(
        [client.id for client in settings.clients], sorted(settings.deployments)
    )
    metrics.prepare_policy_labels(
        sorted(
            {
                target
                for client in settings.clients
                for target in client.policy.targets()
            }
        )
    )


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    provider: TokenProvider | None = None,
    limits: LimitsBackend | None = None,
    metrics_port: int | None = None,
) -> RelayApp:
    """Build the relay for ``settings``.

    Args:
        registry: where metrics are registered (a fresh one by default).
        provider: the upstream credential of every deployment served by the
            top-level ``upstream``; built from ``settings`` by default (as are
            the credentials of deployments that list their ``upstreams``).
        limits: the limits backend; built from ``settings`` by default.
        metrics_port: the port whose requests are served ``/metrics`` only.

    The application's lifespan starts and closes the credential providers,
    the limits backend and the JWT verifier, injected or not, and the event
    loop's lag probe (one per application, so one per process).
    """
    guard_library_loggers()
    metrics = RelayMetrics(registry if registry is not None else CollectorRegistry())
    prepare_metrics(metrics, settings)
    upstreams = UpstreamPools(settings, metrics=metrics, provider=provider)
    backend = limits if limits is not None else limits_backend_for(settings)
    metrics.limits_backend_up.set_function(lambda: float(backend.status().reachable))
    metrics.limits_degraded.set_function(lambda: float(backend.status().degraded))
    verifier = jwt_verifier_for(settings)
    # The drain calls back into the endpoint, which is built just below.
    drain = Drain(
        settings.drain,
        sessions=lambda: endpoint.connections,
        wait_sessions=lambda at_most: endpoint.wait_connections(at_most),
        notify=lambda deadline, grace: endpoint.drain_sessions(deadline, grace),
    )
    metrics.draining.set_function(lambda: float(drain.draining))
    gate = Gate(settings, limits=backend, verifier=verifier, drain=drain)
    probe = LoopLagProbe(metrics.event_loop_lag.observe)
    endpoint = RealtimeEndpoint(
        settings,
        upstreams=upstreams,
        metrics=metrics,
        gate=gate,
        drain=drain,
        responsive=probe.responsive,
    )
    ready = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Fetch the first Entra tokens now so the first sessions do not wait.
        upstreams.warm_up()
        await backend.start()
        if app.verifier is not None:
            await app.verifier.start()
        ready["ready"] = True
        log.info(
            "relay.started",
            deployments=sorted(app.settings.deployments),
            clients=len(app.settings.clients),
        )
        # Started last, so a failed start leaves no task behind.
        probe.start()
        try:
            yield
        finally:
            ready["ready"] = False
            await drain.close()
            if app.verifier is not None:
                await app.verifier.close()
            await backend.close()
            await upstreams.close()
            await probe.close()
            log.info("relay.stopped")

    async def livez(_request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> Response:
        # Never touches Azure: readiness must not open paid sessions or depend
        # on the upstream's health (that would cascade restarts).
        limits_status = backend.status()
        # Failing open keeps the replica useful; failing closed with the store
        # down means every session would be refused.
        limits_ok = limits_status.reachable or limits_status.degraded
        # The relay's own credentials (cached token or key), not Azure's health.
        credentials_ok, credentials = upstreams.credential_report()
        checks: dict[str, object] = {
            "started": ready["ready"],
            "limits": {
                "backend": limits_status.backend,
                "reachable": limits_status.reachable,
                "degraded": limits_status.degraded,
            },
            "credentials": credentials,
            "draining": drain.draining,
        }
        ok = ready["ready"] and limits_ok and credentials_ok and not drain.draining
        body = {
            "status": "ready" if ok else "not ready",
            # Which configuration this replica serves (relay_config_generation).
            "config": {"generation": app.generation},
            "checks": checks,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def upgrade_required(_request: Request) -> Response:
        return JSONResponse(
            {
                "error": {
                    "code": "upgrade_required",
                    "message": "this endpoint speaks WebSocket only",
                }
            },
            status_code=426,
            headers={"Upgrade": "websocket"},
        )

    async def not_found(websocket: WebSocket) -> None:
        await deny(websocket, NotFound("no realtime endpoint at this path"))

    routes = [
        Route("/livez", livez),
        Route("/readyz", readyz),
        *(WebSocketRoute(path, endpoint.handle) for path in REALTIME_PATHS),
        *(Route(path, upgrade_required) for path in REALTIME_PATHS),
        WebSocketRoute("/{path:path}", not_found),
    ]
    app = RelayApp(
        Starlette(routes=routes, lifespan=lifespan),
        endpoint,
        metrics,
        metrics_port,
        drain,
        settings=settings,
        gate=gate,
        upstreams=upstreams,
        verifier=verifier,
    )
    tls = settings.listen.tls
    app.health_on_metrics_port = tls is not None and tls.client_ca_file is not None
    return app
