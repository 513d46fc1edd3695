"""Issue 16's points end to end: the real daemon process over the bundled EWS server (TLS), the sql
PSA (the sample data) in SQLite, cycles triggered with exchangectl, results looked at from outside.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.ews_daemon import PASSWORD, SVC, ews_daemon
from tests.daemon.harness import DaemonEnv

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice@example.test", "bob@example.test"
WRITES = ("CreateItem", "UpdateItem", "DeleteItem")


def ctl(env: DaemonEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(env.socket_path), *args],
                          capture_output=True, text=True, timeout=120)


def sync(env: DaemonEnv, *mailboxes: str, full: bool = False) -> None:
    for mailbox in mailboxes:
        done = ctl(env, "sync", mailbox, "--wait", *(("--full",) if full else ()))
        assert done.returncode == 0, done.stdout + done.stderr + env.stderr()[-3000:]


def writes(ews: Any) -> dict[str, int]:
    requests = ews.stats()["requests"]
    return {op: requests.get(op, 0) for op in WRITES}


def psa_rows(env: DaemonEnv, query: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(env.base / "psa.db")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def account(ews: Any, mailbox: str) -> Any:
    from exchangelib import IMPERSONATION, Account, Configuration, Credentials

    config = Configuration(service_endpoint=ews.url, credentials=Credentials(SVC, PASSWORD), auth_type="NTLM")
    return Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


# -- grommunio: date-times with nine fractional digits ---------------------------------------------

def test_grommunio_fractional_seconds_second_cycle_writes_nothing(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    with ews_daemon(tmp_path, now, [ALICE], users, ews_options={"datetime_style": "grommunio"}) as (env, ews):
        env.start_ready()
        sync(env, ALICE)
        tasks = list(account(ews, ALICE).tasks.all().only("subject"))
        assert len(tasks) == 2  # to-dos 500 and 502
        before = writes(ews)
        sync(env, ALICE, full=True)  # every item read again, in grommunio's style
        sync(env, ALICE, full=True)
        assert writes(ews) == before  # nothing rewritten: every date-time was read
        [(due,)] = psa_rows(env, "SELECT end_time FROM todos WHERE id = 500")
        assert due.startswith((now.replace(hour=0, minute=0, second=0)
                               + timedelta(days=1, hours=10.5)).strftime("%Y-%m-%dT%H:%M")), due
