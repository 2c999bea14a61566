"""relay.service.devtls: the development CA and localhost certificate of ``make run TLS=1``."""

from __future__ import annotations

import datetime
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import TlsSettings
from relay.service.devtls import (
    DEV_HOSTS,
    ensure_dev_tls,
    issue,
    pem_certificate,
    pem_key,
    trust_hints,
)
from relay.service.tls import server_context
from tests.helpers.tls import served_certificate, tls_server


def now() -> datetime.datetime:
    """The current time."""
    return datetime.datetime.now(datetime.UTC)


def test_made_once_then_reused(tmp_path: Path) -> None:
    """The first call makes a CA and a certificate (keys readable by the owner only); the next reuses both."""
    directory = tmp_path / ".dev-tls"
    first = ensure_dev_tls(directory)
    assert first.created
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for key in (first.key_file, directory / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    files = {path: path.read_bytes() for path in directory.iterdir()}
    again = ensure_dev_tls(directory)
    assert not again.created
    assert {path: path.read_bytes() for path in directory.iterdir()} == files


def test_renewed_before_expiry(tmp_path: Path) -> None:
    """A certificate within a day of expiry is reissued by the same CA; a CA within a day is replaced."""
    directory = tmp_path / ".dev-tls"
    made = ensure_dev_tls(directory)
    ca, cert = made.ca_file.read_bytes(), made.cert_file.read_bytes()
    later = ensure_dev_tls(directory, now=now() + datetime.timedelta(days=29, hours=12))
    assert not later.created
    assert made.ca_file.read_bytes() == ca
    assert made.cert_file.read_bytes() != cert
    much_later = ensure_dev_tls(directory, now=now() + datetime.timedelta(days=365))
    assert much_later.created
    assert made.ca_file.read_bytes() != ca


def test_a_broken_directory_is_made_anew(tmp_path: Path) -> None:
    """Unreadable CA files are replaced rather than trusted."""
    directory = tmp_path / ".dev-tls"
    ensure_dev_tls(directory)
    (directory / "ca-key.pem").write_text("garbage")
    assert ensure_dev_tls(directory).created


@pytest.mark.parametrize("host", DEV_HOSTS)
async def test_clients_trusting_the_ca_verify_every_dev_host(
    tmp_path: Path, host: str
) -> None:
    """A client with the CA as its only trust anchor verifies the certificate for localhost, 127.0.0.1 and ::1."""
    made = ensure_dev_tls(tmp_path / ".dev-tls")
    tls = TlsSettings(str(made.cert_file), str(made.key_file))
    context, _ = server_context(tls, source="dev")
    client = ssl.create_default_context(cafile=made.ca_file)
    async with tls_server(context) as port:
        served = await served_certificate(port, client, server_hostname=host)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert len(names.value) == len(DEV_HOSTS)


def test_trust_hints_name_the_ca_file(tmp_path: Path) -> None:
    """Node, Python and curl are each told how to trust the CA."""
    hints = trust_hints(tmp_path / "ca.pem")
    assert [hint.split(":")[0] for hint in hints] == ["Node", "Python", "curl"]
    assert f"NODE_EXTRA_CA_CERTS={tmp_path / 'ca.pem'}" in hints[0]


async def test_the_dev_ca_vouches_for_the_dev_hosts_only(tmp_path: Path) -> None:
    """A certificate the dev CA issues for another name fails verification, even for a client trusting the CA."""
    made = ensure_dev_tls(tmp_path / ".dev-tls")
    ca = x509.load_pem_x509_certificate(made.ca_file.read_bytes())
    key = serialization.load_pem_private_key(
        (tmp_path / ".dev-tls" / "ca-key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    other_key, other = issue(key, ca, ["relay.example.com"], now=now())
    (tmp_path / "other.crt").write_bytes(pem_certificate(other))
    (tmp_path / "other.key").write_bytes(pem_key(other_key))
    tls = TlsSettings(str(tmp_path / "other.crt"), str(tmp_path / "other.key"))
    context, _ = server_context(tls, source="dev")
    client = ssl.create_default_context(cafile=made.ca_file)
    async with tls_server(context) as port:
        with pytest.raises(
            ssl.SSLCertVerificationError, match="permitted subtree violation"
        ):
            await served_certificate(port, client, server_hostname="relay.example.com")
