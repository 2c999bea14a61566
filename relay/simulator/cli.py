"""``realtime-relay simulate``: run the Azure Realtime simulator in the foreground.

The main CLI calls :func:`add_arguments` on its ``simulate`` subparser and
:func:`run` with the parsed arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping

from relay.simulator.engine import AZURE_MAX_SESSION_SECONDS
from relay.simulator.handshake import GA_PATH, PREVIEW_PATH
from relay.simulator.server import DEFAULT_AUDIO_SPEED, Simulator
from relay.simulator.wire import Family


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
        "--audio-speed",
        type=_speed,
        default=DEFAULT_AUDIO_SPEED,
        metavar="MULTIPLE",
        help="stream response audio at this multiple of real time, 0 as fast "
        "as the client reads (default: %(default)s)",
    )
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=float(AZURE_MAX_SESSION_SECONDS),
        metavar="N",
        help="expire sessions with session_expired after N seconds, 0 never "
        "(default: %(default)s, Azure's 60 minutes)",
    )
    parser.add_argument(
        "--conversation-created",
        action="store_true",
        help="greet preview sessions with conversation.created too "
        "(Azure's rtclient rejects it)",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        metavar="NAME",
        help="accept only this deployment (repeatable; default: any)",
    )
    parser.add_argument(
        "--families",
        type=_families,
        default=tuple(Family),
        metavar="LIST",
        help="protocol families served, comma-separated: preview,ga (default) "
        "or ga alone, which refuses -preview api-versions as Azure refuses a "
        "retired API version",
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


def _families(text: str) -> tuple[Family, ...]:
    """``preview``, ``ga`` or both, comma-separated (at least one)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        families = tuple(dict.fromkeys(Family(name) for name in names))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a list of preview, ga: {text!r}"
        ) from None
    if not families:
        raise argparse.ArgumentTypeError("at least one family: preview, ga")
    return families


def _speed(text: str) -> float:
    """A finite multiple of real time >= 0 (0: unpaced)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a multiple >= 0: {text!r}")
    return value


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
            families=args.families,
            audio_speed=args.audio_speed or None,
            max_session_seconds=args.max_session_seconds or None,
            conversation_created=args.conversation_created,
            control_api=not args.no_control_api,
        ) as sim:
            ws = sim.url.replace("http://", "ws://", 1)
            print(f"Azure OpenAI Realtime simulator listening on {sim.url}", flush=True)
            if Family.PREVIEW in args.families:
                print(
                    f"  preview: {ws}{PREVIEW_PATH}?api-version=2025-04-01-preview&deployment=<name>"
                )
            else:
                print("  preview: retired (-preview api-versions are refused)")
            print(f"  GA:      {ws}{GA_PATH}?model=<name>", flush=True)
            await stop.wait()
            logger.info("simulator.stopping")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
