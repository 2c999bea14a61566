"""Process memory: heap freed after large messages goes back to the system.

A session may receive messages up to ``limits.max_message_bytes`` (16 MiB),
and a hostile client can make the relay buffer such messages on purpose: a
frame arriving in 4 KiB reads is held as thousands of heap blocks until it is
complete. Once freed, glibc keeps those pages (it only returns the top of the
heap, and other objects allocated meanwhile sit above them), so RSS stayed
hundreds of MiB above baseline long after such an attack. ``malloc_trim``
returns every free page of the heap; it costs about 35 ms for 320 MiB freed
(2-core VM), and the loop waits meanwhile, so it runs once large messages
have stopped coming for :data:`TRIM_QUIET` seconds: never in the middle of a
stream of them (their memory is reused), soon after the last one.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import platform
import weakref
from collections.abc import Callable
from typing import Final


__all__ = ["LARGE_MESSAGE", "TRIM_QUIET", "Trimmer", "malloc_trim", "trimmer"]

LARGE_MESSAGE: Final = 1024 * 1024
"""Messages at least this large ask for a trim once they are let go."""
TRIM_QUIET: Final = 0.25
"""Seconds without a large message before the heap is trimmed."""


def _load_trim() -> Callable[[], bool] | None:
    if platform.libc_ver()[0] != "glibc":
        return None  # musl and others: no malloc_trim, nothing kept this way
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - glibc always has one
        return None
    function = ctypes.CDLL(name).malloc_trim
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return lambda: bool(function(0))


_TRIM: Final = _load_trim()


def malloc_trim() -> bool:
    """Return the heap's free pages to the system now; whether any were (glibc only)."""
    return _TRIM() if _TRIM is not None else False


class Trimmer:
    """Trims the heap once large messages have stopped for ``quiet`` seconds.

    One per event loop (the relay's process has one). :meth:`released` is
    cheap and may be called for every message: only large ones count, and
    they only push the due time back (one timer at most, re-armed when it
    fires early, none per message).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        quiet: float = TRIM_QUIET,
        trim: Callable[[], object] = malloc_trim,
    ) -> None:
        self._loop = loop
        self._quiet = quiet
        self._trim_now = trim
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0
        """Trims run so far (for tests and metrics)."""

    @property
    def scheduled(self) -> bool:
        """Whether a trim is due."""
        return self._timer is not None

    def released(self, size: int) -> None:
        """A message of ``size`` bytes is about to be let go."""
        if size >= LARGE_MESSAGE:
            self._due = self._loop.time() + self._quiet
            if self._timer is None:
                self._timer = self._loop.call_at(self._due, self._trim)

    def close(self) -> None:
        """Cancel a scheduled trim (the loop is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _trim(self) -> None:
        if self._loop.time() < self._due:  # another large message meanwhile
            self._timer = self._loop.call_at(self._due, self._trim)
            return
        self._timer = None
        self._trim_now()
        self.trims += 1


_TRIMMERS: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Trimmer]] = (
    weakref.WeakKeyDictionary()
)


def trimmer() -> Trimmer:
    """The running loop's :class:`Trimmer` (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _TRIMMERS.get(loop)
    if found is None:
        found = _TRIMMERS[loop] = Trimmer(loop)
    return found
