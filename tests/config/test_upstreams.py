"""Configuration of where sessions go: upstream pools, the top-level upstream, failover."""

from __future__ import annotations

import hashlib
import textwrap
from types import MappingProxyType

import pytest

from relay.config import (
    ApiKeyAuth,
    DeploymentSettings,
    EntraAuth,
    FailoverSettings,
    ListenSettings,
    MetricsSettings,
    Settings,
    parse_settings,
)
from relay.exceptions import ConfigError


HEX = hashlib.sha256(b"client-key").hexdigest()
ENV = {"AZURE_SWEDEN_KEY": "sweden-secret", "AZURE_OPENAI_API_KEY": "top-secret"}
CLIENTS = f'clients: [{{id: app-a, key_sha256: "{HEX}"}}]\n'
# The issue's example, as written (no top-level upstream: every deployment lists its own).
ISSUE_EXAMPLE = (
    """
deployments:
  gpt-realtime:
    upstreams:                 # several upstreams: failover at session start
      - {endpoint: https://eastus2-res.openai.azure.com, upstream_deployment: gpt-realtime, auth: {type: entra}}
      - {endpoint: https://sweden-res.openai.azure.com, upstream_deployment: gpt-realtime,
         auth: {type: api_key, api_key_env: AZURE_SWEDEN_KEY}, weight: 2}
"""
    + CLIENTS
)
TOP = "upstream: {endpoint: https://top.openai.azure.com, auth: {type: api_key, api_key_env: AZURE_OPENAI_API_KEY}, connect_timeout: 4}\n"
POOL = """
deployments:
  pooled:
    upstreams:
      - {endpoint: https://a.openai.azure.com, auth: {type: entra}}
      - {endpoint: https://b.openai.azure.com, auth: {type: entra}, connect_timeout: 2}
  single: {upstream_deployment: single-prod}
"""


def parse(text: str, env: dict[str, str] | None = None) -> Settings:
    return parse_settings(
        textwrap.dedent(text), source="relay.yaml", environ=ENV if env is None else env
    )


def test_issue_example_loads_as_written() -> None:
    """Two upstreams, Entra and a key from the environment, weights 1 and 2."""
    settings = parse(ISSUE_EXAMPLE)
    assert settings.upstream is None
    east, sweden = settings.upstream_targets("gpt-realtime")
    assert (east.name, east.ws_base, east.upstream_deployment, east.weight) == (
        "gpt-realtime/0",
        "wss://eastus2-res.openai.azure.com",
        "gpt-realtime",
        1,
    )
    assert east.auth == EntraAuth()
    assert (sweden.name, sweden.ws_base, sweden.weight) == (
        "gpt-realtime/1",
        "wss://sweden-res.openai.azure.com",
        2,
    )
    assert sweden.auth == ApiKeyAuth("AZURE_SWEDEN_KEY", "sweden-secret")
    assert (east.connect_timeout, east.credential_timeout) == (10.0, 10.0)
    assert not east.inherited
    assert settings.failover == FailoverSettings()
    assert "sweden-secret" not in repr(settings)


def test_pools_and_the_top_level_upstream_side_by_side() -> None:
    """Listed upstreams inherit the top-level timeouts; others use the top-level upstream."""
    settings = parse(TOP + POOL + CLIENTS)
    a, b = settings.upstream_targets("pooled")
    assert (a.upstream_deployment, a.connect_timeout, b.connect_timeout) == (
        "pooled",
        4.0,
        2.0,
    )
    (single,) = settings.upstream_targets("single")
    assert single.name == "single/0"
    assert single.ws_base == "wss://top.openai.azure.com"
    assert single.upstream_deployment == "single-prod"
    assert single.connect_timeout == 4.0
    assert single.inherited
    assert settings.deployments["single"].upstream_deployment == "single-prod"
    assert settings.deployments["pooled"].upstream_deployment is None


