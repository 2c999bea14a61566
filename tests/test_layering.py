"""The house shows its layers: a pure core, and no import circle anywhere in ``relay/``.

Three checks, from the narrowest to the widest:

* each module of the sans-I/O core imports, by name, only the standard library
  (minus I/O, clocks and logging), the core itself and the two vocabulary
  modules it shares with the edge (``relay.exceptions``, ``relay.typing``);
* importing any one of them in a fresh interpreter loads nothing else, even
  indirectly: the first check reads one file, this one follows every import;
* the import graph of every module under ``relay/`` has no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "relay"
SANSIO = RELAY / "sansio"
# Outside the core, yet imported by it: the names both sides speak. They are
# held to the core's rule themselves (see CORE_MODULES).
VOCABULARY = ("relay.exceptions", "relay.typing")


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
    """Only the stdlib (minus I/O, clocks and logging), the core and exceptions/typing."""
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
            assert name.startswith("relay.sansio") or name in VOCABULARY, (
                f"{path.name} imports {name}"
            )
        else:
            assert top in sys.stdlib_module_names, (
                f"{path.name} imports third-party {name}"
            )
            assert top not in forbidden_stdlib, f"{path.name} imports {name}"


# --- What importing the core loads ------------------------------------------

# Run in a fresh interpreter: prints the modules that importing argv[1] added
# to sys.modules (whatever the interpreter loaded at start-up, such as .pth
# hooks of site-packages, is not the module's doing).
_LOADED_BY = textwrap.dedent(
    """
    import importlib, json, sys
    before = set(sys.modules)
    importlib.import_module(sys.argv[1])
    print(json.dumps(sorted(set(sys.modules) - before)))
    """
)
CORE_MODULES = sorted(
    [
        "relay",
        *VOCABULARY,
        *(
            "relay.sansio" if path.stem == "__init__" else f"relay.sansio.{path.stem}"
            for path in SANSIO.glob("*.py")
        ),
    ]
)


def _in_core(name: str) -> bool:
    return (
        name in ("relay", "relay.sansio", *VOCABULARY)
        or name.startswith("relay.sansio.")
        or name.split(".")[0] in sys.stdlib_module_names
    )


def test_core_modules_are_all_checked() -> None:
    """The list the next test runs over holds every file of the core."""
    assert len(CORE_MODULES) == len(list(SANSIO.glob("*.py"))) + 1 + len(VOCABULARY)
    assert {"relay.sansio", "relay.sansio.handshake", "relay.sansio.settings"} <= set(
        CORE_MODULES
    )


def test_core_check_sees_third_party_modules() -> None:
    """What the next test forbids: an edge module's loads are refused."""
    loaded = _loaded_by("relay.config")
    assert "yaml" in loaded
    assert [name for name in loaded if not _in_core(name)]


