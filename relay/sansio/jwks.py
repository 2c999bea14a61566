"""Rules for client JWTs and the key set (JWKS) that verifies them, free of I/O.

The edge, :mod:`relay.service.jwt_auth`, downloads the key set, loads keys with PyJWT
and checks signatures. Everything decided around that lives here: reading a
token's header before any key is looked up, which published keys may verify
which algorithm, the time claims, the client claim, and when the key set may
be fetched again. Times are seconds on the clock the caller passes in: Unix
time, the clock of the tokens' ``exp``/``nbf``/``iat``.

Header parameters that name other keys (``jku``, ``x5u``, ``jwk``, ``x5c``) are
ignored: keys only ever come from the configured key set.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from typing import Final, TypeGuard

from relay.exceptions import Unauthenticated


__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_JWKS_BYTES",
    "MAX_JWKS_KEYS",
    "MAX_TOKEN_LENGTH",
    "FetchState",
    "JwksPolicy",
    "SigningKeys",
    "TokenHeader",
    "UnknownKid",
    "check_time_claims",
    "client_id",
    "fetch_failed",
    "fetch_started",
    "fetch_succeeded",
    "key_fits",
    "looks_like_jwt",
    "on_unknown_kid",
    "parse_header",
    "parse_jwks",
    "refresh_delay",
]

ASYMMETRIC_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""Algorithms a key set of public keys can verify: the only ones ``auth.jwt.algorithms`` accepts.

``none`` and the HMAC family (``HS*``) are never accepted: with a public key
set, ``HS256`` is the key-confusion attack (the public key used as a secret).
A tuple, not a set: configuration errors list the choices in this order.
"""
MAX_TOKEN_LENGTH: Final = 16 * 1024
"""Longer tokens are refused unread (Entra tokens are a few kilobytes)."""
MAX_HEADER_LENGTH: Final = 1024
"""Longest encoded JOSE header read; real ones are under 300 characters."""
MAX_JWKS_BYTES: Final = 1 << 20
"""Largest key set document accepted (1 MiB)."""
MAX_JWKS_KEYS: Final = 100
"""Keys read from one key set; the rest are skipped."""

# Compact JWS: three base64url segments without padding. The signature may be
# empty (alg "none"), so that such a token is refused for its algorithm.
_COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")

# Key type (and curve) each algorithm needs: RFC 7518 §3, RFC 8037 §3.1.
_KEY_TYPES: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512")},
    **{alg: ("RSA", None) for alg in ("PS256", "PS384", "PS512")},
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}

# Public members each key type must carry (RFC 7518 §6, RFC 8037 §2).
_PUBLIC_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}

# Members only private (or symmetric) keys have; such a key is never used.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_INVALID = "invalid bearer token"


# Token header


@dataclass(frozen=True, slots=True)
class TokenHeader:
    """What a token's JOSE header says, read before any key is chosen."""

    alg: str
    kid: str | None


