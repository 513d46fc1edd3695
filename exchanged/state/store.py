"""The SQL state store: one implementation of ``ports.StateStore`` for SQLite and PostgreSQL.

Theory of operation
-------------------
* Every public method is one transaction on the store's single connection (``db.Database``);
  ``commit`` applies a whole ``StateBatch`` in one transaction, so a batch is all there or not at
  all, including after kill -9 (SQLite: WAL with ``synchronous=FULL``).
* The schema is versioned: ``schema_version`` holds one row; ``MIGRATIONS[i]`` brings version
  ``i`` to ``i + 1``. A database written by a newer exchanged is refused, never "downgraded".
* The dialects differ only in a few DDL words and in leases (``Flavor``): SQLite serves one node
  and grants every lease (and keeps none); PostgreSQL takes leases atomically by the database
  server's clock, and ``lease_holders`` shows who holds which user now (for ``status``).
* ``history`` returns entries oldest first: at most ``limit`` of the newest that match (the same
  order as the in-memory twin, and the order a journal is read in).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from exchanged import errors
from exchanged.db import Database, DbUrl, Tx
from exchanged.model import CycleOutcome, ExchangeItem, FolderKind, JournalEntry, Kind, Mapping
from exchanged.ports import FolderState, Lease, StateBatch, UserRecord, UserState
from exchanged.state.codec import decode_item, encode_item, parse_ts, ts

log = structlog.get_logger("exchanged.state")

SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between the dialects: DDL words and leases."""

    name: str
    serial_pk: str  # an auto-numbered primary key column type
    lease_time: str  # the column type of leases.expires_at

    def ddl(self, sql: str) -> str:
        return sql.format(serial_pk=self.serial_pk, lease_time=self.lease_time)

    def try_lease(self, tx: Tx, mailbox: str, node: str, ttl_s: float) -> bool:
        return True

    def release_lease(self, tx: Tx, mailbox: str, node: str) -> None:
        return None

    @property
    def keeps_leases(self) -> bool:
        return False

    def lease_holders(self, tx: Tx) -> dict[str, Lease]:
        return {}

    def lock_migrations(self, tx: Tx) -> None:
        return None


# Version 1. Never edit a released migration: append a new list instead.
_V1 = [
    """CREATE TABLE mappings (
        mailbox TEXT NOT NULL, psa_key TEXT NOT NULL, kind TEXT NOT NULL, folder TEXT NOT NULL,
        item_id TEXT NOT NULL, change_key TEXT NOT NULL, psa_hash TEXT NOT NULL,
        exchange_hash TEXT NOT NULL, exchange_key TEXT,
        PRIMARY KEY (mailbox, psa_key))""",
    # one mapping per Exchange item; "" is a mapping whose item is not created yet
    "CREATE UNIQUE INDEX mappings_item ON mappings (mailbox, folder, item_id) WHERE item_id <> ''",
    """CREATE TABLE folder_states (
        mailbox TEXT NOT NULL, folder TEXT NOT NULL, sync_state TEXT, server_identity TEXT,
        PRIMARY KEY (mailbox, folder))""",
    """CREATE TABLE mirror_items (
        mailbox TEXT NOT NULL, folder TEXT NOT NULL, item_id TEXT NOT NULL, item TEXT NOT NULL,
        PRIMARY KEY (mailbox, folder, item_id))""",
    """CREATE TABLE journal (
        id {serial_pk}, mailbox TEXT NOT NULL, at TEXT NOT NULL, side TEXT NOT NULL,
        action TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, item_id TEXT,
        fields TEXT NOT NULL, reason TEXT NOT NULL, cycle_id TEXT NOT NULL)""",
    "CREATE INDEX journal_mailbox_at ON journal (mailbox, at)",
    "CREATE INDEX journal_at ON journal (at)",
    """CREATE TABLE user_records (
        mailbox TEXT PRIMARY KEY, last_attempt TEXT, last_success TEXT, last_result TEXT,
        last_error TEXT, counts TEXT NOT NULL, known INTEGER NOT NULL)""",
    """CREATE TABLE held_back_deletes (
        mailbox TEXT NOT NULL, position INTEGER NOT NULL, key TEXT NOT NULL,
        PRIMARY KEY (mailbox, position))""",
    "CREATE TABLE leases (mailbox TEXT PRIMARY KEY, node TEXT NOT NULL, expires_at {lease_time} NOT NULL)",
]

# Version 2: a counter per user bumped by every commit and reset, so that a runner holding the
# state of its last cycle in memory knows, with one small query, whether anybody changed it since.
_V2 = [
    "CREATE TABLE state_generations (mailbox TEXT PRIMARY KEY, generation INTEGER NOT NULL)",
]

