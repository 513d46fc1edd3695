"""Quiet cycles: a runner that found nothing to do skips the PSA load and the plan next time, as
long as nothing they depend on changed (sync/quiet.py), and never misses what did change."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from exchanged.model import FolderKind, Kind, Task
from exchanged.ports import StateBatch
from exchanged.psa.sql import open_sql_connector
from exchanged.sync import SyncRunner

from .world import MAILBOX, RESOURCE, World, appt


async def settled(w: World) -> None:
    """Export, then the cycle that confirms the creates, then one with nothing to do at all."""
    for _ in range(3):
        out = await w.cycle()
        assert out.result == "ok", out


def loads(w: World) -> int:
    return w.psa.requests["load"]


async def quiet_world() -> tuple[World, str]:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("visit"), [RESOURCE])
    w.psa.add(Kind.TODO, Task("call back", start=w.now + timedelta(days=1), due=w.now + timedelta(days=2)),
              [RESOURCE])
    await settled(w)
    return w, key


async def test_a_cycle_with_nothing_new_reads_no_psa_rows_and_plans_nothing() -> None:
    w, _ = await quiet_world()
    before_loads, before_writes = loads(w), w.writes()
    before_sync = w.exchange.requests["SyncFolderItems"]
    for _ in range(3):
        out = await w.cycle()
        assert out.result == "ok" and out.counts.as_dict() == {
            "exported": 0, "imported": 0, "updated": 0, "deleted": 0}
    assert loads(w) == before_loads  # the change token said the PSA is as it was
    assert w.writes() == before_writes
    assert w.exchange.requests["SyncFolderItems"] - before_sync == 3 * 3  # one per folder per cycle
    await w.assert_converged()


async def test_a_psa_edit_is_seen_by_the_next_cycle() -> None:
    w, key = await quiet_world()
    w.psa.edit(key, subject="visit (moved)")
    out = await w.cycle()
    assert out.result == "ok" and out.counts.updated == 1
    assert w.item_of(key).payload.subject == "visit (moved)"  # type: ignore[union-attr]
    await w.assert_converged()


async def test_an_exchange_edit_is_seen_by_the_next_cycle() -> None:
    w, key = await quiet_world()
    item = w.item_of(key)
    later = item.payload.start + timedelta(hours=2)  # type: ignore[union-attr]
    w.mb.user_edit(FolderKind.CALENDAR, item.item_id, start=later, end=later + timedelta(hours=1))
    out = await w.cycle()
    assert out.result == "ok" and out.counts.updated == 1
    [row] = [r for r in w.psa.records(Kind.APPOINTMENT) if r.psa_key == key]
    assert row.payload.start == later  # type: ignore[union-attr]
    await w.assert_converged()


async def test_another_writer_of_the_state_makes_the_runner_read_it_again() -> None:
    """Another node (or a reset) moved the generation: the state in memory is not trusted."""
    w, key = await quiet_world()
    await w.state.commit(MAILBOX, StateBatch(delete_mappings=[key]))  # somebody else forgot the pair
    before = loads(w)
    out = await w.cycle()
    assert out.result == "ok" and loads(w) == before + 1
    assert key in w.state.mappings(MAILBOX)  # re-adopted from what the store now says, no duplicate
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1
    await w.assert_converged()


async def test_time_passing_an_items_end_out_of_the_window_is_not_skipped() -> None:
    """Nothing changes on either side, but the sliding window leaves the item behind: the cycle
    after that moment plans again and forgets the pair (nothing is deleted)."""
    w, key = await quiet_world()
    before = loads(w)
    w.now += timedelta(days=w.settings.past_days - 1)  # still inside: quiet
    await w.cycle()
    assert loads(w) == before
    w.now += timedelta(days=2)  # the appointment ended more than past_days ago now
    out = await w.cycle()
    assert out.result == "ok" and loads(w) == before + 1
    assert key not in w.state.mappings(MAILBOX)
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1  # left alone in Exchange


async def test_an_occurrence_sliding_into_the_window_is_imported_without_any_change() -> None:
    """Neither side changes and the expansion is still fresh (it reaches 6 h past the window),
    yet the window's end reaches the next occurrence of a series: only the engine's
    ``stable_until`` knows, and the cycle after that moment imports it."""
    w, _ = await quiet_world()
    end = w.now + timedelta(days=w.settings.recurring_future_days)
    w.mb.user_add_series(appt("standup"), [w.now + timedelta(days=1), end + timedelta(hours=2)])
    await settled(w)
    assert len(w.imported_rows()) == 1
    w.now += timedelta(hours=1)
    await w.cycle()
    assert len(w.imported_rows()) == 1
    w.now += timedelta(hours=2)  # the second occurrence is inside recurring_end now
    out = await w.cycle()
    assert out.result == "ok" and out.counts.imported == 1 and len(w.imported_rows()) == 2
    await w.assert_converged()


async def test_new_settings_or_a_full_resync_never_reuse_the_quiet_state() -> None:
    w, _ = await quiet_world()
    before = loads(w)
    await w.cycle(full=True)
    assert loads(w) == before + 1
    w.configure(max_deletes_per_cycle=7)
    out = await w.cycle()
    assert out.result == "ok" and loads(w) == before + 2


async def test_a_failed_cycle_leaves_no_quiet_state_behind() -> None:
    w, key = await quiet_world()
    w.exchange.fault("SyncFolderItems")
    out = await w.cycle()
    assert out.result == "error"
    w.psa.edit(key, body="after the failure")
    before = loads(w)
    out = await w.cycle()
    assert out.result == "ok" and loads(w) == before + 1 and out.counts.updated == 1


async def test_an_item_error_is_retried_every_cycle_not_remembered_as_quiet() -> None:
    w = World()
    bad = w.psa.add(Kind.APPOINTMENT, appt("bad"), [RESOURCE])
    w.exchange.rejected.add(bad)
    for _ in range(3):
        out = await w.cycle()
        assert out.result == "partial" and [e.key for e in out.item_errors] == [bad]
    w.exchange.rejected.clear()
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 1


async def test_skipped_psa_rows_make_every_cycle_partial_with_their_keys(tmp_path: Path) -> None:
    """Rows the sql connector cannot read are not silently dropped: each cycle says which."""
    import sqlite3

    sqlite3.connect(tmp_path / "psa.db").close()
    psa = open_sql_connector(f"sqlite:///{tmp_path / 'psa.db'}")
    w = World()
    w.psa = psa  # type: ignore[assignment]
    w.runner = SyncRunner(w.exchange, psa, w.state, now=lambda: w.now, server_identity=w.server_identity)
    await psa.resource(RESOURCE)  # creates the tables
    with sqlite3.connect(tmp_path / "psa.db") as conn:
        rid = int(RESOURCE)
        conn.execute("INSERT INTO resources (id, email, is_active) VALUES (?, ?, 1)", (rid, MAILBOX))
        for aid, start, end in ((1, "2026-11-17T09:00:00Z", "2026-11-17T10:00:00Z"),
                                (2, "2026-11-17T10:00:00Z", "2026-11-17T09:00:00Z")):  # 2: backwards
            conn.execute("INSERT INTO appointments (id, resource_id, title, start_time, end_time, "
                         "last_modified) VALUES (?, ?, 'visit', ?, ?, '2026-11-16T00:00:00Z')",
                         (aid, rid, start, end))
    try:
        for _ in range(3):
            out = await w.cycle()
            assert out.result == "partial", out
            assert [(e.key, e.code) for e in out.item_errors] == [("appointment:2", "invalid_row")]
            assert "appointment:2" in (out.error or "") and "before start_time" in (out.error or "")
        assert len(w.mb.by_psa_key(FolderKind.CALENDAR, "appointment:1")) == 1
    finally:
        await psa.aclose()


async def test_a_quiet_cycle_does_not_load_the_state_and_keeps_none_of_it_in_memory() -> None:
    w, _ = await quiet_world()
    loaded: list[str] = []
    real = w.state.load_user

    async def counting(mailbox: str):  # type: ignore[no-untyped-def]
        loaded.append(mailbox)
        return await real(mailbox)

    w.state.load_user = counting  # type: ignore[method-assign]
    await w.cycle()
    assert loaded == []
    memo = w.runner._cache.memos[MAILBOX]
    assert not hasattr(memo, "state") and set(memo.folders) == {
        FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS}


async def test_a_sync_state_the_server_forgot_after_a_quiet_cycle_resyncs_without_duplicates() -> None:
    """The quiet state holds no mirror, so a folder that must start over is handed to the full path."""
    w, key = await quiet_world()
    other = w.psa.add(Kind.APPOINTMENT, appt("second visit", hours=5), [RESOURCE])
    await settled(w)
    w.mb.user_delete(FolderKind.CALENDAR, w.item_of(other).item_id)  # unseen: the state is forgotten
    w.mb.invalidate_sync_states(FolderKind.CALENDAR)
    w.psa.edit(key, subject="visit (moved)")
    out = await w.cycle()
    assert out.result == "ok" and out.counts.updated == 1 and out.counts.exported == 1, out
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, other)) == 1  # no stale mirror entry hid its loss
    await w.assert_converged()


async def test_a_vouched_quiet_cycle_reads_no_folder_but_still_sees_the_psa() -> None:
    """``exchange_unchanged`` (a silent streaming subscription): no SyncFolderItems at all, while a
    PSA edit is still carried out; without the vouching the same cycle reads every folder."""
    w, key = await quiet_world()
    before_sync = w.exchange.requests["SyncFolderItems"]
    for _ in range(3):
        out = await w.runner.run_cycle(w.user, exchange_unchanged=True)
        assert out.result == "ok" and not out.counts.updated, out
    assert w.exchange.requests["SyncFolderItems"] == before_sync
    w.psa.edit(key, subject="visit (moved)")
    out = await w.runner.run_cycle(w.user, exchange_unchanged=True)
    assert out.result == "ok" and out.counts.updated == 1, out
    assert w.item_of(key).payload.subject == "visit (moved)"  # type: ignore[union-attr]
    out = await w.runner.run_cycle(w.user)
    assert out.result == "ok" and w.exchange.requests["SyncFolderItems"] > before_sync
    await w.assert_converged()


async def test_a_vouched_cycle_without_a_quiet_memo_reads_no_folder_unless_it_wrote() -> None:
    """The first cycle after a restart (no memo) trusts the vouching too, from the stored sync
    states; a runner that wrote in its last cycle reads anyway (its writes are not seen yet)."""
    w, key = await quiet_world()
    fresh = SyncRunner(w.exchange, w.psa, w.state, now=lambda: w.now)  # a restarted daemon
    before = w.exchange.requests["SyncFolderItems"]
    out = await fresh.run_cycle(w.user, exchange_unchanged=True)
    assert out.result == "ok" and w.exchange.requests["SyncFolderItems"] == before, out
    w.psa.edit(key, subject="visit (moved again)")
    out = await fresh.run_cycle(w.user, exchange_unchanged=True)  # writes to Exchange
    assert out.result == "ok" and out.counts.updated == 1, out
    out = await fresh.run_cycle(w.user, exchange_unchanged=True)
    assert out.result == "ok" and w.exchange.requests["SyncFolderItems"] > before  # read its write
    await w.assert_converged()
