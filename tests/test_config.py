"""Configuration parsing: the documented example, defaults, and every kind of error."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from relay.config import ApiKeyAuth, EntraAuth, load_settings, parse_settings
from relay.exceptions import ConfigError


HEX = hashlib.sha256(b"client-key").hexdigest()
ENV = {"AZURE_OPENAI_API_KEY": "upstream-secret"}
ISSUE_EXAMPLE = f"""
listen: {{host: 127.0.0.1, port: 8080}}
metrics: {{port: 9464}}            # /metrics on its own listener
upstream:
  endpoint: http://127.0.0.1:9000   # https://<resource>.openai.azure.com in production (http->ws, https->wss)
  auth: {{type: api_key, api_key_env: AZURE_OPENAI_API_KEY}}   # or {{type: entra}}
deployments:
  gpt-4o-realtime-preview: {{}}                       # upstream deployment of the same name
  gpt-realtime: {{upstream_deployment: gpt-realtime-prod}}
clients:
  - id: app-a
    key_sha256: "{HEX}"
"""
MINIMAL = f"""
upstream: {{endpoint: https://res.openai.azure.com, auth: {{type: entra}}}}
deployments: {{gpt-realtime: }}
clients: [{{id: app-a, key_sha256: "{HEX}"}}]
"""


def parse(text: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_settings(
        textwrap.dedent(text), source="relay.yaml", environ=ENV if env is None else env
    )


def test_issue_example_loads_as_written() -> None:
    """The foundation issue's example works exactly as written."""
    settings = parse(ISSUE_EXAMPLE)
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9464)
    assert settings.upstream.ws_base == "ws://127.0.0.1:9000"
    assert isinstance(settings.upstream.auth, ApiKeyAuth)
    assert settings.upstream.auth.api_key == "upstream-secret"
    assert (
        settings.deployments["gpt-4o-realtime-preview"].upstream_deployment
        == "gpt-4o-realtime-preview"
    )
    assert (
        settings.deployments["gpt-realtime"].upstream_deployment == "gpt-realtime-prod"
    )
    assert settings.clients[0].id == "app-a"
    assert settings.clients[0].key_sha256 == (bytes.fromhex(HEX),)


def test_defaults_and_entra() -> None:
    """Everything but upstream, deployments and clients has a default."""
    settings = parse(MINIMAL, env={})
    assert settings.upstream.ws_base == "wss://res.openai.azure.com"
    assert settings.upstream.auth == EntraAuth()
    assert settings.limits.max_message_bytes == 16 * 1024 * 1024
    assert settings.flow.ping_interval == 20.0
    assert settings.log.format == "json"
    assert settings.deployments["gpt-realtime"].upstream_deployment == "gpt-realtime"


def test_secrets_stay_out_of_repr() -> None:
    """Neither the upstream key nor client digests appear when settings are printed."""
    text = repr(parse(ISSUE_EXAMPLE))
    assert "upstream-secret" not in text
    assert HEX not in text


def test_optional_sections() -> None:
    """Limits, flow and log settings are read and validated."""
    settings = parse(
        MINIMAL
        + """
limits: {max_message_bytes: 1048576}
flow: {buffer_bytes: 65536, ping_interval: null, ping_timeout: 5, close_timeout: 2}
log: {format: console, level: debug}
"""
    )
    assert settings.limits.max_message_bytes == 1048576
    assert settings.flow.buffer_bytes == 65536
    assert settings.flow.ping_interval is None
    assert settings.flow.ping_timeout == 5.0
    assert settings.log.format == "console"
    assert settings.log.level == "debug"


def test_key_lists_for_rotation() -> None:
    """A client may list several key digests."""
    other = hashlib.sha256(b"other").hexdigest()
    settings = parse(MINIMAL.replace(f'"{HEX}"', f'["{HEX}", "{other.upper()}"]'))
    assert len(settings.clients[0].key_sha256) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("upstream: [", "invalid YAML"),
        ("- a list", "(top level): expected a mapping"),
        (MINIMAL + "surprise: 1", "surprise: unknown key"),
        (MINIMAL + "deployments: {}", "duplicate key 'deployments'"),
        (MINIMAL.replace("upstream:", "upstream_:"), "upstream: missing"),
        (
            MINIMAL + "listen: {port: 70000}",
            "listen.port: expected an integer from 0 to 65535, got number 70000",
        ),
        (MINIMAL + "listen: {port: '8080'}", "listen.port: expected an integer"),
        (
            MINIMAL + "listen: {port: true}",
            "listen.port: expected an integer from 0 to 65535, got boolean true",
        ),
        (MINIMAL + "listen: {prot: 1}", "listen.prot: unknown key"),
        (
            MINIMAL + "listen: {port: 9464}",
            "metrics.port: expected a port other than listen.port",
        ),
        (MINIMAL + "metrics: {port: -1}", "metrics.port: expected an integer"),
        (
            MINIMAL.replace("https://res.openai.azure.com", "ftp://x"),
            "upstream.endpoint: expected an http(s)",
        ),
        (
            MINIMAL.replace("https://res.openai.azure.com", "https://res/openai"),
            "upstream.endpoint",
        ),
        (
            MINIMAL.replace("https://res.openai.azure.com", "https://u:p@res"),
            "upstream.endpoint",
        ),
        (
            MINIMAL.replace("https://res.openai.azure.com", "https://res:99999"),
            "upstream.endpoint",
        ),
        (
            MINIMAL.replace("https://res.openai.azure.com", "'https://res?x=1'"),
            "upstream.endpoint",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: magic}"),
            "upstream.auth.type: expected one of api_key, entra",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: api_key}"),
            "upstream.auth.api_key_env: missing",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: api_key, api_key_env: 'A B'}"),
            "expected an environment variable name",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: api_key, api_key_env: UNSET}"),
            "environment variable UNSET is unset or empty",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: entra, secret: x}"),
            "upstream.auth.secret: unknown key",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: entra}, connect_timeout: 0"),
            "upstream.connect_timeout: expected a number from 0.1 to 120",
        ),
        (
            MINIMAL.replace("{type: entra}", "{type: entra}, connect_timeout: .nan"),
            "upstream.connect_timeout: expected a number",
        ),
        (
            MINIMAL.replace("deployments: {gpt-realtime: }", "deployments: {}"),
            "deployments: expected at least one deployment",
        ),
        (
            MINIMAL.replace("deployments: {gpt-realtime: }", "deployments: [a]"),
            "deployments: expected a mapping",
        ),
        (
            MINIMAL.replace("gpt-realtime: }", "'bad name': }"),
            "deployments.bad name: expected a deployment name",
        ),
        (
            MINIMAL.replace(
                "gpt-realtime: }", "gpt-realtime: {upstream_deployment: 'a&b'}}"
            ),
            "upstream_deployment: expected a deployment name",
        ),
        (
            MINIMAL.replace("gpt-realtime: }", "gpt-realtime: {model: x}}"),
            "deployments.gpt-realtime.model: unknown key",
        ),
        (
            MINIMAL.replace("gpt-realtime: }", "gpt-realtime: 3}"),
            "deployments.gpt-realtime: expected a mapping",
        ),
        (
            MINIMAL.replace(f'[{{id: app-a, key_sha256: "{HEX}"}}]', "[]"),
            "clients: expected at least one client",
        ),
        (
            MINIMAL.replace(f'[{{id: app-a, key_sha256: "{HEX}"}}]', "{}"),
            "clients: expected a list",
        ),
        (
            MINIMAL.replace(f'key_sha256: "{HEX}"', "key_sha256: abc"),
            "clients[0].key_sha256: expected a SHA-256 hex digest",
        ),
        (
            MINIMAL.replace(f'key_sha256: "{HEX}"', "key_sha256: []"),
            "clients[0].key_sha256: expected at least one",
        ),
        (
            MINIMAL.replace(f'key_sha256: "{HEX}"', f'key_sha256: ["{HEX}", 5]'),
            "clients[0].key_sha256[1]: expected a SHA-256",
        ),
        (
            MINIMAL.replace(f'key_sha256: "{HEX}"', f'key_sha256: ["{HEX}", "{HEX}"]'),
            "expected distinct digests",
        ),
        (
            MINIMAL.replace("id: app-a", "id: 'a b'"),
            "clients[0].id: expected a client id",
        ),
        (
            MINIMAL.replace("id: app-a", "id: 7"),
            "clients[0].id: expected a non-empty string, got number 7",
        ),
        (MINIMAL.replace("id: app-a, ", ""), "clients[0].id: missing"),
        (
            MINIMAL.replace("]", f', {{id: app-a, key_sha256: "{"0" * 64}"}}]'),
            "clients[1].id: expected a client id not used",
        ),
        (
            MINIMAL.replace("]", f', {{id: app-b, key_sha256: "{HEX}"}}]'),
            "clients[1].key_sha256: expected keys not shared with client 'app-a'",
        ),
        (
            MINIMAL.replace("}]", ", policy: x}]"),
            "clients[0].policy: expected the name of a configured policy (none configured)",
        ),
        (
            MINIMAL + "limits: {max_message_bytes: 10}",
            "limits.max_message_bytes: expected an integer from 65536",
        ),
        (
            MINIMAL + "flow: {buffer_bytes: 1.5}",
            "flow.buffer_bytes: expected an integer",
        ),
        (
            MINIMAL + "flow: {ping_interval: -3}",
            "flow.ping_interval: expected a number from 0.1",
        ),
        (MINIMAL + "log: {format: xml}", "log.format: expected one of json, console"),
        (
            MINIMAL + "log: {level: verbose}",
            "log.level: expected one of debug, info, warning, error",
        ),
        (MINIMAL + "log: {1: x}", "log: expected string keys"),
    ],
)
def test_errors_name_the_file_the_key_and_the_expectation(
    text: str, message: str
) -> None:
    """Every invalid value is refused with a message an operator can act on."""
    with pytest.raises(ConfigError) as info:
        parse(text, env={})
    assert str(info.value).startswith("relay.yaml: ")
    assert message in str(info.value)


def test_load_settings_reads_a_file(tmp_path: Path) -> None:
    """load_settings reads the file and names it in errors."""
    path = tmp_path / "relay.yaml"
    path.write_text(ISSUE_EXAMPLE)
    assert load_settings(path, ENV).source == str(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", ENV)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(path, ENV)


def test_empty_file_names_the_first_missing_key() -> None:
    """An empty file is a mapping with nothing in it."""
    with pytest.raises(ConfigError, match="upstream: missing"):
        parse("")
