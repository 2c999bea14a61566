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
    assert settings.limits.header_timeout == 10.0
    assert {client.drain_notice for client in settings.clients} == {"event"}


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


def test_reload_section() -> None:
    """Live sessions are untouched by default; the reload section can reach them."""
    settings = parse(MINIMAL)
    assert settings.reload.policy_reload == "new_sessions"
    assert settings.reload.removed_client_grace_seconds is None
    settings = parse(
        MINIMAL
        + "reload: {policy_reload: all_sessions, removed_client_grace_seconds: 0}"
    )
    assert settings.reload.policy_reload == "all_sessions"
    assert settings.reload.removed_client_grace_seconds == 0.0
    settings = parse(MINIMAL + "reload: {removed_client_grace_seconds: null}")
    assert settings.reload.removed_client_grace_seconds is None


def test_listen_tls() -> None:
    """listen.tls names the files; parsing does not read them (start-up does)."""
    assert parse(MINIMAL).listen.tls is None
    settings = parse(
        MINIMAL
        + "listen: {tls: {cert_file: /tls/tls.crt, key_file: /tls/tls.key,"
        + " client_ca_file: /ca/ca.crt, reload_interval: 30}}"
    )
    tls = settings.listen.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        "/tls/tls.crt",
        "/tls/tls.key",
        "/ca/ca.crt",
    )
    assert tls.reload_interval == 30
    default = parse(MINIMAL + "listen: {tls: {cert_file: c, key_file: k}}").listen.tls
    assert default is not None
    assert (default.client_ca_file, default.reload_interval) == (None, 5.0)


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
            MINIMAL + "listen: {tls: {key_file: k.pem}}",
            "listen.tls.cert_file: missing, expected a path to a PEM certificate chain",
        ),
        (
            MINIMAL + "listen: {tls: {cert_file: c.pem}}",
            "listen.tls.key_file: missing, expected a path to a PEM private key",
        ),
        (
            MINIMAL + "listen: {tls: {cert_file: c.pem, key_file: k.pem, ca_file: x}}",
            "listen.tls.ca_file: unknown key",
        ),
        (
            MINIMAL
            + "listen: {tls: {cert_file: c.pem, key_file: k.pem, reload_interval: 0}}",
            "listen.tls.reload_interval: expected a number from 1 to 3600",
        ),
        (MINIMAL + "listen: {tls: yes}", "listen.tls: expected a mapping"),
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
        (
            MINIMAL + "limits: {header_timeout: 0.5}",
            "limits.header_timeout: expected a number from 1 to 120",
        ),
        (
            MINIMAL + "limits: {header_timeout: 1e9}",
            "limits.header_timeout: expected a number from 1 to 120",
        ),
        (MINIMAL + "log: {format: xml}", "log.format: expected one of json, console"),
        (
            MINIMAL + "log: {level: verbose}",
            "log.level: expected one of debug, info, warning, error",
        ),
        (MINIMAL + "log: {1: x}", "log: expected string keys"),
        (
            MINIMAL + "reload: {policy_reload: everything}",
            "reload.policy_reload: expected one of new_sessions, all_sessions",
        ),
        (
            MINIMAL + "reload: {removed_client_grace_seconds: -1}",
            "reload.removed_client_grace_seconds: expected a number from 0 to 86400",
        ),
        (
            MINIMAL + "reload: {removed_client_grace_seconds: soon}",
            "reload.removed_client_grace_seconds: expected a number",
        ),
        (MINIMAL + "reload: {policy: all_sessions}", "reload.policy: unknown key"),
        (MINIMAL + "reload: [all_sessions]", "reload: expected a mapping"),
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


HEX2 = hashlib.sha256(b"client-key-2").hexdigest()
IDENTITY_EXAMPLE = f"""
upstream: {{endpoint: https://res.openai.azure.com, auth: {{type: entra}}}}
deployments: {{gpt-realtime: }}
auth:
  jwt:                                   # optional; static keys keep working beside it
    jwks_url: https://login.example.com/.well-known/jwks.json
    issuer: https://login.example.com/
    audience: realtime-relay
    client_claim: azp                    # the claim whose value is a client id below
clients:
  - id: app-a
    key_sha256: ["{HEX}", "{HEX2}"]   # a string or a list
    limits: {{max_sessions: 2, sessions_per_minute: 30, max_session_seconds: 1800, idle_seconds: 60}}
    allowed_origins: []                  # none: any Origin header is refused
limits:
  backend: memory                        # memory | redis
  redis_url: redis://127.0.0.1:6379/0
  max_sessions: 500                      # per replica
"""


def test_identity_example_loads_as_written() -> None:
    """The identity issue's example works exactly as written."""
    settings = parse(IDENTITY_EXAMPLE, env={})
    assert settings.jwt is not None
    assert (settings.jwt.issuer, settings.jwt.audience, settings.jwt.client_claim) == (
        "https://login.example.com/",
        "realtime-relay",
        "azp",
    )
    assert settings.jwt.algorithms == ("RS256",)
    client = settings.clients[0]
    assert len(client.key_sha256) == 2
    assert (client.limits.max_sessions, client.limits.sessions_per_minute) == (2, 30)
    assert (client.limits.max_session_seconds, client.limits.idle_seconds) == (1800, 60)
    assert client.allowed_origins == frozenset()
    assert (settings.limits.backend, settings.limits.max_sessions) == ("memory", 500)
    assert "redis://" not in repr(settings)


