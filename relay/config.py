"""The relay's configuration: one YAML file parsed into one frozen :class:`Settings`.

Parsing is pure: the file's text and the environment are passed in, and only
``relay.cli`` reads the real ones. Everything is validated at start-up; every
error names the file, the key path and what was expected, so the process exits
before it listens. Secrets never sit in the file: it names the environment
variables that hold them (``api_key_env``), and resolved secrets are kept out of
``repr`` so they cannot leak through a log line or a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from relay._clients import parse_auth, parse_clients
from relay._policies import parse_policies
from relay._reader import Node, Section, load_yaml
from relay._upstreams import (
    parse_deployments,
    parse_failover,
    parse_upstream,
    require_upstream,
)
from relay.exceptions import ConfigError
from relay.jwt_auth import JwtSettings
from relay.sansio.policy import EMPTY_POLICY, Policy
from relay.typing import ClientId, DrainNotice


__all__ = [
    "ApiKeyAuth",
    "ClientLimits",
    "ClientSettings",
    "DeploymentSettings",
    "DrainSettings",
    "EntraAuth",
    "FailoverSettings",
    "FlowSettings",
    "LimitsSettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "Settings",
    "TlsSettings",
    "UpstreamSettings",
    "UpstreamTarget",
    "load_settings",
    "parse_settings",
]

MiB = 1024 * 1024
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS on the main listener (``listen.tls``); the files are loaded by :mod:`relay.tls`.

    Parsing only checks the shape: whether the files exist, load and match is
    checked at start-up (:func:`relay.tls.check_tls`), before the relay listens.
    """

    cert_file: str
    """PEM certificate chain, the server's certificate first."""
    key_file: str
    """PEM private key of that certificate (unencrypted)."""
    client_ca_file: str | None = None
    """PEM CA certificates; when set, every client must present a certificate
    they issued (mutual TLS), in addition to the relay's key or JWT auth."""
    reload_interval: float = 5.0
    """Seconds between checks of the files; changed files are loaded for new
    handshakes (certificate rotation), established sessions are untouched."""


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Where the WebSocket and health endpoints listen, and whether over TLS."""

    host: str = "127.0.0.1"
    port: int = 8080
    tls: TlsSettings | None = None
    """``None``: plain ``ws://``; otherwise the listener speaks only TLS (``wss://``)."""


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
    """The Azure OpenAI resource of deployments that list no ``upstreams``."""

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
class UpstreamTarget:
    """One upstream a deployment's sessions may start on.

    An entry of the deployment's ``upstreams`` list, or the top-level
    ``upstream`` for a deployment without one (see
    :meth:`Settings.upstream_targets`).
    """

    name: str
    """``<deployment>/<index>``: a bounded name for metrics and logs (never a URL or key)."""
    endpoint: str
    """As configured, e.g. ``https://eastus2-res.openai.azure.com``."""
    ws_base: str
    """The WebSocket origin derived from it (``http`` -> ``ws``, ``https`` -> ``wss``)."""
    upstream_deployment: str
    """The deployment's name on this resource."""
    auth: ApiKeyAuth | EntraAuth
    weight: int = 1
    """Share of first attempts among the deployment's upstreams (1-100)."""
    # Timeouts
    connect_timeout: float = 10.0
    """Bound on one attempt's TCP+TLS+WebSocket handshake, in seconds."""
    credential_timeout: float = 10.0
    """Bound on obtaining this upstream's Entra token, in seconds."""
    inherited: bool = False
    """Built from the top-level ``upstream`` section (the deployment lists no ``upstreams``)."""


