"""The sync runner over the real adapter and the EWS test server (PSA and state in memory): every
kind goes out, foreign appointments and a recurring series come in, and the second cycle writes
nothing on either side. This is where a conversion that does not round-trip would show up as a
write on every cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio

from exchanged.engine import UserSettings, UserSpec
from exchanged.exchange import EwsAccount
from exchanged.model import Appointment, Contact, FolderKind, Kind, ShowAs, Task
from exchanged.ports import NewItem
from exchanged.sync import SyncRunner
from exchanged.testing.ews import EwsTestServer
from tests.memory import MemoryPsa, MemoryState

from .conftest import ALICE

RESOURCE = "29682885"
WRITES = ("CreateItem", "UpdateItem", "DeleteItem")


def ews_writes(server: EwsTestServer) -> int:
    reqs = server.stats()["requests"]
    return sum(reqs.get(op, 0) for op in WRITES)


async def test_two_cycles_the_second_writes_nothing(ews_server: EwsTestServer, account: EwsAccount) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    soon = now + timedelta(days=1)
    psa.add(Kind.APPOINTMENT, Appointment("Visit ACME", soon, soon + timedelta(hours=1),
                                          body="bring the contract", location="ACME HQ"), [RESOURCE])
    psa.add(Kind.APPOINTMENT, Appointment("Holiday", datetime(soon.year, soon.month, soon.day, tzinfo=UTC),
                                          datetime(soon.year, soon.month, soon.day, tzinfo=UTC)
                                          + timedelta(days=1), is_all_day=True, show_as=ShowAs.OOF),
            [RESOURCE])
    psa.add(Kind.TODO, Task("Call back", start=soon, due=soon + timedelta(days=2)), [RESOURCE])
    psa.add(Kind.TODO, Task("Filed", start=now - timedelta(days=1), due=now,
                            completed=now - timedelta(hours=3)), [RESOURCE])
    psa.add(Kind.CONTACT, Contact("Ann", "Lee", company="ACME", email="ann@acme.test",
                                  business_phone="+49 30 1"), [RESOURCE])
    mb = account.mailbox(ALICE)
    # Outlook side: a private appointment and a free one
    foreign = [NewItem(Kind.IMPORTED, f"foreign:{n}", p) for n, p in enumerate([
        Appointment("Dentist", soon + timedelta(hours=3), soon + timedelta(hours=4), is_private=True),
        Appointment("Team lunch", soon + timedelta(hours=5), soon + timedelta(hours=6), show_as=ShowAs.FREE),
    ])]
    await _create_foreign(account, foreign)

    state = MemoryState()
    runner = SyncRunner(account, psa, state, now=lambda: now, server_identity="test")
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA"))
    first = await runner.run_cycle(user)
    assert first.result == "ok", first
    assert first.counts.exported == 5 and first.counts.imported == 2, first.counts
    cal = {i.psa_key for p in [p async for p in mb.changes(FolderKind.CALENDAR, None)] for i in p.upserted}
    assert {"appointment:1", "appointment:2"} <= {k for k in cal if k}

    before_ews, before_psa = ews_writes(ews_server), psa.writes()
    second_id = "second"
    second = await runner.run_cycle(user, cycle_id=second_id)
    assert second.result == "ok", second
    journal = [(e.action, e.key, e.fields, e.reason) for e in await state.history(ALICE, None)
               if e.cycle_id == second_id]
    assert ews_writes(ews_server) == before_ews, (ews_server.stats(), journal)
    assert psa.writes() == before_psa

    # Outlook: the to-do moves one day later, the visit gets 30 minutes longer
    ews = account.ews_account(ALICE)
    todo = next(r for r in psa.records(Kind.TODO) if r.payload.subject == "Call back")  # type: ignore[union-attr]
    visit = next(r for r in psa.records(Kind.APPOINTMENT) if r.payload.subject == "Visit ACME")  # type: ignore[union-attr]
    found_todo = (await mb.find_by_psa_keys(FolderKind.TASKS, [todo.psa_key]))[todo.psa_key]
    found_visit = (await mb.find_by_psa_keys(FolderKind.CALENDAR, [visit.psa_key]))[visit.psa_key]

    def outlook_edits() -> None:
        t = next(iter(ews.fetch(ids=[(found_todo.item_id, None)], only_fields=["due_date"])))
        t.due_date = t.due_date + timedelta(days=1)
        t.save(update_fields=["due_date"])
        v = next(iter(ews.fetch(ids=[(found_visit.item_id, None)], only_fields=["start", "end"])))
        v.end = v.end + timedelta(minutes=30)
        v.save(update_fields=["end"], send_meeting_invitations="SendToNone")

    await trio.to_thread.run_sync(outlook_edits)
    third = await runner.run_cycle(user)
    assert third.result == "ok", third
    todo_now = next(r for r in psa.records(Kind.TODO) if r.psa_key == todo.psa_key).payload
    assert todo_now.due == todo.payload.due + timedelta(days=1)  # type: ignore[union-attr, operator]
    visit_now = next(r for r in psa.records(Kind.APPOINTMENT) if r.psa_key == visit.psa_key).payload
    assert visit_now.end == visit.payload.end + timedelta(minutes=30)  # type: ignore[union-attr]
    before_ews, before_psa = ews_writes(ews_server), psa.writes()
    fourth = await runner.run_cycle(user)
    assert fourth.result == "ok", fourth
    assert (ews_writes(ews_server), psa.writes()) == (before_ews, before_psa)


async def _create_foreign(account: EwsAccount, items: list[NewItem]) -> None:
    """Items a user made in Outlook: no PSA key on them (exchangelib directly, not the adapter)."""
    from exchanged.exchange import convert
    from exchanged.exchange.mailbox import FOLDER_CLASSES

    ews = account.ews_account(ALICE)
    folder = account.distinguished_folder(ALICE, FOLDER_CLASSES[FolderKind.CALENDAR])

    def create() -> None:
        for new in items:
            item = convert.new_ews_item(FolderKind.CALENDAR, new.payload, "x", [], ews, account.tz)
            setattr(item, convert.PSA_KEY_ATTR, None)
            item.folder = folder
            item.save(send_meeting_invitations="SendToNone")

    await trio.to_thread.run_sync(create)


async def test_a_recurring_series_is_imported_by_occurrence(ews_server: EwsTestServer,
                                                            account: EwsAccount) -> None:
    from exchangelib import CalendarItem
    from exchangelib.recurrence import DailyPattern, Recurrence

    from exchanged.exchange import convert
    from exchanged.exchange.mailbox import FOLDER_CLASSES

    now = datetime.now(UTC).replace(microsecond=0)
    first = (now + timedelta(days=1)).replace(hour=8, minute=0, second=0)
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    ews = account.ews_account(ALICE)
    folder = account.distinguished_folder(ALICE, FOLDER_CLASSES[FolderKind.CALENDAR])

    def add_series() -> None:
        CalendarItem(account=ews, folder=folder, subject="Stand-up", start=convert.to_ews(first),
                     end=convert.to_ews(first + timedelta(minutes=15)),
                     recurrence=Recurrence(pattern=DailyPattern(interval=1), start=first.date(), number=3),
                     ).save(send_meeting_invitations="SendToNone")

    await trio.to_thread.run_sync(add_series)
    runner = SyncRunner(account, psa, MemoryState(), now=lambda: now, server_identity="test")
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA"))
    out = await runner.run_cycle(user)
    assert out.result == "ok", out
    rows = sorted(r.payload.start for r in psa.records(Kind.IMPORTED, RESOURCE))  # type: ignore[union-attr]
    assert rows == [first + timedelta(days=d) for d in range(3)]
    before_ews, before_psa = ews_writes(ews_server), psa.writes()
    again = await runner.run_cycle(user)
    assert again.result == "ok", again
    assert (ews_writes(ews_server), psa.writes()) == (before_ews, before_psa)


async def test_a_settled_export_costs_no_re_read(ews_server: EwsTestServer, account: EwsAccount) -> None:
    """A first export of N appointments and the cycle after it, counted at the server: at most
    ceil(N/100) + 10 requests. The next cycle's SyncFolderItems reports every created item; those
    still under the create's change key are taken as the runner sent them (no GetItem), while
    one a user edited in between is read and its edit flows back."""
    n = 250
    now = datetime.now(UTC).replace(microsecond=0)
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    for i in range(n):
        start = now + timedelta(days=1, minutes=30 * i)
        psa.add(Kind.APPOINTMENT, Appointment(f"Visit {i}", start, start + timedelta(minutes=30),
                                              location="HQ"), [RESOURCE])
    state = MemoryState()
    runner = SyncRunner(account, psa, state, now=lambda: now, server_identity="test")
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA", contacts_owned=False, todos=False))
    ews_server.reset_stats()
    first = await runner.run_cycle(user)
    assert first.result == "ok" and first.counts.exported == n, first
    export = dict(ews_server.stats()["requests"])

    # Outlook: one of the new appointments gets 30 minutes longer before the next cycle
    mb = account.mailbox(ALICE)
    visit = psa.records(Kind.APPOINTMENT)[7]
    found = (await mb.find_by_psa_keys(FolderKind.CALENDAR, [visit.psa_key]))[visit.psa_key]
    ews = account.ews_account(ALICE)

    def outlook_edit() -> None:
        v = next(iter(ews.fetch(ids=[(found.item_id, None)], only_fields=["start", "end"])))
        v.end = v.end + timedelta(minutes=30)
        v.save(update_fields=["end"], send_meeting_invitations="SendToNone")

    await trio.to_thread.run_sync(outlook_edit)
    before = dict(ews_server.stats()["requests"])  # the test's own requests are not counted
    second = await runner.run_cycle(user)
    assert second.result == "ok", second
    assert second.counts.updated == 1 and second.counts.exported == 0, second.counts
    now_row = next(r for r in psa.records(Kind.APPOINTMENT) if r.psa_key == visit.psa_key).payload
    assert now_row.end == visit.payload.end + timedelta(minutes=30)  # type: ignore[union-attr]
    settle = {op: c - before.get(op, 0) for op, c in ews_server.stats()["requests"].items()
              if c != before.get(op, 0)}
    # the second cycle reads only the edited item: one GetItem for it
    assert settle.get("GetItem", 0) == 1, settle
    assert sum(export.values()) + sum(settle.values()) <= -(-n // 100) + 10, (export, settle)

    third = await runner.run_cycle(user)  # settled: the mirror taken as sent plans nothing
    assert third.result == "ok" and not third.counts.updated and not third.counts.imported, third.counts
