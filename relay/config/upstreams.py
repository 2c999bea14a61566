"""Parsing where sessions go: ``upstream:``, ``deployments:`` and ``failover:``.

A deployment either lists its own ``upstreams`` (several Azure resources to
fail over between at session start) or uses the top-level ``upstream`` under
its ``upstream_deployment`` name, as a single upstream. The top-level section
is therefore required only while some deployment lists no ``upstreams``.

Each upstream's ``auth`` follows the top-level rules: an ``api_key`` names the
environment variable holding the key, which must be set and non-empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from relay.config.reader import Node, Section
from relay.exceptions import ConfigError
from relay.sansio.settings import (
    ApiKeyAuth,
    DeploymentSettings,
    EntraAuth,
    FailoverSettings,
    UpstreamSettings,
    UpstreamTarget,
)
from relay.typing import Family


__all__ = [
    "MAX_UPSTREAMS",
    "parse_deployments",
    "parse_failover",
    "parse_upstream",
    "require_upstream",
]

MAX_UPSTREAMS: Final = 16
"""Upstreams per deployment; every one may be tried within one handshake."""

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Deployment names travel in URL query strings; Azure allows letters, digits,
# '-', '_' and '.' (UNVERIFIED beyond the portal's own rules).
_DEPLOYMENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DEPLOYMENT_EXPECTED: Final = (
    "a deployment name (letters, digits, '.', '_', '-'; at most 64)"
)
_TIMEOUTS: Final = ("connect_timeout", "credential_timeout")
_PROTOCOLS: Final = ("ga", "preview")


def require_upstream(
    upstream: Node | None, deployments: Node | None, *, source: str
) -> None:
    """Refuse a missing ``upstream`` section while some deployment relies on it.

    Looks at the raw ``deployments`` only as far as needed: their shapes are
    checked by :func:`parse_deployments`.

    Raises:
        ConfigError: ``upstream`` is missing and a deployment lists no upstreams.
    """
    if upstream is not None:
        return
    entries = deployments.value if deployments is not None else None
    if isinstance(entries, Mapping) and entries:
        lacking = [
            name
            for name, body in entries.items()
            if not (isinstance(body, Mapping) and body.get("upstreams") is not None)
        ]
        if not lacking:
            return
        why = f"deployment {lacking[0]!r} lists no upstreams"
    else:
        why = "or upstreams on every deployment"
    raise ConfigError(f"{source}: upstream: missing, expected a mapping ({why})")


def parse_upstream(section: Section, environ: Mapping[str, str]) -> UpstreamSettings:
    """The top-level ``upstream`` section."""

    endpoint_node = section.require("endpoint", "an http(s) or ws(s) URL")
    endpoint = endpoint_node.as_str()
    kwargs: dict[str, Any] = {
        "endpoint": endpoint,
        "ws_base": _ws_base(endpoint_node, endpoint),
        "auth": _auth(
            section.require("auth", "a mapping with a type").as_section(), environ
        ),
    }
    for key in _TIMEOUTS:
        if node := section.get(key):
            kwargs[key] = _timeout(node)
    section.finish()
    return UpstreamSettings(**kwargs)


def parse_deployments(
    node: Node, *, upstream: UpstreamSettings | None, environ: Mapping[str, str]
) -> Mapping[str, DeploymentSettings]:
    """The ``deployments`` mapping, each with its upstreams when it lists them.

    ``upstream`` (the top-level section) provides the timeouts an upstream
    entry does not set.
    """

    section = node.as_section()
    deployments: dict[str, DeploymentSettings] = {}
    for name, entry in section.items():
        if not _DEPLOYMENT_NAME.fullmatch(name):
            Node(name, entry.path, entry.source).fail(_DEPLOYMENT_EXPECTED)
        # `gpt-realtime: {}` and `gpt-realtime:` (null) both mean "same name upstream".
        body = (
            entry.as_section()
            if entry.value is not None
            else Section({}, entry.path, entry.source)
        )
        renamed = body.get("upstream_deployment")
        listed = body.get("upstreams")
        protocol = body.get("upstream_protocol")
        # GA unless told otherwise: Azure documents only the GA endpoint.
        upstream_protocol: Family = (
            "preview"
            if protocol is not None and protocol.as_choice(_PROTOCOLS) == "preview"
            else "ga"
        )
        if listed is not None:
            if renamed is not None:
                renamed.fail(
                    "no upstream_deployment beside upstreams "
                    "(set upstream_deployment on each upstream instead)"
                )
            targets = _upstream_list(listed, name, upstream, environ)
            body.finish()
            deployments[name] = DeploymentSettings(
                name=name, upstreams=targets, upstream_protocol=upstream_protocol
            )
            continue
        upstream_name = _deployment_name(renamed) if renamed is not None else name
        body.finish()
        deployments[name] = DeploymentSettings(
            name=name,
            upstream_deployment=upstream_name,
            upstream_protocol=upstream_protocol,
        )
    if not deployments:
        node.fail("at least one deployment")
    return MappingProxyType(deployments)


def parse_failover(section: Section) -> FailoverSettings:
    """The ``failover`` section: circuit breakers and ``Retry-After`` holds."""

    kwargs: dict[str, Any] = {}
    if node := section.get("failures_to_open"):
        kwargs["failures_to_open"] = node.as_int(minimum=1, maximum=100)
    if node := section.get("cooldown_seconds"):
        kwargs["cooldown_seconds"] = node.as_float(minimum=0.1, maximum=3600)
    if node := section.get("max_retry_after_seconds"):
        kwargs["max_retry_after_seconds"] = node.as_float(minimum=0, maximum=3600)
    section.finish()
    return FailoverSettings(**kwargs)


def _upstream_list(
    node: Node,
    deployment: str,
    upstream: UpstreamSettings | None,
    environ: Mapping[str, str],
) -> tuple[UpstreamTarget, ...]:

    items = node.as_list()
    if not items:
        node.fail("a non-empty list of upstreams")
    if len(items) > MAX_UPSTREAMS:
        node.fail(f"at most {MAX_UPSTREAMS} upstreams")
    targets: list[UpstreamTarget] = []
    # (ws_base, upstream deployment) -> index of its first listing.
    seen: dict[tuple[str, str], int] = {}
    for index, item in enumerate(items):
        section = item.as_section()
        endpoint_node = section.require("endpoint", "an http(s) or ws(s) URL")
        endpoint = endpoint_node.as_str()
        ws_base = _ws_base(endpoint_node, endpoint)
        renamed = section.get("upstream_deployment")
        upstream_name = _deployment_name(renamed) if renamed is not None else deployment
        kwargs: dict[str, Any] = {
            "auth": _auth(
                section.require("auth", "a mapping with a type").as_section(), environ
            )
        }
        if weight := section.get("weight"):
            kwargs["weight"] = weight.as_int(minimum=1, maximum=100)
        for key in _TIMEOUTS:
            if timeout := section.get(key):
                kwargs[key] = _timeout(timeout)
            elif upstream is not None:
                kwargs[key] = getattr(upstream, key)
        section.finish()
        first = seen.setdefault((ws_base, upstream_name), index)
        if first != index:
            endpoint_node.fail(
                f"an upstream not listed before (upstreams[{first}] has the same "
                "endpoint and upstream_deployment)"
            )
        targets.append(
            UpstreamTarget(
                name=f"{deployment}/{index}",
                endpoint=endpoint,
                ws_base=ws_base,
                upstream_deployment=upstream_name,
                **kwargs,
            )
        )
    return tuple(targets)


def _deployment_name(node: Node) -> str:
    name = node.as_str()
    if not _DEPLOYMENT_NAME.fullmatch(name):
        node.fail(_DEPLOYMENT_EXPECTED)
    return name


def _timeout(node: Node) -> float:
    return node.as_float(minimum=0.1, maximum=120)


def _env_name(node: Node) -> str:
    name = node.as_str()
    if not _ENV_NAME.fullmatch(name):
        node.fail("an environment variable name")
    return name


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
