"""Running the relay under uvicorn: one worker, two listeners, one event loop.

The WebSocket/health listener and the metrics listener are two sockets served
by the same :class:`uvicorn.Server`; :class:`~relay.service.app.RelayApp` tells them
apart by the local port. Binding the sockets here (rather than letting uvicorn
bind) means port 0 works for tests and the real ports are known before serving.

With ``listen.tls`` the main listener speaks TLS only (:mod:`relay.service.tls`) and
the metrics listener stays plain HTTP: uvicorn applies one TLS context to every
socket it serves, so :class:`RelayServer` serves the TLS socket itself.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType

import uvicorn
from prometheus_client import CollectorRegistry

from relay.config import Settings
from relay.service.app import RelayApp, create_app
from relay.service.drain import Drain
from relay.service.metrics import TlsMetrics
from relay.service.reload import ConfigFile, Reloader
from relay.service.tls import ListenerTls, ReloadResult
from relay.typing import TokenProvider
from relay.ws.uvicorn_http import http_protocol
from relay.ws.uvicorn_websocket import ws_protocol


__all__ = [
    "RelayServer",
    "RunningRelay",
    "TlsSocket",
    "bind",
    "running_relay",
    "serve_forever",
    "uvicorn_config",
]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: RelayApp, settings: Settings) -> uvicorn.Config:
    """uvicorn settings for the relay; each choice is explained inline."""
    return uvicorn.Config(
        app,
        # httptools with a deadline and a size limit on request heads.
        http=http_protocol(settings.limits.header_timeout, app.metrics.http_refused),
        # uvicorn's current (sans-I/O) implementation, see relay.ws.uvicorn_websocket.
        ws=ws_protocol(app.metrics.http_refused),
        ws_max_size=settings.limits.max_message_bytes,
        # Compressing base64 audio costs CPU for almost no gain, and compression
        # of secrets next to attacker-chosen data leaks them (CRIME).
        ws_per_message_deflate=False,
        ws_ping_interval=settings.flow.ping_interval,
        ws_ping_timeout=settings.flow.ping_timeout,
        lifespan="on",
        # Logging is configured by relay.service.logs; uvicorn must not install its own.
        log_config=None,
        server_header=False,
        date_header=False,
        # Client addresses come from the socket; trusting X-Forwarded-For is an
        # ingress decision the relay does not make.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.flow.close_timeout) + 5,
    )


@dataclass(frozen=True, slots=True)
class TlsSocket:
    """A listening socket :class:`RelayServer` serves over TLS only."""

    sock: socket.socket
    context: ssl.SSLContext
    handshake_timeout: float
    """Bound on the TLS handshake, from the connection (uvicorn's timers start after it)."""
    shutdown_timeout: float
    """Bound on the TLS closing exchange (close_notify) of a closing connection."""


class RelayServer(uvicorn.Server):
    """uvicorn's server, draining on SIGTERM/SIGINT and exiting 0.

    uvicorn would close every WebSocket with 1012 at the first signal; with a
    ``drain`` the first signal starts it instead (:mod:`relay.service.drain`) and the
    server exits once the drain is over. A second signal stops at once (uvicorn
    then closes what is left with 1012), a third forces the exit.

    uvicorn also records a caught signal and raises it again once shut down, so
    the process would die *by* SIGTERM (exit status -15) after a graceful stop.
    The relay exits 0 instead: a requested stop is not a failure.

    Sockets listed in ``tls`` are served over TLS with their own context (pass
    them in ``serve(sockets=...)`` too, so uvicorn closes them at shutdown).
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain: Drain | None = None,
        tls: Sequence[TlsSocket] = (),
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._tls = tuple(tls)
        if drain is not None:
            drain.on_drained = self._drained
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set once the listeners are bound and the lifespan has started.
        self.started_event = asyncio.Event()
        # Set once serving has ended, whatever the reason.
        self.stopped_event = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does (TLS sockets apart), then announce it."""
        self._loop = asyncio.get_running_loop()
        tls_sockets = {listener.sock for listener in self._tls}
        plain = [sock for sock in sockets or [] if sock not in tls_sockets]
        await super().startup(sockets=plain if sockets is not None else None)
        for listener in self._tls:
            self.servers.append(await self._serve_tls(listener))
        self.started_event.set()

    async def _serve_tls(self, listener: TlsSocket) -> asyncio.Server:
        config = self.config

        # What uvicorn's startup does for its own sockets, with this context.
        def create_protocol(
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )
            return protocol

        return await asyncio.get_running_loop().create_server(
            create_protocol,
            sock=listener.sock,
            ssl=listener.context,
            backlog=config.backlog,
            ssl_handshake_timeout=listener.handshake_timeout,
            ssl_shutdown_timeout=listener.shutdown_timeout,
        )

    def _drained(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain (or stop, without a drain). Later ones: stop, then force.

        Runs in the signal handler, between two bytecodes of the event loop's
        thread: it only sets flags or schedules work on the loop.
        """
        drain, loop = self._drain, self._loop
        if (
            drain is not None
            and loop is not None
            and not drain.draining
            and not self.should_exit
        ):
            loop.call_soon_threadsafe(drain.begin)
        elif self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True


@dataclass(frozen=True, slots=True)
class RunningRelay:
    """A relay serving on real sockets."""

    app: RelayApp
    server: RelayServer
    port: int
    metrics_port: int
    tls: ListenerTls | None = None
    """The main listener's TLS (``listen.tls``), ``None`` when it is plain."""
    reloader: Reloader | None = None
    """Reloads the configuration on SIGHUP and file changes, when serving from a file."""

    @property
    def scheme(self) -> str:
        """``wss`` or ``ws``: what WebSocket clients of the main listener use."""
        return "wss" if self.tls is not None else "ws"


def _prepare(
    settings: Settings,
    *,
    registry: CollectorRegistry | None,
    provider: TokenProvider | None,
) -> tuple[RelayApp, RelayServer, list[socket.socket], ListenerTls | None]:
    # Certificate files are checked before anything listens.
    tls = (
        ListenerTls(settings.listen.tls, source=settings.source)
        if settings.listen.tls is not None
        else None
    )
    main_socket = bind(settings.listen.host, settings.listen.port)
    try:
        metrics_socket = bind(settings.metrics.host, settings.metrics.port)
    except OSError:
        main_socket.close()
        raise
    metrics_port = metrics_socket.getsockname()[1]
    app = create_app(
        settings, registry=registry, provider=provider, metrics_port=metrics_port
    )
    tls_sockets: tuple[TlsSocket, ...] = ()
    if tls is not None:
        tls_sockets = (
            TlsSocket(
                main_socket,
                tls.context,
                # A client that never finishes its handshake is a slowloris
                # too: the same bound as on a request head.
                handshake_timeout=settings.limits.header_timeout,
                shutdown_timeout=settings.flow.close_timeout,
            ),
        )
    return (
        app,
        RelayServer(uvicorn_config(app, settings), drain=app.drain, tls=tls_sockets),
        [main_socket, metrics_socket],
        tls,
    )


async def _watch_tls(tls: ListenerTls, metrics: TlsMetrics) -> None:
    metrics.served(tls.certificate.not_after)

    def on_check(tls: ListenerTls, result: ReloadResult) -> None:
        if result != "unchanged":
            metrics.reloaded(result)
            metrics.served(tls.certificate.not_after)

    await tls.watch(on_check)


async def _serve(server: RelayServer, sockets: list[socket.socket]) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit:
        # uvicorn exits the process when start-up fails; callers get an error.
        raise RuntimeError("the relay failed to start") from None
    finally:
        for sock in sockets:
            sock.close()


async def serve_forever(
    settings: Settings,
    *,
    on_started: Callable[[RunningRelay], None],
    config: ConfigFile | None = None,
    on_reloaded: Callable[[Settings], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, calling ``on_started`` once listening.

    With ``config`` (the file ``settings`` were read from), SIGHUP and changes
    of the file reload it (:mod:`relay.service.reload`), calling ``on_reloaded``
    with each generation applied.

    Raises:
        RuntimeError: the relay failed to start.
        OSError: a listener could not be bound.
    """
    async with running_relay(
        settings, config=config, on_reloaded=on_reloaded, reload_signal=True
    ) as relay:
        on_started(relay)
        await relay.server.stopped_event.wait()


@asynccontextmanager
async def running_relay(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    provider: TokenProvider | None = None,
    config: ConfigFile | None = None,
    on_reloaded: Callable[[Settings], None] | None = None,
    reload_signal: bool = False,
    reload_interval: float = 1.0,
) -> AsyncIterator[RunningRelay]:
    """Serve the relay until the block exits (or a signal stops it), then shut down.

    With ``config``, a :class:`~relay.service.reload.Reloader` polls that file
    every ``reload_interval`` seconds (and, with ``reload_signal``, reloads on
    SIGHUP: only in a process's main thread, so not in tests).

    Raises:
        RuntimeError: the relay failed to start (e.g. its lifespan failed).
        OSError: a listener could not be bound.
    """
    app, server, sockets, tls = _prepare(settings, registry=registry, provider=provider)
    ports = [sock.getsockname()[1] for sock in sockets]
    async with asyncio.TaskGroup() as group:
        watching = (
            group.create_task(
                _watch_tls(tls, TlsMetrics(app.metrics.registry)), name="tls-reload"
            )
            if tls is not None
            else None
        )
        serving = group.create_task(_serve(server, sockets), name="uvicorn")
        serving.add_done_callback(lambda _task: server.stopped_event.set())
        started = group.create_task(server.started_event.wait(), name="uvicorn-started")
        await asyncio.wait([serving, started], return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            started.cancel()
            if watching is not None:
                watching.cancel()
            await serving  # re-raises the start-up failure
            raise RuntimeError("the relay stopped during start-up")
        reloader = (
            Reloader(app, config, interval=reload_interval, on_applied=on_reloaded)
            if config is not None
            else None
        )
        reloading = None
        if reloader is not None:
            if reload_signal:
                reloader.install_signal_handler()
            reloading = group.create_task(reloader.watch(), name="config-reload")
        try:
            yield RunningRelay(app, server, ports[0], ports[1], tls, reloader)
        finally:
            if reloading is not None:
                reloading.cancel()
            # Shut down gracefully even when the block failed, instead of
            # letting the task group cancel uvicorn mid-lifespan.
            server.should_exit = True
            await serving
            if watching is not None:
                watching.cancel()  # the task group waits for it
            if reloader is not None:
                await reloader.close()
