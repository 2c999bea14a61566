"""Client JWTs verified against a key set (JWKS) fetched in the background.

The key set is downloaded with aiohttp, bounded in time (``jwks_timeout``) and
size (:data:`~relay.sansio.jwks.MAX_JWKS_BYTES`), loaded with PyJWT and cached
by ``kid``. A token whose ``kid`` is cached is verified without touching the
network. An unknown ``kid`` may cause one fetch per ``jwks_refetch_interval``,
shared by every verification that needs it, so tokens with random ``kid``s
cannot hammer the key set URL or slow other handshakes. A failed refresh
keeps the cached key set.

PyJWT's ``PyJWKClient`` is not used: it blocks on urllib and fetches again for
every unknown ``kid``. The decisions (which header, which key, which claims,
when to fetch) live in :mod:`relay.sansio.jwks`; this module does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import jwt
import structlog

from relay.exceptions import Unauthenticated
from relay.sansio.jwks import (
    MAX_JWKS_BYTES,
    FetchState,
    JwksPolicy,
    TokenHeader,
    UnknownKid,
    check_time_claims,
    client_id,
    fetch_failed,
    fetch_started,
    fetch_succeeded,
    key_fits,
    looks_like_jwt,
    on_unknown_kid,
    parse_header,
    parse_jwks,
    refresh_delay,
)
from relay.sansio.settings import JwtSettings
from relay.service.tasks import TaskSet


if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys
    from jwt.types import Options


__all__ = ["JwksStatus", "JwtSettings", "JwtVerifier", "looks_like_jwt"]

log = structlog.get_logger("relay.jwt")

_INVALID: Final = "invalid bearer token"
_UNAVAILABLE: Final = "bearer tokens cannot be verified now; retry later"
_CHUNK: Final = 64 * 1024

# Signature, iss, aud and the presence of exp are PyJWT's to check. The time
# claims are checked by relay.sansio.jwks on the injected clock instead, since
# PyJWT reads the system clock itself.
_DECODE_OPTIONS: Final[Options] = {
    "require": ["exp", "iss", "aud"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    # Refuse keys below the recommended size instead of warning per token.
    "enforce_minimum_key_length": True,
}


@dataclass(frozen=True, slots=True)
class JwksStatus:
    """The key set's health, for ``/readyz`` and metrics."""

    keys_loaded: int
    """Keys tokens can be verified with; 0 until a fetch succeeds."""
    last_fetch_ok: bool
    """Whether the latest finished fetch loaded a key set."""
    last_fetch_at: float | None
    """When the latest fetch finished (clock time), if any did."""
    last_success_at: float | None
    """When a fetch last loaded a key set."""
    consecutive_failures: int
    """Failed fetches since the last good one."""


@dataclass(frozen=True, slots=True)
class _Key:
    """A loaded verification key and the JWK it came from."""

    jwk: Mapping[str, object] = field(repr=False)
    public_key: AllowedPublicKeys = field(repr=False)


class _FetchError(Exception):
    """A key set response the relay will not use; ``kind`` is a bounded label."""

    def __init__(self, kind: str, *, status: int | None = None) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status


def _default_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"Accept": "application/json, application/jwk-set+json"},
    )


