"""A byte-bounded FIFO of frames waiting for one leg, with an in-band close.

Frames are pushed without waiting, so the commands of one event are queued
atomically and in order, whatever other task runs meanwhile. The bound is
enforced on the producer afterwards: the reader that pushed waits in
:meth:`Outbox.wait_room` before it reads its next frame, so it stops reading
and TCP pushes back on the peer that produces too fast. Memory per direction
stays within the bound plus what one event can produce.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


__all__ = ["CloseRequest", "Outbox", "frame_size"]


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

    @property
    def _done(self) -> bool:
        return self._discarding or self._close is not None

    def push(self, data: str | bytes) -> bool:
        """Queue ``data``; ``False`` (dropped) once a close is queued or the leg is gone."""
        if self._done:
            return False
        size = frame_size(data)
        self._frames.append((data, size))
        self.size += size
        self._changed.set()
        return True

    async def wait_room(self) -> None:
        """Return once the queue is under its bound (or can never be delivered)."""
        while self.size >= self._limit and not self._done:
            self._changed.clear()
            await self._changed.wait()

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
