"""Issue 16's points end to end: the real daemon process over the bundled EWS server (TLS), the sql
PSA (the sample data) in SQLite, cycles triggered with exchangectl, results looked at from outside.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.daemon.ews_daemon import PASSWORD, SVC, ews_daemon, graph_writes
from tests.daemon.harness import DaemonEnv
from tests.reliability.harness import psa_execute, ts

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


def all_writes(ews: Any, adapter: str) -> dict[str, int]:
    """What the daemon wrote over the adapter it speaks (EWS operations or Graph writes)."""
    return graph_writes(ews.graph) if adapter == "graph" else writes(ews)


def psa_rows(env: DaemonEnv, query: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(env.base / "psa.db")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def account(ews: Any, mailbox: str, zone: ZoneInfo | None = None) -> Any:
    """An outside client of ``mailbox`` (exchangelib), in ``zone`` (default UTC) like an Outlook there."""
    from exchangelib import IMPERSONATION, Account, Configuration, Credentials, EWSTimeZone

    config = Configuration(service_endpoint=ews.url, credentials=Credentials(SVC, PASSWORD), auth_type="NTLM")
    return Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION,
                   default_timezone=EWSTimeZone(zone.key if zone else "UTC"))


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


# -- time zones: each mailbox's days in its own zone, never the host's -------------------------------

NEW_YORK, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")
# US summer time starts 2027-03-14, the EU's 2027-03-28: every case below straddles one
TZ_TODOS = {  # to-do id -> (resource, due in the owner's zone, the due day the mailbox must show)
    600: (1, datetime(2027, 3, 13, 21, 0, tzinfo=NEW_YORK), date(2027, 3, 13)),  # EST: 02:00Z the 14th
    601: (1, datetime(2027, 3, 15, 21, 0, tzinfo=NEW_YORK), date(2027, 3, 15)),  # EDT: 01:00Z the 16th
    602: (2, datetime(2027, 3, 27, 0, 30, tzinfo=BERLIN), date(2027, 3, 27)),  # CET: 23:30Z the 26th
    603: (2, datetime(2027, 3, 29, 0, 30, tzinfo=BERLIN), date(2027, 3, 29)),  # CEST: 22:30Z the 28th
}


def test_days_are_the_mailboxes_zones_across_dst_never_the_hosts(tmp_path: Path) -> None:
    from exchangelib import CalendarItem, EWSDate

    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"},  # New York, as Exchange says
             {"mailbox": BOB, "psa_resource": "2", "time_zone": "Europe/Berlin"}]  # the config wins
    zones = {ALICE: "Eastern Standard Time", BOB: "Tokyo Standard Time"}
    with ews_daemon(tmp_path, now, [ALICE, BOB], users,
                    ews_options={"mailbox_timezones": zones}) as (env, ews):
        env.extra_env["TZ"] = "Asia/Tokyo"  # the host's zone: used for nothing
        psa_execute(tmp_path, *[
            ("INSERT INTO todos (id, assigned_resource_id, action_type, description, start_time, end_time, "
             "last_modified) VALUES (?, ?, 'Call', ?, ?, ?, ?)",
             (tid, rid, f"zone test {tid}", ts(due), ts(due), ts(now)))
            for tid, (rid, due, _day) in TZ_TODOS.items()])
        # all-day items made in Outlook, on the days the clocks change
        for mailbox, day in ((ALICE, date(2027, 3, 14)), (BOB, date(2027, 3, 28))):
            acc = account(ews, mailbox, zone=NEW_YORK if mailbox == ALICE else BERLIN)
            CalendarItem(account=acc, folder=acc.calendar, subject=f"Holiday {mailbox}", is_all_day=True,
                         start=EWSDate.from_date(day), end=EWSDate.from_date(day)
                         ).save(send_meeting_invitations="SendToNone")
        env.start_ready()
        sync(env, ALICE, BOB)

        for mailbox in (ALICE, BOB):
            due = {t.body.split("\n")[0]: t.due_date for t in account(ews, mailbox).tasks.all()
                   if "zone test" in str(t.body)}
            want = {f"zone test {tid}": day for tid, (rid, _due, day) in TZ_TODOS.items()
                    if rid == (1 if mailbox == ALICE else 2)}
            assert due == want, (mailbox, due)
        # imported all-day items: midnight to midnight in the mailbox's zone (23-hour days)
        rows = dict(psa_rows(env, "SELECT title, start_time || ' ' || end_time FROM appointments "
                                  "WHERE origin = 'exchange' AND title LIKE 'Holiday %'"))
        assert rows[f"Holiday {ALICE}"].split() == ["2027-03-14T05:00:00Z", "2027-03-15T04:00:00Z"], rows
        assert rows[f"Holiday {BOB}"].split() == ["2027-03-27T23:00:00Z", "2027-03-28T22:00:00Z"], rows

        before = writes(ews)
        sync(env, ALICE, BOB)
        assert writes(ews) == before  # stable: nothing is rewritten for a zone

        # moved to another day in Outlook, across the change: the PSA keeps its time of day there
        [task] = [t for t in account(ews, ALICE).tasks.all() if "zone test 600" in str(t.body)]
        task.due_date = EWSDate(2027, 3, 15)
        task.save(update_fields=["due_date"])
        sync(env, ALICE)
        [(due_row,)] = psa_rows(env, "SELECT end_time FROM todos WHERE id = 600")
        assert due_row == "2027-03-16T01:00:00Z"  # 21:00 EDT


# -- reminders: set as the settings say, the user's own kept -----------------------------------------

def reminder(item: Any) -> Any:
    if not item.reminder_is_set:
        return None
    return item.reminder_due_by if item.__class__.__name__ == "Task" else item.reminder_minutes_before_start


@pytest.mark.parametrize("adapter", ["ews", "graph"])
def test_reminders_follow_the_setting_and_the_users_own_are_kept(tmp_path: Path, adapter: str) -> None:
    """Over Graph too: the daemon speaks Graph, Outlook's side is looked at over EWS on the same store."""
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    with ews_daemon(tmp_path, now, [ALICE], users, sync={"category": "PSA"}, adapter=adapter) as (env, ews):
        env.start_ready()
        sync(env, ALICE)
        acc = account(ews, ALICE)
        cal = {i.subject: i for i in acc.calendar.all()}
        # defaults as Outlook's: 15 minutes for calendar items, no reminder for tasks
        assert reminder(cal["Quarterly review with Contoso"]) == 15
        assert reminder(cal["Service call: Contoso Ltd: Replace the firewall"]) == 15
        assert reminder(cal["Kick-off Fabrikam"]) is None  # already past: no overdue pop-up
        # over Graph the to-dos are To Do tasks in the list "PSA" (a task folder EWS sees too)
        tasks = acc.tasks if adapter == "ews" else acc.msg_folder_root / "PSA"
        [task] = [t for t in tasks.all() if "Call Ann" in str(t.body)]
        assert reminder(task) is None
        # the user sets their own reminder on one appointment in Outlook
        visit = cal["Site visit Northwind"]
        visit.reminder_minutes_before_start = 60
        visit.save(update_fields=["reminder_minutes_before_start"], send_meeting_invitations="SendToNone")
        sync(env, ALICE)
        assert reminder(next(i for i in acc.calendar.all() if i.subject == "Site visit Northwind")) == 60

        env.write_config(sync={"category": "PSA", "reminder_minutes": {"appointments": 30, "todos": 10}})
        applied = ctl(env, "reload", "--wait", "--json")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        sync(env, ALICE)
        cal = {i.subject: i for i in acc.calendar.all()}
        assert reminder(cal["Quarterly review with Contoso"]) == 30  # already exported: updated
        assert reminder(cal["Site visit Northwind"]) == 60  # the user's: kept
        assert reminder(cal["Service call: Contoso Ltd: Replace the firewall"]) == 15  # not changed
        [task] = [t for t in tasks.all() if "Call Ann" in str(t.body)]
        [(start,)] = psa_rows(env, "SELECT start_time FROM todos WHERE id = 500")
        assert reminder(task) == datetime.fromisoformat(start.replace("Z", "+00:00")) - timedelta(minutes=10)

        before = all_writes(ews, adapter)
        sync(env, ALICE)
        assert all_writes(ews, adapter) == before