@dataclass(frozen=True, slots=True)
class DeploymentSettings:
    """A deployment name clients may ask for, and where its sessions go.

    Either ``upstreams`` lists where (failover at session start), or the
    top-level ``upstream`` serves it as ``upstream_deployment``.
    """

    name: str
    upstream_deployment: str | None = None
    """Its name on the top-level upstream (``None``: ``name``); only without ``upstreams``."""
    upstreams: tuple[UpstreamTarget, ...] = ()
    """Upstreams to fail over between at session start; empty: the top-level ``upstream``."""

    def __post_init__(self) -> None:
        if self.upstreams and self.upstream_deployment is not None:
            raise ValueError(
                f"deployment {self.name!r}: upstream_deployment and upstreams exclude each other"
            )


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """Circuit breakers of upstreams, and how long a ``Retry-After`` may hold one."""

    failures_to_open: int = 3
    """Consecutive failed session starts on an upstream that open its breaker."""
    cooldown_seconds: float = 30.0
    """An open breaker lets one trial session start through after this long."""
    max_retry_after_seconds: float = 300.0
    """Longest ``Retry-After`` (with 429 or 503) honoured by not trying the upstream."""


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """A client's limits (defaults suit one voice app; raise them per client)."""

    max_sessions: int = 20
    """Concurrent sessions (across replicas with ``limits.backend: redis``)."""
    sessions_per_minute: int = 60
    """Session starts in any rolling minute."""
    max_session_seconds: float = 3600.0
    """Longest session. Never later than just before Azure's own cap: the
    ``expires_at`` Azure states in ``session.created`` (60 minutes in 2026)."""
    idle_seconds: float = 120.0
    """A session with no client event for this long is closed."""
    messages_per_second: float = 200.0
    """Sustained inbound messages per second, per session (20 ms audio is 50)."""
    bytes_per_second: int = 1 * MiB
    """Sustained inbound bytes per second, per session (PCM16 24 kHz is 64 KB as base64)."""
    burst_bytes: int = 4 * MiB
    """What the byte bucket holds: an image of a few MB passes and the audio after
    it still flows. Deliberately below ``limits.max_message_bytes``: a larger
    message passes only while the session is not in debt, and the messages
    after it wait until the rate has repaid it."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """An internal app allowed to open sessions."""

    id: ClientId
    key_sha256: tuple[bytes, ...] = field(default=(), repr=False)
    """SHA-256 digests of the client's keys (several, so keys can rotate; none: JWT only)."""
    policy: Policy = EMPTY_POLICY
    """The session policy applied to every session of this client."""
    limits: ClientLimits = ClientLimits()
    allow_query_auth: bool = True
    """Whether credentials in the query string are accepted (browser-style clients)."""
    allowed_origins: frozenset[str] = frozenset()
    """``Origin`` values accepted; server-to-server callers send none."""
    deployments: frozenset[str] | None = None
    """Deployments this client may use; ``None``: all configured ones."""
    drain_notice: DrainNotice = "event"
    """How the client's sessions learn that the relay drains: a ``relay.draining``
    event, an ``error`` event with code ``relay_draining`` (for clients that
    reject event types they do not know, such as Azure's rtclient), or nothing."""


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Per-replica limits, and where per-client counts are kept."""

    max_message_bytes: int = 16 * MiB
    """Largest WebSocket message accepted on either leg; a larger one closes with 1009."""
    policy_timeout: float = 5.0
    """Bound on the upstream confirming the relay's initial ``session.update``, in seconds."""
    max_sessions: int = 500
    """Concurrent sessions on this replica; beyond it, 503 with ``Retry-After``."""
    handshake_timeout: float = 15.0
    """Bound on everything between the upgrade request and accepting it, in seconds."""
    header_timeout: float = 10.0
    """Bound on receiving a request's head, from the connection (or the previous
    response) on; beyond it, 408 and the connection is closed (slowloris)."""
    backend: Literal["memory", "redis"] = "memory"
    """Where per-client session counts and start rates live."""
    redis_url: str | None = field(default=None, repr=False)
    """``redis://`` URL of the shared store (may hold a password: never logged)."""
    failure_mode: Literal["fail_open", "fail_closed"] = "fail_closed"
    """With Redis unreachable: admit with per-replica limits, or refuse with 503."""
    lease_seconds: float = 30.0
    """A dead replica's session slots come back within this long (redis)."""


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """Buffering and keepalive of the two legs."""

    buffer_bytes: int = 1 * MiB
    """High-water mark of each leg's write buffer; above it, the session stops reading."""
    ping_interval: float | None = 20.0
    """Seconds between keepalive pings on each leg (``None``: no pings)."""
    ping_timeout: float | None = 20.0
    """Seconds to wait for a pong before the leg is considered dead."""
    close_timeout: float = 1.0
    """Bound on delivering queued frames and the close frame to a closing leg."""
    stall_timeout: float = 10.0
    """Seconds a peer may take no data at all, its leg over the high-water mark,
    before the session is closed; time the relay's own event loop was blocked
    does not count (relay.sansio.stalls)."""


