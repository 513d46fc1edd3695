"""`exchanged demo --once`, the README's first command, run as a user runs it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def run_demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchanged", "demo", "--once", "--dir", str(workdir)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )


def test_demo_once_syncs_every_user_and_exits_0(tmp_path: Path) -> None:
    done = run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # the first cycle of every user, as `exchangectl sync --wait` and `status` show it
    assert "alice@example.test  ok" in out and "bob@example.test    ok" in out
    assert "$ exchangectl status" in out and "MAILBOX" in out and "NEXT RUN" in out
    assert "Try:" in out and "plan alice@example.test" in out
    # the Exchange-only demo appointments were imported into the PSA, the private one without details
    with sqlite3.connect(tmp_path / "psa.db") as db:
        rows = list(db.execute(
            "select title, coalesce(description, '') from appointments where origin = 'exchange'"))
    titles = [title for title, _ in rows]
    details = dict(rows)
    assert details["Quarterly review with Fabrikam"] == "Agenda: renewals, open tickets."
    assert details["Private appointment"] == ""  # imported without its subject and body
    assert "Dentist" not in titles
    # the daily series of 20 starting today lies inside recurring_future_days: 20 occurrences
    assert titles.count("Daily stand-up") == 20
    # the confirmation mails went to the SMTP sink
    assert "2 mail(s) in the SMTP sink" in out
    # no secret on the terminal
    assert "SECRET" not in out + done.stderr


def test_demo_is_rerunnable_on_its_own_directory(tmp_path: Path) -> None:
    assert run_demo(tmp_path).returncode == 0
    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    # a second run over the same data: the first cycle finds everything in place and writes nothing
    assert "alice@example.test  ok      no changes" in again.stdout, again.stdout
    assert "bob@example.test    ok      no changes" in again.stdout, again.stdout
