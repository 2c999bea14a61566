"""Test CAs, certificate files as Kubernetes mounts them, and TLS clients that trust them."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from relay.config import TlsSettings
from relay.service.devtls import Key, issue, new_ca, pem_certificate, pem_key
from tests.helpers.timing import SECOND


HOSTS = ("localhost", "127.0.0.1")


def now() -> datetime.datetime:
    """The current time, as certificates want it."""
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, in PEM."""

    certificate: bytes
    key: bytes
    serial: int


class TestCa:
    """A CA made for one test; ``ca_file`` is its certificate on disk."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, directory: Path, name: str = "relay test CA") -> None:
        self.directory = directory
        self.key: Key
        self.key, self.certificate = new_ca(name, now=now(), days=2)
        self.ca_file = directory / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(pem_certificate(self.certificate))

    def pair(
        self,
        *,
        serial: int | None = None,
        hosts: tuple[str, ...] = HOSTS,
        days: int = 1,
        client: bool = False,
    ) -> Pair:
        """A new certificate (with a new key) from this CA."""
        key, certificate = issue(
            self.key,
            self.certificate,
            hosts,
            now=now(),
            days=days,
            serial=serial,
            client=client,
        )
        return Pair(
            pem_certificate(certificate), pem_key(key), certificate.serial_number
        )

    def client_context(self, client: Pair | None = None) -> ssl.SSLContext:
        """A client context trusting this CA only, presenting ``client`` when given."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if client is not None:
            files = self.directory / f"client-{client.serial}"
            files.mkdir(exist_ok=True)
            (files / "cert.pem").write_bytes(client.certificate)
            (files / "key.pem").write_bytes(client.key)
            context.load_cert_chain(files / "cert.pem", files / "key.pem")
        return context


class SecretMount:
    """Files laid out as the kubelet mounts a ``kubernetes.io/tls`` Secret.

    ``tls.crt`` and ``tls.key`` are symlinks into ``..data``, itself a symlink
    to a timestamped directory; :meth:`write` replaces ``..data`` atomically
    (a rename over it), as the kubelet does when cert-manager renews.
    """

    _versions = itertools.count()

    def __init__(self, directory: Path, pair: Pair) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.write(pair)
        for name in ("tls.crt", "tls.key"):
            (directory / name).symlink_to(Path("..data") / name)

    @property
    def cert_file(self) -> Path:
        """The certificate's path, as configured."""
        return self.directory / "tls.crt"

    @property
    def key_file(self) -> Path:
        """The key's path, as configured."""
        return self.directory / "tls.key"

    def write(self, pair: Pair) -> None:
        """Publish ``pair``: a new version directory, then ``..data`` renamed onto it."""
        self.write_raw(pair.certificate, pair.key)

    def write_raw(self, certificate: bytes, key: bytes) -> None:
        """Publish any bytes as ``tls.crt`` and ``tls.key`` (broken pairs too)."""
        version = f"..v{next(self._versions)}"
        (self.directory / version).mkdir()
        (self.directory / version / "tls.crt").write_bytes(certificate)
        (self.directory / version / "tls.key").write_bytes(key)
        link = self.directory / "..data_tmp"
        link.symlink_to(version)
        os.replace(link, self.directory / "..data")

    def settings(self, **changes: object) -> TlsSettings:
        """``listen.tls`` for these files."""
        values: dict[str, object] = {
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
            **changes,
        }
        return TlsSettings(**values)  # type: ignore[arg-type]


async def served_certificate(
    port: int, context: ssl.SSLContext, *, server_hostname: str | None = None
) -> x509.Certificate:
    """The certificate a new TLS connection to 127.0.0.1:``port`` is answered with."""
    async with asyncio.timeout(10 * SECOND):
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=server_hostname
        )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()
        async with asyncio.timeout(10 * SECOND):
            await writer.wait_closed()


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that answers nothing; yields its port."""

    async def close(
        _reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]
