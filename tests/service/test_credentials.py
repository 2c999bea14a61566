"""The relay's upstream credentials: Entra token caching, refresh-ahead and failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.exceptions import InvalidStatus

from relay.config import ApiKeyAuth, EntraAuth
from relay.exceptions import CredentialUnavailable
from relay.sansio.tokens import REFRESH_MARGIN
from relay.service.credentials import ApiKeyProvider, EntraTokenProvider, provider_for
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.servers import relay_stack, serve_asgi
from tests.helpers.timing import SECOND, within


class ScriptedCredential:
    """An async credential whose answers the test decides, one fetch at a time."""

    def __init__(self) -> None:
        self.fetches = 0
        self.asked = asyncio.Event()
        self.closed = False
        self.answers: asyncio.Queue[AccessToken | Exception] = asyncio.Queue()

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        assert scopes == ("https://cognitiveservices.azure.com/.default",)
        self.fetches += 1
        self.asked.set()
        answer = await self.answers.get()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> ScriptedCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def entra(
    credential: ScriptedCredential, clock: Clock, timeout: float = 5.0
) -> EntraTokenProvider:
    return EntraTokenProvider(
        credential,
        "https://cognitiveservices.azure.com/.default",
        timeout=timeout,
        clock=clock,
    )


async def test_api_key_provider_sends_the_key() -> None:
    """The resource key goes in the api-key header."""
    provider = provider_for(ApiKeyAuth(api_key_env="X", api_key="k"), timeout=1)
    assert isinstance(provider, ApiKeyProvider)
    assert await provider.auth_header() == ("api-key", "k")
    await provider.close()


class TestEntraTokenProvider:
    async def test_concurrent_session_starts_share_one_fetch(self) -> None:
        """Ten sessions starting together cause one token request."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        waiters = [asyncio.ensure_future(provider.auth_header()) for _ in range(10)]
        await credential.answers.put(AccessToken("tok-1", int(clock.now) + 3600))
        headers = await asyncio.gather(*waiters)
        assert set(headers) == {("authorization", "Bearer tok-1")}
        assert credential.fetches == 1
        # Cached afterwards.
        assert await provider.auth_header() == ("authorization", "Bearer tok-1")
        assert credential.fetches == 1
        await provider.close()
        assert credential.closed

    async def test_refresh_ahead_serves_the_old_token_meanwhile(self) -> None:
        """Inside the refresh margin a background fetch starts and nobody waits for it."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        await credential.answers.put(AccessToken("old", int(clock.now) + 3600))
        await provider.auth_header()
        clock.now += 3600 - REFRESH_MARGIN + 1
        assert await provider.auth_header() == ("authorization", "Bearer old")
        # The refresh has no answer yet, and nobody waited for it.
        await credential.answers.put(AccessToken("new", int(clock.now) + 3600))
        async with asyncio.timeout(5 * SECOND):
            await provider.settled()
        assert credential.fetches == 2
        assert await provider.auth_header() == ("authorization", "Bearer new")
        await provider.close()

    async def test_failed_refresh_keeps_the_usable_token(self) -> None:
        """A refresh failure is survivable while the old token lasts."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        await credential.answers.put(AccessToken("old", int(clock.now) + 3600))
        await provider.auth_header()
        clock.now += 3600 - REFRESH_MARGIN + 1
        await credential.answers.put(RuntimeError("token endpoint down"))
        assert await provider.auth_header() == ("authorization", "Bearer old")
        async with asyncio.timeout(5 * SECOND):
            await provider.settled()
        assert await provider.auth_header() == ("authorization", "Bearer old")
        await provider.close()

    async def test_no_token_and_a_failing_endpoint_is_unavailable(self) -> None:
        """Without any usable token a failure reaches the caller as CredentialUnavailable."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        await credential.answers.put(RuntimeError("boom"))
        with pytest.raises(CredentialUnavailable):
            await provider.auth_header()
        await provider.close()

    async def test_a_hanging_endpoint_is_bounded(self) -> None:
        """A fetch that never answers fails after the configured timeout."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock, timeout=0.05)
        with pytest.raises(CredentialUnavailable):
            await provider.auth_header()
        await provider.close()

    async def test_close_cancels_a_fetch_in_progress(self) -> None:
        """Shutdown does not wait for the token endpoint."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        provider.warm_up()
        await asyncio.sleep(0)
        async with asyncio.timeout(within(0)):  # at once: not the fetch's timeout
            await provider.close()
        assert credential.closed


# --- A real azure.identity.aio.DefaultAzureCredential against a local endpoint ----


@dataclass
class TokenEndpoint:
    """App Service's managed identity endpoint, as azure-identity calls it."""

    token: str = "entra-token-for-the-relay"
    status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: Request) -> JSONResponse:
        self.requests.append(
            {
                "query": dict(request.query_params),
                "header": request.headers.get("x-identity-header"),
            }
        )
        if self.status != 200:
            return JSONResponse({"error": "unavailable"}, status_code=self.status)
        return JSONResponse(
            {
                "access_token": self.token,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query_params.get("resource"),
                "token_type": "Bearer",
            }
        )


