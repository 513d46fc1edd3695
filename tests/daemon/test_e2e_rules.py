"""SPEC section 4 sync rules, end to end: the real daemon process over the bundled EWS server (TLS),
the sql PSA in SQLite and the SQLite state store, cycles triggered with exchangectl. Results are
looked at only from outside: exchangelib against the EWS server, SQL on the PSA file.

Every test runs over both adapters: ``ews`` (the daemon speaks EWS) and ``graph`` (the daemon speaks
Microsoft Graph to the Graph test server, which serves the same store; the outside view stays EWS).
One daemon per adapter serves the whole module; the tests run in file order and each builds on the last.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.daemon.ews_daemon import PASSWORD, SVC, add_psa_appointments, ews_daemon, graph_writes
from tests.daemon.harness import DaemonEnv, wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"
CATEGORY = "PSA"
WRITES = ("CreateItem", "UpdateItem", "DeleteItem")


class World:
    def __init__(self, env: DaemonEnv, ews: Any, now: datetime) -> None:
        self.env, self.ews, self.now = env, ews, now
        self.graph = getattr(ews, "graph", None)  # the Graph front end when the daemon speaks Graph
        self._accounts: dict[str, Any] = {}

    # -- outside views -------------------------------------------------------------------------
    def account(self, mailbox: str) -> Any:
        from exchangelib import IMPERSONATION, Account, Configuration, Credentials

        if mailbox not in self._accounts:
            config = Configuration(service_endpoint=self.ews.url, credentials=Credentials(SVC, PASSWORD),
                                   auth_type="NTLM")
            self._accounts[mailbox] = Account(mailbox, config=config, autodiscover=False,
                                              access_type=IMPERSONATION)
        return self._accounts[mailbox]

    def calendar(self, mailbox: str) -> list[Any]:
        return list(self.account(mailbox).calendar.all())

    def tasks(self, mailbox: str) -> list[Any]:
        account = self.account(mailbox)
        if self.graph is None:
            return list(account.tasks.all())
        # Graph: Microsoft To Do's list "PSA", a tasks folder beside the default one
        lists = [f for f in account.msg_folder_root.children if f.name == "PSA"]
        return [t for f in lists for t in f.all()]

    def contacts(self, mailbox: str) -> list[Any]:
        return list(self.account(mailbox).contacts.all())

    def ours(self, mailbox: str, subject: str) -> list[Any]:
        return [i for i in self.calendar(mailbox) if i.subject == subject]

    def sql(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.env.base / "psa.db")
        try:
            with con:
                return con.execute(query, args).fetchall()
        finally:
            con.close()

    def psa_snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return {t: self.sql(f"SELECT * FROM {t} ORDER BY 1")
                for t in ("appointments", "todos", "service_calls", "contacts")}

    def writes(self) -> dict[str, int]:
        if self.graph is not None:
            return graph_writes(self.graph)
        requests = self.ews.stats()["requests"]
        return {op: requests.get(op, 0) for op in WRITES}

    # -- driving -------------------------------------------------------------------------------
    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(self.env.socket_path),
                               *args], capture_output=True, text=True, timeout=120)

    def sync(self, *mailboxes: str, extra: tuple[str, ...] = (), codes: tuple[int, ...] = (0,)) -> None:
        for mailbox in mailboxes or (ALICE, BOB, CAROL):
            done = self.ctl("sync", mailbox, "--wait", *extra)
            assert done.returncode in codes, done.stdout + done.stderr + self.env.stderr()[-3000:]


def ews_time(value: datetime) -> Any:
    from exchangelib import EWSDateTime, EWSTimeZone

    return EWSDateTime.from_datetime(value.astimezone(UTC)).astimezone(EWSTimeZone("UTC"))


def create_exchange_appointment(world: World, mailbox: str, subject: str, start: datetime,
                                **fields: Any) -> None:
    from exchangelib import CalendarItem

    acc = world.account(mailbox)
    CalendarItem(account=acc, folder=acc.calendar, subject=subject, body=fields.pop("body", "secret body"),
                 start=ews_time(start), end=ews_time(start + timedelta(hours=1)), **fields
                 ).save(send_meeting_invitations="SendToNone")


@pytest.fixture(scope="module", params=["ews", "graph"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    now = datetime.now(UTC).replace(microsecond=0)
    users: list[dict[str, Any]] = [
        {"mailbox": ALICE, "psa_resource": "1"},
        {"mailbox": BOB, "psa_resource": "2",
         "settings": {"todos": False, "import_appointments": "no_details"}},
        {"mailbox": CAROL, "psa_resource": "3", "settings": {"import_appointments": "none"}},
    ]
    sync = {"import_free_time": False, "max_deletes_per_cycle": 3, "category": CATEGORY}
    with ews_daemon(tmp_path_factory.mktemp("rules"), now, [ALICE, BOB, CAROL], users, sync,
                    adapter=request.param) as (env, ews):
        w = World(env, ews, now)
        # Exchange-side appointments to import, there before the first cycle
        day = now.replace(hour=0, minute=0, second=0) + timedelta(days=2)
        create_exchange_appointment(w, ALICE, "Lunch with Zoe", day + timedelta(hours=12),
                                    body="at the corner place", location="Corner")
        create_exchange_appointment(w, ALICE, "Therapy", day + timedelta(hours=16), sensitivity="Private",
                                    body="very private")
        create_exchange_appointment(w, ALICE, "Maybe gym", day + timedelta(hours=18),
                                    legacy_free_busy_status="Free")
        create_exchange_appointment(w, BOB, "Bob's dentist", day + timedelta(hours=15), body="tooth 14")
        create_exchange_appointment(w, CAROL, "Carol's own meeting", day + timedelta(hours=10))
        env.start_ready()
        w.sync()
        yield w


# ---------------------------------------------------------------------------------------------------

def test_psa_appointment_exported_with_category_and_no_invitation(world: World) -> None:
    items = world.ours(ALICE, "Quarterly review with Contoso")
    assert len(items) == 1
    assert CATEGORY in (items[0].categories or [])
    assert "numbers" in str(items[0].body)
    # out of the window: not exported
    assert world.ours(ALICE, "Old workshop (out of the window)") == []
    assert world.ews.invitations() == []


def test_service_call_in_every_assigned_calendar(world: World) -> None:
    for mailbox in (ALICE, BOB):
        found = [i for i in world.calendar(mailbox) if "Replace the firewall" in (i.subject or "")]
        assert len(found) == 1, (mailbox, [i.subject for i in world.calendar(mailbox)])
    assert not [i for i in world.calendar(ALICE) if "Backup check" in (i.subject or "")]


def test_owned_contacts_exported(world: World) -> None:
    names = {(c.given_name, c.surname) for c in world.contacts(ALICE)}
    # Alice owns Contoso (Ann, Dan) and Northwind (José; Gus is inactive)
    assert {("Ann", "Smith"), ("Dan", "Lee"), ("José", "Núñez")} <= names
    assert ("Gus", "Hill") not in names


def test_todo_becomes_task_and_completion_flows_back(world: World) -> None:
    tasks = [t for t in world.tasks(ALICE) if "Call Ann" in (t.subject or "") or "Call Ann" in str(t.body)]
    assert len(tasks) == 1, [t.subject for t in world.tasks(ALICE)]
    task = tasks[0]
    task.status = "Completed"
    task.percent_complete = Decimal(100)
    task.save(update_fields=["status", "percent_complete"])
    world.sync(ALICE)
    [(completed,)] = world.sql("SELECT completed_time FROM todos WHERE id = 500")
    assert completed is not None


def test_todo_subject_says_what_to_do_and_the_body_names_the_company(world: World) -> None:
    # to-do 500: action type "Call", description "Call Ann about the renewal", company Contoso Ltd
    [task] = [t for t in world.tasks(ALICE) if "Call Ann" in str(t.body)]
    assert task.subject == "Call: Call Ann about the renewal"
    assert str(task.body).splitlines() == ["Call Ann about the renewal", "", "Company: Contoso Ltd"]


def test_per_user_narrowing_todos_false_gets_no_tasks(world: World) -> None:
    assert world.tasks(BOB) == []


def test_exchange_appointments_imported_by_mode(world: World) -> None:
    rows = world.sql("SELECT resource_id, title, description, is_private FROM appointments "
                     "WHERE origin = 'exchange' ORDER BY id")
    alice = {r[1]: r for r in rows if r[0] == 1}
    assert "Lunch with Zoe" in alice and "corner place" in (alice["Lunch with Zoe"][2] or "")
    # private: imported without its subject and body
    assert "Therapy" not in alice and "Private appointment" in alice
    assert not (alice["Private appointment"][2] or "")
    # free time with import_free_time false: not imported
    assert "Maybe gym" not in alice
    # no_details: a busy block only
    bob = [r for r in rows if r[0] == 2]
    assert len(bob) == 1 and bob[0][1] != "Bob's dentist" and not (bob[0][2] or "")
    [(start,)] = world.sql("SELECT start_time FROM appointments "
                           "WHERE origin = 'exchange' AND resource_id = 2")
    dentist = world.now.replace(hour=15, minute=0, second=0) + timedelta(days=2)
    assert start.startswith(dentist.strftime("%Y-%m-%dT%H:%M"))
    # none: nothing
    assert [r for r in rows if r[0] == 3] == []


def test_times_flow_back_subject_overwritten(world: World) -> None:
    [item] = world.ours(ALICE, "Site visit Northwind")
    item.start = item.start + timedelta(hours=1)
    item.end = item.end + timedelta(hours=1)
    item.subject = "Renamed in Outlook"
    item.save(update_fields=["start", "end", "subject"], send_meeting_invitations="SendToNone")
    world.sync(ALICE)
    [(start, title)] = world.sql("SELECT start_time, title FROM appointments WHERE id = 301")
    day = world.now.replace(hour=0, minute=0, second=0)
    assert start.startswith((day + timedelta(days=3, hours=15)).strftime("%Y-%m-%dT%H:%M"))
    assert title == "Site visit Northwind"
    assert len(world.ours(ALICE, "Site visit Northwind")) == 1
    assert world.ours(ALICE, "Renamed in Outlook") == []


def test_deleted_in_exchange_is_recreated(world: World) -> None:
    [item] = world.ours(ALICE, "Kick-off Fabrikam")
    item.delete(send_meeting_cancellations="SendToNone")
    assert world.ours(ALICE, "Kick-off Fabrikam") == []
    world.sync(ALICE)
    assert len(world.ours(ALICE, "Kick-off Fabrikam")) == 1


def test_psa_row_deleted_deletes_exchange_item(world: World) -> None:
    world.sql("DELETE FROM appointments WHERE id = 300")
    world.sync(ALICE)
    assert world.ours(ALICE, "Quarterly review with Contoso") == []


def test_second_cycle_writes_nothing_to_exchange(world: World) -> None:
    world.sync()
    before = world.writes()
    world.sync()
    assert world.writes() == before


def test_second_cycle_writes_nothing_to_the_psa(world: World) -> None:
    world.sync()
    psa = world.psa_snapshot()
    world.sync()
    after = world.psa_snapshot()
    changed = [(r, [o for o in psa[t] if o[0] == r[0]]) for t, rows in after.items()
               for r in rows if r not in psa[t]]
    assert not changed, repr(changed)


def test_plan_changes_nothing(world: World) -> None:
    # something to do, so that the plan has actions to (not) carry out
    world.sql("UPDATE appointments SET title = 'Onboarding, moved' WHERE id = 304")
    before, psa = world.writes(), world.psa_snapshot()
    plan = world.ctl("plan", BOB, "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "304" in plan.stdout
    assert world.writes() == before and world.psa_snapshot() == psa
    assert world.ours(BOB, "Onboarding, moved") == []
    world.sync(BOB)
    assert len(world.ours(BOB, "Onboarding, moved")) == 1


def test_mass_deletion_held_back_until_allowed(world: World) -> None:
    add_psa_appointments(world.env.base, world.now, 1, 900, 5, "Batch")
    world.sync(ALICE)
    assert all(len(world.ours(ALICE, f"Batch {n}")) == 1 for n in range(5))
    world.sql("DELETE FROM appointments WHERE id >= 900")
    world.sync(ALICE, codes=(0, 1, 2, 3))
    alice = world.env.user(ALICE)
    assert alice["last_result"] == "held_back", alice
    assert "5 deletion(s) held back" in alice["last_error"], alice
    assert all(len(world.ours(ALICE, f"Batch {n}")) == 1 for n in range(5))
    world.sync(ALICE, extra=("--allow-deletes",))
    assert all(world.ours(ALICE, f"Batch {n}") == [] for n in range(5))


def test_imported_appointment_deleted_in_exchange_deletes_the_psa_row(world: World) -> None:
    assert world.sql("SELECT 1 FROM appointments WHERE title = 'Lunch with Zoe'")
    [item] = world.ours(ALICE, "Lunch with Zoe")
    item.delete(send_meeting_cancellations="SendToNone")
    world.sync(ALICE)
    assert world.sql("SELECT 1 FROM appointments WHERE title = 'Lunch with Zoe'") == []
    assert world.ews.invitations() == []


def test_reload_import_free_time_true_imports_the_free_appointment(world: World) -> None:
    assert not world.sql("SELECT 1 FROM appointments WHERE title = 'Maybe gym'")
    sync = dict(world.env.extra["sync"], import_free_time=True)
    world.env.write_config(sync=sync)
    applied = world.ctl("reload", "--wait", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    world.sync(ALICE)
    assert world.sql("SELECT resource_id FROM appointments WHERE title = 'Maybe gym'") == [(1,)]


# -- crash in the middle of a large first export ------------------------------------------------------

BULK = 1500


def _write_requests(ews: Any) -> int:
    """Write requests so far: CreateItem (EWS), or $batch requests (Graph, 20 creates each)."""
    if getattr(ews, "graph", None) is not None:
        return int(ews.graph.stats()["requests"].get("POST /v1.0/$batch", 0))
    return int(ews.stats()["requests"].get("CreateItem", 0))


@pytest.mark.parametrize("adapter", ["ews", "graph"])
def test_kill_9_mid_first_export_leaves_every_item_exactly_once(
        tmp_path_factory: pytest.TempPathFactory, adapter: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path_factory.mktemp("crash"), now, [ALICE], [{"mailbox": ALICE, "psa_resource": "1"}],
                    {"max_deletes_per_cycle": 25}, adapter=adapter) as (env, ews):
        world = World(env, ews, now)
        add_psa_appointments(env.base, now, 1, 10_000, BULK, "Bulk")
        env.start_ready()
        trigger = subprocess.Popen(
            [sys.executable, "-m", "exchanged.ctl", "--socket", str(env.socket_path),
             "sync", ALICE, "--wait"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: _write_requests(ews) >= 5, "5 write requests", timeout=120)
            env.kill()  # SIGKILL
            trigger.wait(timeout=60)
        finally:
            if trigger.poll() is None:
                trigger.kill()
                trigger.wait()
        bulk = [i for i in world.calendar(ALICE) if (i.subject or "").startswith("Bulk ")]
        assert 0 < len(bulk) < BULK  # really killed in the middle
        env.notify.messages.clear()
        env.start_ready()
        world.sync(ALICE)
        world.sync(ALICE)
        subjects = [i.subject for i in world.calendar(ALICE) if (i.subject or "").startswith("Bulk ")]
        assert sorted(subjects) == sorted(f"Bulk {n}" for n in range(BULK))
        assert env.user(ALICE)["last_result"] == "ok"


# -- lost replies and throttling storms during a first export --------------------------------------------

FAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # the server carries the write out, the daemon never hears of it
    "lost_replies": {"ews": {"drop_next": 2, "only_ops": "CreateItem"},
                     "graph": {"drop_next": 2, "only": "POST /v1.0/$batch"}},
    # every request refused for a while (429 with Retry-After / ErrorServerBusy), then single $batch parts
    "throttle_storm": {"ews": {"throttle_next": 12, "back_off_ms": 300},
                       "graph": {"throttle_next": 8, "retry_after_s": 1, "batch_throttle_next": 30}},
}


@pytest.mark.parametrize("adapter", ["ews", "graph"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faults_in_a_first_export_leave_every_item_exactly_once(
        tmp_path_factory: pytest.TempPathFactory, adapter: str, fault: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path_factory.mktemp(fault), now, [ALICE], [{"mailbox": ALICE, "psa_resource": "1"}],
                    {"max_deletes_per_cycle": 25}, adapter=adapter) as (env, ews):
        world = World(env, ews, now)
        add_psa_appointments(env.base, now, 1, 20_000, 70, "Faulty")
        server = ews.graph if adapter == "graph" else ews
        server.set_faults(**FAULTS[fault][adapter])
        env.start_ready()
        # a cycle may end partial or in error while the faults last (a storm outlasts one call's
        # retries, and the daemon's other requests, e.g. push subscriptions, take some of them)
        for _ in range(4):
            world.sync(ALICE, codes=(0, 1, 2, 3))
            if env.user(ALICE)["last_result"] == "ok" and not any(
                    v for k, v in server.faults_snapshot().items() if k.endswith("_next")):
                break
        left = server.faults_snapshot()
        assert all(left[k] == 0 for k in FAULTS[fault][adapter] if k.endswith("_next")), left
        subjects = [i.subject for i in world.calendar(ALICE) if (i.subject or "").startswith("Faulty ")]
        assert sorted(subjects) == sorted(f"Faulty {n}" for n in range(70))
        assert env.user(ALICE)["last_result"] == "ok", env.user(ALICE)
        before = world.writes()
        world.sync(ALICE)
        assert world.writes() == before  # and then quiet
