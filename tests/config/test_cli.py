"""`exchanged check-config` as the operator runs it: a real subprocess, exit codes and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.config.helpers import BASE, base, write_config, write_password

SECRET = "Cli-Secret-Value-99"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "EXCHANGED_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "exchanged", "check-config", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def test_valid_config_exit_0(tmp_path: Path) -> None:
    path = write_config(tmp_path, base(tmp_path) + '  - mailbox: bob@example.com\n    psa_resource: "2"\n'
                        "    enabled: false\n")
    done = run("--config", str(path))
    assert done.returncode == 0, done.stderr
    assert f"OK: {path}: 2 users (1 enabled)" in done.stdout
    assert "Traceback" not in done.stderr


def test_invalid_config_lists_every_problem_exit_1(tmp_path: Path) -> None:
    text = base(tmp_path).replace("sync_interval_minutes: 15", "sync_interval_minutes: 3")
    text = text.replace("address: mail.example.com", "address: 10.0.0.1")
    path = write_config(tmp_path, text)
    done = run("--config", str(path))
    assert done.returncode == 1
    assert f"{path}:3: server.address: " in done.stderr
    assert f"{path}:4: sync_interval_minutes: must be >= 10" in done.stderr
    assert "Traceback" not in done.stderr


def test_json_output(tmp_path: Path) -> None:
    pw = write_password(tmp_path, SECRET, 0o644)
    path = write_config(tmp_path, BASE.format(pw=pw) + "bogus: 1\n")
    done = run("--config", str(path), "--json")
    assert done.returncode == 1
    doc = json.loads(done.stdout)
    assert doc["valid"] is False and doc["path"] == str(path)
    by_path = {e["path"]: e for e in doc["errors"]}
    assert by_path["credentials.password_file"]["line"] == 7
    assert "chmod 600" in by_path["credentials.password_file"]["message"]
    assert by_path["bogus"]["line"] == 13
    assert SECRET not in done.stdout and SECRET not in done.stderr

    pw.chmod(0o600)
    done = run("--config", str(path).replace("exchanged.yaml", "ok.yaml"), "--json")
    assert json.loads(done.stdout)["errors"][0]["message"].startswith("file not found")
    good = write_config(tmp_path, BASE.format(pw=pw), name="good.yaml")
    done = run("--config", str(good), "--json")
    assert done.returncode == 0
    doc = json.loads(done.stdout)
    access = doc.pop("access")  # who the files were checked as (tests/config/test_service_access.py)
    assert access["problems"] == [] and access["note"].startswith("checked as ")
    assert doc == {"valid": True, "path": str(good), "errors": [], "warnings": [], "users": 1,
                   "enabled_users": 1}
    assert SECRET not in done.stdout


def test_missing_file_exit_1(tmp_path: Path) -> None:
    done = run("--config", str(tmp_path / "absent.yaml"))
    assert done.returncode == 1
    assert "file not found" in done.stderr and "Traceback" not in done.stderr


def test_connect_to_nothing_fails_clearly(tmp_path: Path) -> None:
    # loopback and a closed port: nothing leaves this host; nothing listens on port 1
    text = base(tmp_path).replace("  address: mail.example.com\n", "  address: localhost\n  port: 1\n")
    path = write_config(tmp_path, text)
    done = run("--config", str(path), "--connect")
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout
    assert "connect FAILED:" in done.stdout and "failed" in done.stdout
    done = run("--config", str(path), "--connect", "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == 1 and doc["valid"] is True and doc["connect_ok"] is False
    assert any(c["result"] == "failed" for c in doc["connect"])
