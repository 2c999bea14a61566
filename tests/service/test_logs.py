"""Log output of real processes: with ``log.format: json`` every line is one JSON object."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from relay import __version__
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.processes import relay_process
from tests.helpers.timing import SECOND


KEY = "logs-test-client-key"
UPSTREAM_KEY = "logs-test-upstream-key"


def config(*, simulator_port: int, listen_port: int = 0, format: str = "json") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {listen_port}}}
metrics: {{host: 127.0.0.1, port: 0}}
upstream: {{endpoint: http://127.0.0.1:{simulator_port}, auth: {{type: api_key, api_key_env: UPSTREAM_KEY}}}}
deployments: {{gpt-realtime: }}
clients:
  - {{id: app-a, key_sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}
log: {{format: {format}, level: info}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def json_lines(output: list[bytes]) -> list[dict[str, Any]]:
    """Every line of ``output`` parsed; fails on the first line that is not a log object."""
    events = []
    for line in output:
        event = json.loads(line)
        assert isinstance(event, dict), line
        assert {"event", "level", "timestamp"} <= event.keys(), line
        events.append(event)
    return events


async def refuse_next_handshake(simulator_port: int, status: int) -> None:
    """Have the simulator refuse the next upstream handshake with ``status``."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            f"http://127.0.0.1:{simulator_port}/_sim/faults",
            params={"set": json.dumps({"refuse_count": 1, "refuse_status": status})},
        )
    assert answer.status_code == 200, answer.text


async def test_json_run_writes_only_json_lines(tmp_path: Path) -> None:
    """`run --with-simulator`: banner, sessions, warnings, errors and shutdown are all JSON lines."""
    simulator_port = free_port()
    path = tmp_path / "relay.yaml"
    path.write_text(config(simulator_port=simulator_port))
    async with relay_process(
        path, {"UPSTREAM_KEY": UPSTREAM_KEY}, args=["--with-simulator"]
    ) as relay:
        url = f"ws://127.0.0.1:{relay.port}/openai/v1/realtime?model=gpt-realtime"
        async with connect_relay(url, key=KEY) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        # 503 from Azure is logged as a warning, 401 (the relay's own key is
        # refused) as an error.
        for status in (503, 401):
            await refuse_next_handshake(simulator_port, status)
            with pytest.raises(InvalidStatus):
                async with connect_relay(url, key=KEY):
                    pass
        assert await relay.stop() == 0
    assert relay.stdout == []
    events = json_lines(relay.output + relay.stdout)
    by_name = {event["event"]: event for event in events}
    assert by_name["upstream.refused"]["level"] == "warning"
    assert by_name["upstream.auth_rejected"]["level"] == "error"
    assert "session.end" in by_name
    assert "Finished server process" in " ".join(e["event"] for e in events)
    serving = by_name["relay.serving"]
    base = f"ws://127.0.0.1:{relay.port}"
    assert serving == serving | {
        "level": "info",
        "version": __version__,
        "url": base,
        "port": relay.port,
        "health_url": f"http://127.0.0.1:{relay.port}/readyz",
        "metrics_url": f"http://127.0.0.1:{relay.metrics_port}/metrics",
        "metrics_port": relay.metrics_port,
        "preview_url": f"{base}/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime",
        "ga_url": f"{base}/openai/v1/realtime?model=gpt-realtime",
        "upstreams": [f"http://127.0.0.1:{simulator_port}"],
        "simulator": True,
    }
    assert UPSTREAM_KEY.encode() not in b"".join(relay.output)
    assert KEY.encode() not in b"".join(relay.output)


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


@pytest.mark.parametrize("format", ["json", "console"])
async def test_cannot_serve(tmp_path: Path, format: str) -> None:
    """A taken port: exit 1 with one relay.cannot_serve error event (json) or the plain message (console)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = tmp_path / "relay.yaml"
        path.write_text(
            config(
                simulator_port=free_port(),
                listen_port=taken.getsockname()[1],
                format=format,
            )
        )
        status, stdout, stderr = await run_to_exit(
            "-m",
            "relay",
            "run",
            "--config",
            str(path),
            "--with-simulator",
            env={"UPSTREAM_KEY": UPSTREAM_KEY},
        )
    assert status == 1, stderr.decode()
    if format == "console":
        assert b"realtime-relay: cannot serve: " in stderr
        return
    assert stdout == b""
    events = json_lines(stderr.splitlines())
    [failure] = [e for e in events if e["event"] == "relay.cannot_serve"]
    assert failure["level"] == "error"
    assert "address already in use" in failure["error"].lower()


# Each of Python's own reports, then an uncaught exception.
PYTHON_REPORTS = """
import asyncio, sys, threading, warnings
from relay.config import LogSettings
from relay.service.logs import configure_logging

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
