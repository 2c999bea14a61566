"""A key set (JWKS) endpoint on 127.0.0.1, and the keys and tokens to test JWTs with.

:func:`serve_jwks` runs a real HTTP server (Starlette under uvicorn) whose
answers the test decides: a key set, an HTTP status, raw bytes, or no answer
until released. It counts requests so tests can assert how often the relay
fetched. :func:`rsa_key`/:func:`ec_key` make key pairs with ``cryptography``;
:func:`make_token` signs tokens with PyJWT and :func:`forge_token` builds the
ones no honest issuer would (``alg: none``, HMAC with a public key, junk).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from relay.service.jwt_auth import JwtSettings
from tests.helpers.servers import serve_asgi
from tests.helpers.timing import SECOND


__all__ = [
    "AUDIENCE",
    "CLIENT",
    "ISSUER",
    "JWKS_PATH",
    "FakeClock",
    "JwksServer",
    "Reply",
    "SigningKey",
    "ec_key",
    "forge_token",
    "jwks",
    "jwt_settings",
    "make_token",
    "rsa_key",
    "serve_jwks",
]

ISSUER = "https://login.example.test/tenant-1/v2.0"
AUDIENCE = "api://realtime-relay"
CLIENT = "app-a"
JWKS_PATH = "/.well-known/jwks.json"

Reply = Mapping[str, Any] | int | bytes
"""A key set document (200, JSON), an HTTP status (empty body; a 3xx redirects
to the same path), or a raw 200 body."""


@dataclass
class FakeClock:
    """Unix time that moves only when the test says so."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        self.now += seconds


# Keys and tokens


@dataclass(frozen=True)
class SigningKey:
    """A private key, the ``kid`` it is published under and the algorithm it signs with."""

    kid: str
    alg: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)

    def jwk(self, **members: Any) -> dict[str, Any]:
        """The public JWK, with ``kid`` and ``use: sig``; ``members`` add or replace
        members (a member set to None is removed)."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, use="sig")
        jwk.update(members)
        return {name: value for name, value in jwk.items() if value is not None}

    def public_pem(self) -> bytes:
        """The public key as PEM, as an attacker could download it."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )


def rsa_key(kid: str = "rsa-1", *, alg: str = "RS256", bits: int = 2048) -> SigningKey:
    """A fresh RSA key pair."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid, alg, private)


def ec_key(kid: str = "ec-1") -> SigningKey:
    """A fresh P-256 key pair, signing ES256."""
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: object) -> dict[str, Any]:
    """A key set document: the public JWK of each :class:`SigningKey`, other
    members (raw JWKs, junk) as given."""
    return {"keys": [key.jwk() if isinstance(key, SigningKey) else key for key in keys]}


def make_token(
    key: SigningKey,
    *,
    kid: str | None = None,
    alg: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """A token signed by ``key``, valid for 5 minutes from ``now`` for the test issuer.

    ``kid`` defaults to the key's own; ``claims`` add or replace claims (a claim
    set to None is left out, e.g. ``exp=None``). Defaults: ``iss``, ``aud``,
    ``azp`` (:data:`CLIENT`), ``iat``, ``exp``.
    """
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "azp": CLIENT,
        "iat": int(issued),
        "exp": int(issued) + 300,
    }
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    # Signed as raw JSON so that claims PyJWT would refuse to encode (a
    # non-string iss, say) can still be tested.
    return jwt.api_jws.encode(
        json.dumps(payload).encode(),
        key.private_key,
        algorithm=alg or key.alg,
        headers={"kid": key.kid if kid is None else kid},
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge_token(
    header: Mapping[str, Any],
    payload: Mapping[str, Any] | bytes,
    *,
    signature: bytes = b"",
    hmac_key: bytes | None = None,
) -> str:
    """A compact JWS built by hand: any header, any payload, any signature.

    With ``hmac_key``, the signature is HMAC-SHA256 of the signing input under
    that key (e.g. an RSA public key as PEM, the key-confusion attack).
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(body)}"
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def jwt_settings(jwks_url: str, **changes: Any) -> JwtSettings:
    """Settings trusting the test issuer's key set at ``jwks_url``; RS256 and ES256."""
    options: dict[str, Any] = {
        "jwks_url": jwks_url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "client_claim": "azp",
        "algorithms": ("RS256", "ES256"),
        **changes,
    }
    return JwtSettings(**options)


# The server


class JwksServer:
    """What the key set endpoint answers, and how often it was asked."""

    def __init__(self, reply: Reply) -> None:
        self.reply: Reply = reply
        """Answer to every request that has no scripted answer."""
        self.script: deque[Reply] = deque()
        """Answers for the next requests, in order, before ``reply``."""
        self.chunked = False
        """Send bodies without ``Content-Length``."""
        self.requests = 0
        """Requests received, answered or not."""
        self.port = 0
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._released.set()

    @property
    def url(self) -> str:
        """The key set URL."""
        return f"http://127.0.0.1:{self.port}{JWKS_PATH}"

    def hold(self) -> None:
        """Leave requests from now on unanswered until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        """Answer held requests and stop holding."""
        self._released.set()

    async def wait_requests(self, count: int, *, within: float = 5 * SECOND) -> None:
        """Return once ``count`` requests have arrived (answered or held)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.requests >= count)

    async def endpoint(self, request: Request) -> Response:
        """The key set endpoint."""
        async with self._changed:
            self.requests += 1
            self._changed.notify_all()
        reply = self.script.popleft() if self.script else self.reply
        await self._released.wait()
        if isinstance(reply, int):
            # A redirect points back here: followed, it would never end.
            redirect = {"Location": JWKS_PATH} if 300 <= reply < 400 else None
            return Response(status_code=reply, headers=redirect)
        body = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        if self.chunked:
            return StreamingResponse(iter([body]), media_type="application/json")
        return Response(body, media_type="application/json")


@asynccontextmanager
async def serve_jwks(reply: Reply) -> AsyncIterator[JwksServer]:
    """Serve ``reply`` at :data:`JWKS_PATH` on 127.0.0.1; yield the server."""
    server = JwksServer(reply)
    app = Starlette(routes=[Route(JWKS_PATH, server.endpoint)])
    async with serve_asgi(app) as port:
        server.port = port
        try:
            yield server
        finally:
            # A held request would keep uvicorn from shutting down.
            server.release()
