"""Structured logging: JSON in production, readable console output in development.

The relay logs through structlog; uvicorn's and other libraries' stdlib log
records are rendered by the same processors, and so are the reports Python
itself writes to stderr (warnings, uncaught and unraisable exceptions), so one
format covers the process: with ``json`` every line is one object.
Context (session id, client id, deployment) is bound once per session through
:mod:`structlog.contextvars`. Event names are dotted (``session.start``).

Secrets are kept out of logs by construction (the relay never logs headers,
keys, tokens, instructions or audio); :func:`redact` is the safety net for
text a library formats itself, such as a URL with its query string.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any, TextIO

import structlog

from relay.config import LogSettings


__all__ = [
    "UPSTREAM_WEBSOCKETS_LOGGER",
    "SecretGuard",
    "configure_logging",
    "guard_library_loggers",
    "redact",
    "redact_text",
]

UPSTREAM_WEBSOCKETS_LOGGER = "relay.upstream.websockets"
"""Logger given to the `websockets` client of the upstream leg."""
# Loggers of libraries that see credentials: uvicorn (client requests) and the
# upstream websockets client (the relay's own key).
_GUARDED_LOGGERS = ("uvicorn.error", "uvicorn.access", UPSTREAM_WEBSOCKETS_LOGGER)
# Python's own reports (uncaught and unraisable exceptions) are logged here.
_process_log = structlog.get_logger("relay.process")

_SECRET_PATTERNS = (
    # api-key=..., Authorization=..., access_token=... in query strings and text.
    re.compile(
        r"(?i)((?:api-key|api_key|authorization|access_token|token|key)=)[^&\s\"']+"
    ),
    # Bearer tokens wherever they appear.
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # A key carried in a WebSocket subprotocol.
    re.compile(r"(openai-insecure-api-key\.)[^,\s\"']+"),
)


def redact_text(text: str) -> str:
    """``text`` with credential-looking values replaced by ``REDACTED``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1REDACTED", text)
    return text


class SecretGuard(logging.Filter):
    """Keeps library log records free of credentials, whatever the log level.

    The `websockets` protocol logs every handshake header and frame at DEBUG
    (client keys, the relay's upstream key, audio): those records are dropped.
    Other records are redacted with :func:`redact_text`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop debug dumps; redact what remains."""
        if record.levelno < logging.INFO:
            return False
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def guard_library_loggers() -> None:
    """Install :class:`SecretGuard` on the loggers that see credentials; idempotent."""
    for name in _GUARDED_LOGGERS:
        library_logger = logging.getLogger(name)
        if not any(isinstance(f, SecretGuard) for f in library_logger.filters):
            library_logger.addFilter(SecretGuard())


def redact(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor applying :func:`redact_text` to every string value."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif isinstance(value, tuple):
            # stdlib records keep their %-args here until rendered.
            event_dict[key] = tuple(
                redact_text(v) if isinstance(v, str) else v for v in value
            )
    return event_dict


def _render_stdlib_message(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Foreign (stdlib) records arrive with a formatted message as "event";
    # make sure %-args were applied before redaction sees the final text.
    record = event_dict.get("_record")
    if (
        isinstance(record, logging.LogRecord)
        and event_dict.get("event") == record.msg
        and record.args
    ):
        event_dict["event"] = record.getMessage()
    # Captured warnings end with a newline (warnings.formatwarning's text).
    if isinstance(event := event_dict.get("event"), str):
        event_dict["event"] = event.rstrip("\n")
    return event_dict


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) in the configured format.

    Python's own reports go through the same handler instead of being written
    to stderr as text: warnings (logger ``py.warnings``), uncaught exceptions
    (``process.crashed``; ``thread.crashed`` in other threads) and exceptions
    Python can only ignore (``process.unraisable``), each with its traceback in
    the ``exception`` field. The event loop's unhandled errors ("Task exception
    was never retrieved") are records of the ``asyncio`` logger already.

    Process-wide: it replaces the root handlers, :data:`sys.excepthook`,
    :data:`threading.excepthook` and :data:`sys.unraisablehook`. Call it from
    a process's entry point (the command line, the demo), before serving.
    """
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            redact,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _render_stdlib_message, redact],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.level.upper())
    # uvicorn installs its own handlers unless told otherwise; send its records
    # through the root handler so every line has one format and is redacted.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets"):
        library_logger = logging.getLogger(name)
        library_logger.handlers = []
        library_logger.propagate = True
    guard_library_loggers()
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_uncaught
    sys.unraisablehook = _log_unraisable


def set_log_level(level: str) -> None:
    """Filter records below ``level`` (``log.level``) from now on; a reload calls it."""
    logging.getLogger().setLevel(level.upper())


def _log_uncaught(
    exc_type: type[BaseException],
    exc_value: BaseException,
    exc_tb: TracebackType | None,
) -> None:
    # The interpreter exits 1 after this hook, as after its own traceback.
    _process_log.critical("process.crashed", exc_info=(exc_type, exc_value, exc_tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    # threading's default hook is silent about SystemExit; so is this one.
    if args.exc_type is SystemExit:
        return
    exc_info = (
        (args.exc_type, args.exc_value, args.exc_traceback)
        if args.exc_value is not None
        else None
    )
    thread = args.thread.name if args.thread is not None else None
    _process_log.critical("thread.crashed", thread=thread, exc_info=exc_info)


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    # An exception in __del__ or a finaliser: Python carries on, as it would
    # after printing "Exception ignored in: ...".
    exc_info = (
        (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
        if unraisable.exc_value is not None
        else None
    )
    _process_log.error(
        "process.unraisable",
        detail=unraisable.err_msg or "Exception ignored in",
        object=repr(unraisable.object),
        exc_info=exc_info,
    )