@dataclass(frozen=True, slots=True)
class DrainSettings:
    """Graceful shutdown: SIGTERM or ``/internal/drain`` (on the metrics port)."""

    grace_seconds: float = 600.0
    """Live sessions may finish within this; then they are closed with 1012."""
    propagation_delay: float = 5.0
    """Handshakes are still accepted this long after the drain starts (endpoint propagation)."""


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
    upstream: UpstreamSettings | None
    """Serves deployments that list no ``upstreams``; required while one does not."""
    deployments: Mapping[str, DeploymentSettings]
    clients: tuple[ClientSettings, ...]
    jwt: JwtSettings | None = None
    """Client JWT validation (``auth.jwt``), beside static keys."""
    limits: LimitsSettings = LimitsSettings()
    flow: FlowSettings = FlowSettings()
    drain: DrainSettings = DrainSettings()
    log: LogSettings = LogSettings()
    failover: FailoverSettings = FailoverSettings()

    def __post_init__(self) -> None:
        if self.upstream is None:
            for name, deployment in self.deployments.items():
                if not deployment.upstreams:
                    raise ConfigError(
                        f"{self.source}: upstream: missing, expected a mapping "
                        f"(deployment {name!r} lists no upstreams)"
                    )

    def upstream_targets(self, deployment: str) -> tuple[UpstreamTarget, ...]:
        """Where sessions of ``deployment`` may start, in the configured order.

        A deployment without ``upstreams`` has one target: the top-level
        ``upstream``, named ``<deployment>/0``.

        Raises:
            KeyError: ``deployment`` is not configured.
        """
        settings = self.deployments[deployment]
        if settings.upstreams:
            return settings.upstreams
        upstream = self.upstream
        assert upstream is not None  # checked on construction
        return (
            UpstreamTarget(
                name=f"{deployment}/0",
                endpoint=upstream.endpoint,
                ws_base=upstream.ws_base,
                upstream_deployment=settings.upstream_deployment or deployment,
                auth=upstream.auth,
                connect_timeout=upstream.connect_timeout,
                credential_timeout=upstream.credential_timeout,
                inherited=True,
            ),
        )


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
    upstream_node = root.get("upstream")
    require_upstream(upstream_node, root.get("deployments"), source=source)
    upstream = (
        parse_upstream(upstream_node.as_section(), environ)
        if upstream_node is not None
        else None
    )
    deployments = parse_deployments(
        root.require("deployments", "a mapping of deployment names"),
        upstream=upstream,
        environ=environ,
    )
    failover = parse_failover(root.section("failover"))
    policies_section = root.section("policies")
    policies = parse_policies(policies_section)
    jwt = parse_auth(root.section("auth"))
    clients = parse_clients(
        root.require("clients", "a list of clients"),
        policies=policies,
        policies_section=policies_section,
        deployments=deployments,
        jwt=jwt,
    )
    limits = _limits(root.section("limits"))
    flow = _flow(root.section("flow"))
    drain = _drain(root.section("drain"))
    log = _log(root.section("log"))
    root.finish()
    return Settings(
        source=source,
        listen=listen,
        metrics=metrics,
        upstream=upstream,
        deployments=deployments,
        clients=clients,
        jwt=jwt,
        limits=limits,
        flow=flow,
        drain=drain,
        log=log,
        failover=failover,
    )


