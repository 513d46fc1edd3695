"""Fixtures of the system test: the Debian packages (built once per session) and a booted container.

``scripts/build-deb`` builds the package from this checkout into a temporary directory (about
1.5 minutes: the wheels come from PyPI). ``EXCHANGED_SYSTEM_DEB=/path/to/exchanged_X_amd64.deb``
uses a package built before instead, to iterate on the tests. The "previous version" for the upgrade
test is that package repacked with a lower Debian version and its own ``__version__``: the same
maintainer scripts and unit, so the upgrade path itself is what is tested.

Needs root, ``unshare`` and ``systemd-nspawn`` (Debian: systemd-container, which scripts/bootstrap
installs). Without them the tests skip, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system.container import Container

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ("Example MSP Packaging", "packaging@msp.example.org")


@dataclass(frozen=True)
class Debs:
    old: Path
    old_version: str
    new: Path
    new_version: str
    built_here: bool  # by scripts/build-deb in this session (not EXCHANGED_SYSTEM_DEB)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the system test runs as root (it mounts an overlay and boots a container)"
    for tool in ("systemd-nspawn", "unshare", "nsenter", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian: apt-get install systemd-container, or ./scripts/bootstrap)"
    return None


@pytest.fixture(scope="session")
def system_ready() -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"system test cannot run in CI: {reason}")
        pytest.skip(reason)


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def _repack(new: Path, out: Path, version: str) -> Path:
    """The same package with a lower version, and that version in exchanged.__version__."""
    tree = out / "old-tree"
    subprocess.run(["dpkg-deb", "-R", str(new), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    inits = list(tree.glob("opt/exchanged/lib/python3*/site-packages/exchanged/__init__.py"))
    assert len(inits) == 1, inits
    init = inits[0]
    source = re.sub(r'^__version__ = ".*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M)
    init.write_text(source)
    for pyc in init.parent.glob("__pycache__/__init__.*.pyc"):
        pyc.unlink()
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", "-s", str(tree), "-p", "/", str(init)],
                   check=True)
    sums = []
    for line in (tree / "DEBIAN" / "md5sums").read_text().splitlines():
        _digest, name = line.split(maxsplit=1)
        path = tree / name
        if path.exists():
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {name}")
    for pyc in init.parent.glob("__pycache__/__init__.*.pyc"):
        name = str(pyc.relative_to(tree))
        if not any(s.endswith("  " + name) for s in sums):
            sums.append(f"{hashlib.md5(pyc.read_bytes()).hexdigest()}  {name}")
    (tree / "DEBIAN" / "md5sums").write_text("\n".join(sums) + "\n")
    deb = out / f"exchanged_{version}_{_deb_field(new, 'Architecture')}.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "-b", str(tree), str(deb)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return deb


@pytest.fixture(scope="session")
def workdir(system_ready: None) -> Iterator[Path]:
    """A directory of this run only, outside pytest's numbered temporary directories (a concurrent
    pytest run may delete those while the container still has its overlay mounted there)."""
    path = Path(tempfile.mkdtemp(prefix="exchanged-system-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def debs(workdir: Path) -> Debs:
    out = workdir / "debs"
    out.mkdir()
    given = os.environ.get("EXCHANGED_SYSTEM_DEB")
    if given:
        new = Path(given).resolve()
    else:
        # built as an MSP building its own release would (DEBFULLNAME/DEBEMAIL name the Maintainer)
        env = {**os.environ, "DEBFULLNAME": BUILDER[0], "DEBEMAIL": BUILDER[1]}
        done = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, f"scripts/build-deb failed:\n{done.stderr[-4000:]}"
        new = Path(done.stdout.strip().splitlines()[-1])
    new_version = _deb_field(new, "Version")
    old_version = f"{new_version}~previous1"
    old = _repack(new, out, old_version)
    return Debs(old=old, old_version=old_version, new=new, new_version=new_version, built_here=not given)


@pytest.fixture(scope="module")
def machine(workdir: Path, debs: Debs) -> Iterator[Container]:
    """A booted container that sees the packages and this checkout (for the test servers' venv)."""
    base = workdir / "machine"

    binds = [ROOT, debs.old.parent, debs.new.parent, Path(sys.prefix)]
    if not sys.base_prefix.startswith("/usr"):
        binds.append(Path(sys.base_prefix))  # a pyenv Python behind .venv
    with Container(base, binds=binds) as container:
        # a Debian image built for containers forbids service starts (policy-rc.d exit 101);
        # a real host does not have it, and the package's start/restart is what is tested
        container.run("rm", "-f", "/usr/sbin/policy-rc.d")
        yield container
