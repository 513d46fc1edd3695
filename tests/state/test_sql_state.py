"""What the contract suite cannot say: schema versions, damage, atomicity, durability, leases
between nodes, URL forms and masked passwords."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from exchanged import errors
from exchanged.db import SQLITE, mask_url, parse_url
from exchanged.model import ExchangeItem, FolderKind, JournalEntry, Kind, Mapping, Task
from exchanged.ports import StateBatch
from exchanged.state import open_state_store
from exchanged.state.store import SCHEMA_VERSION

BOX = "alice@example.test"
NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def m(key: str, item_id: str) -> Mapping:
    return Mapping(Kind.TODO, key, FolderKind.TASKS, item_id, "ck", "ph", "eh")


# --- URLs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "target"), [
    ("sqlite:////var/lib/exchanged/state.db", "/var/lib/exchanged/state.db"),
    ("sqlite:///rel/state.db", "rel/state.db"),
    ("sqlite://", ":memory:"),
    ("sqlite:///:memory:", ":memory:"),
])
def test_sqlite_url_forms(url: str, target: str) -> None:
    parsed = parse_url(url)
    assert (parsed.dialect, parsed.target) == (SQLITE, target)


@pytest.mark.parametrize("url", [
    "postgresql://sync:s3cr3t-pw@db.example.test:5432/exchanged",
    "postgresql+psycopg://sync:s3cr3t-pw@db.example.test/exchanged",
    "postgres://sync:s3cr3t-pw@db.example.test/exchanged?sslmode=require",
    "postgresql://db.example.test/exchanged?user=sync&password=s3cr3t-pw&sslmode=require",
    # issue #14: every secret parameter, not only password=
    "postgresql://sync@db.example.test/exchanged?sslmode=verify-full&sslpassword=s3cr3t-pw&sslcert=/c",
])
def test_postgres_urls_are_accepted_and_never_shown_with_their_password(url: str) -> None:
    parsed = parse_url(url)
    assert parsed.target.startswith("postgresql://") and "s3cr3t-pw" in parsed.target
    assert "s3cr3t-pw" not in parsed.shown and "***" in parsed.shown
    assert "s3cr3t-pw" not in mask_url(f"could not connect to {url}")


async def test_a_bad_url_is_a_state_error_naming_the_key() -> None:
    with pytest.raises(errors.StateError, match=r"state.url.*mysql") as info:
        await open_state_store("mysql://u:topsecret@h/db")
    assert "topsecret" not in str(info.value)


# --- SQLite files ---------------------------------------------------------------------------------


async def test_the_parent_directory_is_created_and_wal_is_on(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    store = await open_state_store(f"sqlite:///{path}")
    await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1")]))
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_reopening_does_not_migrate_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    for _ in range(2):
        store = await open_state_store(url)
        await store.aclose()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


async def test_a_newer_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_state_store(f"sqlite:///{path}")
    await store.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(errors.StateError, match=r"schema version 99.*newer exchanged") as info:
        await open_state_store(f"sqlite:///{path}")
    assert "upgrade exchanged" in info.value.hint


async def test_a_damaged_file_is_a_state_error_with_the_path_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(errors.StateError) as info:
        await open_state_store(f"sqlite:///{path}")
    assert str(path) in info.value.message and "not a database" in info.value.message
    assert "move the file aside" in info.value.hint


async def test_an_unreadable_mirror_entry_makes_that_folder_resync(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await open_state_store(f"sqlite:///{path}")
    item = ExchangeItem(FolderKind.TASKS, "t1", "c1", Task("Call"))
    await store.commit(BOX, StateBatch(mirror_upserts={FolderKind.TASKS: [item]},
                                       sync_states={FolderKind.TASKS: "S1", FolderKind.CALENDAR: "S2"}))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE mirror_items SET item = '{broken'")
    user = await store.load_user(BOX)
    assert user.folders[FolderKind.TASKS].sync_state is None and user.folders[FolderKind.TASKS].items == {}
    assert user.folders[FolderKind.CALENDAR].sync_state == "S2"
    await store.aclose()


async def test_a_closed_store_says_so() -> None:
    store = await open_state_store("sqlite://")
    await store.aclose()
    with pytest.raises(errors.StateError, match="closed"):
        await store.load_user(BOX)


# --- atomicity (SQLite and PostgreSQL) ------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("pg_url"))


async def test_a_batch_failing_midway_leaves_nothing(state_url: str) -> None:
    store = await open_state_store(state_url)
    try:
        await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1")],
                                           sync_states={FolderKind.TASKS: "S1"}))
        broken = ExchangeItem(FolderKind.TASKS, None, "c", Task("x"))  # type: ignore[arg-type]
        batch = StateBatch(upsert_mappings=[m("todo:2", "i2")], delete_mappings=["todo:1"],
                           sync_states={FolderKind.TASKS: "S2"},
                           mirror_upserts={FolderKind.TASKS: [broken]})  # NOT NULL fails after the rest
        with pytest.raises(errors.StateError):
            await store.commit(BOX, batch)
        user = await store.load_user(BOX)
        assert set(user.mappings) == {"todo:1"}
        tasks = user.folders[FolderKind.TASKS]
        assert tasks.sync_state == "S1" and tasks.items == {}
        assert await store.history(BOX, None) == []
    finally:
        await store.aclose()


async def test_one_mapping_per_exchange_item(state_url: str) -> None:
    store = await open_state_store(state_url)
    try:
        await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1"), m("todo:2", "")]))
        await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:3", "i1"), m("todo:4", "")]))
        assert set((await store.load_user(BOX)).mappings) == {"todo:2", "todo:3", "todo:4"}
    finally:
        await store.aclose()


# --- durability -----------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import sys, time, trio
    from exchanged.model import FolderKind, Kind, Mapping
    from exchanged.ports import StateBatch
    from exchanged.state import open_state_store

    async def main() -> None:
        store = await open_state_store(sys.argv[1])
        for i in range(20):
            await store.commit("alice@example.test", StateBatch(
                upsert_mappings=[Mapping(Kind.TODO, f"todo:{i}", FolderKind.TASKS, f"i{i}", "c", "p", "e")],
                sync_states={FolderKind.TASKS: f"S{i}"}))
        print("committed", flush=True)
        time.sleep(600)  # killed here, with the connection open and nothing closed

    trio.run(main)
""")


