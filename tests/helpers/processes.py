"""The relay as a real process (`python -m relay run`), for multi-replica and signal tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.timing import SECOND


# The console banner; with log.format json the ports are fields of relay.serving.
_SERVING = re.compile(rb"is serving on wss?://[^:]+:(\d+)")
_METRICS = re.compile(rb"metrics: http://[^:]+:(\d+)/metrics")


@dataclass
class RelayProcess:
    """A running relay process and what it wrote."""

    process: asyncio.subprocess.Process
    port: int = 0
    metrics_port: int = 0
    output: list[bytes] = field(default_factory=list)
    """Lines of stderr so far (read by a task: what the relay just did may not be in yet)."""
    stdout: list[bytes] = field(default_factory=list)
    printed: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)
    """Notified after each line added to :attr:`output`."""
    output_ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    """Set once :attr:`output` holds everything the process printed."""

    async def logged(
        self, event: str, count: int, *, within: float = 10 * SECOND
    ) -> list[dict[str, Any]]:
        """Every JSON log line of ``event``, once at least ``count`` were printed.

        The relay logs after it acts (``session.end`` once both legs are
        closed), so a test that saw the act waits for the line here.

        Raises:
            TimeoutError: fewer than ``count`` were printed ``within`` seconds.
        """

        def lines() -> list[dict[str, Any]]:
            found = []
            for line in self.output:
                with suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == event:
                        found.append(record)
            return found

        async with asyncio.timeout(within), self.printed:
            await self.printed.wait_for(lambda: len(lines()) >= count)
        return lines()

    async def add_output(self, line: bytes) -> None:
        """Record ``line``; wake :meth:`logged`."""
        async with self.printed:
            self.output.append(line)
            self.printed.notify_all()

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crashed node."""
        self.process.kill()

    async def stop(self) -> int:
        """SIGTERM, then wait (bounded); the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20 * SECOND):
            status = await self.process.wait()
            # The pipe is closed, but lines may still be on their way to output.
            await self.output_ended.wait()
        return status


def _read_banner(relay: RelayProcess, line: bytes) -> None:
    if line.startswith(b"{"):
        event = json.loads(line)
        if event["event"] == "relay.serving":
            relay.port, relay.metrics_port = event["port"], event["metrics_port"]
        return
    if match := _SERVING.search(line):
        relay.port = int(match.group(1))
    if match := _METRICS.search(line):
        relay.metrics_port = int(match.group(1))


@asynccontextmanager
async def relay_process(
    config: Path, env: Mapping[str, str], *, args: Sequence[str] = ()
) -> AsyncIterator[RelayProcess]:
    """Start ``python -m relay run --config config [args]``; yield once it serves; stop it after."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        "--config",
        str(config),
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    relay = RelayProcess(process)
    assert process.stderr is not None
    assert process.stdout is not None
    stream, stdout = process.stderr, process.stdout

    async def read_until_serving() -> None:
        while not (relay.port and relay.metrics_port):
            line = await stream.readline()
            if not line:
                raise AssertionError(b"".join(relay.output).decode(errors="replace"))
            relay.output.append(line)
            _read_banner(relay, line)

    async def drain_stdout() -> None:
        # Keep reading so a full pipe never blocks the relay.
        while line := await stdout.readline():
            relay.stdout.append(line)

    async def drain_stderr() -> None:
        while line := await stream.readline():
            await relay.add_output(line)
        relay.output_ended.set()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(drain_stdout())
            async with asyncio.timeout(20 * SECOND):
                await read_until_serving()
            group.create_task(drain_stderr())
            try:
                yield relay
            finally:
                if process.returncode is None:
                    with suppress(TimeoutError):
                        await relay.stop()
                # The readers end at the pipes' EOF: a relay that did not
                # stop in time is killed rather than waited for.
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


@dataclass(frozen=True)
class DevConfig:
    """examples/dev.yaml (what `make run` serves) on free ports, written to ``path``."""

    path: Path
    port: int
    metrics_port: int
    simulator_port: int


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dev_config(directory: Path) -> DevConfig:
    """Write examples/dev.yaml with its three ports replaced by free ones."""
    config = DevConfig(directory / "dev.yaml", free_port(), free_port(), free_port())
    text = (EXAMPLES / "dev.yaml").read_text()
    for old, new in (
        ("8080", config.port),
        ("9464", config.metrics_port),
        ("9000", config.simulator_port),
    ):
        text = text.replace(old, str(new))
    config.path.write_text(text)
    return config
