"""Handshake rules: who the client is, what it asks for, and what goes upstream.

:class:`Gatekeeper` turns a client's upgrade request into an :class:`Admission`
or raises the :class:`~relay.exceptions.ClientRejected` leaf that answers it.
It runs before any upstream connection exists. The checks run in this order,
so an unauthenticated caller learns nothing about deployments:

1. the path is a known realtime path (else 404);
2. a credential is present and well formed (else 401), and identifies a
   configured client: one of its static keys here, or a JWT verified by the
   I/O edge (else 401);
3. the client may use a query-string credential, if that is where it came
   from (else 401);
4. an ``Origin`` header, if any, is in the client's allow-list (else 403):
   server-to-server callers send none, browsers always do;
5. the query is well formed (else 400): no repeated parameters, the required
   ones present, values of a safe shape;
6. the deployment is configured (else 404) and the client may use it (else 403).

Credentials are accepted, in this order of precedence, from the ``api-key``
header, ``Authorization: Bearer``, an ``openai-insecure-api-key.<key>``
subprotocol, and the ``api-key`` / ``Authorization`` query parameters (browser
clients can set nothing else). Only the first one present is considered.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import parse_qsl, quote, urlencode

from relay.exceptions import BadRequest, Forbidden, NotFound, Unauthenticated
from relay.sansio.settings import ClientSettings, DeploymentSettings
from relay.typing import ClientId, Family


__all__ = [
    "Admission",
    "Credential",
    "CredentialSource",
    "Gatekeeper",
    "HandshakeRequest",
    "Route",
    "family_for_api_version",
    "redact_query",
    "select_subprotocol",
    "upstream_headers",
    "upstream_target",
]

CredentialSource = Literal["api-key-header", "bearer", "subprotocol", "query"]

PREVIEW_PATH: Final = "/openai/realtime"
GA_PATHS: Final = frozenset({"/openai/v1/realtime", "/v1/realtime"})
KEY_SUBPROTOCOL_PREFIX: Final = "openai-insecure-api-key."
# Subprotocols the relay can honour, in order of preference. `realtime` is what
# OpenAI's browser clients offer; the beta marker is accepted for older ones.
ACCEPTED_SUBPROTOCOLS: Final = ("realtime", "openai-beta.realtime-v1")
# Query parameters that may carry credentials: redacted before anything logs.
CREDENTIAL_PARAMS: Final = frozenset(
    {"api-key", "authorization", "access_token", "token", "key"}
)
_PARAM_VALUE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """The parts of a client's upgrade request the rules look at.

    ``headers`` names are lower case; ``query`` is the raw query string.
    """

    path: str
    query: bytes
    headers: Sequence[tuple[str, str]]
    subprotocols: Sequence[str]


@dataclass(frozen=True, slots=True)
class Credential:
    """What the client presented to authenticate, and where."""

    secret: str = field(repr=False)
    source: CredentialSource


@dataclass(frozen=True, slots=True)
class Route:
    """What the client asked for, on which protocol family."""

    family: Family
    deployment: str
    api_version: str | None
    """Set on the preview path only; forwarded upstream as the client sent it."""


@dataclass(frozen=True, slots=True)
class Admission:
    """A client allowed to open a session, and where its session goes."""

    client: ClientSettings
    credential_source: CredentialSource
    route: Route
    deployment: DeploymentSettings
    subprotocol: str | None
    """The subprotocol to select when accepting (never a key-bearing one)."""

    @property
    def client_id(self) -> ClientId:
        """The configured id of the admitted client."""
        return self.client.id

    @property
    def upstream_route(self) -> Route:
        """What the session asks of the upstream.

        The client's own route, unless the deployment's upstream speaks only
        GA (``upstream_protocol: ga``): then the GA endpoint, without an
        ``api-version``, whatever path the client used.
        """
        route = self.route
        if self.deployment.upstream_protocol == "ga" and route.api_version is not None:
            return Route(family="ga", deployment=route.deployment, api_version=None)
        return route

    @property
    def bridged(self) -> bool:
        """Whether a preview-protocol client is translated to a GA upstream."""
        return self.route.family == "preview" and self.upstream_route.family == "ga"


def family_for_api_version(api_version: str) -> Family:
    """Protocol family of the preview path ``/openai/realtime`` for an ``api-version``.

    ``*-preview`` versions speak the preview (beta) events. The openai SDK's
    GA client on ``AzureOpenAI`` also uses this path with a non-preview
    version and GA events; that Azure picks the family from the version this
    way is an assumption (UNVERIFIED, protocol.md §1.1 and §2.1).
    """
    return "preview" if api_version.endswith("-preview") else "ga"


def select_subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol to accept: the preferred one the client offered, else none."""
    offered_set = set(offered)
    for name in ACCEPTED_SUBPROTOCOLS:
        if name in offered_set:
            return name
    return None


