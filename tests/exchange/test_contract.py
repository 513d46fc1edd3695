"""The ExchangeMailbox contract, run against the real adapter (EWS test server, real TLS, real
exchangelib) and against ``MemoryExchange``: both must behave alike for the runner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchanged import errors
from exchanged.model import Appointment, Contact, ExchangeItem, FolderKind, Kind, Task, occurrence_key
from exchanged.ports import ItemUpdate, NewItem

from .conftest import ALICE, Harness

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def appt(n: int, **kw: object) -> NewItem:
    payload = Appointment(subject=f"Visit {n}", start=T0 + timedelta(days=n),
                          end=T0 + timedelta(days=n, hours=1), body=f"body {n}", location="HQ")
    return NewItem(Kind.APPOINTMENT, f"appointment:{n}", payload, categories=("PSA",))


async def all_items(h: Harness, folder: FolderKind) -> list[ExchangeItem]:
    mb = h.account.mailbox(ALICE)
    out: dict[str, ExchangeItem] = {}
    async for page in mb.changes(folder, None):
        for item in page.upserted:
            out[item.item_id] = item
        for gone in page.deleted:
            out.pop(gone, None)
    return list(out.values())


async def test_create_then_find_by_psa_key(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    created = await mb.create(FolderKind.CALENDAR, [appt(1), appt(2)])
    assert all(isinstance(c, ExchangeItem) for c in created)
    assert [c.psa_key for c in created] == ["appointment:1", "appointment:2"]  # type: ignore[union-attr]
    found = await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:2", "appointment:9"])
    assert list(found) == ["appointment:2"]
    hit = found["appointment:2"]
    assert hit.item_id == created[1].item_id  # type: ignore[union-attr]
    assert hit.payload == appt(2).payload
    assert "PSA" in hit.categories


async def test_update_sends_only_the_changed_fields(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    # a user moves the appointment to another room in Outlook
    await harness.user_edit(FolderKind.CALENDAR, item.item_id, location="Room 7")
    before = harness.requests().get("UpdateItem", 0)
    new = Appointment(subject="Visit 1 (moved)", start=item.payload.start,  # type: ignore[union-attr]
                      end=item.payload.end, body="body 1", location="HQ")  # type: ignore[union-attr]
    [res] = await mb.update(FolderKind.CALENDAR,
                            [ItemUpdate(item.item_id, item.change_key, new, ("subject",))])
    assert isinstance(res, ExchangeItem), res
    assert res.change_key != item.change_key
    assert harness.requests()["UpdateItem"] == before + 1
    [now] = (await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:1"])).values()
    assert now.payload.subject == "Visit 1 (moved)"  # type: ignore[union-attr]
    assert now.payload.location == "Room 7"  # type: ignore[union-attr]  # not overwritten: not in `changed`


async def test_update_of_a_missing_item_is_an_item_error(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    ghost = "AAMkAGI2TG93AAA="  # well-formed, never issued by this server
    results = await mb.update(FolderKind.CALENDAR, [
        ItemUpdate(ghost, "CK", item.payload, ("subject",)),
        ItemUpdate(item.item_id, item.change_key, appt(1).payload, ("body",))])
    assert not isinstance(results[0], ExchangeItem) and results[0].key == ghost
    assert isinstance(results[1], ExchangeItem)  # the rest of the batch goes on


async def test_changes_pages_of_512_with_a_state_per_page(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    page = getattr(harness, "page_size", 512)  # EWS: 512 a page; Graph: 500
    contacts = [NewItem(Kind.CONTACT, f"contact:{n}", Contact(given_name=f"G{n}", surname="S"),
                        categories=("PSA",)) for n in range(600)]
    created = await mb.create(FolderKind.CONTACTS, contacts)
    assert all(isinstance(c, ExchangeItem) for c in created)
    pages = [p async for p in mb.changes(FolderKind.CONTACTS, None)]
    assert [len(p.upserted) for p in pages] == [page, 600 - page]
    assert [p.last_page for p in pages] == [False, True]
    # a runner that checkpointed after page one resumes there and gets the rest only
    resumed = [p async for p in mb.changes(FolderKind.CONTACTS, pages[0].sync_state)]
    assert sum(len(p.upserted) for p in resumed) == 600 - page
    assert {i.item_id for i in resumed[-1].upserted} == {i.item_id for i in pages[1].upserted}
    # nothing new: one page, nothing in it
    quiet = [p async for p in mb.changes(FolderKind.CONTACTS, pages[-1].sync_state)]
    assert len(quiet) == 1 and not quiet[0].upserted and not quiet[0].deleted and quiet[0].last_page


async def test_changes_report_deletions_and_edits(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    a, b = await mb.create(FolderKind.CALENDAR, [appt(1), appt(2)])
    assert isinstance(a, ExchangeItem) and isinstance(b, ExchangeItem)
    [state] = [p.sync_state async for p in mb.changes(FolderKind.CALENDAR, None)]
    await mb.delete(FolderKind.CALENDAR, [a.item_id])
    await harness.user_edit(FolderKind.CALENDAR, b.item_id, subject="renamed in Outlook")
    pages = [p async for p in mb.changes(FolderKind.CALENDAR, state)]
    assert [d for p in pages for d in p.deleted] == [a.item_id]
    [edited] = [i for p in pages for i in p.upserted]
    assert edited.item_id == b.item_id and edited.payload.subject == "renamed in Outlook"  # type: ignore[union-attr]
    assert edited.psa_key == "appointment:2"


async def test_unknown_sync_state_is_refused(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    with pytest.raises(errors.SyncStateInvalid) as info:
        async for _ in mb.changes(FolderKind.TASKS, "not-a-state-of-this-server"):
            pass
    assert ALICE in errors.present(info.value).message


async def test_calendar_view_expands_series_into_occurrences(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    first = Appointment(subject="Stand-up", start=T0, end=T0 + timedelta(minutes=15))
    starts = [T0 + timedelta(days=d) for d in range(4)]
    uid = await harness.user_add_series(first, starts)
    await mb.create(FolderKind.CALENDAR, [appt(1)])
    view = await mb.calendar_view(T0 - timedelta(days=1), T0 + timedelta(days=10))
    series = [i for i in view if i.payload.subject == "Stand-up"]  # type: ignore[union-attr]
    assert [i.payload.start for i in series] == starts  # type: ignore[union-attr]
    if getattr(harness, "series_in_changes", "") == "occurrences" and not (
            series and (series[0].exchange_key or "").startswith(uid)):
        pytest.xfail("issue 15: the Graph test server serves no event.uid yet (the EWS UID): "
                     "imported keys differ between the adapters (/work/notes/graph-contract.md)")
    assert [i.exchange_key for i in series] == [occurrence_key(uid, s) for s in starts]
    assert not any(i.is_recurring_master for i in view)
    [single] = [i for i in view if i.psa_key == "appointment:1"]
    assert single.payload == appt(1).payload
    mirror = await all_items(harness, FolderKind.CALENDAR)
    if getattr(harness, "series_in_changes", "master") == "master":
        # SyncFolderItems sees the master only, flagged as such
        masters = [i for i in mirror if i.is_recurring_master]
        assert [m.uid for m in masters] == [uid]
    else:
        # Graph's calendarView/delta: the occurrences themselves, no master
        assert not any(i.is_recurring_master for i in mirror)
        assert sorted(i.exchange_key or "" for i in mirror if i.uid == uid) == sorted(
            occurrence_key(uid, s) for s in starts)


async def test_lost_create_reply_then_runner_style_adoption_never_duplicates(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    items = [appt(n) for n in range(3)]
    harness.drop_next("CreateItem")
    try:
        await mb.create(FolderKind.CALENDAR, items)
    except errors.ExchangeUnavailable:
        pass  # the memory twin reports the lost reply; the EWS adapter adopts by itself
    adopted = await mb.find_by_psa_keys(FolderKind.CALENDAR, [i.psa_key for i in items])
    missing = [i for i in items if i.psa_key not in adopted]
    if missing:
        await mb.create(FolderKind.CALENDAR, missing)
    keys = sorted(i.psa_key for i in await all_items(harness, FolderKind.CALENDAR) if i.psa_key)
    assert keys == sorted(i.psa_key for i in items)


async def test_tasks_and_contacts_round_trip(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    day = datetime(2026, 12, 3, tzinfo=UTC)
    task = Task(subject="Call back", body="about the invoice", start=day, due=day + timedelta(days=2))
    contact = Contact(given_name="Ann", surname="Lee", company="ACME", job_title="CFO",
                      email="ann@acme.test", business_phone="+49 30 1234", mobile_phone="+49 170 9")
    [t] = await mb.create(FolderKind.TASKS, [NewItem(Kind.TODO, "todo:1", task, categories=("PSA",))])
    [c] = await mb.create(FolderKind.CONTACTS,
                          [NewItem(Kind.CONTACT, "contact:1", contact, categories=("PSA",))])
    assert isinstance(t, ExchangeItem) and isinstance(c, ExchangeItem)
    [t2] = (await mb.find_by_psa_keys(FolderKind.TASKS, ["todo:1"])).values()
    [c2] = (await mb.find_by_psa_keys(FolderKind.CONTACTS, ["contact:1"])).values()
    assert t2.payload == task
    assert c2.payload == contact
    done = Task(subject="Call back", body="about the invoice", start=day, due=day + timedelta(days=2),
                completed=day + timedelta(days=1))
    [t3] = await mb.update(FolderKind.TASKS, [ItemUpdate(t.item_id, t.change_key, done, ("completed",))])
    assert isinstance(t3, ExchangeItem)
    assert t3.payload.completed is not None  # type: ignore[union-attr]


async def test_one_bad_item_never_fails_its_batch(harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    bad = NewItem(Kind.APPOINTMENT, "appointment:bad",
                  Appointment(subject="backwards", start=T0, end=T0 - timedelta(hours=1)))
    results = await mb.create(FolderKind.CALENDAR, [appt(1), bad, appt(2)])
    assert isinstance(results[0], ExchangeItem) and isinstance(results[2], ExchangeItem)
    err = results[1]
    assert not isinstance(err, ExchangeItem)
    assert err.key == "appointment:bad" and err.code == "ErrorCalendarEndDateIsEarlierThanStartDate"
    wrong_folder = NewItem(Kind.TODO, "todo:1", Task(subject="a task"))
    [res] = await mb.create(FolderKind.CALENDAR, [wrong_folder])
    assert not isinstance(res, ExchangeItem) and res.code == "ErrorInvalidPropertyValue"


async def test_an_unreadable_item_of_ours_is_kept_flagged_and_a_full_update_repairs_it(
        harness: Harness) -> None:
    mb = harness.account.mailbox(ALICE)
    [one, two] = await mb.create(FolderKind.CALENDAR, [appt(1), appt(2)])
    assert isinstance(one, ExchangeItem) and isinstance(two, ExchangeItem)
    await harness.user_break(FolderKind.CALENDAR, one.item_id)
    by_id = {i.item_id: i for i in await all_items(harness, FolderKind.CALENDAR)}
    if getattr(harness, "unreadable_in_changes", True):
        broken = by_id[one.item_id]  # still there, flagged, with its key: never "gone"
        assert broken.unreadable and broken.psa_key == "appointment:1" and "PSA" in broken.categories
    assert not by_id[two.item_id].unreadable
    found = await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:1"])
    assert found["appointment:1"].item_id == one.item_id and found["appointment:1"].unreadable
    broken = found["appointment:1"]  # the runner adopts it from here and repairs it, never re-creates
    # an update that does not set what is missing leaves it unreadable: an item error, retried
    [res] = await mb.update(FolderKind.CALENDAR, [
        ItemUpdate(broken.item_id, broken.change_key, appt(1).payload, ("subject",))])
    assert not isinstance(res, ExchangeItem) and res.code == "unreadable_item" and res.retryable
    # every field written: readable again, in place
    fields = ("subject", "start", "end", "body", "location", "is_all_day", "show_as", "is_private")
    [res] = await mb.update(FolderKind.CALENDAR, [
        ItemUpdate(broken.item_id, "", appt(1).payload, fields)])
    assert isinstance(res, ExchangeItem), res
    assert res.item_id == one.item_id and not res.unreadable and res.payload == appt(1).payload


async def test_an_update_may_write_the_whole_category_list(harness: Harness) -> None:
    # the runner's ItemUpdate with categories (to be folded into ports.ItemUpdate)

    mb = harness.account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    [res] = await mb.update(FolderKind.CALENDAR, [
        ItemUpdate(item.item_id, item.change_key, appt(1).payload, (), ("PSA", "Red", "PSA-2"))])
    assert isinstance(res, ExchangeItem), res
    assert res.categories == ("PSA", "Red", "PSA-2") and res.payload == appt(1).payload
    # without categories an update leaves them as they are
    [res] = await mb.update(FolderKind.CALENDAR, [
        ItemUpdate(res.item_id, res.change_key, appt(1).payload, ("subject",))])
    assert isinstance(res, ExchangeItem) and res.categories == ("PSA", "Red", "PSA-2")
    [now] = (await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:1"])).values()
    assert now.categories == ("PSA", "Red", "PSA-2")


async def test_the_optional_members_have_their_typed_defaults(harness: Harness) -> None:
    """Every account answers the optional members of the port (``ExchangeAccountBase`` gives the
    defaults): the daemon's status and metrics call them, nobody probes for them."""
    account = harness.account
    assert [page async for page in account.mailbox(ALICE).changes(FolderKind.CALENDAR, None)]
    counts = account.request_counts()
    assert all(isinstance(k, tuple) and len(k) == 2 and isinstance(n, int) for k, n in counts.items())
    assert all(isinstance(n, int) for n in account.throttle_waits().values())
    closed = account.back_off_until()
    assert closed is None or (isinstance(closed[0], float) and isinstance(closed[1], bool))