# -- attendees: imported with all_details, never with no_details, no invitation ever -------------------

@pytest.mark.parametrize("adapter", ["ews", "graph"])
def test_attendees_are_imported_with_all_details_and_follow_changes(tmp_path: Path, adapter: str) -> None:
    from exchangelib import Attendee as EwsAttendee
    from exchangelib import CalendarItem, Mailbox

    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"},
             {"mailbox": BOB, "psa_resource": "2", "settings": {"import_appointments": "no_details"}}]
    with ews_daemon(tmp_path, now, [ALICE, BOB], users, adapter=adapter) as (env, ews):
        start = now.replace(hour=0, minute=0, second=0) + timedelta(days=3, hours=14)

        def meeting(mailbox: str, subject: str, people: list[tuple[str, str, str]]) -> Any:
            acc = account(ews, mailbox)
            item = CalendarItem(account=acc, folder=acc.calendar, subject=subject, start=start,
                                end=start + timedelta(hours=1), required_attendees=[
                                    EwsAttendee(mailbox=Mailbox(name=n, email_address=e), response_type=r)
                                    for n, e, r in people])
            item.save(send_meeting_invitations="SendToNone")
            return item

        planning = meeting(ALICE, "Planning", [("Ann Smith", "ann@contoso.test", "Accept"),
                                               ("Dan Lee", "dan@contoso.test", "Tentative")])
        meeting(BOB, "Bob's board meeting", [("Eve Fox", "eve@fabrikam.test", "Accept")])
        env.start_ready()
        sync(env, ALICE, BOB)

        def attendees(title: str) -> list[tuple[Any, ...]]:
            return psa_rows(env, "SELECT aa.name, aa.email, aa.response FROM appointment_attendees aa "
                                 "JOIN appointments a ON CAST(a.id AS TEXT) = aa.appointment_id "
                                 f"WHERE a.title = '{title}' ORDER BY aa.email")

        organizer = ("alice", ALICE, "organizer")  # the organizer is listed too (here the owner)
        assert attendees("Planning") == [organizer, ("Ann Smith", "ann@contoso.test", "accepted"),
                                         ("Dan Lee", "dan@contoso.test", "tentative")]
        assert psa_rows(env, "SELECT COUNT(*) FROM appointment_attendees aa JOIN appointments a "
                             "ON CAST(a.id AS TEXT) = aa.appointment_id WHERE a.resource_id = 2") == [(0,)]
        # changes flow like other fields: one declines, one more is invited
        planning.required_attendees = [
            EwsAttendee(mailbox=Mailbox(name="Ann Smith", email_address="ann@contoso.test"),
                        response_type="Accept"),
            EwsAttendee(mailbox=Mailbox(name="Dan Lee", email_address="dan@contoso.test"),
                        response_type="Decline"),
            EwsAttendee(mailbox=Mailbox(name="Ida Moss", email_address="ida@fabrikam.test"),
                        response_type="NoResponseReceived")]
        planning.save(update_fields=["required_attendees"], send_meeting_invitations="SendToNone")
        sync(env, ALICE)
        assert attendees("Planning") == [organizer, ("Ann Smith", "ann@contoso.test", "accepted"),
                                         ("Dan Lee", "dan@contoso.test", "declined"),
                                         ("Ida Moss", "ida@fabrikam.test", "none")]
        before = all_writes(ews, adapter)
        sync(env, ALICE, BOB)
        assert all_writes(ews, adapter) == before
        assert ews.invitations() == []  # the daemon never sent one
        if adapter == "graph":
            assert ews.graph.invitations() == []


