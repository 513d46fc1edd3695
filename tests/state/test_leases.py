"""Leases beyond the contract suite: ``lease_holders`` (who syncs which user now, for
``exchangectl status`` on the other nodes), a lease taken over a dropped connection, SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from exchanged.state import open_state_store
from exchanged.state.store import SqlStateStore

BOX, OTHER = "alice@example.test", "bob@example.test"


@pytest.mark.postgres
async def test_live_leases_name_their_node_expired_and_released_ones_are_gone(pg_url: str) -> None:
    node_a = await open_state_store(pg_url)
    node_b = await open_state_store(pg_url)
    assert isinstance(node_b, SqlStateStore)
    try:
        assert await node_b.lease_holders() == {}
        assert await node_a.try_lease(BOX, "node-a", 60)
        assert await node_a.try_lease(OTHER, "node-a", 60)
        held = await node_b.lease_holders()
        assert {m: lease.node for m, lease in held.items()} == {BOX: "node-a", OTHER: "node-a"}
        assert held[BOX].expires_at.tzinfo is not None
        await node_a.release_lease(OTHER, "node-a")
        assert await node_a.try_lease(BOX, "node-a", 0.5)  # renewed to run out soon (a dying node)
        await trio.sleep(0.6)
        assert await node_b.lease_holders() == {}
    finally:
        await node_a.aclose()
        await node_b.aclose()


async def test_sqlite_keeps_no_leases(tmp_path: Path) -> None:
    store = await open_state_store(f"sqlite:///{tmp_path / 'state.db'}")
    assert isinstance(store, SqlStateStore)
    try:
        assert await store.try_lease(BOX, "node-a", 60)
        assert await store.lease_holders() == {}
    finally:
        await store.aclose()


@pytest.mark.postgres
async def test_a_lease_is_taken_and_released_after_the_server_dropped_the_connection(
        pg_url: str, pg_server: str) -> None:
    import psycopg

    node_a = await open_state_store(pg_url)
    node_b = await open_state_store(pg_url)
    assert isinstance(node_a, SqlStateStore) and isinstance(node_b, SqlStateStore)

    def drop(store: SqlStateStore) -> None:
        pid = store.db._conn.info.backend_pid
        with psycopg.connect(pg_server, autocommit=True) as admin:
            [(killed,)] = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
        assert killed

    try:
        assert await node_a.lease_holders() == {}  # node a's connection is open now
        drop(node_a)
        assert await node_a.try_lease(BOX, "node-a", 60)  # not an error: tried again on a new connection
        assert not await node_b.try_lease(BOX, "node-b", 60)
        drop(node_a)
        await node_a.release_lease(BOX, "node-a")
        assert await node_b.lease_holders() == {}
        assert await node_b.try_lease(BOX, "node-b", 60)
    finally:
        await node_a.aclose()
        await node_b.aclose()