def _loaded_by(module: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", _LOADED_BY, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    loaded: list[str] = json.loads(run.stdout)
    assert module in loaded  # it was not already loaded at start-up
    return loaded


@pytest.mark.parametrize("module", CORE_MODULES)
def test_importing_core_module_loads_only_stdlib_and_core(module: str) -> None:
    """A fresh interpreter importing it holds only stdlib modules and the core."""
    outside = [name for name in _loaded_by(module) if not _in_core(name)]
    assert not outside, f"importing {module} loads {outside}"


# --- The import graph of relay/ ----------------------------------------------


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Which modules of ``package`` (the directory ``root``) each of its modules imports.

    Every ``import`` statement counts, wherever it sits: at module level, inside
    a function (deferred imports are how circles hide), and under
    ``if TYPE_CHECKING:``. A drawing of the imports shows those too, and two
    modules that need each other's names, for annotations or at run time, are
    one unit in disguise. ``from a import b`` is an edge to ``a.b`` when that is
    a module, else to ``a``; a package's ``__init__`` is the package's module.
    Imports of anything outside ``package`` are left out.
    """
    files: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path

    def known(name: str) -> str | None:
        # `import a.b.c` where only `a.b` is ours (c a name, or not a file) is an edge to `a.b`.
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            for target in targets:
                found = known(target)
                if found is not None and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Cycles that together pass through every module caught in one, e.g. ``[a, b, a]``.

    The modules caught in cycles are the strongly connected components
    (Tarjan's algorithm, iterative, so the depth of the graph does not matter)
    of more than one module. Within each, the shortest cycle through its first
    module is shown, then through the first module no shown cycle passes, and
    so on.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    found: list[list[str]] = []
    for group in sorted(groups):
        shown: set[str] = set()
        for member in group:
            if member not in shown:
                found.append(_shortest_cycle(graph, group, member))
                shown.update(found[-1])
    return found


def _shortest_cycle(
    graph: Mapping[str, set[str]], group: list[str], first: str
) -> list[str]:
    members = set(group)
    came_from: dict[str, str] = {}
    frontier = [first]
    # Breadth-first within the group: it is strongly connected, so `first` is
    # reached again within len(group) rounds.
    for _ in range(len(group)):
        following: list[str] = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(came_from[path[-1]])
                    return [first, *reversed(path[:-1]), first]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"not strongly connected: {group}")


def test_relay_has_no_import_cycle() -> None:
    """No module of relay/ imports, even indirectly, a module that imports it."""
    graph = import_graph(RELAY, "relay")
    assert "relay.sansio.policy" in graph["relay.sansio.session"]  # it saw the files
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


class TestImportGraph:
    """The graph and cycle finder the test above relies on, on small made-up packages."""

    @staticmethod
    def write(root: Path, files: Mapping[str, str]) -> Path:
        for name, text in files.items():
            path = root / "pkg" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return root / "pkg"

    def test_deferred_and_type_checking_imports_are_edges(self, tmp_path: Path) -> None:
        """An import inside a function or under TYPE_CHECKING closes a cycle."""
        root = self.write(
            tmp_path,
            {
                "__init__.py": "",
                "a.py": """
                    from typing import TYPE_CHECKING
                    if TYPE_CHECKING:
                        from pkg.b import B
                """,
                "b.py": """
                    def make():
                        from pkg import a
                        return a
                """,
                "c.py": "import os\nfrom pkg.a import nothing\n",
            },
        )
        graph = import_graph(root, "pkg")
        assert graph == {
            "pkg": set(),
            "pkg.a": {"pkg.b"},
            "pkg.b": {"pkg.a"},
            "pkg.c": {"pkg.a"},
        }
        assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]

    def test_every_module_in_a_cycle_is_shown(self, tmp_path: Path) -> None:
        """A module importing two that import it back shows as two cycles."""
        root = self.write(
            tmp_path,
            {
                "__init__.py": "",
                "hub.py": "import pkg.s1\nimport pkg.s2\n",
                "s1.py": "def later():\n    import pkg.hub\n",
                "s2.py": "from pkg import hub\n",
            },
        )
        assert cycles(import_graph(root, "pkg")) == [
            ["pkg.hub", "pkg.s1", "pkg.hub"],
            ["pkg.s2", "pkg.hub", "pkg.s2"],
        ]

    def test_relative_imports_and_subpackages(self, tmp_path: Path) -> None:
        """Relative imports resolve against the importing module's package."""
        root = self.write(
            tmp_path,
            {
                "__init__.py": "from pkg.sub import Thing\n",
                "top.py": "from . import sub\n",
                "sub/__init__.py": "from .x import Thing\n",
                "sub/x.py": "from ..top import y\nimport pkg.sub.x\n",
            },
        )
        graph = import_graph(root, "pkg")
        assert graph == {
            "pkg": {"pkg.sub"},
            "pkg.top": {"pkg.sub"},
            "pkg.sub": {"pkg.sub.x"},
            "pkg.sub.x": {"pkg.top"},
        }
        assert cycles(graph) == [["pkg.sub", "pkg.sub.x", "pkg.top", "pkg.sub"]]

    def test_a_package_importing_its_own_modules_is_no_cycle(
        self, tmp_path: Path
    ) -> None:
        """``from pkg import mod`` is an edge to the module, not to the package."""
        root = self.write(
            tmp_path,
            {
                "__init__.py": "from pkg.a import A\n",
                "a.py": "from pkg import b\n",
                "b.py": "",
            },
        )
        graph = import_graph(root, "pkg")
        assert graph["pkg.a"] == {"pkg.b"}
        assert cycles(graph) == []


# Each folder of relay/ is one layer; a layer imports only the layers below it
# (and itself). The package root holds the entry points and the vocabulary.
LAYERS: dict[str, tuple[str, ...]] = {
    "relay.sansio": ("relay.sansio", *VOCABULARY),
    "relay.ws": ("relay.ws", "relay.sansio", *VOCABULARY),
    "relay.config": ("relay.config", "relay.sansio", *VOCABULARY),
    "relay.simulator": ("relay.simulator",),
    "relay.service": (
        "relay.service",
        "relay.ws",
        "relay.config",
        "relay.sansio",
        "relay",  # its version
        *VOCABULARY,
    ),
}
"""What each layer may import of ``relay``: the core nothing but itself, the
transport and the configuration parser the core, the service all three, and the
simulator stands alone (only the command line and the demo start it)."""


def _layer(module: str) -> str | None:
    for layer in LAYERS:
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return any(
        target == name or (name != "relay" and target.startswith(name + "."))
        for name in allowed
    )


def test_each_layer_imports_only_the_layers_below() -> None:
    graph = import_graph(RELAY, "relay")
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        if (layer := _layer(module)) is not None
        for target in sorted(targets)
        if not _allowed(target, LAYERS[layer])
    ]
    assert wrong == []


def test_only_the_command_line_and_the_demo_start_the_simulator() -> None:
    graph = import_graph(RELAY, "relay")
    importers = sorted(
        module
        for module, targets in graph.items()
        if _layer(module) != "relay.simulator"
        and any(
            t == "relay.simulator" or t.startswith("relay.simulator.") for t in targets
        )
    )
    assert importers == ["relay.cli", "relay.demo"]


def test_every_module_is_in_a_layer_or_at_the_root() -> None:
    """The root holds the entry points and the vocabulary; everything else sits in a layer's folder."""
    graph = import_graph(RELAY, "relay")
    root = sorted(m for m in graph if _layer(m) is None)
    assert root == [
        "relay",
        "relay.__main__",
        "relay.cli",
        "relay.demo",
        "relay.exceptions",
        "relay.typing",
    ]
