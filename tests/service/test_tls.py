"""relay.service.tls: the server context's settings, its errors, and reloading as the files change.

Handshakes are real (a TLS server on 127.0.0.1 port 0 with the listener's
context); files are laid out as the kubelet mounts a Secret.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import TlsSettings
from relay.exceptions import ConfigError
from relay.service.tls import ListenerTls, server_context
from tests.helpers.timing import SECOND
from tests.helpers.tls import SecretMount, TestCa, served_certificate, tls_server


def settings(mount: SecretMount, **changes: object) -> TlsSettings:
    """``listen.tls`` for ``mount``."""
    return mount.settings(**changes)


class TestServerContext:
    """server_context: secure defaults, and errors that name the key."""

    def test_defaults(self, tmp_path: Path) -> None:
        """TLS 1.2+, no compression or renegotiation, server order, no client certificates."""
        ca = TestCa(tmp_path)
        mount = SecretMount(tmp_path / "secret", ca.pair())
        context, certificate = server_context(settings(mount), source="relay.yaml")
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        for option in (
            ssl.OP_NO_COMPRESSION,
            ssl.OP_NO_RENEGOTIATION,
            ssl.OP_CIPHER_SERVER_PREFERENCE,
        ):
            assert context.options & option
        assert context.verify_mode == ssl.CERT_NONE
        assert certificate.subject == "CN=localhost"

    def test_client_ca_requires_client_certificates(self, tmp_path: Path) -> None:
        """client_ca_file turns on required, verified client certificates."""
        ca = TestCa(tmp_path)
        mount = SecretMount(tmp_path / "secret", ca.pair())
        tls = settings(mount, client_ca_file=str(ca.ca_file))
        context, _ = server_context(tls, source="relay.yaml")
        assert context.verify_mode == ssl.CERT_REQUIRED

    async def test_alpn_is_http11_only(self, tmp_path: Path) -> None:
        """A client offering h2 and http/1.1 gets http/1.1 (WebSocket upgrades are HTTP/1.1)."""
        ca = TestCa(tmp_path)
        mount = SecretMount(tmp_path / "secret", ca.pair())
        context, _ = server_context(settings(mount), source="relay.yaml")
        async with tls_server(context) as port:
            client = ca.client_context()
            client.set_alpn_protocols(["h2", "http/1.1"])
            async with asyncio.timeout(10 * SECOND):
                _reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client
                )
                assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == (
                    "http/1.1"
                )
                writer.close()

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ("missing_cert", "listen.tls.cert_file: cannot read"),
            ("not_pem", "listen.tls.cert_file: '{cert}' holds no PEM certificate"),
            ("missing_key", "listen.tls.key_file: cannot read"),
            ("other_key", "listen.tls.key_file: '{key}' is not the private key of"),
            ("garbled_key", "listen.tls.key_file: cannot load '{key}'"),
            ("encrypted_key", "listen.tls.key_file: '{key}' is encrypted"),
            ("bad_client_ca", "listen.tls.client_ca_file: cannot load"),
            ("missing_client_ca", "listen.tls.client_ca_file: cannot read"),
        ],
    )
    def test_errors_name_the_key_and_the_file(
        self, tmp_path: Path, change: str, message: str
    ) -> None:
        """Every unusable file is a ConfigError naming the source, the key and the file."""
        ca = TestCa(tmp_path)
        pair = ca.pair()
        cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        cert.write_bytes(pair.certificate)
        key.write_bytes(pair.key)
        client_ca: str | None = None
        if change == "missing_cert":
            cert.unlink()
        elif change == "not_pem":
            cert.write_text("hello")
        elif change == "missing_key":
            key.unlink()
        elif change == "other_key":
            key.write_bytes(ca.pair().key)
        elif change == "garbled_key":
            key.write_text(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
        elif change == "encrypted_key":
            loaded = serialization.load_pem_private_key(pair.key, password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            key.write_bytes(
                loaded.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        elif change == "bad_client_ca":
            client_ca = str(tmp_path / "ca.pem")
            (tmp_path / "ca.pem").write_text("not a CA")
        else:
            client_ca = str(tmp_path / "absent.pem")
        tls = TlsSettings(str(cert), str(key), client_ca_file=client_ca)
        with pytest.raises(ConfigError) as raised:
            server_context(tls, source="relay.yaml")
        expected = "relay.yaml: " + message.format(cert=cert, key=key)
        assert str(raised.value).startswith(expected), str(raised.value)


class TestListenerTls:
    """ListenerTls.reload: new handshakes follow the files, a broken pair is kept out."""

    async def test_reload_follows_a_secret_update(self, tmp_path: Path) -> None:
        """Unchanged files: nothing; a new ..data: the new pair, on the same listening context."""
        ca = TestCa(tmp_path)
        old, new = ca.pair(), ca.pair()
        mount = SecretMount(tmp_path / "secret", old)
        tls = ListenerTls(settings(mount), source="relay.yaml")
        async with tls_server(tls.context) as port:
            client = ca.client_context()
            assert tls.reload() == "unchanged"
            assert (await served_certificate(port, client)).serial_number == old.serial
            mount.write(new)
            assert tls.reload() == "success"
            assert tls.reload() == "unchanged"
            assert tls.certificate.serial == new.serial
            assert tls.reloads == 1
            # With and without SNI (an IP address sends none).
            for name in (None, "localhost"):
                served = await served_certificate(port, client, server_hostname=name)
                assert served.serial_number == new.serial

    async def test_a_broken_pair_is_tried_once_and_the_old_one_kept(
        self, tmp_path: Path
    ) -> None:
        """A key of another certificate: failure, the old pair still served, no retry until the files change."""
        ca = TestCa(tmp_path)
        old, new, other = ca.pair(), ca.pair(), ca.pair()
        mount = SecretMount(tmp_path / "secret", old)
        tls = ListenerTls(settings(mount), source="relay.yaml")
        async with tls_server(tls.context) as port:
            mount.write_raw(new.certificate, other.key)
            assert tls.reload() == "failure"
            assert tls.reload() == "unchanged"
            assert tls.certificate.serial == old.serial
            served = await served_certificate(port, ca.client_context())
            assert served.serial_number == old.serial
            mount.write_raw(b"", b"")  # a half-written update
            assert tls.reload() == "failure"
            mount.write(new)
            assert tls.reload() == "success"

    def test_a_bad_pair_at_start_is_a_config_error(self, tmp_path: Path) -> None:
        """Nothing listens with files that do not load."""
        ca = TestCa(tmp_path)
        mount = SecretMount(tmp_path / "secret", ca.pair())
        mount.write_raw(ca.pair().certificate, ca.pair().key)
        with pytest.raises(ConfigError, match=r"listen\.tls\.key_file"):
            ListenerTls(settings(mount), source="relay.yaml")

    async def test_watch_reports_each_check(self, tmp_path: Path) -> None:
        """The watcher checks every reload_interval and tells its callback each result."""
        ca = TestCa(tmp_path)
        mount = SecretMount(tmp_path / "secret", ca.pair())
        tls = ListenerTls(settings(mount, reload_interval=1.0), source="relay.yaml")
        seen: list[str] = []
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(
                tls.watch(lambda _tls, result: seen.append(result))
            )
            async with asyncio.timeout(10 * SECOND):
                assert await tls.next_check() == "unchanged"
                mount.write(ca.pair())
                while await tls.next_check() == "unchanged":
                    pass
            watching.cancel()
        assert seen[-1] == "success"
        assert set(seen[:-1]) == {"unchanged"}
