"""``realtime-relay``: the command line. The only module that reads ``os.environ``.

Subcommands:

* ``run`` — serve the relay from a configuration file (``--config`` or
  ``RELAY_CONFIG``); ``--with-simulator`` also starts the built-in Azure
  simulator at the configured upstream address, and ``--dev-tls`` serves TLS
  with a certificate from a local development CA (:mod:`relay.service.devtls`), both
  for local development.
* ``simulate`` — only the Azure Realtime simulator.
* ``demo`` — one scripted voice session through a fresh simulator and relay.
* ``hash-key`` — print the SHA-256 of a client key read from stdin, for ``key_sha256``.

Exit status: 0 on a requested stop, 2 for an invalid configuration or usage,
1 when serving failed.

Output of ``run``: until the configuration is loaded and valid, the log format
is unknown, so usage and configuration errors (exit status 2) are plain
``realtime-relay: ...`` lines on stderr. From then on everything goes through
:func:`relay.service.logs.configure_logging` in ``log.format``: with ``json`` the start
banner is one ``relay.serving`` event and a failure to serve one
``relay.cannot_serve`` event, so every line is a JSON object; with ``console``
both stay human text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from relay import __version__
from relay.config import ApiKeyAuth, Settings, TlsSettings, load_settings
from relay.config.policies import preview_warnings
from relay.exceptions import ConfigError
from relay.service.devtls import DEV_HOSTS, DevTls, ensure_dev_tls, trust_hints
from relay.service.logs import configure_logging
from relay.service.reload import ConfigFile
from relay.service.server import RunningRelay, serve_forever
from relay.service.tls import server_context


__all__ = ["log_config_warnings", "main"]

T = TypeVar("T")

log = structlog.get_logger("relay.cli")


def main(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """Run the command line; return the process exit status."""
    env = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.handler
    return handler(args, env)


def _parser() -> argparse.ArgumentParser:
    from relay.simulator import cli as simulator_cli

    parser = argparse.ArgumentParser(
        prog="realtime-relay", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve the relay")
    run.add_argument("--config", help="configuration file (default: $RELAY_CONFIG)")
    run.add_argument(
        "--with-simulator",
        action="store_true",
        help="also start the built-in Azure simulator at the configured (loopback) upstream endpoint",
    )
    run.add_argument(
        "--dev-tls",
        metavar="DIR",
        nargs="?",
        const=".dev-tls",
        help="serve TLS with a certificate for localhost from a development CA "
        "kept in DIR (default: .dev-tls; made if missing); loopback listen.host only",
    )
    run.set_defaults(handler=_run)

    simulate = commands.add_parser("simulate", help="run the Azure Realtime simulator")
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(handler=lambda args, _env: simulator_cli.run(args))

    demo = commands.add_parser(
        "demo", help="one scripted session through a simulator and a relay"
    )
    demo.set_defaults(handler=_demo)

    hash_key = commands.add_parser(
        "hash-key", help="print the SHA-256 hex of a key read from stdin"
    )
    hash_key.set_defaults(handler=_hash_key)
    return parser


def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path = args.config or environ.get("RELAY_CONFIG")
    if not path:
        print(
            "realtime-relay: no configuration: pass --config PATH or set RELAY_CONFIG",
            file=sys.stderr,
        )
        return 2
    try:
        settings = load_settings(path, environ)
        if args.with_simulator:
            _check_simulator_endpoint(settings)
        dev_tls = None
        if args.dev_tls is not None:
            settings, dev_tls = _with_dev_tls(settings, Path(args.dev_tls))
        if settings.listen.tls is not None:
            # Loaded again to serve; checked here so a bad file exits with 2.
            server_context(settings.listen.tls, source=settings.source)
    except ConfigError as exc:
        print(f"realtime-relay: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    log_config_warnings(settings)
    # Until the reloader listens for SIGHUP, one must not end the process
    # (its default action): a reload asked for during start-up is not lost,
    # the file watch sees the change.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = ConfigFile(Path(path), environ, _adjust_like(settings, dev_tls))
    try:
        _run_async(
            _serve(
                settings,
                with_simulator=args.with_simulator,
                dev_tls=dev_tls,
                config=config,
            )
        )
    except (OSError, RuntimeError) as exc:
        if settings.log.format == "json":
            log.error("relay.cannot_serve", error=str(exc))
        else:
            print(f"realtime-relay: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _adjust_like(
    settings: Settings, dev_tls: DevTls | None
) -> Callable[[Settings], Settings]:
    """What ``run`` did to the file's settings, for every reloaded generation."""
    if dev_tls is None:
        return lambda new: new
    # The development certificate is not in the file: keep serving it.
    return lambda new: replace(new, listen=replace(new.listen, tls=settings.listen.tls))


def log_config_warnings(settings: Settings) -> None:
    """Log what a valid configuration does that its author may not expect.

    Today: the GA-only parts of policies, left out of preview-family sessions.
    Only deployments whose upstream speaks the preview protocol
    (``upstream_protocol: preview``) have such sessions: on a GA upstream a
    preview client is bridged, and the policy applies in GA's terms.
    """
    preview = {
        name
        for name, deployment in settings.deployments.items()
        if deployment.upstream_protocol == "preview"
    }
    policies = (
        client.policy
        for client in settings.clients
        if client.deployments is None or preview & client.deployments
    )
    for line in preview_warnings(settings.source, policies) if preview else ():
        log.warning("policy.ga_only", detail=line)


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when available (7-12% less CPU per message)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _check_simulator_endpoint(settings: Settings) -> None:
    if settings.upstream is None:
        raise ConfigError(
            f"{settings.source}: upstream: missing, expected an http://<loopback>:<port> "
            "endpoint for --with-simulator"
        )
    parts = urlsplit(settings.upstream.ws_base)
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if parts.scheme != "ws" or not loopback or parts.port is None:
        raise ConfigError(
            f"{settings.source}: upstream.endpoint: expected an http://<loopback>:<port> URL "
            "for --with-simulator"
        )


