"""Time bounds for tests, scaled on slow machines by ``RELAY_TESTS_TIMEOUT_FACTOR``."""

from __future__ import annotations

import os


FACTOR = float(os.environ.get("RELAY_TESTS_TIMEOUT_FACTOR", "1"))
SECOND = 1.0 * FACTOR
"""One second of wall time, scaled."""
