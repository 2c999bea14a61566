"""What every test needs restored after it, whatever it did to the process."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _root_log_level() -> Iterator[None]:
    """A configuration reload sets the process's log level (``log.level``).

    Left at ``info``, every later test's relay would log each session into
    pytest's capture, and a soak test would see that memory as a leak.
    """
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