def _with_dev_tls(settings: Settings, directory: Path) -> tuple[Settings, DevTls]:
    host = settings.listen.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ConfigError(
            f"{settings.source}: listen.host: expected a loopback address with --dev-tls "
            f"(its certificate is for {', '.join(DEV_HOSTS)} only), got {host!r}"
        )
    try:
        dev_tls = ensure_dev_tls(directory)
    except OSError as exc:
        raise ConfigError(
            f"--dev-tls: cannot write the development CA in {str(directory)!r}: {exc}"
        ) from None
    tls = TlsSettings(cert_file=str(dev_tls.cert_file), key_file=str(dev_tls.key_file))
    return replace(settings, listen=replace(settings.listen, tls=tls)), dev_tls


async def _serve(
    settings: Settings,
    *,
    with_simulator: bool,
    dev_tls: DevTls | None = None,
    config: ConfigFile | None = None,
) -> None:
    async with _maybe_simulator(settings, enabled=with_simulator):
        await serve_forever(
            settings,
            on_started=lambda relay: _announce(
                settings, relay, with_simulator, dev_tls
            ),
            config=config,
            on_reloaded=log_config_warnings,
        )


@contextlib.asynccontextmanager
async def _maybe_simulator(settings: Settings, *, enabled: bool) -> AsyncIterator[None]:
    if not enabled:
        yield
        return
    from relay.simulator import Simulator

    # Checked by _check_simulator_endpoint before serving.
    assert settings.upstream is not None
    parts = urlsplit(settings.upstream.ws_base)
    auth = settings.upstream.auth
    # The simulator accepts exactly the relay's own upstream key (with entra
    # auth it accepts any bearer token: there is no Entra here).
    keys = {auth.api_key} if isinstance(auth, ApiKeyAuth) else set()
    async with Simulator.start(
        host=parts.hostname or "127.0.0.1", port=parts.port or 0, api_keys=keys
    ):
        yield


def _announce(
    settings: Settings,
    relay: RunningRelay,
    with_simulator: bool,
    dev_tls: DevTls | None = None,
) -> None:
    """Say where the relay serves: one ``relay.serving`` event, or a banner on ``console``."""
    host = settings.listen.host
    base = f"{relay.scheme}://{host}:{relay.port}"
    http = "https" if relay.tls is not None else "http"
    deployment = next(iter(settings.deployments))
    endpoints = sorted(
        {
            target.endpoint
            for name in settings.deployments
            for target in settings.upstream_targets(name)
        }
    )
    health = f"{http}://{host}:{relay.port}/readyz"
    metrics = f"http://{settings.metrics.host}:{relay.metrics_port}/metrics"
    preview = (
        f"{base}/openai/realtime?api-version=2025-04-01-preview&deployment={deployment}"
    )
    ga = f"{base}/openai/v1/realtime?model={deployment}"
    if settings.log.format == "json":
        log.info(
            "relay.serving",
            version=__version__,
            url=base,
            port=relay.port,
            health_url=health,
            metrics_url=metrics,
            metrics_port=relay.metrics_port,
            preview_url=preview,
            ga_url=ga,
            upstreams=endpoints,
            simulator=with_simulator,
            tls=relay.tls is not None,
            dev_ca_file=str(dev_tls.ca_file) if dev_tls is not None else None,
        )
        return
    upstream = "the built-in simulator at " if with_simulator else ""
    lines = [
        f"Realtime Relay {__version__} is serving on {base} (upstream: {upstream}{', '.join(endpoints)})",
        f"  health:  {health}    metrics: {metrics}",
        f"  preview: {preview}",
        f"  GA:      {ga}",
        "  authenticate with the header `api-key: <client key>` (or Authorization: Bearer <client key>)",
        f'  openai SDK: AsyncAzureOpenAI(azure_endpoint="{http}://{host}:{relay.port}", api_key=KEY,',
        f'              api_version="2025-04-01-preview", websocket_base_url="{base}/openai")',
        f'              .beta.realtime.connect(model="{deployment}")',
    ]
    if dev_tls is not None:
        made = "made just now" if dev_tls.created else "kept from an earlier run"
        lines.append(
            f"  TLS: a certificate for {', '.join(DEV_HOSTS)} from the development CA "
            f"{dev_tls.ca_file} ({made}); trust that CA in clients:"
        )
        lines.extend(f"    {hint}" for hint in trust_hints(dev_tls.ca_file))
    print("\n".join(lines), file=sys.stderr, flush=True)


def _demo(_args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    from relay.demo import run_demo

    return _run_async(run_demo(sys.stdout))


def _hash_key(_args: argparse.Namespace, _environ: Mapping[str, str]) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("realtime-relay: no key on stdin", file=sys.stderr)
        return 2
    print(hashlib.sha256(key.encode()).hexdigest())
    return 0
