"""The relay's own upstream credentials: an Azure resource key or an Entra token.

Both implement :class:`relay.typing.TokenProvider`. Clients never see either:
the header produced here is the only authentication sent upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from azure.core.credentials_async import AsyncTokenCredential

from relay.config import ApiKeyAuth, EntraAuth
from relay.exceptions import CredentialUnavailable
from relay.sansio.tokens import REFRESH_MARGIN, CachedToken, refresh_due, usable
from relay.service.tasks import TaskSet
from relay.typing import CredentialStatus, TokenProvider


__all__ = [
    "ApiKeyProvider",
    "AsyncTokenCredential",
    "EntraTokenProvider",
    "provider_for",
]

log = structlog.get_logger("relay.credentials")

# Pauses of the background refresh, in seconds.
_FIRST_RETRY = 5.0
_LAST_RETRY = 60.0
_MIN_REFRESH_PAUSE = 10.0


class ApiKeyProvider:
    """Sends the resource key as ``api-key``."""

    def __init__(self, api_key: str) -> None:
        self._header = ("api-key", api_key)

    async def auth_header(self) -> tuple[str, str]:
        """The ``api-key`` header; never fails."""
        return self._header

    def status(self) -> CredentialStatus:
        """A key is always there."""
        return CredentialStatus(kind="api_key", ok=True)

    async def close(self) -> None:
        """Nothing to release."""


class EntraTokenProvider:
    """Sends a cached Entra access token as ``Authorization: Bearer``.

    A token is refreshed in the background once it is within
    :data:`~relay.sansio.tokens.REFRESH_MARGIN` of expiry, so sessions keep
    starting on the still-valid token while the refresh runs. Only when no
    usable token exists does a session start wait, and then every waiting
    session shares one fetch, bounded by ``timeout``. A failed refresh keeps
    the old token while it is usable.
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        scope: str,
        *,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._timeout = timeout
        self._clock = clock
        # The current token, if any.
        self._token: CachedToken | None = None
        # The fetch in progress, shared by every caller; None when idle.
        self._fetch: asyncio.Task[CachedToken] | None = None
        # The background refresh loop, once started by warm_up().
        self._refresher: asyncio.Task[None] | None = None
        # Type name of the last fetch failure, cleared by a success.
        self._last_error: str | None = None
        self._tasks = TaskSet()

    async def auth_header(self) -> tuple[str, str]:
        """A bearer header with a token valid well past the upstream handshake.

        Raises:
            CredentialUnavailable: no usable token and the fetch failed or timed out.
        """
        now = self._clock()
        token = self._token
        if usable(token, now):
            assert token is not None
            if refresh_due(token, now):
                self._start_fetch()
            return ("authorization", f"Bearer {token.value}")
        token = await asyncio.shield(self._start_fetch())
        return ("authorization", f"Bearer {token.value}")

    async def settled(self) -> None:
        """Return once no fetch is in progress, whatever the last one's result."""
        fetch = self._fetch
        if fetch is not None:
            await asyncio.wait([fetch])

    def warm_up(self) -> None:
        """Start keeping a token fresh in the background; idempotent.

        The first token is fetched at once, so the first session does not wait
        for it, and each next one :data:`~relay.sansio.tokens.REFRESH_MARGIN`
        before the current one expires: session starts never wait for Entra
        while it answers. Failures are retried with a growing pause (5 s to
        60 s) while the current token stays in use.
        """
        if self._refresher is None:
            self._refresher = self._tasks.spawn(
                self._refresh_forever(), name="entra-token-refresh"
            )

    async def _refresh_forever(self) -> None:
        pause_after_failure = _FIRST_RETRY
        while True:
            try:
                token = await asyncio.shield(self._start_fetch())
            except CredentialUnavailable:
                pause = pause_after_failure
                pause_after_failure = min(2 * pause_after_failure, _LAST_RETRY)
            else:
                pause_after_failure = _FIRST_RETRY
                pause = max(
                    _MIN_REFRESH_PAUSE,
                    token.expires_on - REFRESH_MARGIN - self._clock(),
                )
            await asyncio.sleep(pause)  # the schedule itself, not synchronisation

    def status(self) -> CredentialStatus:
        """Whether a usable token is held, and until when (for /readyz and metrics)."""
        token = self._token
        now = self._clock()
        return CredentialStatus(
            kind="entra",
            ok=usable(token, now),
            expires_in=None if token is None else token.expires_on - now,
            last_error=self._last_error,
        )

    def _start_fetch(self) -> asyncio.Task[CachedToken]:
        if self._fetch is None or self._fetch.done():
            self._fetch = self._tasks.spawn(
                self._fetch_token(), name="entra-token-fetch"
            )
            # Observe failures of background fetches so they are never "never retrieved".
            self._fetch.add_done_callback(_consume_exception)
        return self._fetch

    async def _fetch_token(self) -> CachedToken:
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                access = await self._credential.get_token(self._scope)
        except TimeoutError:
            self._last_error = "timeout"
            log.warning("credential.fetch_timeout", timeout_s=self._timeout)
            raise CredentialUnavailable(
                "the relay's upstream credential is unavailable"
            ) from None
        except Exception as exc:  # noqa: BLE001 - converted, logged by type
            # azure-identity raises several unrelated types (ClientAuthenticationError,
            # CredentialUnavailableError, aiohttp errors); none may escape as-is.
            self._last_error = type(exc).__name__
            log.warning("credential.fetch_failed", error=self._last_error)
            raise CredentialUnavailable(
                "the relay's upstream credential is unavailable"
            ) from None
        token = CachedToken(value=access.token, expires_on=float(access.expires_on))
        self._token = token
        self._last_error = None
        log.info(
            "credential.token_refreshed",
            expires_in_s=round(token.expires_on - self._clock()),
            fetch_s=round(self._clock() - started, 3),
        )
        return token

    async def close(self) -> None:
        """Cancel a fetch in progress and close the Azure credential; idempotent."""
        await self._tasks.cancel_all()
        await self._credential.close()


def _consume_exception(task: asyncio.Task[CachedToken]) -> None:
    if not task.cancelled():
        task.exception()


def provider_for(auth: ApiKeyAuth | EntraAuth, *, timeout: float) -> TokenProvider:
    """Build the provider for the configured upstream ``auth``.

    ``entra`` uses ``azure.identity.aio.DefaultAzureCredential``: workload
    identity on AKS, managed identity on Azure compute, environment or developer
    credentials elsewhere. ``client_id`` picks a user-assigned identity.
    """
    if isinstance(auth, ApiKeyAuth):
        return ApiKeyProvider(auth.api_key)
    from azure.identity.aio import DefaultAzureCredential

    credential = DefaultAzureCredential(
        managed_identity_client_id=auth.client_id,
        workload_identity_client_id=auth.client_id,
    )
    provider = EntraTokenProvider(credential, auth.scope, timeout=timeout)
    return provider