def _commit_in_child_then_kill(url: str) -> int:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        lines = iter(child.stdout.readline, "")  # structlog's default output may come first
        assert any(line.strip() == "committed" for line in lines)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout:
            child.stdout.close()
    return child.returncode


@pytest.mark.reliability
async def test_kill_9_after_commit_loses_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    assert await trio.to_thread.run_sync(_commit_in_child_then_kill, url) == -signal.SIGKILL
    store = await open_state_store(url)
    user = await store.load_user(BOX)
    await store.aclose()
    assert len(user.mappings) == 20 and user.folders[FolderKind.TASKS].sync_state == "S19"


# --- PostgreSQL: leases between nodes, unreachable servers ----------------------------------------


@pytest.mark.postgres
async def test_two_nodes_share_a_mailbox_by_lease_and_a_dead_nodes_lease_is_taken_over(pg_url: str) -> None:
    node_a = await open_state_store(pg_url)
    node_b = await open_state_store(pg_url)  # its own connection, as another host would have
    try:
        assert await node_a.try_lease(BOX, "a", 60)
        assert not await node_b.try_lease(BOX, "b", 60)
        assert await node_b.try_lease("bob@example.test", "b", 60)
        assert not await node_a.try_lease("bob@example.test", "a", 60)
        assert await node_a.try_lease(BOX, "a", 0)  # node a's last renewal, then it dies
        await node_a.aclose()
        assert await node_b.try_lease(BOX, "b", 60)  # expired by the server's clock: taken over
        await node_b.release_lease(BOX, "b")
        node_c = await open_state_store(pg_url)
        assert await node_c.try_lease(BOX, "c", 60)
        await node_c.aclose()
    finally:
        await node_a.aclose()
        await node_b.aclose()