def redact_query(query: bytes) -> bytes:
    """``query`` with the value of every credential-bearing parameter replaced.

    The result is what may be logged (uvicorn logs the path with its query).
    Unparseable input is redacted entirely rather than risk a leak.
    """
    if not query:
        return query
    try:
        pairs = parse_qsl(
            query.decode("ascii"), keep_blank_values=True, strict_parsing=True
        )
    except (UnicodeDecodeError, ValueError):
        return b"REDACTED"
    if not any(name.lower() in CREDENTIAL_PARAMS for name, _ in pairs):
        return query
    redacted = [
        (name, "REDACTED" if name.lower() in CREDENTIAL_PARAMS else value)
        for name, value in pairs
    ]
    return urlencode(redacted, quote_via=quote).encode("ascii")


def upstream_headers(
    auth: tuple[str, str], *, request_id: str, user_agent: str
) -> list[tuple[str, str]]:
    """The complete set of headers sent upstream: built, never copied from the client.

    Azure passes at most 10 custom headers (protocol.md §1.3); nothing of the
    client's (credentials, cookies, arbitrary headers) may reach it.
    """
    return [auth, ("x-ms-client-request-id", request_id), ("user-agent", user_agent)]


class Gatekeeper:
    """Admits or rejects handshakes for the configured clients and deployments."""

    def __init__(
        self,
        clients: Sequence[ClientSettings],
        deployments: Mapping[str, DeploymentSettings],
    ) -> None:
        # (digest, client) for every configured key, compared in constant time.
        self._keys: tuple[tuple[bytes, ClientSettings], ...] = tuple(
            (digest, client) for client in clients for digest in client.key_sha256
        )
        self._deployments = deployments
        self._by_id: dict[str, ClientSettings] = {
            client.id: client for client in clients
        }

    def credential(self, request: HandshakeRequest) -> Credential:
        """Steps 1-2: the realtime path and the credential the client presents.

        Raises:
            NotFound: unknown path.
            Unauthenticated: no credential, or a malformed one.
            BadRequest: a query string that is not ASCII.
        """
        if request.path != PREVIEW_PATH and request.path not in GA_PATHS:
            raise NotFound("no realtime endpoint at this path")
        secret, source = _credential(request)
        return Credential(secret, source)

    def identify(self, credential: Credential) -> ClientSettings | None:
        """The client one of whose static keys ``credential`` is, if any."""
        digest = hashlib.sha256(credential.secret.encode()).digest()
        found: ClientSettings | None = None
        # Compare against every key, whatever matches, so timing reveals nothing.
        for expected, client in self._keys:
            if hmac.compare_digest(digest, expected):
                found = client
        return found

    def client_by_id(self, client_id: str) -> ClientSettings | None:
        """The configured client called ``client_id`` (a JWT's client claim)."""
        return self._by_id.get(client_id)

    def admit(
        self,
        request: HandshakeRequest,
        client: ClientSettings | None = None,
        credential: Credential | None = None,
    ) -> Admission:
        """Decide on ``request``; see the module docstring for the order of checks.

        ``client`` and ``credential`` are given when the edge identified the
        client itself (a JWT); otherwise the credential must be a static key.

        Raises:
            NotFound: unknown path or deployment.
            Unauthenticated: no credential, a malformed or unknown one, or a
                query-string credential the client may not use.
            Forbidden: an Origin or a deployment the client may not use.
            BadRequest: a malformed query.
        """
        if credential is None:
            credential = self.credential(request)
        if client is None:
            client = self.identify(credential)
            if client is None:
                raise Unauthenticated("invalid credentials", reason="invalid")
        if credential.source == "query" and not client.allow_query_auth:
            raise Unauthenticated(
                "credentials in the query string are not accepted for this client",
                reason="query_auth_disabled",
            )
        _check_origin(request, client)
        params = _query_params(request.query)
        route = _route(request.path, params)
        deployment = self._deployments.get(route.deployment)
        if deployment is None:
            raise NotFound(
                f"deployment {route.deployment!r} is not served by this relay"
            )
        if client.deployments is not None and deployment.name not in client.deployments:
            raise Forbidden(
                f"deployment {route.deployment!r} is not allowed for this client",
                reason="deployment",
            )
        return Admission(
            client=client,
            credential_source=credential.source,
            route=route,
            deployment=deployment,
            subprotocol=select_subprotocol(request.subprotocols),
        )