# Version 3: the journal keeps what an item is called (``exchangectl history`` shows it).
_V3 = [
    "ALTER TABLE journal ADD COLUMN subject TEXT NOT NULL DEFAULT ''",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3]
SCHEMA_VERSION = len(MIGRATIONS)


def _current_version(tx: Tx) -> int:
    tx.query(SCHEMA_VERSION_TABLE)
    rows = tx.query("SELECT version FROM schema_version")
    return int(rows[0][0]) if rows else 0


class NewerSchema(Exception):
    def __init__(self, found: int) -> None:
        super().__init__(found)
        self.found = found


class SqlStateStore:
    """``ports.StateStore`` over one SQL database (see the module docstring)."""

    def __init__(self, db: Database, flavor: Flavor) -> None:
        self.db = db
        self.flavor = flavor

    # -- opening ----------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: DbUrl, flavor: Flavor, fail: Callable[[str], Exception]) -> SqlStateStore:
        """The one opener of both stores: connect, migrate, and close again if that fails.
        ``fail`` turns a database failure into the error to raise (``StateError`` with the hint of
        its cause)."""
        db = Database(url, what="state database", fail=fail)
        store = cls(db, flavor)
        try:
            await store.migrate()
        except BaseException:
            await db.aclose()
            raise
        return store

    async def migrate(self) -> int:
        """Bring the schema to ``SCHEMA_VERSION``; returns the version found before."""

        def run(tx: Tx) -> int:
            self.flavor.lock_migrations(tx)
            found = _current_version(tx)
            if found > SCHEMA_VERSION:
                raise NewerSchema(found)
            for version in range(found, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    tx.query(self.flavor.ddl(statement))
            if found == 0:
                tx.query("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif found < SCHEMA_VERSION:
                tx.query("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            return found

        try:
            found = await self.db.run(run, write=True)
        except NewerSchema as exc:
            raise errors.StateError(
                f"the state database {self.db.url.shown} has schema version {exc.found}, written by a "
                f"newer exchanged; this one knows up to version {SCHEMA_VERSION}",
                hint="upgrade exchanged, or point state.url at another database") from None
        if found < SCHEMA_VERSION:
            log.info("state schema migrated", url=self.db.url.shown, from_version=found,
                     to_version=SCHEMA_VERSION)
        return found

    # -- reading ----------------------------------------------------------------------------------

    async def load_user(self, mailbox: str) -> UserState:
        def run(tx: Tx) -> UserState:
            user = UserState(mailbox, generation=_generation(tx, mailbox))
            for row in tx.query(
                    "SELECT kind, psa_key, folder, item_id, change_key, psa_hash, exchange_hash, "
                    "exchange_key FROM mappings WHERE mailbox = ?", (mailbox,)):
                m = Mapping(Kind(row[0]), row[1], FolderKind(row[2]), row[3], row[4], row[5], row[6], row[7])
                user.mappings[m.psa_key] = m
            for folder, sync_state, identity in tx.query(
                    "SELECT folder, sync_state, server_identity FROM folder_states WHERE mailbox = ?",
                    (mailbox,)):
                user.folders[FolderKind(folder)] = FolderState(sync_state, {}, identity)
            for folder, item_id, doc in tx.query(
                    "SELECT folder, item_id, item FROM mirror_items WHERE mailbox = ?", (mailbox,)):
                fs = user.folders.setdefault(FolderKind(folder), FolderState())
                try:
                    fs.items[item_id] = decode_item(doc)
                except (ValueError, KeyError, TypeError) as exc:
                    # a damaged mirror entry: forget that folder's sync state, so the runner lists
                    # the folder again (a full resync of it) instead of trusting a hole
                    log.warning("state mirror entry unreadable: that folder is resynced", mailbox=mailbox,
                                folder=folder, item_id=item_id, error=str(exc))
                    fs.sync_state = None
                    fs.items.clear()
                    fs.server_identity = None
            user.held_back_deletes = [r[0] for r in tx.query(
                "SELECT key FROM held_back_deletes WHERE mailbox = ? ORDER BY position", (mailbox,))]
            return user

        return await self.db.run(run)

    async def generation(self, mailbox: str) -> int:
        return await self.db.run(lambda tx: _generation(tx, mailbox))

    async def user_records(self) -> dict[str, UserRecord]:
        def run(tx: Tx) -> dict[str, UserRecord]:
            out: dict[str, UserRecord] = {}
            for row in tx.query("SELECT mailbox, last_attempt, last_success, last_result, last_error, "
                                "counts, known FROM user_records ORDER BY mailbox"):
                out[row[0]] = UserRecord(row[0], parse_ts(row[1]), parse_ts(row[2]), row[3], row[4],
                                         {k: int(v) for k, v in json.loads(row[5]).items()}, bool(row[6]))
            return out

        return await self.db.run(run)

    async def prune_history(self, before: datetime) -> int:
        """Delete the journal entries older than ``before``; returns how many."""
        cutoff = ts(before)

        def run(tx: Tx) -> int:
            [(n,)] = tx.query("SELECT COUNT(*) FROM journal WHERE at < ?", (cutoff,))
            if n:
                tx.query("DELETE FROM journal WHERE at < ?", (cutoff,))
            return int(n)

        return await self.db.run(run, write=True)

    async def history(self, mailbox: str | None, since: datetime | None,
                      limit: int = 1000) -> list[JournalEntry]:
        """Oldest first: at most ``limit`` of the newest matching entries."""
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[object] = []
        if mailbox is not None:
            where.append("mailbox = ?")
            params.append(mailbox)
        if since is not None:
            where.append("at >= ?")
            params.append(ts(since))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = ("SELECT at, mailbox, side, action, kind, key, item_id, fields, reason, cycle_id, subject "
               f"FROM journal {clause} ORDER BY id DESC LIMIT ?")

        def run(tx: Tx) -> list[JournalEntry]:
            rows = tx.query(sql, (*params, limit))
            return [JournalEntry(parse_ts(r[0]), r[1], r[2], r[3], Kind(r[4]), r[5], r[6],  # type: ignore[arg-type]
                                 tuple(json.loads(r[7])), r[8], r[9], r[10] or "") for r in reversed(rows)]

        return await self.db.run(run)

    # -- writing ----------------------------------------------------------------------------------

    async def commit(self, mailbox: str, batch: StateBatch) -> int:
        def run(tx: Tx) -> int:
            _apply_batch(tx, mailbox, batch)
            return _bump_generation(tx, mailbox)

        return await self.db.run(run, write=True)

    async def reset_user(self, mailbox: str, *, keep_mappings: bool) -> None:
        def run(tx: Tx) -> None:
            tx.query("DELETE FROM mirror_items WHERE mailbox = ?", (mailbox,))
            tx.query("DELETE FROM folder_states WHERE mailbox = ?", (mailbox,))
            if not keep_mappings:
                tx.query("DELETE FROM mappings WHERE mailbox = ?", (mailbox,))
            _bump_generation(tx, mailbox)

        await self.db.run(run, write=True)

    async def record_outcome(self, mailbox: str, at: datetime, outcome: CycleOutcome) -> None:
        success = ts(at) if outcome.result != "error" else None
        counts = json.dumps(outcome.counts.as_dict(), sort_keys=True)

        def run(tx: Tx) -> None:
            tx.query(
                "INSERT INTO user_records (mailbox, last_attempt, last_success, last_result, last_error, "
                "counts, known) VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (mailbox) DO UPDATE SET "
                "last_attempt = excluded.last_attempt, "
                "last_success = COALESCE(excluded.last_success, user_records.last_success), "
                "last_result = excluded.last_result, last_error = excluded.last_error, "
                "counts = excluded.counts",
                (mailbox, ts(at), success, outcome.result, outcome.error, counts))

        await self.db.run(run, write=True)

    async def mark_known(self, mailbox: str) -> bool:
        return bool(await self.db.run(lambda tx: tx.query(
            "INSERT INTO user_records (mailbox, counts, known) VALUES (?, '{}', 1) "
            "ON CONFLICT (mailbox) DO UPDATE SET known = 1 WHERE user_records.known = 0 "
            "RETURNING mailbox", (mailbox,)), write=True))

    async def try_lease(self, mailbox: str, node: str, ttl_s: float) -> bool:
        if not self.flavor.keeps_leases:
            return True  # one node: no write transaction per cycle for nothing
        # taking or renewing one's own lease twice is taking it once: retried on a dropped connection
        return await self.db.run(lambda tx: self.flavor.try_lease(tx, mailbox, node, ttl_s), write=True,
                                 idempotent=True)

    async def release_lease(self, mailbox: str, node: str) -> None:
        if not self.flavor.keeps_leases:
            return
        await self.db.run(lambda tx: self.flavor.release_lease(tx, mailbox, node), write=True,
                          idempotent=True)

    async def lease_holders(self) -> dict[str, Lease]:
        """The live (unexpired) leases by mailbox; always empty for SQLite, which keeps none."""
        if not self.flavor.keeps_leases:
            return {}
        return await self.db.run(self.flavor.lease_holders)

    async def aclose(self) -> None:
        await self.db.aclose()


def _generation(tx: Tx, mailbox: str) -> int:
    rows = tx.query("SELECT generation FROM state_generations WHERE mailbox = ?", (mailbox,))
    return int(rows[0][0]) if rows else 0


def _bump_generation(tx: Tx, mailbox: str) -> int:
    tx.query("INSERT INTO state_generations (mailbox, generation) VALUES (?, 1) ON CONFLICT (mailbox) "
             "DO UPDATE SET generation = state_generations.generation + 1", (mailbox,))
    return _generation(tx, mailbox)


def _apply_batch(tx: Tx, mailbox: str, batch: StateBatch) -> None:
    """The whole batch, in the order the in-memory twin applies it."""
    tx.many("DELETE FROM mappings WHERE mailbox = ? AND psa_key = ?",
            [(mailbox, key) for key in batch.delete_mappings])
    _upsert_mappings(tx, mailbox, batch.upsert_mappings)
    touched = set(batch.mirror_upserts) | set(batch.mirror_deletes) | set(batch.sync_states)
    for folder in sorted(touched):
        _apply_folder(tx, mailbox, folder, batch)
    if batch.held_back_deletes is not None:
        tx.query("DELETE FROM held_back_deletes WHERE mailbox = ?", (mailbox,))
        tx.many("INSERT INTO held_back_deletes (mailbox, position, key) VALUES (?, ?, ?)",
                [(mailbox, i, key) for i, key in enumerate(batch.held_back_deletes)])
    tx.many("INSERT INTO journal (mailbox, at, side, action, kind, key, item_id, fields, reason, cycle_id, "
            "subject) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.mailbox, ts(e.at), e.side, e.action, e.kind.value, e.key, e.item_id,
              json.dumps(list(e.fields)), e.reason, e.cycle_id, e.subject) for e in batch.journal])


_DROP_OTHER_HOLDER = ("DELETE FROM mappings WHERE mailbox = ? AND folder = ? AND item_id = ? "
                      "AND item_id <> '' AND psa_key <> ?")  # "<> ''": lets it use mappings_item
_UPSERT_MAPPING = (
    "INSERT INTO mappings (mailbox, psa_key, kind, folder, item_id, change_key, psa_hash, "
    "exchange_hash, exchange_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (mailbox, psa_key) DO UPDATE SET kind = excluded.kind, folder = excluded.folder, "
    "item_id = excluded.item_id, change_key = excluded.change_key, psa_hash = excluded.psa_hash, "
    "exchange_hash = excluded.exchange_hash, exchange_key = excluded.exchange_key")


def _upsert_mappings(tx: Tx, mailbox: str, mappings: Sequence[Mapping]) -> None:
    """One mapping per Exchange item: a key now mapped to an item another key held replaces it.
    Done as two bulk statements; a batch that maps one item twice is applied mapping by mapping,
    in order, so the later one wins as it always has."""
    items = [(m.folder, m.item_id) for m in mappings if m.item_id]
    groups = [list(mappings)] if len(set(items)) == len(items) else [[m] for m in mappings]
    for group in groups:
        tx.many(_DROP_OTHER_HOLDER, [(mailbox, m.folder.value, m.item_id, m.psa_key) for m in group
                                     if m.item_id])
        tx.many(_UPSERT_MAPPING, [(mailbox, m.psa_key, m.kind.value, m.folder.value, m.item_id, m.change_key,
                                   m.psa_hash, m.exchange_hash, m.exchange_key) for m in group])


def _apply_folder(tx: Tx, mailbox: str, folder: FolderKind, batch: StateBatch) -> None:
    tx.query("INSERT INTO folder_states (mailbox, folder) VALUES (?, ?) ON CONFLICT (mailbox, folder) "
             "DO NOTHING", (mailbox, folder.value))
    tx.many("DELETE FROM mirror_items WHERE mailbox = ? AND folder = ? AND item_id = ?",
            [(mailbox, folder.value, item_id) for item_id in batch.mirror_deletes.get(folder, [])])
    tx.many("INSERT INTO mirror_items (mailbox, folder, item_id, item) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (mailbox, folder, item_id) DO UPDATE SET item = excluded.item",
            [(mailbox, folder.value, item.item_id, encode_item(item))
             for item in _last_per_id(batch.mirror_upserts.get(folder, []))])
    if folder in batch.sync_states:
        tx.query("UPDATE folder_states SET sync_state = ? WHERE mailbox = ? AND folder = ?",
                 (batch.sync_states[folder], mailbox, folder.value))
    if batch.server_identity is not None:
        tx.query("UPDATE folder_states SET server_identity = ? WHERE mailbox = ? AND folder = ?",
                 (batch.server_identity, mailbox, folder.value))


def _last_per_id(items: Sequence[ExchangeItem]) -> list[ExchangeItem]:
    # the same item twice in one batch: the later one wins (an upsert of one row twice in one
    # executemany is fine for SQLite but PostgreSQL's ON CONFLICT would see it once per statement)
    by_id: dict[str, ExchangeItem] = {}
    for item in items:
        by_id[item.item_id] = item
    return list(by_id.values())


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Flavor", "Lease", "SqlStateStore"]
