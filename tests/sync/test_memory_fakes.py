"""The in-memory fakes behave like the real adapters in the ways the runner relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchanged import errors
from exchanged.model import Appointment, FolderKind, Kind, Task, Window
from exchanged.ports import ItemUpdate, NewItem, StateBatch
from tests.memory import MemoryExchange, MemoryPsa, MemoryState

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def appt(subject: str, hours: int = 0) -> Appointment:
    return Appointment(subject, T0 + timedelta(hours=hours), T0 + timedelta(hours=hours + 1))


async def drain(mb, folder, state):
    pages = [p async for p in mb.changes(folder, state)]
    return pages


async def test_changes_pages_and_incremental_state() -> None:
    ex = MemoryExchange()
    mb = ex.mailbox("a@example.test")
    for n in range(600):
        mb.user_add(FolderKind.CALENDAR, appt(f"s{n}", n))
    pages = await drain(mb, FolderKind.CALENDAR, None)
    assert [len(p.upserted) for p in pages] == [512, 88]
    assert [p.last_page for p in pages] == [False, True]
    assert ex.requests["SyncFolderItems"] == 2
    state = pages[-1].sync_state
    again = await drain(mb, FolderKind.CALENDAR, state)
    assert len(again) == 1 and not again[0].upserted and not again[0].deleted
    assert again[0].sync_state == state
    first = mb.items(FolderKind.CALENDAR)[0]
    mb.user_edit(FolderKind.CALENDAR, first.item_id, subject="changed")
    mb.user_delete(FolderKind.CALENDAR, mb.items(FolderKind.CALENDAR)[-1].item_id)
    delta = await drain(mb, FolderKind.CALENDAR, state)
    assert [i.payload.subject for i in delta[0].upserted] == ["changed"]
    assert len(delta[0].deleted) == 1
    # a page's state resumes after that page: the 1st page's state still owes the rest
    rest = await drain(mb, FolderKind.CALENDAR, pages[0].sync_state)
    assert sum(len(p.upserted) for p in rest) == 88


async def test_unknown_sync_state_is_invalid() -> None:
    mb = MemoryExchange().mailbox("a@example.test")
    with pytest.raises(errors.SyncStateInvalid):
        await drain(mb, FolderKind.TASKS, "bogus")


async def test_update_writes_only_named_fields_and_changes_key() -> None:
    ex = MemoryExchange()
    mb = ex.mailbox("a@example.test")
    new = NewItem(Kind.APPOINTMENT, "appointment:1", appt("x"), ("PSA",))
    [item] = await mb.create(FolderKind.CALENDAR, [new])
    assert item.categories == ("PSA",) and item.psa_key == "appointment:1"
    mb.user_edit(FolderKind.CALENDAR, item.item_id, location="room 1")
    upd_req = ItemUpdate(item.item_id, item.change_key, appt("y"), ("subject",))
    [upd] = await mb.update(FolderKind.CALENDAR, [upd_req])
    assert upd.payload.subject == "y" and upd.payload.location == "room 1"
    assert upd.change_key != item.change_key and upd.item_id == item.item_id
    [err] = await mb.delete(FolderKind.CALENDAR, ["nope"])
    assert err is not None and err.code == "ErrorItemNotFound"


async def test_drop_applies_then_raises_and_adoption_finds_it() -> None:
    ex = MemoryExchange()
    mb = ex.mailbox("a@example.test")
    ex.fault("CreateItem", drop=True)
    with pytest.raises(errors.ExchangeUnavailable):
        await mb.create(FolderKind.TASKS, [NewItem(Kind.TODO, "todo:1", Task("t"))])
    found = await mb.find_by_psa_keys(FolderKind.TASKS, ["todo:1", "todo:2"])
    assert list(found) == ["todo:1"]
    ex.fault("CreateItem", skip=1, exc=errors.Throttled("busy", back_off_s=1))
    await mb.create(FolderKind.TASKS, [])
    with pytest.raises(errors.Throttled):
        await mb.create(FolderKind.TASKS, [])


async def test_series_expansion_with_exceptions() -> None:
    mb = MemoryExchange().mailbox("a@example.test")
    starts = [T0 + timedelta(days=d) for d in range(5)]
    master = mb.user_add_series(appt("standup"), starts, uid="UID1")
    mb.user_edit_occurrence(master.item_id, starts[1], subject="moved", start=starts[1] + timedelta(hours=2),
                            end=starts[1] + timedelta(hours=3))
    mb.user_delete_occurrence(master.item_id, starts[2])
    view = await mb.calendar_view(T0, T0 + timedelta(days=3, hours=12))
    assert [i.exchange_key for i in view] == [
        "UID1@2026-11-02T09:00:00Z", "UID1@2026-11-03T09:00:00Z", "UID1@2026-11-05T09:00:00Z"]
    assert view[1].payload.subject == "moved"


async def test_psa_load_scope_and_writes() -> None:
    psa = MemoryPsa()
    key = psa.add(Kind.SERVICE_CALL, appt("call"), ["1", "2"])
    old = psa.add(Kind.APPOINTMENT, appt("old", -24 * 30), ["1"])
    w = Window(T0, T0 - timedelta(days=7), T0 + timedelta(days=30))
    assert [r.psa_key for r in (await psa.load("2", frozenset(Kind), w)).records] == [key]
    assert old not in [r.psa_key for r in (await psa.load("1", frozenset(Kind), w)).records]
    psa.unavailable = True
    with pytest.raises(errors.PsaUnavailable):
        await psa.load("1", frozenset(Kind), w)


async def test_state_commit_is_all_or_nothing_and_copies() -> None:
    st = MemoryState()
    st.fault("commit")
    with pytest.raises(errors.StateError):
        await st.commit("a", StateBatch(sync_states={FolderKind.CALENDAR: "s1"}))
    assert (await st.load_user("a")).folders == {}
    await st.commit("a", StateBatch(sync_states={FolderKind.CALENDAR: "s1"}, server_identity="srv"))
    u = await st.load_user("a")
    u.folders[FolderKind.CALENDAR].sync_state = "mutated"
    again = await st.load_user("a")
    assert again.folders[FolderKind.CALENDAR].sync_state == "s1"
    assert again.folders[FolderKind.CALENDAR].server_identity == "srv"
    assert await st.try_lease("a", "n1", 10) and not await st.try_lease("a", "n2", 10)
