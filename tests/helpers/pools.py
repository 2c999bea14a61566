"""A relay whose GA deployment fails over between several simulators."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry

from relay.config import (
    ApiKeyAuth,
    DeploymentSettings,
    FailoverSettings,
    Settings,
    UpstreamTarget,
)
from relay.service.server import RunningRelay, running_relay
from relay.simulator import Simulator
from tests.helpers.servers import (
    DEPLOYMENT,
    GA_DEPLOYMENT,
    UPSTREAM_KEY,
    make_settings,
)
from tests.helpers.timing import SECOND


POOLED = GA_DEPLOYMENT
"""The deployment with several upstreams (``gpt-realtime/0``, ``gpt-realtime/1``...)."""
SINGLE = DEPLOYMENT
"""The deployment served by the top-level upstream (the first simulator)."""


def upstream_name(index: int) -> str:
    """The metric label of the pooled deployment's upstream ``index``."""
    return f"{POOLED}/{index}"


def closed_port_url() -> str:
    """An http URL where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class PoolStack:
    """Simulators, and a relay whose pooled deployment fails over between them."""

    simulators: list[Simulator]
    relay: RunningRelay
    settings: Settings
    registry: CollectorRegistry

    @property
    def ws(self) -> str:
        """Base WebSocket URL of the relay."""
        return f"ws://127.0.0.1:{self.relay.port}"

    def ga_url(self, model: str = POOLED) -> str:
        """URL of a GA-family session on the relay."""
        return f"{self.ws}/openai/v1/realtime?model={model}"

    def preview_url(self, deployment: str = SINGLE) -> str:
        """URL of a preview-family session on the relay."""
        return f"{self.ws}/openai/realtime?api-version=2025-04-01-preview&deployment={deployment}"

    def attempts(self, index: int) -> list[int]:
        """Statuses simulator ``index`` answered, in order (101: upgraded)."""
        return [record.status for record in self.simulators[index].stats.handshakes]

    def sample(self, name: str, **labels: str) -> float | None:
        """The current value of one metric sample."""
        return self.registry.get_sample_value(name, labels)

    def connects(self, index: int, result: str) -> float | None:
        """``relay_upstream_connect_total`` of pooled upstream ``index``."""
        return self.sample(
            "relay_upstream_connect_total", upstream=upstream_name(index), result=result
        )

    def breaker(self, index: int) -> float | None:
        """``relay_upstream_breaker_state`` of pooled upstream ``index``."""
        return self.sample(
            "relay_upstream_breaker_state", upstream=upstream_name(index)
        )

    async def settle(self) -> None:
        """Wait until the relay handles no connection and no simulator has one open."""
        async with asyncio.timeout(10 * SECOND):
            await self.relay.app.endpoint.wait_connections(0)
        for simulator in self.simulators:
            await simulator.wait_idle(timeout=10 * SECOND)


@contextlib.asynccontextmanager
async def pool_stack(
    count: int = 2,
    *,
    weights: Sequence[int] | None = None,
    urls: dict[int, str] | None = None,
    failover: FailoverSettings | None = None,
    random: Callable[[], float] = lambda: 0.0,
    connect_timeout: float = 5.0,
    **changes: Any,
) -> AsyncIterator[PoolStack]:
    """Start ``count`` simulators and a relay failing over between them.

    Upstream ``i`` of :data:`POOLED` is simulator ``i`` under the upstream
    deployment name ``pool-<i>``, unless ``urls`` points it elsewhere (a closed
    port). :data:`SINGLE` stays on the top-level upstream, simulator 0. The
    random source defaults to 0: attempts follow the configured order.
    ``changes`` go to :func:`~tests.helpers.servers.make_settings`.
    """
    async with contextlib.AsyncExitStack() as stack:
        simulators = [
            await stack.enter_async_context(
                Simulator.start(
                    host="127.0.0.1",
                    port=0,
                    api_keys={UPSTREAM_KEY},
                    audio_speed=None,  # Unpaced: these tests need speed.
                )
            )
            for _ in range(count)
        ]
        targets = tuple(
            UpstreamTarget(
                name=upstream_name(index),
                endpoint=url,
                ws_base=url.replace("http://", "ws://"),
                upstream_deployment=f"pool-{index}",
                auth=ApiKeyAuth(
                    api_key_env="AZURE_OPENAI_API_KEY", api_key=UPSTREAM_KEY
                ),
                weight=weights[index] if weights else 1,
                connect_timeout=connect_timeout,
            )
            for index, url in enumerate(
                (urls or {}).get(index, simulator.url)
                for index, simulator in enumerate(simulators)
            )
        )
        base = make_settings(simulators[0].url, connect_timeout=connect_timeout)
        settings = make_settings(
            simulators[0].url,
            connect_timeout=connect_timeout,
            deployments=MappingProxyType(
                {
                    SINGLE: base.deployments[SINGLE],
                    POOLED: DeploymentSettings(POOLED, upstreams=targets),
                }
            ),
            failover=failover or FailoverSettings(),
            **changes,
        )
        registry = CollectorRegistry()
        relay = await stack.enter_async_context(
            running_relay(settings, registry=registry)
        )
        relay.app.endpoint.upstreams.random = random
        yield PoolStack(simulators, relay, settings, registry)
