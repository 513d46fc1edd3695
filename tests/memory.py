"""In-memory twins of the ports: ``MemoryExchange``, ``MemoryPsa``, ``MemoryState``.

They exist for fast, deterministic tests of the sync runner and engine, and they run the same
contract suites as the real adapters (tests/contract/), so they must behave like them:

* Exchange: item ids stay, change keys change on every write; ``changes()`` is an ICS-like diff
  between what a sync state "knew" and the folder now, in pages of at most 512, with a sync state
  per page; an unknown sync state raises ``SyncStateInvalid``; updates write only the named
  fields (``SetItemField``); deleting a missing item is an ``ErrorItemNotFound`` item error;
  recurring series are masters in the folder and expanded only by ``calendar_view``.
* PSA: ``load`` returns the in-scope rows of a resource (service calls for every assigned
  resource); writes to PSA-owned rows touch only the fields named; only imported rows can be
  deleted; ``unavailable = True`` makes every call raise ``PsaUnavailable``.
* State: ``load_user`` hands out copies (the only way to change state is ``commit``), and
  ``commit`` is all-or-nothing.

Every fake counts its requests per operation (``requests``) and can inject faults
(``fault(...)``): fail the next N calls with an exception (nothing applied), or "drop" them (the
write is applied, then the call raises: the lost reply).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from exchanged import errors
from exchanged.model import (
    Appointment,
    Contact,
    CycleOutcome,
    ExchangeItem,
    FolderKind,
    ItemError,
    JournalEntry,
    Kind,
    Mapping,
    Payload,
    PsaRecord,
    Task,
    Window,
    make_psa_key,
    occurrence_key,
    payload_span,
    split_psa_key,
    unreadable_payload,
)
from exchanged.ports import (
    ChangePage,
    CheckResult,
    ExchangeAccountBase,
    FolderState,
    ItemUpdate,
    Lease,
    NewItem,
    PsaConnectorBase,
    PsaLoad,
    PsaResource,
    PsaWrite,
    StateBatch,
    UserRecord,
    UserState,
)

PAGE_SIZE = 512  # SyncFolderItems MaxChangesReturned
BATCH_SIZE = 100  # items per CreateItem/UpdateItem/DeleteItem request

PAYLOAD_OF_FOLDER: dict[FolderKind, type] = {
    FolderKind.CALENDAR: Appointment,
    FolderKind.TASKS: Task,
    FolderKind.CONTACTS: Contact,
    FolderKind.PUBLIC_CONTACTS: Contact,
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- fault injection, shared by the three fakes ---------------------------------------------------


@dataclass(slots=True)
class _Fault:
    op: str | None  # None: any operation
    skip: int  # matching calls to let through first
    times: int  # matching calls to hit
    exc: BaseException
    drop: bool  # apply the call, then raise (the lost reply)


class _Faults:
    """A queue of injected faults, matched against operation names in call order."""

    def __init__(self) -> None:
        self._faults: list[_Fault] = []

    def add(self, op: str | None, *, skip: int, times: int, exc: BaseException, drop: bool) -> None:
        self._faults.append(_Fault(op, skip, times, exc, drop))

    def clear(self) -> None:
        self._faults.clear()

    def pending(self) -> int:
        """Hits not yet taken (0: every injected fault has fired)."""
        return sum(f.times for f in self._faults)

    def take(self, op: str) -> _Fault | None:
        """The fault that hits this call, if any (consumes one hit of it)."""
        hit: _Fault | None = None
        for fault in self._faults:
            if fault.op is not None and fault.op != op:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            if hit is None and fault.times > 0:
                fault.times -= 1
                hit = fault
        self._faults = [f for f in self._faults if f.times > 0]
        return hit


def _lost_reply(op: str) -> errors.ExchangedError:
    return errors.ExchangeUnavailable(f"connection closed before the reply to {op} (injected)")


# --- Exchange ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Series:
    """The occurrences of one recurring master: original start -> payload (None: deleted)."""

    occurrences: dict[datetime, Appointment | None] = field(default_factory=dict)


@dataclass(slots=True)
class _Folder:
    identity: str
    items: dict[str, ExchangeItem] = field(default_factory=dict)
    series: dict[str, _Series] = field(default_factory=dict)  # master item id -> occurrences
    # sync state token -> what the client knew at that state: item id -> change key
    sync_states: dict[str, dict[str, str]] = field(default_factory=dict)
    # items an adapter cannot read (see ``user_break``): item id -> (what the server really holds,
    # the fields it lacks); the stored item is ``unreadable`` with a placeholder payload
    broken: dict[str, tuple[Payload, set[str]]] = field(default_factory=dict)


class MemoryMailbox:
    """One mailbox of ``MemoryExchange``; implements ``ports.ExchangeMailbox``."""

    def __init__(self, account: MemoryExchange, address: str, folders: Iterable[FolderKind]) -> None:
        self._account = account
        self._address = address
        self.folders: dict[FolderKind, _Folder] = {
            f: _Folder(identity=f"{address}/{f.value}/{uuid.uuid4().hex[:8]}") for f in folders
        }

    zone = "UTC"  # stores payloads as given: no days to compute, the zone is only reported

    @property
    def mailbox(self) -> str:
        return self._address

    async def time_zone(self) -> str:
        return self.zone

    # -- internals ------------------------------------------------------------------------------

    def _folder(self, folder: FolderKind) -> _Folder:
        try:
            return self.folders[folder]
        except KeyError:
            raise errors.ExchangeError(
                f"{self._address}: folder {folder.value} does not exist in this mailbox",
                mailbox=self._address) from None

    def _enter(self, op: str, requests: int = 1) -> _Fault | None:
        """Count the request(s), check the mailbox, and raise an injected fault (unless a drop)."""
        acc = self._account
        acc.requests[op] += requests
        if acc.known_mailboxes is not None and self._address not in acc.known_mailboxes:
            raise errors.MailboxNotFound(f"mailbox {self._address} not found", mailbox=self._address)
        fault = acc.faults.take(op)
        if fault is not None and not fault.drop:
            raise fault.exc
        return fault

    @staticmethod
    def _leave(fault: _Fault | None, op: str) -> None:
        if fault is not None:  # a drop: the work is done, the reply is lost
            raise fault.exc if fault.exc is not None else _lost_reply(op)

    def _new_change_key(self) -> str:
        return f"CK{next(self._account._counter)}"

    def _store(self, folder: FolderKind, item: ExchangeItem) -> ExchangeItem:
        item = replace(item, change_key=self._new_change_key(), last_modified=self._account.now())
        self._folder(folder).items[item.item_id] = item
        return item

    def _new_item(self, folder: FolderKind, payload: Payload, *, psa_key: str | None,
                  categories: tuple[str, ...], uid: str | None = None,
                  is_master: bool = False) -> ExchangeItem:
        item_id = f"AAMk-{self._account._id_prefix}-{next(self._account._counter)}"
        if folder is FolderKind.CALENDAR and uid is None:
            uid = f"{uuid.uuid4()}"
        item = ExchangeItem(
            folder=folder, item_id=item_id, change_key="", payload=payload, psa_key=psa_key,
            categories=categories, uid=uid,
            exchange_key=uid if folder is FolderKind.CALENDAR else None,
            is_recurring_master=is_master)
        return self._store(folder, item)

    def _check_payload(self, folder: FolderKind, payload: Payload, key: str) -> ItemError | None:
        if not isinstance(payload, PAYLOAD_OF_FOLDER[folder]):
            return ItemError(key, "ErrorInvalidPropertyValue",
                             f"a {type(payload).__name__} cannot be stored in the {folder.value} folder")
        if isinstance(payload, Appointment) and payload.end < payload.start:
            return ItemError(key, "ErrorCalendarEndDateIsEarlierThanStartDate",
                             "the end of the appointment is before its start")
        if key in self._account.rejected:
            return ItemError(key, "ErrorInvalidPropertyValue", "rejected by the server (injected)")
        return None

    # -- the port -------------------------------------------------------------------------------

    async def changes(self, folder: FolderKind, sync_state: str | None, *,
                      known: dict[str, ExchangeItem] | None = None) -> AsyncIterator[ChangePage]:
        # ``known`` saves requests on a server; here every item is at hand anyway
        f = self._folder(folder)
        fault = self._enter("SyncFolderItems")
        if sync_state is None:
            seen: dict[str, str] = {}
        elif sync_state in f.sync_states:
            seen = dict(f.sync_states[sync_state])
        else:
            raise errors.SyncStateInvalid(
                f"{self._address}: the server refused the sync state of the {folder.value} folder",
                mailbox=self._address)
        upserted = [i for i in f.items.values() if seen.get(i.item_id) != i.change_key]
        deleted = [item_id for item_id in seen if item_id not in f.items]
        changes: list[tuple[str, ExchangeItem | None]] = [(i.item_id, i) for i in upserted]
        changes += [(item_id, None) for item_id in deleted]
        if not changes and sync_state is not None:
            self._leave(fault, "SyncFolderItems")
            yield ChangePage(upserted=[], deleted=[], sync_state=sync_state, last_page=True)
            return
        pages = [changes[i:i + PAGE_SIZE] for i in range(0, len(changes), PAGE_SIZE)] or [[]]
        for n, page in enumerate(pages):
            if n > 0:
                fault = self._enter("SyncFolderItems")
            for item_id, item in page:
                if item is None:
                    seen.pop(item_id, None)
                else:
                    seen[item_id] = item.change_key
            token = f"SS{next(self._account._counter)}"
            f.sync_states[token] = dict(seen)
            self._leave(fault, "SyncFolderItems")
            yield ChangePage(
                upserted=[i for _, i in page if i is not None],
                deleted=[item_id for item_id, i in page if i is None],
                sync_state=token, last_page=n == len(pages) - 1)

    async def calendar_view(self, start: datetime, end: datetime) -> Sequence[ExchangeItem]:
        fault = self._enter("FindItem")
        f = self._folder(FolderKind.CALENDAR)
        out: list[ExchangeItem] = []
        for item in f.items.values():
            if not item.is_recurring_master:
                p = item.payload
                assert isinstance(p, Appointment)
                if p.end >= start and p.start <= end:
                    out.append(item)
                continue
            series = f.series.get(item.item_id, _Series())
            for n, (original, occ) in enumerate(sorted(series.occurrences.items())):
                if occ is None or not (occ.end >= start and occ.start <= end):
                    continue
                out.append(replace(
                    item, item_id=f"{item.item_id}:occ{n}", payload=occ, is_recurring_master=False,
                    exchange_key=occurrence_key(item.uid or item.item_id, original)))
        out.sort(key=lambda i: (i.payload.start, i.item_id))  # type: ignore[union-attr]
        self._leave(fault, "FindItem")
        return out

    async def find_by_psa_keys(self, folder: FolderKind, psa_keys: Sequence[str], *,
                               folder_hint: int | None = None) -> dict[str, ExchangeItem]:
        fault = self._enter("FindItem")
        wanted = set(psa_keys)
        out: dict[str, ExchangeItem] = {}
        for item in self._folder(folder).items.values():  # insertion order: the oldest wins
            if item.psa_key in wanted and item.psa_key not in out:
                out[item.psa_key] = item
        self._leave(fault, "FindItem")
        return out

    async def create(
        self, folder: FolderKind, items: Sequence[NewItem]
    ) -> Sequence[ExchangeItem | ItemError]:
        fault = self._enter("CreateItem", _batches(len(items)))
        out: list[ExchangeItem | ItemError] = []
        for new in items:
            problem = self._check_payload(folder, new.payload, new.psa_key)
            if problem is not None:
                out.append(problem)
                continue
            out.append(self._new_item(folder, new.payload, psa_key=new.psa_key,
                                      categories=tuple(new.categories)))
        self._leave(fault, "CreateItem")
        return out

    async def update(
        self, folder: FolderKind, updates: Sequence[ItemUpdate]
    ) -> Sequence[ExchangeItem | ItemError]:
        fault = self._enter("UpdateItem", _batches(len(updates)))
        f = self._folder(folder)
        out: list[ExchangeItem | ItemError] = []
        for upd in updates:
            current = f.items.get(upd.item_id)
            if current is None:
                out.append(ItemError(upd.item_id, "ErrorItemNotFound", "the item no longer exists"))
                continue
            problem = self._check_payload(folder, upd.payload, current.psa_key or upd.item_id)
            if problem is None and type(upd.payload) is not type(current.payload):
                problem = ItemError(upd.item_id, "ErrorInvalidPropertyValue", "payload type changed")
            if problem is not None:
                out.append(problem)
                continue
            # SetItemField per named field: everything else stays as the server has it
            values = {name: getattr(upd.payload, name) for name in upd.changed}
            real, missing = f.broken.get(upd.item_id, (current.payload, set()))
            payload = replace(real, **values)
            if isinstance(payload, Appointment) and payload.end < payload.start:
                out.append(ItemError(upd.item_id, "ErrorCalendarEndDateIsEarlierThanStartDate",
                                     "the end of the appointment is before its start"))
                continue
            cats = upd.categories  # the item's whole category list, or None: leave them
            updated = current if cats is None else replace(current, categories=tuple(dict.fromkeys(cats)))
            missing = missing - set(upd.changed)
            if missing:  # still unreadable: what a real adapter answers after its re-read
                f.broken[upd.item_id] = (payload, missing)
                self._store(folder, updated)
                out.append(ItemError(upd.item_id, "unreadable_item", "the item is still unreadable after "
                                     "the update", retryable=True))
                continue
            f.broken.pop(upd.item_id, None)
            out.append(self._store(folder, replace(updated, payload=payload, unreadable=False)))
        self._leave(fault, "UpdateItem")
        return out

    async def delete(self, folder: FolderKind, item_ids: Sequence[str]) -> Sequence[ItemError | None]:
        fault = self._enter("DeleteItem", _batches(len(item_ids)))
        f = self._folder(folder)
        out: list[ItemError | None] = []
        for item_id in item_ids:
            f.broken.pop(item_id, None)
            if f.items.pop(item_id, None) is None:
                out.append(ItemError(item_id, "ErrorItemNotFound", "the item no longer exists"))
            else:
                f.series.pop(item_id, None)
                out.append(None)
        self._leave(fault, "DeleteItem")
        return out

    # -- test helpers: what a user (or an admin) does in Outlook ---------------------------------

    def items(self, folder: FolderKind) -> list[ExchangeItem]:
        return list(self._folder(folder).items.values())

    def get(self, folder: FolderKind, item_id: str) -> ExchangeItem:
        return self._folder(folder).items[item_id]

    def by_psa_key(self, folder: FolderKind, psa_key: str) -> list[ExchangeItem]:
        return [i for i in self._folder(folder).items.values() if i.psa_key == psa_key]

    def user_edit(self, folder: FolderKind, item_id: str, **values: Any) -> ExchangeItem:
        current = self._folder(folder).items[item_id]
        return self._store(folder, replace(current, payload=replace(current.payload, **values)))

    def user_set_categories(self, folder: FolderKind, item_id: str,
                            categories: Sequence[str]) -> ExchangeItem:
        current = self._folder(folder).items[item_id]
        return self._store(folder, replace(current, categories=tuple(categories)))

    def user_delete(self, folder: FolderKind, item_id: str) -> None:
        f = self._folder(folder)
        del f.items[item_id]
        f.series.pop(item_id, None)
        f.broken.pop(item_id, None)

    def user_break(self, folder: FolderKind, item_id: str, missing: Iterable[str] = ("start", "end")
                   ) -> ExchangeItem:
        """The item loses ``missing`` fields (a calendar item without a Start): from now on it is
        read as ``unreadable`` with a placeholder payload, as the EWS adapter reads such an item of
        ours, until an update sets every missing field again. (The adapter skips a foreign item it
        cannot read, so only items with a PSA key may be broken.)"""
        f = self._folder(folder)
        current = f.items[item_id]
        if current.psa_key is None:
            raise ValueError("only an item with a PSA key is read as unreadable; a foreign one is skipped")
        f.broken[item_id] = (current.payload, set(missing))
        p = current.payload
        placeholder = unreadable_payload(folder, p.surname if isinstance(p, Contact) else p.subject)
        return self._store(folder, replace(current, payload=placeholder, unreadable=True))

    def user_add(self, folder: FolderKind, payload: Payload, *, categories: tuple[str, ...] = (),
                 uid: str | None = None) -> ExchangeItem:
        """A foreign item: one the daemon did not create (no PSA key)."""
        return self._new_item(folder, payload, psa_key=None, categories=categories, uid=uid)

    def user_add_series(self, first: Appointment, starts: Sequence[datetime], *,
                        categories: tuple[str, ...] = (), uid: str | None = None) -> ExchangeItem:
        """A recurring series: one occurrence per start, each as long as ``first``."""
        duration = first.end - first.start
        head = replace(first, start=starts[0], end=starts[0] + duration)
        master = self._new_item(FolderKind.CALENDAR, head, psa_key=None, categories=categories,
                                uid=uid, is_master=True)
        self._folder(FolderKind.CALENDAR).series[master.item_id] = _Series(
            {s: replace(first, start=s, end=s + duration) for s in starts})
        return master

    def user_edit_occurrence(self, master_id: str, original_start: datetime, **values: Any) -> None:
        """Turn one occurrence into an exception (the master's change key changes, as in EWS)."""
        f = self._folder(FolderKind.CALENDAR)
        occ = f.series[master_id].occurrences[original_start]
        if occ is None:
            raise KeyError(f"occurrence {original_start} was deleted")
        f.series[master_id].occurrences[original_start] = replace(occ, **values)
        self._store(FolderKind.CALENDAR, f.items[master_id])

    def user_delete_occurrence(self, master_id: str, original_start: datetime) -> None:
        f = self._folder(FolderKind.CALENDAR)
        f.series[master_id].occurrences[original_start] = None
        self._store(FolderKind.CALENDAR, f.items[master_id])

    def recreate_folder(self, folder: FolderKind) -> None:
        """The folder is deleted and made anew: new identity, empty, every sync state invalid."""
        self.folders[folder] = _Folder(identity=f"{self._address}/{folder.value}/{uuid.uuid4().hex[:8]}")

    def invalidate_sync_states(self, folder: FolderKind) -> None:
        self._folder(folder).sync_states.clear()


def _batches(n: int) -> int:
    return max(1, -(-n // BATCH_SIZE))


class MemoryExchange(ExchangeAccountBase):
    """Implements ``ports.ExchangeAccount`` over in-memory mailboxes.

    ``known_mailboxes``: when given, other addresses raise ``MailboxNotFound`` on use; otherwise a
    mailbox springs into existence when first asked for.
    """

    PUBLIC = "public-folder"

    def __init__(self, *, known_mailboxes: Iterable[str] | None = None,
                 now: Callable[[], datetime] = _utcnow) -> None:
        self.known_mailboxes = None if known_mailboxes is None else set(known_mailboxes) | {self.PUBLIC}
        self.now = now
        self.requests: Counter[str] = Counter()
        self.faults = _Faults()
        self.rejected: set[str] = set()  # psa keys / item ids the server refuses (item errors)
        self.closed = False
        self._counter = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:6]
        self._mailboxes: dict[str, MemoryMailbox] = {}

    def mailbox(self, address: str, *, time_zone: str | None = None) -> MemoryMailbox:
        key = address.lower()
        if key not in self._mailboxes:
            self._mailboxes[key] = MemoryMailbox(
                self, address, [FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS])
        self._mailboxes[key].zone = time_zone or "UTC"
        return self._mailboxes[key]

    def public_contacts(self) -> MemoryMailbox:
        if self.PUBLIC not in self._mailboxes:
            self._mailboxes[self.PUBLIC] = MemoryMailbox(self, self.PUBLIC, [FolderKind.PUBLIC_CONTACTS])
        return self._mailboxes[self.PUBLIC]

    async def check(self, mailboxes: Sequence[str]) -> list[CheckResult]:
        self.requests["check"] += 1
        out = [CheckResult("login", True, "logged in"), CheckResult("ews", True, "EWS reachable")]
        for m in mailboxes:
            ok = self.known_mailboxes is None or m in self.known_mailboxes
            out.append(CheckResult(m, ok, "impersonation ok" if ok else f"mailbox {m} not found"))
        return out

    async def aclose(self) -> None:
        self.closed = True

    # -- test helpers ---------------------------------------------------------------------------

    def fault(self, op: str | None = None, *, times: int = 1, skip: int = 0,
              exc: BaseException | None = None, drop: bool = False) -> None:
        """Fail (or with ``drop`` apply then fail) ``times`` calls of ``op`` after ``skip`` of them.

        ``op``: "SyncFolderItems", "FindItem", "CreateItem", "UpdateItem", "DeleteItem", or None
        for any. The default exception is ``ExchangeUnavailable``.
        """
        name = op or "any"
        self.faults.add(op, skip=skip, times=times, drop=drop,
                        exc=exc if exc is not None else _lost_reply(name) if drop
                        else errors.ExchangeUnavailable(f"{name} failed (injected)"))

    def writes(self) -> int:
        """Write requests so far (CreateItem + UpdateItem + DeleteItem)."""
        return sum(self.requests[op] for op in ("CreateItem", "UpdateItem", "DeleteItem"))


# --- PSA ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    record: PsaRecord
    resources: set[str]  # assigned / owning resources
    active: bool = True


class MemoryPsa(PsaConnectorBase):
    """Implements ``ports.PsaConnector`` over in-memory rows."""

    def __init__(self, *, now: Callable[[], datetime] = _utcnow) -> None:
        self.now = now
        self.resources: dict[str, PsaResource] = {}
        self.rows: dict[str, _Row] = {}  # psa_key -> row
        # rows a real PSA would hold but the connector cannot sync: psa_key -> (resources, why)
        self.bad: dict[str, tuple[set[str], str]] = {}
        self.unavailable = False
        self.requests: Counter[str] = Counter()
        self.faults = _Faults()
        self.rejected: set[str] = set()  # keys whose writes fail with an item error
        self.closed = False
        self._ids = itertools.count(1)

    # -- the port -------------------------------------------------------------------------------

    def _enter(self, op: str) -> _Fault | None:
        self.requests[op] += 1
        if self.unavailable:
            raise errors.PsaUnavailable("the PSA cannot be reached (memory PSA switched off)")
        fault = self.faults.take(op)
        if fault is not None and not fault.drop:
            raise fault.exc
        return fault

    @staticmethod
    def _leave(fault: _Fault | None) -> None:
        if fault is not None:
            raise fault.exc

    async def resource(self, psa_resource: str) -> PsaResource | None:
        self._leave(self._enter("resource"))
        return self.resources.get(psa_resource)

    async def all_resources(self) -> list[PsaResource]:
        self._leave(self._enter("resource"))
        return [self.resources[k] for k in sorted(self.resources)]

    async def load(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> PsaLoad:
        fault = self._enter("load")
        out = self._select(psa_resource, kinds, window)
        skipped = [ItemError(key, "invalid_row", why) for key, (resources, why) in self.bad.items()
                   if psa_resource in resources and split_psa_key(key)[0] in kinds
                   and split_psa_key(key)[0] is not Kind.PUBLIC_CONTACT]
        self._leave(fault)
        return PsaLoad(out, skipped)

    async def change_token(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> object:
        """Equal only when ``load`` would return equal records (exact: a hash of them)."""
        fault = self._enter("change_token")
        token = hash(tuple(self._select(psa_resource, kinds, window)))
        self._leave(fault)
        return token

    def _select(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> list[PsaRecord]:
        return [row.record for row in self.rows.values()
                if (row.record.kind in kinds and row.active and psa_resource in row.resources
                    and row.record.kind is not Kind.PUBLIC_CONTACT
                    and window.in_scope(*payload_span(row.record.payload)))]

    async def all_contacts(self) -> PsaLoad:
        fault = self._enter("all_contacts")
        out = [replace(row.record, kind=Kind.PUBLIC_CONTACT,
                       psa_key=make_psa_key(Kind.PUBLIC_CONTACT, row.record.psa_key.partition(":")[2]))
               for row in self.rows.values() if row.record.kind is Kind.CONTACT and row.active]
        skipped = [ItemError(make_psa_key(Kind.PUBLIC_CONTACT, key.partition(":")[2]), "invalid_row", why)
                   for key, (_, why) in self.bad.items() if split_psa_key(key)[0] is Kind.CONTACT]
        self._leave(fault)
        return PsaLoad(out, skipped)

    async def apply(self, writes: Sequence[PsaWrite]) -> Sequence[PsaRecord | ItemError | None]:
        fault = self._enter("apply")
        out = [self._apply_one(w) for w in writes]
        self._leave(fault)
        return out

    async def aclose(self) -> None:
        self.closed = True

    def _apply_one(self, w: PsaWrite) -> PsaRecord | ItemError | None:
        key = w.psa_key or w.exchange_key or "?"
        if key in self.rejected:
            return ItemError(key, "invalid_row", "the PSA refused the row (injected)")
        if w.op == "create":
            if w.kind is not Kind.IMPORTED or w.payload is None or w.resource is None:
                return ItemError(key, "invalid_write", "only imported appointments can be created")
            if not isinstance(w.payload, Appointment):
                return ItemError(key, "invalid_row", "an imported row must be an appointment")
            psa_key = make_psa_key(Kind.IMPORTED, next(self._ids))
            rec = PsaRecord(Kind.IMPORTED, psa_key, w.payload, self.now(), w.exchange_key)
            self.rows[psa_key] = _Row(rec, {w.resource})
            return rec
        row = self.rows.get(w.psa_key or "")
        if row is None and w.op == "delete":
            return None  # deleting what is gone is done (SQL DELETE of no row)
        if row is None or not row.active:
            return ItemError(key, "not_found", "the PSA row no longer exists")
        if w.op == "delete":
            if row.record.kind is not Kind.IMPORTED:
                return ItemError(key, "invalid_write", "only imported rows are deleted by the sync")
            del self.rows[row.record.psa_key]
            return None
        if w.op == "update" and w.payload is not None:
            if type(w.payload) is not type(row.record.payload):
                return ItemError(key, "invalid_row", "payload type does not match the row")
            values = {name: getattr(w.payload, name) for name in w.fields}
            row.record = replace(row.record, payload=replace(row.record.payload, **values),
                                 last_modified=self.now())
            return row.record
        return ItemError(key, "invalid_write", f"unknown PSA write {w.op!r}")

    # -- test helpers ---------------------------------------------------------------------------

    def add_resource(self, psa_resource: str, email: str, name: str = "", is_active: bool = True) -> None:
        self.resources[psa_resource] = PsaResource(psa_resource, email, name or email, is_active)

    def add(self, kind: Kind, payload: Payload, resources: Iterable[str]) -> str:
        """A new PSA-owned row (appointment, service call, to-do, contact) for these resources."""
        psa_key = make_psa_key(kind, next(self._ids))
        self.rows[psa_key] = _Row(PsaRecord(kind, psa_key, payload, self.now()), set(resources))
        return psa_key

    def add_bad(self, kind: Kind, resources: Iterable[str], why: str = "it has no end time") -> str:
        """A row the PSA holds that cannot be synced: every load of these resources skips it and
        reports it (``PsaLoad.skipped``, code ``invalid_row``), as a real connector does."""
        psa_key = make_psa_key(kind, next(self._ids))
        self.bad[psa_key] = (set(resources), f"PSA row {psa_key} is skipped because {why}")
        return psa_key

    def edit(self, psa_key: str, **values: Any) -> PsaRecord:
        row = self.rows[psa_key]
        row.record = replace(row.record, payload=replace(row.record.payload, **values),
                             last_modified=self.now())
        return row.record

    def remove(self, psa_key: str) -> None:
        del self.rows[psa_key]

    def assign(self, psa_key: str, resources: Iterable[str]) -> None:
        self.rows[psa_key].resources = set(resources)

    def records(self, kind: Kind | None = None, resource: str | None = None) -> list[PsaRecord]:
        return [r.record for r in self.rows.values()
                if (kind is None or r.record.kind is kind) and (resource is None or resource in r.resources)]

    def fault(self, op: str | None = None, *, times: int = 1, skip: int = 0,
              exc: BaseException | None = None, drop: bool = False) -> None:
        """``op``: "load", "all_contacts", "apply", "resource" or None for any."""
        self.faults.add(op, skip=skip, times=times, drop=drop,
                        exc=exc if exc is not None
                        else errors.PsaUnavailable(f"{op or 'PSA call'} failed (injected)"))

    def writes(self) -> int:
        return self.requests["apply"]


# --- state --------------------------------------------------------------------------------------------


class MemoryState:
    """Implements ``ports.StateStore`` in memory (one node; leases honoured with ``clock``)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.users: dict[str, UserState] = {}
        self.records: dict[str, UserRecord] = {}
        self.journal: list[JournalEntry] = []
        self.leases: dict[str, tuple[str, float]] = {}
        self.commits = 0
        self.faults = _Faults()
        self.closed = False

    def _check(self, op: str) -> _Fault | None:
        fault = self.faults.take(op)
        if fault is not None and not fault.drop:
            raise fault.exc
        return fault

    async def load_user(self, mailbox: str) -> UserState:
        if self._check("load_user") is not None:
            raise errors.StateError("load_user failed (injected)")  # a lost reply of a read is a failure
        return copy.deepcopy(self.users.get(mailbox) or UserState(mailbox))

    async def generation(self, mailbox: str) -> int:
        user = self.users.get(mailbox)
        return user.generation if user is not None else 0

    async def commit(self, mailbox: str, batch: StateBatch) -> int:
        fault = self._check("commit")
        # build the new state on a copy and swap it in: all or nothing
        user = copy.deepcopy(self.users.get(mailbox) or UserState(mailbox))
        for key in batch.delete_mappings:
            user.mappings.pop(key, None)
        for m in batch.upsert_mappings:
            user.mappings[m.psa_key] = m
        touched = set(batch.mirror_upserts) | set(batch.mirror_deletes) | set(batch.sync_states)
        for folder in touched:
            fs = user.folders.setdefault(folder, FolderState())
            for item_id in batch.mirror_deletes.get(folder, []):
                fs.items.pop(item_id, None)
            for item in batch.mirror_upserts.get(folder, []):
                fs.items[item.item_id] = item
            if folder in batch.sync_states:
                fs.sync_state = batch.sync_states[folder]
            if batch.server_identity is not None:
                fs.server_identity = batch.server_identity
        if batch.held_back_deletes is not None:
            user.held_back_deletes = list(batch.held_back_deletes)
        user.generation += 1
        self.users[mailbox] = copy.deepcopy(user)
        self.journal.extend(batch.journal)
        self.commits += 1
        if fault is not None:
            raise fault.exc
        return user.generation

    async def reset_user(self, mailbox: str, *, keep_mappings: bool) -> None:
        fault = self._check("reset_user")
        user = self.users.setdefault(mailbox, UserState(mailbox))
        user.folders.clear()
        if not keep_mappings:
            user.mappings.clear()
        user.generation += 1
        if fault is not None:
            raise fault.exc

    async def record_outcome(self, mailbox: str, at: datetime, outcome: CycleOutcome) -> None:
        fault = self._check("record_outcome")
        old = self.records.get(mailbox) or UserRecord(mailbox)
        ok = outcome.result != "error"
        self.records[mailbox] = dataclasses.replace(
            old, last_attempt=at, last_success=at if ok else old.last_success,
            last_result=outcome.result, last_error=outcome.error, counts=outcome.counts.as_dict())
        if fault is not None:
            raise fault.exc

    async def mark_known(self, mailbox: str) -> bool:
        old = self.records.get(mailbox) or UserRecord(mailbox)
        self.records[mailbox] = dataclasses.replace(old, known=True)
        return not old.known

    async def user_records(self) -> dict[str, UserRecord]:
        return dict(self.records)

    async def history(
        self, mailbox: str | None, since: datetime | None, limit: int = 1000
    ) -> list[JournalEntry]:
        """Oldest first; at most the ``limit`` newest matching entries."""
        found = [e for e in self.journal
                 if (mailbox is None or e.mailbox == mailbox) and (since is None or e.at >= since)]
        return found[-limit:] if limit > 0 else []

    async def prune_history(self, before: datetime) -> int:
        kept = [e for e in self.journal if e.at >= before]
        pruned = len(self.journal) - len(kept)
        self.journal[:] = kept
        return pruned

    async def try_lease(self, mailbox: str, node: str, ttl_s: float) -> bool:
        now = self.clock()
        holder = self.leases.get(mailbox)
        if holder is not None and holder[0] != node and holder[1] > now:
            return False
        self.leases[mailbox] = (node, now + ttl_s)
        return True

    async def release_lease(self, mailbox: str, node: str) -> None:
        holder = self.leases.get(mailbox)
        if holder is not None and holder[0] == node:
            del self.leases[mailbox]

    async def lease_holders(self) -> dict[str, Lease]:
        now = self.clock()
        return {m: Lease(node, datetime.now(UTC) + timedelta(seconds=until - now))
                for m, (node, until) in self.leases.items() if until > now}

    async def aclose(self) -> None:
        self.closed = True

    # -- test helpers ---------------------------------------------------------------------------

    def mappings(self, mailbox: str) -> dict[str, Mapping]:
        user = self.users.get(mailbox)
        return dict(user.mappings) if user else {}

    def fault(self, op: str | None = None, *, times: int = 1, skip: int = 0,
              exc: BaseException | None = None, drop: bool = False) -> None:
        """``op``: "commit", "load_user", "reset_user", "record_outcome" or None for any."""
        self.faults.add(op, skip=skip, times=times, drop=drop,
                        exc=exc if exc is not None
                        else errors.StateError(f"{op or 'state call'} failed (injected)"))


__all__ = ["BATCH_SIZE", "PAGE_SIZE", "MemoryExchange", "MemoryMailbox", "MemoryPsa", "MemoryState"]
