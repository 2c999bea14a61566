"""The relay's configuration: one YAML file parsed into one frozen :class:`Settings`.

Parsing is pure: the file's text and the environment are passed in, and only
``relay.cli`` reads the real ones. Everything is validated at start-up; every
error names the file, the key path and what was expected, so the process exits
before it listens. Secrets never sit in the file: it names the environment
variables that hold them (``api_key_env``), and resolved secrets are kept out of
``repr`` so they cannot leak through a log line or a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from relay._policies import check_reachable, parse_policies, resolve_policy
from relay._reader import Node, Section, load_yaml
from relay.exceptions import ConfigError
from relay.sansio.policy import EMPTY_POLICY, Policy
from relay.typing import ClientId


__all__ = [
    "ApiKeyAuth",
    "ClientSettings",
    "DeploymentSettings",
    "EntraAuth",
    "FlowSettings",
    "LimitsSettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "Settings",
    "UpstreamSettings",
    "load_settings",
    "parse_settings",
]

MiB = 1024 * 1024
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Deployment names travel in URL query strings; Azure allows letters, digits,
# '-', '_' and '.' (UNVERIFIED beyond the portal's own rules).
_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the WebSocket and health endpoints listen."""

    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Where ``/metrics`` listens: its own port, so it never shares the auth'd listener."""

    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True, slots=True)
class ApiKeyAuth:
    """Authenticate upstream with a resource key sent as the ``api-key`` header."""

    api_key_env: str
    api_key: str = field(repr=False)
    type: Literal["api_key"] = "api_key"


@dataclass(frozen=True, slots=True)
class EntraAuth:
    """Authenticate upstream with a Microsoft Entra ID token (``Authorization: Bearer``).

    ``client_id`` selects a user-assigned managed identity or a workload
    identity's app; ``None`` lets ``DefaultAzureCredential`` decide.
    """

    scope: str = ENTRA_SCOPE
    client_id: str | None = None
    type: Literal["entra"] = "entra"


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The Azure OpenAI resource the relay connects to."""

    endpoint: str
    """As configured, e.g. ``https://res.openai.azure.com``."""
    ws_base: str
    """The WebSocket origin derived from it (``http`` -> ``ws``, ``https`` -> ``wss``)."""
    auth: ApiKeyAuth | EntraAuth
    # Timeouts
    connect_timeout: float = 10.0
    """Bound on the upstream TCP+TLS+WebSocket handshake, in seconds."""
    credential_timeout: float = 10.0
    """Bound on obtaining an Entra token, in seconds."""


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    """A deployment name clients may ask for, and the upstream deployment it maps to."""

    name: str
    upstream_deployment: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """An internal app allowed to open sessions."""

    id: ClientId
    key_sha256: tuple[bytes, ...] = field(repr=False)
    """SHA-256 digests of the client's keys (several, so keys can rotate)."""
    policy: Policy = EMPTY_POLICY
    """The session policy applied to every session of this client."""


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Per-replica limits."""

    max_message_bytes: int = 16 * MiB
    """Largest WebSocket message accepted on either leg; a larger one closes with 1009."""
    policy_timeout: float = 5.0
    """Bound on the upstream confirming the relay's initial ``session.update``, in seconds."""


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """Buffering and keepalive of the two legs."""

    buffer_bytes: int = 1 * MiB
    """Bound on frames queued per direction, per session."""
    ping_interval: float | None = 20.0
    """Seconds between keepalive pings on each leg (``None``: no pings)."""
    ping_timeout: float | None = 20.0
    """Seconds to wait for a pong before the leg is considered dead."""
    close_timeout: float = 1.0
    """Bound on delivering queued frames and the close frame to a closing leg."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Structured logging."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay needs, validated. Build it with :func:`load_settings`."""

    source: str
    listen: ListenSettings
    metrics: MetricsSettings
    upstream: UpstreamSettings
    deployments: Mapping[str, DeploymentSettings]
    clients: tuple[ClientSettings, ...]
    limits: LimitsSettings = LimitsSettings()
    flow: FlowSettings = FlowSettings()
    log: LogSettings = LogSettings()


