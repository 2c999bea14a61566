"""The command line: configuration errors, key hashing, and a real `run` process."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from relay.cli import log_config_warnings, main
from relay.config import parse_settings
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.processes import dev_config, relay_process
from tests.helpers.timing import SECOND


def test_run_without_a_configuration_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No --config and no RELAY_CONFIG: exit 2, say what to do."""
    assert main(["run"], environ={}) == 2
    assert "RELAY_CONFIG" in capsys.readouterr().err


def test_invalid_configuration_exits_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the file and the key; the exit status is 2."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        "upstream: {endpoint: http://127.0.0.1:1, auth: {type: entra}}\ndeployments: {d: }\nclients: [{id: a, key_sha256: nope}]\n"
    )
    assert main(["run", "--config", str(path)], environ={}) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert "clients[0].key_sha256" in err


def test_errors_before_the_configuration_is_loaded_stay_plain_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even with log.format json, a configuration error is one plain `realtime-relay:` line."""
    path = tmp_path / "relay.yaml"
    path.write_text(
        "upstream: {endpoint: http://127.0.0.1:1, auth: {type: entra}}\ndeployments: {d: }\nclients: [{id: a, key_sha256: nope}]\nlog: {format: json}\n"
    )
    assert main(["run", "--config", str(path)], environ={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("realtime-relay: ")
    assert captured.err.count("\n") == 1


def test_with_simulator_needs_a_loopback_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dev simulator only starts on a loopback http endpoint."""
    path = tmp_path / "relay.yaml"
    digest = hashlib.sha256(b"k").hexdigest()
    path.write_text(
        f"upstream: {{endpoint: https://res.openai.azure.com, auth: {{type: entra}}}}\ndeployments: {{d: }}\nclients: [{{id: a, key_sha256: '{digest}'}}]\n"
    )
    assert main(["run", "--config", str(path), "--with-simulator"], environ={}) == 2
    assert "upstream.endpoint" in capsys.readouterr().err


def test_hash_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """hash-key prints the digest to paste into key_sha256."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("my-key\n"))
    assert main(["hash-key"], environ={}) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"my-key").hexdigest()
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["hash-key"], environ={}) == 2


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEV_CONFIG = EXAMPLES / "dev.yaml"


def _idle_policy(deployments: str, client: str = "") -> str:
    key = hashlib.sha256(b"k").hexdigest()
    return (
        "upstream: {endpoint: https://r.openai.azure.com, auth: {type: entra}}\n"
        f"deployments: {deployments}\n"
        f'clients: [{{id: a, key_sha256: "{key}", policy: p{client}}}]\n'
        "policies: {p: {set: {turn_detection: "
        "{type: server_vad, idle_timeout_ms: 6000}}}}\n"
    )


def test_ga_only_policy_values_are_announced() -> None:
    """The start-up log names each GA-only part a policy leaves out of preview sessions."""
    settings = parse_settings(
        _idle_policy("{gpt-realtime: {upstream_protocol: preview}}"),
        source="relay.yaml",
        environ={},
    )
    with capture_logs() as logs:
        log_config_warnings(settings)
    assert logs == [
        {
            "event": "policy.ga_only",
            "log_level": "warning",
            "detail": "relay.yaml: policies.p.set.turn_detection.idle_timeout_ms: "
            "GA only, left out of sessions on preview-protocol deployments",
        }
    ]
    # No preview sessions where every upstream speaks GA (preview clients are
    # bridged), or where the client may not use the preview deployment.
    for deployments, client in (
        ("{gpt-realtime: }", ""),
        (
            "{gpt-realtime: , old: {upstream_protocol: preview}}",
            ", deployments: [gpt-realtime]",
        ),
    ):
        with capture_logs() as logs:
            log_config_warnings(
                parse_settings(
                    _idle_policy(deployments, client), source="r", environ={}
                )
            )
        assert logs == []
    with capture_logs() as logs:
        log_config_warnings(
            parse_settings(
                DEV_CONFIG.read_text(),
                source="dev.yaml",
                environ={"AZURE_OPENAI_API_KEY": "x"},
            )
        )
    assert logs == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_run_with_simulator_serves_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    """`realtime-relay run --with-simulator` serves sessions, then exits 0 on SIGTERM."""
    relay_port, metrics_port, simulator_port = _free_port(), _free_port(), _free_port()
    text = DEV_CONFIG.read_text()
    for old, new in (
        ("8080", str(relay_port)),
        ("9464", str(metrics_port)),
        ("9000", str(simulator_port)),
    ):
        text = text.replace(old, new)
    path = tmp_path / "dev.yaml"
    path.write_text(text)
    env = {**os.environ, "AZURE_OPENAI_API_KEY": "dev-upstream-key"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "run",
        "--config",
        str(path),
        "--with-simulator",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        banner = b""
        async with asyncio.timeout(20 * SECOND):
            # log.format console: the human banner ends with the SDK snippet.
            while b".beta.realtime.connect(" not in banner:
                line = await process.stderr.readline()
                assert line, banner.decode()
                banner += line
        base = f"ws://127.0.0.1:{relay_port}"
        for banner_line in (
            f"is serving on {base} (upstream: the built-in simulator at http://127.0.0.1:{simulator_port})",
            f"  health:  http://127.0.0.1:{relay_port}/readyz    metrics: http://127.0.0.1:{metrics_port}/metrics",
            f"  preview: {base}/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview",
            f"  GA:      {base}/openai/v1/realtime?model=gpt-4o-realtime-preview",
            "  authenticate with the header `api-key: <client key>`",
        ):
            assert banner_line in banner.decode()
        assert b'"relay.serving"' not in banner
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"http://127.0.0.1:{relay_port}/readyz")
            assert ready.status_code == 200
        url = f"ws://127.0.0.1:{relay_port}/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"
        async with connect_relay(url, key="relay-dev-key") as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        # The README's drop-in clients, run as users run them.
        for example, expected in (
            ("openai_sdk_client.py", b"received 1.00 s of audio"),
            ("websockets_client.py", b"usage:"),
        ):
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLES / example),
                env={
                    **env,
                    "RELAY_URL": f"127.0.0.1:{relay_port}",
                    "RELAY_KEY": "relay-dev-key",
                },
                stdout=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(30 * SECOND):
                stdout, _ = await client.communicate()
            assert client.returncode == 0, stdout.decode()
            assert stdout.startswith(b"<- session.created")
            assert expected in stdout
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15 * SECOND):
            output = await process.stderr.read()
            assert await process.wait() == 0, output.decode()
        assert b"dev-upstream-key" not in banner + output
        assert b"relay-dev-key" not in output
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_dev_tls_needs_a_loopback_listener(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dev-tls refuses a listener its localhost certificate cannot name, and writes nothing."""
    path = tmp_path / "dev.yaml"
    path.write_text(DEV_CONFIG.read_text().replace("host: 127.0.0.1", "host: 0.0.0.0"))
    directory = tmp_path / ".dev-tls"
    env = {"AZURE_OPENAI_API_KEY": "k"}
    assert main(["run", "--config", str(path), "--dev-tls", str(directory)], env) == 2
    assert "listen.host: expected a loopback address with --dev-tls" in (
        capsys.readouterr().err
    )
    assert not directory.exists()


