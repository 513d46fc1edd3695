"""The Graph adapter against a small in-test Graph (tests/graph/fake.py): requests, keys, batches,
throttling, lost replies. The end-to-end tests run it against exchanged.testing.graph."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from exchanged import errors
from exchanged.graph import GraphAccount, GraphSettings, convert
from exchanged.model import Appointment, Contact, ExchangeItem, FolderKind, ItemError, Kind, ShowAs, Task
from exchanged.ports import ItemUpdate, NewItem

from .fake import BASE, FakeGraph, FakeTokens

ALICE = "alice@example.test"
T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SETTINGS = GraphSettings(
    graph_url=BASE.removesuffix("/v1.0"),
    login_url="https://login.test",
    tenant_id="t",
    client_id="c",
    client_secret="s",
    category="PSA",
)


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
async def account(graph: FakeGraph) -> AsyncIterator[GraphAccount]:
    acc = GraphAccount(
        SETTINGS,
        transport=graph.transport(),
        tokens=FakeTokens(),  # type: ignore[arg-type]
        now=lambda: T0,
    )
    try:
        yield acc
    finally:
        await acc.aclose()


def appt(n: int, **kw: Any) -> NewItem:
    payload = Appointment(
        subject=f"Visit {n}",
        start=T0 + timedelta(days=n),
        end=T0 + timedelta(days=n, hours=1),
        body=f"body {n}",
        location="HQ",
        **kw,
    )
    return NewItem(Kind.APPOINTMENT, f"appointment:{n}", payload)


async def everything(
    acc: GraphAccount, folder: FolderKind, state: str | None = None
) -> tuple[dict[str, ExchangeItem], list[str], str]:
    items: dict[str, ExchangeItem] = {}
    deleted: list[str] = []
    async for page in acc.mailbox(ALICE).changes(folder, state):
        items.update({i.item_id: i for i in page.upserted})
        deleted.extend(page.deleted)
        state = page.sync_state
    assert state is not None
    return items, deleted, state


async def test_create_writes_key_categories_and_no_attendees_in_batches_of_20(
    account: GraphAccount, graph: FakeGraph
) -> None:
    created = await account.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(45)])
    assert [c.psa_key for c in created] == [f"appointment:{n}" for n in range(45)]  # type: ignore[union-attr]
    assert graph.stats["POST /$batch"] == 3  # 20 + 20 + 5
    assert graph.stats["batch POST /users/{u}/events"] == 45
    [doc] = [d for d in graph.boxes[ALICE].items["/events"].values() if d["subject"] == "Visit 3"]
    assert "attendees" not in doc
    assert doc["categories"] == ["PSA"]
    assert doc["singleValueExtendedProperties"][0] == {
        "id": "String {8f4b6d2e-3c1a-4e7b-9a5d-2f6c8b1e7d34} Name exchanged-psa-key",
        "value": "appointment:3",
    }
    assert doc["start"] == {"dateTime": "2026-12-10T09:00:00", "timeZone": "UTC"}
    assert doc["showAs"] == "busy" and doc["sensitivity"] == "normal"


async def test_all_day_in_the_mailbox_zone_private_and_show_as(
    account: GraphAccount, graph: FakeGraph
) -> None:
    # midnight to midnight in Berlin (W. Europe Standard Time): 23:00 UTC the day before
    start = datetime(2026, 12, 9, 23, 0, tzinfo=UTC)
    new = NewItem(
        Kind.APPOINTMENT,
        "appointment:1",
        Appointment(
            "Holiday", start, start + timedelta(days=2), is_all_day=True, show_as=ShowAs.OOF, is_private=True
        ),
    )
    [item] = await account.mailbox(ALICE).create(FolderKind.CALENDAR, [new])
    [doc] = graph.boxes[ALICE].items["/events"].values()
    assert doc["isAllDay"] is True
    assert doc["start"] == {"dateTime": "2026-12-10T00:00:00", "timeZone": "W. Europe Standard Time"}
    assert doc["end"] == {"dateTime": "2026-12-12T00:00:00", "timeZone": "W. Europe Standard Time"}
    assert doc["showAs"] == "oof" and doc["sensitivity"] == "private"
    assert isinstance(item, ExchangeItem) and item.payload == new.payload


async def test_delta_then_quiet_cycle_costs_one_request_per_folder(
    account: GraphAccount, graph: FakeGraph
) -> None:
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(3)])
    await mb.create(
        FolderKind.CONTACTS,
        [NewItem(Kind.CONTACT, "contact:1", Contact("Ada", "Lovelace", email="ada@x.test"))],
    )
    items, _, cal_state = await everything(account, FolderKind.CALENDAR)
    assert sorted(i.psa_key for i in items.values()) == ["appointment:0", "appointment:1", "appointment:2"]  # type: ignore[type-var]
    contacts, _, con_state = await everything(account, FolderKind.CONTACTS)
    [c] = contacts.values()
    assert c.psa_key == "contact:1" and c.payload == Contact("Ada", "Lovelace", email="ada@x.test")
    graph.stats.clear()
    for folder, state in ((FolderKind.CALENDAR, cal_state), (FolderKind.CONTACTS, con_state)):
        again, deleted, _ = await everything(account, folder, state)
        assert not again and not deleted
    assert sum(graph.stats.values()) == 2, graph.stats


async def test_a_fresh_process_reads_keys_of_unknown_items_in_batches(graph: FakeGraph) -> None:
    async with trio.open_nursery():
        first = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
        await first.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(30)])
        await first.aclose()
        graph.stats.clear()
        second = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
        items, _, _ = await everything(second, FolderKind.CALENDAR)
        assert len({i.psa_key for i in items.values()}) == 30
        assert graph.stats["POST /$batch"] == 2  # 20 + 10 GETs of the key
        graph.stats.clear()
        third = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
        await third.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(100, 160)])
        graph.stats.clear()
        fourth = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
        items, _, _ = await everything(fourth, FolderKind.CALENDAR)
        assert len({i.psa_key for i in items.values()}) == 90
        assert (
            graph.stats["POST /$batch"] == 0 and graph.stats["GET /users/{u}/events"] == 1
        )  # one keyed listing
        for acc in (second, third, fourth):
            await acc.aclose()


async def test_update_sends_only_changed_fields_and_delete(account: GraphAccount, graph: FakeGraph) -> None:
    mb = account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    graph.boxes[ALICE].items["/events"][item.item_id]["location"] = {"displayName": "Room 7"}  # a user's edit
    new = Appointment("Visit 1 (moved)", item.payload.start, item.payload.end, "body 1", "HQ")  # type: ignore[union-attr]
    [res] = await mb.update(
        FolderKind.CALENDAR,
        [ItemUpdate(item.item_id, item.change_key, new, ("subject",), categories=("PSA", "Blue"))],
    )
    assert (
        isinstance(res, ExchangeItem) and res.change_key != item.change_key and res.psa_key == "appointment:1"
    )
    doc = graph.boxes[ALICE].items["/events"][item.item_id]
    assert doc["subject"] == "Visit 1 (moved)" and doc["location"] == {"displayName": "Room 7"}
    assert doc["categories"] == ["PSA", "Blue"]
    ghost = await mb.update(FolderKind.CALENDAR, [ItemUpdate("nope", "x", new, ("subject",))])
    assert isinstance(ghost[0], ItemError) and ghost[0].code == "ErrorItemNotFound"
    assert await mb.delete(FolderKind.CALENDAR, [item.item_id]) == [None]
    _, _deleted, _ = await everything(account, FolderKind.CALENDAR)
    assert item.item_id not in graph.boxes[ALICE].items["/events"]


async def test_deletions_come_back_from_delta(account: GraphAccount) -> None:
    mb = account.mailbox(ALICE)
    a, _b = await mb.create(FolderKind.CALENDAR, [appt(1), appt(2)])
    _, _, state = await everything(account, FolderKind.CALENDAR)
    await mb.delete(FolderKind.CALENDAR, [a.item_id])  # type: ignore[union-attr]
    items, deleted, _ = await everything(account, FolderKind.CALENDAR, state)
    assert deleted == [a.item_id] and not items  # type: ignore[union-attr]


async def test_find_by_psa_keys_by_key_and_by_listing(account: GraphAccount, graph: FakeGraph) -> None:
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(5)])
    graph.stats.clear()
    found = await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:2", "appointment:9"])
    assert list(found) == ["appointment:2"] and found["appointment:2"].payload == appt(2).payload
    assert graph.stats["POST /$batch"] == 1
    graph.stats.clear()
    keys = [f"appointment:{n}" for n in range(100)]
    found = await mb.find_by_psa_keys(FolderKind.CALENDAR, keys, folder_hint=5)
    assert sorted(found) == sorted(keys[:5])
    assert dict(graph.stats) == {"GET /users/{u}/events": 1}


async def test_lost_batch_reply_adopts_what_was_created_and_never_duplicates(
    account: GraphAccount, graph: FakeGraph
) -> None:
    graph.drop_next = "/$batch"
    created = await account.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(3)])
    assert all(isinstance(c, ExchangeItem) for c in created)
    keys = sorted(
        convert.extended(d, convert.PSA_KEY_PROP) or "" for d in graph.boxes[ALICE].items["/events"].values()
    )
    assert keys == ["appointment:0", "appointment:1", "appointment:2"]


async def test_throttling_obeys_retry_after_per_part_and_whole(
    account: GraphAccount, graph: FakeGraph, autojump_clock: trio.abc.Clock
) -> None:
    graph.throttle = [("/$batch", 7.0), ("/events", 3.0)]
    t0 = trio.current_time()
    created = await account.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(2)])
    assert all(isinstance(c, ExchangeItem) for c in created)
    assert trio.current_time() - t0 >= 10.0  # the whole batch waited 7 s, the throttled part 3 s more
    assert len(graph.boxes[ALICE].items["/events"]) == 2


async def test_never_more_than_four_requests_at_once_per_mailbox(account: GraphAccount) -> None:
    lane = account.client.lane(ALICE)
    assert lane.limiter.total_tokens == 4
    assert account.client.lane(ALICE.upper()) is lane and account.client.lane("bob@example.test") is not lane


async def test_tasks_in_a_list_of_their_own_with_linked_resources(
    account: GraphAccount, graph: FakeGraph
) -> None:
    mb = account.mailbox(ALICE)
    due = datetime(2026, 12, 10, tzinfo=UTC)
    [t] = await mb.create(FolderKind.TASKS, [NewItem(Kind.TODO, "todo:9", Task("Call back", "b", None, due))])
    assert isinstance(t, ExchangeItem) and t.psa_key == "todo:9"
    box = graph.boxes[ALICE]
    assert list(box.lists.values()) == ["PSA"]
    [(_coll, docs)] = [(c, d) for c, d in box.items.items() if c.startswith("/todo/")]
    [doc] = docs.values()
    assert doc["linkedResources"][0]["applicationName"] == "exchanged"
    assert doc["linkedResources"][0]["externalId"] == "todo:9"
    assert (
        doc["dueDateTime"] == {"dateTime": "2026-12-10T00:00:00", "timeZone": "UTC"}
        and doc["status"] == "notStarted"
    )
    # completed in To Do: flows back
    doc.update(
        status="completed", completedDateTime={"dateTime": "2026-12-08T10:00:00.0000000", "timeZone": "UTC"}
    )
    box.seq[doc["id"]] += 1000
    fresh = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    items, _, _ = await everything(fresh, FolderKind.TASKS)
    [back] = items.values()
    assert back.psa_key == "todo:9" and back.payload.completed == datetime(2026, 12, 8, 10, 0, tzinfo=UTC)  # type: ignore[union-attr]
    assert back.payload.due == due  # type: ignore[union-attr]
    found = await fresh.mailbox(ALICE).find_by_psa_keys(FolderKind.TASKS, ["todo:9"])
    assert found["todo:9"].item_id == doc["id"]
    await fresh.aclose()


async def test_missing_mailbox_and_missing_permission_are_named(
    account: GraphAccount, graph: FakeGraph
) -> None:
    with pytest.raises(errors.MailboxNotFound) as info:
        await account.mailbox("nobody@example.test").find_by_psa_keys(FolderKind.CONTACTS, ["contact:1"])
    assert "nobody@example.test" in str(info.value)
    graph.forbidden.add("events")
    with pytest.raises(errors.ImpersonationDenied) as denied:
        await account.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(1)])
    assert "Calendars.ReadWrite" in errors.present(denied.value).line()


async def test_check_names_a_missing_permission_and_the_time_zone(graph: FakeGraph) -> None:
    acc = GraphAccount(
        SETTINGS,
        transport=graph.transport(),
        tokens=FakeTokens(roles=("Contacts.ReadWrite", "Tasks.ReadWrite.All", "MailboxSettings.Read")),  # type: ignore[arg-type]
        now=lambda: T0,
    )
    graph.forbidden.add("calendarView")
    results = await acc.check([ALICE, "nobody@example.test"])
    await acc.aclose()
    by = {r.subject: r for r in results}
    assert by["login"].ok
    assert not by["Calendars.ReadWrite"].ok
    assert by["Calendars.ReadWrite"].message.startswith("Calendars.ReadWrite is not granted (admin consent)")
    assert by["Contacts.ReadWrite"].ok
    assert not by[ALICE].ok and "Calendars.ReadWrite is not granted (admin consent)" in by[ALICE].message
    assert not by["nobody@example.test"].ok and "no such mailbox" in by["nobody@example.test"].message
    graph.forbidden.clear()
    acc = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    [_, *_, alice] = await acc.check([ALICE])
    await acc.aclose()
    assert alice.ok and "W. Europe Standard Time" in alice.message


async def test_a_state_of_another_adapter_or_an_old_window_starts_over(account: GraphAccount) -> None:
    mb = account.mailbox(ALICE)
    with pytest.raises(errors.SyncStateInvalid) as info:
        async for _ in mb.changes(FolderKind.CALENDAR, "H4sIAAAAA-an-EWS-sync-state"):
            pass
    assert ALICE in str(info.value)
    _, _, state = await everything(account, FolderKind.CALENDAR)
    later = GraphAccount(
        SETTINGS,
        transport=account.client._http._transport,  # type: ignore[attr-defined]
        tokens=FakeTokens(),
        now=lambda: T0 + timedelta(days=8),
    )  # type: ignore[arg-type]
    with pytest.raises(errors.SyncStateInvalid):
        async for _ in later.mailbox(ALICE).changes(FolderKind.CALENDAR, state):
            pass
    await later.aclose()


async def test_a_settled_export_reads_nothing_more_with_known_items(graph: FakeGraph) -> None:
    first = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    created = await first.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(25)])
    await first.aclose()
    graph.stats.clear()
    fresh = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    known = {c.item_id: c for c in created if isinstance(c, ExchangeItem)}
    pages = [p async for p in fresh.mailbox(ALICE).changes(FolderKind.CALENDAR, None, known=known)]
    await fresh.aclose()
    assert [i for p in pages for i in p.upserted] == list(known.values())
    assert dict(graph.stats) == {
        "GET /users/{u}/mailboxSettings/timeZone": 1,
        "GET /users/{u}/calendarView/delta": 1,
    }


async def test_check_accepts_permissions_granted_by_rbac_for_applications(graph: FakeGraph) -> None:
    # RBAC for Applications grants in Exchange: the token carries no roles, the mailbox answers
    acc = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(roles=()), now=lambda: T0)  # type: ignore[arg-type]
    results = {r.subject: r for r in await acc.check([ALICE])}
    await acc.aclose()
    assert all(r.ok for r in results.values()), results
    assert "RBAC for Applications" in results["Calendars.ReadWrite"].message


async def test_after_a_restart_many_tasks_keep_their_times_of_day(graph: FakeGraph) -> None:
    first = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    due = datetime(2026, 12, 10, 17, 30, tzinfo=UTC)
    tasks = [NewItem(Kind.TODO, f"todo:{n}", Task(f"Call {n}", due=due)) for n in range(50)]
    await first.mailbox(ALICE).create(FolderKind.TASKS, tasks)
    await first.aclose()
    fresh = GraphAccount(SETTINGS, transport=graph.transport(), tokens=FakeTokens(), now=lambda: T0)  # type: ignore[arg-type]
    items, _, _ = await everything(fresh, FolderKind.TASKS)  # more than 40 unknown: one keyed listing
    await fresh.aclose()
    assert len(items) == 50
    assert {i.payload.due for i in items.values()} == {due}  # type: ignore[union-attr]
