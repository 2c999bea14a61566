"""The configuration's shape: the frozen settings :mod:`relay.config` parses.

:mod:`relay.config` turns the YAML file into these types and checks every
value; the few rules that tie values together are checked here, on
construction. The core reads them (:class:`ClientSettings` and
:class:`DeploymentSettings` in :mod:`relay.sansio.handshake`), which is why
they live in the core rather than beside the parser: the core depends on
nothing outside it but :mod:`relay.exceptions` and :mod:`relay.typing`
(``tests/test_layering.py``).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from relay.exceptions import ConfigError
from relay.sansio.jwks import ASYMMETRIC_ALGORITHMS
from relay.sansio.policy import EMPTY_POLICY, Policy
from relay.typing import ClientId, DrainNotice, Family


__all__ = [
    "ENTRA_SCOPE",
    "ApiKeyAuth",
    "ClientLimits",
    "ClientSettings",
    "DeploymentSettings",
    "DrainSettings",
    "EntraAuth",
    "FailoverSettings",
    "FlowSettings",
    "JwtSettings",
    "LimitsSettings",
    "ListenSettings",
    "LogSettings",
    "MetricsSettings",
    "MiB",
    "PolicyReload",
    "ReloadSettings",
    "Settings",
    "TlsSettings",
    "UpstreamSettings",
    "UpstreamTarget",
    "jwks_url_allowed",
]

MiB = 1024 * 1024
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS on the main listener (``listen.tls``); the files are loaded by :mod:`relay.service.tls`.

    Parsing only checks the shape: whether the files exist, load and match is
    checked at start-up (:func:`relay.service.tls.check_tls`), before the relay listens.
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
    upstream_protocol: Family = "ga"
    """The protocol its upstreams speak. ``ga``: every session goes to the GA
    endpoint, and preview-protocol clients are translated
    (:mod:`relay.sansio.bridge`). ``preview``: each session goes where its
    client asked, in the client's protocol (for upstreams that still serve
    the deprecated preview protocol)."""

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


PolicyReload = Literal["new_sessions", "all_sessions"]
"""Which sessions a reloaded policy reaches: new ones only, or live ones too."""


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """What a configuration reload does to live sessions (``reload:``).

    The values of the generation being swapped in decide: the file that
    changes a policy also says whether live sessions receive it.
    """

    policy_reload: PolicyReload = "new_sessions"
    """``all_sessions``: a client's live sessions switch to its changed policy,
    sent upstream as a ``session.update``; ``new_sessions``: they keep the one
    they started with."""
    removed_client_grace_seconds: float | None = None
    """A removed client's live sessions are closed (4003) this long after the
    reload; ``None``: they end at their own pace."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Structured logging."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How client JWTs are verified (``auth.jwt`` in the configuration).

    Invalid values raise :exc:`~relay.exceptions.ConfigError` on construction:
    ``none``, ``HS*`` and unknown algorithms, a non-https URL (http is allowed
    for a loopback host), empty names, and non-positive durations.
    """

    jwks_url: str
    """Where the key set is published, e.g. ``https://login.example.com/.well-known/jwks.json``."""
    issuer: str
    """The required ``iss``."""
    audience: str
    """The required ``aud`` (or one of its values)."""
    client_claim: str = "azp"
    """The claim whose string value is the client id returned by ``verify``."""
    algorithms: tuple[str, ...] = ("RS256",)
    """Allowed ``alg`` values; asymmetric only."""
    leeway: float = 30.0
    """Clock skew allowed for ``exp``, ``nbf`` and ``iat``, in seconds."""
    jwks_cache_seconds: float = 300.0
    """A fetched key set is refreshed in the background after this long."""
    jwks_refetch_interval: float = 30.0
    """At most one fetch per this many seconds is caused by unknown ``kid``s."""
    jwks_timeout: float = 5.0
    """Bound on one fetch of the key set, connection included."""

    def __post_init__(self) -> None:
        if not jwks_url_allowed(self.jwks_url):
            _fail_jwt("jwks_url", "an https URL (http only for a loopback host)")
        for name in ("issuer", "audience", "client_claim"):
            if not getattr(self, name):
                _fail_jwt(name, "a non-empty string")
        if not self.algorithms:
            _fail_jwt("algorithms", "at least one algorithm")
        for alg in self.algorithms:
            if alg not in ASYMMETRIC_ALGORITHMS:
                _fail_jwt("algorithms", f"asymmetric algorithms only, not {alg!r}")
        if not (math.isfinite(self.leeway) and self.leeway >= 0):
            _fail_jwt("leeway", "a number of seconds >= 0")
        for name in ("jwks_cache_seconds", "jwks_refetch_interval", "jwks_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                _fail_jwt(name, "a number of seconds > 0")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the relay needs, validated. Build it with :func:`relay.config.load_settings`."""

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
    reload: ReloadSettings = ReloadSettings()

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


def _fail_jwt(name: str, expected: str) -> None:
    raise ConfigError(f"auth.jwt.{name}: expected {expected}")


def jwks_url_allowed(url: str) -> bool:
    """Whether ``url`` may publish a key set: https, or http to a loopback host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme == "https":
        return bool(host)
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