@asynccontextmanager
async def managed_identity(
    monkeypatch: pytest.MonkeyPatch, endpoint: TokenEndpoint
) -> AsyncIterator[None]:
    """Point azure-identity's App Service managed identity at ``endpoint``."""
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_USERNAME",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
        "IDENTITY_SERVER_THUMBPRINT",
    ):
        monkeypatch.delenv(name, raising=False)
    async with serve_asgi(
        Starlette(routes=[Route("/msi/token", endpoint.handle)])
    ) as port:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{port}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", "identity-header-secret")
        yield


async def test_entra_session_uses_a_managed_identity_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DefaultAzureCredential's token reaches the upstream as Bearer; the client never sees it."""
    endpoint = TokenEndpoint()
    async with managed_identity(monkeypatch, endpoint):
        provider = provider_for(EntraAuth(), timeout=5)
        async with relay_stack(
            provider=provider,
            simulator_options={"api_keys": set(), "bearer_tokens": {endpoint.token}},
        ) as stack:
            for _ in range(3):
                async with connect_relay(stack.preview_url()) as ws:
                    assert (await receive_event(ws))["type"] == "session.created"
            assert all(
                dict((k.lower(), v) for k, v in h.headers)["authorization"]
                == f"Bearer {endpoint.token}"
                for h in stack.simulator.stats.handshakes
            )
    # One token for three sessions: it is cached.
    assert len(endpoint.requests) == 1
    assert (
        endpoint.requests[0]["query"]["resource"]
        == "https://cognitiveservices.azure.com"
    )
    assert endpoint.requests[0]["header"] == "identity-header-secret"


async def test_unavailable_entra_token_is_503_before_upgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No token: the client gets 503 with Retry-After and the upstream sees nothing."""
    endpoint = TokenEndpoint(status=500)
    async with managed_identity(monkeypatch, endpoint):
        provider = provider_for(EntraAuth(), timeout=1)
        async with relay_stack(provider=provider) as stack:
            with pytest.raises(InvalidStatus) as info:
                async with connect_relay(stack.preview_url()):
                    pass
            assert info.value.response.status_code == 503
            assert info.value.response.headers["Retry-After"] == "5"
            assert stack.simulator.stats.handshakes == []
            # Readiness says why: no usable credential for any upstream.
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{stack.relay.port}/readyz")
            assert ready.status_code == 503
            assert all(not item["ok"] for item in ready.json()["checks"]["credentials"])


class TestBackgroundRefresh:
    async def test_warm_up_fetches_at_once_and_reports_status(self) -> None:
        """The first token arrives before any session asks; status says how long it lasts."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        assert provider.status().ok is False
        await credential.answers.put(AccessToken("tok", int(clock.now) + 3600))
        provider.warm_up()
        provider.warm_up()  # idempotent
        async with asyncio.timeout(5 * SECOND):
            await credential.asked.wait()
            await provider.settled()
        status = provider.status()
        assert status.ok
        assert status.kind == "entra"
        assert status.expires_in == pytest.approx(3600, abs=1)
        assert status.last_error is None
        assert credential.fetches == 1
        await provider.close()

    async def test_a_failing_refresh_is_visible(self) -> None:
        """A failure is reported by type in status(), and the loop keeps going."""
        credential, clock = ScriptedCredential(), Clock()
        provider = entra(credential, clock)
        await credential.answers.put(
            RuntimeError("login.microsoftonline.com unreachable")
        )
        provider.warm_up()
        async with asyncio.timeout(5 * SECOND):
            await credential.asked.wait()
            await provider.settled()
        status = provider.status()
        assert (status.ok, status.last_error) == (False, "RuntimeError")
        await provider.close()
        assert credential.closed

    async def test_api_key_status(self) -> None:
        """A resource key is always usable."""
        provider = ApiKeyProvider("k")
        assert provider.status().ok
        assert provider.status().kind == "api_key"
