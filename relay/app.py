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


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    provider: TokenProvider | None = None,
    metrics_port: int | None = None,
) -> RelayApp:
    """Build the relay for ``settings``.

    Args:
        registry: where metrics are registered (a fresh one by default).
        provider: the upstream credential; built from ``settings`` by default.
            The application's lifespan closes it either way.
        metrics_port: the port whose requests are served ``/metrics`` only.
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
    endpoint = RealtimeEndpoint(settings, provider=token_provider, metrics=metrics)
    ready = {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if isinstance(token_provider, EntraTokenProvider):
            # Fetch the first token now so the first session does not wait for it.
            token_provider.warm_up()
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
            await token_provider.close()
            log.info("relay.stopped")

    async def livez(_request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> Response:
        if ready["ready"]:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

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
