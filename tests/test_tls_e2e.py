"""TLS on the main listener, end to end: real handshakes on 127.0.0.1 with a CA made per test."""

from __future__ import annotations

from pathlib import Path

from relay.config import ListenSettings
from tests.helpers.clients import connect_relay, receive_event
from tests.helpers.servers import relay_stack
from tests.helpers.tls import SecretMount, TestCa, served_certificate


async def test_a_session_over_tls(tmp_path: Path) -> None:
    """A websockets client trusting the test CA completes a session over wss://."""
    ca = TestCa(tmp_path)
    pair = ca.pair()
    mount = SecretMount(tmp_path / "secret", pair)
    listen = ListenSettings(host="127.0.0.1", port=0, tls=mount.settings())
    async with relay_stack(listen=listen) as stack:
        served = await served_certificate(stack.relay.port, ca.client_context())
        assert served.serial_number == pair.serial
        async with connect_relay(stack.preview_url(), ssl=ca.client_context()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
