"""check-config as the service sees it: the files are opened as the service user, not as root.

The service user is injected (``nobody``, which every Debian system has); the real one is checked in
tests/system, where the package has created ``exchanged``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchanged.config import load_config
from exchanged.service_access import SERVICE_USER, WRITABLE, check_access
from tests.config.helpers import BASE, write_config

ROOT = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")


@pytest.fixture
def etc() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is 0700 root's: nobody would fail on it)."""
    path = Path(tempfile.mkdtemp(prefix="exchanged-access-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def setup(etc: Path, password_mode: int = 0o600, owner: str = "root", config_mode: int = 0o644) -> Path:
    pw = etc / "sync-password"
    pw.write_text("Pa55-word\n")
    pw.chmod(password_mode)
    user = pwd.getpwnam(owner)
    os.chown(pw, user.pw_uid, user.pw_gid)
    path = write_config(etc, BASE.format(pw=pw))
    path.chmod(config_mode)
    return path


@needs_root
def test_a_password_file_only_root_can_read_is_reported_for_the_service_user(etc: Path) -> None:
    path = setup(etc)  # root:root 0600: fine for root, unreadable for the daemon
    report = check_access(load_config(str(path)), str(path), service_user="nobody", hidden={})
    assert report.as_service_user and report.user == "nobody"
    assert report.note.startswith("checked as the service user nobody (uid ")
    (problem,) = report.problems
    assert problem["key"] == "credentials.password_file"
    assert problem["path"] == str(etc / "sync-password")
    assert "nobody cannot read" in problem["message"] and "Permission denied" in problem["message"]
    assert f"chown nobody {etc / 'sync-password'}" in problem["message"]
    assert "LoadCredential=sync-password:" in problem["message"]


@needs_root
def test_owned_by_the_service_user_it_passes(etc: Path) -> None:
    path = setup(etc, owner="nobody")
    report = check_access(load_config(str(path)), str(path), service_user="nobody", hidden={})
    assert report.problems == []


@needs_root
def test_a_config_the_service_cannot_read_is_reported(etc: Path) -> None:
    path = setup(etc, owner="nobody", config_mode=0o600)
    report = check_access(load_config(str(path)), str(path), service_user="nobody", hidden={})
    assert [p["key"] for p in report.problems] == ["the config file"]
    assert f"chgrp nobody {path} && chmod 0640 {path}" in report.problems[0]["message"]


@needs_root
def test_files_the_unit_hides_from_the_service_are_named(etc: Path) -> None:
    path = setup(etc, owner="nobody")
    report = check_access(load_config(str(path)), str(path), service_user="nobody",
                          hidden={str(etc): "PrivateTmp=yes"})
    (problem,) = report.problems
    assert problem["key"] == "credentials.password_file"
    assert "the unit hides it (PrivateTmp=yes)" in problem["message"]


@needs_root
def test_without_the_service_user_root_says_whom_it_checked(etc: Path) -> None:
    path = setup(etc)
    report = check_access(load_config(str(path)), str(path), service_user="no-such-user-x",
                          hidden={str(etc): "PrivateTmp=yes"})
    assert not report.as_service_user and report.user == "root"
    assert "the service user no-such-user-x does not exist here" in report.note
    assert report.problems == []  # no sandbox outside the unit: the demo and developers run like this


def test_the_service_user_is_the_one_the_package_creates() -> None:
    sysusers = (ROOT / "packaging" / "systemd" / "exchanged.sysusers").read_text()
    assert f"\nu {SERVICE_USER} " in sysusers
    assert f"\nUser={SERVICE_USER}\n" in (ROOT / "packaging" / "systemd" / "exchanged.service").read_text()


@needs_root
def test_check_config_prints_whom_it_checked(etc: Path) -> None:
    path = setup(etc, owner="nobody")
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "EXCHANGED_CONFIG")}
    done = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--config", str(path)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:  # a development machine: the package is not installed
        expected = f"access OK: checked as root: the service user {SERVICE_USER} does not exist here"
        assert expected in done.stdout
    else:
        assert f"access OK: checked as the service user {SERVICE_USER}" in done.stdout


@needs_root
def test_a_state_directory_the_service_cannot_write_is_reported(etc: Path) -> None:
    path = setup(etc, owner="nobody")
    (etc / "db").mkdir(mode=0o755)  # root's
    path.write_text(path.read_text() + f"state:\n  url: sqlite:///{etc}/db/state.db\n")
    cfg = load_config(str(path))
    report = check_access(cfg, str(path), service_user="nobody", hidden={}, writable=(str(etc), *WRITABLE))
    (problem,) = report.problems
    assert problem["key"] == "state.url" and problem["path"] == str(etc / "db")
    assert f"nobody cannot create files in {etc / 'db'}" in problem["message"]
    assert f"chown nobody {etc / 'db'}" in problem["message"]
    os.chown(etc / "db", pwd.getpwnam("nobody").pw_uid, -1)
    again = check_access(cfg, str(path), service_user="nobody", hidden={}, writable=(str(etc), *WRITABLE))
    assert again.problems == []


@needs_root
def test_a_directory_outside_the_units_writable_paths_is_reported(etc: Path) -> None:
    path = setup(etc, owner="nobody")
    path.write_text(path.read_text() + f"state:\n  url: sqlite:///{etc}/state.db\n")
    os.chown(etc, pwd.getpwnam("nobody").pw_uid, -1)  # the user may write there; the sandbox forbids it
    report = check_access(load_config(str(path)), str(path), service_user="nobody", hidden={},
                          writable=("/var/lib/exchanged", "/run/exchanged"))
    (problem,) = report.problems
    assert problem["key"] == "state.url"
    assert "allows only /var/lib/exchanged, /run/exchanged (ProtectSystem=strict)" in problem["message"]
    assert f"ReadWritePaths={etc}" in problem["message"]
