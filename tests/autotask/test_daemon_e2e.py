"""The real daemon with the ``autotask`` connector: the bundled EWS test server on one side, the
Autotask test server on the other, both in-process over TLS on loopback, cycles asked for with
``exchangectl sync --wait``. Results are looked at from outside: exchangelib for Exchange, the
Autotask server's store and stats for Autotask."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from exchanged.model import Appointment, Contact, Kind, Task, make_psa_key
from exchanged.testing.autotask import AutotaskServer
from exchanged.testing.smtp import SmtpSink
from tests.daemon.ews_daemon import PASSWORD, SVC
from tests.daemon.harness import DaemonEnv, NotifySocket, secret_file, wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice@example.test", "bob@example.test"
ALICE_ID, BOB_ID = "29682885", "29682886"
MORE = {f"user{n}@example.test": str(29682890 + n) for n in range(4)}  # for the concurrency test
AT_USER, AT_SECRET, AT_CODE = "api@example.test", "At-s3cret-QQ", "INTEGRATION-CODE-E2E"
EWS_WRITES = ("CreateItem", "UpdateItem", "DeleteItem")
NOW = datetime.now(UTC).replace(microsecond=0, second=0, minute=0)


def at(days: float = 0, hours: float = 0) -> datetime:
    return NOW + timedelta(days=days, hours=hours)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def ews(tmp_path: Path) -> Iterator[Any]:
    from exchanged.testing.ews import EwsTestServer
    from exchanged.testing.ews.streaming import StreamingLimits

    # no push: these tests count the requests of the cycles they start, and a pushed cycle after
    # the daemon's own writes (tests/daemon/test_e2e_push.py) would add one at any moment
    with EwsTestServer(state_dir=str(tmp_path / "ews"), mailboxes=[ALICE, BOB, *MORE],
                       service_accounts={SVC: PASSWORD},
                       streaming=StreamingLimits(max_connections=0)) as server:
        yield server


@pytest.fixture
def autotask() -> Iterator[AutotaskServer]:
    with AutotaskServer(api_user=(AT_USER, AT_SECRET, AT_CODE)) as server:
        server.psa.add_resource(ALICE_ID, ALICE, "Alice Able")
        server.psa.add_resource(BOB_ID, BOB, "Bob Roe")
        server.psa.add_resource("29682800", AT_USER, "API User")
        for mailbox, resource in MORE.items():
            server.psa.add_resource(resource, mailbox)
        yield server


@pytest.fixture
def env(tmp_path: Path, ews: Any, autotask: AutotaskServer, smtp: SmtpSink) -> Iterator[DaemonEnv]:
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonEnv(base=tmp_path, smtp=smtp, notify=notify, memory=False,
                       users=[{"mailbox": ALICE, "psa_resource": ALICE_ID},
                              {"mailbox": BOB, "psa_resource": BOB_ID}])
    daemon.extra = {
        "server": {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                   "ca_bundle": ews.ca_file},
        "credentials": {"username": SVC, "password_file": secret_file(tmp_path / "ews-password", PASSWORD)},
        "psa": {
            "connector": "autotask",
            "username": AT_USER,
            "secret_file": secret_file(tmp_path / "at-secret", AT_SECRET),
            "integration_code_file": secret_file(tmp_path / "at-code", AT_CODE),
            "zone_lookup_url": autotask.url,
            "requests_per_hour": 3000,
            "ca_bundle": str(autotask.ca_file),
        },
        # the change probe (4 Autotask queries) hourly: not inside a counted window by chance
        "sync": {"psa_poll_seconds": 3600},
    }
    try:
        yield daemon
    finally:
        daemon.kill()
        notify.close()


class Outside:
    """Exchange as a user would see it, through exchangelib (the daemon's own account class only
    builds the exchangelib Account; every query below is plain exchangelib)."""

    def __init__(self, ews: Any) -> None:
        from exchanged.exchange import ExchangeSettings, open_account

        self.account = open_account(ExchangeSettings(
            address="localhost", port=ews.port, ca_bundle=ews.ca_file, username=SVC, password=PASSWORD,
            version="Exchange2016", enabled_mailboxes=(ALICE, BOB, *MORE), category="PSA"))

    def folder(self, mailbox: str, kind: str) -> Any:
        from exchangelib.folders import Calendar, Contacts, Tasks

        cls = {"calendar": Calendar, "tasks": Tasks, "contacts": Contacts}[kind]
        return self.account.distinguished_folder(mailbox, cls)

    def items(self, mailbox: str, kind: str = "calendar") -> list[Any]:
        from exchanged.exchange import convert

        folder = self.folder(mailbox, kind)
        return list(folder.all().only("id", "changekey", "subject", "start", "end", convert.PSA_KEY_ATTR)
                    if kind == "calendar" else folder.all().only("id", "changekey", "subject",
                                                                  convert.PSA_KEY_ATTR))

    def keys(self, mailbox: str, kind: str = "calendar") -> list[str]:
        from exchanged.exchange import convert

        return [getattr(i, convert.PSA_KEY_ATTR) for i in self.items(mailbox, kind)
                if getattr(i, convert.PSA_KEY_ATTR)]

    def by_subject(self, mailbox: str, subject: str) -> Any:
        return next(i for i in self.items(mailbox) if i.subject == subject)

    def create(self, mailbox: str, subject: str, start: datetime, end: datetime) -> None:
        from exchangelib import CalendarItem

        from exchanged.exchange import convert

        acc = self.account.ews_account(mailbox)
        CalendarItem(account=acc, folder=self.folder(mailbox, "calendar"), subject=subject,
                     start=convert.to_ews(start), end=convert.to_ews(end),
                     ).save(send_meeting_invitations="SendToNone")

    def close(self) -> None:
        trio.run(self.account.aclose)


@pytest.fixture
def outside(ews: Any) -> Iterator[Outside]:
    o = Outside(ews)
    yield o
    o.close()


def ctl(env: DaemonEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(env.socket_path), *args],
                          capture_output=True, text=True, timeout=120)


def sync(env: DaemonEnv, mailbox: str = ALICE) -> dict[str, Any]:
    done = ctl(env, "sync", mailbox, "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr + env.stderr()[-3000:]
    user = env.user(mailbox)
    assert user["last_result"] == "ok", user
    return user


def ews_writes(ews: Any) -> dict[str, int]:
    reqs = ews.stats()["requests"]
    return {op: reqs.get(op, 0) for op in EWS_WRITES if reqs.get(op, 0)}


def at_requests(autotask: AutotaskServer) -> int:
    return sum(autotask.stats()["requests"].values())


def rows(autotask: AutotaskServer, entity: str) -> list[dict[str, Any]]:
    return list(autotask.store.rows(entity))


def assert_budget_kept(autotask: AutotaskServer) -> None:
    stats = autotask.stats()
    assert stats["max_concurrent"] <= 3, stats
    assert stats["thread_limit_rejections"] == 0, stats
    assert stats["threshold_rejections"] == 0, stats
    assert stats["threshold"]["used"] <= stats["threshold"]["limit"], stats


def assert_psa_budget_in_status(env: DaemonEnv) -> None:
    """Status shows the Autotask connector's request budget (used of the hourly limit)."""
    shown = ctl(env, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["psa"]["connector"] == "autotask", status["psa"]
    budget = status["psa"]["budget"]
    assert budget["limit"] > 0 and budget["used"] >= 1, budget


# --- seed ---------------------------------------------------------------------------------------


def seed_all_kinds(autotask: AutotaskServer) -> dict[str, str]:
    psa, store = autotask.psa, autotask.store
    keys = {
        "appt": psa.add(Kind.APPOINTMENT, Appointment("Visit ACME", at(1, 2), at(1, 3), body="contract"),
                        [ALICE_ID]),
        "lunch": psa.add(Kind.APPOINTMENT, Appointment("Lunch", at(2, 4), at(2, 5)), [ALICE_ID]),
        "bob_appt": psa.add(Kind.APPOINTMENT, Appointment("Bob only", at(1, 2), at(1, 3)), [BOB_ID]),
        "ticket_call": psa.add(Kind.SERVICE_CALL,
                               Appointment("Service call: Contoso: Printer jam", at(2, 1), at(2, 3),
                                           body="Printer jam"), [ALICE_ID]),
        "todo": psa.add(Kind.TODO, Task("Call back", start=at(1), due=at(3)), [ALICE_ID]),
        "contact": psa.add(Kind.CONTACT, Contact("Anna", "Smith", company="Fabrikam",
                                                 email="anna@fabrikam.test"), [ALICE_ID]),
    }
    # the second chain: ServiceCall -> ServiceCallTasks -> ServiceCallTaskResources
    call = store.put("ServiceCalls", {"companyID": psa.company("Northwind"), "description": "Server down",
                                      "startDateTime": at(3).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                      "endDateTime": at(3, 2).strftime("%Y-%m-%dT%H:%M:%SZ")})
    link = store.put("ServiceCallTasks", {"serviceCallID": call["id"], "taskID": 77})
    store.put("ServiceCallTaskResources", {"serviceCallTaskID": link["id"], "resourceID": int(ALICE_ID)})
    keys["task_call"] = make_psa_key(Kind.SERVICE_CALL, call["id"])
    return keys


# --- tests --------------------------------------------------------------------------------------


def test_every_kind_both_ways_and_a_quiet_second_cycle(env: DaemonEnv, ews: Any, autotask: AutotaskServer,
                                                       outside: Outside) -> None:
    keys = seed_all_kinds(autotask)
    env.start_ready()
    sync(env)

    # export: appointments, service calls of both chains, to-dos, owned contacts
    calendar = outside.keys(ALICE)
    assert {keys["appt"], keys["ticket_call"], keys["task_call"]} <= set(calendar), calendar
    assert keys["bob_appt"] not in calendar
    assert sorted(calendar) == sorted(set(calendar)), calendar  # nothing twice
    assert keys["todo"] in outside.keys(ALICE, "tasks")
    assert keys["contact"] in outside.keys(ALICE, "contacts")
    sync(env, BOB)
    assert outside.keys(BOB) == [keys["bob_appt"]]

    # a second cycle writes nothing on Exchange
    ews.reset_stats()
    sync(env)
    assert ews_writes(ews) == {}, ews.stats()["requests"]

    # an Exchange-only appointment becomes an Autotask Appointment of Alice's resource
    outside.create(ALICE, "Dentist", at(4, 1), at(4, 2))
    outside.create(ALICE, "Gym", at(5, 1), at(5, 2))  # so one deletion never empties a side
    sync(env)
    imported = [r for r in rows(autotask, "Appointments") if r["title"] == "Dentist"]
    assert len(imported) == 1, imported
    assert len([r for r in rows(autotask, "Appointments") if r["title"] == "Gym"]) == 1
    assert imported[0]["resourceID"] == int(ALICE_ID)

    # a time change in Exchange flows back to the Autotask Appointment
    appt_id = int(keys["appt"].split(":")[1])
    item = outside.by_subject(ALICE, "Visit ACME")
    item.start, item.end = item.start + timedelta(hours=1), item.end + timedelta(hours=2)
    item.save(update_fields=["start", "end"], send_meeting_invitations="SendToNone")
    sync(env)
    row = autotask.store.tables["Appointments"][appt_id]
    assert row["startDateTime"].startswith(at(1, 3).strftime("%Y-%m-%dT%H:%M")), row
    assert row["endDateTime"].startswith(at(1, 5).strftime("%Y-%m-%dT%H:%M")), row

    # deleted in Exchange -> deleted in Autotask (the imported one)
    outside.by_subject(ALICE, "Dentist").delete()
    sync(env)
    assert not [r for r in rows(autotask, "Appointments") if r["title"] == "Dentist"]
    assert [r for r in rows(autotask, "Appointments") if r["title"] == "Gym"]

    # deleted in Autotask -> deleted in Exchange
    autotask.psa.remove(keys["appt"])
    sync(env)
    assert keys["appt"] not in outside.keys(ALICE)
    assert not [i for i in outside.items(ALICE) if i.subject == "Visit ACME"]
    assert keys["lunch"] in outside.keys(ALICE)

    assert_budget_kept(autotask)
    assert_psa_budget_in_status(env)
    assert AT_SECRET not in env.stderr() and AT_CODE not in env.stderr()


def test_a_no_op_cycle_costs_the_same_few_requests_for_3_or_60_items(env: DaemonEnv, ews: Any,
                                                                      autotask: AutotaskServer) -> None:
    def add(n: int, first: int) -> None:
        for i in range(first, first + n):
            visit = Appointment(f"Visit {i}", at(1 + i % 10, 1), at(1 + i % 10, 2))
            autotask.psa.add(Kind.APPOINTMENT, visit, [ALICE_ID])

    def no_op_cost() -> int:
        sync(env)  # catches up on whatever changed
        autotask.reset_stats()
        ews.reset_stats()
        sync(env)
        assert ews_writes(ews) == {}, ews.stats()["requests"]
        return at_requests(autotask)

    add(3, 0)
    env.start_ready()
    small = no_op_cost()
    add(57, 3)
    big = no_op_cost()
    assert 0 < small <= 10, autotask.stats()["requests"]
    assert not [k for k in autotask.stats()["requests"] if k.split()[0] in ("PATCH", "PUT", "DELETE")]
    assert big == small, (small, big, autotask.stats()["requests"])
    assert_budget_kept(autotask)


def test_kill_9_mid_export_then_restart_leaves_each_appointment_once(env: DaemonEnv, ews: Any,
                                                                     autotask: AutotaskServer,
                                                                     outside: Outside) -> None:
    n = 250  # more than two CreateItem batches
    keys = [autotask.psa.add(Kind.APPOINTMENT, Appointment(f"Job {i}", at(1 + i % 20, 1), at(1 + i % 20, 2)),
                             [ALICE_ID]) for i in range(n)]
    # every EWS request answers slowly while counted as started at once, so the kill lands while
    # the second CreateItem batch is in flight and the third has not started
    ews.set_faults(latency_ms=500)
    env.start_ready()
    env.rpc("sync", mailboxes=[ALICE])
    wait_until(lambda: ews.stats()["requests"].get("CreateItem", 0) >= 2, "the second CreateItem",
               timeout=120)
    env.signal(signal.SIGKILL)
    assert env.proc is not None
    env.proc.wait(timeout=30)
    ews.set_faults(latency_ms=0)
    at_kill = outside.keys(ALICE)
    assert len(at_kill) < n, "the kill came after the export had finished: nothing was tested"

    mark = len(env.notify.poll())
    env.start()
    env.notify.wait_for("READY=1", after=mark)
    sync(env)
    sync(env)
    found = outside.keys(ALICE)
    assert sorted(found) == sorted(keys), (len(found), len(set(found)), n)
    assert_budget_kept(autotask)


def test_six_users_at_once_never_exceed_three_requests_in_flight(env: DaemonEnv, ews: Any,
                                                                  autotask: AutotaskServer,
                                                                  outside: Outside) -> None:
    users = {ALICE: ALICE_ID, BOB: BOB_ID, **MORE}
    env.users = [{"mailbox": m, "psa_resource": r} for m, r in users.items()]
    keys = {m: autotask.psa.add(Kind.APPOINTMENT, Appointment(f"Visit of {m}", at(1, 1), at(1, 2)), [r])
            for m, r in users.items()}
    # slow answers keep requests in flight long enough for the cycles to overlap
    autotask.faults.latency_ms = 100
    env.start_ready()
    done = ctl(env, "sync", "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    autotask.faults.latency_ms = 0
    for mailbox, key in keys.items():
        assert env.user(mailbox)["last_result"] == "ok", env.user(mailbox)
        assert outside.keys(mailbox) == [key], mailbox
    assert_budget_kept(autotask)
    assert_psa_budget_in_status(env)


def test_requests_per_hour_is_never_exceeded_a_cycle_waits_instead(env: DaemonEnv, ews: Any,
                                                                    autotask: AutotaskServer) -> None:
    # the zone lookup, one ThresholdInformation and 5 queries per cycle: the two cycles of the first
    # 'sync --wait' (the scheduled one and the one asked for) fit, a third does not
    limit = 14
    env.extra["psa"]["requests_per_hour"] = limit
    autotask.psa.add(Kind.APPOINTMENT, Appointment("Visit", at(1, 1), at(1, 2)), [ALICE_ID])
    env.start_ready()
    sync(env)
    assert at_requests(autotask) < limit, autotask.stats()
    env.rpc("sync", mailboxes=[ALICE])
    # the second cycle takes what is left of the hour's share, then has to wait for the window
    wait_until(lambda: at_requests(autotask) >= limit, "the hour's share used up")
    wait_until(lambda: env.user(ALICE)["state"] == "syncing", "the second cycle still running")
    assert_psa_budget_in_status(env)
    assert env.stop() == 0  # a cycle waiting for budget does not keep the daemon from stopping
    # every request the daemon made, the zone lookup included, counts against its share
    assert at_requests(autotask) == limit, autotask.stats()
    assert_budget_kept(autotask)
    # SIGTERM interrupted the wait itself: the cycle ended as an error naming the mailbox and the
    # budget, and nothing had to be cancelled at the end of the grace period
    log = env.stderr()
    failed = [line for line in log.splitlines() if "cycle failed" in line]
    assert failed, log[-3000:]
    assert ALICE in failed[-1] and "Autotask hourly request budget was interrupted" in failed[-1], failed
    assert "the daemon is stopping" in failed[-1], failed
    assert "grace period" not in log, log[-3000:]
    # an interruption by the daemon's own stop is in the log and status, but mailed to nobody
    assert env.smtp is not None
    subjects = [str(m["Subject"]) for m in env.smtp.messages]
    assert not [s for s in subjects if " ERROR " in s], subjects


def test_a_to_do_moved_in_outlook_is_written_to_the_company_to_do(
        env: DaemonEnv, ews: Any, autotask: AutotaskServer, outside: Outside) -> None:
    key = autotask.psa.add(Kind.TODO, Task("Call back", start=at(1), due=at(2)), [ALICE_ID])
    env.start_ready()
    sync(env)
    acc = outside.account.ews_account(ALICE)
    task = next(i for i in outside.items(ALICE, "tasks") if i.subject == "Call back")
    item = next(iter(acc.fetch(ids=[(task.id, task.changekey)], only_fields=["due_date"])))
    item.due_date = item.due_date + timedelta(days=1)
    item.save(update_fields=["due_date"])
    sync(env)
    row = autotask.store.tables["CompanyToDos"][int(key.split(":")[1])]
    assert row["endDateTime"].startswith(at(3).strftime("%Y-%m-%d")), row
    # one PATCH (the test server takes to-do writes only through /Companies/{id}/ToDos)
    assert autotask.stats()["requests"].get("PATCH CompanyToDos") == 1, autotask.stats()["requests"]


def test_a_to_do_completed_in_outlook_sets_completed_date_and_reopening_clears_it(
        env: DaemonEnv, ews: Any, autotask: AutotaskServer, outside: Outside) -> None:
    key = autotask.psa.add(Kind.TODO, Task("Call back", start=at(1), due=at(2)), [ALICE_ID])
    row_id = int(key.split(":")[1])
    env.start_ready()
    sync(env)
    acc = outside.account.ews_account(ALICE)

    def set_done(done: bool) -> None:
        task = next(i for i in outside.items(ALICE, "tasks") if i.subject == "Call back")
        fields = ["status", "percent_complete"]
        item = next(iter(acc.fetch(ids=[(task.id, task.changekey)], only_fields=fields)))
        item.status = "Completed" if done else "NotStarted"
        item.percent_complete = Decimal(100 if done else 0)
        item.save(update_fields=fields)

    set_done(True)
    autotask.reset_stats()
    sync(env)
    row = autotask.store.tables["CompanyToDos"][row_id]
    assert row["completedDate"], row  # SYNC_RULES: completion flows back; Autotask keeps it in completedDate
    assert row["endDateTime"].startswith(at(2).strftime("%Y-%m-%d")), row  # nothing else changed
    assert autotask.stats()["requests"].get("PATCH CompanyToDos") == 1, autotask.stats()["requests"]

    # settled: the next cycle writes nothing on either side
    autotask.reset_stats()
    ews.reset_stats()
    sync(env)
    assert ews_writes(ews) == {}, ews.stats()["requests"]
    assert "PATCH CompanyToDos" not in autotask.stats()["requests"], autotask.stats()["requests"]

    set_done(False)  # reopened in Outlook
    sync(env)
    assert autotask.store.tables["CompanyToDos"][row_id]["completedDate"] is None


def test_autotask_429s_are_backed_off_and_the_cycle_succeeds(
        env: DaemonEnv, ews: Any, autotask: AutotaskServer, outside: Outside) -> None:
    key = autotask.psa.add(Kind.APPOINTMENT, Appointment("Visit", at(1, 1), at(1, 2)), [ALICE_ID])
    # the database's threshold, used up by other integrations, refuses the cycle's first requests
    autotask.faults.update({"throttle_next": 2})
    env.start_ready()
    sync(env)
    assert outside.keys(ALICE) == [key]
    assert autotask.stats()["throttled"] == 2, autotask.stats()
    budget = json.loads(ctl(env, "status", "--json").stdout)["psa"]["budget"]
    assert budget["backoffs"] == 2, budget
    assert env.stderr().count("backing off before retrying") == 2, env.stderr()[-3000:]


def test_a_401_of_a_moved_zone_looks_the_zone_up_again_and_the_cycle_succeeds(
        env: DaemonEnv, ews: Any, autotask: AutotaskServer, outside: Outside) -> None:
    first = autotask.psa.add(Kind.APPOINTMENT, Appointment("Visit", at(1, 1), at(1, 2)), [ALICE_ID])
    env.start_ready()
    sync(env)
    old_zone = json.loads(ctl(env, "status", "--json").stdout)["psa"]["budget"]["zone"]
    assert old_zone == autotask.url, old_zone
    autotask.move_zone("127.0.0.1")  # the database moved: the old zone refuses with 401
    autotask.reset_stats()
    second = autotask.psa.add(Kind.APPOINTMENT, Appointment("Lunch", at(2, 1), at(2, 2)), [ALICE_ID])
    sync(env)
    assert sorted(outside.keys(ALICE)) == sorted([first, second])
    stats = autotask.stats()
    assert stats["wrong_zone"] >= 1 and stats["requests"]["GET ZoneInformation"] == 1, stats
    new_zone = json.loads(ctl(env, "status", "--json").stdout)["psa"]["budget"]["zone"]
    assert new_zone == autotask.zone_url != old_zone, new_zone
    assert "looking the zone up again" in env.stderr()


def test_check_config_connect_checks_autotask_too(env: DaemonEnv, ews: Any, autotask: AutotaskServer) -> None:
    """`exchanged check-config --connect` logs in to Autotask and checks every configured resource."""
    env.write_config()
    done = subprocess.run(
        [sys.executable, "-m", "exchanged", "check-config", "--config", str(env.config_path), "--connect",
         "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.lstrip().startswith("{"), done.stdout + done.stderr
    report = json.loads(done.stdout)
    rows = {row["subject"]: row for row in report["connect"]}
    assert rows["autotask login"]["result"] == "ok", rows
    assert any(s.startswith("autotask") and ALICE_ID in s + r["message"] for s, r in rows.items()), rows
    assert AT_SECRET not in done.stdout + done.stderr and AT_CODE not in done.stdout + done.stderr
