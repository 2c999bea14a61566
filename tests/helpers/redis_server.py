"""A real ``redis-server`` on 127.0.0.1 for tests, which can be stopped and restarted.

The binary is required, not optional: without it the tests fail with a message
saying what to install, rather than skip and pass in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from tests.helpers.timing import SECOND


__all__ = ["REDIS_SERVER", "RedisServer", "free_port", "running_redis"]

REDIS_SERVER: Final = shutil.which("redis-server") or "/usr/bin/redis-server"
"""The ``redis-server`` binary the tests run."""

# A free port can be taken by someone else before redis binds it: retry that.
_BIND_ATTEMPTS: Final = 5
_READY_LINE: Final = b"Ready to accept connections"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """One ``redis-server`` process at a time on a fixed port and directory.

    No persistence (``--save ''``, ``--appendonly no``): a restart comes back
    empty, as a Redis pod does after losing its memory.
    """

    def __init__(self, port: int, directory: Path, *, binary: str = REDIS_SERVER):
        """Prepare a server; nothing runs until :meth:`start`.

        Raises:
            RuntimeError: ``binary`` does not exist (say what to install).
        """
        if not Path(binary).exists():
            raise RuntimeError(
                f"{binary} not found: these tests need a real Redis "
                "(apt-get install redis-server)"
            )
        self.port = port
        self.directory = directory
        self._binary = binary
        # The running process, None while stopped.
        self._process: asyncio.subprocess.Process | None = None
        # Everything the process wrote, for failure messages.
        self.output = b""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process was started and has not been stopped."""
        return self._process is not None

    async def start(self, *, within: float = 10 * SECOND) -> None:
        """Start on :attr:`port` and return once it accepts commands.

        Raises:
            RuntimeError: the server exited or did not become ready
                ``within`` seconds (its output is attached).
        """
        assert self._process is None, "already running"
        process = await asyncio.create_subprocess_exec(
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            "",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._process = process
        assert process.stdout is not None
        self.output = b""
        try:
            # Redis logs the line once it listens: no polling needed.
            async with asyncio.timeout(within):
                while _READY_LINE not in self.output:
                    line = await process.stdout.readline()
                    if not line:
                        raise RuntimeError("redis-server exited")
                    self.output += line
                await self.ping()
        except (RuntimeError, TimeoutError, OSError) as exc:
            await self.stop()
            raise RuntimeError(
                f"redis-server on port {self.port} did not start: "
                f"{self.output.decode(errors='replace')}"
            ) from exc

    async def ping(self, *, within: float = 2 * SECOND) -> None:
        """Send ``PING`` over a fresh connection and expect ``+PONG``."""
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                writer.write(b"PING\r\n")
                reply = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
        if reply != b"+PONG\r\n":
            raise RuntimeError(f"unexpected PING reply {reply!r}")

    async def stop(self, *, within: float = 5 * SECOND) -> None:
        """Terminate the process (kill it if it lingers); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            # It may have exited already without being reaped yet.
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            async with asyncio.timeout(within):
                rest, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            async with asyncio.timeout(within):
                rest, _ = await process.communicate()
        self.output += rest


@asynccontextmanager
async def running_redis(*, binary: str = REDIS_SERVER) -> AsyncIterator[RedisServer]:
    """A started :class:`RedisServer` on a free port, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="relay-redis-") as directory:
        server: RedisServer | None = None
        for attempt in range(_BIND_ATTEMPTS):
            server = RedisServer(free_port(), Path(directory), binary=binary)
            try:
                await server.start()
            except RuntimeError:
                lost_race = b"Address already in use" in server.output
                if not lost_race or attempt == _BIND_ATTEMPTS - 1:
                    raise
            else:
                break
        assert server is not None
        try:
            yield server
        finally:
            await server.stop()
