"""Failures as an operator meets them, with the real daemon process, the bundled EWS server over
TLS, the sql PSA and a real SMTP sink: one mail per cause, fast answers when Exchange is down."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from exchanged.testing.smtp import SmtpSink
from tests.daemon.ews_daemon import PASSWORD, ews_daemon
from tests.daemon.harness import HANG_GUARD_S, DaemonEnv, NotifySocket, body_of, secret_file, wait_until

pytestmark = pytest.mark.e2e

MAILBOXES = [f"user{n:02}@example.test" for n in range(20)]


def ctl(env: DaemonEnv, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(env.socket_path), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_a_wrong_sync_password_with_20_users_is_one_mail(tmp_path: Path) -> None:
    users = [{"mailbox": m, "psa_resource": "1"} for m in MAILBOXES]
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path, now, MAILBOXES, users) as (env, _ews):
        env.extra["credentials"]["password_file"] = secret_file(tmp_path / "wrong-password", "WRONG")
        env.write_config(sync_interval_minutes=60)
        env.start_ready()
        done = ctl(env, "sync", "--wait", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        exchange = env.status()["exchange"]
        assert exchange["reachable"] is True and exchange["login"] == "refused", exchange
        shown = ctl(env, "status")
        assert "login of the sync account is REFUSED" in shown.stdout
        wait_until(lambda: env.smtp.messages, "the grouped error mail (15 s)", 60)
        mails = env.smtp.messages
        subjects = [m["Subject"] for m in mails]
        assert len(mails) == 1, subjects  # not one per user, and no "is now synced" to anybody
        assert subjects[0].startswith("[exchanged e2e] ERROR (20 mailboxes): ")
        assert "refused" in subjects[0]
        body = " ".join(body_of(mails[0]).split())
        assert "20 mailboxes, one cause: " in body
        assert all(m in body for m in MAILBOXES)
        # the operator fixes the password: one RESOLVED mail, and now each user is told once
        env.extra["credentials"]["password_file"] = secret_file(tmp_path / "right-password", PASSWORD)
        env.write_config(sync_interval_minutes=60)
        assert ctl(env, "reload", "--wait").returncode == 0
        done = ctl(env, "sync", "--wait", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert env.status()["exchange"]["login"] == "ok"
        assert env.stop() == 0
        later = [m["Subject"] for m in env.smtp.messages][1:]
    resolved = [s for s in later if " RESOLVED " in s]
    assert len(resolved) == 1 and resolved[0].startswith("[exchanged e2e] RESOLVED (20 mailboxes): "), later
    confirmations = [s for s in later if "is now synced" in s]
    assert len(confirmations) == 20 and len(later) == 21, later


def test_with_exchange_down_sync_wait_answers_with_the_error(tmp_path: Path) -> None:
    users = [{"mailbox": m, "psa_resource": "1"} for m in MAILBOXES[:2]]
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path, now, MAILBOXES[:2], users) as (env, _ews):
        with socket.socket() as sock:  # a port nobody listens on: Exchange is down
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env.extra["server"]["port"] = port
        env.write_config(sync_interval_minutes=60)
        env.start_ready()
        # --timeout 60: a daemon that has not answered by then fails with exit code 3
        done = ctl(env, "sync", "--wait", "--json", "--timeout", "60")
        assert done.returncode == 1, done.stdout + done.stderr
        results = json.loads(done.stdout)["results"]
        for mailbox in MAILBOXES[:2]:
            assert results[mailbox]["result"] == "error"
            assert f"connection to localhost:{port} refused" in results[mailbox]["error"]
        exchange = env.status()["exchange"]
        assert exchange["reachable"] is False and exchange["login"] == "not checked"
        assert env.stop() == 0
        subjects = [m["Subject"] for m in env.smtp.messages]
    assert len(subjects) == 1 and "ERROR (2 mailboxes)" in subjects[0], subjects


def _open_writer(fifo: Path) -> int:
    """The write end of ``fifo`` once a reader has opened it (ENXIO until then)."""
    def attempt() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return None

    fd: int = wait_until(attempt, "the daemon reading its config")
    return fd


def test_sigterm_during_the_start_is_a_clean_stop(tmp_path: Path) -> None:
    """``exchanged run`` as systemd starts it, stopped while it still reads its config (a FIFO
    holds it there): exit 0 with STOPPING=1, never killed by the signal's default action."""
    with SmtpSink() as smtp:
        notify = NotifySocket(tmp_path / "notify.sock")
        try:
            env = DaemonEnv(base=tmp_path, smtp=smtp, notify=notify, memory=False)
            (tmp_path / "psa.db").touch()
            text = yaml.safe_dump(env.config(server={"address": "mail.example.test", "port": 1}))
            fifo = tmp_path / "exchanged.yaml"
            os.mkfifo(fifo)
            proc = subprocess.Popen([sys.executable, "-m", "exchanged", "run", "--config", str(fifo)],
                                    env=env.env(), stdout=subprocess.DEVNULL,
                                    stderr=env.stderr_path.open("ab"))
            try:
                fd = _open_writer(fifo)
                proc.send_signal(signal.SIGTERM)  # in the middle of reading the config
                with os.fdopen(fd, "w") as writer:
                    writer.write(text)
                assert proc.wait(timeout=HANG_GUARD_S) == 0, env.stderr()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            notify.wait_for("STOPPING=1")
            assert "stop requested during the start" in env.stderr()
        finally:
            notify.close()


