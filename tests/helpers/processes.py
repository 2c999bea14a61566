"""The relay as a real process (`python -m relay run`), for multi-replica and signal tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.timing import SECOND


# The console banner; with log.format json the ports are fields of relay.serving.
_SERVING = re.compile(rb"is serving on ws://[^:]+:(\d+)")
_METRICS = re.compile(rb"metrics: http://[^:]+:(\d+)/metrics")


@dataclass
class RelayProcess:
    """A running relay process and what it wrote."""

    process: asyncio.subprocess.Process
    port: int = 0
    metrics_port: int = 0
    output: list[bytes] = field(default_factory=list)
    """stderr, line by line."""
    stdout: list[bytes] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crashed node."""
        self.process.kill()

    async def stop(self) -> int:
        """SIGTERM, then wait (bounded); the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20 * SECOND):
            return await self.process.wait()


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
    stream = process.stderr

    async def read_until_serving() -> None:
        while not (relay.port and relay.metrics_port):
            line = await stream.readline()
            if not line:
                raise AssertionError(b"".join(relay.output).decode(errors="replace"))
            relay.output.append(line)
            _read_banner(relay, line)

    async def drain(source: asyncio.StreamReader, lines: list[bytes]) -> None:
        # Keep reading so a full pipe never blocks the relay's logging.
        while line := await source.readline():
            lines.append(line)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(drain(process.stdout, relay.stdout))
            async with asyncio.timeout(20 * SECOND):
                await read_until_serving()
            group.create_task(drain(stream, relay.output))
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
