"""TLS on the main listener, end to end: real handshakes on 127.0.0.1 with a CA made per test.

Clients are real: the ``websockets`` client, the ``openai`` SDK, raw sockets for
what no client would send. Certificates are rotated the way cert-manager and
the kubelet do it (:class:`~tests.helpers.tls.SecretMount`), while a session is
live.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncAzureOpenAI
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidMessage

from relay.config import LimitsSettings, ListenSettings, TlsSettings
from relay.simulator.audio import speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.servers import (
    CLIENT_KEY,
    GA_DEPLOYMENT,
    GA_VERSION,
    Stack,
    relay_stack,
)
from tests.helpers.timing import SECOND, within
from tests.helpers.tls import SecretMount, TestCa, served_certificate


SPEECH = speech_like_pcm16(0.2)


@asynccontextmanager
async def tls_stack(
    tls: TlsSettings, *, header_timeout: float = 10.0
) -> AsyncIterator[Stack]:
    """A simulator and a relay whose main listener speaks TLS with ``tls``."""
    listen = ListenSettings(host="127.0.0.1", port=0, tls=tls)
    async with relay_stack(
        listen=listen, limits=LimitsSettings(header_timeout=header_timeout)
    ) as stack:
        yield stack


async def one_turn(ws: ClientConnection) -> None:
    """Audio in, a response out: the session is alive and relaying both ways."""
    await send_event(ws, append_event(SPEECH))
    await send_event(ws, {"type": "input_audio_buffer.commit"})
    await send_event(ws, {"type": "response.create"})
    await events_until(ws, "response.done")


def sample(stack: Stack, name: str, **labels: str) -> float | None:
    """A sample of the relay's registry."""
    return stack.registry.get_sample_value(name, labels)


async def next_reload(stack: Stack) -> str:
    """The result of the relay's next check of its certificate files."""
    tls = stack.relay.tls
    assert tls is not None
    async with asyncio.timeout(within(tls.settings.reload_interval)):
        return await tls.next_check()


async def test_websockets_client_session_and_https_health(tmp_path: Path) -> None:
    """wss:// sessions and https:// health with the configured certificate; plain clients cannot."""
    ca = TestCa(tmp_path)
    pair = ca.pair()
    mount = SecretMount(tmp_path / "secret", pair)
    async with tls_stack(mount.settings()) as stack:
        assert stack.ws.startswith("wss://")
        served = await served_certificate(stack.relay.port, ca.client_context())
        assert served.serial_number == pair.serial
        async with connect_relay(stack.preview_url(), ssl=ca.client_context()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
            await one_turn(ws)
        base = f"127.0.0.1:{stack.relay.port}"
        async with httpx.AsyncClient(verify=ca.client_context()) as http:
            ready = await http.get(f"https://{base}/readyz")
            assert ready.status_code == 200
        # A client that does not trust the CA gets no session.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with connect_relay(
                stack.preview_url(), ssl=ssl.create_default_context()
            ):
                pass
        # Metrics stay plain HTTP on their own port, with the certificate's expiry.
        async with httpx.AsyncClient() as http:
            scraped = await http.get(
                f"http://127.0.0.1:{stack.relay.metrics_port}/metrics"
            )
        assert "relay_tls_certificate_expiry_timestamp_seconds" in scraped.text
        assert stack.relay.tls is not None
        assert sample(
            stack, "relay_tls_certificate_expiry_timestamp_seconds"
        ) == pytest.approx(stack.relay.tls.certificate.not_after)
        await stack.settle()


async def test_openai_sdk_completes_a_turn_over_wss(tmp_path: Path) -> None:
    """`AsyncAzureOpenAI(websocket_base_url="wss://...")` trusting the test CA completes a GA turn."""
    ca = TestCa(tmp_path)
    mount = SecretMount(tmp_path / "secret", ca.pair())
    async with tls_stack(mount.settings()) as stack:
        client = AsyncAzureOpenAI(
            azure_endpoint=f"https://127.0.0.1:{stack.relay.port}",
            api_key=CLIENT_KEY,
            api_version=GA_VERSION,
            websocket_base_url=f"{stack.ws}/openai",
        )
        options: Any = {"ssl": ca.client_context()}  # passed on to websockets' connect
        async with client.realtime.connect(
            model=GA_DEPLOYMENT, websocket_connection_options=options
        ) as connection:
            assert (await connection.recv()).type == "session.created"
            await connection.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": None}},
                }
            )
            await connection.input_audio_buffer.append(
                audio=base64.b64encode(SPEECH).decode()
            )
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            types: list[str] = []
            async with asyncio.timeout(10 * SECOND):
                async for event in connection:
                    types.append(event.type)
                    if event.type == "response.done":
                        break
            assert "response.output_audio.delta" in types
        await client.close()
        await stack.settle()


async def test_rotation_keeps_live_sessions_and_serves_the_new_certificate(
    tmp_path: Path,
) -> None:
    """A Secret update mid-session: the session goes on, new handshakes get the new serial."""
    ca = TestCa(tmp_path)
    old, new = ca.pair(), ca.pair()
    mount = SecretMount(tmp_path / "secret", old)
    async with tls_stack(mount.settings(reload_interval=1.0)) as stack:
        trusted = ca.client_context()
        async with connect_relay(stack.preview_url(), ssl=trusted) as live:
            assert (await receive_event(live))["type"] == "session.created"
            mount.write(new)
            while (result := await next_reload(stack)) == "unchanged":
                pass
            assert result == "success"
            served = await served_certificate(stack.relay.port, trusted)
            assert served.serial_number == new.serial
            # The session accepted under the old certificate still relays.
            await one_turn(live)
            # So does one started under the new one.
            async with connect_relay(stack.preview_url(), ssl=trusted) as fresh:
                assert (await receive_event(fresh))["type"] == "session.created"
                await one_turn(fresh)
        assert sample(stack, "relay_tls_reloads_total", result="success") == 1
        assert sample(stack, "relay_tls_reloads_total", result="failure") == 0
        assert stack.relay.tls is not None
        assert stack.relay.tls.certificate.serial == new.serial
        assert sample(
            stack, "relay_tls_certificate_expiry_timestamp_seconds"
        ) == pytest.approx(stack.relay.tls.certificate.not_after)
        await stack.settle()


