"""The classic sync-tool incidents as fixtures that must cause zero deletions (offlineimap #2: an
empty local store wiped the server; #426/#380: broken or crash-truncated metadata propagated
deletions). Each ends in a clear error or a safe full resync, never in mass deletion.

The runner in this process over the real adapter, EWS test server, sql PSA and SQLite state; the
corrupt state store also at daemon level (one line, exit 1)."""

# ruff: noqa: ASYNC240 - the tests damage their own files between cycles, on purpose

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from exchanged import errors
from exchanged.state import open_state_store
from exchanged.testing.smtp import SmtpSink
from tests.reliability.harness import ALICE, outlook_edits
from tests.reliability.inproc import Stack, open_stack

pytestmark = pytest.mark.reliability

NOW = datetime.now(UTC).replace(microsecond=0)


async def _first_sync(base: Path) -> tuple[int, int]:
    """Seed, add a user's own appointment in Outlook, sync twice; returns (Exchange items, PSA rows)."""
    async with open_stack(base, now=NOW) as stack:
        start = NOW.replace(minute=0, second=0) + timedelta(days=1, hours=2)
        await trio.to_thread.run_sync(lambda: outlook_edits(
            stack.server, create=[("Dentist", start, start + timedelta(hours=1))]))
        for _ in range(2):
            assert (await stack.cycle()).result == "ok"
        return len(await stack.exchange_items()), _psa_rows(stack)


def _psa_rows(stack: Stack) -> int:
    return sum(stack.psa_rows(f"SELECT COUNT(*) FROM {t}")[0][0]
               for t in ("appointments", "todos", "contacts", "service_calls"))


def _deletes(stack: Stack) -> int:
    return stack.server.stats()["requests"].get("DeleteItem", 0)


async def test_psa_tables_emptied_hold_every_deletion(tmp_path: Path) -> None:
    items, _ = await _first_sync(tmp_path)
    async with open_stack(tmp_path, now=NOW, seed=False) as stack:
        for table in ("appointments", "todos", "service_call_resources", "contacts", "companies"):
            stack.psa_rows(f"DELETE FROM {table}")
        stack.server.reset_stats()
        outcome = await stack.cycle()
        assert outcome.result == "held_back", outcome
        assert outcome.reason == "side_looks_empty" and "--allow-deletes" in (outcome.error or "")
        assert _deletes(stack) == 0
        assert len(await stack.exchange_items()) == items
        again = await stack.cycle()  # and it stays held, cycle after cycle
        assert again.result == "held_back" and _deletes(stack) == 0


@pytest.mark.parametrize("damage", ["missing", "empty-file", "garbage", "locked-dir"])
async def test_psa_database_unreachable_is_an_error(tmp_path: Path, damage: str) -> None:
    items, _ = await _first_sync(tmp_path)
    psa = tmp_path / "psa.db"
    if damage == "missing":
        psa.unlink()
    elif damage == "empty-file":
        psa.write_bytes(b"")
    elif damage == "garbage":
        psa.write_bytes(b"this is not a database\n" * 100)
    else:
        psa.unlink()
        psa.mkdir()  # a directory where the file was
    async with open_stack(tmp_path, now=NOW, seed=False) as stack:
        stack.server.reset_stats()
        outcome = await stack.cycle()
        assert outcome.result in ("error", "held_back"), outcome
        assert outcome.error and ALICE in outcome.error
        assert _deletes(stack) == 0 and len(await stack.exchange_items()) == items


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
async def test_state_store_lost_is_a_safe_resync(tmp_path: Path, damage: str) -> None:
    items, rows = await _first_sync(tmp_path)
    for f in tmp_path.glob("state.db*"):
        f.unlink() if damage == "deleted" else f.write_bytes(b"")
    async with open_stack(tmp_path, now=NOW, seed=False) as stack:
        stack.server.reset_stats()
        outcome = await stack.cycle()
        assert outcome.result == "ok", outcome
        reqs = stack.server.stats()["requests"]
        # everything adopted by its key: nothing created again, nothing deleted, on either side
        assert reqs.get("DeleteItem", 0) == 0 and reqs.get("CreateItem", 0) == 0, reqs
        assert outcome.counts.deleted == 0 and outcome.counts.imported == 0, outcome
        assert len(await stack.exchange_items()) == items and _psa_rows(stack) == rows
        assert await stack.duplicates() == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
