"""The server's mailbox contents in SQLite under --state-dir, so a restarted server keeps them.

Every write bumps a per-mailbox change counter (`seq`); items and folders remember the seq at which
they arrived in their folder and at which they last changed, and deletions and moves leave
tombstones. Sync states are then just "folder + seq", which makes SyncFolderItems exact and lets a
sync state survive a restart. Callers hold `Store.lock` for a whole EWS operation.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import os
import sqlite3
import struct
import threading
import uuid
from dataclasses import dataclass

SCHEMA_VERSION = 1
PUBLIC = ""  # the "mailbox" that owns the public folder hierarchy

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mailboxes (address TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, parent_id TEXT, distinguished TEXT,
    element TEXT NOT NULL, folder_class TEXT, display_name TEXT NOT NULL, change_key TEXT NOT NULL,
    created_seq INTEGER NOT NULL, changed_seq INTEGER NOT NULL, deleted_seq INTEGER
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, mailbox TEXT NOT NULL, folder_id TEXT NOT NULL, item_type TEXT NOT NULL,
    xml TEXT NOT NULL, change_key TEXT NOT NULL, created TEXT NOT NULL, modified TEXT NOT NULL,
    created_seq INTEGER NOT NULL, changed_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_folder ON items (folder_id, changed_seq);
CREATE TABLE IF NOT EXISTS tombstones (
    item_id TEXT NOT NULL, folder_id TEXT NOT NULL, created_seq INTEGER NOT NULL, deleted_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_folder ON tombstones (folder_id, deleted_seq);
CREATE TABLE IF NOT EXISTS delta_states (
    token TEXT PRIMARY KEY, mailbox TEXT NOT NULL, data TEXT NOT NULL, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS folder_times (
    folder_id TEXT PRIMARY KEY, created TEXT NOT NULL, changed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invitations (
    n INTEGER PRIMARY KEY AUTOINCREMENT, mailbox TEXT NOT NULL, item_id TEXT NOT NULL,
    operation TEXT NOT NULL, mode TEXT NOT NULL, at TEXT NOT NULL
);
"""

