"""The SQLite state store (the default; one node).

WAL journal with ``synchronous=FULL``: a commit returns once the write-ahead log is on disk, so
kill -9 (and a power cut) never loses a committed batch. Leases are always granted: a SQLite file
is one node's state, and the scheduler already keeps one cycle per user within the process.
"""

from __future__ import annotations

import sqlite3

from exchanged import errors
from exchanged.db import DbUrl
from exchanged.state.store import Flavor, SqlStateStore

FLAVOR = Flavor("sqlite", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT", lease_time="TEXT")

_DAMAGED_HINT = ("the file is damaged or not a state database: stop exchanged, move the file aside "
                 "(keep it for analysis) and start again; the daemon resyncs every user and finds the "
                 "items it made by their PSA key, so nothing is duplicated")


_FULL_HINT = ("the file system of the state database is full: free space there (the database is not "
              "damaged; nothing was lost, the cycle that failed runs again)")
_ACCESS_HINT = ("the daemon's user cannot open or write the file or its directory: check their owner "
                "and mode (the database is not damaged)")


def state_error(message: str) -> errors.StateError:
    """A SQLite failure with the hint for its cause: disk full and permissions are not damage."""
    low = message.lower()
    if "disk is full" in low or "no space left" in low:
        return errors.StateError(message, hint=_FULL_HINT)
    if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
        return errors.StateError(message, hint=_ACCESS_HINT)
    return errors.StateError(message, hint=_DAMAGED_HINT)


async def open_sqlite_state(url: DbUrl) -> SqlStateStore:
    """Open (creating the file and its directory if needed) and migrate a SQLite state database."""
    if sqlite3.sqlite_version_info < (3, 24):  # pragma: no cover - every supported distro has newer
        raise errors.StateError(f"SQLite {sqlite3.sqlite_version} is too old for the state store (3.24+)")
    return await SqlStateStore.open(url, FLAVOR, state_error)


__all__ = ["FLAVOR", "open_sqlite_state"]
