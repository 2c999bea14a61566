"""Real servers for edge tests: the simulator as upstream and the relay under uvicorn."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp as ASGIApplication

from relay.config import (
    ApiKeyAuth,
    ClientSettings,
    DeploymentSettings,
    FlowSettings,
    LimitsSettings,
    ListenSettings,
    MetricsSettings,
    Settings,
    UpstreamSettings,
)
from relay.service.server import RelayServer, RunningRelay, bind, running_relay
from relay.simulator import Simulator
from relay.typing import ClientId, TokenProvider
from tests.helpers.timing import SECOND


CLIENT_KEY = "client-key-of-app-a"
OTHER_CLIENT_KEY = "client-key-of-app-b"
UPSTREAM_KEY = "upstream-key-held-by-the-relay"
PREVIEW_VERSION = "2025-04-01-preview"
GA_VERSION = "2025-08-28"
DEPLOYMENT = "gpt-4o-realtime-preview"
GA_DEPLOYMENT = "gpt-realtime"
GA_UPSTREAM_DEPLOYMENT = "gpt-realtime-prod"
LEGACY_DEPLOYMENT = "gpt-4o-realtime-legacy"
"""A deployment whose upstream still serves the preview protocol
(``upstream_protocol: preview``): nothing is translated. Its name upstream
is :data:`DEPLOYMENT`, so the simulator reports the same model."""


def make_settings(
    upstream_url: str, *, connect_timeout: float = 5.0, **changes: Any
) -> Settings:
    """Settings for a relay on 127.0.0.1 port 0 in front of ``upstream_url``.

    ``changes`` replace top-level fields (``limits=LimitsSettings(...)``, ...).
    """
    settings = Settings(
        source="test.yaml",
        listen=ListenSettings(host="127.0.0.1", port=0),
        metrics=MetricsSettings(host="127.0.0.1", port=0),
        upstream=UpstreamSettings(
            endpoint=upstream_url,
            ws_base=upstream_url.replace("http://", "ws://"),
            auth=ApiKeyAuth(api_key_env="AZURE_OPENAI_API_KEY", api_key=UPSTREAM_KEY),
            connect_timeout=connect_timeout,
        ),
        deployments=MappingProxyType(
            {
                DEPLOYMENT: DeploymentSettings(DEPLOYMENT, DEPLOYMENT),
                LEGACY_DEPLOYMENT: DeploymentSettings(
                    LEGACY_DEPLOYMENT, DEPLOYMENT, upstream_protocol="preview"
                ),
                GA_DEPLOYMENT: DeploymentSettings(
                    GA_DEPLOYMENT, GA_UPSTREAM_DEPLOYMENT
                ),
            }
        ),
        clients=(
            ClientSettings(
                ClientId("app-a"), (hashlib.sha256(CLIENT_KEY.encode()).digest(),)
            ),
            ClientSettings(
                ClientId("app-b"), (hashlib.sha256(OTHER_CLIENT_KEY.encode()).digest(),)
            ),
        ),
        flow=FlowSettings(ping_interval=20.0, ping_timeout=20.0, close_timeout=1.0),
        limits=LimitsSettings(),
    )
    return replace(settings, **changes)


def clients_with(**changes: Any) -> tuple[ClientSettings, ...]:
    """The default test clients, app-a changed (``limits=ClientLimits(...)``, ...)."""
    first, *others = make_settings("http://127.0.0.1:1").clients
    return (replace(first, **changes), *others)


@asynccontextmanager
async def serve_asgi(app: ASGIApplication) -> AsyncIterator[int]:
    """Serve any ASGI ``app`` with uvicorn on 127.0.0.1; yield its port."""
    sock = bind("127.0.0.1", 0)
    server = RelayServer(uvicorn.Config(app, lifespan="off", log_config=None))
    async with asyncio.TaskGroup() as group:
        serving = group.create_task(server.serve(sockets=[sock]))
        async with asyncio.timeout(10 * SECOND):
            await server.started_event.wait()
        try:
            yield sock.getsockname()[1]
        finally:
            server.should_exit = True
            await serving


@dataclass
class Stack:
    """A simulator and a relay in front of it, both on loopback."""

    simulator: Simulator
    relay: RunningRelay
    settings: Settings
    registry: CollectorRegistry

    @property
    def ws(self) -> str:
        """Base WebSocket URL of the relay (``wss://`` with ``listen.tls``)."""
        return f"{self.relay.scheme}://127.0.0.1:{self.relay.port}"

    async def settle(self) -> None:
        """Wait until the relay handles no connection and the simulator has none open."""
        async with asyncio.timeout(10 * SECOND):
            await self.relay.app.endpoint.wait_connections(0)
        await self.simulator.wait_idle(timeout=10 * SECOND)

    def preview_url(
        self, deployment: str = DEPLOYMENT, version: str = PREVIEW_VERSION
    ) -> str:
        """URL of a preview-family session on the relay."""
        return (
            f"{self.ws}/openai/realtime?api-version={version}&deployment={deployment}"
        )

    def ga_url(self, model: str = GA_DEPLOYMENT) -> str:
        """URL of a GA-family session on the relay."""
        return f"{self.ws}/openai/v1/realtime?model={model}"


@asynccontextmanager
async def relay_stack(
    *,
    provider: TokenProvider | None = None,
    simulator_options: dict[str, Any] | None = None,
    upstream_url: str | None = None,
    **changes: Any,
) -> AsyncIterator[Stack]:
    """Start a simulator (accepting the relay's key) and a relay in front of it.

    The simulator streams audio unpaced unless ``simulator_options`` asks
    for an ``audio_speed``: the relay's tests need speed, not real time.
    ``upstream_url`` points the relay elsewhere (the simulator still runs);
    other keyword arguments go to :func:`make_settings`.
    """
    options: dict[str, Any] = {
        "api_keys": {UPSTREAM_KEY},
        "audio_speed": None,
        **(simulator_options or {}),
    }
    async with Simulator.start(host="127.0.0.1", port=0, **options) as simulator:
        settings = make_settings(upstream_url or simulator.url, **changes)
        registry = CollectorRegistry()
        async with running_relay(
            settings, registry=registry, provider=provider
        ) as relay:
            yield Stack(simulator, relay, settings, registry)
