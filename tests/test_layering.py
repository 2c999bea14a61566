"""The sans-I/O core imports nothing from the I/O world."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest


SANSIO = Path(__file__).resolve().parent.parent / "relay" / "sansio"
ALLOWED_RELAY = {"relay.config", "relay.exceptions", "relay.typing"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(SANSIO.glob("*.py")), ids=lambda p: p.name)
def test_sansio_module_is_pure(path: Path) -> None:
    """Only the stdlib (minus I/O, clocks and logging), the core and config/exceptions/typing."""
    forbidden_stdlib = {
        "asyncio",
        "socket",
        "time",
        "logging",
        "threading",
        "selectors",
        "ssl",
    }
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "relay":
            assert name.startswith("relay.sansio") or name in ALLOWED_RELAY, (
                f"{path.name} imports {name}"
            )
        else:
            assert top in sys.stdlib_module_names, (
                f"{path.name} imports third-party {name}"
            )
            assert top not in forbidden_stdlib, f"{path.name} imports {name}"
