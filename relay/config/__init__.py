"""The relay's configuration: one YAML file parsed into one frozen :class:`Settings`.

The types themselves live in :mod:`relay.sansio.settings`, so the core can read
them without importing this parser (or YAML); they are re-exported here.

Parsing is pure: the file's text and the environment are passed in, and only
``relay.cli`` reads the real ones. Everything is validated at start-up; every
error names the file, the key path and what was expected, so the process exits
before it listens. Secrets never sit in the file: it names the environment
variables that hold them (``api_key_env``), and resolved secrets are kept out of
``repr`` so they cannot leak through a log line or a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.config.clients import parse_auth, parse_clients
from relay.config.policies import parse_policies
from relay.config.reader import Node, Section, load_yaml
from relay.config.upstreams import (
    parse_deployments,
    parse_failover,
    parse_upstream,
    require_upstream,
)
from relay.exceptions import ConfigError
from relay.sansio.settings import (
    ApiKeyAuth,
    ClientLimits,
    ClientSettings,
    DeploymentSettings,
    DrainSettings,
    EntraAuth,
    FailoverSettings,
    FlowSettings,
    LimitsSettings,
    ListenSettings,
    LogSettings,
    MetricsSettings,
    MiB,
    ReloadSettings,
    Settings,
    TlsSettings,
    UpstreamSettings,
    UpstreamTarget,
)


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
    "ReloadSettings",
    "Settings",
    "TlsSettings",
    "UpstreamSettings",
    "UpstreamTarget",
    "load_settings",
    "parse_settings",
]


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
    reload = _reload(root.section("reload"))
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
        reload=reload,
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


def _reload(section: Section) -> ReloadSettings:
    kwargs: dict[str, Any] = {}
    if node := section.get("policy_reload"):
        kwargs["policy_reload"] = node.as_choice(("new_sessions", "all_sessions"))
    # An explicit `null` (never close them) is the default too.
    if node := section.get("removed_client_grace_seconds"):
        kwargs["removed_client_grace_seconds"] = node.as_float(minimum=0, maximum=86400)
    section.finish()
    return ReloadSettings(**kwargs)