@pytest.mark.postgres
async def test_committed_batches_are_visible_to_other_nodes(pg_url: str) -> None:
    node_a = await open_state_store(pg_url)
    node_b = await open_state_store(pg_url)
    try:
        await node_a.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1")]))
        assert set((await node_b.load_user(BOX)).mappings) == {"todo:1"}
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_an_unreachable_postgres_is_a_state_error_without_the_password() -> None:
    from exchanged.testing.postgres import free_port

    url = f"postgresql://sync:pw-9f8e7d@127.0.0.1:{free_port()}/exchanged"
    with pytest.raises(errors.StateError) as info:
        await open_state_store(url)
    text = f"{info.value.message} {info.value.hint}"
    assert "pw-9f8e7d" not in text and "sync:***@127.0.0.1" in text
    assert "state.url" in info.value.hint


@pytest.mark.postgres
async def test_a_read_after_the_server_dropped_the_connection_reconnects(pg_url: str, pg_server: str) -> None:
    import psycopg

    store = await open_state_store(pg_url)
    try:
        await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1")]))
        pid = store.db._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(pg_server, autocommit=True) as admin:
            [(killed,)] = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
        assert killed  # the store's connection was there, and is gone now
        assert set((await store.load_user(BOX)).mappings) == {"todo:1"}
    finally:
        await store.aclose()


async def test_an_older_schema_is_migrated_and_keeps_its_data(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from exchanged.state import store as store_module

    url = f"sqlite:///{tmp_path / 'state.db'}"
    old = await open_state_store(url)
    await old.commit(BOX, StateBatch(upsert_mappings=[m("todo:1", "i1")]))
    await old.aclose()
    v2 = ["CREATE TABLE notes (mailbox TEXT PRIMARY KEY, note TEXT)"]
    migrations = [*store_module.MIGRATIONS, v2]
    monkeypatch.setattr(store_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(migrations))
    new = await open_state_store(url)
    assert set((await new.load_user(BOX)).mappings) == {"todo:1"}
    await new.aclose()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(len(migrations),)]
        assert conn.execute("SELECT COUNT(*) FROM notes").fetchone() == (0,)


async def test_a_version_1_database_gains_generations_and_keeps_its_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state written by the first release (schema 1) opens with this one: generations start
    at 0 for every user and count from there."""
    from exchanged.state import store as store_module

    url = f"sqlite:///{tmp_path / 'state.db'}"
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        patch.setattr(store_module, "SCHEMA_VERSION", 1)
        old = await open_state_store(url)
        await old.aclose()
    with sqlite3.connect(tmp_path / "state.db") as conn:  # a mapping as the first release wrote it
        conn.execute("INSERT INTO mappings VALUES "
                     "(?, 'todo:1', 'todo', 'tasks', 'i1', 'ck', 'ph', 'eh', NULL)", (BOX,))
    new = await open_state_store(url)
    try:
        user = await new.load_user(BOX)
        assert set(user.mappings) == {"todo:1"} and user.generation == 0
        assert await new.commit(BOX, StateBatch(upsert_mappings=[m("todo:2", "i2")])) == 1
    finally:
        await new.aclose()


@pytest.mark.postgres
async def test_nodes_racing_for_a_free_lease_get_exactly_one_winner(pg_url: str) -> None:
    nodes = [await open_state_store(pg_url) for _ in range(6)]
    won: list[str] = []

    async def attempt(i: int) -> None:
        if await nodes[i].try_lease(BOX, f"node-{i}", 60):
            won.append(f"node-{i}")

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(nodes)):
                nursery.start_soon(attempt, i)
        assert len(won) == 1, won
    finally:
        for node in nodes:
            await node.aclose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_one_mapping_per_item_in_bulk_and_when_a_batch_maps_an_item_twice(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A key now mapped to an item another key held replaces that mapping; 5,000 mappings commit
    in bulk; a batch that maps one item to two keys keeps the later one, as applied in order."""
    url = f"sqlite:///{tmp_path / 'state.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = await open_state_store(url)
    try:
        await store.commit(BOX, StateBatch(upsert_mappings=[m(f"todo:{n}", f"i{n}") for n in range(5000)]))
        assert len((await store.load_user(BOX)).mappings) == 5000
        # todo:1 takes over i2; todo:2 moves to i1; todo:3 maps to i3 and then todo:4 takes i3 too
        await store.commit(BOX, StateBatch(upsert_mappings=[
            m("todo:1", "i2"), m("todo:2", "i1"), m("todo:3", "i3"), m("todo:4", "i3")]))
        await store.commit(BOX, StateBatch(upsert_mappings=[m("todo:5", "i6"), m("todo:6", "i5")]))  # a swap
        held = {k: v.item_id for k, v in (await store.load_user(BOX)).mappings.items() if int(k[5:]) < 8}
        assert held == {"todo:0": "i0", "todo:1": "i2", "todo:2": "i1", "todo:4": "i3", "todo:5": "i6",
                        "todo:6": "i5", "todo:7": "i7"}
    finally:
        await store.aclose()


