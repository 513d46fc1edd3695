"""The sync runner with the autotask connector: the engine's expectations hold over the REST API.

Exchange is the in-memory fake here (the EWS side has its own end-to-end tests); the PSA side is
the connector talking HTTPS to the Autotask test server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest

from exchanged.engine import UserSettings, UserSpec
from exchanged.model import Appointment, FolderKind, Kind, make_psa_key
from exchanged.psa.autotask import AutotaskConnector
from exchanged.sync import SyncRunner
from exchanged.testing.autotask import AutotaskServer
from tests.memory import MemoryExchange, MemoryState

from .conftest import NOW, make_connector, t

pytestmark = pytest.mark.e2e

MAILBOX, JANE = "jdoe@example.test", "29682885"
WRITES = ("PATCH", "PUT", "DELETE")


class World:
    def __init__(self, server: AutotaskServer, connector: AutotaskConnector) -> None:
        self.server = server
        self.exchange = MemoryExchange(now=lambda: NOW)
        self.state = MemoryState()
        self.runner = SyncRunner(self.exchange, connector, self.state, now=lambda: NOW)
        self.user = UserSpec(MAILBOX, JANE, UserSettings())

    async def cycle(self) -> object:
        outcome = await self.runner.run_cycle(self.user)
        assert outcome.result == "ok", outcome
        return outcome

    def psa_writes(self) -> int:
        reqs = self.server.stats()["requests"]
        return sum(n for k, n in reqs.items() if k.split()[0] in WRITES)


@pytest.fixture
def world(server: AutotaskServer) -> Iterator[World]:
    yield World(server, make_connector(server))


def seed(server: AutotaskServer) -> dict[str, int]:
    s = server.store
    ids = {
        "appt": s.put(
            "Appointments",
            {"resourceID": int(JANE), "title": "Dentist", "startDateTime": t(1), "endDateTime": t(1, 1)},
        )["id"],
        "call": s.put(
            "ServiceCalls",
            {"companyID": 1, "description": "Printer", "startDateTime": t(2), "endDateTime": t(2, 2)},
        )["id"],
        "todo": s.put(
            "CompanyToDos",
            {
                "companyID": 1,
                "assignedToResourceID": int(JANE),
                "actionType": 1,
                "activityDescription": "Call Anna",
                "startDateTime": t(1),
                "endDateTime": t(1, 1),
            },
        )["id"],
        "contact": s.put(
            "Contacts", {"companyID": 1, "firstName": "Anna", "lastName": "Smith", "isActive": 1}
        )["id"],
    }
    link = s.put("ServiceCallTasks", {"serviceCallID": ids["call"], "taskID": 5})["id"]
    s.put("ServiceCallTaskResources", {"serviceCallTaskID": link, "resourceID": int(JANE)})
    return ids


async def test_export_then_a_quiet_cycle_writes_nothing(world: World) -> None:
    ids = seed(world.server)
    await world.cycle()
    mb = world.exchange.mailbox(MAILBOX)
    for kind, key in (
        (Kind.APPOINTMENT, "appt"),
        (Kind.SERVICE_CALL, "call"),
        (Kind.TODO, "todo"),
        (Kind.CONTACT, "contact"),
    ):
        folder = {Kind.TODO: FolderKind.TASKS, Kind.CONTACT: FolderKind.CONTACTS}.get(
            kind, FolderKind.CALENDAR
        )
        assert len(mb.by_psa_key(folder, make_psa_key(kind, ids[key]))) == 1, kind
    writes = world.exchange.writes()
    world.server.reset_stats()
    await world.cycle()
    assert world.exchange.writes() == writes and world.psa_writes() == 0
    quiet = sum(world.server.stats()["requests"].values())
    assert quiet <= 14  # a cycle with nothing to do: one query per entity, no per-row requests


async def test_import_time_change_and_deletions_each_way(world: World) -> None:
    ids = seed(world.server)
    mb = world.exchange.mailbox(MAILBOX)
    start = NOW + timedelta(days=3)

    # a second row on each side: a side that suddenly looks empty is never mirrored as deletions
    world.server.store.put(
        "Appointments",
        {"resourceID": int(JANE), "title": "Stays", "startDateTime": t(4), "endDateTime": t(4, 1)},
    )
    mb.user_add(FolderKind.CALENDAR, Appointment("Stays too", start, start + timedelta(hours=2)))
    foreign = mb.user_add(
        FolderKind.CALENDAR,
        Appointment("Lunch", start, start + timedelta(hours=1), body="with Bob", location="Cafe"),
    )
    await world.cycle()
    [row] = [r for r in world.server.store.rows("Appointments") if r["title"] == "Lunch"]
    assert row["resourceID"] == int(JANE) and "[exchanged-import]" in row["description"]
    world.server.reset_stats()
    await world.cycle()
    assert world.psa_writes() == 0  # the imported row reads back equal: never rewritten

    # start/end moved in Outlook flow back to the PSA appointment; the subject does not
    [exported] = mb.by_psa_key(FolderKind.CALENDAR, make_psa_key(Kind.APPOINTMENT, ids["appt"]))
    p = exported.payload
    assert isinstance(p, Appointment)
    mb.user_edit(
        FolderKind.CALENDAR,
        exported.item_id,
        start=p.start + timedelta(hours=2),
        end=p.end + timedelta(hours=2),
        subject="mine now",
    )
    await world.cycle()
    appt_row = world.server.store.get("Appointments", ids["appt"])
    assert appt_row is not None and appt_row["startDateTime"] == t(1, 2) and appt_row["title"] == "Dentist"

    # deleted in Autotask -> deleted in Exchange; deleted in Exchange -> deleted in Autotask
    world.server.store.remove("Appointments", ids["appt"])
    mb.user_delete(FolderKind.CALENDAR, foreign.item_id)
    await world.cycle()
    assert mb.by_psa_key(FolderKind.CALENDAR, make_psa_key(Kind.APPOINTMENT, ids["appt"])) == []
    assert [r for r in world.server.store.rows("Appointments") if r["title"] == "Lunch"] == []

    # an edit in Autotask flows to Exchange in place
    world.server.store.edit("ServiceCalls", ids["call"], description="Printer and scanner")
    await world.cycle()
    [call] = mb.by_psa_key(FolderKind.CALENDAR, make_psa_key(Kind.SERVICE_CALL, ids["call"]))
    assert replace(call.payload).body == "Printer and scanner"  # type: ignore[union-attr]


async def test_a_lost_reply_to_an_import_leaves_no_duplicate(world: World, server: AutotaskServer) -> None:
    from exchanged import errors
    from exchanged.ports import PsaWrite

    seed(server)
    mb = world.exchange.mailbox(MAILBOX)
    start = NOW + timedelta(days=2)
    lunch = Appointment("Lunch", start, start + timedelta(hours=1))
    item = mb.user_add(FolderKind.CALENDAR, lunch)
    connector = world.runner.psa
    server.faults.update({"drop_next": 1})  # Autotask creates the row, the answer never arrives
    with pytest.raises(errors.PsaUnavailable):
        await connector.apply(
            [PsaWrite("create", Kind.IMPORTED, None, lunch, exchange_key=item.exchange_key, resource=JANE)]
        )
    assert server.stats()["dropped"] == 1
    await world.cycle()
    await world.cycle()
    assert [r["title"] for r in server.store.rows("Appointments")].count("Lunch") == 1


async def test_model_level_helpers_give_back_what_they_were_given(server: AutotaskServer) -> None:
    from exchanged.model import Contact, Task

    from .conftest import WINDOW

    psa = server.psa
    psa.add_resource("501", "eve@example.test", "Eve Adams")
    start = NOW + timedelta(days=1)
    given = {
        psa.add(
            Kind.APPOINTMENT, Appointment("Visit", start, start + timedelta(hours=1), body="b"), ["501"]
        ): Appointment("Visit", start, start + timedelta(hours=1), body="b"),
        psa.add(
            Kind.SERVICE_CALL,
            Appointment("Service call: Contoso", start, start + timedelta(hours=2)),
            ["501", JANE],
        ): Appointment("Service call: Contoso", start, start + timedelta(hours=2)),
        # a to-do is added with its action type as the subject: read back, the subject says what to
        # do and the body names the company the harness files it under (psa/render.py)
        psa.add(Kind.TODO, Task("Call", body="Call Anna", start=start, due=start), ["501"]): Task(
            "Call: Call Anna", body="Call Anna\n\nCompany: To-dos", start=start, due=start
        ),
        psa.add(
            Kind.CONTACT, Contact("Anna", "Smith", company="Contoso", email="a@x.test"), ["501"]
        ): Contact("Anna", "Smith", company="Contoso", email="a@x.test"),
    }
    connector = make_connector(server)
    loaded = {r.psa_key: r.payload for r in (await connector.load("501", frozenset(Kind), WINDOW)).records}
    assert loaded == given
    [call_key] = [k for k in given if k.startswith("service_call:")]
    psa.edit(call_key, body="now with notes")
    psa.assign(call_key, [JANE])
    assert call_key not in {r.psa_key for r in (await connector.load("501", frozenset(Kind), WINDOW)).records}
    jane_load = await connector.load(JANE, frozenset({Kind.SERVICE_CALL}), WINDOW)
    jane = {r.psa_key: r.payload for r in jane_load.records}
    assert jane[call_key].body == "now with notes"  # type: ignore[union-attr]


async def test_concurrent_cycles_each_report_only_their_own_skipped_rows(server: AutotaskServer) -> None:
    """One connector serves several users' cycles at once: a row Autotask holds for Jane that
    cannot be synced is reported in Jane's outcome, never in Bob's. (The connector used to keep
    the skipped rows in one attribute, cleared when a load started and filled across its awaits,
    so a concurrent cycle reported the other user's rows, or lost its own.)"""
    import trio

    bob = "29682886"
    bad = server.store.put("Appointments",
                           {"resourceID": int(JANE), "title": "No start", "endDateTime": t(1, 1)})
    jane_key = make_psa_key(Kind.APPOINTMENT, bad["id"])
    for n in range(3):  # each user has rows, so both loads take several requests
        server.store.put("Appointments", {"resourceID": int(bob), "title": f"Bob {n}",
                                          "startDateTime": t(n + 1), "endDateTime": t(n + 1, 1)})
        server.store.put("Appointments", {"resourceID": int(JANE), "title": f"Jane {n}",
                                          "startDateTime": t(n + 1), "endDateTime": t(n + 1, 1)})
    server.faults.latency_ms = 20  # the answers interleave (the race needs awaits to overlap)
    connector = make_connector(server)
    runner = SyncRunner(MemoryExchange(now=lambda: NOW), connector, MemoryState(), now=lambda: NOW)
    users = [UserSpec(MAILBOX, JANE, UserSettings()), UserSpec("bob@example.test", bob, UserSettings())]
    try:
        for _ in range(4):
            outcomes: dict[str, object] = {}

            async def one(user: UserSpec, into: dict[str, object]) -> None:
                into[user.mailbox] = await runner.run_cycle(user, full=True)

            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(one, user, outcomes)
            jane, bob_out = outcomes[MAILBOX], outcomes["bob@example.test"]
            assert [e.key for e in jane.item_errors] == [jane_key], jane  # type: ignore[attr-defined]
            assert bob_out.item_errors == [], bob_out  # type: ignore[attr-defined]
    finally:
        await connector.aclose()