# (distinguished id, element, folder class, display name, parent distinguished id)
_MAILBOX_FOLDERS = (
    ("root", "Folder", None, "Root", None),
    ("msgfolderroot", "Folder", None, "Top of Information Store", "root"),
    ("inbox", "Folder", "IPF.Note", "Inbox", "msgfolderroot"),
    ("calendar", "CalendarFolder", "IPF.Appointment", "Calendar", "msgfolderroot"),
    ("tasks", "TasksFolder", "IPF.Task", "Tasks", "msgfolderroot"),
    ("contacts", "ContactsFolder", "IPF.Contact", "Contacts", "msgfolderroot"),
    ("deleteditems", "Folder", "IPF.Note", "Deleted Items", "msgfolderroot"),
    ("drafts", "Folder", "IPF.Note", "Drafts", "msgfolderroot"),
    ("sentitems", "Folder", "IPF.Note", "Sent Items", "msgfolderroot"),
    ("outbox", "Folder", "IPF.Note", "Outbox", "msgfolderroot"),
    ("junkemail", "Folder", "IPF.Note", "Junk Email", "msgfolderroot"),
    ("notes", "Folder", "IPF.StickyNote", "Notes", "msgfolderroot"),
    ("journal", "Folder", "IPF.Journal", "Journal", "msgfolderroot"),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# Ids are shaped as Exchange's EWS ids are (about 150 base64 characters for an item): base64 of
# [compression 0][IdStorageType 3 = MailboxItemMailboxGuidBased][u16 length][the mailbox GUID as text]
# [processing instruction: 0 normal, 1 occurrence][u16 length][MAPI entry id][occurrence: 8 bytes].
# The entry id is a MAPI one: flags, the store's provider UID, the type (1 folder, 7 message), the
# database GUID and 6-byte global counters of the folder (and of the message). Clients tell an id from
# a name by its length. Ids of the earlier short form ("EXD" + kind + 16 bytes) are still understood,
# so a --state-dir written by an older server keeps working.
_ID_STORAGE_MAILBOX_GUID = 3
_EID_FOLDER = 1
_EID_MESSAGE = 7
INSTRUCTION_NORMAL = 0
INSTRUCTION_OCCURRENCE = 1
_DB_GUID = uuid.UUID("6d5c4b3a-2f1e-4d0c-9b8a-796857463524").bytes


def mailbox_guid(mailbox: str) -> str:
    """The mailbox's (stable) GUID: the same address gives the same GUID after a restart."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + mailbox.lower()))


def _counter() -> bytes:
    return uuid.uuid4().bytes[:6]


def _entry_id(mailbox: str, kind: bytes, folder_counter: bytes) -> bytes:
    provider = uuid.uuid5(uuid.NAMESPACE_URL, "store:" + mailbox.lower()).bytes
    head = b"\0\0\0\0" + provider
    if kind == b"F":
        return head + struct.pack("<H", _EID_FOLDER) + _DB_GUID + folder_counter + b"\0\0"
    return (head + struct.pack("<H", _EID_MESSAGE) + _DB_GUID + folder_counter + b"\0\0"
            + _DB_GUID + _counter() + b"\0\0")


def _pack(moniker: bytes, entry_id: bytes, instruction: int, extra: bytes) -> str:
    raw = (bytes([0, _ID_STORAGE_MAILBOX_GUID]) + struct.pack("<H", len(moniker)) + moniker
           + bytes([instruction]) + struct.pack("<H", len(entry_id)) + entry_id + extra)
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class ParsedId:
    moniker: bytes
    instruction: int
    entry_id: bytes
    extra: bytes

    @property
    def kind(self) -> bytes:
        if self.instruction == INSTRUCTION_OCCURRENCE:
            return b"O"
        return b"F" if struct.unpack("<H", self.entry_id[20:22])[0] == _EID_FOLDER else b"I"

    def packed(self, instruction: int, extra: bytes = b"") -> str:
        """This id with another processing instruction (an occurrence's, or the master's)."""
        return _pack(self.moniker, self.entry_id, instruction, extra)


def parse_id(value: str) -> ParsedId | None:
    """The parts of an id in Exchange's form, None for anything else."""
    try:
        raw = base64.b64decode(value, validate=True)
        if raw[:2] != bytes([0, _ID_STORAGE_MAILBOX_GUID]):
            return None
        (n,) = struct.unpack("<H", raw[2:4])
        moniker, rest = raw[4 : 4 + n], raw[4 + n :]
        instruction = rest[0]
        (e,) = struct.unpack("<H", rest[1:3])
        entry_id, extra = rest[3 : 3 + e], rest[3 + e :]
    except (ValueError, TypeError, IndexError, struct.error):
        return None
    if len(moniker) != 36 or len(entry_id) not in (46, 70) or instruction not in (0, 1):
        return None
    if (instruction == INSTRUCTION_OCCURRENCE) != (len(extra) == 8) or (instruction == 0 and extra):
        return None
    return ParsedId(moniker, instruction, entry_id, extra)


def new_id(kind: bytes, mailbox: str = "", folder_id: str | None = None) -> str:
    """A new folder (b"F") or item (b"I") id in Exchange's form; an item's entry id carries the
    global counter of its folder, as a MAPI message entry id does."""
    folder_counter = _counter()
    if kind == b"I" and folder_id:
        parsed = parse_id(folder_id)
        if parsed is not None:
            folder_counter = parsed.entry_id[38:44]
    return _pack(mailbox_guid(mailbox).encode(), _entry_id(mailbox, kind, folder_counter),
                 INSTRUCTION_NORMAL, b"")


def new_change_key() -> str:
    return base64.b64encode(b"CK" + uuid.uuid4().bytes[:10]).decode()


def id_kind(value: str) -> bytes | None:
    """b'F', b'I' or b'O' (occurrence) for our ids, None for anything malformed."""
    parsed = parse_id(value)
    if parsed is not None:
        return parsed.kind
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) == 20 and raw.startswith(b"EXD") and raw[3:4] in (b"F", b"I"):
        return raw[3:4]
    if len(raw) == 28 and raw.startswith(b"EXDO"):
        return b"O"
    return None


@dataclass(frozen=True)
class FolderRow:
    id: str
    mailbox: str
    parent_id: str | None
    distinguished: str | None
    element: str
    folder_class: str | None
    display_name: str
    change_key: str
    created_seq: int
    changed_seq: int
    deleted_seq: int | None


@dataclass(frozen=True)
class ItemRow:
    id: str
    mailbox: str
    folder_id: str
    item_type: str
    xml: str
    change_key: str
    created: str
    modified: str
    created_seq: int
    changed_seq: int


