"""Child processes of the benchmark: start them pinned to a core, read their CPU and memory.

Shared by the throughput benchmark (``run.py``) and the isolation benchmark
(``isolation.py``). Linux only: CPU and memory come from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children still alive (nginx workers)."""
    total = 0.0
    for target in [pid, *children(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{target}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(FileNotFoundError):
        return [int(child) for child in path.read_text().split()]
    return []


def rss_kib(pid: int) -> int:
    total = 0
    for target in [pid, *children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{target}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def wait_port(port: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.02)  # polling a child process's listener
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(
    args: list[str],
    *,
    cpu: str,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` pinned to ``cpu``; stop it (SIGTERM, then SIGKILL) afterwards."""
    output = log.open("wb") if log else subprocess.DEVNULL
    child = subprocess.Popen(
        ["taskset", "-c", cpu, *args],
        env={**os.environ, **(env or {})},
        stdout=output,
        stderr=output,
        cwd=cwd,
    )
    try:
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if log:
            output.close()  # type: ignore[union-attr]
