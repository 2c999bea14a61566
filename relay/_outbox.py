"""A byte-bounded FIFO of frames waiting for one leg, with an in-band close.

The producer is the reader of the *other* leg. When the outbox is full,
:meth:`Outbox.put` waits, so that reader stops reading and TCP pushes back on
the peer that is producing too fast: memory per session stays bounded whatever
the peers do. A single frame larger than the bound is still admitted when the
outbox is empty, otherwise it could never move.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


__all__ = ["CloseRequest", "Outbox"]


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """Close the leg with ``code``/``reason`` after the frames queued before it."""

    code: int
    reason: str


def frame_size(data: str | bytes) -> int:
    """Bytes ``data`` occupies on the wire (UTF-8 for text)."""
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    return len(data.encode())


class Outbox:
    """Frames for one leg; see the module docstring."""

    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._frames: deque[tuple[str | bytes, int]] = deque()
        # Bytes currently queued.
        self.size = 0
        # Set once a close is queued: later frames are dropped.
        self._close: CloseRequest | None = None
        # Set when the leg is gone: everything is dropped, the writer exits.
        self._discarding = False
        self._changed = asyncio.Event()

    async def put(self, data: str | bytes) -> bool:
        """Queue ``data``, waiting for room; return whether it was queued.

        Returns ``False`` without waiting when a close is queued or the leg is
        gone: the frame could never be delivered.
        """
        size = frame_size(data)
        while self._frames and self.size + size > self._limit and not self._done:
            self._changed.clear()
            await self._changed.wait()
        if self._done:
            return False
        self._frames.append((data, size))
        self.size += size
        self._changed.set()
        return True

    @property
    def _done(self) -> bool:
        return self._discarding or self._close is not None

    def close(self, code: int, reason: str) -> None:
        """Queue a close after the frames already queued; idempotent."""
        if not self._done:
            self._close = CloseRequest(code, reason)
            self._changed.set()

    def discard(self) -> None:
        """The leg is gone: drop queued frames and release every waiter."""
        self._discarding = True
        self._frames.clear()
        self.size = 0
        self._changed.set()

    async def get(self) -> str | bytes | CloseRequest | None:
        """Next frame, then the close request; ``None`` once the leg is gone."""
        while True:
            if self._discarding:
                return None
            if self._frames:
                data, size = self._frames.popleft()
                self.size -= size
                self._changed.set()
                return data
            if self._close is not None:
                return self._close
            self._changed.clear()
            await self._changed.wait()
