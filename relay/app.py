"""The relay's ASGI application: routes, health, metrics listener and lifespan.

:func:`create_app` builds everything from one :class:`~relay.config.Settings`.
The returned :class:`RelayApp` is the outermost ASGI callable uvicorn runs: it
redacts credentials from query strings *in the scope uvicorn logs from*, sends
requests that arrived on the metrics listener to ``/metrics`` only, and hands
everything else to the Starlette application.
"""

from __future__ import annotations

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
from relay.credentials import EntraTokenProvider, provider_for
from relay.endpoint import RAW_QUERY_KEY, RealtimeEndpoint, deny
from relay.exceptions import NotFound
from relay.gate import Gate
from relay.jwt_auth import JwtVerifier
from relay.limits import LimitsBackend, MemoryBackend
from relay.logs import guard_library_loggers
from relay.metrics import RelayMetrics
from relay.sansio.handshake import GA_PATHS, PREVIEW_PATH, redact_query
from relay.typing import TokenProvider


__all__ = ["RelayApp", "create_app"]

log = structlog.get_logger("relay.app")

REALTIME_PATHS = (PREVIEW_PATH, *sorted(GA_PATHS))


class RelayApp:
    """Outermost ASGI callable; see the module docstring.

    Attributes:
        endpoint: the realtime WebSocket endpoint (it knows the live connections).
        metrics: the relay's metrics (on the registry given to :func:`create_app`).
        metrics_port: port of the metrics listener, or ``None`` when requests on
            every port go to the main application (tests without a metrics socket).
    """

    def __init__(
        self,
        main: Starlette,
        endpoint: RealtimeEndpoint,
        metrics: RelayMetrics,
        metrics_port: int | None,
    ) -> None:
        self.main = main
        self.endpoint = endpoint
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

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await self._metrics_app(scope, receive, send)
        elif scope["type"] == "http":
            await Response("not found\n", status_code=404, media_type="text/plain")(
                scope, receive, send
            )
        else:
            await deny(
                WebSocket(scope, receive, send),
                NotFound("no WebSocket endpoint on the metrics port"),
            )


def limits_backend_for(settings: Settings) -> LimitsBackend:
    """The configured limits backend (``memory`` by default, or ``redis``)."""
    limits = settings.limits
    if limits.backend == "memory":
        return MemoryBackend()
    from relay.limits_redis import RedisBackend

    assert limits.redis_url is not None  # checked by the configuration
    return RedisBackend(
        limits.redis_url,
        failure_mode=limits.failure_mode,
        lease_seconds=limits.lease_seconds,
    )


def jwt_verifier_for(settings: Settings) -> JwtVerifier | None:
    """The client JWT verifier, when ``auth.jwt`` is configured."""
    return JwtVerifier(settings.jwt) if settings.jwt is not None else None


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
        provider: the upstream credential; built from ``settings`` by default.
        limits: the limits backend; built from ``settings`` by default.
        metrics_port: the port whose requests are served ``/metrics`` only.

    The application's lifespan starts and closes the provider, the limits
    backend and the JWT verifier, injected or not.
    """
    guard_library_loggers()
    metrics = RelayMetrics(registry if registry is not None else CollectorRegistry())
    metrics.prepare_policy_labels(
        sorted(
            {
                target
                for client in settings.clients
                for target in client.policy.targets()
            }
        )
    )
    token_provider = (
        provider
        if provider is not None
        else provider_for(
            settings.upstream.auth, timeout=settings.upstream.credential_timeout
        )
    )
    backend = limits if limits is not None else limits_backend_for(settings)
    metrics.limits_backend_up.set_function(lambda: float(backend.status().reachable))
    metrics.limits_degraded.set_function(lambda: float(backend.status().degraded))
    verifier = jwt_verifier_for(settings)
    gate = Gate(settings, limits=backend, verifier=verifier)
    endpoint = RealtimeEndpoint(
        settings, provider=token_provider, metrics=metrics, gate=gate
    )
    ready = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if isinstance(token_provider, EntraTokenProvider):
            # Fetch the first token now so the first session does not wait for it.
            token_provider.warm_up()
        await backend.start()
        if verifier is not None:
            await verifier.start()
        ready["ready"] = True
        log.info(
            "relay.started",
            deployments=sorted(settings.deployments),
            clients=len(settings.clients),
        )
        try:
            yield
        finally:
            ready["ready"] = False
            if verifier is not None:
                await verifier.close()
            await backend.close()
            await token_provider.close()
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
        checks = {
            "started": ready["ready"],
            "limits": {
                "backend": limits_status.backend,
                "reachable": limits_status.reachable,
                "degraded": limits_status.degraded,
            },
        }
        ok = ready["ready"] and limits_ok
        body = {"status": "ready" if ok else "not ready", "checks": checks}
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
    return RelayApp(
        Starlette(routes=routes, lifespan=lifespan), endpoint, metrics, metrics_port
    )
