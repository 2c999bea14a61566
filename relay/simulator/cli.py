"""``realtime-relay simulate``: run the Azure Realtime simulator in the foreground.

The main CLI calls :func:`add_arguments` on its ``simulate`` subparser and
:func:`run` with the parsed arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping

from relay.simulator.handshake import GA_PATH, PREVIEW_PATH
from relay.simulator.server import Simulator


logger = logging.getLogger("relay.simulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` options to ``parser``."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=9000,
        help="TCP port, 0 for any (default: %(default)s)",
    )
    parser.add_argument(
        "--api-key-env",
        default="AZURE_OPENAI_API_KEY",
        metavar="NAME",
        help="environment variable holding the accepted api-key; unset or empty "
        "accepts any credential (default: %(default)s)",
    )
    parser.add_argument(
        "--audio-pace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between audio deltas, e.g. 0.15 for real time "
        "(default: as fast as the client reads)",
    )
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=1800.0,
        metavar="N",
        help="expire sessions with session_expired after N seconds, 0 never "
        "(default: %(default)s, Azure's 30 minutes)",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        metavar="NAME",
        help="accept only this deployment (repeatable; default: any)",
    )
    parser.add_argument(
        "--no-control-api",
        action="store_true",
        help="do not serve the /_sim/ control API",
    )


def run(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; return the process exit status.

    ``environ`` defaults to :data:`os.environ`; only the variable named by
    ``--api-key-env`` is read from it.
    """
    environ = os.environ if environ is None else environ
    key = environ.get(args.api_key_env, "")
    if not key:
        print(
            f"simulator: {args.api_key_env} is unset or empty; dev mode: any "
            "non-empty api-key or Bearer credential is accepted",
            file=sys.stderr,
        )
    try:
        asyncio.run(_serve(args, key))
    except OSError as exc:
        print(
            f"simulator: cannot listen on {args.host}:{args.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(args: argparse.Namespace, key: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator.start(
            args.host,
            args.port,
            api_keys={key} if key else set(),
            deployments=args.deployment,
            audio_pace=args.audio_pace,
            max_session_seconds=args.max_session_seconds or None,
            control_api=not args.no_control_api,
        ) as sim:
            ws = sim.url.replace("http://", "ws://", 1)
            print(f"Azure OpenAI Realtime simulator listening on {sim.url}", flush=True)
            print(
                f"  preview: {ws}{PREVIEW_PATH}?api-version=2025-04-01-preview&deployment=<name>"
            )
            print(f"  GA:      {ws}{GA_PATH}?model=<name>", flush=True)
            await stop.wait()
            logger.info("simulator.stopping")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