class Store:
    def __init__(self, path: str, mailboxes: list[str]) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.lock = threading.RLock()
        # Two front ends (the EWS and the Graph test server) may serve one state dir from two
        # processes: every operation runs in one BEGIN IMMEDIATE transaction, which SQLite
        # serialises across processes (a writer waits up to `timeout` for the other), and nothing
        # is cached outside the database, so each operation reads what the other process wrote.
        # Setting up a new file is not one transaction (the journal mode cannot change inside
        # one, and a connection that read the schema and then wants to write it gets "database is
        # locked" at once, without waiting, when the other process wants to write too): two
        # processes opening one new state dir together take turns through a lock file.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        with open(path + ".init-lock", "a") as init_lock, self.lock:
            fcntl.flock(init_lock, fcntl.LOCK_EX)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            for address in [PUBLIC, *mailboxes]:
                self.ensure_mailbox(address)

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # -- transactions ---------------------------------------------------------------------------
    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    # -- mailboxes ------------------------------------------------------------------------------
    def ensure_mailbox(self, address: str) -> None:
        """Create a mailbox with its folders unless it exists (another front end, maybe in another
        process starting at the same moment, may add some: one transaction, so never twice)."""
        if self._db.in_transaction:
            self._ensure_mailbox(address.lower())
            return
        self.begin()
        try:
            self._ensure_mailbox(address.lower())
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def _ensure_mailbox(self, address: str) -> None:
        row = self._db.execute("SELECT 1 FROM mailboxes WHERE address = ?", (address,)).fetchone()
        if row:
            return
        self._db.execute("INSERT INTO mailboxes VALUES (?, 0)", (address,))
        if address == PUBLIC:
            self.add_folder(PUBLIC, None, "publicfoldersroot", "Folder", None, "IPM_SUBTREE")
            return
        ids: dict[str, str] = {}
        for dist, element, cls, name, parent in _MAILBOX_FOLDERS:
            ids[dist] = self.add_folder(address, ids.get(parent or ""), dist, element, cls, name).id

    def mailboxes(self) -> list[str]:
        rows = self._db.execute("SELECT address FROM mailboxes WHERE address != ''").fetchall()
        return [r[0] for r in rows]

    def has_mailbox(self, address: str) -> bool:
        return bool(
            self._db.execute("SELECT 1 FROM mailboxes WHERE address = ?", (address.lower(),)).fetchone()
        )

    def next_seq(self, mailbox: str) -> int:
        self._db.execute("UPDATE mailboxes SET seq = seq + 1 WHERE address = ?", (mailbox,))
        return self.current_seq(mailbox)

    def mailbox_seqs(self) -> dict[str, int]:
        """Every mailbox's change sequence (moved by every change in it, from any process)."""
        return {r[0]: int(r[1]) for r in self._db.execute("SELECT address, seq FROM mailboxes")}

    def current_seq(self, mailbox: str) -> int:
        row = self._db.execute("SELECT seq FROM mailboxes WHERE address = ?", (mailbox,)).fetchone()
        return int(row[0]) if row else 0

    # -- folders --------------------------------------------------------------------------------
    def add_folder(
        self,
        mailbox: str,
        parent_id: str | None,
        distinguished: str | None,
        element: str,
        folder_class: str | None,
        display_name: str,
    ) -> FolderRow:
        seq = self.next_seq(mailbox)
        fid = new_id(b"F", mailbox)
        self._db.execute(
            "INSERT INTO folders VALUES (?,?,?,?,?,?,?,?,?,?,NULL)",
            (
                fid,
                mailbox,
                parent_id,
                distinguished,
                element,
                folder_class,
                display_name,
                new_change_key(),
                seq,
                seq,
            ),
        )
        self.touch_folder(fid)
        folder = self.folder(fid)
        assert folder is not None
        return folder

    def folder(self, folder_id: str) -> FolderRow | None:
        row = self._db.execute(
            "SELECT * FROM folders WHERE id = ? AND deleted_seq IS NULL", (folder_id,)
        ).fetchone()
        return FolderRow(*row) if row else None

    def distinguished(self, mailbox: str, name: str) -> FolderRow | None:
        owner = PUBLIC if name == "publicfoldersroot" else mailbox
        row = self._db.execute(
            "SELECT * FROM folders WHERE mailbox = ? AND distinguished = ? AND deleted_seq IS NULL",
            (owner, name),
        ).fetchone()
        return FolderRow(*row) if row else None

    def children(self, folder_id: str) -> list[FolderRow]:
        rows = self._db.execute(
            "SELECT * FROM folders WHERE parent_id = ? AND deleted_seq IS NULL ORDER BY created_seq",
            (folder_id,),
        ).fetchall()
        return [FolderRow(*r) for r in rows]

    def descendants(self, folder_id: str) -> list[FolderRow]:
        out: list[FolderRow] = []
        for child in self.children(folder_id):
            out.append(child)
            out.extend(self.descendants(child.id))
        return out

    def folder_changes(self, mailbox: str, root_id: str, since: int) -> list[tuple[str, int, FolderRow]]:
        """(kind, seq, folder) for folders under root changed after `since`, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM folders WHERE mailbox = ? AND (changed_seq > ? OR deleted_seq > ?)",
            (mailbox, since, since),
        ).fetchall()
        under = {f.id for f in self._all_descendant_ids(root_id)}
        out: list[tuple[str, int, FolderRow]] = []
        for r in rows:
            f = FolderRow(*r)
            if f.id not in under:
                continue
            if f.deleted_seq is not None:
                if f.created_seq <= since:
                    out.append(("Delete", f.deleted_seq, f))
            else:
                out.append(("Create" if f.created_seq > since else "Update", f.changed_seq, f))
        out.sort(key=lambda c: c[1])
        return out

    def _all_descendant_ids(self, root_id: str) -> list[FolderRow]:
        rows = self._db.execute("SELECT * FROM folders WHERE parent_id = ?", (root_id,)).fetchall()
        out: list[FolderRow] = []
        for r in rows:
            f = FolderRow(*r)
            out.append(f)
            out.extend(self._all_descendant_ids(f.id))
        return out

    def delete_folder(self, folder: FolderRow) -> None:
        for child in self.children(folder.id):
            self.delete_folder(child)
        for item in self.items_in(folder.id):
            self.delete_item(item)
        seq = self.next_seq(folder.mailbox)
        self._db.execute("UPDATE folders SET deleted_seq = ? WHERE id = ?", (seq, folder.id))

    def rename_folder(self, folder: FolderRow, display_name: str) -> None:
        seq = self.next_seq(folder.mailbox)
        self._db.execute(
            "UPDATE folders SET display_name = ?, change_key = ?, changed_seq = ? WHERE id = ?",
            (display_name, new_change_key(), seq, folder.id),
        )
        self.touch_folder(folder.id)

    def touch_folder(self, folder_id: str) -> None:
        """The folder or its contents changed now (PR_LAST_MODIFICATION_TIME, PR_LOCAL_COMMIT_TIME_MAX)."""
        now = utcnow().isoformat()
        self._db.execute(
            "INSERT INTO folder_times VALUES (?, ?, ?) ON CONFLICT (folder_id) DO UPDATE SET changed = ?",
            (folder_id, now, now, now),
        )

    def folder_times(self, folder_id: str) -> tuple[dt.datetime, dt.datetime]:
        """(created, last change of the folder or its contents); a folder of an older state dir
        without them counts from now on."""
        row = self._db.execute(
            "SELECT created, changed FROM folder_times WHERE folder_id = ?", (folder_id,)
        ).fetchone()
        if row is None:
            self.touch_folder(folder_id)
            now = utcnow()
            return now, now
        return dt.datetime.fromisoformat(row[0]), dt.datetime.fromisoformat(row[1])

    def folder_change_number(self, folder: FolderRow) -> int:
        """The mailbox change counter at the folder's latest change, its contents' included."""
        row = self._db.execute(
            "SELECT MAX(v) FROM (SELECT MAX(changed_seq) AS v FROM items WHERE folder_id = ?"
            " UNION ALL SELECT MAX(deleted_seq) FROM tombstones WHERE folder_id = ?)",
            (folder.id, folder.id),
        ).fetchone()
        return max(folder.changed_seq, int(row[0] or 0))

    def item_count(self, folder_id: str) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM items WHERE folder_id = ?", (folder_id,)).fetchone()[0]
        )

    # -- items ----------------------------------------------------------------------------------
    def add_item(self, mailbox: str, folder_id: str, item_type: str, xml: str) -> ItemRow:
        seq = self.next_seq(mailbox)
        iid = new_id(b"I", mailbox, folder_id)
        now = utcnow().isoformat()
        self._db.execute(
            "INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?)",
            (iid, mailbox, folder_id, item_type, xml, new_change_key(), now, now, seq, seq),
        )
        self.touch_folder(folder_id)
        item = self.item(iid)
        assert item is not None
        return item

    def item(self, item_id: str) -> ItemRow | None:
        row = self._db.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return ItemRow(*row) if row else None

    def items_in(self, folder_id: str) -> list[ItemRow]:
        rows = self._db.execute(
            "SELECT * FROM items WHERE folder_id = ? ORDER BY created_seq", (folder_id,)
        ).fetchall()
        return [ItemRow(*r) for r in rows]

    def update_item(self, item: ItemRow, xml: str) -> ItemRow:
        seq = self.next_seq(item.mailbox)
        self._db.execute(
            "UPDATE items SET xml = ?, change_key = ?, modified = ?, changed_seq = ? WHERE id = ?",
            (xml, new_change_key(), utcnow().isoformat(), seq, item.id),
        )
        self.touch_folder(item.folder_id)
        updated = self.item(item.id)
        assert updated is not None
        return updated

    def move_item(self, item: ItemRow, folder_id: str) -> ItemRow:
        """Move to another folder. The item gets a new id there, as on Exchange (ids name a store
        location); the old folder sees a Delete of the old id."""
        seq = self.next_seq(item.mailbox)
        self._db.execute(
            "INSERT INTO tombstones VALUES (?,?,?,?)", (item.id, item.folder_id, item.created_seq, seq)
        )
        seq = self.next_seq(item.mailbox)
        moved_id = new_id(b"I", item.mailbox, folder_id)
        self._db.execute(
            "UPDATE items SET id = ?, folder_id = ?, change_key = ?, created_seq = ?, changed_seq = ?"
            " WHERE id = ?",
            (moved_id, folder_id, new_change_key(), seq, seq, item.id),
        )
        self.touch_folder(item.folder_id)
        self.touch_folder(folder_id)
        moved = self.item(moved_id)
        assert moved is not None
        return moved

    def delete_item(self, item: ItemRow) -> None:
        seq = self.next_seq(item.mailbox)
        self._db.execute(
            "INSERT INTO tombstones VALUES (?,?,?,?)", (item.id, item.folder_id, item.created_seq, seq)
        )
        self._db.execute("DELETE FROM items WHERE id = ?", (item.id,))
        self.touch_folder(item.folder_id)

    def item_changes(self, folder_id: str, since: int) -> list[tuple[str, int, str, ItemRow | None]]:
        """(kind, seq, item id, live row or None) for changes in a folder after `since`, oldest first."""
        out: list[tuple[str, int, str, ItemRow | None]] = []
        for r in self._db.execute(
            "SELECT * FROM items WHERE folder_id = ? AND changed_seq > ?", (folder_id, since)
        ).fetchall():
            item = ItemRow(*r)
            out.append(("Create" if item.created_seq > since else "Update", item.changed_seq, item.id, item))
        for item_id, created_seq, deleted_seq in self._db.execute(
            "SELECT item_id, created_seq, deleted_seq FROM tombstones"
            " WHERE folder_id = ? AND deleted_seq > ?",
            (folder_id, since),
        ).fetchall():
            if created_seq <= since:
                out.append(("Delete", deleted_seq, item_id, None))
        out.sort(key=lambda c: c[1])
        # An item created and deleted since `since` leaves nothing; one deleted and then moved back
        # in shows as a Create after its Delete, as Exchange reports it.
        return out

    def record_invitation(self, mailbox: str, item_id: str, operation: str, mode: str) -> None:
        self._db.execute(
            "INSERT INTO invitations (mailbox, item_id, operation, mode, at) VALUES (?,?,?,?,?)",
            (mailbox, item_id, operation, mode, utcnow().isoformat()),
        )

    def invitations(self) -> list[dict[str, str]]:
        rows = self._db.execute(
            "SELECT mailbox, item_id, operation, mode, at FROM invitations ORDER BY n"
        ).fetchall()
        return [dict(zip(("mailbox", "item_id", "operation", "mode", "at"), r, strict=True)) for r in rows]

    # -- Graph front end: delta/skip tokens, mailbox settings ------------------------------------
    def save_delta_state(self, token: str, mailbox: str, data: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO delta_states VALUES (?,?,?,?)",
            (token, mailbox, data, utcnow().isoformat()),
        )

    def delta_state(self, token: str) -> tuple[str, str] | None:
        """(mailbox, data) of a Graph delta or skip token, None if unknown."""
        row = self._db.execute("SELECT mailbox, data FROM delta_states WHERE token = ?", (token,)).fetchone()
        return (row[0], row[1]) if row else None

    def mailbox_setting(self, mailbox: str, name: str) -> str | None:
        """A mailbox setting both front ends share (e.g. "timeZone", a Windows zone name)."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (f"mailbox:{mailbox.lower()}:{name}",)
        ).fetchone()
        return str(row[0]) if row else None

    def clear_mailbox_setting(self, mailbox: str, name: str) -> None:
        self._db.execute("DELETE FROM meta WHERE key = ?", (f"mailbox:{mailbox.lower()}:{name}",))

    def set_mailbox_setting(self, mailbox: str, name: str, value: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"mailbox:{mailbox.lower()}:{name}", value)
        )
