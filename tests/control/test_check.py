"""``exchangectl check``: the monitoring-plugins convention, state by state (pure evaluation), and
the exit codes of the command against a daemon that is not there."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchanged.ctl import CHECK_CRITICAL, CHECK_OK, CHECK_UNKNOWN, CHECK_WARNING, evaluate_check

NOW = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "running", "started_at": (NOW - timedelta(hours=5)).isoformat(), "paused": False,
        "interval_minutes": 15, "running": 0,
        "config": {"generation": 2, "last_reload": None},
        "exchange": {"server": "mail.contoso.com", "reachable": True, "login": "ok"},
        "users": [
            {"mailbox": f"u{n}@contoso.com", "enabled": True, "state": "idle", "last_result": "ok",
             "last_success": (NOW - timedelta(minutes=5 + n)).isoformat()} for n in range(4)],
    }
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def test_ok_with_perfdata() -> None:
    code, line = evaluate_check(status(), NOW)
    assert code == CHECK_OK
    summary, perf = line.split(" | ")
    assert summary == "4 users syncing, running"
    assert "users=4" in perf and "failing=0;1;4;0;4" in perf
    assert "oldest_success_age=480s;2700;5400;0" in perf  # 3 and 6 intervals of 15 min


def test_a_failing_user_is_a_warning_and_all_failing_critical() -> None:
    s = status()
    s["users"][1].update(state="error", last_result="error")
    code, line = evaluate_check(s, NOW)
    assert code == CHECK_WARNING and "1 of 4 users failing (u1@contoso.com)" in line
    for u in s["users"]:
        u.update(state="error", last_result="error")
    assert evaluate_check(s, NOW)[0] == CHECK_CRITICAL
    s["users"][0].update(state="idle", last_result="ok")
    assert evaluate_check(s, NOW, critical_failing=3)[0] == CHECK_CRITICAL
    assert evaluate_check(s, NOW, warning_failing=4)[0] == CHECK_OK


def test_the_oldest_last_success_against_the_thresholds() -> None:
    s = status()
    s["users"][2]["last_success"] = (NOW - timedelta(minutes=50)).isoformat()
    code, line = evaluate_check(s, NOW)
    assert code == CHECK_WARNING and "no successful cycle of u2@contoso.com for 50 min" in line
    assert evaluate_check(s, NOW, warning_age_min=60)[0] == CHECK_OK
    assert evaluate_check(s, NOW, warning_age_min=20, critical_age_min=45)[0] == CHECK_CRITICAL
    s["users"][3]["last_success"] = None  # never succeeded: counted since the daemon's start (5 h)
    code, line = evaluate_check(s, NOW)
    assert code == CHECK_CRITICAL and "u3@contoso.com for 300 min" in line


def test_exchange_down_or_login_refused_is_critical() -> None:
    code, line = evaluate_check(status(exchange={"server": "mail", "reachable": False}), NOW)
    assert code == CHECK_CRITICAL and "Exchange mail is not reachable" in line
    code, line = evaluate_check(status(exchange={"reachable": True, "login": "refused"}), NOW)
    assert code == CHECK_CRITICAL and "refuses the login of the sync account" in line


def test_paused_rejected_reload_and_held_back_deletions_are_warnings() -> None:
    assert evaluate_check(status(paused=True), NOW)[0] == CHECK_WARNING
    rejected = status(config={"generation": 2, "last_reload": {"result": "rejected"}})
    assert evaluate_check(rejected, NOW)[0] == CHECK_WARNING
    s = status()
    s["users"][0]["last_result"] = "held_back"
    code, line = evaluate_check(s, NOW)
    assert code == CHECK_WARNING and "deletions held back" in line


def test_a_failing_public_folder_cycle_is_a_warning() -> None:
    code, line = evaluate_check(status(public_folder={"state": "error", "last_result": "error"}), NOW)
    assert code == CHECK_WARNING and "public contacts folder" in line
    assert evaluate_check(status(public_folder={"state": "idle", "last_result": "ok"}), NOW)[0] == CHECK_OK


def test_disabled_is_ok_and_garbage_unknown() -> None:
    assert evaluate_check(status(state="disabled"), NOW)[0] == CHECK_OK
    assert evaluate_check({"no": "state"}, NOW)[0] == CHECK_UNKNOWN
    assert evaluate_check([], NOW)[0] == CHECK_UNKNOWN


@pytest.mark.parametrize("what", ["missing", "not-a-socket"])
def test_a_daemon_that_does_not_answer(tmp_path: Path, what: str) -> None:
    path = tmp_path / "control.sock"
    if what == "not-a-socket":
        path.write_text("")
    done = subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(path), "check"],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("EXCHANGED ") and len(done.stdout.splitlines()) == 1
    assert done.returncode in (CHECK_CRITICAL, CHECK_UNKNOWN), done.stdout
    if what == "missing":
        assert done.returncode == CHECK_CRITICAL and "does not answer" in done.stdout