def _check_origin(request: HandshakeRequest, client: ClientSettings) -> None:
    origins = [value for name, value in request.headers if name == "origin"]
    if not origins:
        return
    if len(origins) > 1 or origins[0].strip().lower() not in client.allowed_origins:
        raise Forbidden("this Origin is not allowed", reason="origin")


def _credential(request: HandshakeRequest) -> tuple[str, CredentialSource]:
    api_keys = [value for name, value in request.headers if name == "api-key"]
    authorizations = [
        value for name, value in request.headers if name == "authorization"
    ]
    if len(api_keys) > 1 or len(authorizations) > 1:
        raise Unauthenticated("more than one credential header", reason="malformed")
    if api_keys:
        return _nonempty(api_keys[0].strip()), "api-key-header"
    if authorizations:
        return _bearer(authorizations[0]), "bearer"
    for protocol in request.subprotocols:
        if protocol.startswith(KEY_SUBPROTOCOL_PREFIX):
            return _nonempty(
                protocol.removeprefix(KEY_SUBPROTOCOL_PREFIX)
            ), "subprotocol"
    try:
        pairs = parse_qsl(request.query.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not ASCII") from None
    for name, value in pairs:
        if name.lower() == "api-key":
            return _nonempty(value.strip()), "query"
        if name.lower() == "authorization":
            return _bearer(value), "query"
    raise Unauthenticated(
        "missing credentials: send an api-key header or Authorization: Bearer",
        reason="missing",
    )


def _nonempty(key: str) -> str:
    if not key:
        raise Unauthenticated("empty credential", reason="malformed")
    return key


def _bearer(value: str) -> str:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(
            "malformed Authorization: expected 'Bearer <token>'", reason="malformed"
        )
    return _nonempty(token.strip())


def _query_params(query: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadRequest("the query string is not ASCII") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        # A repeated parameter could be read differently by the upstream.
        if name in params:
            raise BadRequest(f"query parameter {name!r} is repeated")
        params[name] = value
    return params


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise BadRequest(f"missing query parameter {name!r}")
    if not _PARAM_VALUE.fullmatch(value):
        raise BadRequest(f"query parameter {name!r} has an invalid value")
    return value


def _route(path: str, params: dict[str, str]) -> Route:
    if path == PREVIEW_PATH:
        api_version = _required(params, "api-version")
        return Route(
            family=family_for_api_version(api_version),
            deployment=_required(params, "deployment"),
            api_version=api_version,
        )
    if "call_id" in params:
        raise BadRequest("WebRTC sideband sessions (call_id) are not relayed")
    return Route(family="ga", deployment=_required(params, "model"), api_version=None)


def upstream_target(route: Route, upstream_deployment: str) -> str:
    """The upstream path and query for ``route`` on a deployment named ``upstream_deployment``.

    Each upstream of a deployment may name it differently, so the target is
    built per attempt, e.g. ``/openai/v1/realtime?model=gpt-realtime-prod``.
    The preview path keeps the client's ``api-version``.
    """
    if route.api_version is not None:
        query = urlencode(
            {"api-version": route.api_version, "deployment": upstream_deployment}
        )
        return f"{PREVIEW_PATH}?{query}"
    return "/openai/v1/realtime?" + urlencode({"model": upstream_deployment})