def test_check_and_metrics_of_a_running_daemon(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    users = [{"mailbox": m, "psa_resource": str(n + 1)} for n, m in enumerate(["alice@example.test",
                                                                                "bob@example.test"])]
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path, now, [u["mailbox"] for u in users], users) as (env, _ews):
        env.start_ready()
        assert ctl(env, "sync", "--wait").returncode == 0
        check = ctl(env, "check")
        assert check.returncode == 0, check.stdout
        assert check.stdout.startswith("EXCHANGED OK - 2 users syncing") and " | users=2 " in check.stdout
        assert ctl(env, "check", "--warning-age", "0").returncode == 1  # any age is too old now
        text = ctl(env, "metrics").stdout
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

        def value(name: str, **labels: str) -> float:
            return sum(s.value for s in samples
                       if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

        assert value("exchanged_requests_total", service="ews", operation="SyncFolderItems") > 0
        # the sql PSA's transactions too: a load per cycle and user
        assert value("exchanged_requests_total", service="sql", operation="load") >= 2
        assert value("exchanged_items_written_total", kind="appointment", side="exchange") > 0
        assert value("exchanged_cycles_total", result="ok") >= 2
        assert value("exchanged_exchange_reachable") == 1
        env.write_config(credentials={**env.extra["credentials"],
                                      "password_file": secret_file(tmp_path / "wrong", "WRONG")})
        assert ctl(env, "reload").returncode == 0
        ctl(env, "sync", "--wait")
        check = ctl(env, "check")
        assert check.returncode == 2 and "refuses the login of the sync account" in check.stdout
        assert env.stop() == 0
    down = ctl(env, "check")
    assert down.returncode == 2 and down.stdout.startswith("EXCHANGED CRITICAL - exchanged does not answer")


def test_a_psa_with_text_ids_imports_and_exports(tmp_path: Path) -> None:
    """The real daemon, EWS over TLS and a sql PSA whose tables use ``id TEXT PRIMARY KEY``: an
    Exchange appointment is imported (its row read back by its own id), a PSA one exported."""
    import sqlite3
    from datetime import timedelta

    from exchangelib import IMPERSONATION, Account, CalendarItem, Configuration, Credentials, EWSDateTime

    from tests.daemon.ews_daemon import PASSWORD, SVC

    alice = "alice@example.test"
    now = datetime.now(UTC).replace(microsecond=0)
    start = now.replace(hour=9, minute=0, second=0) + timedelta(days=2)
    with sqlite3.connect(tmp_path / "psa.db") as conn:
        conn.execute("CREATE TABLE resources (id TEXT PRIMARY KEY, email TEXT, first_name TEXT, "
                     "last_name TEXT, is_active INTEGER)")
        conn.execute("CREATE TABLE appointments (id TEXT PRIMARY KEY, resource_id TEXT, title TEXT, "
                     "description TEXT, start_time TEXT, end_time TEXT, last_modified TEXT, origin TEXT, "
                     "exchange_uid TEXT, show_as TEXT, is_private INTEGER)")
        conn.execute("INSERT INTO resources VALUES ('R-A', ?, 'Alice', 'A', 1)", (alice,))
        conn.execute("INSERT INTO appointments VALUES ('A-1', 'R-A', 'Visit Contoso', '', ?, ?, ?, 'psa', "
                     "NULL, 'busy', 0)", (f"{start + timedelta(hours=3):%Y-%m-%dT%H:%M:%SZ}",
                                          f"{start + timedelta(hours=4):%Y-%m-%dT%H:%M:%SZ}",
                                          f"{now:%Y-%m-%dT%H:%M:%SZ}"))
    with ews_daemon(tmp_path, now, [alice], [{"mailbox": alice, "psa_resource": "R-A"}]) as (env, ews):
        config = Configuration(service_endpoint=ews.url, credentials=Credentials(SVC, PASSWORD),
                               auth_type="NTLM")
        acc = Account(alice, config=config, autodiscover=False, access_type=IMPERSONATION)
        CalendarItem(account=acc, folder=acc.calendar, subject="Dentist",
                     start=EWSDateTime.from_datetime(start), end=EWSDateTime.from_datetime(
                         start + timedelta(hours=1))).save(send_meeting_invitations="SendToNone")
        env.start_ready()
        for _ in range(2):  # the second cycle reads back what the first wrote: nothing fails
            done = ctl(env, "sync", alice, "--wait", "--json")
            assert done.returncode == 0, done.stdout + env.stderr()[-3000:]
            assert json.loads(done.stdout)["results"][alice]["result"] == "ok", done.stdout
        assert {i.subject for i in acc.calendar.all()} == {"Dentist", "Visit Contoso"}
        history = json.loads(ctl(env, "history", alice, "--json").stdout)
        assert any(h["kind"] == "imported" and h["subject"] == "Dentist" for h in history), history
        assert env.stop() == 0
    with sqlite3.connect(tmp_path / "psa.db") as conn:
        rows = conn.execute("SELECT id, title, origin FROM appointments ORDER BY title").fetchall()
    assert [(r[1], r[2]) for r in rows] == [("Dentist", "exchange"), ("Visit Contoso", "psa")]
    assert rows[0][0].startswith("exchanged-")  # its id, made by the connector, not NULL


def test_sigterm_repeated_until_the_process_is_gone_is_still_exit_0(tmp_path: Path) -> None:
    """systemd (or an impatient operator) may send SIGTERM again while the daemon stops: also one
    arriving while the Python interpreter shuts down must not turn exit 0 into "killed"."""
    import time

    with SmtpSink() as smtp:
        notify = NotifySocket(tmp_path / "notify.sock")
        try:
            env = DaemonEnv(base=tmp_path, smtp=smtp, notify=notify)
            env.start_ready()
            assert env.proc is not None
            deadline = time.monotonic() + HANG_GUARD_S
            while env.proc.poll() is None and time.monotonic() < deadline:
                env.proc.send_signal(signal.SIGTERM)
                time.sleep(0.001)
            assert env.proc.wait(timeout=HANG_GUARD_S) == 0, env.stderr()[-2000:]
        finally:
            env.kill()
            notify.close()
