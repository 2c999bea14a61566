"""Pure handshake rules: which upgrade requests the simulated Azure accepts.

:func:`decide` maps a request (path, query, headers) to :class:`Accept`
(protocol family and deployment) or :class:`Reject` (HTTP status and an
Azure-style ``{"error": {"code", "message"}}`` body), following protocol.md
§1.1 (URLs), §1.3 (credentials) and §1.4 (failures). Checks run in this order:
path, ``api-version`` on the GA path, credentials, then query parameters.
That order, and most message texts, are the simulator's guesses (UNVERIFIED);
the statuses follow protocol.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from relay.simulator.wire import Family


PREVIEW_PATH = "/openai/realtime"
"""Preview path; also used by the openai SDK's ``AzureOpenAI`` GA client (§2.1)."""

GA_PATH = "/openai/v1/realtime"
"""GA path (``?model=<deployment>``)."""

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")

# Azure's usual texts for these failures on its REST endpoints.
_NOT_FOUND = "Resource not found"
_MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include "
    "subscription key when making requests to an API."
)
_INVALID_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
    "to provide a valid key for an active subscription and use a correct regional "
    "API endpoint for your resource."
)
_INVALID_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the "
    "deployment within the last 5 minutes, please wait a moment and try again."
)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may connect, and to what."""

    api_keys: frozenset[str] = frozenset()
    """Accepted ``api-key`` values (and Bearer values on the GA path)."""
    bearer_tokens: frozenset[str] = frozenset()
    """Accepted ``Authorization: Bearer`` tokens (stand-ins for Entra tokens)."""
    deployments: frozenset[str] | None = None
    """Known deployments; None accepts any name."""
    families: frozenset[Family] = frozenset(Family)
    """Protocol families served. Without ``preview`` the simulator is a
    resource after the preview's retirement: a ``-preview`` api-version is
    refused (see :func:`decide`)."""

    @property
    def dev_mode(self) -> bool:
        """No keys and no tokens configured: any non-empty credential is accepted."""
        return not self.api_keys and not self.bearer_tokens

    def accepts_key(self, key: str) -> bool:
        """Whether ``key`` is a valid ``api-key``."""
        return bool(key) if self.dev_mode else key in self.api_keys

    def accepts_bearer(self, token: str, *, ga_path: bool) -> bool:
        """Whether ``token`` is a valid Bearer credential.

        On the GA path an API key is also accepted as a Bearer token: Azure's
        GA quickstart sends the resource key that way (protocol.md §1.3).
        """
        if self.dev_mode:
            return bool(token)
        return token in self.bearer_tokens or (ga_path and token in self.api_keys)


@dataclass(frozen=True)
class Accept:
    """Upgrade the connection and simulate ``family`` for ``deployment``."""

    family: Family
    deployment: str


@dataclass(frozen=True)
class Reject:
    """Answer the upgrade request with an HTTP error."""

    status: int
    code: str
    message: str

    def body(self) -> bytes:
        """The Azure-style JSON body: ``{"error": {"code": …, "message": …}}``."""
        return json.dumps(
            {"error": {"code": self.code, "message": self.message}}
        ).encode()


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """Split a request target into its path and query (first value of a key wins)."""
    parts = urlsplit(target)
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(key, value)
    return parts.path, query


def decide(
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    policy: AccessPolicy,
) -> Accept | Reject:
    """Decide the fate of an upgrade request.

    Args:
        path: Request path without the query.
        query: Query parameters (see :func:`split_target`).
        headers: Request headers with lower-case names.
        policy: Credentials and deployments to accept.
    """
    if path not in (PREVIEW_PATH, GA_PATH):
        return Reject(404, "404", _NOT_FOUND)
    ga_path = path == GA_PATH
    if ga_path and "api-version" in query:
        # AZ-MIG: keeping api-version on the v1 URL yields 401.
        return Reject(
            401,
            "401",
            "The api-version query parameter is not allowed on /openai/v1 paths.",
        )
    denied = _authenticate(query, headers, policy, ga_path=ga_path)
    if denied is not None:
        return denied
    if ga_path:
        deployment = query.get("model")
        if not deployment:
            return Reject(
                400, "BadRequest", "Missing required query parameter 'model'."
            )
        family = Family.GA
    else:
        version = query.get("api-version")
        if version is None:
            return Reject(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if not _API_VERSION.fullmatch(version):
            return Reject(404, "404", _NOT_FOUND)  # RAG-RELAY PR #6: bad value → 404.
        deployment = query.get("deployment")
        if not deployment:
            return Reject(404, "DeploymentNotFound", _NO_DEPLOYMENT)
        # A non-preview api-version selects the GA protocol, as the openai SDK's
        # AzureOpenAI GA client expects (§2.1). Whether Azure really switches the
        # protocol on the api-version is UNVERIFIED.
        family = Family.PREVIEW if version.endswith("-preview") else Family.GA
        if family not in policy.families:
            # A retired API version: Azure answers an api-version it no longer
            # serves with 400 BadRequest "API version not supported" on its
            # other endpoints (reported by its users through 2025). That the
            # realtime path answers the same once the preview is retired is
            # UNVERIFIED.
            return Reject(400, "BadRequest", "API version not supported")
    if policy.deployments is not None and deployment not in policy.deployments:
        return Reject(404, "DeploymentNotFound", _NO_DEPLOYMENT)
    return Accept(family, deployment)


def _authenticate(
    query: Mapping[str, str],
    headers: Mapping[str, str],
    policy: AccessPolicy,
    *,
    ga_path: bool,
) -> Reject | None:
    # Credentials may also travel in the query string, as browsers send them (§1.3).
    lowered = {key.lower(): value for key, value in query.items()}
    key = headers.get("api-key", lowered.get("api-key"))
    if key is not None:
        # A key, when present, decides alone (it wins over Authorization).
        return None if policy.accepts_key(key) else Reject(401, "401", _INVALID_KEY)
    authorization = headers.get("authorization", lowered.get("authorization"))
    if authorization is None:
        return Reject(401, "401", _MISSING_KEY)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and policy.accepts_bearer(
        token.strip(), ga_path=ga_path
    ):
        return None
    return Reject(401, "401", _INVALID_TOKEN)
