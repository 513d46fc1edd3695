"""Pushed changes end to end: the real daemon process over the bundled EWS server (TLS, streaming
notifications), the sql PSA in SQLite, the SQLite state store. An edit made in Outlook (exchangelib
against the server) reaches the PSA without waiting for the 10-minute interval; the streaming
connection dropped by the server, an expired subscription, the connection limit and a killed
daemon lose nothing and duplicate nothing.

No assertion on time: every test waits for a condition with a generous timeout, and the interval
(10 minutes, the minimum) is far longer than any of these tests waits, so a change can only have
arrived by push, by a reconnect's cycle, or by the start-up cycle."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchanged.testing.ews.streaming import StreamingLimits
from tests.daemon.ews_daemon import PASSWORD, SVC, add_psa_appointments, ews_daemon
from tests.daemon.harness import DaemonEnv, wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice@example.test", "bob@example.test"
PATIENCE_S = 60.0  # never asserted as a duration; only against a hung run
N = 6  # our appointments of alice


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[tuple[DaemonEnv, Any, list[str]]]:
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}, {"mailbox": BOB, "psa_resource": "2"}]
    limits = StreamingLimits(keepalive_s=1.0, subscription_ttl_s=5.0)
    with ews_daemon(tmp_path, now, [ALICE, BOB], users, ews_options={"streaming": limits}) as (env, ews):
        keys = add_psa_appointments(tmp_path, now, 1, 9000, N, "Push")
        env.start_ready()
        settle(env, ews)
        yield env, ews, keys


def settle(env: DaemonEnv, ews: Any) -> None:
    """Both mailboxes pushed, alice's first cycle (the start-up schedule's, at once) done."""
    wait_until(lambda: all(u.get("push") == "pushed" for u in env.status()["users"])
               and env.user(ALICE)["last_result"] == "ok", "both pushed, alice synced", PATIENCE_S)
    wait_until(lambda: len(appointments(ews, ALICE, "Push")) == N, "alice's appointments exported",
               PATIENCE_S)


def account(ews: Any, mailbox: str) -> Any:
    from exchangelib import IMPERSONATION, Account, Configuration, Credentials

    config = Configuration(service_endpoint=ews.url, credentials=Credentials(SVC, PASSWORD), auth_type="NTLM")
    return Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


def appointments(ews: Any, mailbox: str, prefix: str) -> list[Any]:
    return [i for i in account(ews, mailbox).calendar.all().only("subject", "start", "end")
            if (i.subject or "").startswith(prefix)]


def outlook_lengthens(ews: Any, subject: str, minutes: int) -> datetime:
    """A user makes the appointment ``subject`` longer in Outlook; returns its new end."""
    [item] = [i for i in appointments(ews, ALICE, subject) if i.subject == subject]
    item.end = item.end + timedelta(minutes=minutes)
    item.save(update_fields=["end"], send_meeting_invitations="SendToNone")
    return utc(item.end)


def utc(ews_time: Any) -> datetime:
    return datetime.fromtimestamp(ews_time.timestamp(), UTC)


def psa_end(env: DaemonEnv, key: str) -> str:
    con = sqlite3.connect(env.base / "psa.db")
    try:
        [(end,)] = con.execute("SELECT end_time FROM appointments WHERE id = ?",
                               (int(key.split(":")[1]),)).fetchall()
        return str(end)
    finally:
        con.close()


def arrives(env: DaemonEnv, key: str, end: datetime, what: str) -> None:
    wait_until(lambda: psa_end(env, key).startswith(end.strftime("%Y-%m-%dT%H:%M")), what, PATIENCE_S)


def cycles(env: DaemonEnv, mailbox: str) -> list[dict[str, Any]]:
    out = []
    for line in env.stderr().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "cycle started" and rec.get("mailbox") == mailbox:
            out.append(rec)
    return out


def no_duplicates(env: DaemonEnv, ews: Any) -> None:
    subjects = [i.subject for i in appointments(ews, ALICE, "Push")]
    assert sorted(subjects) == sorted(set(subjects)) and len(subjects) == N, subjects
    con = sqlite3.connect(env.base / "psa.db")
    try:
        [(rows,)] = con.execute("SELECT COUNT(*) FROM appointments WHERE title LIKE 'Push %'").fetchall()
    finally:
        con.close()
    assert rows == N


def test_an_outlook_edit_is_pushed_to_the_psa(pushed: tuple[DaemonEnv, Any, list[str]]) -> None:
    env, ews, keys = pushed
    end = outlook_lengthens(ews, "Push 0", 30)
    arrives(env, keys[0], end, "the Outlook edit in the PSA (pushed)")
    assert env.user(ALICE)["push"] == "pushed" and env.user(ALICE)["push_note"] is None
    assert any(c.get("reason") == "push" for c in cycles(env, ALICE))
    no_duplicates(env, ews)


def test_a_burst_of_edits_is_a_few_cycles(pushed: tuple[DaemonEnv, Any, list[str]]) -> None:
    env, ews, keys = pushed
    before = len(cycles(env, ALICE))
    [item] = [i for i in appointments(ews, ALICE, "Push 1") if i.subject == "Push 1"]
    for n in range(50):  # 50 edits of one appointment in a row, as a user dragging it around
        item.end = item.end + timedelta(minutes=1)
        item.save(update_fields=["end"], send_meeting_invitations="SendToNone")
        if n == 0:
            first_end = item.end
    assert first_end is not None
    arrives(env, keys[1], utc(item.end), "the last of 50 edits in the PSA")
    wait_until(lambda: env.user(ALICE)["state"] == "idle", "alice idle", PATIENCE_S)
    burst = cycles(env, ALICE)[before:]
    assert 1 <= len(burst) <= 6, [c.get("reason") for c in burst]
    no_duplicates(env, ews)


def test_a_dropped_connection_and_an_expired_subscription_lose_nothing(
        pushed: tuple[DaemonEnv, Any, list[str]]) -> None:
    env, ews, keys = pushed
    opened = len(ews.stats()["streaming"]["connections"])
    ews.drop_streams()
    end = outlook_lengthens(ews, "Push 2", 15)  # made while the stream is down or reconnecting
    arrives(env, keys[2], end, "an edit made around a dropped connection")
    wait_until(lambda: len(ews.stats()["streaming"]["connections"]) > opened, "a new connection")

    ews.expire_subscriptions()
    end = outlook_lengthens(ews, "Push 3", 15)  # made while there is no subscription at all
    arrives(env, keys[3], end, "an edit made while the subscription had expired")
    wait_until(lambda: env.user(ALICE)["push"] == "pushed", "subscribed again")
    end = outlook_lengthens(ews, "Push 4", 15)
    arrives(env, keys[4], end, "an edit pushed over the new subscription")
    no_duplicates(env, ews)


def test_the_connection_limit_makes_mailboxes_polled_until_a_slot_frees(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    limits = StreamingLimits(keepalive_s=1.0, max_connections=0)
    with ews_daemon(tmp_path, now, [ALICE], users, ews_options={"streaming": limits}) as (env, ews):
        keys = add_psa_appointments(tmp_path, now, 1, 9000, N, "Push")
        env.start_ready()
        polled = wait_until(lambda: "failed" in (env.user(ALICE).get("push_note") or "") and env.user(ALICE),
                            "alice polled for the connection limit", PATIENCE_S)
        assert polled["push"] == "polled" and "ErrorExceededConnectionCount" in polled["push_note"], polled
        wait_until(lambda: len(appointments(ews, ALICE, "Push")) == N, "exported by the start-up cycle",
                   PATIENCE_S)
        ews.streaming.max_connections = 10  # a slot frees: the daemon's retry gets it
        wait_until(lambda: env.user(ALICE)["push"] == "pushed", "pushed once a slot is free", PATIENCE_S)
        end = outlook_lengthens(ews, "Push 0", 30)
        arrives(env, keys[0], end, "a pushed edit after the limit lifted")
        no_duplicates(env, ews)


def test_a_daemon_killed_mid_stream_misses_nothing(pushed: tuple[DaemonEnv, Any, list[str]]) -> None:
    env, ews, keys = pushed
    env.kill()
    assert env.proc is not None
    env.proc.wait(timeout=PATIENCE_S)
    end = outlook_lengthens(ews, "Push 5", 45)  # while no daemon runs
    env.start_ready()
    arrives(env, keys[5], end, "an edit made while the daemon was dead")
    wait_until(lambda: env.user(ALICE)["push"] == "pushed", "subscribed again after the restart", PATIENCE_S)
    end = outlook_lengthens(ews, "Push 0", 5)
    arrives(env, keys[0], end, "a pushed edit after the restart")
    no_duplicates(env, ews)


def test_a_psa_edit_reaches_exchange_after_the_probe_and_only_its_user_cycles(tmp_path: Path) -> None:
    """``sync.psa_poll_seconds``: the probe names the changed resource; only that user's cycle
    runs, and the edit is in Exchange long before the 10-minute interval."""
    from tests.reliability.harness import psa_execute, ts

    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}, {"mailbox": BOB, "psa_resource": "2"}]
    limits = StreamingLimits(keepalive_s=1.0)
    with ews_daemon(tmp_path, now, [ALICE, BOB], users, sync={"psa_poll_seconds": 5},
                    ews_options={"streaming": limits}) as (env, ews):
        keys = add_psa_appointments(tmp_path, now, 1, 9000, N, "Push")
        env.start_ready()
        settle(env, ews)
        wait_until(lambda: env.user(ALICE)["state"] == "idle", "alice idle", PATIENCE_S)
        bob_before = len(cycles(env, BOB))
        psa_execute(tmp_path, ("UPDATE appointments SET title = ?, last_modified = ? WHERE id = ?",
                               ("Push 0 (moved in the PSA)", ts(now + timedelta(minutes=1)),
                                int(keys[0].split(":")[1]))))
        wait_until(lambda: appointments(ews, ALICE, "Push 0 (moved"), "the PSA edit in Exchange", PATIENCE_S)
        # the probe saw it (a pushed cycle after the daemon's own writes may have been quicker)
        wait_until(lambda: any(c.get("reason") == "psa" for c in cycles(env, ALICE)), "alice's psa cycle",
                   PATIENCE_S)
        assert not [c for c in cycles(env, BOB)[bob_before:] if c.get("reason") == "psa"]
        no_duplicates(env, ews)


def test_a_stop_does_not_wait_for_a_quiet_stream(tmp_path: Path) -> None:
    """A stream with nothing to say (the server's keep-alive an hour away here; Exchange's is about
    30 s) must not hold a stop: the daemon's grace is 8 s and systemd kills it at TimeoutStopSec=30.
    Closing the response while the worker thread was blocked reading it froze the event loop until
    the next bytes arrived (found by tests/system: stop took 30 s and ended in SIGKILL)."""
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}, {"mailbox": BOB, "psa_resource": "2"}]
    limits = StreamingLimits(keepalive_s=3600.0)
    with ews_daemon(tmp_path, now, [ALICE, BOB], users, ews_options={"streaming": limits}) as (env, _ews):
        env.start_ready()
        wait_until(lambda: all(u.get("push") == "pushed" for u in env.status()["users"]), "both pushed",
                   PATIENCE_S)
        # stop() waits HANG_GUARD_S (30 s, what systemd allows) and raises if the daemon is still up
        assert env.stop() == 0


@pytest.mark.postgres
def test_a_notify_from_a_postgresql_psa_brings_the_edit_at_once(tmp_path: Path, pg_url: str) -> None:
    """``psa.listen_channel``: the probe's interval is an hour and the mailbox is polled (no
    streaming), so only the NOTIFY of the documented triggers can bring a PSA edit to Exchange
    within this test's wait: the daemon LISTENs, probes at once and cycles alice."""
    import uuid

    import psycopg

    from exchanged.psa.listen import trigger_sql
    from exchanged.psa.sample import seed_sample

    now = datetime.now(UTC).replace(microsecond=0)
    channel = f"exchanged_{uuid.uuid4().hex[:8]}"  # channels are per database: one of this test's own
    seed_sample(pg_url, now)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(trigger_sql(channel))
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    with ews_daemon(tmp_path, now, [ALICE], users, sync={"psa_poll_seconds": 3600},
                    ews_options={"streaming": StreamingLimits(max_connections=0)}) as (env, ews):
        env.write_config(psa={"connector": "sql", "url": pg_url, "listen_channel": channel})
        env.start_ready()
        wait_until(lambda: appointments(ews, ALICE, "Quarterly review with Contoso"), "the first export",
                   PATIENCE_S)
        wait_until(lambda: env.user(ALICE)["state"] == "idle", "alice idle", PATIENCE_S)

        def probed() -> int:  # cycles started by the PSA probe
            return sum(1 for c in cycles(env, ALICE) if c.get("reason") == "psa")

        before = probed()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE appointments SET title = %s, last_modified = %s WHERE id = 300",
                         ("Quarterly review (moved in the PSA)", now + timedelta(minutes=1)))
        # a start-up cycle may still carry the edit; the probe's cycle is the NOTIFY's alone
        wait_until(lambda: probed() > before, "a cycle started by the probe the NOTIFY woke", PATIENCE_S)
        wait_until(lambda: appointments(ews, ALICE, "Quarterly review (moved in the PSA)"),
                   "the PSA edit in Exchange", PATIENCE_S)
        assert "PSA change notifications failed" not in env.stderr()
