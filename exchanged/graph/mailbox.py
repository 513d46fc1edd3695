"""One mailbox over Microsoft Graph (``ports.ExchangeMailbox``), and the account that hands them out.

Requests per operation (docs/GRAPH.md has the whole picture; /work/notes/graph-contract.md the
exact shapes):

* ``changes``: one GET per delta page (``calendarView/delta`` over the sync range for the calendar,
  ``contacts/delta``, ``todo/lists/{id}/tasks/delta``); the PSA key of an item not seen before by
  this process is read in ``$batch`` GETs of 20 (delta answers carry no extended properties), or,
  when many are new, by one listing of every keyed item. A quiet cycle: one GET per folder.
* ``find_by_psa_keys``: per-key ``$filter`` GETs in ``$batch``es of 20, or one listing of every
  keyed item (``ep/value ne null``) when the caller's count says it is fewer requests.
* ``create`` / ``update`` / ``delete``: POST / PATCH / DELETE in ``$batch``es of 20.

The calendar's delta range is ``[now - past_days - 1 day, now + max(recurring_future_days, 730) +
60 days]``, fixed when the delta starts; once ``now`` has moved 7 days past its start (or the range
ends too soon) the adapter refuses the state (``SyncStateInvalid``) and the runner reads the
calendar afresh (never as deletions). Occurrences come expanded; series masters are not listed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote

from exchanged import errors
from exchanged.exchange.account import AmbiguousWrite, adopt_then_create
from exchanged.graph import convert
from exchanged.graph.client import (
    BATCH_MAX,
    MAILBOX_GONE,
    PREFER_TEXT_BODY,
    PREFER_UTC,
    Answer,
    GraphClient,
    GraphSettings,
    TokenSource,
    permission_for,
    token_roles,
    user_path,
)
from exchanged.model import ExchangeItem, FolderKind, ItemError
from exchanged.ports import ChangePage, CheckResult, ExchangeAccountBase, ItemUpdate, NewItem

log = logging.getLogger("exchanged.graph")

PAGE = 500  # Prefer: odata.maxpagesize for delta and listings
RANGE_SLIDE = timedelta(days=7)  # how far "now" may move before the calendar's delta starts over
RANGE_MIN_AHEAD = timedelta(days=730)  # PSA appointments are rarely planned further ahead
RANGE_SLACK = timedelta(days=60)
SCAN_THRESHOLD = 2 * BATCH_MAX  # more unknown items than this: list every keyed item instead
NEEDED_ROLES = ("Calendars.ReadWrite", "Contacts.ReadWrite", "Tasks.ReadWrite.All", "MailboxSettings.Read")


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _q(value: str) -> str:
    return quote(value, safe="")


def rest_id(item_id: str) -> str:
    """An item id as Graph writes it: EWS ids are base64 with + and /, REST ids base64url."""
    return item_id.replace("+", "-").replace("/", "_")


def _link_write(
    collection: str, item_id: str, link_id: str | None, link: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    """The $batch part that writes a task's linked resource: PATCH its externalId when the link's id
    is known, else POST the whole link."""
    base = f"{collection}/{_q(item_id)}/linkedResources"
    if link_id:
        return {
            "method": "PATCH",
            "url": f"{base}/{_q(link_id)}",
            "headers": headers,
            "body": {"externalId": link["externalId"]},
        }
    return {"method": "POST", "url": base, "headers": headers, "body": link}


def _odata_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class GraphMailbox:
    def __init__(self, account: GraphAccount, address: str, time_zone: str | None = None) -> None:
        self._acc = account
        self._address = address
        self.override = time_zone  # users[].time_zone (IANA, validated by the config), or None
        self._user = user_path(address)
        self._tz: tzinfo | None = None
        self._tz_name = "UTC"
        self._list_id: str | None = None
        # item id -> our PSA key (None: read, carries none). An item's key never changes: set at
        # create, so a process that has seen an item needs not read its properties again.
        self._keys: dict[str, str | None] = {}
        # tasks: the id of the exact-values link and the values last read or written, by task id
        self._exact_ids: dict[str, str] = {}
        self._exact_values: dict[str, str] = {}
        # event/task id -> the reminder code we last wrote (None: none); task id -> its link's id
        self._reminders: dict[str, str | None] = {}
        self._reminder_ids: dict[str, str] = {}

    @property
    def mailbox(self) -> str:
        return self._address

    @property
    def client(self) -> GraphClient:
        return self._acc.client

    # -- helpers ---------------------------------------------------------------------------------------

    async def _call(self, op: str, method: str, url: str, **kw: Any) -> Answer:
        return await self.client.call(self._address, op, method, url, **kw)

    async def time_zone(self) -> str:
        """The port's zone of this mailbox's days: users[].time_zone, else mailboxSettings' (IANA)."""
        tz, name = await self.zone()
        return getattr(tz, "key", None) or ("UTC" if tz is UTC else name)

    async def zone(self) -> tuple[tzinfo, str]:
        """The mailbox's time zone: users[].time_zone, else mailboxSettings, read once."""
        if self.override and self._tz_name != self.override:
            self._tz_name, self._tz = self.override, convert.mailbox_zone(self.override)
        if self._tz is None:
            answer = await self._call("mailboxSettings", "GET", f"{self._user}/mailboxSettings/timeZone")
            name = answer.doc.get("value")
            self._tz_name = name if isinstance(name, str) and name else "UTC"
            self._tz = convert.mailbox_zone(self._tz_name)
        return self._tz, self._tz_name

    async def _task_list(self) -> str:
        if self._list_id is None:
            name = self._acc.settings.task_list_name
            lists = await self.client.pages(self._address, "To Do lists", f"{self._user}/todo/lists")
            found = [x for x in lists if x.get("displayName") == name and isinstance(x.get("id"), str)]
            if found:
                self._list_id = str(found[0]["id"])
            else:
                answer = await self._call(
                    "create To Do list", "POST", f"{self._user}/todo/lists", body={"displayName": name}
                )
                self._list_id = str(answer.doc["id"])
                log.info("%s: To Do list %r created", self._address, name)
        return self._list_id

    async def _collection(self, folder: FolderKind) -> str:
        if folder is FolderKind.CALENDAR:
            return f"{self._user}/events"
        if folder is FolderKind.CONTACTS:
            return f"{self._user}/contacts"
        if folder is FolderKind.TASKS:
            return f"{self._user}/todo/lists/{_q(await self._task_list())}/tasks"
        raise errors.ExchangeError(
            f"{self._address}: the {folder.value} folder needs EWS (Graph has no public folders)",
            mailbox=self._address,
        )

    def _headers(self, folder: FolderKind, page: bool = False) -> dict[str, str]:
        prefer = [PREFER_UTC, PREFER_TEXT_BODY] if folder is FolderKind.CALENDAR else []
        if page:
            prefer.append(f"odata.maxpagesize={PAGE}")
        return {"Prefer": ", ".join(prefer)} if prefer else {}

    def _expand(self, folder: FolderKind) -> str:
        return (
            "$expand=linkedResources" if folder is FolderKind.TASKS else f"$expand={_q(convert.EXPAND_KEY)}"
        )

    def _item(self, folder: FolderKind, doc: dict[str, Any], tz: tzinfo) -> ExchangeItem | None:
        item_id = doc.get("id")
        known = self._keys.get(item_id) if isinstance(item_id, str) else None
        try:
            item = convert.item_from_graph(folder, doc, tz, psa_key=known)
        except convert.Unmappable as exc:
            odd = convert.unreadable_item(folder, doc, known)
            if odd is None:
                log.warning(
                    "%s: %s: skipping an item it cannot read (%s): %s",
                    self._address,
                    folder.value,
                    item_id,
                    exc,
                )
            return odd
        if item.psa_key is not None or "singleValueExtendedProperties" in doc or "linkedResources" in doc:
            self._keys[item.item_id] = item.psa_key
        if folder is FolderKind.TASKS and "linkedResources" in doc:
            lid, exact = convert.exact_link_id(doc), convert.linked(doc, convert.EXACT_APP)
            if lid:
                self._exact_ids[item.item_id] = lid
            if exact:
                self._exact_values[item.item_id] = exact
            rid = convert.link_id(doc, convert.REMINDER_APP)
            if rid:
                self._reminder_ids[item.item_id] = rid
            self._reminders[item.item_id] = item.reminder_written
        elif folder is FolderKind.CALENDAR and "singleValueExtendedProperties" in doc:
            exact = convert.extended(doc, convert.EXACT_PROP)
            if exact:
                self._exact_values[item.item_id] = exact
            self._reminders[item.item_id] = item.reminder_written
        elif item.item_id in self._exact_values and folder in (FolderKind.CALENDAR, FolderKind.TASKS):
            # a delta answer: no properties, no links; what was last read or written still holds
            # wherever the item still has the values Exchange rounded it to (exact_merge)
            item = self._exact(item, self._exact_values[item.item_id], tz)
        if (
            folder in (FolderKind.CALENDAR, FolderKind.TASKS)
            and not convert._carries_ours(folder, doc)
            and item.item_id in self._reminders
        ):  # a delta answer or a write's: the reminder with what we last wrote (read or written)
            item = replace(
                item,
                reminder=convert.reminder_of(folder, doc),
                reminder_written=self._reminders[item.item_id],
            )
        return item

    def _exact(self, item: ExchangeItem, exact: str | None, tz: tzinfo) -> ExchangeItem:
        zone = tz if item.folder is FolderKind.CALENDAR else UTC
        return replace(item, payload=convert.exact_merge(item.payload, exact, zone))

    # -- reading ---------------------------------------------------------------------------------------

    def _range(self) -> tuple[datetime, datetime]:
        s = self._acc.settings
        now = self._acc.now()
        start = (now - timedelta(days=s.past_days + 1)).replace(hour=0, minute=0, second=0, microsecond=0)
        ahead = max(timedelta(days=s.recurring_future_days), RANGE_MIN_AHEAD) + RANGE_SLACK
        return start, start + ahead + timedelta(days=s.past_days + 1)

    def _delta_url(self, folder: FolderKind, collection: str) -> tuple[str, dict[str, Any]]:
        if folder is FolderKind.CALENDAR:
            start, end = self._range()
            return (
                f"{self._user}/calendarView/delta?startDateTime={_iso(start)}&endDateTime={_iso(end)}",
                {"start": _iso(start), "end": _iso(end)},
            )
        return f"{collection}/delta", {}

    def _state_usable(self, folder: FolderKind, doc: dict[str, Any]) -> bool:
        if folder is not FolderKind.CALENDAR:
            return True
        try:
            start = datetime.fromisoformat(str(doc["start"]).replace("Z", "+00:00"))
            end = datetime.fromisoformat(str(doc["end"]).replace("Z", "+00:00"))
        except (KeyError, ValueError):
            return False
        want_start, want_end = self._range()
        return want_start - start < RANGE_SLIDE and end - want_end > -RANGE_SLACK

    async def changes(
        self, folder: FolderKind, sync_state: str | None, *, known: dict[str, ExchangeItem] | None = None
    ) -> AsyncIterator[ChangePage]:
        """Delta pages; ``known`` items reported under the change key the caller holds are returned
        as given (a settled export reads nothing more)."""
        collection = await self._collection(folder)
        tz, _ = await self.zone() if folder is FolderKind.CALENDAR else (UTC, "UTC")
        if sync_state is None:
            url, extra = self._delta_url(folder, collection)
        else:
            doc = convert.read_state(sync_state)
            if doc is None:
                raise errors.SyncStateInvalid(
                    f"{self._address}: {folder.value}: the stored sync state is not a Graph delta link "
                    "(was the mailbox synced over EWS?)",
                    mailbox=self._address,
                )
            if not self._state_usable(folder, doc):
                raise errors.SyncStateInvalid(
                    f"{self._address}: calendar: the sync window moved; reading the calendar afresh",
                    mailbox=self._address,
                )
            url = self.client.relative(doc["delta"])
            extra = {k: v for k, v in doc.items() if k not in ("v", "delta")}
        while True:
            answer = await self._call(
                f"{folder.value} delta", "GET", url, headers=self._headers(folder, page=True)
            )
            docs = [v for v in answer.doc.get("value") or () if isinstance(v, dict)]
            deleted = [str(d["id"]) for d in docs if "@removed" in d and isinstance(d.get("id"), str)]
            live = [d for d in docs if "@removed" not in d]
            held = {
                str(d["id"]): known[d["id"]]
                for d in live
                if known
                and d.get("id") in known
                and d.get("changeKey")
                and known[d["id"]].change_key == d.get("changeKey")
            }
            for item in held.values():
                self._keys.setdefault(item.item_id, item.psa_key)
            await self._learn_keys(folder, collection, [d for d in live if d.get("id") not in held])
            upserted = [
                i
                for i in (held.get(str(d.get("id"))) or self._item(folder, d, tz) for d in live)
                if i is not None
            ]
            next_link = answer.doc.get("@odata.nextLink")
            delta_link = answer.doc.get("@odata.deltaLink")
            link = next_link if isinstance(next_link, str) else delta_link
            if not isinstance(link, str):
                raise errors.ExchangeError(
                    f"{self._address}: {folder.value} delta: the answer has neither "
                    "a next link nor a delta link",
                    mailbox=self._address,
                )
            for item_id in deleted:
                self._keys.pop(item_id, None)
            last = not isinstance(next_link, str)
            yield ChangePage(
                upserted=upserted,
                deleted=deleted,
                sync_state=convert.delta_state(link, extra),
                last_page=last,
            )
            if last:
                return
            url = self.client.relative(link)

    async def _learn_keys(self, folder: FolderKind, collection: str, docs: list[dict[str, Any]]) -> None:
        """Read the PSA key of items this process has not seen (delta answers carry no extended
        properties). Occurrences never carry one (the daemon writes single items only)."""
        unknown = [
            d
            for d in docs
            if isinstance(d.get("id"), str)
            and d["id"] not in self._keys
            and convert.psa_key_of(folder, d) is None
            and d.get("type") not in ("occurrence", "exception", "seriesMaster")
        ]
        if not unknown:
            return
        if len(unknown) > SCAN_THRESHOLD:
            keyed = await self._keyed(folder, collection)
            for d in unknown:
                self._keys[d["id"]] = None
                found = keyed.get(d["id"])
                if found is not None:  # its properties / links (key and exact values) with it
                    d.update(
                        {
                            k: v
                            for k, v in found[1].items()
                            if k in ("singleValueExtendedProperties", "linkedResources")
                        }
                    )
            for item_id, (key, _doc) in keyed.items():
                self._keys[item_id] = key
            return
        for chunk in _chunks(unknown, BATCH_MAX):
            reqs = [
                {
                    "method": "GET",
                    "url": f"{collection}/{_q(d['id'])}?{self._expand(folder)}",
                    "headers": self._headers(folder),
                }
                for d in chunk
            ]
            for d, answer in zip(
                chunk, await self.client.batch(self._address, f"{folder.value} keys", reqs), strict=True
            ):
                if answer.status == 200:
                    self._keys[d["id"]] = convert.psa_key_of(folder, answer.doc)
                    d.update(answer.doc)
                elif answer.status != 404:
                    raise self.client.error(self._address, f"{folder.value} keys", collection, answer)

    async def _keyed(self, folder: FolderKind, collection: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """Every item of the folder carrying a PSA key: item id -> (key, resource)."""
        if folder is FolderKind.TASKS:
            url = f"{collection}?$expand=linkedResources&$top={PAGE}"
        else:
            flt = (
                f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_str(convert.PSA_KEY_PROP)} "
                "and ep/value ne null)"
            )
            url = f"{collection}?$filter={_q(flt)}&{self._expand(folder)}&$top={PAGE}"
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for doc in await self.client.pages(
            self._address, f"{folder.value} keyed items", url, headers=self._headers(folder, page=True)
        ):
            key = convert.psa_key_of(folder, doc)
            if key and isinstance(doc.get("id"), str):
                out[doc["id"]] = (key, doc)
        return out

    async def calendar_view(self, start: datetime, end: datetime) -> Sequence[ExchangeItem]:
        tz, _ = await self.zone()
        url = (
            f"{self._user}/calendarView?startDateTime={_iso(start)}&endDateTime={_iso(end)}"
            f"&$top={PAGE}&{self._expand(FolderKind.CALENDAR)}"
        )
        docs = await self.client.pages(
            self._address, "calendarView", url, headers=self._headers(FolderKind.CALENDAR, page=True)
        )
        return [i for i in (self._item(FolderKind.CALENDAR, d, tz) for d in docs) if i is not None]

    async def find_by_psa_keys(
        self, folder: FolderKind, psa_keys: Sequence[str], *, folder_hint: int | None = None
    ) -> dict[str, ExchangeItem]:
        keys = list(dict.fromkeys(k for k in psa_keys if k))
        if not keys:
            return {}
        collection = await self._collection(folder)
        tz, _ = await self.zone() if folder is FolderKind.CALENDAR else (UTC, "UTC")
        wanted = set(keys)
        by_key_requests = -(-len(keys) // BATCH_MAX)
        scan = folder is FolderKind.TASKS or (
            folder_hint is not None and -(-(folder_hint + len(keys)) // PAGE) < by_key_requests
        )
        docs: list[dict[str, Any]] = []
        if scan:
            docs = [doc for _key, doc in (await self._keyed(folder, collection)).values()]
        else:
            for chunk in _chunks(keys, BATCH_MAX):
                reqs = []
                for key in chunk:
                    flt = (
                        f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_str(convert.PSA_KEY_PROP)} "
                        f"and ep/value eq {_odata_str(key)})"
                    )
                    reqs.append(
                        {
                            "method": "GET",
                            "url": f"{collection}?$filter={_q(flt)}&{self._expand(folder)}",
                            "headers": self._headers(folder),
                        }
                    )
                for answer in await self.client.batch(self._address, f"{folder.value} find by key", reqs):
                    if answer.status != 200:
                        raise self.client.error(
                            self._address, f"{folder.value} find by key", collection, answer
                        )
                    docs.extend(v for v in answer.doc.get("value") or () if isinstance(v, dict))
        hits: dict[str, tuple[ExchangeItem, str]] = {}
        for doc in docs:
            key = convert.psa_key_of(folder, doc)
            if key not in wanted or not key:
                continue
            item = self._item(folder, doc, tz)
            if item is None:
                continue
            created = str(doc.get("createdDateTime") or "")
            if key in hits:
                log.warning(
                    "%s: %s: two items carry PSA key %s (%s, %s); using the older",
                    self._address,
                    folder.value,
                    key,
                    hits[key][0].item_id,
                    item.item_id,
                )
                if hits[key][1] <= created:
                    continue
            hits[key] = (item, created)
        return {k: v[0] for k, v in hits.items()}

    # -- writing ---------------------------------------------------------------------------------------

    def _item_error(self, key: str, answer: Answer) -> ItemError:
        retryable = answer.status in (409, 412, 424, 429, 503, 504, 599) or answer.status >= 500
        code = answer.code or f"HTTP {answer.status}"
        return ItemError(key, code, f"{self._address}: {answer.message or code}", retryable=retryable)

    async def create(
        self, folder: FolderKind, items: Sequence[NewItem]
    ) -> Sequence[ExchangeItem | ItemError]:
        out: list[ExchangeItem | ItemError] = []
        for chunk in _chunks(list(items), BATCH_MAX):
            out.extend(await self._create_chunk(folder, chunk, adopt_on_lost_reply=True))
        if folder is FolderKind.TASKS:
            await self._remove_replaced(
                [
                    i.replaces
                    for i, r in zip(items, out, strict=False)
                    if i.replaces and isinstance(r, ExchangeItem)
                ]
            )
        return out

    async def _remove_replaced(self, item_ids: Sequence[str]) -> None:
        """A to-do re-created in our list whose previous task the mapping named: that task is in
        no list this adapter syncs (EWS kept to-dos in the default Tasks folder, whose tasks' keys
        the To Do API cannot read), so it is removed there once: never two copies after a move from
        EWS to Graph. A task already gone (404) is fine; a failure is logged, never fatal."""
        if not item_ids:
            return
        lists = await self.client.pages(self._address, "To Do lists", f"{self._user}/todo/lists")
        default = [
            x["id"]
            for x in lists
            if x.get("wellknownListName") == "defaultList" and isinstance(x.get("id"), str)
        ]
        if not default or default[0] == self._list_id:
            return
        base = f"{self._user}/todo/lists/{_q(default[0])}/tasks"
        for chunk in _chunks([rest_id(i) for i in item_ids], BATCH_MAX):
            reqs = [{"method": "DELETE", "url": f"{base}/{_q(i)}"} for i in chunk]
            try:
                answers = await self.client.batch(self._address, "remove replaced tasks", reqs)
            except (errors.ExchangedError, AmbiguousWrite) as exc:
                log.warning(
                    "%s: could not remove %d replaced task(s) from the default list: %s",
                    self._address,
                    len(chunk),
                    exc,
                )
                continue
            gone = sum(1 for a in answers if 200 <= a.status < 300)
            if gone:
                log.info(
                    "%s: removed %d task(s) the to-dos had before (default Tasks list)", self._address, gone
                )
            for item_id, answer in zip(chunk, answers, strict=True):
                if answer.status >= 300 and answer.status != 404:
                    log.warning(
                        "%s: could not remove the replaced task %s: HTTP %d %s",
                        self._address,
                        item_id,
                        answer.status,
                        answer.code,
                    )

    async def _create_chunk(
        self, folder: FolderKind, chunk: Sequence[NewItem], *, adopt_on_lost_reply: bool
    ) -> list[ExchangeItem | ItemError]:
        collection = await self._collection(folder)
        tz, tz_name = await self.zone() if folder is FolderKind.CALENDAR else (UTC, "UTC")
        category = self._acc.settings.category
        results: list[ExchangeItem | ItemError | None] = [None] * len(chunk)
        built: list[tuple[int, dict[str, Any]]] = []
        for n, new in enumerate(chunk):
            cats = (*new.categories, category) if category else tuple(new.categories)
            try:
                built.append(
                    (n, convert.new_body(folder, new.payload, new.psa_key, cats, tz, tz_name, new.reminder))
                )
            except convert.Unmappable as exc:
                results[n] = ItemError(new.psa_key, exc.code, f"{self._address}: {exc}")
            except (ValueError, TypeError) as exc:
                results[n] = ItemError(new.psa_key, "invalid_payload", f"{self._address}: {exc}")
        if built:
            reqs = [
                {
                    "method": "POST",
                    "url": collection,
                    "headers": {"Content-Type": "application/json", **self._headers(folder)},
                    "body": body,
                }
                for _, body in built
            ]
            try:
                answers = await self.client.batch(self._address, f"create {folder.value}", reqs, write=True)
            except AmbiguousWrite as lost:
                if not adopt_on_lost_reply:
                    raise lost.error from None
                return await adopt_then_create(
                    f"{self._address}: {folder.value}: $batch", chunk, results,
                    find=lambda keys: self.find_by_psa_keys(folder, keys),
                    create_once=lambda rest: self._create_chunk(folder, rest, adopt_on_lost_reply=False),
                    logger=log)
            for (n, _body), answer in zip(built, answers, strict=True):
                new = chunk[n]
                if answer.status != 201 and answer.status != 200:
                    results[n] = self._item_error(new.psa_key, answer)
                    continue
                self._keys[str(answer.doc.get("id"))] = new.psa_key
                if folder in (FolderKind.CALENDAR, FolderKind.TASKS):
                    self._reminders[str(answer.doc.get("id"))] = new.reminder
                exact = convert.exact_values(new.payload)
                if exact is not None and folder in (FolderKind.CALENDAR, FolderKind.TASKS):
                    self._exact_values[str(answer.doc.get("id"))] = exact
                item = self._item(folder, answer.doc, tz)
                if item is None:
                    results[n] = ItemError(
                        new.psa_key, "no_item_id", f"{self._address}: Graph created no item id"
                    )
                    continue
                results[n] = replace(
                    item, psa_key=new.psa_key, uid=None, exchange_key=None, last_modified=None
                )
        return [
            r
            if r is not None
            else ItemError(
                chunk[n].psa_key,
                "no_answer",
                f"{self._address}: Graph sent no result for this item",
                retryable=True,
            )
            for n, r in enumerate(results)
        ]

    async def update(
        self, folder: FolderKind, updates: Sequence[ItemUpdate]
    ) -> Sequence[ExchangeItem | ItemError]:
        collection = await self._collection(folder)
        tz, tz_name = await self.zone() if folder is FolderKind.CALENDAR else (UTC, "UTC")
        out: list[ExchangeItem | ItemError] = []
        # a task's exact values go with it (a second part of the same $batch): ten tasks per batch
        # (and its reminder record, a third part)
        size = BATCH_MAX // 3 if folder is FolderKind.TASKS else BATCH_MAX
        for chunk in _chunks(list(updates), size):
            out.extend(await self._update_chunk(folder, collection, chunk, tz, tz_name))
        return out

    async def _update_chunk(
        self, folder: FolderKind, collection: str, chunk: Sequence[ItemUpdate], tz: tzinfo, tz_name: str
    ) -> list[ExchangeItem | ItemError]:
        results: list[ExchangeItem | ItemError | None] = [None] * len(chunk)
        built: list[tuple[int, dict[str, Any]]] = []
        for n, upd in enumerate(chunk):
            try:
                body = convert.update_body(
                    folder, upd.payload, upd.changed, upd.categories, tz, tz_name, upd.reminder
                )
            except convert.Unmappable as exc:
                results[n] = ItemError(upd.item_id, exc.code, f"{self._address}: {exc}")
                continue
            except (ValueError, TypeError) as exc:
                results[n] = ItemError(upd.item_id, "invalid_payload", f"{self._address}: {exc}")
                continue
            if not body:
                results[n] = ItemError(
                    upd.item_id, "nothing_to_update", f"{self._address}: no field to update"
                )
                continue
            built.append((n, body))
        if not built:
            return [r for r in results if r is not None]
        headers = {"Content-Type": "application/json", **self._headers(folder)}
        reqs: list[dict[str, Any]] = []
        owner: list[tuple[int, bool]] = []  # the update a part belongs to; True: a task's exact values
        exact_sent: dict[int, str] = {}
        if folder is FolderKind.TASKS:
            await self._learn_exact_links(
                collection,
                [
                    chunk[n].item_id
                    for n, _ in built
                    if chunk[n].item_id not in self._exact_ids
                    or (chunk[n].reminder is not None and chunk[n].item_id not in self._reminder_ids)
                ],
            )
        for n, body in built:
            upd = chunk[n]
            reqs.append(
                {
                    "method": "PATCH",
                    "url": f"{collection}/{_q(upd.item_id)}",
                    "headers": headers,
                    "body": body,
                }
            )
            owner.append((n, False))
            if folder is FolderKind.CALENDAR and {"start", "end", "is_all_day"} & set(upd.changed):
                exact_sent[n] = convert.exact_values(upd.payload) or ""
            link = convert.exact_link(upd.payload) if folder is FolderKind.TASKS else None
            if link is not None and {"start", "due", "completed"} & set(upd.changed):
                exact_sent[n] = link["externalId"]
                reqs.append(
                    _link_write(collection, upd.item_id, self._exact_ids.get(upd.item_id), link, headers)
                )
                owner.append((n, True))
            if folder is FolderKind.TASKS and upd.reminder is not None:
                reqs.append(
                    _link_write(
                        collection,
                        upd.item_id,
                        self._reminder_ids.get(upd.item_id),
                        convert.reminder_link(upd.reminder),
                        headers,
                    )
                )
                owner.append((n, True))
        try:
            answers = await self.client.batch(self._address, f"update {folder.value}", reqs, write=True)
        except AmbiguousWrite:  # a PATCH sets values: sending it again is safe (a lost POST of exact
            # values may leave a second link; the first one found is read)
            answers = await self.client.batch(self._address, f"update {folder.value} (retry)", reqs)
        unknown: list[int] = []
        for (n, is_link), answer in zip(owner, answers, strict=True):
            if is_link:
                if answer.status == 201 and isinstance(answer.doc.get("id"), str):
                    ids = (
                        self._reminder_ids
                        if answer.doc.get("applicationName") == convert.REMINDER_APP
                        else self._exact_ids
                    )
                    ids[chunk[n].item_id] = str(answer.doc["id"])
                continue
            if answer.status != 200:
                if answer.status == 404:
                    results[n] = ItemError(
                        chunk[n].item_id,
                        "ErrorItemNotFound",
                        f"{self._address}: the item is gone",
                        retryable=False,
                    )
                else:
                    results[n] = self._item_error(chunk[n].item_id, answer)
                continue
            if n in exact_sent:  # what this PATCH wrote: read back through it
                self._exact_values[chunk[n].item_id] = exact_sent[n]
            if chunk[n].reminder is not None and folder in (FolderKind.CALENDAR, FolderKind.TASKS):
                self._reminders[chunk[n].item_id] = chunk[n].reminder
            item = self._item(folder, answer.doc, tz)
            if item is None or item.unreadable:
                results[n] = ItemError(
                    chunk[n].item_id,
                    "unreadable_item",
                    f"{self._address}: the item is unreadable after the update",
                    retryable=True,
                )
                continue
            if item.psa_key is None and item.item_id not in self._keys:
                unknown.append(n)
            results[n] = item
        if unknown:  # the key of an item this process has not read yet
            await self._learn_keys(folder, collection, [{"id": chunk[n].item_id} for n in unknown])
            for n in unknown:
                r = results[n]
                if isinstance(r, ExchangeItem):
                    results[n] = replace(r, psa_key=self._keys.get(r.item_id))
        return [
            r if r is not None else ItemError(chunk[n].item_id, "no_answer", "no result", retryable=True)
            for n, r in enumerate(results)
        ]

    async def _learn_exact_links(self, collection: str, item_ids: Sequence[str]) -> None:
        """The ids of tasks' exact-values links (to PATCH them), read with the tasks."""
        for chunk in _chunks(list(item_ids), BATCH_MAX):
            reqs = [{"method": "GET", "url": f"{collection}/{_q(i)}?$expand=linkedResources"} for i in chunk]
            for answer in await self.client.batch(self._address, "tasks exact values", reqs):
                if answer.status == 200:
                    self._item(FolderKind.TASKS, answer.doc, UTC)

    async def delete(self, folder: FolderKind, item_ids: Sequence[str]) -> Sequence[ItemError | None]:
        collection = await self._collection(folder)
        out: list[ItemError | None] = []
        for chunk in _chunks(list(item_ids), BATCH_MAX):
            reqs = [{"method": "DELETE", "url": f"{collection}/{_q(i)}"} for i in chunk]
            retried = False
            try:
                answers = await self.client.batch(self._address, f"delete {folder.value}", reqs, write=True)
            except AmbiguousWrite:
                retried = True  # deleting twice is harmless; "not found" then means done
                answers = await self.client.batch(self._address, f"delete {folder.value} (retry)", reqs)
            for item_id, answer in zip(chunk, answers, strict=True):
                if 200 <= answer.status < 300 or (answer.status == 404 and retried):
                    self._keys.pop(item_id, None)
                    out.append(None)
                elif answer.status == 404:
                    out.append(ItemError(item_id, "ErrorItemNotFound", f"{self._address}: the item is gone"))
                else:
                    out.append(self._item_error(item_id, answer))
        return out


class GraphAccount(ExchangeAccountBase):
    """``ports.ExchangeAccount`` over Graph: one token source and HTTP client for every mailbox."""

    def __init__(
        self,
        settings: GraphSettings,
        *,
        transport: Any = None,
        tokens: TokenSource | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens or TokenSource(settings)
        self.client = GraphClient(settings, self.tokens, transport=transport)
        self.now = now or (lambda: datetime.now(UTC))
        self._mailboxes: dict[str, GraphMailbox] = {}

    def mailbox(self, address: str, *, time_zone: str | None = None) -> GraphMailbox:
        key = address.lower()
        if key not in self._mailboxes:
            self._mailboxes[key] = GraphMailbox(self, address, time_zone)
        self._mailboxes[key].override = time_zone
        return self._mailboxes[key]

    def public_contacts(self) -> GraphMailbox:
        raise errors.ExchangeError(
            "the public contacts folder needs EWS: Graph has no public folders",
            hint="switch sync.public_folder_all_contacts off, or use EWS (server.use_ms_graph: false)",
        )

    async def check(self, mailboxes: Sequence[str]) -> list[CheckResult]:
        """check-config --connect: a token, each permission, each mailbox and its time zone.

        A permission is granted when the token's ``roles`` name it (admin consent in Entra ID), or,
        as with Exchange Online's RBAC for Applications (which the token does not show), when every
        mailbox answered the requests that need it."""
        s = self.settings
        try:
            token = await self.tokens.token()
        except errors.ExchangedError as exc:
            return [CheckResult("login", False, errors.present(exc).line())]
        results = [
            CheckResult(
                "login", True, f"token for app {s.client_id} from {s.login_url} (tenant {s.tenant_id})"
            )
        ]
        roles = token_roles(token) or []
        boxes: list[CheckResult] = []
        reached: dict[str, list[bool]] = {}
        for address in mailboxes:
            result, perms = await self._check_mailbox(address)
            boxes.append(result)
            for perm, ok in perms.items():
                reached.setdefault(perm, []).append(ok)
        for role in NEEDED_ROLES:
            probes = reached.get(role, [])
            if role in roles or (role.endswith(".Read") and role + "Write" in roles):
                results.append(CheckResult(role, True, f"{role} is granted"))
            elif probes and all(probes):
                results.append(
                    CheckResult(
                        role,
                        True,
                        f"{role} is granted for the synced mailboxes (Exchange Online RBAC for Applications)",
                    )
                )
            else:
                results.append(
                    CheckResult(
                        role,
                        False,
                        f"{role} is not granted (admin consent): add it as "
                        "an application permission and grant admin consent, or assign "
                        "it with RBAC for Applications (docs/GRAPH.md)",
                    )
                )
        return results + boxes

    async def _check_mailbox(self, address: str) -> tuple[CheckResult, dict[str, bool]]:
        mb = self.mailbox(address)
        user = user_path(address)
        day = self.now().strftime("%Y-%m-%d")
        probes = [
            ("mailboxSettings", f"{user}/mailboxSettings/timeZone"),
            (
                "calendar",
                f"{user}/calendarView?startDateTime={day}T00:00:00Z&endDateTime={day}T00:00:01Z&$top=1",
            ),
            ("contacts", f"{user}/contacts?$top=1"),
            ("To Do", f"{user}/todo/lists?$top=1"),
        ]
        reqs = [{"method": "GET", "url": url} for _, url in probes]
        try:
            answers = await self.client.batch(address, "check", reqs, strict=False)
        except errors.ExchangedError as exc:
            return CheckResult(address, False, errors.present(exc).line()), {}
        missing = []
        perms: dict[str, bool] = {}
        for (what, url), answer in zip(probes, answers, strict=True):
            perm = permission_for(url) or what
            perms[perm] = 200 <= answer.status < 300
            if answer.status == 404 and answer.code in MAILBOX_GONE:
                return CheckResult(
                    address,
                    False,
                    f"{address}: no such mailbox in Exchange Online ({answer.code}): check users[]",
                ), {}
            if answer.status in (401, 403):
                missing.append(
                    f"{perm} is not granted (admin consent) or the mailbox is outside the "
                    f"app's RBAC scope ({what})"
                )
            elif answer.status >= 300:
                missing.append(f"{what}: HTTP {answer.status} {answer.code}")
        if missing:
            return CheckResult(address, False, f"{address}: " + "; ".join(missing)), perms
        zone = answers[0].doc.get("value")
        mb._tz_name = zone if isinstance(zone, str) and zone else "UTC"
        mb._tz = convert.mailbox_zone(mb._tz_name)
        note = "" if zone else " (no time zone set: UTC assumed)"
        return CheckResult(
            address,
            True,
            f"{address}: calendar, contacts and To Do reachable; time zone {mb._tz_name}{note}",
            warning=not zone,
        ), perms

    async def aclose(self) -> None:
        await self.client.aclose()


__all__ = ["GraphAccount", "GraphMailbox"]
