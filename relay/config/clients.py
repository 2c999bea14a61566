"""Parsing who may connect: ``auth:`` (client JWTs) and ``clients:`` (ids, keys, limits).

A client authenticates with one of its static keys (stored as SHA-256 digests)
or, when ``auth.jwt`` is configured, with a JWT whose client claim names it.
Each client has a policy, limits (defaults in :class:`relay.sansio.settings.ClientLimits`),
an Origin allow-list (empty: any ``Origin`` header is refused), the deployments
it may use, and whether it may put credentials in the query string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from relay.config.policies import check_reachable, resolve_policy
from relay.config.reader import Node, Section
from relay.exceptions import ConfigError
from relay.sansio.jwks import ASYMMETRIC_ALGORITHMS
from relay.sansio.policy import Policy
from relay.sansio.settings import (
    ClientLimits,
    ClientSettings,
    DeploymentSettings,
    JwtSettings,
    MiB,
    jwks_url_allowed,
)
from relay.typing import ClientId


__all__ = ["parse_auth", "parse_clients"]

_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_ORIGIN: Final = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:]+\](:[0-9]{1,5})?"
)


def parse_auth(section: Section) -> JwtSettings | None:
    """The ``auth.jwt`` settings, if configured."""
    node = section.get("jwt")
    section.finish()
    if node is None:
        return None
    jwt = node.as_section()
    url_node = jwt.require("jwks_url", "the https URL of the JWKS")
    kwargs: dict[str, Any] = {
        "jwks_url": _jwks_url(url_node),
        "issuer": jwt.require("issuer", "the expected iss claim").as_str(),
        "audience": jwt.require("audience", "the expected aud claim").as_str(),
    }
    if claim := jwt.get("client_claim"):
        kwargs["client_claim"] = claim.as_str()
    if algorithms := jwt.get("algorithms"):
        names = [item.as_choice(ASYMMETRIC_ALGORITHMS) for item in algorithms.as_list()]
        if not names:
            algorithms.fail("at least one algorithm")
        kwargs["algorithms"] = tuple(dict.fromkeys(names))
    if leeway := jwt.get("leeway"):
        kwargs["leeway"] = leeway.as_float(minimum=0, maximum=300)
    for key, maximum in (
        ("jwks_cache_seconds", 86400),
        ("jwks_refetch_interval", 3600),
        ("jwks_timeout", 60),
    ):
        if value := jwt.get(key):
            kwargs[key] = value.as_float(minimum=0.1, maximum=maximum)
    jwt.finish()
    return JwtSettings(**kwargs)


def _jwks_url(node: Node) -> str:
    url = node.as_str()
    if not jwks_url_allowed(url):
        node.fail("an https URL (http only for a loopback host)")
    return url


def parse_clients(
    node: Node,
    *,
    policies: Mapping[str, Policy],
    policies_section: Section,
    deployments: Mapping[str, DeploymentSettings],
    jwt: JwtSettings | None,
) -> tuple[ClientSettings, ...]:
    """Every configured client; ids and keys unique, policies and deployments resolved."""
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
        keys_node = section.get("key_sha256")
        if keys_node is None and jwt is None:
            raise ConfigError(
                f"{section.source}: {section.path}.key_sha256: missing, expected a SHA-256 hex digest "
                "or a list of them (or configure auth.jwt)"
            )
        digests = _digests(keys_node) if keys_node is not None else ()
        for digest in digests:
            if digest in owners:
                assert keys_node is not None
                keys_node.fail(f"keys not shared with client {owners[digest]!r}")
            owners[digest] = client_id
        kwargs: dict[str, Any] = {
            "id": ClientId(client_id),
            "key_sha256": digests,
            "policy": resolve_policy(policies, section.get("policy"), used),
            "limits": _limits(section.section("limits")),
        }
        if (node_value := section.get("allow_query_auth")) is not None:
            kwargs["allow_query_auth"] = node_value.as_bool()
        if (node_value := section.get("drain_notice")) is not None:
            kwargs["drain_notice"] = node_value.as_choice(("event", "error", "none"))
        if (origins := section.get("allowed_origins")) is not None:
            kwargs["allowed_origins"] = frozenset(_origin(o) for o in origins.as_list())
        if (allowed := section.get("deployments")) is not None:
            kwargs["deployments"] = frozenset(
                _deployment(d, deployments) for d in allowed.as_list()
            )
        section.finish()
        clients.append(ClientSettings(**kwargs))
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


def _limits(section: Section) -> ClientLimits:
    kwargs: dict[str, Any] = {}
    for key, maximum in (("max_sessions", 100_000), ("sessions_per_minute", 1_000_000)):
        if node := section.get(key):
            kwargs[key] = node.as_int(minimum=1, maximum=maximum)
    for name, low, high in (
        ("max_session_seconds", 1.0, 86400.0),
        ("idle_seconds", 1.0, 3600.0),
        ("messages_per_second", 1.0, 100_000.0),
    ):
        if node := section.get(name):
            kwargs[name] = node.as_float(minimum=low, maximum=high)
    if node := section.get("bytes_per_second"):
        kwargs["bytes_per_second"] = node.as_int(minimum=1024, maximum=1024 * MiB)
    if node := section.get("burst_bytes"):
        kwargs["burst_bytes"] = node.as_int(minimum=1024, maximum=1024 * MiB)
    section.finish()
    return ClientLimits(**kwargs)


def _origin(node: Node) -> str:
    origin = node.as_str()
    # Exact origins only (scheme://host[:port]): wildcards and substrings are how
    # Origin checks get bypassed.
    if not _ORIGIN.fullmatch(origin):
        node.fail("an origin such as https://app.example.com (no path, no wildcard)")
    return origin.lower()


def _deployment(node: Node, deployments: Mapping[str, DeploymentSettings]) -> str:
    name = node.as_str()
    if name not in deployments:
        node.fail(f"a configured deployment ({', '.join(sorted(deployments))})")
    return name