def test_client_options() -> None:
    """Query auth, origins, deployments and every limit can be set per client; JWT-only clients need no key."""
    text = (
        IDENTITY_EXAMPLE.replace(
            "allowed_origins: []",
            "allowed_origins: [https://App.Example.com:8443]\n    allow_query_auth: false\n    deployments: [gpt-realtime]\n    drain_notice: error",
        ).replace(
            "idle_seconds: 60",
            "idle_seconds: 60, messages_per_second: 80, bytes_per_second: 131072,"
            " burst_bytes: 262144",
        )
        + "  failure_mode: fail_open\n  lease_seconds: 10\n  handshake_timeout: 5\n"
        + "  header_timeout: 3.5\n"
    )
    settings = parse(text, env={})
    client = settings.clients[0]
    assert client.allowed_origins == {"https://app.example.com:8443"}
    assert client.allow_query_auth is False
    assert client.deployments == {"gpt-realtime"}
    assert client.drain_notice == "error"
    assert (
        client.limits.messages_per_second,
        client.limits.bytes_per_second,
        client.limits.burst_bytes,
    ) == (80, 131072, 262144)
    assert (
        settings.limits.failure_mode,
        settings.limits.lease_seconds,
        settings.limits.handshake_timeout,
        settings.limits.header_timeout,
    ) == ("fail_open", 10, 5, 3.5)
    jwt_only = parse(
        IDENTITY_EXAMPLE.replace(
            f'key_sha256: ["{HEX}", "{HEX2}"]   # a string or a list', ""
        ),
        env={},
    )
    assert jwt_only.clients[0].key_sha256 == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            (
                "jwks_url: https://login.example.com/.well-known/jwks.json",
                "jwks_url: http://login.example.com/jwks",
            ),
            "auth.jwt.jwks_url: expected an https URL (http only for a loopback host)",
        ),
        (
            ("client_claim: azp", "client_claim: azp\n    algorithms: [none]"),
            "auth.jwt.algorithms[0]: expected one of RS256",
        ),
        (
            ("client_claim: azp", "client_claim: azp\n    algorithms: [HS256]"),
            "auth.jwt.algorithms[0]: expected one of RS256",
        ),
        (
            ("client_claim: azp", "client_claim: azp\n    leeway: 3600"),
            "auth.jwt.leeway: expected a number from 0 to 300",
        ),
        (
            ("audience: realtime-relay", "audience: 7"),
            "auth.jwt.audience: expected a non-empty string",
        ),
        (("issuer: https://login.example.com/", ""), "auth.jwt.issuer: missing"),
        (
            ("client_claim: azp", "client_claim: azp\n    jwks: x"),
            "auth.jwt.jwks: unknown key",
        ),
        (
            ("max_sessions: 2,", "max_sessions: 0,"),
            "clients[0].limits.max_sessions: expected an integer from 1",
        ),
        (
            ("idle_seconds: 60", "idle_seconds: -1"),
            "clients[0].limits.idle_seconds: expected a number from 1.0",
        ),
        (
            ("allowed_origins: []", "allowed_origins: []\n    drain_notice: loud"),
            "clients[0].drain_notice: expected one of event, error, none",
        ),
        (
            ("max_session_seconds: 1800", "max_session_seconds: 90000"),
            "clients[0].limits.max_session_seconds: expected a number from 1.0 to 86400.0",
        ),
        (
            ("idle_seconds: 60", "idle_seconds: 60, burst_bytes: 10"),
            "clients[0].limits.burst_bytes: expected",
        ),
        (
            ("idle_seconds: 60", "idle_seconds: 60, burst_bytes: lots"),
            "clients[0].limits.burst_bytes: expected",
        ),
        (
            ("idle_seconds: 60", "idle_seconds: 60, burst: 9"),
            "clients[0].limits.burst: unknown key",
        ),
        (
            ("allowed_origins: []", "allowed_origins: ['*']"),
            "clients[0].allowed_origins[0]: expected an origin",
        ),
        (
            ("allowed_origins: []", "allowed_origins: [https://app.example.com/path]"),
            "clients[0].allowed_origins[0]: expected an origin",
        ),
        (
            ("allowed_origins: []", "allow_query_auth: 'no'"),
            "clients[0].allow_query_auth: expected true or false",
        ),
        (
            ("allowed_origins: []", "deployments: [gpt-4o]"),
            "clients[0].deployments[0]: expected a configured deployment (gpt-realtime)",
        ),
        (
            (
                "backend: memory                        # memory | redis\n  redis_url: redis://127.0.0.1:6379/0",
                "backend: redis",
            ),
            "limits.redis_url: missing",
        ),
        (
            ("backend: memory", "backend: etcd"),
            "limits.backend: expected one of memory, redis",
        ),
        (
            (
                "redis_url: redis://127.0.0.1:6379/0",
                "redis_url: 'http://user:s3cret@host'",
            ),
            "limits.redis_url: expected a redis://",
        ),
        (
            ("max_sessions: 500", "max_sessions: 0"),
            "limits.max_sessions: expected an integer from 1",
        ),
    ],
)
def test_identity_and_limits_errors(change: tuple[str, str], message: str) -> None:
    """Each new key refuses bad values, naming itself; secrets in URLs are never echoed."""
    old, new = change
    assert old in IDENTITY_EXAMPLE
    with pytest.raises(ConfigError) as info:
        parse(IDENTITY_EXAMPLE.replace(old, new), env={})
    assert message in str(info.value)
    assert "s3cret" not in str(info.value)


def test_keyless_client_needs_jwt() -> None:
    """Without auth.jwt every client needs a key."""
    text = MINIMAL.replace(f', key_sha256: "{HEX}"', "")
    with pytest.raises(ConfigError, match=r"clients\[0\]\.key_sha256: missing"):
        parse(text)
