"""Upstream pools: one provider per distinct credential, injection, lifecycle."""

from __future__ import annotations

from types import MappingProxyType

from prometheus_client import CollectorRegistry

from relay.config import (
    ApiKeyAuth,
    DeploymentSettings,
    EntraAuth,
    FailoverSettings,
    Settings,
    UpstreamTarget,
)
from relay.service.credentials import ApiKeyProvider, EntraTokenProvider
from relay.service.metrics import RelayMetrics
from relay.service.pools import UpstreamPools
from relay.service.server import running_relay
from tests.helpers.servers import make_settings


KEY_A = ApiKeyAuth(api_key_env="KEY_A", api_key="secret-a")
KEY_B = ApiKeyAuth(api_key_env="KEY_B", api_key="secret-b")


class RecordingProvider(ApiKeyProvider):
    """An api-key provider that counts how often it was closed."""

    def __init__(self) -> None:
        super().__init__("injected-key")
        self.closed = 0

    async def close(self) -> None:
        """Count, then close as usual."""
        self.closed += 1
        await super().close()


def target(deployment: str, index: int, auth: ApiKeyAuth | EntraAuth) -> UpstreamTarget:
    """Upstream ``index`` of ``deployment`` on a made-up resource."""
    return UpstreamTarget(
        name=f"{deployment}/{index}",
        endpoint=f"https://r{index}.openai.azure.com",
        ws_base=f"wss://r{index}.openai.azure.com",
        upstream_deployment=deployment,
        auth=auth,
    )


def settings_with_pools() -> Settings:
    """Two pooled deployments sharing credentials, and one on the top-level upstream."""
    return make_settings(
        "http://127.0.0.1:1",
        deployments=MappingProxyType(
            {
                "one": DeploymentSettings(
                    "one",
                    upstreams=(
                        target("one", 0, KEY_A),
                        target("one", 1, KEY_B),
                        target("one", 2, EntraAuth()),
                    ),
                ),
                "two": DeploymentSettings(
                    "two",
                    upstreams=(target("two", 0, KEY_A), target("two", 1, EntraAuth())),
                ),
                "top": DeploymentSettings("top", "top-prod"),
            }
        ),
        failover=FailoverSettings(failures_to_open=4, cooldown_seconds=7.0),
    )


def test_identical_credentials_share_one_provider() -> None:
    """Key A, key B, one Entra identity and the top-level key: four providers."""
    pools = UpstreamPools(
        settings_with_pools(), metrics=RelayMetrics(CollectorRegistry())
    )
    kinds = sorted(type(provider).__name__ for provider in pools.providers)
    assert kinds == [
        "ApiKeyProvider",
        "ApiKeyProvider",
        "ApiKeyProvider",
        "EntraTokenProvider",
    ]
    assert sorted(pools.breakers) == [
        "one/0",
        "one/1",
        "one/2",
        "top/0",
        "two/0",
        "two/1",
    ]
    breaker = pools.breakers["one/0"]
    assert (breaker.failures_to_open, breaker.cooldown) == (4, 7.0)


async def test_an_injected_provider_serves_the_top_level_upstream_only() -> None:
    """Listed upstreams keep their own credentials; close reaches every provider once."""
    injected = RecordingProvider()
    pools = UpstreamPools(
        settings_with_pools(),
        metrics=RelayMetrics(CollectorRegistry()),
        provider=injected,
    )
    assert pools.providers[0] is injected
    assert len(pools.providers) == 4  # key A, key B, Entra, injected
    pools.warm_up()
    await pools.close()
    assert injected.closed == 1
    entra = [p for p in pools.providers if isinstance(p, EntraTokenProvider)]
    assert len(entra) == 1


async def test_the_lifespan_closes_every_provider() -> None:
    """Stopping the relay closes the injected provider with the built ones."""
    injected = RecordingProvider()
    async with running_relay(make_settings("http://127.0.0.1:1"), provider=injected):
        assert injected.closed == 0
    assert injected.closed == 1


def test_breaker_series_exist_from_the_start() -> None:
    """Every upstream's breaker gauge and attempt counters exist at 0."""
    registry = CollectorRegistry()
    UpstreamPools(settings_with_pools(), metrics=RelayMetrics(registry))
    for name in ("one/0", "one/2", "top/0"):
        assert (
            registry.get_sample_value(
                "relay_upstream_breaker_state", {"upstream": name}
            )
            == 0
        )
        assert (
            registry.get_sample_value(
                "relay_upstream_connect_total", {"upstream": name, "result": "ok"}
            )
            == 0
        )
