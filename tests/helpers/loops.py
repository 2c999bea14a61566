"""A blocked event loop, on purpose: what a CPU-bound neighbour does to the relay."""

from __future__ import annotations

import time


def block_loop(seconds: float) -> None:
    """Hold the calling thread (and so its event loop) for ``seconds`` of wall time.

    A busy wait, not a sleep: it simulates a callback that keeps the loop
    from running anything else, as a hostile session's CPU cost would. It
    synchronises with nothing.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
