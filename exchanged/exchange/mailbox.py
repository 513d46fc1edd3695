"""One mailbox (``ports.ExchangeMailbox``) and the public contacts folder, over exchangelib.

Requests per operation (see docs/EWS_ADAPTER.md for the whole picture):

* ``changes``: one SyncFolderItems (IdOnly, MaxChangesReturned 512) per page, plus GetItem for
  the created/updated items of that page in chunks of ``GET_CHUNK`` with only the mapped fields
  (not for the caller's ``known`` items still under the change key it knows).
* ``calendar_view``: one FindItem with a CalendarView per slice of at most a year (split further
  when a slice hits MaxEntriesReturned), plus GetItem for the bodies (``details=True``).
* ``find_by_psa_keys``: FindItem (IdOnly + our key) per ``FIND_KEYS_CHUNK`` keys, GetItem for hits.
* ``create``/``update``/``delete``: one CreateItem/UpdateItem/DeleteItem per 100 items; create
  and update add GetItem (per ``GET_CHUNK``) to return what the server now holds.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import trio
from exchangelib import Q
from exchangelib.errors import ErrorFolderNotFound, ErrorItemNotFound
from exchangelib.fields import FieldPath
from exchangelib.folders import Calendar, Contacts, Folder, Tasks
from exchangelib.properties import (
    CalendarView,
    DistinguishedFolderId,
    ItemId,
    Mailbox,
    UserConfigurationNameMNS,
)
from exchangelib.restriction import Restriction
from exchangelib.services import GetUserConfiguration
from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

from exchanged import errors
from exchanged.exchange import convert
from exchanged.exchange.account import AmbiguousWrite, EwsAccount, adopt_then_create
from exchanged.exchange.services import (
    CreateItemHinted,
    DeleteItemHinted,
    FindItemRobust,
    GetItemRobust,
    IncompleteAnswer,
    SyncFolderItemsIds,
    UnreadableItem,
    UpdateItemOnly,
)
from exchanged.model import Appointment, ExchangeItem, FolderKind, ItemError
from exchanged.ports import ChangePage, ItemUpdate, NewItem

log = logging.getLogger("exchanged.exchange")

SYNC_PAGE = 512  # SyncFolderItems MaxChangesReturned (the EWS maximum)
GET_CHUNK = 50  # items per GetItem: small answers, few requests (Microsoft suggests ~10 for bodies)
WRITE_CHUNK = 100  # items per CreateItem/UpdateItem/DeleteItem
FIND_KEYS_CHUNK = 50  # PSA keys per FindItem restriction (an Or of IsEqualTo)
FIND_PAGE = 1000  # items per FindItem page when listing a folder (EWSFindCountLimit)
VIEW_MAX = 1000  # CalendarView MaxEntriesReturned; a full slice is split in two
ZONE_TTL_S = 3600.0  # a mailbox's zone is read again after an hour (an owner who moved, a new choice)
VIEW_SLICE = timedelta(days=365)  # CalendarView ranges over two years fail (ErrorCalendarViewRangeTooBig)

FOLDER_CLASSES: dict[FolderKind, Any] = {
    FolderKind.CALENDAR: Calendar, FolderKind.TASKS: Tasks, FolderKind.CONTACTS: Contacts,
}


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def answers_every_id(asked: Sequence[str], results: list[Any]) -> list[Any]:
    """``results`` when they answer every id in ``asked``, in order (an error answer, which carries
    no id, stands for its id); otherwise ``IncompleteAnswer``: a shorter or reordered bulk answer
    must never read as "these items are gone"."""
    if len(results) != len(asked):
        raise IncompleteAnswer(f"GetItem answered {len(results)} of the {len(asked)} items asked")
    for n, (want, res) in enumerate(zip(asked, results, strict=True)):
        got = res.item_id if isinstance(res, UnreadableItem) else (
            None if isinstance(res, Exception) else getattr(res, "id", None))
        if got is not None and got != want:
            raise IncompleteAnswer(f"GetItem answered item {n + 1} with another item's id")
    return results


def _item_error(key: str, exc: BaseException) -> ItemError:
    retryable = type(exc).__name__ in ("ErrorServerBusy", "ErrorTimeoutExpired", "ErrorIrresolvableConflict",
                                       "ErrorInvalidChangeKey")
    return ItemError(key=key, code=type(exc).__name__, message=" ".join(str(exc).split())[:300],
                     retryable=retryable)


class EwsMailbox:
    """A user's mailbox: calendar, tasks and contacts, addressed by DistinguishedFolderId.

    Days (all-day bounds, task dates) are computed in the mailbox's zone: ``time_zone`` when the
    config gives one, else the zone its owner chose in Exchange (``OWA.UserOptions``, read with
    GetUserConfiguration when items are first read or written, again after ``ZONE_TTL_S``), else
    UTC."""

    def __init__(self, account: EwsAccount, address: str, time_zone: str | None = None) -> None:
        self._acc = account
        self._address = address
        self._folders: dict[FolderKind, Any] = {}
        self.override = time_zone  # the configured users[].time_zone (IANA), or None
        self._zone: tuple[str, Any] | None = None  # (IANA name, EWSTimeZone) in use
        self._zone_read_at = -ZONE_TTL_S - 1.0
        self._zone_said: str | None = None  # the last zone problem logged (once, not every cycle)

    @property
    def mailbox(self) -> str:
        return self._address

    # -- the mailbox's time zone ------------------------------------------------------------------

    async def time_zone(self) -> str:
        """The IANA zone this mailbox's days are computed in (see the class)."""
        return (await self._tz())[0]

    async def _tz(self) -> tuple[str, Any]:
        if self.override:
            if self._zone is None or self._zone[0] != self.override:
                self._use(self.override, convert.ews_timezone(self.override))  # validated by the config
            assert self._zone is not None
            return self._zone
        now = trio.current_time()
        if self._zone is None or now - self._zone_read_at > ZONE_TTL_S:
            self._use(*await self._read_zone())
            self._zone_read_at = now
        assert self._zone is not None
        return self._zone

    def _use(self, name: str, tz: Any) -> None:
        if self._zone is not None and self._zone[0] != name:
            log.info("%s: the mailbox's time zone is now %s (was %s): all-day items and task dates "
                     "follow it", self._address, name, self._zone[0])
        self._zone = (name, tz)
        # exchangelib turns all-day dates into times in the account's zone and sends it as the
        # requests' TimeZoneContext: the same zone as the conversions (one Account per mailbox)
        self._ews_account().default_timezone = tz

    async def _read_zone(self) -> tuple[str, Any]:
        acc = self._ews_account()
        address = self._address

        def read() -> str | None:
            name = UserConfigurationNameMNS(name="OWA.UserOptions", folder=DistinguishedFolderId(
                id="root", mailbox=Mailbox(email_address=address)))
            try:
                conf = GetUserConfiguration(account=acc).get(user_configuration_name=name,
                                                            properties="Dictionary")
            except ErrorItemNotFound:
                return None  # the owner never chose a zone in OWA
            zone = (getattr(conf, "dictionary", None) or {}).get("timezone")
            return zone if isinstance(zone, str) and zone.strip() else None

        try:
            windows = await self._call("GetUserConfiguration OWA.UserOptions", read)
        except errors.ExchangeError as exc:
            if isinstance(exc, errors.ExchangeUnavailable | errors.AuthFailed | errors.Throttled):
                raise  # the cycle fails on this anyway: said once, as every other failure
            return self._zone_fallback(f"its time zone cannot be read from Exchange ({exc})")
        if windows is None:
            return self._zone_fallback("its owner has not chosen a time zone in Outlook on the web")
        iana = MS_TIMEZONE_TO_IANA_MAP.get(windows.strip())
        if iana is None:
            return self._zone_fallback(f"Exchange names its time zone {windows!r}, which is not a known "
                                       "Windows time zone")
        self._zone_said = None
        return iana, convert.ews_timezone(iana)

    def _zone_fallback(self, why: str) -> tuple[str, Any]:
        if self._zone_said != why:
            self._zone_said = why
            log.warning("%s: %s; all-day items and task dates are computed in UTC until it is: set "
                        "users[].time_zone for this mailbox to choose one", self._address, why)
        return "UTC", convert.UTC_EWS

    # -- internals ------------------------------------------------------------------------------

    def _check_folder(self, folder: FolderKind) -> None:
        if folder not in FOLDER_CLASSES:
            raise errors.ExchangeError(
                f"{self._address}: folder {folder.value} is not part of a user mailbox",
                mailbox=self._address)

    async def _folder(self, folder: FolderKind) -> Any:
        self._check_folder(folder)
        if folder not in self._folders:
            self._folders[folder] = self._acc.distinguished_folder(self._address, FOLDER_CLASSES[folder])
        return self._folders[folder]

    def _ews_account(self) -> Any:
        return self._acc.ews_account(self._address)

    async def _days(self, folder: FolderKind) -> None:
        """Resolve the zone before items of ``folder`` are converted or written. Only then: a
        quiet cycle (nothing to read) costs no GetUserConfiguration; contacts have no days."""
        if folder in (FolderKind.CALENDAR, FolderKind.TASKS):
            await self._tz()

    def _days_tz(self) -> Any:
        """The zone of the mailbox's days (resolved by ``_days`` before any conversion)."""
        return self._zone[1] if self._zone is not None else convert.UTC_EWS

    async def _call(self, op: str, fn: Any, *, write: bool = False) -> Any:
        return await self._acc.call(self._address, op, fn, write=write)

    def _to_items(self, folder: FolderKind, results: Sequence[Any]) -> list[ExchangeItem]:
        """exchangelib results as items: gone ones dropped, unreadable ones ours kept (flagged
        ``unreadable``), any other unreadable one skipped with a log line."""
        out: list[ExchangeItem] = []
        for res in results:
            if isinstance(res, ErrorItemNotFound):
                continue  # deleted since it was listed: the next sync reports the deletion
            if isinstance(res, UnreadableItem | Exception):
                log.warning("%s: %s: skipping an item Exchange sent that cannot be read: %s",
                            self._address, folder.value, res)
                continue
            try:
                out.append(convert.item_from_ews(folder, res, self._days_tz()))
                continue
            except convert.Unmappable as exc:
                why = str(exc)
            except Exception as exc:  # never abort a folder for one odd item (exchangelib #877)
                why = f"{type(exc).__name__}: {exc}"
            ours = convert.unreadable_item(folder, res)
            if ours is not None:  # ours: kept, so that it is repaired and never created twice
                log.warning("%s: %s: item %s (%s) cannot be read: %s; kept as unreadable, the sync "
                            "overwrites it from the PSA", self._address, folder.value, ours.item_id,
                            ours.psa_key, why)
                out.append(ours)
            else:
                log.warning("%s: %s: skipping item %s: %s", self._address, folder.value,
                            getattr(res, "id", "?"), why)
        return out

    async def _get_items(self, folder: FolderKind, ids: Sequence[tuple[str, str | None]],
                         *, fields: list[FieldPath] | None = None) -> list[ExchangeItem]:
        """GetItem with only the mapped fields, in chunks; unreadable items as ``_to_items`` says."""
        if not ids:
            return []
        await self._days(folder)
        acc = self._ews_account()
        wanted = fields if fields is not None else convert.read_fields(folder)
        out: list[ExchangeItem] = []
        for chunk in _chunks(list(ids), GET_CHUNK):
            def get(chunk: Sequence[tuple[str, str | None]] = chunk) -> list[Any]:
                return answers_every_id([i for i, _ in chunk], list(
                    GetItemRobust(account=acc, chunk_size=GET_CHUNK).call(
                        items=[ItemId(id=i, changekey=None) for i, _ in chunk],
                        additional_fields=wanted, shape="IdOnly")))

            out.extend(self._to_items(folder, await self._call("GetItem", get)))
        return out

    # -- changes ------------------------------------------------------------------------------------

    async def changes(self, folder: FolderKind, sync_state: str | None, *,
                      known: dict[str, ExchangeItem] | None = None) -> AsyncIterator[ChangePage]:
        f = await self._folder(folder)
        acc = self._ews_account()
        state = sync_state
        while True:
            def page(state: str | None = state) -> tuple[list[Any], str, bool]:
                svc = SyncFolderItemsIds(account=acc)
                found = list(svc.call(folder=f, shape="IdOnly", additional_fields=None, sync_state=state,
                                      ignore=None, max_changes_returned=SYNC_PAGE, sync_scope=None))
                return found, svc.sync_state, bool(svc.includes_last_item_in_range)

            found, new_state, last = await self._call(f"SyncFolderItems {folder.value}", page)
            upsert_ids: dict[str, str | None] = {}
            deleted: list[str] = []
            for entry in found:
                if isinstance(entry, Exception):
                    log.warning("%s: %s: skipping a change Exchange sent that cannot be read: %s",
                                self._address, folder.value, entry)
                    continue
                change_type, item_id, change_key, _tag = entry
                if not item_id:
                    continue
                if change_type == SyncFolderItemsIds.DELETE:
                    upsert_ids.pop(item_id, None)
                    deleted.append(item_id)
                elif change_type in (SyncFolderItemsIds.CREATE, SyncFolderItemsIds.UPDATE):
                    upsert_ids[item_id] = change_key
            upserted = await self._read_unknown(folder, upsert_ids, known)
            if not new_state:
                raise errors.ExchangeError(
                    f"{self._address}: SyncFolderItems {folder.value}: the server sent no sync state",
                    mailbox=self._address)
            yield ChangePage(upserted=upserted, deleted=deleted, sync_state=new_state, last_page=last)
            if last:
                return
            state = new_state

    async def _read_unknown(self, folder: FolderKind, ids: dict[str, str | None],
                            known: dict[str, ExchangeItem] | None) -> list[ExchangeItem]:
        """The changed items: the caller's own (``known``, same change key) as given, the rest read."""
        held = [known[i] for i, ck in ids.items()
                if known and ck and i in known and known[i].change_key == ck]
        if not held:
            return await self._get_items(folder, list(ids.items()))
        skip = {i.item_id for i in held}
        return held + await self._get_items(folder, [(i, ck) for i, ck in ids.items() if i not in skip])

    # -- calendar view ------------------------------------------------------------------------------

    async def calendar_view(self, start: datetime, end: datetime, *,
                            details: bool = True) -> Sequence[ExchangeItem]:
        """Occurrences expanded; ``details=False`` skips the GetItem for bodies (one request per slice)."""
        f = await self._folder(FolderKind.CALENDAR)
        found: dict[str, ExchangeItem] = {}
        cursor = start
        while cursor < end:
            stop = min(end, cursor + VIEW_SLICE)
            for item in await self._view_slice(f, cursor, stop):
                found.setdefault(item.item_id, item)
            cursor = stop
        items = list(found.values())
        if details and items:
            full = {i.item_id: i for i in await self._get_items(
                FolderKind.CALENDAR, [(i.item_id, i.change_key) for i in items])}
            items = [self._merge_view(i, full.get(i.item_id)) for i in items]
        items.sort(key=lambda i: (i.payload.start, i.item_id))  # type: ignore[union-attr]
        return items

    @staticmethod
    def _merge_view(view: ExchangeItem, full: ExchangeItem | None) -> ExchangeItem:
        if full is None or full.unreadable:
            return view
        # keep the occurrence identity the view computed; take the body and attendees from GetItem
        if not isinstance(view.payload, Appointment) or not isinstance(full.payload, Appointment):
            return view
        return replace(view, payload=replace(view.payload, body=full.payload.body,
                                             attendees=full.payload.attendees))

    async def _view_slice(self, f: Any, start: datetime, end: datetime) -> list[ExchangeItem]:
        acc = self._ews_account()
        fields = [p for p in convert.read_fields(FolderKind.CALENDAR)
                  if p.field.name not in convert.VIEW_UNREADABLE]

        def view() -> list[Any]:
            cv = CalendarView(start=convert.to_ews(start), end=convert.to_ews(end), max_items=VIEW_MAX)
            return list(FindItemRobust(account=acc, page_size=VIEW_MAX).call(
                folders=[f], additional_fields=fields, restriction=None, order_fields=None,
                shape="IdOnly", query_string=None, depth="Shallow", calendar_view=cv,
                max_items=VIEW_MAX, offset=0))

        results = await self._call("FindItem CalendarView", view)
        await self._days(FolderKind.CALENDAR)
        if len(results) >= VIEW_MAX and end - start > timedelta(minutes=2):
            # MaxEntriesReturned truncated the answer: split the range and ask again
            middle = start + (end - start) / 2
            return await self._view_slice(f, start, middle) + await self._view_slice(f, middle, end)
        return self._to_items(FolderKind.CALENDAR, results)

    # -- adoption -----------------------------------------------------------------------------------

    async def find_by_psa_keys(self, folder: FolderKind, psa_keys: Sequence[str], *,
                               folder_hint: int | None = None) -> dict[str, ExchangeItem]:
        """Search by key (one FindItem per ``FIND_KEYS_CHUNK`` keys), or, when ``folder_hint`` (how
        many items carrying a PSA key the caller's mirror holds) says it is fewer requests, list
        every item carrying a PSA key (``FIND_PAGE`` per FindItem) and keep the wanted ones: a first
        export of 5,000 items costs one FindItem instead of 100."""
        f = await self._folder(folder)
        acc = self._ews_account()
        keys = list(dict.fromkeys(k for k in psa_keys if k))
        if not keys:
            return {}
        wanted = set(keys)
        hits: dict[str, tuple[str, str | None, Any]] = {}  # key -> (id, ck, created)
        item_cls = convert.ITEM_CLASSES[folder]
        created_field = FieldPath(field=item_cls.get_field_by_fieldname("datetime_created"))
        attr = convert.PSA_KEY_ATTR
        by_key_requests = -(-len(keys) // FIND_KEYS_CHUNK)
        scan = folder_hint is not None and -(-(folder_hint + len(keys)) // FIND_PAGE) < by_key_requests
        searches: list[tuple[Q, int | None]] = (
            [(Q(**{f"{attr}__exists": True}), FIND_PAGE)] if scan else
            [(Q(**{attr: c[0]}) if len(c) == 1 else Q(**{f"{attr}__in": list(c)}), None)
             for c in _chunks(keys, FIND_KEYS_CHUNK)])
        for q, page_size in searches:
            def find(q: Q = q, page_size: int | None = page_size) -> list[Any]:
                svc = FindItemRobust(account=acc, page_size=page_size) if page_size else FindItemRobust(
                    account=acc)
                return list(svc.call(
                    folders=[f], additional_fields=[convert.key_field(folder), created_field],
                    restriction=Restriction(q, folders=[f], applies_to=Restriction.ITEMS),
                    order_fields=None, shape="IdOnly", query_string=None, depth="Shallow",
                    calendar_view=None, max_items=None, offset=0))

            for res in await self._call(f"FindItem by PSA key {folder.value}", find):
                if isinstance(res, Exception):
                    log.warning("%s: %s: skipping an unreadable search hit: %s", self._address,
                                folder.value, res)
                    continue
                key = getattr(res, attr, None)
                if not isinstance(key, str) or key not in wanted:
                    continue
                created = res.datetime_created
                if key in hits:
                    log.warning("%s: %s: two items carry PSA key %s (%s, %s); using the older",
                                self._address, folder.value, key, hits[key][0], res.id)
                    older = hits[key][2]
                    if older is not None and (created is None or older <= created):
                        continue
                hits[key] = (res.id, res.changekey, created)
        items = await self._get_items(folder, [(i, ck) for i, ck, _ in hits.values()])
        by_id = {i.item_id: i for i in items}
        return {key: by_id[i] for key, (i, _ck, _c) in hits.items() if i in by_id}

    # -- writes -------------------------------------------------------------------------------------

    async def create(
        self, folder: FolderKind, items: Sequence[NewItem]
    ) -> Sequence[ExchangeItem | ItemError]:
        await self._folder(folder)
        await self._days(folder)
        out: list[ExchangeItem | ItemError] = []
        for chunk in _chunks(list(items), WRITE_CHUNK):
            out.extend(await self._create_chunk(folder, chunk, adopt_on_lost_reply=True))
        return out

    async def _create_chunk(self, folder: FolderKind, chunk: Sequence[NewItem], *,
                            adopt_on_lost_reply: bool) -> list[ExchangeItem | ItemError]:
        f = await self._folder(folder)
        acc = self._ews_account()
        category = self._acc.settings.category
        results: list[ExchangeItem | ItemError | None] = [None] * len(chunk)
        built: list[tuple[int, Any]] = []
        for n, new in enumerate(chunk):
            try:
                cats = (*new.categories, category) if category else tuple(new.categories)
                built.append((n, convert.new_ews_item(folder, new.payload, new.psa_key, cats, acc,
                                                      self._days_tz(), new.reminder)))
            except convert.Unmappable as exc:
                results[n] = ItemError(new.psa_key, exc.code, f"{self._address}: {exc}")
            except (ValueError, TypeError) as exc:
                results[n] = ItemError(new.psa_key, "invalid_payload", f"{self._address}: {exc}")
        if built:
            def create() -> list[Any]:
                return list(CreateItemHinted(account=acc, chunk_size=WRITE_CHUNK).call(
                    items=[b for _, b in built], folder=f, message_disposition="SaveOnly",
                    send_meeting_invitations="SendToNone"))

            try:
                answers = await self._call(f"CreateItem {folder.value}", create, write=True)
            except AmbiguousWrite as lost:
                if not adopt_on_lost_reply:
                    raise lost.error from None
                return await adopt_then_create(
                    f"{self._address}: {folder.value}: CreateItem", chunk, results,
                    find=lambda keys: self.find_by_psa_keys(folder, keys),
                    create_once=lambda rest: self._create_chunk(folder, rest, adopt_on_lost_reply=False),
                    logger=log)
            for (n, ews_item), answer in zip(built, answers, strict=False):
                results[n] = self._created(folder, chunk[n], ews_item, answer)
        return [r if r is not None else ItemError(chunk[n].psa_key, "no_answer",
                                                  f"{self._address}: Exchange sent no result for this item",
                                                  retryable=True)
                for n, r in enumerate(results)]

    def _created(
        self, folder: FolderKind, new: NewItem, ews_item: Any, answer: Any
    ) -> ExchangeItem | ItemError:
        if isinstance(answer, Exception):
            return _item_error(new.psa_key, answer)
        item_id = getattr(answer, "id", None)
        if not item_id:
            return ItemError(new.psa_key, "no_item_id", f"{self._address}: Exchange created no item id")
        ews_item._id = None
        ews_item.id, ews_item.changekey = item_id, answer.changekey
        try:
            # the payload as sent: CreateItem answers the id and change key only, and this adapter
            # does not re-read it (GetItem); the runner confirms it when the item is first synced
            item = convert.item_from_ews(folder, ews_item, self._days_tz())
        except convert.Unmappable:
            item = ExchangeItem(folder=folder, item_id=item_id, change_key=answer.changekey or "",
                                payload=new.payload, psa_key=new.psa_key)
        return replace(item, psa_key=new.psa_key, uid=None, exchange_key=None, last_modified=None)

    async def update(
        self, folder: FolderKind, updates: Sequence[ItemUpdate]
    ) -> Sequence[ExchangeItem | ItemError]:
        await self._folder(folder)
        await self._days(folder)
        out: list[ExchangeItem | ItemError] = []
        for chunk in _chunks(list(updates), WRITE_CHUNK):
            out.extend(await self._update_chunk(folder, chunk))
        return out

    async def _update_chunk(
        self, folder: FolderKind, chunk: Sequence[ItemUpdate]
    ) -> list[ExchangeItem | ItemError]:
        acc = self._ews_account()
        results: list[ExchangeItem | ItemError | None] = [None] * len(chunk)
        built: list[tuple[int, Any, list[str]]] = []
        for n, upd in enumerate(chunk):
            cats = upd.categories  # the item's whole category list, or None: leave them
            try:
                names = convert.update_fieldnames(upd.payload, upd.changed)
                if cats is not None:
                    names.append("categories")
                if upd.reminder is not None and folder in (FolderKind.CALENDAR, FolderKind.TASKS):
                    names.extend(convert.reminder_values(folder, upd.reminder))
                if not names:
                    results[n] = ItemError(upd.item_id, "nothing_to_update",
                                           f"{self._address}: no field to update", retryable=False)
                    continue
                built.append((n, convert.update_ews_item(folder, upd.item_id, upd.change_key, upd.payload,
                                                         names, acc, self._days_tz(), categories=cats,
                                                         reminder=upd.reminder), names))
            except convert.Unmappable as exc:
                results[n] = ItemError(upd.item_id, exc.code, f"{self._address}: {exc}")
            except (ValueError, TypeError) as exc:
                results[n] = ItemError(upd.item_id, "invalid_payload", f"{self._address}: {exc}")
        answers: list[Any] = []
        if built:
            def update() -> list[Any]:
                return list(UpdateItemOnly(account=acc, chunk_size=WRITE_CHUNK).call(
                    items=[(item, names) for _, item, names in built], conflict_resolution="AutoResolve",
                    message_disposition="SaveOnly", send_meeting_invitations_or_cancellations="SendToNone",
                    suppress_read_receipts=True))

            try:
                answers = await self._call(f"UpdateItem {folder.value}", update, write=True)
            except AmbiguousWrite:
                # SetItemField is idempotent: sending the same values again is safe
                answers = await self._call(f"UpdateItem {folder.value} (retry)", update)
        done: list[str] = []
        for (n, _item, _names), answer in zip(built, answers, strict=False):
            if isinstance(answer, Exception):
                results[n] = _item_error(chunk[n].item_id, answer)
            else:
                done.append(chunk[n].item_id)
        fresh = {i.item_id: i for i in await self._get_items(folder, [(i, None) for i in done])}
        for n, upd in enumerate(chunk):
            if results[n] is None:
                now = fresh.get(upd.item_id)
                if now is None:
                    results[n] = ItemError(upd.item_id, "ErrorItemNotFound",
                                           f"{self._address}: the item vanished after the update",
                                           retryable=True)
                elif now.unreadable:
                    results[n] = ItemError(upd.item_id, "unreadable_item",
                                           f"{self._address}: the item is still unreadable after the update",
                                           retryable=True)
                else:
                    results[n] = now
        return [r for r in results if r is not None]

    async def delete(self, folder: FolderKind, item_ids: Sequence[str]) -> Sequence[ItemError | None]:
        await self._folder(folder)
        acc = self._ews_account()
        out: list[ItemError | None] = []
        for chunk in _chunks(list(item_ids), WRITE_CHUNK):
            def delete(chunk: Sequence[str] = chunk) -> list[Any]:
                return list(DeleteItemHinted(account=acc, chunk_size=WRITE_CHUNK).call(
                    items=[ItemId(id=i) for i in chunk], delete_type="MoveToDeletedItems",
                    send_meeting_cancellations="SendToNone", affected_task_occurrences="AllOccurrences",
                    suppress_read_receipts=True))

            retried = False
            try:
                answers = await self._call(f"DeleteItem {folder.value}", delete, write=True)
            except AmbiguousWrite:
                retried = True  # deleting twice is harmless; "not found" then means done
                answers = await self._call(f"DeleteItem {folder.value} (retry)", delete)
            for item_id, answer in zip(chunk, list(answers) + [None] * (len(chunk) - len(answers)),
                                       strict=True):
                if isinstance(answer, ErrorItemNotFound) and retried:
                    out.append(None)
                elif isinstance(answer, Exception):
                    out.append(_item_error(item_id, answer))
                elif answer is None:
                    out.append(ItemError(item_id, "no_answer", f"{self._address}: no result", retryable=True))
                else:
                    out.append(None)
        return out


# --- the public contacts folder ---------------------------------------------------------------------

_LISTING_PREFIX = "exchanged-listing-v1:"


def encode_listing(listing: dict[str, str]) -> str:
    """The synthetic sync state of a public folder: every item id with its change key."""
    raw = json.dumps(sorted(listing.items()), separators=(",", ":")).encode()
    return _LISTING_PREFIX + base64.b64encode(zlib.compress(raw, 9)).decode()


def decode_listing(state: str) -> dict[str, str] | None:
    if not state.startswith(_LISTING_PREFIX):
        return None
    try:
        raw = zlib.decompress(base64.b64decode(state[len(_LISTING_PREFIX):], validate=True))
        return {str(k): str(v) for k, v in json.loads(raw)}
    except (ValueError, zlib.error, TypeError):
        return None


class EwsPublicContacts(EwsMailbox):
    """The public folder of all PSA contacts, reached through ``anchor``'s session.

    Public folders do not support SyncFolderItems: ``changes`` lists the folder with FindItem
    (IdOnly: ids and change keys) and compares with the listing encoded in the previous
    (synthetic) sync state; it returns everything as one page and GetItem-s only what is new or
    changed. The folder is found by name under the public folders root, created when missing.
    """

    def __init__(self, account: EwsAccount, anchor: str, folder_name: str) -> None:
        super().__init__(account, anchor, time_zone="UTC")  # contacts have no days
        self._name = folder_name
        self._public_folder: Any = None

    @property
    def mailbox(self) -> str:
        return f"public folder {self._name}"

    def _check_folder(self, folder: FolderKind) -> None:
        if folder is not FolderKind.PUBLIC_CONTACTS:
            raise errors.ExchangeError(
                f"public folder {self._name}: only the public_contacts folder is here "
                f"(asked: {folder.value})")

    async def _folder(self, folder: FolderKind) -> Any:
        self._check_folder(folder)
        if self._public_folder is None:
            acc = self._ews_account()
            self._public_folder = await self._call(f"find or create public folder {self._name}",
                                                   lambda: self._find_or_create(acc))
        return self._public_folder

    def _find_or_create(self, acc: Any) -> Any:
        from exchangelib.folders import PublicFoldersRoot

        root = PublicFoldersRoot(account=acc, _distinguished_id=DistinguishedFolderId(
            id=PublicFoldersRoot.DISTINGUISHED_FOLDER_ID))
        root = PublicFoldersRoot.get_distinguished(account=acc) if root.id is None else root
        for child in root.children:
            if child.name == self._name:
                return child
        try:
            folder = Contacts(parent=root, name=self._name)
            folder.save()
            log.info("public folder %s created", self._name)
            return folder
        except ErrorFolderNotFound:
            raise
        except Exception:
            root.clear_cache()
            for child in root.children:  # created concurrently by another node
                if child.name == self._name:
                    return child
            raise

    async def changes(self, folder: FolderKind, sync_state: str | None, *,
                      known: dict[str, ExchangeItem] | None = None) -> AsyncIterator[ChangePage]:
        f = await self._folder(folder)
        acc = self._ews_account()
        previous: dict[str, str] = {}
        if sync_state is not None:
            decoded = decode_listing(sync_state)
            if decoded is None:
                raise errors.SyncStateInvalid(
                    f"public folder {self._name}: the stored sync state is not a listing of this adapter",
                    mailbox=self.mailbox)
            previous = decoded

        def listing() -> list[Any]:
            return list(FindItemRobust(account=acc, page_size=1000).call(
                folders=[f], additional_fields=None, restriction=None, order_fields=None, shape="IdOnly",
                query_string=None, depth="Shallow", calendar_view=None, max_items=None, offset=0))

        now: dict[str, str] = {}
        for res in await self._call(f"FindItem {self._name}", listing):
            if isinstance(res, Exception):
                log.warning("public folder %s: skipping an unreadable item: %s", self._name, res)
                continue
            item_id, change_key = res if isinstance(res, tuple) else (res.id, res.changekey)
            if item_id:
                now[item_id] = change_key or ""
        changed = [(i, ck) for i, ck in now.items() if previous.get(i) != ck]
        deleted = [i for i in previous if i not in now]
        upserted = await self._read_unknown(FolderKind.PUBLIC_CONTACTS, dict(changed), known)
        yield ChangePage(upserted=upserted, deleted=deleted, sync_state=encode_listing(now), last_page=True)


__all__ = ["EwsMailbox", "EwsPublicContacts", "Folder", "decode_listing", "encode_listing"]