def test_unusable_tls_files_exit_before_listening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listen.tls file that does not load is a configuration error (exit 2) naming the key."""
    path = tmp_path / "relay.yaml"
    missing = tmp_path / "absent.crt"
    path.write_text(
        DEV_CONFIG.read_text().replace(
            "listen: {host: 127.0.0.1, port: 8080}",
            f"listen: {{host: 127.0.0.1, port: 8080, tls: {{cert_file: {missing},"
            f" key_file: {missing}}}}}",
        )
    )
    env = {"AZURE_OPENAI_API_KEY": "k"}
    assert main(["run", "--config", str(path)], env) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"realtime-relay: {path}: listen.tls.cert_file: cannot read")


async def test_run_with_dev_tls_serves_wss_and_says_how_to_trust_it(
    tmp_path: Path,
) -> None:
    """`make run TLS=1`: a dev CA is made, wss:// sessions and https:// health work with it, and the banner says how to trust it."""
    config = dev_config(tmp_path)
    relay_port, metrics_port = config.port, config.metrics_port
    directory = tmp_path / ".dev-tls"
    env = {"AZURE_OPENAI_API_KEY": "dev-upstream-key"}
    args = ["--with-simulator", "--dev-tls", str(directory)]
    async with relay_process(config.path, env, args=args) as relay:
        ca_file = directory / "ca.pem"
        async with relay.printed:
            await relay.printed.wait_for(
                lambda: b"curl --cacert" in b"".join(relay.output)
            )
        banner = b"".join(relay.output).decode()
        assert f"is serving on wss://127.0.0.1:{relay_port}" in banner
        assert f"health:  https://127.0.0.1:{relay_port}/readyz" in banner
        assert f"NODE_EXTRA_CA_CERTS={ca_file}" in banner
        trusted = ssl.create_default_context(cafile=ca_file)
        async with httpx.AsyncClient(verify=trusted) as http:
            ready = await http.get(f"https://localhost:{relay_port}/readyz")
            assert ready.status_code == 200
        async with httpx.AsyncClient() as http:
            # Plain HTTP to the TLS port gets no HTTP answer (uvloop's TLS here).
            with pytest.raises(httpx.TransportError):
                await http.get(f"http://127.0.0.1:{relay_port}/readyz")
            scrape = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert "relay_tls_certificate_expiry_timestamp_seconds " in scrape.text
        url = f"wss://127.0.0.1:{relay_port}/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview"
        async with connect_relay(url, key="relay-dev-key", ssl=trusted) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        assert await relay.stop() == 0