class JwtVerifier:
    """Verifies client JWTs; implements :class:`relay.typing.ClientTokenVerifier`.

    Call :meth:`start` once the event loop runs (it returns at once; the key
    set loads in the background) and :meth:`close` at shutdown. ``clock``
    gives Unix time: it judges ``exp``/``nbf``/``iat`` and schedules fetches.
    ``session_factory`` builds the aiohttp session used for the key set.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] = _default_session,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._session_factory = session_factory
        self._policy = JwksPolicy(
            cache_seconds=settings.jwks_cache_seconds,
            refetch_interval=settings.jwks_refetch_interval,
        )
        # Keys of the last good fetch, by kid; replaced whole, never emptied.
        self._keys: dict[str, _Key] = {}
        # Fetch bookkeeping, advanced by the pure functions of relay.sansio.jwks.
        self._state = FetchState()
        # The fetch in progress, shared by every caller; None before the first.
        self._fetch: asyncio.Task[None] | None = None
        # The background refresh; None until start().
        self._refresher: asyncio.Task[None] | None = None
        # Created on first use, inside the running loop, as aiohttp requires.
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._tasks = TaskSet()

    async def start(self) -> None:
        """Start fetching the key set and refreshing it in the background.

        Returns at once, whether or not the key set URL answers. Until a key
        set loads, :meth:`verify` waits for a fetch in flight or refuses with
        ``jwks_unavailable``. Calling it again does nothing.

        Raises:
            RuntimeError: the verifier is closed.
        """
        if self._closed:
            raise RuntimeError("JwtVerifier.start() called after close()")
        if self._refresher is None:
            self._start_fetch()
            self._refresher = self._tasks.spawn(self._refresh(), name="jwks-refresh")

    async def verify(self, token: str) -> str:
        """Validate ``token``; return the value of the client claim.

        Only a token whose ``kid`` is not cached can wait, for at most
        ``jwks_timeout``, and only when a fetch is allowed or in flight.

        Raises:
            Unauthenticated: with ``reason`` one of ``malformed`` (not a
                compact JWS, oversized, non-ASCII, bad JSON or claim types),
                ``bad_algorithm`` (``alg`` not allowed or not the key's),
                ``unknown_kid`` (no ``kid``, or not in the key set),
                ``bad_signature``, ``expired``, ``not_yet_valid``,
                ``bad_issuer``, ``bad_audience``, ``missing_claim`` (no
                ``exp``/``iss``/``aud``, or no string client claim) or
                ``jwks_unavailable`` (no key set has loaded).
        """
        header = parse_header(token, self._settings.algorithms)
        key = await self._key_for(header)
        if not key_fits(header.alg, key.jwk):
            raise Unauthenticated(_INVALID, reason="bad_algorithm")
        claims = self._decode(token, key)
        check_time_claims(claims, self._clock(), self._settings.leeway)
        return client_id(claims, self._settings.client_claim)

    def status(self) -> JwksStatus:
        """The key set's health now."""
        state = self._state
        return JwksStatus(
            keys_loaded=state.keys_loaded,
            last_fetch_ok=state.last_fetch_ok,
            last_fetch_at=state.last_fetch_at,
            last_success_at=state.last_success_at,
            consecutive_failures=state.failures,
        )

    async def settled(self) -> None:
        """Return once no fetch is in flight, whatever its outcome."""
        fetch = self._fetch
        if fetch is not None:
            await asyncio.wait([fetch])

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def close(self) -> None:
        """Cancel the refresh and any fetch, close the HTTP session; idempotent.

        Afterwards tokens with cached ``kid``s still verify; nothing is fetched.
        """
        self._closed = True
        await self._tasks.cancel_all()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # Verification

    async def _key_for(self, header: TokenHeader) -> _Key:
        kid = header.kid
        if kid is None:
            raise Unauthenticated(_INVALID, reason="unknown_kid")
        key = self._keys.get(kid)
        if key is not None:
            return key
        fetch = self._fetch_for_unknown_kid()
        if fetch is not None:
            # The fetch bounds itself; this bound also holds if it cannot. The
            # fetch is not cancelled here: other verifications may share it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.jwks_timeout):
                    await asyncio.wait([fetch])
            key = self._keys.get(kid)
            if key is not None:
                return key
        if not self._keys:
            raise Unauthenticated(_UNAVAILABLE, reason="jwks_unavailable")
        raise Unauthenticated(_INVALID, reason="unknown_kid")

    def _fetch_for_unknown_kid(self) -> asyncio.Task[None] | None:
        """The fetch to wait for, or None if the token must be refused now."""
        if self._closed:
            return None
        action = on_unknown_kid(self._state, self._clock(), self._policy)
        if action is UnknownKid.REFUSE:
            return None
        if action is UnknownKid.FETCH:
            log.info("jwt.jwks_refetch", cause="unknown_kid")
        return self._start_fetch()

    def _decode(self, token: str, key: _Key) -> Mapping[str, object]:
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key,
                algorithms=list(settings.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
                options=_DECODE_OPTIONS,
            )
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise Unauthenticated(_INVALID, reason="bad_algorithm") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(_INVALID, reason="bad_signature") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthenticated(_INVALID, reason="missing_claim") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(_INVALID, reason="bad_issuer") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(_INVALID, reason="bad_audience") from None
        except jwt.PyJWTError:
            # Undecodable segments or payload, unsupported crit, bad sub/jti...
            raise Unauthenticated(_INVALID, reason="malformed") from None
        return claims

    # Fetching

    def _start_fetch(self) -> asyncio.Task[None]:
        """The fetch in flight, or a new one; never two at once."""
        if self._fetch is None or self._fetch.done():
            self._state = fetch_started(self._state, self._clock())
            self._fetch = self._tasks.spawn(self._fetch_keys(), name="jwks-fetch")
        return self._fetch

    async def _refresh(self) -> None:
        # Runs until close() cancels it. Each pass sleeps at most
        # jwks_cache_seconds or waits for one fetch bounded by jwks_timeout.
        while True:
            delay = refresh_delay(self._state, self._clock(), self._policy)
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.wait([self._start_fetch()])

    async def _fetch_keys(self) -> None:
        """Fetch and load the key set; record the outcome, never raise."""
        started = self._clock()
        try:
            if self._session is None:
                self._session = self._session_factory()
            body = await self._download(self._session)
            keys, skipped = _load_keys(body)
        except Exception as exc:  # noqa: BLE001 - logged by type; the cached set stays
            # Whatever went wrong (network, TLS, status, size, JSON, keys), the
            # cached key set keeps verifying tokens and the refresh retries.
            self._state = fetch_failed(self._state, self._clock())
            log.warning(
                "jwt.jwks_fetch_failed",
                error=exc.kind if isinstance(exc, _FetchError) else type(exc).__name__,
                status=exc.status if isinstance(exc, _FetchError) else None,
                failures=self._state.failures,
                keys_kept=len(self._keys),
            )
            return
        self._keys = keys
        self._state = fetch_succeeded(self._state, self._clock(), len(keys))
        log.info(
            "jwt.jwks_fetched",
            keys=len(keys),
            skipped=skipped,
            fetch_s=round(self._clock() - started, 3),
        )

    async def _download(self, session: aiohttp.ClientSession) -> bytes:
        async with asyncio.timeout(self._settings.jwks_timeout):
            # No redirects: the configured URL is the one trusted for keys.
            async with session.get(
                self._settings.jwks_url, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise _FetchError("http_status", status=response.status)
                if (response.content_length or 0) > MAX_JWKS_BYTES:
                    raise _FetchError("too_large")
                body = bytearray()
                # Bounded by the size cap (count) and the timeout above (time).
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _FetchError("too_large")
                return bytes(body)


def _load_keys(body: bytes) -> tuple[dict[str, _Key], int]:
    """The usable keys of a key set document by kid, and how many were skipped.

    Raises:
        _FetchError: the document is invalid or holds no usable key.
    """
    try:
        signing = parse_jwks(body)
    except ValueError:
        raise _FetchError("invalid_document") from None
    keys: dict[str, _Key] = {}
    skipped = signing.skipped
    for jwk in signing.keys:
        try:
            loaded = jwt.PyJWK(dict(jwk))
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            # One key PyJWT cannot load (bad numbers, unsupported curve or
            # algorithm) must not take the rest of the set down with it.
            skipped += 1
            continue
        kid = jwk["kid"]
        assert isinstance(kid, str)
        keys[kid] = _Key(jwk=jwk, public_key=loaded.key)
    if not keys:
        raise _FetchError("no_usable_keys")
    return keys, skipped
