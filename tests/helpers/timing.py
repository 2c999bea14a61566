"""Time bounds for tests, scaled on slow machines by ``RELAY_TESTS_TIMEOUT_FACTOR``.

Every wall-clock assertion in the suite is written one of three ways:

* **not after**: ``elapsed < within(promised, margin)``, where ``promised``
  comes from the configuration object the test runs with (never a literal
  typed again) and ``margin`` is in scaled :data:`SECOND` units;
* **not before**: ``elapsed >= promised``, exact, with the clock read before
  whatever starts the relay's timer (a busy machine only makes it later);
* **no promise**: speed the relay does not promise is compared with a baseline
  measured in the same test, or measured in CPU time, with a comment saying why.
"""

from __future__ import annotations

import os


FACTOR = float(os.environ.get("RELAY_TESTS_TIMEOUT_FACTOR", "1"))
SECOND = 1.0 * FACTOR
"""One second of wall time, scaled."""

MARGIN = 1 * SECOND
"""Default slack on top of a promise: the work around it on a busy machine.

Loopback round trips, a few event-loop turns and a process that waits for a
CPU. Timers themselves do not run late by more than that: the margin is not
there to absorb the relay taking longer than it promised."""


def within(promised: float, margin: float = MARGIN) -> float:
    """The latest a test may observe what the relay promises within ``promised`` seconds.

    Args:
        promised: the relay's promise, from the configuration under test
            (``flow.stall_timeout``, ``limits.header_timeout``...), in plain
            seconds: the relay's timers run on the clock, whatever the load,
            so the promise is never scaled.
        margin: the time a loaded machine takes around the promise, in
            :data:`SECOND` units (``2 * SECOND``). It must stay below the
            smallest regression the test exists to catch: a bound that a relay
            waiting twice (or ten times) as long would still meet tests nothing.

    Returns:
        ``promised + margin``, to compare elapsed wall time against with ``<``.
    """
    return promised + margin
