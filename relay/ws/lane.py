"""The slow lane: large messages' work, one step per turn of the event loop, process-wide.

A message of a few megabytes costs the relay tens of milliseconds to decode,
check and parse (a 15 MiB append: about 10 ms to decode, 20 ms for the
session's checks), every other session of the replica waiting meanwhile.
Done in one callback, twenty such messages arriving together stalled the
others for most of a second. In the lane each large message's work is cut
into steps, and the lane runs one step per turn of the loop for the whole
process, whatever the number of large messages waiting: between two steps
every other connection is served. A leg with a message in the lane reads
nothing more until it has been handled, so what waits is bounded by one
message per leg, and its peer is pushed back by TCP.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Final

import structlog


__all__ = ["LANE_FROM", "Lane", "lane"]

LANE_FROM: Final = 1024 * 1024
"""Data messages of at least this many payload bytes are handled in the lane."""

log = structlog.get_logger("relay.lane")


class Lane:
    """Runs jobs a step at a time: one step per turn of the loop, round robin.

    A job is an iterator; each ``next`` is one step (a bounded piece of work),
    and its end is the job's end. A job that raises is logged and dropped:
    jobs handle their own failures, this only keeps one bug from stopping
    every other job.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: deque[Iterator[None]] = deque()
        self._scheduled = False
        self.submitted = 0
        """Jobs submitted so far."""

    def __len__(self) -> int:
        """Jobs waiting or in progress."""
        return len(self._jobs)

    def submit(self, job: Iterator[None]) -> None:
        """Queue ``job``; its first step runs in a later turn of the loop."""
        self._jobs.append(job)
        self.submitted += 1
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._jobs:
            self._scheduled = True
            # call_soon: the step runs in the next turn, after the I/O that
            # is ready by then, so every connection gets its turn in between.
            self._loop.call_soon(self._step)

    def _step(self) -> None:
        self._scheduled = False
        job = self._jobs.popleft()
        try:
            next(job)
        except StopIteration:
            pass
        except Exception:
            log.exception("lane.job_failed")
        else:
            self._jobs.append(job)
        self._schedule()


_LANES: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Lane]] = (
    weakref.WeakKeyDictionary()
)


def lane() -> Lane:
    """The running loop's :class:`Lane` (made on first use)."""
    loop = asyncio.get_running_loop()
    found = _LANES.get(loop)
    if found is None:
        found = _LANES[loop] = Lane(loop)
    return found
