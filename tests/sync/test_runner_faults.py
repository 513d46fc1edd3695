"""Crashes, lost replies, throttling and guards: every cycle converges, nothing is duplicated."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
import structlog.testing
import trio

from exchanged import errors
from exchanged.model import Contact, FolderKind, Kind, Task

from .world import MAILBOX, NOW, RESOURCE, World, appt


async def scenario() -> World:
    """A synced world, then edits on both sides: the next cycle writes on every path."""
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(4)]
    todo = w.psa.add(Kind.TODO, Task("t", due=NOW + timedelta(days=1)), [RESOURCE])
    w.psa.add(Kind.CONTACT, Contact("Ada", "Lovelace"), [RESOURCE])
    foreign = [w.mb.user_add(FolderKind.CALENDAR, appt(f"x{n}", hours=20 + n)) for n in range(3)]
    w.mb.user_add_series(appt("standup"), [NOW + timedelta(days=d) for d in range(1, 4)], uid="S1")
    out = await w.cycle()
    assert out.result == "ok", out
    # PSA side: new, edited, deleted rows
    w.psa.add(Kind.APPOINTMENT, appt("new", hours=30), [RESOURCE])
    w.psa.add(Kind.SERVICE_CALL, appt("call", hours=31), [RESOURCE])
    w.psa.edit(keys[0], subject="edited")
    w.psa.remove(keys[1])
    # Exchange side: flow-back, overwrite, re-create, foreign add/edit/delete
    w.mb.user_edit(FolderKind.CALENDAR, w.item_of(keys[2]).item_id, start=NOW + timedelta(hours=40),
                   end=NOW + timedelta(hours=41), location="mine")
    w.mb.user_delete(FolderKind.CALENDAR, w.item_of(keys[3]).item_id)
    w.mb.user_edit(FolderKind.TASKS, w.item_of(todo).item_id, completed=NOW)
    w.mb.user_add(FolderKind.CALENDAR, appt("x-new", hours=50))
    w.mb.user_edit(FolderKind.CALENDAR, foreign[0].item_id, subject="x0 moved")
    w.mb.user_delete(FolderKind.CALENDAR, foreign[1].item_id)
    return w


def inject(w: World, where: str, skip: int, drop: bool) -> None:
    if where == "exchange":
        w.exchange.fault(None, skip=skip, drop=drop)
    elif where == "psa":
        w.psa.fault(None, skip=skip, drop=drop)
    else:
        w.state.fault(None, skip=skip, drop=drop)


def pending(w: World, where: str) -> int:
    return {"exchange": w.exchange.faults, "psa": w.psa.faults, "state": w.state.faults}[where].pending()


@pytest.mark.parametrize("drop", [False, True], ids=["fail", "lost-reply"])
@pytest.mark.parametrize("where", ["exchange", "psa", "state"])
async def test_a_fault_at_any_step_converges_without_duplicates(where: str, drop: bool) -> None:
    """Fail (or apply-then-fail) the k-th call for every k; a restarted runner converges."""
    k = 0
    while True:
        w = await scenario()
        inject(w, where, k, drop)
        first = await w.cycle()
        hit = pending(w, where) == 0
        if hit:
            assert first.result == "error" and first.error, first
        w.runner = w.make_runner()  # a restart: nothing survives but the state store
        for _ in range(3):
            out = await w.cycle()
            if out.result == "ok":
                break
        await w.assert_converged()
        if not hit:
            assert k >= 2  # the loop did walk through the cycle's calls
            break
        k += 1


async def test_lost_create_reply_is_adopted_not_duplicated() -> None:
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(3)]
    w.exchange.fault("CreateItem", drop=True)
    out = await w.cycle()
    assert out.result == "error" and "connection closed" in (out.error or "")
    assert len(w.mb.items(FolderKind.CALENDAR)) == 3  # created, but the state never heard of it
    assert w.state.mappings(MAILBOX) == {}
    w.exchange.requests.clear()
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 0
    assert w.exchange.requests["CreateItem"] == 0
    assert all(len(w.mb.by_psa_key(FolderKind.CALENDAR, k)) == 1 for k in keys)
    assert {e.action for e in w.state.journal} == {"adopt"}
    await w.assert_converged()


async def test_find_by_psa_keys_adopts_when_the_mirror_is_stale() -> None:
    """An item that appears between the sync and the create (a lost reply of an earlier call that
    the server carried out late, another node) is adopted, not duplicated."""
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    mb = w.mb
    real_changes = mb.changes

    async def changes_then_item_appears(folder, state, **kw):  # type: ignore[no-untyped-def]
        async for page in real_changes(folder, state, **kw):
            yield page
        if folder is FolderKind.CALENDAR and not mb.by_psa_key(folder, key):
            mb._new_item(folder, appt("a", location="elsewhere"), psa_key=key, categories=("PSA",))

    mb.changes = changes_then_item_appears  # type: ignore[method-assign]
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 0
    assert w.exchange.requests["CreateItem"] == 0 and w.exchange.requests["FindItem"] == 1
    assert len(mb.by_psa_key(FolderKind.CALENDAR, key)) == 1
    assert w.item_of(key).payload.location == ""  # adopted with other values: overwritten
    assert [e.action for e in w.state.journal] == ["adopt", "update"]
    del mb.changes
    await w.assert_converged()


async def test_item_error_is_reported_with_its_key_and_the_rest_goes_on() -> None:
    w = World()
    bad = w.psa.add(Kind.APPOINTMENT, appt("bad"), [RESOURCE])
    good = w.psa.add(Kind.APPOINTMENT, appt("good"), [RESOURCE])
    w.exchange.rejected.add(bad)
    out = await w.cycle()
    assert out.result == "partial" and [e.key for e in out.item_errors] == [bad]
    assert w.item_of(good)
    w.exchange.rejected.clear()
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 1
    await w.assert_converged()


async def test_throttling_backs_off_per_hint_and_resumes(autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.exchange.fault("CreateItem", times=2, exc=errors.Throttled("server busy", back_off_s=30))
    w.exchange.fault("SyncFolderItems", exc=errors.Throttled("server busy", back_off_s=None))
    start = trio.current_time()
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 1
    assert trio.current_time() - start >= 60  # two 30 s hints, plus the jittered one
    await w.assert_converged()


async def test_endless_throttling_ends_the_cycle_with_an_error(
        autojump_clock: trio.testing.MockClock) -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.exchange.fault("CreateItem", times=100, exc=errors.Throttled("server busy", back_off_s=10))
    out = await w.cycle()
    assert out.result == "error" and "server busy" in (out.error or "")
    assert MAILBOX in (out.error or "")


async def test_psa_unavailable_is_a_cycle_error_and_deletes_nothing() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.mb.user_add(FolderKind.CALENDAR, appt("x"))
    await w.cycle()
    w.psa.unavailable = True
    out = await w.cycle()
    assert out.result == "error" and "PSA" in (out.error or "") and out.reason == "psa_unreachable"
    assert len(w.mb.items(FolderKind.CALENDAR)) == 2
    assert w.state.records[MAILBOX].last_result == "error"


async def test_empty_psa_is_never_mirrored_as_deletions() -> None:
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(3)]
    await w.cycle()
    for k in keys:
        w.psa.remove(k)  # e.g. a broken PSA query that returns nothing
    out = await w.cycle()
    assert out.result == "held_back" and out.held_back_deletes == 3 and out.counts.deleted == 0
    assert "returned no appointment rows" in (out.error or "") and out.reason == "side_looks_empty"
    assert len(w.mb.items(FolderKind.CALENDAR)) == 3
    assert sorted(w.state.users[MAILBOX].held_back_deletes) == sorted(keys)
    plan = await w.runner.plan(w.user)
    assert plan["findings"][0]["code"] == "side_looks_empty"
    out = await w.cycle(allow_deletes=True)
    assert out.result == "ok" and out.counts.deleted == 3
    assert w.state.users[MAILBOX].held_back_deletes == []


async def test_empty_exchange_calendar_is_never_mirrored_into_the_psa() -> None:
    w = World()
    items = [w.mb.user_add(FolderKind.CALENDAR, appt(f"x{n}", hours=n)) for n in range(2)]
    await w.cycle()
    for i in items:
        w.mb.user_delete(FolderKind.CALENDAR, i.item_id)
    out = await w.cycle()
    assert out.result == "held_back" and len(w.imported_rows()) == 2


async def test_mass_delete_is_held_back_until_allowed() -> None:
    w = World()
    w.configure(max_deletes_per_cycle=2)
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(5)]
    await w.cycle()
    for k in keys[:3]:
        w.psa.remove(k)
    out = await w.cycle()
    assert out.result == "held_back" and out.held_back_deletes == 3 and out.counts.deleted == 0
    assert "max_deletes_per_cycle" in (out.error or "") and out.reason == "deletes_held_back"
    assert len(w.mb.items(FolderKind.CALENDAR)) == 5
    out = await w.cycle()  # still held: release needs the operator
    assert out.result == "held_back"
    out = await w.cycle(allow_deletes=True)
    assert out.result == "ok" and out.counts.deleted == 3
    await w.assert_converged()


async def test_sync_state_is_checkpointed_per_page() -> None:
    w = World()
    for n in range(1100):
        w.mb.user_add(FolderKind.CALENDAR, appt(f"x{n}", hours=n % 500))
    w.exchange.fault("SyncFolderItems", skip=2)  # the 3rd page fails
    out = await w.cycle()
    assert out.result == "error"
    fs = w.state.users[MAILBOX].folders[FolderKind.CALENDAR]
    assert len(fs.items) == 1024 and fs.sync_state is not None
    w.exchange.requests.clear()
    w.configure(max_deletes_per_cycle=25)
    out = await w.cycle()
    assert out.result == "ok" and out.counts.imported == 1100
    assert w.exchange.requests["SyncFolderItems"] == 1 + 2  # the last calendar page, tasks, contacts
    await w.assert_converged()


async def test_invalid_sync_state_resyncs_without_duplicates() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.mb.user_add(FolderKind.CALENDAR, appt("x"))
    await w.cycle()
    w.mb.invalidate_sync_states(FolderKind.CALENDAR)
    before = w.writes()
    out = await w.cycle()
    assert out.result == "ok" and w.writes() == before
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1
    await w.assert_converged()


async def test_server_identity_change_resyncs_and_adopts_without_recreating() -> None:
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(3)]
    await w.cycle()
    w.state.users[MAILBOX].mappings.clear()  # the worst case: nothing remembered
    w.server_identity = "mail2.example.test/EWS/Exchange2019"
    w.runner = w.make_runner()
    w.exchange.requests.clear()
    out = await w.cycle()
    assert out.result == "ok" and w.exchange.requests["CreateItem"] == 0
    assert sorted(w.state.mappings(MAILBOX)) == sorted(keys)
    assert all(fs.server_identity == w.server_identity for fs in w.state.users[MAILBOX].folders.values())
    await w.assert_converged()


async def test_full_resync_reverifies_and_rewrites_nothing_that_agrees() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.mb.user_add(FolderKind.CALENDAR, appt("x"))
    await w.cycle()
    before = w.writes()
    out = await w.cycle(full=True)
    assert out.result == "ok" and w.writes() == before


async def test_plan_changes_nothing_anywhere() -> None:
    w = await scenario()
    users = copy.deepcopy(w.state.users)
    journal = list(w.state.journal)
    commits = w.state.commits
    rows = copy.deepcopy(w.psa.rows)
    writes = w.writes()
    plan = await w.runner.plan(w.user)
    assert plan["actions"] and plan["mailbox"] == MAILBOX
    by = {(a["side"], a["action"]) for a in plan["actions"]}
    assert {("exchange", "create"), ("exchange", "update"), ("exchange", "delete"), ("psa", "create"),
            ("psa", "update"), ("psa", "delete")} <= by
    assert all(a["reason"] for a in plan["actions"])
    assert {a["subject"] for a in plan["actions"] if a["kind"] == "imported" and a["action"] == "create"} == {
        "x-new"}
    assert w.state.users == users and w.state.journal == journal and w.state.commits == commits
    assert w.psa.rows == rows and w.writes() == writes
    import json
    json.dumps(plan)  # JSON-able for the control protocol


async def test_journal_records_every_change_with_reason_and_cycle_id() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle(cycle_id="c1")
    [entry] = w.state.journal
    assert (entry.side, entry.action, entry.kind, entry.key, entry.cycle_id) == (
        "exchange", "create", Kind.APPOINTMENT, key, "c1")
    assert entry.item_id == w.item_of(key).item_id and entry.reason == "new in the PSA"


async def test_progress_reports_done_of_total() -> None:
    w = World()
    for n in range(250):
        w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE])
    seen: list[tuple[int, int]] = []
    out = await w.cycle(progress=lambda d, t: seen.append((d, t)))
    assert out.counts.exported == 250
    assert seen == [(100, 250), (200, 250), (250, 250)]
    assert w.exchange.requests["CreateItem"] == 3


async def test_an_adapter_answering_too_few_results_is_an_item_error_not_a_crash() -> None:
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE]) for n in range(3)]
    mb = w.mb
    real_create = mb.create

    async def short_create(folder, items):  # type: ignore[no-untyped-def]
        return list(await real_create(folder, items))[:-1]

    mb.create = short_create  # type: ignore[method-assign]
    out = await w.cycle()
    assert out.result == "partial" and [e.code for e in out.item_errors] == ["no_result"]
    assert out.item_errors[0].key == keys[2]
    del mb.create
    out = await w.cycle()  # the third was created after all: adopted, not duplicated
    assert out.result == "ok"
    await w.assert_converged()


async def test_an_unexpected_adapter_exception_is_an_error_outcome_not_a_crash() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.exchange.fault("CreateItem", exc=ValueError("adapter bug"))
    out = await w.cycle()
    assert out.result == "error" and out.reason == "internal_error"
    assert "ValueError: adapter bug" in (out.error or "")
    out = await w.cycle()
    assert out.result == "ok"
    await w.assert_converged()


async def test_an_unexpected_exception_is_an_internal_error_logged_with_its_traceback() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])

    async def broken(*args: object, **kwargs: object) -> object:
        return [][0]  # a bug somewhere below the runner

    w.psa.load = broken  # type: ignore[method-assign,assignment]
    with structlog.testing.capture_logs() as logs:
        out = await w.cycle()
    assert out.result == "error" and out.reason == "internal_error"
    assert "IndexError" in (out.error or "") and "the log has the traceback" in (out.error or "")
    [crash] = [e for e in logs if e.get("log_level") == "error"]
    assert crash.get("mailbox") == MAILBOX and isinstance(crash.get("exc_info"), IndexError)
    assert crash["exc_info"].__traceback__ is not None  # the renderer prints it


async def test_the_outcome_counts_items_written_by_kind_and_side() -> None:
    w = World()
    for n in range(2):
        w.psa.add(Kind.APPOINTMENT, appt(f"a{n}", hours=n), [RESOURCE])
    w.mb.user_add(FolderKind.CALENDAR, appt("x", hours=5))
    out = await w.cycle()
    assert out.written == {("appointment", "exchange"): 2, ("imported", "psa"): 1}, out.written
    assert (out.counts.exported, out.counts.imported) == (2, 1)


async def test_the_journal_names_what_was_written() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("Visit Contoso", hours=1), [RESOURCE])
    w.mb.user_add(FolderKind.CALENDAR, appt("Dentist", hours=5))
    await w.cycle()
    named = {(e.side, e.kind.value, e.subject) for e in await w.state.history(MAILBOX, None)}
    assert ("psa", "imported", "Dentist") in named  # the imported row shows its subject
    assert ("exchange", "appointment", "Visit Contoso") in named


async def test_the_journal_names_what_was_deleted() -> None:
    """A deletion's item is gone when the journal is written: the subject comes from the plan."""
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("Visit Contoso", hours=1), [RESOURCE])
    w.psa.add(Kind.APPOINTMENT, appt("Stays", hours=2), [RESOURCE])  # no side looks empty after
    w.mb.user_add(FolderKind.CALENDAR, appt("Dentist", hours=5))
    w.mb.user_add(FolderKind.CALENDAR, appt("Stays too", hours=6))
    await w.cycle()
    w.psa.remove(key)
    [dentist] = [i for i in w.mb.items(FolderKind.CALENDAR) if i.payload.subject == "Dentist"]
    w.mb.user_delete(FolderKind.CALENDAR, dentist.item_id)
    await w.cycle()
    deleted = {(e.side, e.kind.value, e.subject) for e in await w.state.history(MAILBOX, None)
               if e.action == "delete"}
    assert deleted == {("exchange", "appointment", "Visit Contoso"), ("psa", "imported", "Dentist")}
