"""Client JWTs through a real relay, against a real JWKS server: 401 before any upstream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import generate_latest
from websockets.exceptions import InvalidStatus

from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.jwks_server import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    forge_token,
    jwks,
    jwt_settings,
    make_token,
    rsa_key,
    serve_jwks,
)
from tests.helpers.servers import Stack, relay_stack
from tests.helpers.timing import SECOND, within


KEY = rsa_key("rsa-1")
OTHER = rsa_key("rsa-1")  # same kid, different key


@asynccontextmanager
async def jwt_stack(**jwt_changes: Any) -> AsyncIterator[tuple[JwksServer, Stack]]:
    """A JWKS server with KEY, and a relay (with its simulator) trusting it."""
    async with (
        serve_jwks(jwks(KEY)) as server,
        relay_stack(jwt=jwt_settings(server.url, **jwt_changes)) as stack,
    ):
        yield server, stack


def bad_tokens() -> dict[str, str]:
    now = time.time()
    public_pem = KEY.public_pem()
    return {
        "expired": make_token(
            KEY, azp="app-a", iat=int(now) - 3600, exp=int(now) - 600
        ),
        "not_yet_valid": make_token(KEY, azp="app-a", nbf=int(now) + 600),
        "bad_issuer": make_token(KEY, azp="app-a", iss="https://evil.example.com/"),
        "bad_audience": make_token(KEY, azp="app-a", aud="someone-else"),
        "alg_none": forge_token(
            {"alg": "none", "kid": "rsa-1"},
            {"iss": ISSUER, "aud": AUDIENCE, "azp": "app-a", "exp": int(now) + 300},
        ),
        "hs256_with_public_key": forge_token(
            {"alg": "HS256", "kid": "rsa-1"},
            {"iss": ISSUER, "aud": AUDIENCE, "azp": "app-a", "exp": int(now) + 300},
            hmac_key=public_pem,
        ),
        "wrong_key": make_token(OTHER, azp="app-a"),
        "unknown_kid": make_token(KEY, kid="nope", azp="app-a"),
        "unknown_client": make_token(KEY, azp="app-zzz"),
        "missing_claim": make_token(KEY, azp=None),
    }


async def test_valid_jwt_opens_a_session_for_its_client() -> None:
    """A token whose azp names app-a gets app-a's session; static keys keep working."""
    async with jwt_stack() as (_server, stack):
        token = make_token(KEY, azp="app-a")
        async with connect_relay(
            stack.preview_url(),
            key=None,
            headers=[("Authorization", f"Bearer {token}")],
        ) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        async with connect_relay(stack.preview_url()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        [first, _] = stack.simulator.stats.handshakes
        assert token not in repr(first)


@pytest.mark.parametrize("case", sorted(bad_tokens()))
async def test_every_bad_token_is_401_and_opens_nothing_upstream(case: str) -> None:
    """Expired, early, wrong iss/aud, alg none, HS256-with-public-key, foreign key, unknown kid..."""
    async with jwt_stack() as (_server, stack):
        token = bad_tokens()[case]
        with pytest.raises(InvalidStatus) as info:
            async with connect_relay(
                stack.preview_url(),
                key=None,
                headers=[("Authorization", f"Bearer {token}")],
            ):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
        assert stack.simulator.stats.handshakes == []
        assert b"relay_auth_failures_total" in generate_latest(stack.registry)


async def test_random_kid_flood_does_not_hammer_the_jwks_url() -> None:
    """Hundreds of unknown kids cost at most one refetch; valid clients are not slowed."""
    async with (
        serve_jwks(jwks(KEY)) as server,
        relay_stack(jwt=jwt_settings(server.url, jwks_refetch_interval=60)) as stack,
    ):
        good = make_token(KEY, azp="app-a")
        started = time.monotonic()
        async with connect_relay(
            stack.preview_url(),
            key=None,
            headers=[("Authorization", f"Bearer {good}")],
        ) as ws:
            await receive_event(ws)
        before_the_flood = time.monotonic() - started
        baseline = server.requests

        async def attempt() -> int:
            token = make_token(KEY, kid=uuid.uuid4().hex, azp="app-a")
            try:
                async with connect_relay(
                    stack.preview_url(),
                    key=None,
                    headers=[("Authorization", f"Bearer {token}")],
                ):
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

        async with asyncio.timeout(30 * SECOND):
            statuses = await asyncio.gather(*(attempt() for _ in range(200)))
        assert set(statuses) == {401}
        assert server.requests - baseline <= 1
        started = time.monotonic()
        async with connect_relay(
            stack.preview_url(),
            key=None,
            headers=[("Authorization", f"Bearer {good}")],
        ) as ws:
            await receive_event(ws)
        # The relay promises no session-start latency: "not slowed" is against
        # the same session started before the flood, on the same machine. A
        # valid token waiting on a refetch would take jwks_timeout (5 s) more.
        assert time.monotonic() - started < within(before_the_flood)


async def test_jwks_down_keeps_cached_keys_working() -> None:
    """Once fetched, keys keep verifying while the JWKS URL is failing."""
    async with jwt_stack() as (server, stack):
        token = make_token(KEY, azp="app-a")
        async with connect_relay(
            stack.preview_url(),
            key=None,
            headers=[("Authorization", f"Bearer {token}")],
        ) as ws:
            await receive_event(ws)
        server.reply = 500
        async with connect_relay(
            stack.preview_url(),
            key=None,
            headers=[("Authorization", f"Bearer {token}")],
        ) as ws:
            await receive_event(ws)