# -- every resource: exchangectl resources ------------------------------------------------------------

def test_exchangectl_resources_lists_every_psa_resource(tmp_path: Path) -> None:
    import json

    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"},
             {"mailbox": "dora@example.test", "psa_resource": "99", "enabled": False}]
    with ews_daemon(tmp_path, now, [ALICE], users) as (env, _ews):
        env.start_ready()
        sync(env, ALICE)
        done = ctl(env, "resources", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = {r["psa_resource"]: r for r in json.loads(done.stdout)}
        # the sample PSA: Alice (1) and Bob (2) active, Carol (3) inactive
        assert [rows[k]["name"] for k in ("1", "2", "3")] == ["Alice Archer", "Bob Baker", "Carol Clark"]
        assert rows["1"]["mailbox"] == ALICE and rows["1"]["enabled"] and rows["1"]["last_success"]
        assert rows["2"]["active"] and rows["2"]["mailbox"] is None and not rows["2"]["enabled"]
        assert rows["3"]["active"] is False and rows["3"]["email"] == "carol@example.test"
        assert rows["99"]["in_psa"] is False and rows["99"]["mailbox"] == "dora@example.test"
        text = ctl(env, "resources")
        assert text.returncode == 0 and "Bob Baker" in text.stdout
        assert "1 active PSA resource(s) not synced" in text.stdout
        assert ("dora@example.test is configured for PSA resource 99, which the PSA does not have"
                in text.stdout)


# -- every resource: users_from_psa -------------------------------------------------------------------

def test_users_from_psa_enables_active_resources_with_a_mailbox(tmp_path: Path) -> None:
    from tests.daemon.harness import wait_until

    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    with ews_daemon(tmp_path, now, [ALICE, BOB], users) as (env, _ews):
        # the sample PSA: Alice (1), Bob (2) active, Carol (3) inactive; Dave has no mailbox
        psa_execute(tmp_path, ("INSERT INTO resources (id, email, first_name, last_name, is_active) "
                               "VALUES (4, 'dave@example.test', 'Dave', 'Doe', 1)", ()))
        env.write_config(users_from_psa={"enabled": "all_active", "exclude": []})
        env.start_ready()

        def mailboxes() -> set[str]:
            return {u["mailbox"] for u in env.rpc("users")}

        wait_until(lambda: BOB in mailboxes(), "bob added from the PSA")
        assert mailboxes() == {ALICE, BOB}  # carol inactive, dave no mailbox
        # status, users and resources say which users the PSA gave
        assert {u["mailbox"]: u["source"] for u in env.rpc("status")["users"]} == {
            ALICE: "config", BOB: "users_from_psa"}
        assert {u["mailbox"]: u["source"] for u in env.rpc("users")} == {
            ALICE: "config", BOB: "users_from_psa"}
        assert {r["psa_resource"]: r["source"] for r in env.rpc("resources")} == {
            "1": "config", "2": "users_from_psa", "3": None, "4": None}
        sync(env, BOB)
        assert next(r for r in env.rpc("users") if r["mailbox"] == BOB)["last_result"] == "ok"
        wait_until(lambda: [r for r in env.smtp.snapshot() if BOB in r.rcpt_tos], "bob's confirmation mail")
        assert "PSA resource added as a user" in env.stderr()
        assert "dave@example.test" in env.stderr()  # said: no mailbox

        # bob leaves (inactive in the PSA): gone at the next reload (or interval)
        psa_execute(tmp_path, ("UPDATE resources SET is_active = 0 WHERE id = 2", ()))
        applied = ctl(env, "reload", "--wait", "--json")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert mailboxes() == {ALICE}
        assert "PSA resource no longer a user" in env.stderr()
