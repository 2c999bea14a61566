"""Every Prometheus metric of the relay, on an injected registry.

Names follow Prometheus conventions: prefix ``relay_``, base units, counters
ending ``_total``, only bounded labels (never a session id, key or user), and
known label values initialised to 0 so series exist before the first event.
One uvicorn worker per pod is assumed: prometheus-client's multiprocess mode
cannot serve live gauges like ``relay_sessions_active`` correctly, so the relay
scales by replicas instead.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from relay import __version__
from relay.sansio.closes import OUTCOMES


__all__ = ["DIRECTIONS", "UPSTREAM_RESULTS", "RelayMetrics"]

DIRECTIONS = ("client_to_upstream", "upstream_to_client")
POLICY_ACTIONS = ("overwrite", "clamp", "refuse")
AUTH_FAILURE_REASONS = (
    "missing",
    "malformed",
    "invalid",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_issuer",
    "bad_audience",
    "bad_algorithm",
    "unknown_kid",
    "missing_claim",
    "unknown_client",
    "jwks_unavailable",
    "query_auth_disabled",
    "origin",
    "deployment",
)
UPSTREAM_RESULTS = (
    "ok",
    "refused",
    "unavailable",
    "timeout",
    "credential_unavailable",
    # Cut short without a verdict: the handshake budget ran out or the client left.
    "abandoned",
)
# Handshakes include an upstream TLS + WebSocket handshake across regions.
_HANDSHAKE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sessions last up to Azure's 30-minute cap; buckets reach 35 minutes.
_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1500, 1800, 2100)


class RelayMetrics:
    """The relay's metrics, registered on ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # prometheus-client registers these on its global registry; the relay
        # never uses that one, so each registry gets its own.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        self.sessions_active = Gauge(
            "relay_sessions_active", "Sessions currently relayed.", registry=registry
        )
        self.sessions = Counter(
            "relay_sessions",
            "Sessions by how they ended (including those refused at the handshake).",
            ["outcome"],
            registry=registry,
        )
        self.session_duration = Histogram(
            "relay_session_duration_seconds",
            "Duration of relayed sessions, from accept to the end of both legs.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.handshake_duration = Histogram(
            "relay_handshake_duration_seconds",
            "From the client's upgrade request to the upstream being open.",
            buckets=_HANDSHAKE_BUCKETS,
            registry=registry,
        )
        self.upstream_connects = Counter(
            "relay_upstream_connect",
            "Upstream connection attempts by upstream (<deployment>/<index>) and result.",
            ["upstream", "result"],
            registry=registry,
        )
        self.upstream_breaker_state = Gauge(
            "relay_upstream_breaker_state",
            "Circuit breaker of each upstream: 0 closed, 1 half-open, 2 open or held.",
            ["upstream"],
            registry=registry,
        )
        self.upstream_failovers = Counter(
            "relay_upstream_failovers",
            "Session starts moved on to another upstream after a failed attempt.",
            registry=registry,
        )
        self.messages = Counter(
            "relay_messages",
            "WebSocket messages received for relaying, by direction.",
            ["direction"],
            registry=registry,
        )
        self.message_bytes = Counter(
            "relay_message_bytes",
            "Bytes of WebSocket message payloads received for relaying, by direction.",
            ["direction"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "relay_auth_failures",
            "Handshakes refused for identity reasons (401/403), by reason.",
            ["reason"],
            registry=registry,
        )
        self.limits_backend_up = Gauge(
            "relay_limits_backend_up",
            "Whether the limits backend answered its last request (1) or not (0).",
            registry=registry,
        )
        self.limits_degraded = Gauge(
            "relay_limits_degraded",
            "1 while failing open: client limits are enforced per replica only.",
            registry=registry,
        )
        self.upstream_credential_ok = Gauge(
            "relay_upstream_credential_ok",
            "1 while the relay holds a usable credential for the upstream (Entra token or key).",
            ["upstream"],
            registry=registry,
        )
        self.backpressure_stalls = Counter(
            "relay_backpressure_stalls",
            "Sessions ended because a leg stopped reading, by the direction that stalled.",
            ["direction"],
            registry=registry,
        )
        self.draining = Gauge(
            "relay_draining",
            "1 while this replica drains (refusing new sessions).",
            registry=registry,
        )
        self.policy_actions = Counter(
            "relay_policy_actions",
            "What session policies did to client events, by action and field.",
            ["action", "field"],
            registry=registry,
        )
        build_info = Gauge(
            "relay_build_info",
            "Build of the running relay.",
            ["version"],
            registry=registry,
        )
        build_info.labels(__version__).set(1)

        for outcome in OUTCOMES:
            self.sessions.labels(outcome)
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        self.limits_backend_up.set(1)
        for direction in DIRECTIONS:
            self.backpressure_stalls.labels(direction)
        # Children bound once: the per-message path must not look labels up.
        self._c2u_messages = self.messages.labels(DIRECTIONS[0])
        self._c2u_bytes = self.message_bytes.labels(DIRECTIONS[0])
        self._u2c_messages = self.messages.labels(DIRECTIONS[1])
        self._u2c_bytes = self.message_bytes.labels(DIRECTIONS[1])

    def prepare_upstream(
        self,
        name: str,
        breaker_state: Callable[[], float],
        credential_ok: Callable[[], float],
    ) -> None:
        """Create the series of upstream ``name``; its gauges read the callables.

        The gauges are computed at scrape time, so an open breaker shows as
        half-open as soon as its cool-down ends.
        """
        for result in UPSTREAM_RESULTS:
            self.upstream_connects.labels(name, result)
        self.upstream_breaker_state.labels(name).set_function(breaker_state)
        self.upstream_credential_ok.labels(name).set_function(credential_ok)

    def prepare_policy_labels(self, targets: list[str]) -> None:
        """Create the policy series of configured rule targets at 0."""
        for target in targets:
            for action in POLICY_ACTIONS:
                self.policy_actions.labels(action, target)

    def policy_applied(self, action: str, field: str) -> None:
        """Count one policy action (bounded labels: rule targets, event_type, message)."""
        self.policy_actions.labels(action, field).inc()

    def stalled(self, side: str) -> None:
        """Count a session ended because ``side`` stopped reading."""
        direction = "upstream_to_client" if side == "client" else "client_to_upstream"
        self.backpressure_stalls.labels(direction).inc()

    def client_to_upstream(self, size: int) -> None:
        """Count one message of ``size`` bytes received from a client."""
        self._c2u_messages.inc()
        self._c2u_bytes.inc(size)

    def upstream_to_client(self, size: int) -> None:
        """Count one message of ``size`` bytes received from the upstream."""
        self._u2c_messages.inc()
        self._u2c_bytes.inc(size)
