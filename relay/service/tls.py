"""TLS on the main listener: the server context, and certificate rotation without restarts.

:class:`ListenerTls` loads ``listen.tls`` into an :class:`ssl.SSLContext` that
the listener keeps for its whole life, and checks the files every
``reload_interval`` seconds. When they change (cert-manager renewing a
certificate rewrites the mounted Secret: an atomic swap of its ``..data``
symlink), a complete new context is built from them, and every *new* handshake
is switched to it from the listener's server-name callback, which OpenSSL calls
for each ClientHello, with or without SNI. Established connections keep the
context they were accepted with, so live sessions are never dropped. A new pair
that does not load (a half-written file, a key of another certificate) is
logged and counted, and the pair in use is kept.

Why not ``load_cert_chain`` again on the live context: OpenSSL keeps one
certificate per key type in a context, so loading an ECDSA pair into a context
that holds an RSA one *adds* it, and clients that prefer RSA keep getting the
old certificate; and a load that fails half-way (certificate read, key
refused) leaves the live context holding a certificate without its key. A new
context per reload has neither problem.

Security choices of every context (docs in README.md, "TLS"):

* TLS 1.2 or later; TLS compression off (CRIME); client-initiated
  renegotiation off (a CPU cost a client could impose at will).
* Cipher suites and their order are Python's defaults for a server (forward
  secrecy and AEAD only, no SHA-1 MACs, OpenSSL security level 2; TLS 1.3's
  suites as OpenSSL sets them), the server's preference winning.
* ALPN offers ``http/1.1`` only: WebSocket upgrades are HTTP/1.1.
* With ``client_ca_file``: a client certificate issued by those CAs is
  required and verified (mutual TLS). It is transport authentication only; the
  relay still authenticates the app by key or JWT at the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import structlog
from cryptography import x509

from relay.config import TlsSettings
from relay.exceptions import ConfigError


__all__ = ["Certificate", "ListenerTls", "ReloadResult", "server_context"]

log = structlog.get_logger("relay.tls")

ReloadResult = Literal["unchanged", "success", "failure"]
"""What one check of the files did: nothing changed, a new pair is in use, or
a changed pair failed to load (the previous one stays in use)."""

MAX_FILE_BYTES = 1024 * 1024
"""A PEM file larger than this is refused: no certificate chain is that large."""

_FileState = tuple[int, int, int, int, int] | None
"""``(device, inode, size, mtime_ns, ctime_ns)`` of a file, ``None`` when missing."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """What new handshakes are answered with."""

    serial: int
    not_after: float
    """Expiry, in seconds since the epoch."""
    subject: str


def server_context(
    tls: TlsSettings, *, source: str
) -> tuple[ssl.SSLContext, Certificate]:
    """A new server context for the files of ``tls``, and its certificate.

    Raises:
        ConfigError: a file is missing, unreadable or invalid, or the key is
            not the certificate's; the message names the ``listen.tls`` key.
    """
    certificate = _certificate(tls.cert_file, source)
    _read(tls.key_file, source, "key_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Python's defaults already; stated so no change of defaults can undo them.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; refuse it.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except _EncryptedKeyError:
        _fail(
            source,
            "key_file",
            f"{tls.key_file!r} is encrypted; give an unencrypted key",
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            _fail(
                source,
                "key_file",
                f"{tls.key_file!r} is not the private key of listen.tls.cert_file "
                f"{tls.cert_file!r}",
            )
        _fail(
            source,
            "key_file",
            f"cannot load {tls.key_file!r} with its certificate: {exc}",
        )
    except OSError as exc:  # the file went away between the checks and the load
        _fail(source, "cert_file", f"cannot load {tls.cert_file!r}: {exc}")
    if tls.client_ca_file is not None:
        _read(tls.client_ca_file, source, "client_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            _fail(
                source,
                "client_ca_file",
                f"cannot load {tls.client_ca_file!r} as PEM CA certificates: {exc}",
            )
    return context, certificate


class ListenerTls:
    """The main listener's TLS: a fixed :attr:`context` whose certificate follows the files.

    Build it with the settings (the files are loaded at once: a bad pair is a
    :exc:`~relay.exceptions.ConfigError` before anything listens), give
    :attr:`context` to the listener, and run :meth:`watch` for as long as it
    serves. :meth:`reload` checks the files once.
    """

    def __init__(self, settings: TlsSettings, *, source: str) -> None:
        self.settings = settings
        # The files' state when last loaded (or found broken): a change of it
        # means new files to try.
        self._loaded_state = self._state()
        self._source = source
        context, self.certificate = server_context(settings, source=source)
        # The context new handshakes are switched to (the latest good pair).
        self._current = context
        self.context = context
        """The context to listen with; never replaced (see the module docstring)."""
        context.sni_callback = self._select_context
        self.reloads = 0
        """Successful reloads since start."""
        self.last_result: ReloadResult = "unchanged"
        # Replaced after each check of the watcher, so each waiter waits for the next one.
        self._checked = asyncio.Event()

    def _select_context(
        self,
        connection: ssl.SSLObject,
        _server_name: str | None,
        context: ssl.SSLContext,
    ) -> None:
        # Called by OpenSSL inside each handshake: only switch the context.
        current = self._current
        if current is not context:
            connection.context = current

    def _state(self) -> tuple[_FileState, ...]:
        paths = (
            self.settings.cert_file,
            self.settings.key_file,
            self.settings.client_ca_file,
        )
        return tuple(_file_state(path) for path in paths if path is not None)

    def reload(self) -> ReloadResult:
        """Check the files once; load them for new handshakes if they changed.

        Never raises for bad files: a pair that fails to load is logged
        (``tls.reload_failed``) and the one in use is kept until the files
        change again.
        """
        state = self._state()
        if state == self._loaded_state:
            return "unchanged"
        try:
            context, certificate = server_context(self.settings, source=self._source)
        except ConfigError as exc:
            if self._state() != state:
                # Caught mid-rotation (the key written, not yet its certificate):
                # look again at the next check rather than report a failure.
                return "unchanged"
            self._loaded_state = state
            log.warning(
                "tls.reload_failed", error=str(exc), serial=self.certificate.serial
            )
            return "failure"
        if self._state() != state:
            return "unchanged"  # changed again while loading: load the newer files next time
        self._loaded_state = state
        self._current = context
        previous, self.certificate = self.certificate, certificate
        self.reloads += 1
        log.info(
            "tls.reloaded",
            serial=certificate.serial,
            previous_serial=previous.serial,
            not_after=certificate.not_after,
            subject=certificate.subject,
        )
        return "success"

    async def watch(
        self, on_check: Callable[[ListenerTls, ReloadResult], None]
    ) -> NoReturn:
        """Check the files every ``reload_interval`` seconds until cancelled.

        ``on_check`` is told the result of every check (for metrics).
        """
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            self.last_result = self.reload()
            on_check(self, self.last_result)
            checked, self._checked = self._checked, asyncio.Event()
            checked.set()

    async def next_check(self) -> ReloadResult:
        """The result of the watcher's next check of the files (for tests and tools)."""
        checked = self._checked
        await checked.wait()
        return self.last_result


class _EncryptedKeyError(Exception):
    """The private key asked for a password."""


def _no_password() -> NoReturn:
    raise _EncryptedKeyError


def _fail(source: str, key: str, message: str) -> NoReturn:
    raise ConfigError(f"{source}: listen.tls.{key}: {message}")


def _read(path: str, source: str, key: str) -> bytes:
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        _fail(source, key, f"cannot read {path!r}: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        _fail(source, key, f"{path!r} is larger than {MAX_FILE_BYTES} bytes")
    return data


def _certificate(path: str, source: str) -> Certificate:
    data = _read(path, source, "cert_file")
    try:
        first = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        _fail(source, "cert_file", f"{path!r} holds no PEM certificate")
    return Certificate(
        serial=first.serial_number,
        not_after=first.not_valid_after_utc.timestamp(),
        subject=first.subject.rfc4514_string(),
    )


def _file_state(path: str) -> _FileState:
    # stat follows symlinks: a Secret's ..data swap changes the inode.
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
