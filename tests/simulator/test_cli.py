"""``realtime-relay simulate``: options, dev mode, signals, exit status."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

import pytest
from websockets.asyncio.client import connect

from relay.simulator import cli
from relay.simulator.wire import Family
from tests.helpers.timing import SECOND
from tests.simulator.helpers import receive


# Runs the subcommand the way the main CLI wires it.
SCRIPT = """
import argparse, sys
from relay.simulator import cli
parser = argparse.ArgumentParser()
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args(sys.argv[1:])))
"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    """127.0.0.1:9000, the key from AZURE_OPENAI_API_KEY, Azure's 60-minute cap."""
    args = parse()
    assert (args.host, args.port, args.api_key_env) == (
        "127.0.0.1",
        9000,
        "AZURE_OPENAI_API_KEY",
    )
    assert (args.audio_speed, args.max_session_seconds, args.deployment) == (
        2.0,
        3600.0,
        None,
    )
    assert not args.no_control_api
    assert not args.conversation_created
    assert set(args.families) == {Family.PREVIEW, Family.GA}


def test_options() -> None:
    """Every option parses."""
    args = parse(
        "--host", "0.0.0.0", "--port", "0", "--api-key-env", "K", "--audio-speed", "0",
        "--max-session-seconds", "0", "--deployment", "a", "--deployment", "b", "--no-control-api",
        "--conversation-created",
    )  # fmt: skip
    assert (args.port, args.api_key_env, args.audio_speed) == (0, "K", 0.0)
    assert args.conversation_created
    assert (args.max_session_seconds, args.deployment, args.no_control_api) == (
        0.0,
        ["a", "b"],
        True,
    )


@pytest.mark.parametrize("speed", ["-1", "inf", "nan", "fast"])
def test_audio_speed_must_be_a_finite_multiple(
    speed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--audio-speed takes a finite number >= 0 (0: unpaced)."""
    with pytest.raises(SystemExit):
        parse("--audio-speed", speed)
    assert "--audio-speed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "families"),
    [
        ("ga", (Family.GA,)),
        ("preview,ga", (Family.PREVIEW, Family.GA)),
        (" ga , ga ", (Family.GA,)),
    ],
)
def test_families(text: str, families: tuple[Family, ...]) -> None:
    assert parse("--families", text).families == families


@pytest.mark.parametrize("text", ["", ",", "beta", "ga,v2", "GA"])
def test_families_must_name_known_ones(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Garbage is refused with the option named, never a traceback."""
    with pytest.raises(SystemExit):
        parse("--families", text)
    assert "--families" in capsys.readouterr().err


def test_port_in_use_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A port that cannot be bound is reported on stderr, exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli.run(
            parse("--port", str(port), "--api-key-env", "K"), environ={"K": "key"}
        )
    assert status == 1
    assert "cannot listen" in capsys.readouterr().err


async def run_simulator(*argv: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_serves_until_a_signal_then_exits_0(signum: signal.Signals) -> None:
    """It prints where it listens, serves sessions, and exits 0 on SIGINT/SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "SIM_TEST_KEY"} | {
        "SIM_TEST_KEY": "secret"
    }
    process = await run_simulator(
        "--port", "0", "--api-key-env", "SIM_TEST_KEY", env=env
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(20 * SECOND):
            first = (await process.stdout.readline()).decode()
        assert first.startswith(
            "Azure OpenAI Realtime simulator listening on http://127.0.0.1:"
        )
        base = first.split()[-1].replace("http://", "ws://")
        url = f"{base}/openai/realtime?api-version=2025-04-01-preview&deployment=d"
        async with connect(url, additional_headers={"api-key": "secret"}) as ws:
            assert (await receive(ws))["type"] == "session.created"
        process.send_signal(signum)
        async with asyncio.timeout(20 * SECOND):
            status = await process.wait()
            errors = (await process.stderr.read()).decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert status == 0
    assert "dev mode" not in errors
    assert "secret" not in errors


async def test_dev_mode_without_a_key() -> None:
    """An unset key variable means dev mode, announced on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "SIM_TEST_KEY"}
    process = await run_simulator(
        "--port", "0", "--api-key-env", "SIM_TEST_KEY", env=env
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(20 * SECOND):
            notice = (await process.stderr.readline()).decode()
            await process.stdout.readline()
        assert "SIM_TEST_KEY is unset or empty; dev mode" in notice
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20 * SECOND):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
