"""Configuration reload: SIGHUP or a changed file swaps the generation new handshakes use.

:class:`Reloader` watches the configuration file: it reads it every
``interval`` seconds (1 by default) and compares the SHA-256 of its content,
so an edit in place, a rename over it and a Kubernetes ConfigMap update (the
kubelet swaps the ``..data`` symlink of the mounted directory) are all seen,
whatever the files' modification times say. SIGHUP asks for the same at once.

A reload is all or nothing:

1. the file is read and parsed by the start-up parser (:func:`relay.config.parse_settings`),
   in a worker thread: a large file must not hold the event loop every live
   session waits for;
   an error is logged as ``config.reload_failed`` with the same key-path
   message as at start-up;
2. :func:`relay.sansio.reload.plan_reload` compares it with the served
   generation; a change of a fixed key (``listen.port``, ...) is refused the
   same way, naming the key;
3. the new JWT verifier, if ``auth.jwt`` changed, is started; then, with no
   await in between, the upstream pools, the gate, the endpoint and the
   metrics' labels are swapped, the log level set, and the generation moves on.

Either way the generation being served keeps serving until a good file is
swapped in. A live session keeps its upstream connection and the limits it was
admitted with; with ``reload.policy_reload: all_sessions`` it switches to its
client's changed policy, and with ``reload.removed_client_grace_seconds`` a
removed client's sessions are closed after that grace
(:meth:`relay.service.endpoint.RealtimeEndpoint.swap`). Credential providers
and a JWT verifier the new generation no longer uses are closed once every
handshake that may hold them has ended (the old ``limits.handshake_timeout``
bounds them), by tasks this reloader owns.

A file read fails for a moment while a ConfigMap's symlinks are swapped, or
while an editor replaces the file: a read failure is reported only when the
next poll sees it too. Content equal to what is served is not a reload (nor is
a new text that parses to the same settings): nothing is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from relay.config import Settings, parse_settings
from relay.exceptions import ConfigError
from relay.sansio.reload import ReloadPlan, plan_reload
from relay.service.app import RelayApp, jwt_verifier_for, prepare_metrics
from relay.service.jwt_auth import JwtVerifier
from relay.service.logs import set_log_level
from relay.service.tasks import TaskSet
from relay.typing import TokenProvider


__all__ = ["ConfigFile", "ReloadResult", "Reloader"]

log = structlog.get_logger("relay.reload")

ReloadResult = Literal["ok", "error", "unchanged"]
Trigger = Literal["signal", "file"]

# Bound on closing one retired credential provider or JWT verifier.
CLOSE_TIMEOUT = 5.0


def _same(settings: Settings) -> Settings:
    return settings


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """Where the configuration comes from, and how the command line adjusts it."""

    path: Path
    """As given on the command line (a ConfigMap's path is a symlink)."""
    environ: Mapping[str, str]
    """The environment secrets are read from (``api_key_env``), as at start-up."""
    adjust: Callable[[Settings], Settings] = field(default=_same)
    """Applied to every parsed generation, as at start-up (``--dev-tls``)."""


class _Unreadable(Exception):
    pass


class Reloader:
    """Reloads ``app``'s configuration from ``source``; see the module docstring.

    Args:
        app: the running relay; its ``settings`` are the served generation,
            read from ``source``.
        source: the file and environment to read.
        interval: seconds between two reads of the file.
        on_applied: called with each generation swapped in (the command line
            logs the configuration's warnings again).
    """

    def __init__(
        self,
        app: RelayApp,
        source: ConfigFile,
        *,
        interval: float = 1.0,
        on_applied: Callable[[Settings], None] | None = None,
    ) -> None:
        self._app = app
        self._source = source
        self._interval = interval
        self._on_applied = on_applied
        # SHA-256 of the text the served generation was parsed from; None
        # when it could not be read just now (the next good read reloads).
        try:
            self._served: bytes | None = hashlib.sha256(self._read()).digest()
        except _Unreadable:
            self._served = None
        # What the last poll saw (a digest, or the read error): a poll acts
        # only on a change, so a broken file is reported once, not every second.
        self._seen: bytes | str | None = self._served
        # A read error seen once, reported if the next poll sees it too.
        self._failing: str | None = None
        self._wanted = asyncio.Event()
        self._retiring = TaskSet()
        self._signal_installed = False

    def request(self) -> None:
        """Reload at once (the SIGHUP handler); safe to call from the event loop only."""
        self._wanted.set()

    def install_signal_handler(self) -> None:
        """Make SIGHUP call :meth:`request` (main thread, running loop)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)
        self._signal_installed = True

    async def watch(self) -> None:
        """Poll the file and serve SIGHUP until cancelled.

        Each round waits at most ``interval`` seconds, so a reload starts at
        most that long after the file changes.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wanted.wait()
            if self._wanted.is_set():
                self._wanted.clear()
                await self.reload("signal")
            else:
                await self.poll()

    async def poll(self) -> ReloadResult:
        """Read the file once; reload if its content differs from the last read."""
        try:
            text = await asyncio.to_thread(self._read)
        except _Unreadable as error:
            message = str(error)
            if self._failing != message:
                # Maybe a symlink swap in progress: look again next round.
                self._failing = message
                return "unchanged"
            if self._seen == message:
                return "unchanged"
            self._seen = message
            return self._failed("file", "unreadable", [message])
        self._failing = None
        digest = hashlib.sha256(text).digest()
        if digest == self._seen:
            return "unchanged"
        self._seen = digest
        return await self._reload_text(text, digest, "file")

    async def reload(self, trigger: Trigger = "signal") -> ReloadResult:
        """Read, validate and apply the file now, whatever was seen before."""
        try:
            text = await asyncio.to_thread(self._read)
        except _Unreadable as error:
            self._seen = str(error)
            return self._failed(trigger, "unreadable", [str(error)])
        digest = hashlib.sha256(text).digest()
        self._seen = digest
        self._failing = None
        return await self._reload_text(text, digest, trigger)

    async def close(self) -> None:
        """Stop listening for SIGHUP; close what reloads retired now; idempotent."""
        if self._signal_installed:
            self._signal_installed = False
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self._retiring.cancel_all()

    def _parse(self, text: bytes) -> Settings:
        source = self._source
        new = parse_settings(
            text.decode("utf-8"), source=str(source.path), environ=source.environ
        )
        return source.adjust(new)

    def _read(self) -> bytes:
        # The same message as a failed read at start-up (relay.config.load_settings).
        path = self._source.path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise _Unreadable(
                f"{path}: cannot read the configuration file: {exc}"
            ) from None

    async def _reload_text(
        self, text: bytes, digest: bytes, trigger: Trigger
    ) -> ReloadResult:
        if digest == self._served:
            log.info("config.unchanged", trigger=trigger)
            return "unchanged"
        source = self._source
        try:
            # Off the event loop: a configuration of many clients and policies
            # takes a while to parse, and every live session waits for the loop.
            new = await asyncio.to_thread(self._parse, text)
        except UnicodeDecodeError as exc:
            message = f"{source.path}: cannot read the configuration file: {exc}"
            return self._failed(trigger, "invalid", [message])
        except ConfigError as exc:
            return self._failed(trigger, "invalid", [str(exc)])
        plan = plan_reload(self._app.settings, new)
        if plan.refused:
            return self._failed(trigger, "refused", list(plan.refused))
        self._served = digest
        if plan.unchanged:
            log.info("config.unchanged", trigger=trigger)
            return "unchanged"
        await self._apply(new, plan, trigger)
        return "ok"

    def _failed(self, trigger: Trigger, reason: str, errors: list[str]) -> ReloadResult:
        self._app.metrics.config_reloads.labels("error").inc()
        log.error(
            "config.reload_failed",
            trigger=trigger,
            reason=reason,
            errors=errors,
            generation=self._app.generation,
        )
        return "error"

    async def _apply(self, new: Settings, plan: ReloadPlan, trigger: Trigger) -> None:
        app = self._app
        old = app.settings
        verifier = app.verifier
        retired_verifier: JwtVerifier | None = None
        if new.jwt != old.jwt:
            retired_verifier, verifier = verifier, jwt_verifier_for(new)
            if verifier is not None:
                # Returns at once; the key set is fetched in the background.
                await verifier.start()
        # The swap: no await from here on, so a handshake sees one generation.
        prepare_metrics(app.metrics, new)
        retired = app.upstreams.reconfigure(new)
        app.gate.swap(new, verifier)
        # Live sessions too, as the new file's `reload` section says.
        app.endpoint.swap(new, plan)
        app.verifier = verifier
        app.settings = new
        app.generation += 1
        app.metrics.config_generation.set(app.generation)
        app.metrics.config_reloads.labels("ok").inc()
        set_log_level(new.log.level)
        log.info(
            "config.reloaded",
            trigger=trigger,
            generation=app.generation,
            changed=list(plan.changed),
            clients_added=list(plan.clients_added),
            clients_removed=list(plan.clients_removed),
            clients_changed=list(plan.clients_changed),
            deployments_added=list(plan.deployments_added),
            deployments_removed=list(plan.deployments_removed),
            providers_retired=len(retired),
        )
        if retired or retired_verifier is not None:
            self._retiring.spawn(
                _retire(retired, retired_verifier, old.limits.handshake_timeout),
                name=f"config-retire-{app.generation}",
            )
        if self._on_applied is not None:
            self._on_applied(new)


async def _retire(
    providers: tuple[TokenProvider, ...],
    verifier: JwtVerifier | None,
    grace: float,
) -> None:
    """Close what a reload retired once handshakes that may hold it are over.

    Cancelled (the relay stops): closes at once.
    """
    try:
        # Handshakes begun before the swap end within their handshake_timeout.
        await asyncio.sleep(grace)
    finally:
        closables: list[TokenProvider | JwtVerifier] = list(providers)
        if verifier is not None:
            closables.append(verifier)
        for closable in closables:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await closable.close()
            except TimeoutError:
                log.warning("config.retire_timeout", kind=type(closable).__name__)
