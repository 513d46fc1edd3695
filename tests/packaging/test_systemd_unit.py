"""The systemd unit: hardened to an exposure of 1.5 or lower, without taking away what the daemon needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from exchanged.config import ControlConfig, SqlPsaConfig, StateConfig

PACKAGING = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNIT = PACKAGING / "exchanged.service"
MAX_EXPOSURE = 1.5


def directives(section: str = "Service") -> dict[str, list[str]]:
    """Every `Key=value` of one section, values in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    current = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install -y systemd); cannot check the unit")
    return path


def test_exposure_level_at_most_1_5() -> None:
    analyze = need("systemd-analyze")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    # a typo in a directive is only a warning to systemd, and silently weakens the sandbox
    assert "Unknown key" not in done.stderr, done.stderr
    assert "ignoring" not in done.stderr, done.stderr
    match = re.search(r"Overall exposure level for exchanged\.service: (\d+(?:\.\d+)?)", done.stdout)
    assert match, f"no exposure level in the output:\n{done.stdout}\n{done.stderr}"
    assert float(match.group(1)) <= MAX_EXPOSURE, done.stdout


def test_notify_reload_watchdog_and_directories() -> None:
    d = directives()
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["ExecStart"][0].split()[:2] == ["/usr/bin/exchanged", "run"]
    assert d["WatchdogSec"] == ["60"]
    assert d["Restart"] == ["on-failure"]
    assert int(d["TimeoutStopSec"][0]) >= 10  # the daemon's own grace period fits inside
    assert d["RuntimeDirectory"] == ["exchanged"]
    assert d["StateDirectory"] == ["exchanged"]
    assert d["ConfigurationDirectory"] == ["exchanged"]
    assert "sync-password:/etc/exchanged/sync-password" in d["LoadCredential"]


def test_defaults_of_the_config_live_where_the_unit_lets_the_daemon_write() -> None:
    d = directives()
    run_dir = f"/run/{d['RuntimeDirectory'][0]}/"
    state_dir = f"/var/lib/{d['StateDirectory'][0]}/"
    assert ControlConfig().socket.startswith(run_dir)
    assert StateConfig().url.removeprefix("sqlite:///").startswith(state_dir)
    assert SqlPsaConfig().url.removeprefix("sqlite:///").startswith(state_dir)
    assert d["Group"] == [ControlConfig().group]  # the socket's group is the daemon's group


def test_hardening_keeps_what_the_daemon_needs() -> None:
    d = directives()
    families = " ".join(d["RestrictAddressFamilies"]).split()
    # Exchange, SMTP, PostgreSQL and Autotask over IPv4/IPv6; the control socket, journald and
    # sd_notify over AF_UNIX
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert d.get("PrivateNetwork", ["no"]) == ["no"]
    assert "any" not in " ".join(d.get("IPAddressDeny", []))  # outbound connections must work
    filters = d["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert "@chown" in filters  # chgrp of the control socket to control.group
    assert d["ProtectSystem"] == ["strict"]  # writable: only the Runtime/State directories
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["User"] == ["exchanged"]


def test_sysusers_and_tmpfiles(tmp_path: Path) -> None:
    sysusers = need("systemd-sysusers")
    tmpfiles = need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    done = subprocess.run([sysusers, f"--root={tmp_path}", str(PACKAGING / "exchanged.sysusers")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^exchanged:x:\d+:\d+:.*:/var/lib/exchanged:/usr/sbin/nologin$", passwd, re.M)
    assert re.search(r"^exchanged:x:\d+:", (tmp_path / "etc" / "group").read_text(), re.M)
    done = subprocess.run([tmpfiles, f"--root={tmp_path}", "--create", str(PACKAGING / "exchanged.tmpfiles")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "etc" / "exchanged").is_dir()


def test_memory_is_bounded_above_the_largest_answer() -> None:
    """Issue #14: a 1.5 GB answer took the daemon to 8.3 GB. The answer cap bounds one answer; the
    unit bounds the process, above what the capped answers in flight may take."""
    from exchanged.exchange.settings import ExchangeSettings

    d = directives()

    def mib(value: str) -> float:
        units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
        return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value) / 2**20

    high, top = mib(d["MemoryHigh"][0]), mib(d["MemoryMax"][0])
    s = ExchangeSettings(address="x")
    in_flight = 4 * s.max_answer_mb * s.max_connections  # parsed at about four times the bytes
    assert 100 + in_flight <= high * 1.05 < top, (high, top, in_flight)  # 100 MiB: docs/benchmarks.md


def test_the_packaged_unit_waits_for_a_config_and_names_the_missing_password() -> None:
    unit = directives("Unit")
    # inactive (not failed) until the operator has written a config; then a missing password is an
    # assertion naming the file rather than systemd 252's "Failed to set up credentials"
    assert unit["ConditionPathExists"] == ["/etc/exchanged/exchanged.yaml"]
    assert unit["AssertPathExists"] == ["/etc/exchanged/sync-password"]
    assert directives()["ExecStart"][0].split()[-2:] == ["--config", "/etc/exchanged/exchanged.yaml"]
    credential = next(c for c in directives()["LoadCredential"] if c.startswith("sync-password:"))
    assert credential.split(":", 1)[1] == unit["AssertPathExists"][0]


def test_documentation_names_the_man_pages_the_package_installs() -> None:
    rules = (PACKAGING.parents[1] / "debian" / "rules").read_text()
    pages = re.findall(r"man:([\w.]+)\((\d)\)", " ".join(directives("Unit")["Documentation"]))
    named = {f"{name}.{section}" for name, section in pages}
    assert named == {"exchanged.8", "exchangectl.1", "exchanged.yaml.5"}
    for name, section in pages:
        assert f"debian/generated/{name}.{section}" in rules  # dh_installman installs what manpages.py wrote