def test_failover_section() -> None:
    """Breaker knobs are read and default sensibly."""
    settings = parse(
        ISSUE_EXAMPLE
        + "failover: {failures_to_open: 5, cooldown_seconds: 2.5, max_retry_after_seconds: 0}"
    )
    assert settings.failover == FailoverSettings(
        failures_to_open=5, cooldown_seconds=2.5, max_retry_after_seconds=0.0
    )


def test_settings_built_in_code_are_checked_too() -> None:
    """Without a top-level upstream, a deployment needs its own upstreams."""
    with pytest.raises(ConfigError, match="code: upstream: missing"):
        Settings(
            source="code",
            listen=ListenSettings(),
            metrics=MetricsSettings(),
            upstream=None,
            deployments=MappingProxyType({"x": DeploymentSettings("x")}),
            clients=(),
        )
    targets = parse(ISSUE_EXAMPLE).upstream_targets("gpt-realtime")
    with pytest.raises(ValueError, match="exclude each other"):
        DeploymentSettings("x", "y", upstreams=targets)


UPSTREAMS = "deployments.gpt-realtime.upstreams"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            POOL + CLIENTS,
            "upstream: missing, expected a mapping (deployment 'single' lists no upstreams)",
        ),
        (CLIENTS, "upstream: missing, expected a mapping (or upstreams on every"),
        (
            ISSUE_EXAMPLE.replace(
                "upstreams:  ", "upstream_deployment: x\n    upstreams:"
            ),
            "deployments.gpt-realtime.upstream_deployment: expected no upstream_deployment "
            "beside upstreams",
        ),
        (
            "deployments: {gpt-realtime: {upstreams: []}}\n" + CLIENTS,
            f"{UPSTREAMS}: expected a non-empty list of upstreams",
        ),
        (
            "deployments: {gpt-realtime: {upstreams: {a: 1}}}\n" + CLIENTS,
            f"{UPSTREAMS}: expected a list, got a mapping",
        ),
        (
            "deployments: {gpt-realtime: {upstreams: [x]}}\n" + CLIENTS,
            f"{UPSTREAMS}[0]: expected a mapping",
        ),
        (
            "deployments: {gpt-realtime: {upstreams: ["
            + ", ".join(
                f"{{endpoint: 'https://r{i}.openai.azure.com', auth: {{type: entra}}}}"
                for i in range(17)
            )
            + "]}}\n"
            + CLIENTS,
            f"{UPSTREAMS}: expected at most 16 upstreams",
        ),
        (
            ISSUE_EXAMPLE.replace(
                "{endpoint: https://eastus2-res.openai.azure.com, ", "{"
            ),
            f"{UPSTREAMS}[0].endpoint: missing, expected an http(s) or ws(s) URL",
        ),
        (
            ISSUE_EXAMPLE.replace("https://eastus2-res", "ftp://eastus2-res"),
            f"{UPSTREAMS}[0].endpoint: expected an http(s) or ws(s) URL",
        ),
        (
            ISSUE_EXAMPLE.replace(
                "https://eastus2-res.openai.azure.com", "https://u:p@x"
            ),
            f"{UPSTREAMS}[0].endpoint: expected an http(s) or ws(s) URL with a host and "
            "no path, query or credentials",
        ),
        (
            ISSUE_EXAMPLE.replace("upstream_deployment: gpt-realtime, auth", "auth", 1)
            .replace("upstream_deployment: gpt-realtime,\n", "\n")
            .replace("sweden-res", "eastus2-res"),
            f"{UPSTREAMS}[1].endpoint: expected an upstream not listed before "
            "(upstreams[0] has the same endpoint and upstream_deployment)",
        ),
        (
            ISSUE_EXAMPLE.replace("upstream_deployment: gpt-realtime, auth", "auth", 1),
            "",  # same endpoint twice is fine with different deployments: no error
        ),
        (
            ISSUE_EXAMPLE.replace(
                "upstream_deployment: gpt-realtime, auth",
                "upstream_deployment: 'a&b', auth",
                1,
            ),
            f"{UPSTREAMS}[0].upstream_deployment: expected a deployment name",
        ),
        (
            ISSUE_EXAMPLE.replace(", auth: {type: entra}", ""),
            f"{UPSTREAMS}[0].auth: missing, expected a mapping with a type",
        ),
        (
            ISSUE_EXAMPLE.replace("{type: entra}", "{type: magic}"),
            f"{UPSTREAMS}[0].auth.type: expected one of api_key, entra",
        ),
        (
            ISSUE_EXAMPLE.replace(
                "api_key_env: AZURE_SWEDEN_KEY", "api_key_env: 'A B'"
            ),
            f"{UPSTREAMS}[1].auth.api_key_env: expected an environment variable name",
        ),
        (
            ISSUE_EXAMPLE.replace("AZURE_SWEDEN_KEY", "UNSET_KEY"),
            f"{UPSTREAMS}[1].auth.api_key_env: environment variable UNSET_KEY is unset or empty",
        ),
        (
            ISSUE_EXAMPLE.replace("weight: 2", "weight: 0"),
            f"{UPSTREAMS}[1].weight: expected an integer from 1 to 100, got number 0",
        ),
        (
            ISSUE_EXAMPLE.replace("weight: 2", "weight: 1.5"),
            f"{UPSTREAMS}[1].weight: expected an integer from 1 to 100",
        ),
        (
            ISSUE_EXAMPLE.replace("weight: 2", "weight: 2, connect_timeout: 0"),
            f"{UPSTREAMS}[1].connect_timeout: expected a number from 0.1 to 120",
        ),
        (
            ISSUE_EXAMPLE.replace("weight: 2", "weight: 2, region: sweden"),
            f"{UPSTREAMS}[1].region: unknown key",
        ),
        (
            ISSUE_EXAMPLE + "failover: {failures_to_open: 0}",
            "failover.failures_to_open: expected an integer from 1 to 100",
        ),
        (
            ISSUE_EXAMPLE + "failover: {cooldown_seconds: 0}",
            "failover.cooldown_seconds: expected a number from 0.1 to 3600",
        ),
        (
            ISSUE_EXAMPLE + "failover: {max_retry_after_seconds: -1}",
            "failover.max_retry_after_seconds: expected a number from 0 to 3600",
        ),
        (
            ISSUE_EXAMPLE + "failover: {cooldown: 5}",
            "failover.cooldown: unknown key",
        ),
    ],
)
def test_errors_name_the_file_the_key_and_the_expectation(
    text: str, message: str
) -> None:
    """Every invalid value is refused with a message an operator can act on."""
    if not message:
        parse(text)
        return
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert str(info.value).startswith("relay.yaml: ")
    assert message in str(info.value)
    assert "sweden-secret" not in str(info.value)


