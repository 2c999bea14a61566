"""Upstream pools: where each deployment's sessions may start, and failover between them.

:class:`UpstreamPools` is built once per application. Every deployment gets its
targets (:meth:`relay.config.Settings.upstream_targets`), each with a
credential provider and a :class:`~relay.sansio.breaker.Breaker`. Targets with
identical auth settings share one provider (one Entra token cache per identity
and scope); the application's lifespan warms the providers up and closes them.

:meth:`UpstreamPools.connect` runs before the client is accepted. It tries the
targets in the order :func:`~relay.sansio.failover.plan_attempts` gives, each
attempt bounded by its target's ``connect_timeout`` (and its credential by
``credential_timeout``), all of them by the caller's handshake budget. It moves
on only after a failure another upstream may not share
(:func:`~relay.sansio.failover.fails_over`, connect errors, timeouts, an
unavailable credential). An established session is never moved: Azure's
session state cannot be migrated, so nothing here runs once a session is open.
"""

from __future__ import annotations

import asyncio
import math
import random as _random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from relay.config import ApiKeyAuth, EntraAuth, Settings, UpstreamTarget
from relay.exceptions import (
    CredentialUnavailable,
    NotFound,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from relay.sansio.breaker import Attempt, Breaker
from relay.sansio.closes import client_status_for_upstream
from relay.sansio.failover import (
    Plan,
    fails_over,
    plan_attempts,
    retry_after_seconds,
)
from relay.sansio.handshake import Route, upstream_headers, upstream_target
from relay.service.credentials import EntraTokenProvider, provider_for
from relay.service.metrics import RelayMetrics
from relay.typing import TokenProvider
from relay.ws.upstream import UpstreamConnection, open_upstream


__all__ = ["OpenedUpstream", "UpstreamPools"]

log = structlog.get_logger("relay.pools")


@dataclass(frozen=True, slots=True)
class OpenedUpstream:
    """An upstream connection opened for one session, and where it goes."""

    connection: UpstreamConnection
    request_id: str
    """``x-ms-client-request-id`` sent with the handshake."""
    target: UpstreamTarget


@dataclass(frozen=True, slots=True)
class _Member:
    """One target of a deployment's pool, with what it needs at session start."""

    target: UpstreamTarget
    provider: TokenProvider
    breaker: Breaker


class UpstreamPools:
    """Every deployment's upstreams, their credentials and their breakers.

    :meth:`reconfigure` swaps them for a reloaded configuration.

    Args:
        settings: the relay's settings (targets, failover knobs, limits).
        metrics: where attempts, failovers and breaker states are counted.
        provider: the credential of every target built from the top-level
            ``upstream`` (tests inject one); others are built from settings.
        clock: monotonic seconds, for the breakers.
        wall_clock: Unix time, to read ``Retry-After`` dates.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: RelayMetrics,
        provider: TokenProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._injected = provider
        # Set by warm_up: providers built by a later reconfigure warm up at once.
        self._started = False
        self.random: Callable[[], float] = _random.random
        """Source of the weighted attempt order; replace it for a deterministic one."""
        self._members: dict[str, tuple[_Member, ...]] = {}
        self.providers: tuple[TokenProvider, ...] = ()
        """Every distinct credential provider in use, injected or built."""
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> tuple[TokenProvider, ...]:
        """Serve ``settings``' deployments from now on; return the providers no longer used.

        A target whose auth (and credential timeout) is unchanged keeps its
        provider, so an Entra credential keeps its cached token; a target
        identical to one served before keeps its breaker, unless ``failover``
        changed (then every breaker starts closed with the new thresholds).
        Sessions opened before keep their connections; an attempt in flight
        finishes with the provider it holds, so the caller closes the returned
        providers only once handshakes begun before have ended. New Entra
        providers start fetching their first token at once.
        """
        old_providers = {
            (member.target.auth, member.target.credential_timeout): member.provider
            for members in self._members.values()
            for member in members
        }
        keep_breakers = settings.failover == self._settings.failover
        old_breakers = {
            member.target: member.breaker
            for members in self._members.values()
            for member in members
        }
        injected = self._injected
        # One provider per distinct (auth, credential timeout), in creation order.
        shared: dict[tuple[ApiKeyAuth | EntraAuth, float], TokenProvider] = {}
        built: list[TokenProvider] = []
        members_by_deployment: dict[str, tuple[_Member, ...]] = {}
        for deployment in settings.deployments:
            members: list[_Member] = []
            for target in settings.upstream_targets(deployment):
                if injected is not None and target.inherited:
                    target_provider = injected
                else:
                    key = (target.auth, target.credential_timeout)
                    if key not in shared:
                        reused = old_providers.get(key)
                        if reused is None or reused is injected:
                            reused = provider_for(
                                target.auth, timeout=target.credential_timeout
                            )
                            built.append(reused)
                        shared[key] = reused
                    target_provider = shared[key]
                breaker = old_breakers.get(target) if keep_breakers else None
                if breaker is None:
                    breaker = Breaker(
                        failures_to_open=settings.failover.failures_to_open,
                        cooldown=settings.failover.cooldown_seconds,
                        max_hold=settings.failover.max_retry_after_seconds,
                    )
                members.append(_Member(target, target_provider, breaker))
            members_by_deployment[deployment] = tuple(members)
        providers = list(shared.values())
        if injected is not None:
            providers.insert(0, injected)
        # The swap: nothing awaits from here on.
        old_names = {
            member.target.name
            for members in self._members.values()
            for member in members
        }
        retired = tuple(
            provider for provider in self.providers if provider not in providers
        )
        self._settings = settings
        self._members = members_by_deployment
        self.providers = tuple(providers)
        names: set[str] = set()
        for pool in members_by_deployment.values():
            for member in pool:
                names.add(member.target.name)
                self._metrics.prepare_upstream(
                    member.target.name,
                    self._state_reader(member.breaker),
                    self._credential_reader(member.provider),
                )
        for name in sorted(old_names - names):
            self._metrics.forget_upstream(name)
        if self._started:
            for provider in built:
                if isinstance(provider, EntraTokenProvider):
                    provider.warm_up()
        return retired

    @property
    def breakers(self) -> Mapping[str, Breaker]:
        """Each upstream's breaker, by upstream name (``<deployment>/<index>``)."""
        return {
            member.target.name: member.breaker
            for members in self._members.values()
            for member in members
        }

    @staticmethod
    def _credential_reader(provider: TokenProvider) -> Callable[[], float]:
        return lambda: float(provider.status().ok)

    def credential_report(self) -> tuple[bool, list[dict[str, object]]]:
        """Whether every deployment has an upstream with a usable credential, and details.

        A failed Entra refresh keeps the still-valid token, so readiness only
        drops once some deployment has no usable credential left at all.
        """
        details: list[dict[str, object]] = []
        ready = True
        for members in self._members.values():
            statuses = [member.provider.status() for member in members]
            ready = ready and any(status.ok for status in statuses)
            for member, status in zip(members, statuses, strict=True):
                details.append(
                    {
                        "upstream": member.target.name,
                        "kind": status.kind,
                        "ok": status.ok,
                        "expires_in_s": None
                        if status.expires_in is None
                        else round(status.expires_in),
                        "last_error": status.last_error,
                    }
                )
        return ready, details

    def warm_up(self) -> None:
        """Start fetching Entra tokens now, so the first sessions do not wait."""
        self._started = True
        for provider in self.providers:
            if isinstance(provider, EntraTokenProvider):
                provider.warm_up()

    async def close(self) -> None:
        """Close every provider; idempotent (providers' ``close`` is)."""
        for provider in self.providers:
            await provider.close()

    async def connect(
        self, deployment: str, route: Route, *, user_agent: str
    ) -> OpenedUpstream:
        """Open an upstream for a session of ``deployment``, failing over if needed.

        Each target is tried at most once. The caller bounds the whole call
        (``limits.handshake_timeout``); if that cuts an attempt short, the
        attempt counts as ``abandoned`` and leaves its breaker as it was.

        Raises:
            UpstreamRefused: a refusal that does not fail over (400, 404, other
                4xx), the last failure's refusal, or every upstream held by
                ``Retry-After`` (then no attempt is made).
            UpstreamTimeout: the last attempt timed out.
            UpstreamUnavailable: the last attempt could not connect.
            CredentialUnavailable: the last attempt had no credential.
        """
        members = self._members.get(deployment)
        if members is None:
            # Removed by a reload between the client's admission and now.
            raise NotFound(f"deployment {deployment!r} is not configured")
        plan = plan_attempts(
            [member.breaker for member in members],
            [member.target.weight for member in members],
            self._clock(),
            self.random,
        )
        if not plan.order:
            raise self._held(deployment, plan)
        last: UpstreamError | None = None
        failed: _Member | None = None
        for index in plan.order:
            member = members[index]
            attempt = member.breaker.begin(self._clock(), force=plan.forced)
            if attempt is None:
                # Its breaker closed while an earlier attempt ran (another
                # session's failures, or its half-open trial taken).
                continue
            if failed is not None and last is not None:
                self._metrics.upstream_failovers.inc()
                log.warning(
                    "upstream.failover",
                    upstream=failed.target.name,
                    next_upstream=member.target.name,
                    reason=_reason(last),
                )
            try:
                return await self._attempt(member, attempt, route, user_agent)
            except UpstreamRefused as error:
                if not fails_over(error.upstream_status):
                    raise
                last, failed = error, member
            except (
                UpstreamTimeout,
                UpstreamUnavailable,
                CredentialUnavailable,
            ) as error:
                last, failed = error, member
        # The plan's first attempt always begins (nothing awaits before it).
        assert last is not None
        raise last

    async def _attempt(
        self, member: _Member, attempt: Attempt, route: Route, user_agent: str
    ) -> OpenedUpstream:
        target, breaker = member.target, member.breaker
        request_id = str(uuid.uuid4())
        result = "abandoned"
        try:
            # open_upstream's own log lines then name the upstream.
            with structlog.contextvars.bound_contextvars(upstream=target.name):
                auth = await self._auth_header(member)
                connection = await open_upstream(
                    target.ws_base + upstream_target(route, target.upstream_deployment),
                    upstream_headers(
                        auth, request_id=request_id, user_agent=user_agent
                    ),
                    connect_timeout=target.connect_timeout,
                    max_message_bytes=self._settings.limits.max_message_bytes,
                    flow=self._settings.flow,
                )
        except CredentialUnavailable:
            # Says nothing about the upstream itself.
            result = "credential_unavailable"
            breaker.abandoned(attempt)
            raise
        except UpstreamRefused as error:
            result = "refused"
            self._metrics.upstream_refused(target.name, error.upstream_status)
            if fails_over(error.upstream_status):
                breaker.failed(
                    attempt,
                    self._clock(),
                    retry_after=retry_after_seconds(
                        error.retry_after, now_epoch=self._wall_clock()
                    ),
                    status=error.upstream_status,
                )
            else:
                # The client's request was judged: the upstream is answering.
                breaker.abandoned(attempt)
            raise
        except UpstreamTimeout:
            result = "timeout"
            breaker.failed(attempt, self._clock())
            raise
        except UpstreamUnavailable:
            result = "unavailable"
            breaker.failed(attempt, self._clock())
            raise
        except BaseException:
            # Cancelled (handshake budget spent, client gone): no verdict.
            breaker.abandoned(attempt)
            raise
        else:
            result = "ok"
            breaker.succeeded(attempt)
        finally:
            self._metrics.upstream_connects.labels(target.name, result).inc()
        return OpenedUpstream(connection, request_id, target)

    async def _auth_header(self, member: _Member) -> tuple[str, str]:
        try:
            async with asyncio.timeout(member.target.credential_timeout):
                return await member.provider.auth_header()
        except (TimeoutError, CredentialUnavailable):
            raise CredentialUnavailable(
                "the relay's upstream credential is unavailable"
            ) from None

    def _held(self, deployment: str, plan: Plan) -> UpstreamRefused:
        assert plan.held_until is not None
        status = plan.held_status if plan.held_status is not None else 503
        wait = max(1, math.ceil(plan.held_until - self._clock()))
        log.warning(
            "upstream.held",
            deployment=deployment,
            upstream_status=status,
            retry_after_s=wait,
        )
        message = (
            "the upstream is throttling requests; retry later"
            if status == 429
            else "the upstream failed to open the session"
        )
        return UpstreamRefused(
            message,
            status=client_status_for_upstream(status),
            upstream_status=status,
            retry_after=str(wait),
        )

    def _state_reader(self, breaker: Breaker) -> Callable[[], float]:
        return lambda: float(breaker.state(self._clock()))


def _reason(error: UpstreamError) -> str:
    if isinstance(error, UpstreamRefused):
        return str(error.upstream_status)
    return type(error).__name__
