"""``exchanged check-config --connect`` and the daemon's config objects, end to end against the EWS
test server (the CLI in a subprocess, the server in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchanged.config import parse_config
from exchanged.exchange import check_connect, open_account
from exchanged.model import FolderKind
from exchanged.testing.ews import EwsTestServer

from .conftest import ALICE


def write_config(tmp_path: Path, server: EwsTestServer, *, password: str = "SECRET-svc",
                 auth_type: str = "ntlm") -> Path:
    pw = tmp_path / "sync-password"
    pw.write_text(password)
    pw.chmod(0o600)
    path = tmp_path / "exchanged.yaml"
    path.write_text(f"""
profile_name: test
server: {{address: localhost, port: {server.port}, ca_bundle: {server.ca_file}, version: Exchange2016}}
sync_interval_minutes: 15
credentials: {{username: svc@example.test, password_file: {pw}, auth_type: {auth_type}}}
sync: {{category: PSA-test}}
users:
  - {{mailbox: {ALICE}, psa_resource: "1"}}
  - {{mailbox: nobody@example.test, psa_resource: "2"}}
  - {{mailbox: bob@example.test, psa_resource: "3", enabled: false}}
""")
    return path


def test_check_connect_with_the_daemons_config(tmp_path: Path, ews_server: EwsTestServer) -> None:
    cfg = parse_config(write_config(tmp_path, ews_server).read_text(), "exchanged.yaml")
    results = check_connect(cfg)
    assert [(r.subject, r.ok) for r in results] == [
        ("login", True), ("ews", True), (ALICE, True), ("nobody@example.test", False)]
    assert results[-1].message.startswith("GetFolder calendar: Exchange has no mailbox")


async def test_open_account_with_the_daemons_config(tmp_path: Path, ews_server: EwsTestServer) -> None:
    cfg = parse_config(write_config(tmp_path, ews_server, auth_type="basic").read_text(), "exchanged.yaml")
    acc = open_account(cfg)
    try:
        assert acc.settings.category == "PSA-test"
        assert acc.settings.service_endpoint == ews_server.url
        assert await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"]) == {}
    finally:
        await acc.aclose()


def test_the_cli(tmp_path: Path, ews_server: EwsTestServer) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    good = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                           str(write_config(tmp_path, ews_server))], capture_output=True, text=True,
                          env=env, timeout=120)
    assert good.returncode == 1, good.stderr  # nobody@example.test has no mailbox
    assert "ok       login: logged in as svc@example.test (ntlm)" in good.stdout
    assert f"ok       {ALICE}: calendar reachable (impersonation)" in good.stdout
    assert "failed   nobody@example.test: GetFolder calendar: Exchange has no mailbox" in good.stdout
    wrong = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                            str(write_config(tmp_path, ews_server, password="not-it"))],
                           capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 1
    assert "failed   login:" in wrong.stdout and "was refused" in wrong.stdout
    assert "not-it" not in wrong.stdout + wrong.stderr  # secrets are never printed


def test_the_cli_checks_the_sql_psa_tables(tmp_path: Path, ews_server: EwsTestServer) -> None:
    import sqlite3

    psa = tmp_path / "psa.db"
    with sqlite3.connect(psa) as conn:  # an existing PSA whose appointments lack three columns
        conn.execute("CREATE TABLE appointments (id TEXT PRIMARY KEY, resource_id TEXT, title TEXT, "
                     "description TEXT, start_time TEXT, end_time TEXT, last_modified TEXT, origin TEXT)")
    path = write_config(tmp_path, ews_server)
    path.write_text(path.read_text() + f"psa: {{connector: sql, url: 'sqlite:///{psa}'}}\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                           str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert ("failed   psa: the PSA tables do not fit the sql connector: table appointments has no "
            "column exchange_uid, show_as, is_private") in done.stdout, done.stdout
    with sqlite3.connect(psa) as conn:
        for column in ("exchange_uid TEXT", "show_as TEXT", "is_private INTEGER"):
            conn.execute(f"ALTER TABLE appointments ADD COLUMN {column}")
    done = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                           str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert "the tables fit (text ids in appointments)" in done.stdout, done.stdout


def test_the_cli_checks_smtp_and_the_state_database(tmp_path: Path, ews_server: EwsTestServer) -> None:
    from exchanged.testing.smtp import SmtpSink

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    secret = tmp_path / "smtp-password"
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    base = write_config(tmp_path, ews_server)

    def check(password: str) -> str:
        secret.write_text(password)
        secret.chmod(0o600)
        base.write_text(base.read_text().split("notifications:")[0] + f"""notifications:
  email: ops@example.test
  smtp: {{host: 127.0.0.1, port: {sink.port}, username: relay, password_file: {secret}}}
state: {{url: 'sqlite:///{state}'}}
""")
        done = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                               str(base)], capture_output=True, text=True, env=env, timeout=120)
        assert "Traceback" not in done.stdout + done.stderr
        return done.stdout

    with SmtpSink(users={"relay": "Relay-pw1"}) as sink:
        out = check("Relay-pw1")
        assert (f"ok       smtp: 127.0.0.1:{sink.port} (none): connected, logged in as relay; "
                "no mail sent") in out
        assert f"warning  state: {state} does not exist yet: the daemon creates it" in out
        assert not state.exists()  # the check creates nothing
        assert sink.messages == []
        out = check("Wrong-pw2")
        assert "failed   smtp: SMTP server 127.0.0.1" in out and "refused the login of relay: 535" in out
        assert "Wrong-pw2" not in out
    state.write_bytes(b"this is not a database" * 100)
    with SmtpSink(users={"relay": "Relay-pw1"}) as sink:
        out = check("Relay-pw1")
    assert "failed   state:" in out, out


@pytest.mark.postgres
def test_the_cli_checks_the_listen_of_a_postgresql_psa(tmp_path: Path, ews_server: EwsTestServer,
                                                       pg_url: str) -> None:
    """``psa.listen_channel``: check-config --connect says whether the triggers notify the channel
    (a warning naming the tables without one, and the fix), not only that the tables fit."""
    import psycopg

    from exchanged.psa.listen import trigger_sql
    from exchanged.psa.sample import seed_sample

    seed_sample(pg_url, datetime.now(UTC))
    path = write_config(tmp_path, ews_server)
    path.write_text(path.read_text()
                    + f"psa: {{connector: sql, url: '{pg_url}', listen_channel: exchanged_psa}}\n")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def connect() -> str:
        done = subprocess.run([sys.executable, "-m", "exchanged", "check-config", "--connect", "--config",
                               str(path)], capture_output=True, text=True, env=env, timeout=120)
        return done.stdout

    before = connect()
    assert "psa listen:" in before and "no trigger notifies it on appointments" in before, before
    assert "Changes pushed by PostgreSQL" in before, before
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(trigger_sql("exchanged_psa"))
    after = connect()
    assert "ok       psa listen:" in after and "the triggers notify it" in after, after