async def test_a_broken_pair_keeps_the_old_one(tmp_path: Path) -> None:
    """A new certificate with another certificate's key is refused and counted; the old pair serves until a good one comes."""
    ca = TestCa(tmp_path)
    old, new, other = ca.pair(), ca.pair(), ca.pair()
    mount = SecretMount(tmp_path / "secret", old)
    async with tls_stack(mount.settings(reload_interval=1.0)) as stack:
        trusted = ca.client_context()
        mount.write_raw(new.certificate, other.key)
        while (result := await next_reload(stack)) == "unchanged":
            pass
        assert result == "failure"
        assert (await served_certificate(stack.relay.port, trusted)).serial_number == (
            old.serial
        )
        async with connect_relay(stack.preview_url(), ssl=trusted) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        assert sample(stack, "relay_tls_reloads_total", result="failure") == 1
        # A broken pair is tried once, not at every check.
        assert await next_reload(stack) == "unchanged"
        mount.write(new)
        while (result := await next_reload(stack)) == "unchanged":
            pass
        assert result == "success"
        assert (await served_certificate(stack.relay.port, trusted)).serial_number == (
            new.serial
        )
        await stack.settle()


async def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    """With client_ca_file, a client without a certificate (or with one of another CA) gets no session; one with a certificate does, still authenticated by key."""
    server_ca = TestCa(tmp_path, "server CA")
    client_ca = TestCa(tmp_path, "client CA")
    stranger_ca = TestCa(tmp_path, "stranger CA")
    mount = SecretMount(tmp_path / "secret", server_ca.pair())
    tls = mount.settings(client_ca_file=str(client_ca.ca_file))
    async with tls_stack(tls) as stack:
        port = stack.relay.port
        for client in (None, stranger_ca.pair(client=True)):
            context = server_ca.client_context(client)
            assert await asyncio.to_thread(tls_answer, port, context) == b""
            with pytest.raises(InvalidMessage):  # the upgrade's response never comes
                async with connect_relay(stack.preview_url(), ssl=context):
                    pass
        with_certificate = server_ca.client_context(client_ca.pair(client=True))
        answer = await asyncio.to_thread(tls_answer, port, with_certificate)
        assert answer.startswith(b"HTTP/1.1 200 ")
        async with connect_relay(stack.preview_url(), ssl=with_certificate) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        # The client certificate does not replace the relay's key.
        with pytest.raises(Exception, match="401"):
            async with connect_relay(
                stack.preview_url(), ssl=with_certificate, key="not-a-key"
            ):
                pass
        # Kubernetes probes present no certificate: health is on the metrics port too.
        async with httpx.AsyncClient() as http:
            metrics = f"http://127.0.0.1:{stack.relay.metrics_port}"
            assert (await http.get(f"{metrics}/livez")).status_code == 200
            assert (await http.get(f"{metrics}/readyz")).status_code == 200
        await stack.settle()


def tls_answer(port: int, context: ssl.SSLContext) -> bytes:
    """What a blocking TLS client's request to ``port`` gets back (run it in a thread).

    TLS 1.3 clients learn that their certificate was refused at their first
    read, not from the handshake: here as an end of stream or a TLS error
    (asyncio closes without sending OpenSSL's alert), which reads as ``b""``.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10 * SECOND) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /livez HTTP/1.1\r\nHost: relay\r\n\r\n")
        try:
            return tls.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return b""


async def refused_quickly(port: int, payload: bytes) -> bytes:
    """Send ``payload`` to the TLS port; what comes back before the relay closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        async with asyncio.timeout(10 * SECOND):
            received = b""
            while chunk := await reader.read(65536):
                received += chunk
        return received
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_garbage_on_the_tls_port_is_refused_and_harms_no_session(
    tmp_path: Path,
) -> None:
    """Plain HTTP, random bytes and a truncated ClientHello each get a closed connection, while a live session relays on."""
    ca = TestCa(tmp_path)
    mount = SecretMount(tmp_path / "secret", ca.pair())
    header_timeout = 1.0
    async with tls_stack(mount.settings(), header_timeout=header_timeout) as stack:
        port = stack.relay.port
        async with connect_relay(stack.preview_url(), ssl=ca.client_context()) as live:
            assert (await receive_event(live))["type"] == "session.created"
            plain = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
            noise = random.Random(15).randbytes(4096)
            # No HTTP answer on the TLS port: at most a TLS alert record (0x15).
            for payload in (plain, noise):
                answer = await refused_quickly(port, payload)
                assert answer == b"" or answer[0] == 0x15, answer[:20]
            await one_turn(live)
            # A ClientHello that never completes is closed at header_timeout.
            started = time.monotonic()
            answer = await refused_quickly(port, b"\x16\x03\x01\x02\x00\x01\x00")
            assert answer == b""
            assert time.monotonic() - started < within(header_timeout)
            await one_turn(live)
        async with connect_relay(stack.preview_url(), ssl=ca.client_context()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
        await stack.settle()