def _decode_segment(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _read_header(token: str) -> dict[str, object] | None:
    """The header of a compact JWS as a JSON object, or None if it is not one."""
    if not token.isascii():
        return None
    header_end = token.find(".")
    # Checked before the whole-token match so a huge header is never decoded.
    if not 0 < header_end <= MAX_HEADER_LENGTH:
        return None
    if _COMPACT.fullmatch(token) is None:
        return None
    raw = _decode_segment(token[:header_end])
    if raw is None:
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has the shape of a JWT rather than of a static key.

    True for three base64url segments whose first decodes to a JSON object
    with a string ``alg``. Nothing is verified: a token for which this is
    true still has to pass :meth:`relay.service.jwt_auth.JwtVerifier.verify`.
    """
    return _read_header(token) is not None


def parse_header(token: str, algorithms: Collection[str]) -> TokenHeader:
    """Read ``token``'s header and check its algorithm against ``algorithms``.

    Raises:
        Unauthenticated: ``malformed`` (too long, not a compact JWS, header not
            a JSON object with a string ``alg``, non-string ``kid``) or
            ``bad_algorithm`` (``alg`` not in ``algorithms``, or not an
            asymmetric algorithm whatever ``algorithms`` says).
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated(_INVALID, reason="malformed")
    header = _read_header(token)
    if header is None:
        raise Unauthenticated(_INVALID, reason="malformed")
    alg = header["alg"]
    assert isinstance(alg, str)
    if alg not in algorithms or alg not in ASYMMETRIC_ALGORITHMS:
        raise Unauthenticated(_INVALID, reason="bad_algorithm")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise Unauthenticated(_INVALID, reason="malformed")
    return TokenHeader(alg=alg, kid=kid)


# Key set


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The keys of a key set that may verify token signatures."""

    keys: tuple[Mapping[str, object], ...]
    """JWKs with a unique string ``kid``, public members only, ``use`` absent or
    ``sig``; in document order."""
    skipped: int
    """Members left out (other uses, private or symmetric keys, duplicates...)."""


def _is_signing_key(jwk: object) -> TypeGuard[dict[str, object]]:
    if not isinstance(jwk, dict):
        return False
    kid = jwk.get("kid")
    kty = jwk.get("kty")
    alg = jwk.get("alg")
    key_ops = jwk.get("key_ops")
    if not isinstance(kid, str) or not kid or not isinstance(kty, str):
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    if key_ops is not None and (
        not isinstance(key_ops, list) or "verify" not in key_ops
    ):
        return False
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        return False
    members = _PUBLIC_MEMBERS.get(kty)
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        return False
    return _PRIVATE_MEMBERS.isdisjoint(jwk)


def parse_jwks(body: bytes) -> SigningKeys:
    """The signing keys of the key set document ``body``.

    Keys that cannot verify a signature are skipped, not fatal: keys for
    other uses (``use: enc``), private or symmetric keys, unknown key types,
    duplicate ``kid``s, and members past :data:`MAX_JWKS_KEYS`. Whether
    PyJWT can load a remaining key is for the caller to find out.

    Raises:
        ValueError: ``body`` is larger than :data:`MAX_JWKS_BYTES`, is not
            UTF-8 JSON, or is not an object with a ``keys`` array.
    """
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("key set too large")
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError("key set is not UTF-8 JSON") from exc
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise ValueError("key set has no 'keys' array")
    keys: list[Mapping[str, object]] = []
    kids: set[object] = set()
    for jwk in members[:MAX_JWKS_KEYS]:
        if _is_signing_key(jwk) and jwk["kid"] not in kids:
            kids.add(jwk["kid"])
            keys.append(jwk)
    return SigningKeys(keys=tuple(keys), skipped=len(members) - len(keys))


def key_fits(alg: str, jwk: Mapping[str, object]) -> bool:
    """Whether a token signed with ``alg`` may be verified by ``jwk``.

    The key type (and curve) must be the one ``alg`` needs, and a key that
    names its own ``alg`` verifies that algorithm only (RFC 7517 §4.4).
    """
    needed = _KEY_TYPES.get(alg)
    if needed is None:
        return False
    kty, curves = needed
    if jwk.get("kty") != kty:
        return False
    if curves is not None and jwk.get("crv") not in curves:
        return False
    declared = jwk.get("alg")
    return declared is None or declared == alg


# Claims


def _number(value: object) -> float | None:
    # bool is an int in Python but never a NumericDate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def check_time_claims(claims: Mapping[str, object], now: float, leeway: float) -> None:
    """Check ``exp``, ``nbf`` and ``iat`` at ``now``, allowing ``leeway`` of skew.

    ``exp`` is required; ``nbf`` and ``iat`` are checked when present (as PyJWT
    does: a token issued in the future is not valid yet).

    Raises:
        Unauthenticated: ``missing_claim`` (no ``exp``), ``malformed`` (a
            time claim that is not a finite number), ``expired`` or
            ``not_yet_valid``.
    """
    if "exp" not in claims:
        raise Unauthenticated(_INVALID, reason="missing_claim")
    times: dict[str, float] = {}
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            number = _number(claims[name])
            if number is None:
                raise Unauthenticated(_INVALID, reason="malformed")
            times[name] = number
    if times["exp"] <= now - leeway:
        raise Unauthenticated("bearer token expired", reason="expired")
    for name in ("nbf", "iat"):
        if name in times and times[name] > now + leeway:
            raise Unauthenticated(_INVALID, reason="not_yet_valid")


def client_id(claims: Mapping[str, object], claim: str) -> str:
    """The value of the client ``claim``: a non-empty string.

    Raises:
        Unauthenticated: ``missing_claim`` if it is absent, empty or not a string.
    """
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise Unauthenticated(_INVALID, reason="missing_claim")
    return value


# Fetching


@dataclass(frozen=True, slots=True)
class JwksPolicy:
    """When the key set is fetched."""

    cache_seconds: float
    """A fetched key set is refreshed this long after the fetch started."""
    refetch_interval: float
    """An unknown ``kid`` starts a fetch only if none started this long ago."""
    retry_min: float = 1.0
    """First retry after a failed fetch; it doubles up to ``refetch_interval``."""


@dataclass(frozen=True, slots=True)
class FetchState:
    """What is known about fetching the key set."""

    keys_loaded: int = 0
    """Keys usable now (those of the last good fetch)."""
    in_flight: bool = False
    """A fetch has started and not finished."""
    last_attempt_at: float | None = None
    """When the latest fetch started."""
    last_fetch_at: float | None = None
    """When the latest finished fetch ended."""
    last_fetch_ok: bool = False
    """Whether the latest finished fetch loaded a key set."""
    last_success_at: float | None = None
    """When a fetch last loaded a key set."""
    failures: int = 0
    """Failed fetches since the last good one."""


def fetch_started(state: FetchState, now: float) -> FetchState:
    """Record that a fetch started at ``now``."""
    return replace(state, in_flight=True, last_attempt_at=now)


def fetch_succeeded(state: FetchState, now: float, keys: int) -> FetchState:
    """Record that a fetch ended at ``now`` and loaded ``keys`` keys."""
    return replace(
        state,
        keys_loaded=keys,
        in_flight=False,
        last_fetch_at=now,
        last_fetch_ok=True,
        last_success_at=now,
        failures=0,
    )


def fetch_failed(state: FetchState, now: float) -> FetchState:
    """Record that a fetch ended at ``now`` without a key set; the old one stays."""
    return replace(
        state,
        in_flight=False,
        last_fetch_at=now,
        last_fetch_ok=False,
        failures=state.failures + 1,
    )


class UnknownKid(enum.Enum):
    """What to do about a token whose ``kid`` is not in the cached key set."""

    JOIN = "join"
    """Wait for the fetch in flight, then look again."""
    FETCH = "fetch"
    """Start a fetch, wait for it, then look again."""
    REFUSE = "refuse"
    """Refuse the token now; the key set was fetched too recently."""


def on_unknown_kid(state: FetchState, now: float, policy: JwksPolicy) -> UnknownKid:
    """Decide whether a token with an unknown ``kid`` may cause a fetch.

    At most one fetch starts per ``refetch_interval``, whoever asked for the
    previous one, so tokens with random ``kid``s cannot make the relay hammer
    the key set URL; concurrent askers share one fetch. The same applies
    when no key set has loaded yet.
    """
    if state.in_flight:
        return UnknownKid.JOIN
    if state.last_attempt_at is None:
        return UnknownKid.FETCH
    elapsed = now - state.last_attempt_at
    # A clock stepped backwards must not block fetches for that long.
    if elapsed < 0 or elapsed >= policy.refetch_interval:
        return UnknownKid.FETCH
    return UnknownKid.REFUSE


def refresh_delay(state: FetchState, now: float, policy: JwksPolicy) -> float:
    """Seconds until the background refresh should fetch; 0 means now.

    A good key set is refreshed ``cache_seconds`` after its fetch started. A
    failed fetch is retried after ``retry_min``, doubling per failure up to
    ``refetch_interval`` (and ``cache_seconds``). The delay never exceeds
    ``cache_seconds``, even if the clock steps backwards.
    """
    if state.in_flight or state.last_attempt_at is None:
        return 0.0
    if state.failures:
        ceiling = min(policy.refetch_interval, policy.cache_seconds)
        wait = min(ceiling, policy.retry_min * 2.0 ** min(state.failures - 1, 30))
    else:
        wait = policy.cache_seconds
    return min(max(0.0, state.last_attempt_at + wait - now), policy.cache_seconds)
