"""Log output of real processes: with ``log.format: json`` every line is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from tests.helpers.timing import SECOND


def json_lines(output: list[bytes]) -> list[dict[str, Any]]:
    """Every line of ``output`` parsed; fails on the first line that is not a log object."""
    events = []
    for line in output:
        event = json.loads(line)
        assert isinstance(event, dict), line
        assert {"event", "level", "timestamp"} <= event.keys(), line
        events.append(event)
    return events


async def run_to_exit(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, bytes, bytes]:
    """Run ``python *args`` to its exit (bounded); status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20 * SECOND):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout, stderr


# Each of Python's own reports, then an uncaught exception.
PYTHON_REPORTS = """
import asyncio, sys, threading, warnings
from relay.config import LogSettings
from relay.logs import configure_logging

configure_logging(LogSettings(format=sys.argv[1]))
warnings.warn("a deprecated knob", UserWarning)

class Finalised:
    def __del__(self):
        raise ValueError("raised in __del__")

Finalised()
worker = threading.Thread(target=lambda: 1 / 0, name="worker")
worker.start()
worker.join()
loop = asyncio.new_event_loop()
loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": OSError("lost")})
loop.close()
raise RuntimeError("the process crashed")
"""


async def test_python_reports_are_json_lines() -> None:
    """Warnings, unraisable, thread and loop exceptions and the final crash: one JSON object each."""
    status, stdout, stderr = await run_to_exit(
        "-W", "default", "-c", PYTHON_REPORTS, "json"
    )
    assert status == 1
    assert stdout == b""
    events = json_lines(stderr.splitlines())
    assert [
        (e.get("logger"), e["event"].split(":")[0], e["level"]) for e in events
    ] == [
        ("py.warnings", "<string>", "warning"),
        ("relay.process", "process.unraisable", "error"),
        ("relay.process", "thread.crashed", "critical"),
        ("asyncio", "Task exception was never retrieved", "error"),
        ("relay.process", "process.crashed", "critical"),
    ]
    warning, unraisable, thread, loop, crash = events
    assert warning["event"].endswith("UserWarning: a deprecated knob")
    assert "ValueError: raised in __del__" in unraisable["exception"]
    assert "Finalised" in unraisable["object"]
    assert thread["thread"] == "worker"
    assert "ZeroDivisionError" in thread["exception"]
    assert "OSError: lost" in loop["exception"]
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert crash["exception"].endswith("RuntimeError: the process crashed")


async def test_python_reports_stay_readable_on_console() -> None:
    """With ``console`` the same reports are human lines with their tracebacks."""
    status, stdout, stderr = await run_to_exit(
        "-W", "default", "-c", PYTHON_REPORTS, "console"
    )
    assert status == 1
    assert stdout == b""
    text = stderr.decode()
    assert "UserWarning: a deprecated knob" in text
    assert "process.crashed" in text
    assert "Traceback (most recent call last):" in text
    assert "RuntimeError: the process crashed" in text
    assert not text.lstrip().startswith("{")
