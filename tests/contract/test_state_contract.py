"""The StateStore contract: every implementation (memory twin, SQLite, PostgreSQL) passes it.

To add an implementation, add one entry to ``IMPLEMENTATIONS`` (an async context manager that
yields a fresh, empty store and says whether its leases are exclusive).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchanged.model import (
    Appointment,
    Contact,
    Counts,
    CycleOutcome,
    ExchangeItem,
    FolderKind,
    JournalEntry,
    Kind,
    Mapping,
    ShowAs,
    Task,
)
from exchanged.ports import FolderState, StateBatch, StateStore
from exchanged.state import open_state_store
from tests.memory import MemoryState

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
BOX = "alice@example.test"
OTHER = "bob@example.test"


@dataclass
class Impl:
    store: StateStore
    exclusive_leases: bool  # False: a single-node store that grants every lease (SQLite)
    reopen: Callable[[], AbstractAsyncContextManager[StateStore]] | None = None


@asynccontextmanager
async def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Impl]:
    yield Impl(MemoryState(), exclusive_leases=True)


@asynccontextmanager
async def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Impl]:
    url = f"sqlite:///{tmp_path / 'sub' / 'state.db'}"
    async with _opened(url) as store:
        yield Impl(store, exclusive_leases=False, reopen=lambda: _opened(url))


@asynccontextmanager
async def _postgres(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Impl]:
    url = request.getfixturevalue("pg_url")
    async with _opened(url) as store:
        yield Impl(store, exclusive_leases=True, reopen=lambda: _opened(url))


@asynccontextmanager
async def _opened(url: str) -> AsyncIterator[StateStore]:
    store = await open_state_store(url)
    try:
        yield store
    finally:
        await store.aclose()


IMPLEMENTATIONS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=IMPLEMENTATIONS)
async def impl(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Impl]:
    async with request.param(tmp_path, request) as found:
        yield found


# --- sample values ------------------------------------------------------------------------------


def mapping(key: str, item_id: str, kind: Kind = Kind.APPOINTMENT, **kw: Any) -> Mapping:
    from exchanged.model import FOLDER_OF_KIND

    return Mapping(kind, key, FOLDER_OF_KIND[kind], item_id, f"ck-{item_id}", f"ph-{key}", f"eh-{key}", **kw)


APPT = Appointment("Visit Contoso — café ☕", NOW, NOW + timedelta(hours=1), body="line 1\nline 2",
                   location="Room 1", is_all_day=False, show_as=ShowAs.OOF, is_private=True)
TASK = Task("Call", body="about the invoice", start=NOW, due=NOW + timedelta(days=1), completed=None)
CONTACT = Contact("Ann", "Smith", company="Contoso", job_title="CEO", email="ann@contoso.test",
                  business_phone="+1 555", mobile_phone="")


def items() -> dict[FolderKind, list[ExchangeItem]]:
    return {
        FolderKind.CALENDAR: [
            ExchangeItem(FolderKind.CALENDAR, "i1", "c1", APPT, psa_key="appointment:1", categories=("PSA",),
                         uid="UID-1", exchange_key="UID-1", last_modified=NOW),
            ExchangeItem(FolderKind.CALENDAR, "i2", "c2", dataclasses.replace(APPT, is_all_day=True),
                         uid="UID-2", exchange_key="UID-2", is_recurring_master=True),
        ],
        FolderKind.TASKS: [ExchangeItem(FolderKind.TASKS, "t1", "c3", TASK, psa_key="todo:1"),
                           ExchangeItem(FolderKind.TASKS, "t2", "c4",
                                        dataclasses.replace(TASK, completed=NOW, start=None))],
        FolderKind.CONTACTS: [ExchangeItem(FolderKind.CONTACTS, "k1", "c5", CONTACT, psa_key="contact:1")],
    }


def entry(i: int, mailbox: str = BOX, at: datetime = NOW) -> JournalEntry:
    return JournalEntry(at + timedelta(seconds=i), mailbox, "exchange", "create", Kind.APPOINTMENT,
                        f"appointment:{i}", f"i{i}", ("subject", "start"), "new in the PSA", "cycle-1")


def full_batch() -> StateBatch:
    return StateBatch(
        upsert_mappings=[mapping("appointment:1", "i1"), mapping("todo:1", "t1", Kind.TODO),
                         mapping("imported:5", "i2", Kind.IMPORTED, exchange_key="UID-2")],
        mirror_upserts=items(),
        sync_states={FolderKind.CALENDAR: "SS-cal-1", FolderKind.TASKS: "SS-task-1",
                     FolderKind.CONTACTS: None},
        journal=[entry(1), entry(2)],
        held_back_deletes=["contact:9", "contact:8"],
        server_identity="mail.example.test|/EWS|Exchange2016",
    )


# --- the contract -------------------------------------------------------------------------------


async def test_an_unknown_user_has_empty_state(impl: Impl) -> None:
    user = await impl.store.load_user(BOX)
    assert (user.mailbox, user.mappings, user.folders, user.held_back_deletes) == (BOX, {}, {}, [])


async def test_the_generation_counts_commits_and_resets_of_one_user_only(impl: Impl) -> None:
    """A runner keeps its last state in memory and trusts it while the generation is unchanged:
    every commit and reset must move it, reading and outcomes must not, other users never."""
    assert await impl.store.generation(BOX) == 0 and (await impl.store.load_user(BOX)).generation == 0
    first = await impl.store.commit(BOX, full_batch())
    second = await impl.store.commit(BOX, StateBatch(journal=[entry(3)]))
    assert 0 < first < second
    assert await impl.store.generation(BOX) == second == (await impl.store.load_user(BOX)).generation
    await impl.store.record_outcome(BOX, NOW, CycleOutcome("ok"))
    await impl.store.mark_known(BOX)
    await impl.store.history(BOX, None)
    assert await impl.store.generation(BOX) == second
    assert await impl.store.generation(OTHER) == 0
    await impl.store.reset_user(BOX, keep_mappings=True)
    assert await impl.store.generation(BOX) > second
    assert (await impl.store.load_user(BOX)).generation == await impl.store.generation(BOX)


async def test_a_batch_round_trips_every_value(impl: Impl) -> None:
    await impl.store.commit(BOX, full_batch())
    user = await impl.store.load_user(BOX)
    batch = full_batch()
    assert user.mappings == {m.psa_key: m for m in batch.upsert_mappings}
    assert set(user.folders) == {FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS}
    for folder, expected in items().items():
        fs = user.folders[folder]
        assert fs.items == {i.item_id: i for i in expected}
        assert fs.sync_state == batch.sync_states[folder]
        assert fs.server_identity == batch.server_identity
    assert user.held_back_deletes == ["contact:9", "contact:8"]
    assert (await impl.store.load_user(OTHER)).mappings == {}
    assert [e for e in await impl.store.history(BOX, None)] == [entry(1), entry(2)]


async def test_later_batches_change_delete_and_leave_the_rest(impl: Impl) -> None:
    await impl.store.commit(BOX, full_batch())
    moved = mapping("appointment:1", "i1")
    await impl.store.commit(BOX, StateBatch(
        upsert_mappings=[dataclasses.replace(moved, change_key="c1-new", psa_hash="new")],
        delete_mappings=["todo:1", "never-there"],
        mirror_deletes={FolderKind.TASKS: ["t1", "gone"]},
        mirror_upserts={FolderKind.CALENDAR: [dataclasses.replace(items()[FolderKind.CALENDAR][0],
                                                                  change_key="c1-new")]},
        sync_states={FolderKind.TASKS: "SS-task-2"},
    ))
    user = await impl.store.load_user(BOX)
    assert set(user.mappings) == {"appointment:1", "imported:5"}
    assert user.mappings["appointment:1"].change_key == "c1-new"
    assert user.mappings["appointment:1"].psa_hash == "new"
    assert set(user.folders[FolderKind.TASKS].items) == {"t2"}
    assert user.folders[FolderKind.TASKS].sync_state == "SS-task-2"
    assert user.folders[FolderKind.CALENDAR].items["i1"].change_key == "c1-new"
    assert user.folders[FolderKind.CALENDAR].sync_state == "SS-cal-1"
    assert user.held_back_deletes == ["contact:9", "contact:8"]  # None in the batch: unchanged
    await impl.store.commit(BOX, StateBatch(held_back_deletes=[]))
    assert (await impl.store.load_user(BOX)).held_back_deletes == []


async def test_server_identity_is_set_on_the_folders_a_batch_touches(impl: Impl) -> None:
    await impl.store.commit(BOX, StateBatch(sync_states={FolderKind.CALENDAR: "a", FolderKind.TASKS: "b"},
                                            server_identity="one"))
    await impl.store.commit(BOX, StateBatch(sync_states={FolderKind.TASKS: "c"}, server_identity="two"))
    folders = (await impl.store.load_user(BOX)).folders
    assert folders[FolderKind.CALENDAR] == FolderState("a", {}, "one")
    assert folders[FolderKind.TASKS] == FolderState("c", {}, "two")


async def test_load_user_hands_out_copies(impl: Impl) -> None:
    await impl.store.commit(BOX, full_batch())
    user = await impl.store.load_user(BOX)
    user.mappings.clear()
    user.folders[FolderKind.CALENDAR].items.clear()
    user.held_back_deletes.append("x")
    again = await impl.store.load_user(BOX)
    assert len(again.mappings) == 3 and len(again.folders[FolderKind.CALENDAR].items) == 2
    assert again.held_back_deletes == ["contact:9", "contact:8"]


async def test_reset_user_forgets_sync_states_and_mirrors(impl: Impl) -> None:
    await impl.store.commit(BOX, full_batch())
    await impl.store.commit(OTHER, full_batch())
    await impl.store.reset_user(BOX, keep_mappings=True)
    user = await impl.store.load_user(BOX)
    assert user.folders == {} and len(user.mappings) == 3
    await impl.store.reset_user(BOX, keep_mappings=False)
    assert (await impl.store.load_user(BOX)).mappings == {}
    other = await impl.store.load_user(OTHER)
    assert len(other.mappings) == 3 and other.folders[FolderKind.CALENDAR].sync_state == "SS-cal-1"
    await impl.store.reset_user("nobody@example.test", keep_mappings=False)  # no such user: fine


async def test_outcomes_and_known_users_are_recorded(impl: Impl) -> None:
    assert await impl.store.user_records() == {}
    ok = CycleOutcome("ok", Counts(exported=3, imported=1))
    await impl.store.record_outcome(BOX, NOW, ok)
    later = NOW + timedelta(minutes=15)
    await impl.store.record_outcome(BOX, later, CycleOutcome("error", error="Exchange down"))
    await impl.store.mark_known(OTHER)
    records = await impl.store.user_records()
    assert set(records) == {BOX, OTHER}
    rec = records[BOX]
    assert (rec.last_attempt, rec.last_success, rec.last_result, rec.last_error) == (
        later, NOW, "error", "Exchange down")
    assert rec.counts == {"exported": 0, "imported": 0, "updated": 0, "deleted": 0}
    assert rec.known is False
    assert records[OTHER].known is True and records[OTHER].last_attempt is None
    assert await impl.store.mark_known(BOX) is True
    assert await impl.store.mark_known(BOX) is False  # a second node starting at once sends no mail
    await impl.store.record_outcome(BOX, later, ok)
    rec = (await impl.store.user_records())[BOX]
    assert rec.known is True and rec.last_success == later and rec.counts["exported"] == 3


async def test_history_is_oldest_first_filtered_and_limited(impl: Impl) -> None:
    await impl.store.commit(BOX, StateBatch(journal=[entry(i) for i in range(5)]))
    await impl.store.commit(OTHER, StateBatch(journal=[entry(10, OTHER)]))
    await impl.store.commit(BOX, StateBatch(journal=[entry(20)]))
    mine = await impl.store.history(BOX, None)
    assert [e.key for e in mine] == [f"appointment:{i}" for i in (0, 1, 2, 3, 4, 20)]
    assert mine[0] == entry(0)
    assert [e.key for e in await impl.store.history(None, None)][-2:] == ["appointment:10", "appointment:20"]
    since = await impl.store.history(BOX, NOW + timedelta(seconds=3))
    assert [e.key for e in since] == ["appointment:3", "appointment:4", "appointment:20"]
    newest = await impl.store.history(BOX, None, limit=2)
    assert [e.key for e in newest] == ["appointment:4", "appointment:20"]
    assert await impl.store.history("nobody@example.test", None) == []


async def test_leases(impl: Impl) -> None:
    store = impl.store
    assert await store.try_lease(BOX, "node-a", 60)
    assert await store.try_lease(BOX, "node-a", 60)  # renewing one's own
    assert await store.try_lease(OTHER, "node-b", 60)
    if impl.exclusive_leases:
        assert not await store.try_lease(BOX, "node-b", 60)
        await store.release_lease(BOX, "node-b")  # not the holder: nothing happens
        assert not await store.try_lease(BOX, "node-b", 60)
        await store.release_lease(BOX, "node-a")
        assert await store.try_lease(BOX, "node-b", 60)
        assert await store.try_lease(BOX, "node-b", 0)  # renewed to expire at once (a dead node)
        assert await store.try_lease(BOX, "node-a", 60)  # expired: taken over
        assert not await store.try_lease(BOX, "node-b", 60)
        holders = await store.lease_holders()  # the live leases, by mailbox
        assert {m: lease.node for m, lease in holders.items()} == {BOX: "node-a", OTHER: "node-b"}
        assert all(lease.expires_at.tzinfo is not None for lease in holders.values())
    else:
        assert await store.try_lease(BOX, "node-b", 60)
        assert await store.lease_holders() == {}  # a single-node store keeps no leases
    await store.release_lease(BOX, "node-a")
    assert BOX not in await store.lease_holders()


async def test_committed_state_survives_reopening(impl: Impl) -> None:
    if impl.reopen is None:
        pytest.skip("an in-memory store has nothing to reopen")
    await impl.store.commit(BOX, full_batch())
    await impl.store.record_outcome(BOX, NOW, CycleOutcome("ok"))
    async with impl.reopen() as again:
        user = await again.load_user(BOX)
        assert len(user.mappings) == 3 and user.folders[FolderKind.TASKS].items == {
            i.item_id: i for i in items()[FolderKind.TASKS]}
        assert (await again.user_records())[BOX].last_success == NOW
        assert len(await again.history(BOX, None)) == 2
