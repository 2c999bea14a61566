"""Client JWT verification against a real key set endpoint on 127.0.0.1."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from structlog.testing import capture_logs

from relay.exceptions import ConfigError, Unauthenticated
from relay.sansio.jwks import MAX_JWKS_BYTES
from relay.service.jwt_auth import JwksStatus, JwtSettings, JwtVerifier, looks_like_jwt
from tests.helpers.jwks_server import (
    AUDIENCE,
    CLIENT,
    ISSUER,
    FakeClock,
    JwksServer,
    SigningKey,
    ec_key,
    forge_token,
    jwks,
    jwt_settings,
    make_token,
    rsa_key,
    serve_jwks,
)
from tests.helpers.timing import SECOND, within


@pytest.fixture(name="rsa", scope="module")
def _rsa() -> SigningKey:
    return rsa_key("rsa-1")


@pytest.fixture(name="ecdsa", scope="module")
def _ecdsa() -> SigningKey:
    return ec_key("ec-1")


@pytest.fixture(name="impostor", scope="module")
def _impostor() -> SigningKey:
    """Another RSA key claiming the published key's kid."""
    return rsa_key("rsa-1")


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="server")
async def _server(rsa: SigningKey, ecdsa: SigningKey) -> AsyncIterator[JwksServer]:
    async with serve_jwks(jwks(rsa, ecdsa)) as server:
        yield server


@asynccontextmanager
async def running(
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    settle: bool = True,
    **changes: Any,
) -> AsyncIterator[JwtVerifier]:
    """A started verifier of the key set at ``url``, closed on exit."""
    verifier = JwtVerifier(jwt_settings(url, **changes), clock=clock)
    try:
        await verifier.start()
        if settle:
            async with asyncio.timeout(10 * SECOND):
                await verifier.settled()
        yield verifier
    finally:
        await verifier.close()


@pytest.fixture(name="verifier")
async def _verifier(server: JwksServer, clock: FakeClock) -> AsyncIterator[JwtVerifier]:
    async with running(server.url, clock=clock) as verifier:
        yield verifier


async def refusal(verifier: JwtVerifier, token: str) -> str:
    """The reason ``verifier`` refuses ``token``."""
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    assert caught.value.http_status == 401
    return caught.value.reason


async def timed(coro: Coroutine[Any, Any, str]) -> tuple[str, float]:
    """``coro``'s result, and the wall time it took."""
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


async def cpu_timed(coro: Coroutine[Any, Any, str]) -> tuple[str, float]:
    """``coro``'s result, and the CPU time this thread spent meanwhile.

    Not wall time: another process on a busy machine delays the test, it does
    not make the relay's work any longer. (Other tasks of this event loop that
    run while ``coro`` waits count too: an overestimate.)
    """
    started = time.thread_time()
    result = await coro
    return result, time.thread_time() - started


def jwks_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("jwks-")]


