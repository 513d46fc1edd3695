"""The sync runner over the Graph adapter (fake Graph; PSA and state in memory): every kind goes
out, foreign events come in, and the second cycle writes nothing on either side: a conversion
that does not round-trip would show up here as a write on every cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from exchanged.engine import UserSettings, UserSpec
from exchanged.graph import GraphAccount
from exchanged.model import Appointment, Contact, Kind, ShowAs, Task
from exchanged.sync import SyncRunner
from tests.memory import MemoryPsa, MemoryState

from .fake import FakeGraph, FakeTokens
from .test_adapter import ALICE, SETTINGS

RESOURCE = "29682885"


def writes(graph: FakeGraph) -> int:
    return sum(
        n
        for k, n in graph.stats.items()
        if k.split(" ")[-2] in ("POST", "PATCH", "DELETE") and "$batch" not in k
    )


async def test_two_cycles_the_second_writes_nothing_and_edits_flow_back() -> None:
    graph = FakeGraph()
    now = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    account = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: now)  # type: ignore[arg-type]
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    soon = now + timedelta(days=1)
    psa.add(
        Kind.APPOINTMENT,
        Appointment(
            "Visit ACME", soon, soon + timedelta(hours=1), body="bring the contract", location="ACME HQ"
        ),
        [RESOURCE],
    )
    day = datetime(2026, 12, 8, 23, 0, tzinfo=UTC)  # midnight in Berlin, the mailbox's zone
    psa.add(
        Kind.APPOINTMENT,
        Appointment("Holiday", day, day + timedelta(days=1), is_all_day=True, show_as=ShowAs.OOF),
        [RESOURCE],
    )
    # times of day To Do does not keep (it keeps days): the exact values come back through a link
    psa.add(
        Kind.TODO,
        Task(
            "Call back",
            start=datetime(2026, 12, 8, 10, 0, tzinfo=UTC),
            due=datetime(2026, 12, 10, 17, 30, tzinfo=UTC),
        ),
        [RESOURCE],
    )
    psa.add(
        Kind.CONTACT,
        Contact("Ann", "Lee", company="ACME", email="ann@acme.test", business_phone="+49 30 1"),
        [RESOURCE],
    )
    # Outlook side: a private appointment of alice's own
    graph.one(
        "POST",
        f"/users/{ALICE}/events",
        {
            "subject": "Dentist",
            "start": {"dateTime": "2026-12-08T11:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-08T12:00:00", "timeZone": "UTC"},
            "sensitivity": "private",
            "iCalUId": "uid-dentist",
        },
        batch=False,
    )
    state = MemoryState()
    runner = SyncRunner(account, psa, state, now=lambda: now, server_identity="graph")
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA"))
    first = await runner.run_cycle(user)
    assert first.result == "ok", first
    assert first.counts.exported == 4 and first.counts.imported == 1, first.counts
    before, before_psa = writes(graph), psa.writes()
    graph.stats.clear()
    second = await runner.run_cycle(user, cycle_id="second")
    assert second.result == "ok", second
    journal = [
        (e.action, e.key, e.fields) for e in await state.history(ALICE, None) if e.cycle_id == "second"
    ]
    assert writes(graph) == 0 and psa.writes() == before_psa, (graph.stats, journal)
    assert before > 0
    # one delta GET per folder on a quiet cycle
    assert sum(graph.stats.values()) <= 3, graph.stats

    # in Outlook: the visit gets 30 minutes longer; in To Do the task is completed
    box = graph.boxes[ALICE]
    visit = next(d for d in box.items["/events"].values() if d["subject"] == "Visit ACME")
    visit["end"] = {
        "dateTime": (soon + timedelta(hours=1, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S"),
        "timeZone": "UTC",
    }
    visit["changeKey"] = "edited"
    box.seq[visit["id"]] += 10_000
    [tasks] = [d for c, d in box.items.items() if c.startswith("/todo/")]
    [task] = tasks.values()
    task.update(
        status="completed",
        completedDateTime={"dateTime": "2026-12-07T07:30:00.0000000", "timeZone": "UTC"},
        changeKey="done",
    )
    box.seq[task["id"]] += 10_000
    third = await runner.run_cycle(user, cycle_id="third")
    assert third.result == "ok", third
    [v] = [r for r in psa.records(Kind.APPOINTMENT) if r.payload.subject == "Visit ACME"]  # type: ignore[union-attr]
    assert v.payload.end == soon + timedelta(hours=1, minutes=30)  # type: ignore[union-attr]
    [t] = psa.records(Kind.TODO)
    assert t.payload.completed == datetime(2026, 12, 7, 7, 30, tzinfo=UTC)  # type: ignore[union-attr]
    await account.aclose()
