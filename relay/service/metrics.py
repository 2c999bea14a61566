"""Every Prometheus metric of the relay, on an injected registry.

Names follow Prometheus conventions: prefix ``relay_``, base units, counters
ending ``_total``, only bounded labels (never a session id, key or user), and
known label values initialised to 0 so series exist before the first event.
One uvicorn worker per pod is assumed: prometheus-client's multiprocess mode
cannot serve live gauges like ``relay_sessions_active`` correctly, so the relay
scales by replicas instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from relay import __version__
from relay.sansio.closes import OUTCOMES
from relay.sansio.commands import Metered, TokensUsed
from relay.sansio.fields import CLIENT_EVENT_TYPES as _CLIENT_EVENT_TYPES
from relay.sansio.meter import EVENT_TYPES, SessionCounters


__all__ = ["DIRECTIONS", "UPSTREAM_RESULTS", "RelayMetrics", "TlsMetrics"]

DIRECTIONS = ("client_to_upstream", "upstream_to_client")
POLICY_ACTIONS = ("overwrite", "clamp", "strip", "refuse")
HTTP_REFUSALS = ("request_timeout", "request_header_fields_too_large", "bad_request")
"""Why a request was refused before routing (relay.ws.uvicorn_http, relay.ws.uvicorn_websocket): 408, 431, 400 (or 405)."""
REFUSAL_STATUSES = ("400", "401", "403", "404", "429", "500", "502", "503", "504")
CLOSE_CODES = (
    "1000",
    "1001",
    "1002",
    "1003",
    "1005",
    "1006",
    "1007",
    "1008",
    "1009",
    "1010",
    "1011",
    "1012",
    "1013",
    "1014",
    "4000",
    "4001",
    "4002",
    "4003",
    "4029",
)
TOKEN_KINDS = (
    ("input", "text"),
    ("input", "audio"),
    ("input", "cached"),
    ("output", "text"),
    ("output", "audio"),
)
# First audio: what a caller hears as the relay's and the model's latency.
_FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
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
# A loop that keeps up runs a due timer within a millisecond or two; 0.1 s of
# lag is heard in a voice session; a blocked loop shows in the top buckets.
_LOOP_LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Sessions last up to Azure's cap (60 minutes in 2026); buckets reach 65 minutes.
_DURATION_BUCKETS = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    2400,
    3000,
    3600,
    3900,
)


class RelayMetrics:
    """The relay's metrics, registered on ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Sessions count their messages in plain attributes (a prometheus
        # increment takes a lock: four per message cost more than relaying
        # it). Registered first, this collector adds what they counted to the
        # shared series before any series is collected.
        self._live: set[SessionMetrics] = set()
        registry.register(_Flush(self))
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
        self.http_refusals = Counter(
            "relay_http_refusals",
            "Requests refused before routing: heads too slow (408), too large (431) or malformed (400).",
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
        self.upstream_refusals = Counter(
            "relay_upstream_refusals",
            "Upstream handshakes refused with an HTTP status, by upstream and status.",
            ["upstream", "status"],
            registry=registry,
        )
        self.events = Counter(
            "relay_events",
            "Realtime events relayed, by direction and event type (unknown types: other).",
            ["direction", "event_type"],
            registry=registry,
        )
        self.close_codes = Counter(
            "relay_close_codes",
            "How each leg of a session ended: the close code received or sent.",
            ["side", "code"],
            registry=registry,
        )
        self.session_protocols = Counter(
            "relay_session_protocols",
            "Sessions started, by client, deployment and the protocol each side "
            "spoke; client_protocol preview with upstream_protocol ga is bridged.",
            ["client", "deployment", "client_protocol", "upstream_protocol"],
            registry=registry,
        )
        self.tokens = Counter(
            "relay_tokens",
            "Tokens reported by response.done usage; cached tokens are also counted in text/audio.",
            ["client", "deployment", "direction", "modality"],
            registry=registry,
        )
        self.audio_seconds = Counter(
            "relay_audio_seconds",
            "Seconds of audio relayed: input from clients, output from Azure.",
            ["client", "direction"],
            registry=registry,
        )
        self.first_audio = Histogram(
            "relay_first_audio_seconds",
            "From the end of user speech (or response.create) to the first audio delta.",
            buckets=_FIRST_AUDIO_BUCKETS,
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
        # A histogram of every probe (relay.service.lag, 10 a second), not a gauge of
        # the latest: a scrape every 15-30 s would see one probe in hundreds
        # and miss a block between scrapes, where the buckets keep it (and
        # _sum / elapsed time is the share of time the loop lagged). One
        # observe per probe, never per message.
        self.event_loop_lag = Histogram(
            "relay_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 0.1 s: the wait all sessions share.",
            buckets=_LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self.max_sessions = Gauge(
            "relay_max_sessions",
            "This replica's session cap (limits.max_sessions), for capacity alerts.",
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
        self.config_reloads = Counter(
            "relay_config_reload",
            "Configuration reloads (SIGHUP or a changed file): applied (ok), or "
            "refused with the previous generation still serving (error).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.config_generation = Gauge(
            "relay_config_generation",
            "Generation of the configuration new handshakes use: 1 at start, "
            "one more per applied reload.",
            registry=registry,
        )
        self.config_generation.set(1)
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
        for reason in HTTP_REFUSALS:
            self.http_refusals.labels(reason)
        self.limits_backend_up.set(1)
        for direction in DIRECTIONS:
            self.backpressure_stalls.labels(direction)
        for side in ("client", "upstream"):
            for code in CLOSE_CODES:
                self.close_codes.labels(side, code)
        # Event children by (direction, event type), created once: the hot path
        # only looks them up in a dict.
        self._event_children: dict[tuple[str, str], Counter] = {}
        for direction, kinds in (
            (DIRECTIONS[0], _CLIENT_EVENT_TYPES),
            (DIRECTIONS[1], EVENT_TYPES - _CLIENT_EVENT_TYPES),
        ):
            for kind in (*sorted(kinds), "other"):
                self._event_children[(direction, kind)] = self.events.labels(
                    direction, kind
                )
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

    def forget_upstream(self, name: str) -> None:
        """Stop exporting the gauges of an upstream a reload removed.

        Its counters stay: a counter's history is still true.
        """
        for gauge in (self.upstream_breaker_state, self.upstream_credential_ok):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def prepare_policy_labels(self, targets: list[str]) -> None:
        """Create the policy series of configured rule targets at 0."""
        for target in targets:
            for action in POLICY_ACTIONS:
                self.policy_actions.labels(action, target)

    def policy_applied(self, action: str, field: str) -> None:
        """Count one policy action (bounded labels: rule targets, event_type, message)."""
        self.policy_actions.labels(action, field).inc()

    def prepare_clients(self, clients: list[str], deployments: list[str]) -> None:
        """Create the per-client series of every configured client at 0."""
        for client in clients:
            for direction in ("input", "output"):
                self.audio_seconds.labels(client, direction)
            for deployment in deployments:
                for direction, modality in TOKEN_KINDS:
                    self.tokens.labels(client, deployment, direction, modality)

    def upstream_refused(self, upstream: str, status: int) -> None:
        """Count a refused upstream handshake (statuses outside the known set: other)."""
        label = str(status) if str(status) in REFUSAL_STATUSES else "other"
        self.upstream_refusals.labels(upstream, label).inc()

    def http_refused(self, reason: str) -> None:
        """Count a request refused before routing (a reason of :data:`HTTP_REFUSALS`)."""
        self.http_refusals.labels(reason).inc()

    def session_closed(self, side: str, code: int) -> None:
        """Count how one leg of a session ended."""
        label = str(code) if str(code) in CLOSE_CODES else "other"
        self.close_codes.labels(side, label).inc()

    def for_session(
        self, client: str, deployment: str, counters: SessionCounters
    ) -> SessionMetrics:
        """An observer for one session of ``client`` on ``deployment``, whose counts are ``counters``.

        Counted until :meth:`SessionMetrics.close`.
        """
        session = SessionMetrics(self, client, deployment, counters)
        self._live.add(session)
        return session

    def forget(self, session: SessionMetrics) -> None:
        """Stop flushing ``session`` (it has ended and flushed itself)."""
        self._live.discard(session)

    def flush(self) -> None:
        """Add every live session's counts to the shared series (before a scrape)."""
        for session in list(self._live):
            session.flush()

    def event(self, direction: str, event_type: str, count: int = 1) -> None:
        """Count relayed events (``event_type`` is already a bounded label)."""
        child = self._event_children.get((direction, event_type))
        if child is None:
            child = self._event_children[(direction, event_type)] = self.events.labels(
                direction, event_type
            )
        child.inc(count)

    def stalled(self, side: str) -> None:
        """Count a session ended because ``side`` stopped reading."""
        direction = "upstream_to_client" if side == "client" else "client_to_upstream"
        self.backpressure_stalls.labels(direction).inc()

    def client_to_upstream(self, size: int, messages: int = 1) -> None:
        """Count ``messages`` totalling ``size`` bytes received from clients."""
        self._c2u_messages.inc(messages)
        self._c2u_bytes.inc(size)

    def upstream_to_client(self, size: int, messages: int = 1) -> None:
        """Count ``messages`` totalling ``size`` bytes received from upstreams."""
        self._u2c_messages.inc(messages)
        self._u2c_bytes.inc(size)


class _Flush:
    """A collector that yields nothing: collecting it flushes the live sessions."""

    def __init__(self, metrics: RelayMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return []


class SessionMetrics:
    """The metrics of one session: its counts read from its counters, the rest bound once.

    Messages, bytes and audio seconds are the session's
    :class:`~relay.sansio.meter.SessionCounters`, which the driver keeps
    (the same object the ``session.end`` line reports); events per type
    accumulate here. What was added since the last flush reaches the shared
    series on :meth:`flush`: before every collection (see
    :class:`RelayMetrics`) and when the session closes. Scrapes are
    therefore exact; only the work per message is saved.
    """

    __slots__ = (
        "_audio_in",
        "_audio_out",
        "_counters",
        "_events",
        "_flushed",
        "_metrics",
        "_tokens",
    )

    def __init__(
        self,
        metrics: RelayMetrics,
        client: str,
        deployment: str,
        counters: SessionCounters,
    ) -> None:
        self._metrics = metrics
        self._counters = counters
        self._audio_in = metrics.audio_seconds.labels(client, "input")
        self._audio_out = metrics.audio_seconds.labels(client, "output")
        self._tokens = {
            kind: metrics.tokens.labels(client, deployment, *kind)
            for kind in TOKEN_KINDS
        }
        # The counters as of the last flush.
        self._flushed = SessionCounters()
        self._events: dict[tuple[str, str], int] = {}

    def flush(self) -> None:
        """Add what was counted since the last flush to the shared series."""
        metrics, now, then = self._metrics, self._counters, self._flushed
        if now.client_messages != then.client_messages:
            metrics.client_to_upstream(
                now.client_bytes - then.client_bytes,
                now.client_messages - then.client_messages,
            )
            then.client_messages, then.client_bytes = (
                now.client_messages,
                now.client_bytes,
            )
        if now.upstream_messages != then.upstream_messages:
            metrics.upstream_to_client(
                now.upstream_bytes - then.upstream_bytes,
                now.upstream_messages - then.upstream_messages,
            )
            then.upstream_messages, then.upstream_bytes = (
                now.upstream_messages,
                now.upstream_bytes,
            )
        if self._events:
            events, self._events = self._events, {}
            for (direction, kind), count in events.items():
                metrics.event(direction, kind, count)
        if now.audio_in_seconds != then.audio_in_seconds:
            self._audio_in.inc(now.audio_in_seconds - then.audio_in_seconds)
            then.audio_in_seconds = now.audio_in_seconds
        if now.audio_out_seconds != then.audio_out_seconds:
            self._audio_out.inc(now.audio_out_seconds - then.audio_out_seconds)
            then.audio_out_seconds = now.audio_out_seconds

    def close(self) -> None:
        """The session ended: flush, and stop being flushed."""
        self.flush()
        self._metrics.forget(self)

    def policy_applied(self, action: str, field: str) -> None:
        """See :meth:`RelayMetrics.policy_applied`."""
        self._metrics.policy_applied(action, field)

    def stalled(self, side: str) -> None:
        """See :meth:`RelayMetrics.stalled`."""
        self._metrics.stalled(side)

    def metered(self, fact: Metered) -> None:
        """Count one relayed event (its audio is in the session's counters)."""
        key = (fact.direction, fact.event_type)
        events = self._events
        events[key] = events.get(key, 0) + 1

    def tokens(self, usage: TokensUsed) -> None:
        """Add one response's usage."""
        for kind, count in (
            (TOKEN_KINDS[0], usage.input_text),
            (TOKEN_KINDS[1], usage.input_audio),
            (TOKEN_KINDS[2], usage.input_cached),
            (TOKEN_KINDS[3], usage.output_text),
            (TOKEN_KINDS[4], usage.output_audio),
        ):
            if count:
                self._tokens[kind].inc(count)

    def first_audio(self, seconds: float) -> None:
        """Observe one first-audio latency."""
        self._metrics.first_audio.observe(seconds)


class TlsMetrics:
    """The TLS listener's certificate and its reloads (``listen.tls``).

    Registered only when the relay serves TLS, so a relay without it exports
    no expiry an alert could mistake for an expired certificate.
    """

    RESULTS = ("success", "failure")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.certificate_expiry = Gauge(
            "relay_tls_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the certificate new TLS handshakes are answered with.",
            registry=registry,
        )
        self.reloads = Counter(
            "relay_tls_reloads",
            "Changes of the certificate files: loaded (success), or refused with the previous pair kept (failure).",
            ["result"],
            registry=registry,
        )
        for result in self.RESULTS:
            self.reloads.labels(result)

    def served(self, not_after: float) -> None:
        """New handshakes now get a certificate expiring at ``not_after``."""
        self.certificate_expiry.set(not_after)

    def reloaded(self, result: str) -> None:
        """Count one reload attempt (``success`` or ``failure``)."""
        self.reloads.labels(result).inc()