class TestValidTokens:
    async def test_rsa_token_names_its_client(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """An RS256 token from the issuer returns the client claim."""
        assert await verifier.verify(make_token(rsa, now=clock.now)) == CLIENT

    async def test_ec_token_names_its_client(
        self, verifier: JwtVerifier, ecdsa: SigningKey, clock: FakeClock
    ) -> None:
        """An ES256 token verifies with the EC key of the same set."""
        assert await verifier.verify(make_token(ecdsa, now=clock.now)) == CLIENT

    async def test_audience_list_holding_ours(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """A token for several audiences, ours among them, is accepted."""
        token = make_token(rsa, now=clock.now, aud=["api://other", AUDIENCE])
        assert await verifier.verify(token) == CLIENT

    async def test_client_claim_is_configurable(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """The configured claim, not ``azp``, names the client."""
        async with running(server.url, client_claim="appid") as verifier:
            token = make_token(rsa, appid="app-b")
            assert await verifier.verify(token) == "app-b"

    async def test_skew_within_leeway_is_tolerated(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """Just expired or just not yet valid, within 30 s, still passes."""
        now = clock.now
        token = make_token(rsa, now=now, exp=int(now) - 29, nbf=int(now) + 29)
        assert await verifier.verify(token) == CLIENT

    async def test_rsa_key_without_alg_verifies_other_rsa_algorithms(
        self, server: JwksServer
    ) -> None:
        """An RSA JWK naming no alg verifies any allowed RSA algorithm (PS256)."""
        pss = rsa_key("rsa-pss", alg="PS256")
        server.reply = jwks(pss)
        async with running(server.url, algorithms=("RS256", "PS256")) as verifier:
            assert await verifier.verify(make_token(pss)) == CLIENT

    async def test_known_kid_never_waits_for_the_network(
        self,
        server: JwksServer,
        verifier: JwtVerifier,
        rsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """With the key set cached, verifying needs no request, even if one would hang."""
        server.hold()
        # At once: a wait on the held request would take jwks_timeout (5 s).
        async with asyncio.timeout(within(0)):
            for _ in range(20):
                assert await verifier.verify(make_token(rsa, now=clock.now)) == CLIENT
        assert server.requests == 1

    async def test_verify_without_start_fetches_on_demand(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """A verifier not started yet fetches the key set for its first token."""
        verifier = JwtVerifier(jwt_settings(server.url))
        try:
            assert await verifier.verify(make_token(rsa)) == CLIENT
        finally:
            await verifier.close()
        assert server.requests == 1


class TestRefusedClaims:
    @pytest.mark.parametrize(
        ("changes", "expected"),
        [
            pytest.param(lambda now: {"exp": int(now) - 31}, "expired", id="expired"),
            pytest.param(
                lambda now: {"nbf": int(now) + 31}, "not_yet_valid", id="nbf-future"
            ),
            pytest.param(
                lambda now: {"iat": int(now) + 120}, "not_yet_valid", id="iat-future"
            ),
            pytest.param(
                lambda now: {"iss": "https://evil.test"}, "bad_issuer", id="issuer"
            ),
            pytest.param(lambda now: {"iss": 7}, "bad_issuer", id="issuer-type"),
            pytest.param(
                lambda now: {"aud": "api://other"}, "bad_audience", id="audience"
            ),
            pytest.param(lambda now: {"azp": None}, "missing_claim", id="no-client"),
            pytest.param(lambda now: {"azp": 42}, "missing_claim", id="int-client"),
            pytest.param(lambda now: {"azp": ""}, "missing_claim", id="empty-client"),
            pytest.param(lambda now: {"exp": None}, "missing_claim", id="no-exp"),
            pytest.param(lambda now: {"iss": None}, "missing_claim", id="no-iss"),
            pytest.param(lambda now: {"aud": None}, "missing_claim", id="no-aud"),
            pytest.param(lambda now: {"exp": "later"}, "malformed", id="exp-type"),
            pytest.param(lambda now: {"sub": 5}, "malformed", id="sub-type"),
        ],
    )
    async def test_claim_refusals(
        self,
        verifier: JwtVerifier,
        rsa: SigningKey,
        clock: FakeClock,
        changes: Callable[[float], dict[str, Any]],
        expected: str,
    ) -> None:
        """Each bad claim is refused with its reason."""
        token = make_token(rsa, now=clock.now, **changes(clock.now))
        assert await refusal(verifier, token) == expected

    async def test_expiry_follows_the_injected_clock(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """A token valid now is expired once the clock passes exp plus leeway."""
        token = make_token(rsa, now=clock.now)
        assert await verifier.verify(token) == CLIENT
        clock.advance(300 + 30)
        assert await refusal(verifier, token) == "expired"


class TestRefusedSignatures:
    async def test_wrong_key_under_a_known_kid(
        self, verifier: JwtVerifier, impostor: SigningKey, clock: FakeClock
    ) -> None:
        """A token signed by another key claiming a published kid is refused."""
        token = make_token(impostor, now=clock.now)
        assert await refusal(verifier, token) == "bad_signature"

    async def test_tampered_payload(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """Swapping in another payload breaks the signature."""
        genuine = make_token(rsa, now=clock.now).split(".")
        other = make_token(rsa, now=clock.now, azp="admin").split(".")
        token = ".".join([genuine[0], other[1], genuine[2]])
        assert await refusal(verifier, token) == "bad_signature"

    async def test_alg_none(self, verifier: JwtVerifier, clock: FakeClock) -> None:
        """An unsigned token is refused whatever it claims."""
        claims = {"iss": ISSUER, "aud": AUDIENCE, "azp": CLIENT, "exp": clock.now + 60}
        for alg in ("none", "None", "NONE"):
            token = forge_token({"alg": alg, "kid": "rsa-1"}, claims)
            assert await refusal(verifier, token) == "bad_algorithm"

    async def test_hmac_signed_with_the_public_key(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """HS256 keyed with the published RSA key (key confusion) is refused."""
        claims = {"iss": ISSUER, "aud": AUDIENCE, "azp": CLIENT, "exp": clock.now + 60}
        for key in (rsa.public_pem(), str(rsa.jwk()["n"]).encode()):
            token = forge_token({"alg": "HS256", "kid": "rsa-1"}, claims, hmac_key=key)
            assert await refusal(verifier, token) == "bad_algorithm"

    async def test_algorithm_not_configured(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """RS384 is refused when only RS256 and ES256 are allowed."""
        token = make_token(rsa, alg="RS384", now=clock.now)
        assert await refusal(verifier, token) == "bad_algorithm"

    async def test_algorithm_not_the_keys(
        self,
        verifier: JwtVerifier,
        rsa: SigningKey,
        ecdsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """An allowed alg used with a key of another type is refused."""
        es_on_rsa_kid = make_token(ecdsa, kid=rsa.kid, now=clock.now)
        rs_on_ec_kid = make_token(rsa, kid=ecdsa.kid, now=clock.now)
        assert await refusal(verifier, es_on_rsa_kid) == "bad_algorithm"
        assert await refusal(verifier, rs_on_ec_kid) == "bad_algorithm"

    async def test_algorithm_other_than_the_key_declares(
        self, server: JwksServer
    ) -> None:
        """A JWK that names its alg verifies that alg only."""
        key = rsa_key("rsa-rs256")
        server.reply = jwks(key.jwk(alg="RS256"))
        async with running(server.url, algorithms=("RS256", "PS256")) as verifier:
            assert await refusal(verifier, make_token(key, alg="PS256")) == (
                "bad_algorithm"
            )
            assert await verifier.verify(make_token(key)) == CLIENT

    async def test_key_below_minimum_size(self, server: JwksServer) -> None:
        """A 1024-bit RSA key in the set never verifies a token."""
        weak = rsa_key("weak", bits=1024)
        server.reply = jwks(weak)
        with pytest.warns(jwt.InsecureKeyLengthWarning):
            token = make_token(weak)
        async with running(server.url) as verifier:
            assert await refusal(verifier, token) == "bad_algorithm"

    async def test_token_without_kid(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """A token naming no key cannot be matched to one."""
        claims = {"iss": ISSUER, "aud": AUDIENCE, "azp": CLIENT, "exp": clock.now + 60}
        token = jwt.encode(claims, rsa.private_key, algorithm="RS256")
        assert await refusal(verifier, token) == "unknown_kid"

    async def test_signed_garbage_payload(
        self, verifier: JwtVerifier, rsa: SigningKey
    ) -> None:
        """A correctly signed payload that is not a JSON object is malformed."""
        for payload in (b"not json", b"[1, 2]"):
            token = jwt.api_jws.encode(
                payload, rsa.private_key, algorithm="RS256", headers={"kid": rsa.kid}
            )
            assert await refusal(verifier, token) == "malformed"

    async def test_garbage_is_malformed_quickly(
        self, verifier: JwtVerifier, rsa: SigningKey, clock: FakeClock
    ) -> None:
        """Junk, oversized and non-ASCII tokens are refused fast, one by one."""
        huge = make_token(rsa, now=clock.now, pad="x" * 100_000)
        junk = [
            "",
            "not-a-jwt",
            "a.b.c",
            "....",
            huge,
            "é" * 50_000,
            "\udcff.\udcff.\udcff",
            "eyJhbGciOiJSUzI1NiJ9." + "A" * 200_000 + ".sig",
            forge_token({"alg": "RS256", "kid": "rsa-1"}, b"x").replace("e", "\x00"),
        ]
        for token in junk:
            # The relay promises no figure: what the test is after is that junk
            # costs no real work (and no wait), whatever its size.
            reason, cpu = await cpu_timed(refusal(verifier, token))
            assert reason == "malformed"
            assert cpu < 0.1 * SECOND


class TestKeySet:
    async def test_unusable_members_are_skipped(
        self, server: JwksServer, rsa: SigningKey, ecdsa: SigningKey
    ) -> None:
        """Keys for encryption, private, symmetric or unloadable keys leave the rest usable."""
        encryption = rsa_key("enc-1")
        server.reply = jwks(
            encryption.jwk(use="enc"),
            {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"},
            {**rsa_key("private-1").jwk(), "d": "AQAB"},
            {"kty": "RSA", "kid": "broken-1", "n": "!!!", "e": "AQAB"},
            {**ecdsa.jwk(), "kid": "p192-1", "crv": "P-192"},
            {"kty": "EC", "kid": "ec-alg-1", "crv": "P-256", "x": "AA", "y": "AA"},
            "not a key",
            rsa,
            ecdsa,
        )
        with capture_logs() as logs:
            async with running(server.url) as verifier:
                assert verifier.status().keys_loaded == 2
                assert await verifier.verify(make_token(rsa)) == CLIENT
                assert await verifier.verify(make_token(ecdsa)) == CLIENT
                assert await refusal(verifier, make_token(encryption)) == (
                    "unknown_kid"
                )
        fetched = [e for e in logs if e["event"] == "jwt.jwks_fetched"]
        assert [(e["keys"], e["skipped"]) for e in fetched] == [(2, 7)]

    @pytest.mark.parametrize(
        ("reply", "error"),
        [
            pytest.param(b"<html>oops</html>", "invalid_document", id="html"),
            pytest.param({"keys": []}, "no_usable_keys", id="empty"),
            pytest.param(
                {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]},
                "no_usable_keys",
                id="only-symmetric",
            ),
            pytest.param(404, "http_status", id="404"),
            pytest.param(302, "http_status", id="redirect"),
            pytest.param(b" " * (MAX_JWKS_BYTES + 1), "too_large", id="too-large"),
        ],
    )
    async def test_unusable_key_sets_load_nothing(
        self, server: JwksServer, rsa: SigningKey, reply: Any, error: str
    ) -> None:
        """A bad answer is a failed fetch: nothing to verify with, cause logged."""
        server.reply = reply
        with capture_logs() as logs:
            async with running(server.url) as verifier:
                assert verifier.status() == JwksStatus(
                    keys_loaded=0,
                    last_fetch_ok=False,
                    last_fetch_at=verifier.status().last_fetch_at,
                    last_success_at=None,
                    consecutive_failures=1,
                )
                assert await refusal(verifier, make_token(rsa)) == "jwks_unavailable"
        failed = [e for e in logs if e["event"] == "jwt.jwks_fetch_failed"]
        assert [e["error"] for e in failed] == [error]
        assert server.requests == 1

    async def test_oversized_streamed_body_is_cut_off(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """A body without Content-Length is read no further than the cap."""
        server.chunked = True
        server.reply = b" " * (4 * MAX_JWKS_BYTES)
        with capture_logs() as logs:
            async with running(server.url) as verifier:
                assert verifier.status().keys_loaded == 0
        failed = [e for e in logs if e["event"] == "jwt.jwks_fetch_failed"]
        assert [e["error"] for e in failed] == ["too_large"]

    async def test_streamed_key_set_loads(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """A chunked key set within the cap is read whole."""
        server.chunked = True
        async with running(server.url) as verifier:
            assert await verifier.verify(make_token(rsa)) == CLIENT

    async def test_rotation_through_an_unknown_kid(
        self,
        server: JwksServer,
        verifier: JwtVerifier,
        rsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """A new key is fetched for its first token; a retired key stops verifying."""
        successor = rsa_key("rsa-2")
        server.reply = jwks(successor)
        clock.advance(31)
        assert await verifier.verify(make_token(successor, now=clock.now)) == CLIENT
        assert server.requests == 2
        assert await refusal(verifier, make_token(rsa, now=clock.now)) == "unknown_kid"
        assert verifier.status().keys_loaded == 1


class TestRefetchLimits:
    async def test_random_kids_cause_one_fetch_per_interval(
        self,
        server: JwksServer,
        verifier: JwtVerifier,
        rsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """1000 random kids share one fetch and do not delay a valid token."""
        attacks = [
            forge_token({"alg": "RS256", "kid": secrets.token_hex(8)}, {"azp": "x"})
            for _ in range(1000)
        ]
        clock.advance(31)
        server.hold()
        async with asyncio.TaskGroup() as group:
            refused = [group.create_task(refusal(verifier, t)) for t in attacks]
            await server.wait_requests(2)
            # The refetch hangs at the server; a known kid verifies regardless,
            # at once (waiting on the fetch would take jwks_timeout: 5 s).
            async with asyncio.timeout(within(0)):
                token = make_token(rsa, now=clock.now)
                assert await verifier.verify(token) == CLIENT
            assert not any(task.done() for task in refused)
            server.release()
        assert {task.result() for task in refused} == {"unknown_kid"}
        assert server.requests == 2
        # Within the interval, more random kids are refused at once.
        async with asyncio.timeout(within(0)):
            reasons = {await refusal(verifier, t) for t in attacks}
        assert reasons == {"unknown_kid"}
        assert server.requests == 2

    async def test_unknown_kid_right_after_a_fetch_is_refused_at_once(
        self, server: JwksServer, verifier: JwtVerifier, clock: FakeClock
    ) -> None:
        """A key set fetched moments ago is not fetched again."""
        stranger = rsa_key("stranger")
        server.hold()
        reason, elapsed = await timed(
            refusal(verifier, make_token(stranger, now=clock.now))
        )
        assert reason == "unknown_kid"
        # At once: waiting on the held fetch would take jwks_timeout (5 s).
        assert elapsed < within(0)
        assert server.requests == 1

    async def test_each_interval_allows_one_more_fetch(
        self, server: JwksServer, verifier: JwtVerifier, clock: FakeClock
    ) -> None:
        """After the interval, the next unknown kid fetches again, once."""
        stranger = make_token(rsa_key("stranger"), now=clock.now)
        for interval in range(1, 4):
            clock.advance(30)
            for _ in range(5):
                assert await refusal(verifier, stranger) == "unknown_kid"
            assert server.requests == 1 + interval


class TestOutage:
    async def test_cached_keys_survive_a_failing_url(
        self,
        server: JwksServer,
        verifier: JwtVerifier,
        rsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """When the URL answers 500, cached keys still verify; status shows the failure."""
        server.reply = 500
        clock.advance(31)
        stranger = make_token(rsa_key("stranger"), now=clock.now)
        with capture_logs() as logs:
            assert await refusal(verifier, stranger) == "unknown_kid"
        assert server.requests == 2
        assert await verifier.verify(make_token(rsa, now=clock.now)) == CLIENT
        status = verifier.status()
        assert status.keys_loaded == 2
        assert not status.last_fetch_ok
        assert status.consecutive_failures == 1
        assert status.last_success_at is not None
        assert status.last_fetch_at == clock.now
        failed = [e for e in logs if e["event"] == "jwt.jwks_fetch_failed"]
        assert len(failed) == 1
        assert failed[0]["error"] == "http_status"
        assert failed[0]["status"] == 500
        assert failed[0]["keys_kept"] == 2
        assert failed[0]["log_level"] == "warning"

    async def test_cached_keys_survive_a_stopped_server(
        self, rsa: SigningKey, ecdsa: SigningKey, clock: FakeClock
    ) -> None:
        """With the key set server gone, cached keys still verify."""
        async with serve_jwks(jwks(rsa, ecdsa)) as server:
            url = server.url
            verifier = JwtVerifier(jwt_settings(url), clock=clock)
            await verifier.start()
            await verifier.settled()
        try:
            clock.advance(31)
            with capture_logs() as logs:
                stranger = make_token(rsa_key("stranger"), now=clock.now)
                assert await refusal(verifier, stranger) == "unknown_kid"
            assert await verifier.verify(make_token(ecdsa, now=clock.now)) == CLIENT
            assert verifier.status().keys_loaded == 2
            failed = [e for e in logs if e["event"] == "jwt.jwks_fetch_failed"]
            assert [e["error"] for e in failed] == ["ClientConnectorError"]
        finally:
            await verifier.close()

    async def test_background_refresh_failure_is_visible(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """A failed background refresh keeps the keys and shows in status()."""
        server.script.append(server.reply)
        server.reply = 503
        with capture_logs() as logs:
            async with running(server.url, jwks_cache_seconds=0.05) as verifier:
                await server.wait_requests(2)
                await verifier.settled()
                status = verifier.status()
                assert await verifier.verify(make_token(rsa)) == CLIENT
        assert status.keys_loaded == 2
        assert not status.last_fetch_ok
        assert status.consecutive_failures >= 1
        assert any(e["event"] == "jwt.jwks_fetch_failed" for e in logs)

    async def test_background_refresh_replaces_the_key_set(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """Every jwks_cache_seconds the set is fetched again and replaced."""
        successor = rsa_key("rsa-2")
        server.script.append(server.reply)
        server.reply = jwks(successor)
        async with running(
            server.url, jwks_cache_seconds=0.05, jwks_refetch_interval=3600
        ) as verifier:
            await server.wait_requests(2)
            await verifier.settled()
            assert await verifier.verify(make_token(successor)) == CLIENT
            assert await refusal(verifier, make_token(rsa)) == "unknown_kid"

    async def test_hanging_url_gives_jwks_unavailable_within_the_timeout(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """No key set and no answer: start() returns at once, verify() within the timeout."""
        server.hold()
        settings = jwt_settings(server.url, jwks_timeout=0.2)
        # Margins below jwks_timeout: waiting for a second fetch would fail.
        margin = 0.2 * SECOND
        with capture_logs() as logs:
            async with asyncio.timeout(within(settings.jwks_timeout, 1.5 * margin)):
                async with running(
                    server.url, settle=False, jwks_timeout=settings.jwks_timeout
                ) as v:
                    reason, elapsed = await timed(refusal(v, make_token(rsa)))
                    await v.settled()
                    assert not v.status().last_fetch_ok
        assert reason == "jwks_unavailable"
        assert elapsed < within(settings.jwks_timeout, margin)
        failed = [e for e in logs if e["event"] == "jwt.jwks_fetch_failed"]
        assert [e["error"] for e in failed] == ["TimeoutError"]

    async def test_failing_url_gives_jwks_unavailable(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """No key set and a 500: tokens are refused as unverifiable, quickly."""
        server.reply = 500
        async with running(server.url, settle=False) as verifier:
            reason, elapsed = await timed(refusal(verifier, make_token(rsa)))
            assert reason == "jwks_unavailable"
            assert elapsed < within(0)  # the fetch fails at once
            # Within the interval no further fetch is tried.
            assert await refusal(verifier, make_token(rsa)) == "jwks_unavailable"
        assert server.requests == 1

    async def test_refused_connection_gives_jwks_unavailable(
        self, rsa: SigningKey
    ) -> None:
        """Nothing listening at the URL: refused as unverifiable, quickly."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/jwks.json"
        async with running(url, settle=False) as verifier:
            reason, elapsed = await timed(refusal(verifier, make_token(rsa)))
        assert reason == "jwks_unavailable"
        assert elapsed < within(0)  # the fetch fails at once

    async def test_first_verifications_share_the_first_fetch(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """Tokens arriving before the key set loads wait for one shared fetch."""
        server.hold()
        token = make_token(rsa)
        async with running(server.url, settle=False) as verifier:
            async with asyncio.TaskGroup() as group:
                waiting = [group.create_task(verifier.verify(token)) for _ in range(50)]
                await server.wait_requests(1)
                server.release()
            assert {task.result() for task in waiting} == {CLIENT}
        assert server.requests == 1


class TestLifecycle:
    async def test_close_cancels_background_work_and_is_idempotent(
        self,
        server: JwksServer,
        rsa: SigningKey,
        clock: FakeClock,
    ) -> None:
        """close() stops the refresh and a hanging fetch; waiters are answered."""
        verifier = JwtVerifier(jwt_settings(server.url), clock=clock)
        await verifier.start()
        await verifier.settled()
        assert len(jwks_tasks()) == 1  # the refresher
        server.hold()
        clock.advance(31)
        stranger = make_token(rsa_key("stranger"), now=clock.now)
        async with asyncio.TaskGroup() as group:
            waiting = group.create_task(refusal(verifier, stranger))
            await server.wait_requests(2)
            async with asyncio.timeout(within(0)):  # at once: not the fetch's timeout
                await verifier.close()
                await verifier.close()
        assert waiting.result() == "unknown_kid"
        assert jwks_tasks() == []
        # Cached keys still verify; nothing is fetched any more.
        assert await verifier.verify(make_token(rsa, now=clock.now)) == CLIENT
        clock.advance(31)
        assert await refusal(verifier, stranger) == "unknown_kid"
        assert server.requests == 2

    async def test_start_is_idempotent(self, server: JwksServer) -> None:
        """A second start() starts nothing more."""
        async with running(server.url) as verifier:
            await verifier.start()
            await verifier.settled()
            assert len(jwks_tasks()) == 1
        assert server.requests == 1

    async def test_start_after_close_is_an_error(self, server: JwksServer) -> None:
        """A closed verifier cannot be restarted."""
        verifier = JwtVerifier(jwt_settings(server.url))
        await verifier.close()
        with pytest.raises(RuntimeError, match="after close"):
            await verifier.start()

    async def test_status_before_any_fetch(self, server: JwksServer) -> None:
        """A new verifier reports nothing loaded."""
        verifier = JwtVerifier(jwt_settings(server.url))
        assert verifier.status() == JwksStatus(
            keys_loaded=0,
            last_fetch_ok=False,
            last_fetch_at=None,
            last_success_at=None,
            consecutive_failures=0,
        )

    async def test_logs_name_events_not_secrets(
        self, server: JwksServer, rsa: SigningKey
    ) -> None:
        """Fetch logs carry counts and error types, never a token or key material."""
        token = make_token(rsa)
        with capture_logs() as logs:
            async with running(server.url) as verifier:
                await verifier.verify(token)
                await refusal(verifier, token + "x")
        assert [e["event"] for e in logs] == ["jwt.jwks_fetched"]
        text = repr(logs)
        assert token.split(".")[2] not in text
        assert str(rsa.jwk()["n"]) not in text


class TestSettings:
    @pytest.mark.parametrize(
        "changes",
        [
            {"algorithms": ("none",)},
            {"algorithms": ("HS256",)},
            {"algorithms": ("RS256", "HS512")},
            {"algorithms": ()},
            {"algorithms": ("RS257",)},
            {"jwks_url": "http://login.example.test/jwks.json"},
            {"jwks_url": "ftp://127.0.0.1/jwks.json"},
            {"jwks_url": "https:///jwks.json"},
            {"jwks_url": "https://login.example.test:99999/jwks.json"},
            {"jwks_url": "http://127.0.0.1.evil.test/jwks.json"},
            {"issuer": ""},
            {"audience": ""},
            {"client_claim": ""},
            {"leeway": -1.0},
            {"leeway": float("nan")},
            {"jwks_timeout": 0.0},
            {"jwks_cache_seconds": -5.0},
            {"jwks_refetch_interval": float("inf")},
        ],
    )
    def test_invalid_settings_are_config_errors(self, changes: dict[str, Any]) -> None:
        """Unsafe algorithms, URLs and durations are refused on construction."""
        with pytest.raises(ConfigError, match=r"auth\.jwt\."):
            jwt_settings(**{"jwks_url": "https://login.example.test/jwks", **changes})

    @pytest.mark.parametrize(
        "url",
        [
            "https://login.example.test/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://[::1]:8080/jwks.json",
            "http://localhost/jwks.json",
        ],
    )
    def test_https_or_loopback_urls(self, url: str) -> None:
        """https anywhere, http on loopback only."""
        assert jwt_settings(url).jwks_url == url

    def test_defaults(self) -> None:
        """RS256 only, 30 s leeway, 5 min cache, 30 s refetch limit, 5 s timeout."""
        settings = JwtSettings(
            jwks_url="https://login.example.test/jwks.json",
            issuer=ISSUER,
            audience=AUDIENCE,
        )
        assert settings.client_claim == "azp"
        assert settings.algorithms == ("RS256",)
        assert (
            settings.leeway,
            settings.jwks_cache_seconds,
            settings.jwks_refetch_interval,
            settings.jwks_timeout,
        ) == (30.0, 300.0, 30.0, 5.0)


class TestLooksLikeJwt:
    def test_tokens_and_static_keys(self, rsa: SigningKey) -> None:
        """A minted token looks like a JWT; a static relay key does not."""
        assert looks_like_jwt(make_token(rsa))
        assert not looks_like_jwt("client-key-of-app-a")
