"""The benchmark's scripts (``bench/*.py``) as modules, for their tests.

They run as scripts from their folder (``python bench/run.py``) and import
each other by plain name (``import isolation``), so the tests put ``bench/``
on ``sys.path`` the same way: appended, so it never shadows anything else.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    """``bench/<name>.py``, imported once."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)
