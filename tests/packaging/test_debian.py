"""debian/ stays in step with the rest of the tree (scripts/build-deb and tests/system build from it)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from exchanged import __version__

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"


def test_the_package_version_is_the_projects() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"^exchanged \(([^)]+)\) \w+; urgency=\w+$", first)
    assert match, first
    upstream = match.group(1).split("-")[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert upstream == __version__ == project["version"]


def test_the_unit_and_its_users_and_tmpfiles_are_the_ones_the_tests_check() -> None:
    for name in ("service", "sysusers", "tmpfiles"):
        link = DEBIAN / f"exchanged.{name}"
        assert link.is_symlink(), f"{link} must link to packaging/systemd (one copy of the unit)"
        assert link.resolve() == (ROOT / "packaging" / "systemd" / f"exchanged.{name}").resolve()
    assert os.access(DEBIAN / "rules", os.X_OK)
    assert os.access(ROOT / "scripts" / "build-deb", os.X_OK)


def test_links_point_into_the_private_venv() -> None:
    links = dict(line.split() for line in (DEBIAN / "exchanged.links").read_text().splitlines() if line)
    assert links == {"opt/exchanged/bin/exchanged": "usr/bin/exchanged",
                     "opt/exchanged/bin/exchangectl": "usr/bin/exchangectl"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["scripts"]) == {"exchanged", "exchangectl"}