def _listen(section: Section) -> ListenSettings:
    kwargs: dict[str, Any] = {}
    if host := section.get("host"):
        kwargs["host"] = host.as_str()
    if port := section.get("port"):
        kwargs["port"] = port.as_int(minimum=0, maximum=65535)
    if tls := section.get("tls"):
        kwargs["tls"] = _tls(tls.as_section())
    section.finish()
    return ListenSettings(**kwargs)


def _tls(section: Section) -> TlsSettings:
    kwargs: dict[str, Any] = {
        "cert_file": section.require(
            "cert_file", "a path to a PEM certificate chain"
        ).as_str(),
        "key_file": section.require("key_file", "a path to a PEM private key").as_str(),
    }
    if node := section.get("client_ca_file"):
        kwargs["client_ca_file"] = node.as_str()
    if node := section.get("reload_interval"):
        kwargs["reload_interval"] = node.as_float(minimum=1, maximum=3600)
    section.finish()
    return TlsSettings(**kwargs)


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


def _limits(section: Section) -> LimitsSettings:
    kwargs: dict[str, Any] = {}
    if size := section.get("max_message_bytes"):
        kwargs["max_message_bytes"] = size.as_int(minimum=64 * 1024, maximum=64 * MiB)
    if timeout := section.get("policy_timeout"):
        kwargs["policy_timeout"] = timeout.as_float(minimum=0.1, maximum=60)
    if node := section.get("max_sessions"):
        kwargs["max_sessions"] = node.as_int(minimum=1, maximum=1_000_000)
    if node := section.get("handshake_timeout"):
        kwargs["handshake_timeout"] = node.as_float(minimum=1, maximum=120)
    if node := section.get("header_timeout"):
        kwargs["header_timeout"] = node.as_float(minimum=1, maximum=120)
    if node := section.get("backend"):
        kwargs["backend"] = node.as_choice(("memory", "redis"))
    url_node = section.get("redis_url")
    if url_node:
        kwargs["redis_url"] = _redis_url(url_node)
    if node := section.get("failure_mode"):
        kwargs["failure_mode"] = node.as_choice(("fail_open", "fail_closed"))
    if node := section.get("lease_seconds"):
        kwargs["lease_seconds"] = node.as_float(minimum=3, maximum=600)
    section.finish()
    settings = LimitsSettings(**kwargs)
    if settings.backend == "redis" and settings.redis_url is None:
        raise ConfigError(
            f"{section.source}: limits.redis_url: missing, expected a redis:// URL for backend redis"
        )
    return settings


def _redis_url(node: Node) -> str:
    url = node.as_str()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("redis", "rediss", "unix")
        or not (parts.hostname or parts.path)
    ):
        # Never echo the URL: it may carry a password.
        raise ConfigError(
            f"{node.source}: {node.path}: expected a redis://, rediss:// or unix:// URL"
        )
    return url


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
    if node := section.get("stall_timeout"):
        kwargs["stall_timeout"] = node.as_float(minimum=0.5, maximum=600)
    section.finish()
    return FlowSettings(**kwargs)


def _drain(section: Section) -> DrainSettings:
    kwargs: dict[str, Any] = {}
    if node := section.get("grace_seconds"):
        kwargs["grace_seconds"] = node.as_float(minimum=0, maximum=3600)
    if (node := section.get("propagation_delay")) is not None:
        kwargs["propagation_delay"] = node.as_float(minimum=0, maximum=300)
    section.finish()
    return DrainSettings(**kwargs)


def _log(section: Section) -> LogSettings:
    kwargs: dict[str, Any] = {}
    if node := section.get("format"):
        kwargs["format"] = node.as_choice(("json", "console"))
    if node := section.get("level"):
        kwargs["level"] = node.as_choice(("debug", "info", "warning", "error"))
    section.finish()
    return LogSettings(**kwargs)
