"""A real Node client: the `openai` SDK's OpenAIRealtimeWS.azure() over wss:// to the relay's TLS listener.

The Node SDK always opens ``wss://``: it reaches the relay only through TLS.
The relay runs as `make run TLS=1` runs it (examples/dev.yaml, the built-in
simulator, a development CA), under the dev policy that denies client tools
and forces noise reduction; the client trusts the CA through
``NODE_EXTRA_CA_CERTS`` alone. ``make test`` installs the SDK from
tests/node/package-lock.json (``npm ci``); without ``node`` on the machine the
test is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.processes import DevConfig, dev_config, relay_process
from tests.helpers.timing import SECOND


NODE_DIR = Path(__file__).resolve().parent / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


async def run_node(script: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run ``node script`` in tests/node; its exit status, stdout and stderr."""
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        script,
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(40 * SECOND):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout, stderr


@contextlib.asynccontextmanager
async def dev_relay(
    tmp_path: Path, api_version: str
) -> AsyncIterator[tuple[DevConfig, dict[str, str]]]:
    """The relay as `make run TLS=1` runs it, and the script's environment
    (without the CA: ``ca.pem`` is in the config's ``.dev-tls``)."""
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), (
        "the Node SDK is not installed: run `make test` (npm ci in tests/node)"
    )
    config = dev_config(tmp_path)
    args = ["--with-simulator", "--dev-tls", str(tmp_path / ".dev-tls")]
    async with relay_process(
        config.path, {"AZURE_OPENAI_API_KEY": "dev-upstream-key"}, args=args
    ):
        yield (
            config,
            {
                "RELAY_ENDPOINT": f"https://127.0.0.1:{config.port}",
                "RELAY_KEY": "relay-dev-key",
                "RELAY_DEPLOYMENT": "gpt-realtime",
                "RELAY_API_VERSION": api_version,
            },
        )


async def test_node_openai_sdk_completes_a_turn_over_wss(tmp_path: Path) -> None:
    """OpenAIRealtimeWS.azure() completes a voice turn over wss://, trusting the dev CA by NODE_EXTRA_CA_CERTS; the policy's noise reduction is in force."""
    directory = tmp_path / ".dev-tls"
    async with dev_relay(tmp_path, "2025-08-28") as (config, env):
        # Without the CA, Node refuses the relay's certificate.
        status, _stdout, stderr = await run_node("realtime_turn.mjs", env)
        assert status == 1
        assert b"certificate" in stderr
        trusted = {**env, "NODE_EXTRA_CA_CERTS": str(directory / "ca.pem")}
        status, stdout, stderr = await run_node("realtime_turn.mjs", trusted)
        assert status == 0, stderr.decode(errors="replace")
    result = json.loads(stdout)
    assert result["url"].startswith(f"wss://127.0.0.1:{config.port}/openai/realtime?")
    events = result["events"]
    assert events[0] == "session.created"
    assert "response.output_audio.delta" in events
    assert events[-1] == "response.done"
    # The dev policy's `set` (near_field) holds whatever the app sent.
    session = result["session"]
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["output"]["voice"] == "alloy"
    assert session["tools"] == []


async def test_node_beta_client_is_bridged_to_the_ga_upstream(tmp_path: Path) -> None:
    """The Node SDK's beta (preview) client on a preview api-version: bridged to GA, it reads preview events."""
    async with dev_relay(tmp_path, "2025-04-01-preview") as (config, env):
        env["NODE_EXTRA_CA_CERTS"] = str(tmp_path / ".dev-tls" / "ca.pem")
        status, stdout, stderr = await run_node("realtime_turn.mjs", env)
        assert status == 0, stderr.decode(errors="replace")
        async with httpx.AsyncClient(timeout=10 * SECOND) as http:
            metrics = (
                await http.get(f"http://127.0.0.1:{config.metrics_port}/metrics")
            ).text
    # Translated: a preview client on the GA upstream.
    assert (
        'relay_session_protocols_total{client="dev",client_protocol="preview",'
        'deployment="gpt-realtime",upstream_protocol="ga"} 1.0'
    ) in metrics
    result = json.loads(stdout)
    assert "api-version=2025-04-01-preview" in result["url"]
    events = result["events"]
    assert events[0] == "session.created"
    assert "response.audio.delta" in events
    assert "response.output_audio.delta" not in events
    assert "conversation.item.done" not in events
    assert events[-1] == "response.done"
    session = result["session"]
    assert session["input_audio_noise_reduction"] == {"type": "near_field"}
    assert (session["voice"], session["tools"]) == ("alloy", [])