def test_missing_environment_variable_is_named() -> None:
    """The example needs AZURE_SWEDEN_KEY; without it, the error says so."""
    with pytest.raises(ConfigError, match="AZURE_SWEDEN_KEY is unset or empty"):
        parse(ISSUE_EXAMPLE, env={})


def test_each_deployment_says_which_protocol_its_upstreams_speak() -> None:
    """ga by default (Azure documents only the GA endpoint); preview kept on request."""
    settings = parse(
        TOP
        + CLIENTS
        + """
deployments:
  new: {}
  old: {upstream_protocol: preview}
  pooled:
    upstream_protocol: ga
    upstreams: [{endpoint: https://a.openai.azure.com, auth: {type: entra}}]
"""
    )
    assert {name: d.upstream_protocol for name, d in settings.deployments.items()} == {
        "new": "ga",
        "old": "preview",
        "pooled": "ga",
    }


# (null, as everywhere in the configuration, means "not set": the default.)
@pytest.mark.parametrize("value", ["GA", "v1", "''", "5", "[ga]", "{a: 1}", "true"])
def test_an_unknown_upstream_protocol_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(TOP + CLIENTS + f"deployments: {{d: {{upstream_protocol: {value}}}}}\n")
    assert str(info.value).startswith(
        "relay.yaml: deployments.d.upstream_protocol: expected one of ga, preview, got"
    )