# --- the journal: subjects, pruning ---------------------------------------------------------------


def _entry(at: datetime, n: int, subject: str = "") -> JournalEntry:
    return JournalEntry(at, BOX, "psa", "create", Kind.IMPORTED, f"imported:{n}", f"i{n}", ("start",),
                        "new in Exchange", "c1", subject)


async def test_the_journal_keeps_subjects_and_is_pruned_by_age(state_url: str) -> None:
    store = await open_state_store(state_url)
    now = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    try:
        await store.commit(BOX, StateBatch(journal=[
            _entry(now - timedelta(days=120), 1, "Old lunch"), _entry(now - timedelta(days=91), 2),
            _entry(now - timedelta(days=89), 3, "Dentist"), _entry(now, 4, "Board meeting")]))
        assert await store.prune_history(now - timedelta(days=90)) == 2
        assert await store.prune_history(now - timedelta(days=90)) == 0
        kept = await store.history(BOX, None)
        assert [(e.key, e.subject) for e in kept] == [("imported:3", "Dentist"),
                                                      ("imported:4", "Board meeting")]
        assert [e.key for e in await store.history(BOX, None, limit=1)] == ["imported:4"]
    finally:
        await store.aclose()


async def test_a_version_2_state_database_gets_the_subject_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = await open_state_store(url)
    await store.commit(BOX, StateBatch(journal=[_entry(datetime(2026, 12, 1, tzinfo=UTC), 1, "x")]))
    await store.aclose()
    with sqlite3.connect(tmp_path / "state.db") as conn:  # as an exchanged of schema version 2 left it
        conn.execute("ALTER TABLE journal DROP COLUMN subject")
        conn.execute("UPDATE schema_version SET version = 2")
    store = await open_state_store(url)
    try:
        [old] = await store.history(BOX, None)
        assert old.key == "imported:1" and old.subject == ""
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_full_disk_is_not_called_a_damaged_database(tmp_path: Path) -> None:
    """Issue #14: disk full was reported as a damaged database ("move the file aside")."""
    store = await open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        def fill(tx: object) -> None:
            [(pages,)] = tx.query("PRAGMA page_count")  # type: ignore[attr-defined]
            tx.query(f"PRAGMA max_page_count = {pages + 1}")  # type: ignore[attr-defined]
            tx.query("CREATE TABLE filler (x BLOB)")  # type: ignore[attr-defined]
            tx.query("INSERT INTO filler VALUES (zeroblob(1000000))")  # type: ignore[attr-defined]

        with pytest.raises(errors.StateError) as info:
            await store.db.run(fill, write=True)  # type: ignore[attr-defined]
        presented = errors.present(info.value)
        assert "full" in presented.line() and "aside" not in (presented.hint or ""), presented
        assert "free space" in (presented.hint or "")
    finally:
        await store.aclose()


async def test_the_state_database_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    """Issue #14: outside systemd (umask 022) the state database, a mirror of every item, private
    ones included, was created 0644."""
    old = os.umask(0o000)
    try:
        store = await open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
        await store.aclose()
    finally:
        os.umask(old)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