async def test_state_store_corrupt_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    await _first_sync(tmp_path)
    state = tmp_path / "state.db"
    for extra in tmp_path.glob("state.db-*"):
        extra.unlink()
    data = state.read_bytes()
    state.write_bytes(b"\x00garbage" * 512 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(errors.StateError) as info:
        store = await open_state_store(f"sqlite:///{state}")
        await store.load_user(ALICE)  # a truncation may only show on reading
    assert "state" in str(info.value).lower()


async def test_other_server_behind_a_new_address_holds_psa_deletions(tmp_path: Path) -> None:
    """server.address now names another (empty) server: every folder restarts, the PSA's items
    go out again, and the imported rows the old server had are not deleted from the PSA."""
    _, rows = await _first_sync(tmp_path)
    imported = _imported(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    async with (open_stack(other, now=NOW, seed=False) as fresh,  # only for its empty server
                open_stack(tmp_path, now=NOW, seed=False, server=fresh.server) as stack):
        stack.runner.server_identity = '["127.0.0.1","","exchange2016",""]'  # address changed
        outcome = await stack.cycle()
        assert outcome.result in ("ok", "held_back"), outcome
        assert stack.server.stats()["requests"].get("DeleteItem", 0) == 0
        assert _imported(tmp_path) == imported and imported
        assert _psa_rows(stack) == rows
        assert await stack.duplicates() == []


async def test_other_server_behind_the_same_address_deletes_nothing(tmp_path: Path) -> None:
    """The same address now reaches another server (DNS moved): the stored sync states are
    refused (ErrorInvalidSyncStateData) and the folders start over without deleting PSA rows."""
    _, rows = await _first_sync(tmp_path)
    imported = _imported(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    async with (open_stack(other, now=NOW, seed=False) as fresh,
                open_stack(tmp_path, now=NOW, seed=False, server=fresh.server) as stack):
        outcome = await stack.cycle()
        assert outcome.result in ("ok", "held_back"), outcome
        assert _imported(tmp_path) == imported and imported, outcome
        assert _psa_rows(stack) == rows
        assert stack.server.stats()["requests"].get("DeleteItem", 0) == 0


async def test_calendar_folder_recreated(tmp_path: Path) -> None:
    """The calendar got a new folder id (recreated, restored): the sync state is refused, the
    folder is read again and its items adopted: no deletion, no copy."""
    items, rows = await _first_sync(tmp_path)
    con = sqlite3.connect(tmp_path / "ews" / "ews.sqlite3")
    with con:
        (old,) = con.execute("SELECT id FROM folders WHERE mailbox = ? AND distinguished = 'calendar'",
                             (ALICE,)).fetchone()
        con.execute("UPDATE folders SET id = ? WHERE id = ?", (old + "R", old))
        con.execute("UPDATE items SET folder_id = ? WHERE folder_id = ?", (old + "R", old))
    con.close()
    async with open_stack(tmp_path, now=NOW, seed=False) as stack:
        outcome = await stack.cycle()
        assert outcome.result == "ok", outcome
        reqs = stack.server.stats()["requests"]
        assert reqs.get("DeleteItem", 0) == 0 and reqs.get("CreateItem", 0) == 0, reqs
        assert len(await stack.exchange_items()) == items and _psa_rows(stack) == rows
        assert await stack.duplicates() == []
        assert await stack.plan_writes() == []


def _imported(base: Path) -> list[tuple[str]]:
    con = sqlite3.connect(base / "psa.db")
    try:
        return con.execute("SELECT title FROM appointments WHERE origin != 'psa' ORDER BY title").fetchall()
    finally:
        con.close()


def test_daemon_refuses_a_corrupt_state_store_in_one_line(tmp_path: Path, smtp: SmtpSink) -> None:
    from tests.reliability.harness import make_env, running

    (tmp_path / "state.db").write_bytes(b"\x00garbage" * 512)
    with running(tmp_path) as server:
        env = make_env(tmp_path, server, smtp, "d")
        proc = env.start()
        assert proc.wait(timeout=60) == 1
        env.notify.close()
        assert server.stats()["requests"].get("DeleteItem", 0) == 0
    err = env.stderr()
    fatal = [line for line in err.splitlines() if line.startswith("exchanged: ")]
    assert len(fatal) == 1 and "state" in fatal[0], err
    assert "Traceback" not in err
