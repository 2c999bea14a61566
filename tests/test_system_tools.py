"""scripts/system-tools: the check `make test` runs before anything else.

The script is run for real with ``--check`` (which never installs) against a
PATH and an ``/usr/sbin`` of the test's own, so that each combination of
present and missing tools can be staged on any machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.helpers.timing import SECOND


SCRIPT: Final = Path(__file__).parent.parent / "scripts" / "system-tools"
ON_PATH: Final = ("redis-server", "promtool", "cc")
IN_SBIN: Final = ("nginx", "haproxy")
ALL_PACKAGES: Final = "redis-server prometheus nginx haproxy gcc libc6-dev"


def _executable(path: Path) -> None:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def check(
    tmp_path: Path, *, present: tuple[str, ...], os_release: str
) -> subprocess.CompletedProcess[str]:
    """``sh scripts/system-tools --check`` where only ``present`` tools exist."""
    path, sbin = tmp_path / "bin", tmp_path / "sbin"
    path.mkdir()
    sbin.mkdir()
    grep = shutil.which("grep")
    assert grep is not None
    (path / "grep").symlink_to(grep)
    for tool in present:
        _executable((sbin if tool in IN_SBIN else path) / tool)
    release = tmp_path / "os-release"
    release.write_text(os_release)
    env = {
        "PATH": str(path),
        "SYSTEM_TOOLS_SBIN": str(sbin),
        "SYSTEM_TOOLS_OS_RELEASE": str(release),
    }
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * SECOND,
        check=False,
    )


DEBIAN: Final = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
MINT: Final = 'ID=linuxmint\nID_LIKE="ubuntu debian"\n'
FEDORA: Final = "ID=fedora\n"


def test_all_present_is_silent_success(tmp_path: Path) -> None:
    """Nothing to do: exit 0 and say nothing."""
    result = check(tmp_path, present=ON_PATH + IN_SBIN, os_release=DEBIAN)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("release", [DEBIAN, MINT], ids=["debian", "ubuntu-like"])
def test_missing_tools_on_debian_name_the_apt_command(
    tmp_path: Path, release: str
) -> None:
    """Debian and its derivatives: the tools, and the one apt-get command for all."""
    result = check(tmp_path, present=(), os_release=release)
    assert result.returncode == 1
    assert "redis-server promtool nginx haproxy cc" in result.stderr
    assert f"apt-get install -y --no-install-recommends {ALL_PACKAGES}" in result.stderr


def test_only_what_is_missing_is_named(tmp_path: Path) -> None:
    """Present tools are neither named nor reinstalled."""
    present = tuple(t for t in ON_PATH + IN_SBIN if t not in ("nginx", "promtool"))
    result = check(tmp_path, present=present, os_release=DEBIAN)
    assert result.returncode == 1
    assert "which are missing: promtool nginx\n" in result.stderr
    assert "--no-install-recommends prometheus nginx\n" in result.stderr


def test_elsewhere_it_stops_with_the_packages_to_find(tmp_path: Path) -> None:
    """No apt-get: the tools are named, with Debian's packages as the reference."""
    result = check(tmp_path, present=("cc", "nginx"), os_release=FEDORA)
    assert result.returncode == 1
    assert "which are missing: redis-server promtool haproxy" in result.stderr
    assert "with your package manager" in result.stderr
    assert "prometheus.io" in result.stderr


def test_the_real_machine_passes_the_check() -> None:
    """`make test` ran the script before this suite; so the machine has every tool."""
    result = subprocess.run(
        ["/bin/sh", str(SCRIPT), "--check"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30 * SECOND,
        check=False,
    )
    assert result.returncode == 0, result.stderr