def load_settings(path: str | Path, environ: Mapping[str, str]) -> Settings:
    """Read and validate the configuration file at ``path``.

    Raises:
        ConfigError: the file is unreadable or invalid; the message names the
            file, the key path and what was expected.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{source}: cannot read the configuration file: {exc}"
        ) from None
    return parse_settings(text, source=source, environ=environ)


def parse_settings(text: str, *, source: str, environ: Mapping[str, str]) -> Settings:
    """Validate a configuration document; see :func:`load_settings`."""
    root = load_yaml(text, source)
    listen = _listen(root.section("listen"))
    metrics = _metrics(root.section("metrics"), listen)
    upstream = _upstream(root.require("upstream", "a mapping").as_section(), environ)
    deployments = _deployments(
        root.require("deployments", "a mapping of deployment names")
    )
    policies_section = root.section("policies")
    policies = parse_policies(policies_section)
    clients = _clients(
        root.require("clients", "a list of clients"), policies, policies_section
    )
    limits = _limits(root.section("limits"))
    flow = _flow(root.section("flow"))
    log = _log(root.section("log"))
    root.finish()
    return Settings(
        source=source,
        listen=listen,
        metrics=metrics,
        upstream=upstream,
        deployments=deployments,
        clients=clients,
        limits=limits,
        flow=flow,
        log=log,
    )


def _listen(section: Section) -> ListenSettings:
    kwargs: dict[str, Any] = {}
    if host := section.get("host"):
        kwargs["host"] = host.as_str()
    if port := section.get("port"):
        kwargs["port"] = port.as_int(minimum=0, maximum=65535)
    section.finish()
    return ListenSettings(**kwargs)


def _metrics(section: Section, listen: ListenSettings) -> MetricsSettings:
    # The metrics listener defaults to the main listener's host.
    kwargs: dict[str, Any] = {"host": listen.host}
    if host := section.get("host"):
        kwargs["host"] = host.as_str()
    port_node = section.get("port")
    if port_node:
        kwargs["port"] = port_node.as_int(minimum=0, maximum=65535)
    section.finish()
    settings = MetricsSettings(**kwargs)
    if settings.port != 0 and settings.port == listen.port:
        where = port_node.path if port_node else "metrics.port"
        raise ConfigError(
            f"{section.source}: {where}: expected a port other than listen.port ({listen.port})"
        )
    return settings


def _env_name(node: Node) -> str:
    name = node.as_str()
    if not _ENV_NAME.fullmatch(name):
        node.fail("an environment variable name")
    return name


def _upstream(section: Section, environ: Mapping[str, str]) -> UpstreamSettings:
    endpoint_node = section.require("endpoint", "an http(s) or ws(s) URL")
    endpoint = endpoint_node.as_str()
    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "ws_base": _ws_base(endpoint_node, endpoint),
        "auth": _auth(
            section.require("auth", "a mapping with a type").as_section(), environ
        ),
    }
    for key in ("connect_timeout", "credential_timeout"):
        if node := section.get(key):
            kwargs[key] = node.as_float(minimum=0.1, maximum=120)
    section.finish()
    return UpstreamSettings(**kwargs)


def _ws_base(node: Node, endpoint: str) -> str:
    expected = "an http(s) or ws(s) URL with a host and no path, query or credentials"
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        node.fail(expected)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if (
        scheme is None
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
    ):
        node.fail(expected)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def _auth(section: Section, environ: Mapping[str, str]) -> ApiKeyAuth | EntraAuth:
    kind = section.require("type", "api_key or entra").as_choice(("api_key", "entra"))
    if kind == "api_key":
        env_node = section.require(
            "api_key_env", "the name of the environment variable holding the key"
        )
        env = _env_name(env_node)
        section.finish()
        key = environ.get(env, "").strip()
        if not key:
            raise ConfigError(
                f"{section.source}: {env_node.path}: environment variable {env} is unset or empty"
            )
        return ApiKeyAuth(api_key_env=env, api_key=key)
    kwargs: dict[str, Any] = {}
    for key in ("scope", "client_id"):
        if node := section.get(key):
            kwargs[key] = node.as_str()
    section.finish()
    return EntraAuth(**kwargs)


def _deployments(node: Node) -> Mapping[str, DeploymentSettings]:
    section = node.as_section()
    deployments: dict[str, DeploymentSettings] = {}
    for name, entry in section.items():
        if not _DEPLOYMENT_NAME.fullmatch(name):
            Node(name, entry.path, entry.source).fail(
                "a deployment name (letters, digits, '.', '_', '-'; at most 64)"
            )
        # `gpt-realtime: {}` and `gpt-realtime:` (null) both mean "same name upstream".
        body = (
            entry.as_section()
            if entry.value is not None
            else Section({}, entry.path, entry.source)
        )
        upstream_name = name
        if target := body.get("upstream_deployment"):
            upstream_name = target.as_str()
            if not _DEPLOYMENT_NAME.fullmatch(upstream_name):
                target.fail(
                    "a deployment name (letters, digits, '.', '_', '-'; at most 64)"
                )
        body.finish()
        deployments[name] = DeploymentSettings(
            name=name, upstream_deployment=upstream_name
        )
    if not deployments:
        node.fail("at least one deployment")
    return MappingProxyType(deployments)


def _clients(
    node: Node, policies: dict[str, Policy], policies_section: Section
) -> tuple[ClientSettings, ...]:
    clients: list[ClientSettings] = []
    owners: dict[bytes, str] = {}
    used: set[str] = set()
    for item in node.as_list():
        section = item.as_section()
        id_node = section.require("id", "a client id")
        client_id = id_node.as_str()
        if not _CLIENT_ID.fullmatch(client_id):
            id_node.fail("a client id (letters, digits, '.', '_', '-'; at most 64)")
        if any(client.id == client_id for client in clients):
            id_node.fail("a client id not used by another client")
        keys_node = section.require(
            "key_sha256", "a SHA-256 hex digest or a list of them"
        )
        digests = _digests(keys_node)
        for digest in digests:
            if digest in owners:
                keys_node.fail(f"keys not shared with client {owners[digest]!r}")
            owners[digest] = client_id
        policy = resolve_policy(policies, section.get("policy"), used)
        section.finish()
        clients.append(
            ClientSettings(id=ClientId(client_id), key_sha256=digests, policy=policy)
        )
    if not clients:
        node.fail("at least one client")
    check_reachable(policies, used, policies_section)
    return tuple(clients)


def _digests(node: Node) -> tuple[bytes, ...]:
    items = node.as_list() if isinstance(node.value, list) else [node]
    if not items:
        node.fail("at least one SHA-256 hex digest")
    digests: list[bytes] = []
    for item in items:
        if not isinstance(item.value, str) or not _SHA256_HEX.fullmatch(item.value):
            item.fail("a SHA-256 hex digest (64 hex characters)")
        digest = bytes.fromhex(item.value)
        if digest in digests:
            item.fail("distinct digests")
        digests.append(digest)
    return tuple(digests)


def _limits(section: Section) -> LimitsSettings:
    kwargs: dict[str, Any] = {}
    if size := section.get("max_message_bytes"):
        kwargs["max_message_bytes"] = size.as_int(minimum=64 * 1024, maximum=64 * MiB)
    if timeout := section.get("policy_timeout"):
        kwargs["policy_timeout"] = timeout.as_float(minimum=0.1, maximum=60)
    section.finish()
    return LimitsSettings(**kwargs)


def _flow(section: Section) -> FlowSettings:
    kwargs: dict[str, Any] = {}
    if node := section.get("buffer_bytes"):
        kwargs["buffer_bytes"] = node.as_int(minimum=64 * 1024, maximum=256 * MiB)
    for key in ("ping_interval", "ping_timeout"):
        # An explicit `null` turns keepalive off; an absent key keeps the default.
        if key in section:
            node = section.get(key)
            kwargs[key] = node.as_float(minimum=0.1, maximum=3600) if node else None
    if node := section.get("close_timeout"):
        kwargs["close_timeout"] = node.as_float(minimum=0.1, maximum=60)
    section.finish()
    return FlowSettings(**kwargs)


def _log(section: Section) -> LogSettings:
    kwargs: dict[str, Any] = {}
    if node := section.get("format"):
        kwargs["format"] = node.as_choice(("json", "console"))
    if node := section.get("level"):
        kwargs["level"] = node.as_choice(("debug", "info", "warning", "error"))
    section.finish()
    return LogSettings(**kwargs)
