"""The SQLite state store (the default; one node).

WAL journal with ``synchronous=FULL``: a commit returns once the write-ahead log is on disk, so
kill -9 (and a power cut) never loses a committed batch. Leases are always granted: a SQLite file
is one node's state, and the scheduler already keeps one cycle per user within the process.
"""

from __future__ import annotations

import sqlite3

from exchanged import errors
from exchanged.state.db import Database, DbUrl
from exchanged.state.store import Flavor, SqlStateStore

FLAVOR = Flavor("sqlite", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT", lease_time="TEXT")

_DAMAGED_HINT = ("the file is damaged or not a state database: stop exchanged, move the file aside "
                 "(keep it for analysis) and start again; the daemon resyncs every user and finds the "
                 "items it made by their PSA key, so nothing is duplicated")


async def open_sqlite_state(url: DbUrl) -> SqlStateStore:
    """Open (creating the file and its directory if needed) and migrate a SQLite state database."""
    if sqlite3.sqlite_version_info < (3, 24):  # pragma: no cover - every supported distro has newer
        raise errors.StateError(f"SQLite {sqlite3.sqlite_version} is too old for the state store (3.24+)")
    db = Database(url, what="state database", fail=lambda msg: errors.StateError(msg, hint=_DAMAGED_HINT))
    store = SqlStateStore(db, FLAVOR)
    try:
        await store.migrate()
    except BaseException:
        await db.aclose()
        raise
    return store


__all__ = ["FLAVOR", "open_sqlite_state"]
