"""A local CA and a ``localhost`` certificate for ``make run TLS=1`` (development only).

:func:`ensure_dev_tls` keeps, in one directory (``.dev-tls/``, git-ignored):

* ``ca.pem`` / ``ca-key.pem``: a CA made on this machine, valid a year, and
  name-constrained to those names: trusting it vouches for nothing else;
* ``cert.pem`` / ``key.pem``: a certificate it issued for ``localhost``,
  ``127.0.0.1`` and ``::1``, valid 30 days.

Existing files are reused while they are valid for at least another day, so a
client told to trust ``ca.pem`` keeps trusting the relay across restarts; a CA
close to expiry is replaced with its certificate. The keys never leave the
directory, which only its owner can read. Nothing is installed in any trust
store: :func:`trust_hints` says how each client can be told to trust the CA.

:func:`new_ca` and :func:`issue` are the primitives (the tests make their
CAs with them too).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


__all__ = [
    "DEV_HOSTS",
    "DevTls",
    "ensure_dev_tls",
    "issue",
    "new_ca",
    "pem_certificate",
    "pem_key",
    "trust_hints",
]

DEV_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 365
CERT_DAYS = 30
RENEW_BEFORE = datetime.timedelta(days=1)
# Clocks of a VM or container may lag the host's a little.
BACKDATE = datetime.timedelta(minutes=5)

Key = ec.EllipticCurvePrivateKey


def new_ca(
    common_name: str,
    *,
    now: datetime.datetime,
    days: int = CA_DAYS,
    only_for: Sequence[str] = (),
) -> tuple[Key, x509.Certificate]:
    """A self-signed CA (P-256) that may issue end-entity certificates only.

    ``only_for`` (host names and IP addresses) name-constrains it: verifiers
    refuse any certificate it issues for another name, so the key of a CA
    someone trusted for ``localhost`` cannot vouch for anything else.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = x509.CertificateBuilder()
    if only_for:
        permitted: list[x509.GeneralName] = []
        for host in only_for:
            try:
                permitted.append(x509.IPAddress(ipaddress.ip_network(host)))
            except ValueError:
                permitted.append(x509.DNSName(host))
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
            critical=True,
        )
    certificate = (
        builder.subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue(
    ca_key: Key,
    ca: x509.Certificate,
    hosts: Sequence[str],
    *,
    now: datetime.datetime,
    days: int = CERT_DAYS,
    serial: int | None = None,
    client: bool = False,
) -> tuple[Key, x509.Certificate]:
    """A P-256 certificate from ``ca`` for ``hosts`` (DNS names or IP addresses).

    ``client`` makes a client certificate (for mutual TLS) instead of a server one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = (
        ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def pem_certificate(certificate: x509.Certificate) -> bytes:
    """The certificate in PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def pem_key(key: Key) -> bytes:
    """The private key in unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class DevTls:
    """The files of the development CA and certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    created: bool
    """Whether a new CA was made (clients must be told to trust it again)."""


def ensure_dev_tls(directory: Path, *, now: datetime.datetime | None = None) -> DevTls:
    """The development CA and ``localhost`` certificate in ``directory``, made if needed.

    Raises:
        OSError: the directory or its files cannot be written.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file, ca_key_file = directory / "ca.pem", directory / "ca-key.pem"
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    ca, ca_key = _load_ca(ca_file, ca_key_file, now)
    created = ca is None or ca_key is None
    if ca is None or ca_key is None:
        ca_key, ca = new_ca(
            "Realtime Relay development CA", now=now, only_for=DEV_HOSTS
        )
        _write(ca_key_file, pem_key(ca_key), private=True)
        _write(ca_file, pem_certificate(ca), private=False)
    if created or not _still_valid(cert_file, ca, now):
        key, certificate = issue(ca_key, ca, DEV_HOSTS, now=now)
        _write(key_file, pem_key(key), private=True)
        _write(cert_file, pem_certificate(certificate), private=False)
    return DevTls(ca_file, cert_file, key_file, created)


def trust_hints(ca_file: Path) -> list[str]:
    """How each kind of client can be told to trust ``ca_file``, one line each."""
    return [
        f"Node:    NODE_EXTRA_CA_CERTS={ca_file} node app.js",
        f"Python:  ssl.create_default_context(cafile={str(ca_file)!r}), or "
        f"SSL_CERT_FILE={ca_file} (replaces the system CAs for that process)",
        f"curl:    curl --cacert {ca_file} https://localhost:<port>/readyz",
    ]


def _load_ca(
    ca_file: Path, key_file: Path, now: datetime.datetime
) -> tuple[x509.Certificate | None, Key | None]:
    try:
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError):
        return None, None
    if (
        not isinstance(key, ec.EllipticCurvePrivateKey)
        or ca.not_valid_after_utc < now + RENEW_BEFORE
    ):
        return None, None
    return ca, key


def _still_valid(cert_file: Path, ca: x509.Certificate, now: datetime.datetime) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    return (
        certificate.issuer == ca.subject
        and certificate.not_valid_after_utc >= now + RENEW_BEFORE
        and _signed_by(certificate, ca)
    )


def _signed_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write(path: Path, data: bytes, *, private: bool) -> None:
    # Written beside and renamed, so a relay watching the files never reads half of one.
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644
    )
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)
