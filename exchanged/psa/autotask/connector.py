"""``AutotaskConnector``: the ``ports.PsaConnector`` over the Autotask REST API.

Reads (``load``) are queries filtered on the resource and the sync window, with only the mapped
fields, 500 rows a page, every page followed; related rows come in batched ``in`` queries, so a
cycle costs a number of requests that grows with pages, never with rows. Deletions are found by
the engine reconciling the window (the API has no deletion feed): a row gone from the answer is
gone from the PSA, and an answer is only ever given for a complete read (any failure raises
``PsaUnavailable``, never an empty list).

Writes (``apply``) are carried out one by one in order (the API has no batch write), after one
batched read of the rows they touch (existence, the company of a to-do for its parent URL, the
import marker), and followed by one batched read-back so that every returned record is exactly
what the next ``load`` will see. A refused write is an ``ItemError`` naming the entity and id;
the others go on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import trio

from exchanged import errors
from exchanged.exchange.limits import DEFAULT_DEADLINE_S, DEFAULT_MAX_ANSWER_MB
from exchanged.model import (
    Appointment,
    ItemError,
    Kind,
    PsaRecord,
    Task,
    Window,
    make_psa_key,
    payload_span,
    split_psa_key,
)
from exchanged.ports import CheckResult, PsaChanges, PsaConnectorBase, PsaLoad, PsaResource, PsaWrite

from . import mapping as m
from .api import AutotaskApi, Response, credentials_from

log = structlog.get_logger("exchanged.psa.autotask")

THRESHOLD_REFRESH_S = 900.0  # read ThresholdInformation at most every 15 minutes
THRESHOLD_WARN = 0.75
ACTION_TYPES_TTL_S = 3600.0  # the API adds latency from 50 % and suspends the tenant at 100 %


class _AtProbe:
    """The Autotask change probe's cursor: its watermark and what it reported at the overlap."""

    def __init__(self, watermark: datetime, seen: dict[tuple[str, int], str]) -> None:
        self.watermark = watermark
        self.seen = seen


# what the change probe asks per entity: the modification field, and the fields naming resources
_PROBED: dict[str, tuple[str, list[str]]] = {
    "Appointments": ("updateDateTime", ["resourceID"]),
    "CompanyToDos": ("lastModifiedDate", ["assignedToResourceID"]),
    "ServiceCalls": ("lastModifiedDateTime", []),
    "Contacts": ("lastModifiedDate", ["companyID"]),
}
PROBE_OVERLAP_S = 5.0  # the watermark reaches back this far (rows written in the same second)


@dataclass(frozen=True, slots=True)
class _Target:
    entity: str
    record_id: int


def _skip(skipped: list[ItemError], kind: Kind, entity: str, row: dict[str, Any], why: str) -> None:
    """A row that cannot be synced is reported (the load's ``skipped``), never guessed at."""
    skipped.append(
        ItemError(
            make_psa_key(kind, row.get("id", "?")),
            "invalid_row",
            f"Autotask {entity} {row.get('id')} is skipped because {why}; fix it in Autotask",
        )
    )


class AutotaskConnector(PsaConnectorBase):
    def __init__(self, api: AutotaskApi) -> None:
        self.api = api
        self._threshold_at: float | None = None
        self._action_types: dict[int, str] = {}
        self._action_types_at = -ACTION_TYPES_TTL_S - 1.0
        self.closed = False

    # -- status ---------------------------------------------------------------------------------

    def budget_status(self) -> dict[str, object]:
        """For the daemon's status: this daemon's hourly share and the database's own usage."""
        status = self.api.budget.status()
        status["backoffs"] = self.api.backoffs
        db = self.api.database
        status["database"] = (
            None
            if db is None
            else {
                "limit": db.get("limit"),
                "used": db.get("used"),
                "age_s": round(trio.current_time() - float(db["at"]), 1),
            }
        )
        status["zone"] = self.api.zone_url
        return status

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(service, operation) -> API calls since this connector was opened (metrics)."""
        return {("autotask", op): n for op, n in self.api.requests.items()}

    def throttle_waits(self) -> dict[str, int]:
        return {"autotask": self.api.backoffs}

    def interrupt_waits(self, reason: str) -> None:
        """The daemon is stopping: a request waiting for the hourly budget (up to an hour) or in a
        back-off fails now with a message naming ``reason``, and so does every later one that would
        wait; its cycle ends as an error at once instead of being cancelled after the grace period."""
        self.api.interrupt_waits(reason)

    async def _maybe_threshold(self) -> None:
        now = trio.current_time()
        if self._threshold_at is not None and now - self._threshold_at < THRESHOLD_REFRESH_S:
            return
        self._threshold_at = now
        try:
            db = await self.api.threshold()
        except errors.PsaUnavailable as exc:  # only for status: the cycle goes on without it
            log.warning(
                "Autotask ThresholdInformation could not be read; the cycle goes on", error=exc.message
            )
            return
        limit, used = db.get("limit"), db.get("used")
        if isinstance(limit, int) and isinstance(used, int) and limit > 0 and used >= THRESHOLD_WARN * limit:
            log.warning(
                "Autotask database request threshold nearly used up",
                used=used,
                limit=limit,
                hint="other integrations share this budget; the API slows down and then "
                "suspends the tenant when it is used up",
            )

    # -- the port: reads ------------------------------------------------------------------------

    @staticmethod
    def _resource_id(psa_resource: str) -> int | None:
        try:
            return int(str(psa_resource).strip())
        except ValueError:
            return None

    async def resource(self, psa_resource: str) -> PsaResource | None:
        rid = self._resource_id(psa_resource)
        if rid is None:
            return None
        row = await self.api.get("Resources", rid)
        if row is None:
            return None
        return PsaResource(
            psa_resource=str(psa_resource),
            email=str(row.get("email") or ""),
            name=m.full_name(row),
            is_active=m.is_active(row.get("isActive")),
        )

    async def all_resources(self) -> Sequence[PsaResource]:
        rows = await self.api.query("Resources", [{"op": "gte", "field": "id", "value": 0}],
                                    list(m.RESOURCE_FIELDS))
        return sorted((PsaResource(psa_resource=str(r["id"]), email=str(r.get("email") or "").strip(),
                                   name=m.full_name(r), is_active=m.is_active(r.get("isActive")))
                       for r in rows), key=lambda r: int(r.psa_resource))

    async def load(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> PsaLoad:
        rid = self._resource_id(psa_resource)
        if rid is None:
            raise errors.PsaError(f"psa_resource {psa_resource!r} is not an Autotask resource id (a number)")
        await self._maybe_threshold()
        results: dict[str, list[PsaRecord]] = {}
        # this load's own: one connector serves several users' cycles at once
        skipped: list[ItemError] = []

        async def run(name: str, fn: Any) -> None:
            results[name] = await fn(rid, window, skipped)

        async with _nursery() as nursery:
            if kinds & {Kind.APPOINTMENT, Kind.IMPORTED}:
                nursery.start_soon(run, "appointments", self._appointments)
            if Kind.SERVICE_CALL in kinds:
                nursery.start_soon(run, "service_calls", self._service_calls)
            if Kind.TODO in kinds:
                nursery.start_soon(run, "todos", self._todos)
            if Kind.CONTACT in kinds:
                nursery.start_soon(run, "contacts", self._owned_contacts)
        out = [
            r
            for name in ("appointments", "service_calls", "todos", "contacts")
            for r in results.get(name, [])
            if r.kind in kinds
        ]
        return PsaLoad([r for r in out if window.in_scope(*payload_span(r.payload))], skipped)

    # -- the change probe (sync.psa_poll_seconds) ------------------------------------------------------

    async def probe_changes(self, cursor: object | None) -> PsaChanges | None:
        """One query per entity for the rows modified since the watermark, across all resources
        (Appointments, CompanyToDos, ServiceCalls, Contacts: 4 requests a probe, 480 an hour at
        the default 30 s, under 5 % of Autotask's 10,000); a changed service call or contact
        costs one or two more queries to find its resources. The watermark is the newest
        modification time the API answered (its clock, not ours), minus ``PROBE_OVERLAP_S``;
        rows already reported at their modification time are not reported again. A deletion
        has no modification time: the periodic cycle finds it (the API has no deletion feed)."""
        probe = cursor if isinstance(cursor, _AtProbe) else None
        if probe is None:  # the baseline: from now on (the start-up cycles cover the past)
            return PsaChanges(_AtProbe(datetime.now(UTC) - timedelta(seconds=PROBE_OVERLAP_S), {}),
                              frozenset())
        since = m.format_time(probe.watermark)
        found: dict[str, list[dict[str, Any]]] = {}

        async def look(entity: str, field: str, fields: list[str]) -> None:
            found[entity] = await self.api.query(entity, [{"op": "gt", "field": field, "value": since}],
                                                 [field, *fields])

        async with _nursery() as nursery:
            for entity, (field, fields) in _PROBED.items():
                nursery.start_soon(look, entity, field, fields)
        seen = dict(probe.seen)
        newest = probe.watermark
        fresh: dict[str, list[dict[str, Any]]] = {}
        for entity, rows in found.items():
            field = _PROBED[entity][0]
            for row in rows:
                stamp = str(row.get(field) or "")
                key = (entity, int(row["id"]))
                when = m.parse_time(stamp)
                if when is not None and when > newest:
                    newest = when
                if seen.get(key) == stamp:
                    continue  # reported by the last probe (the watermark overlaps)
                seen[key] = stamp
                fresh.setdefault(entity, []).append(row)
        resources = {int(r["resourceID"]) for r in fresh.get("Appointments", []) if r.get("resourceID")}
        resources |= {int(r["assignedToResourceID"]) for r in fresh.get("CompanyToDos", [])
                      if r.get("assignedToResourceID")}
        resources |= await self._call_resources({int(r["id"]) for r in fresh.get("ServiceCalls", [])})
        resources |= await self._contact_owners(fresh.get("Contacts", []))
        watermark = newest - timedelta(seconds=PROBE_OVERLAP_S)
        seen = {k: v for k, v in seen.items() if (m.parse_time(v) or newest) >= watermark}
        return PsaChanges(_AtProbe(watermark, seen), frozenset(str(r) for r in resources))

    async def _call_resources(self, call_ids: set[int]) -> set[int]:
        """The resources assigned to these service calls (through tickets and tasks)."""
        out: set[int] = set()
        if not call_ids:
            return out
        for link_entity, resource_entity, link_field, item_field in (
                ("ServiceCallTickets", "ServiceCallTicketResources", "serviceCallTicketID", "ticketID"),
                ("ServiceCallTasks", "ServiceCallTaskResources", "serviceCallTaskID", "taskID")):
            links = await self.api.query_in(link_entity, "serviceCallID", sorted(call_ids), [item_field])
            if links:
                res = await self.api.query_in(resource_entity, link_field, [int(x["id"]) for x in links],
                                              ["resourceID"])
                out |= {int(r["resourceID"]) for r in res if r.get("resourceID")}
        return out

    async def _contact_owners(self, contacts: list[dict[str, Any]]) -> set[int]:
        """The owners of changed contacts: their companies' managers, their opportunities' owners."""
        if not contacts:
            return set()
        companies = await self.api.query_in(
            "Companies", "id", sorted({int(c["companyID"]) for c in contacts if c.get("companyID")}),
            ["ownerResourceID"])
        opps = await self.api.query_in("Opportunities", "contactID", sorted(int(c["id"]) for c in contacts),
                                       ["ownerResourceID"])
        return {int(r["ownerResourceID"]) for r in [*companies, *opps] if r.get("ownerResourceID")}

    async def _appointments(self, rid: int, window: Window, skipped: list[ItemError]) -> list[PsaRecord]:
        rows = await self.api.query(
            "Appointments",
            [
                {"op": "eq", "field": "resourceID", "value": rid},
                {"op": "gte", "field": "endDateTime", "value": m.format_time(window.past_start)},
            ],
            m.APPOINTMENT_FIELDS,
        )
        out = []
        for row in rows:
            rec = m.appointment_record(row)
            if rec is None:
                _skip(skipped, Kind.APPOINTMENT, "Appointments", row, "it has no start or no end time")
            else:
                out.append(rec)
        return out

    async def _action_type_names(self, ids: set[int | None]) -> dict[int | None, str]:
        """Names of to-do action types (``ActionTypes``), kept for an hour: they rarely change."""
        now = trio.current_time()
        if now - self._action_types_at > ACTION_TYPES_TTL_S:
            self._action_types.clear()
            self._action_types_at = now
        missing = {i for i in ids if i is not None and i not in self._action_types}
        if missing:
            rows = await self.api.query_in("ActionTypes", "id", sorted(missing), ["name"])
            self._action_types.update({int(r["id"]): str(r.get("name") or "") for r in rows})
            self._action_types.update({i: "" for i in missing if i not in self._action_types})
        return {i: self._action_types[i] for i in ids if i is not None}

    async def _company_names(self, ids: set[int]) -> dict[int, str]:
        ids.discard(0)
        if not ids:
            return {}
        rows = await self.api.query_in("Companies", "id", sorted(ids), ["companyName"])
        return {int(r["id"]): str(r.get("companyName") or "") for r in rows}

    async def _service_calls(self, rid: int, window: Window, skipped: list[ItemError]) -> list[PsaRecord]:
        """Calls in the window assigned to the resource through a ticket or a task (both chains)."""
        calls = await self.api.query(
            "ServiceCalls",
            [
                {"op": "gte", "field": "endDateTime", "value": m.format_time(window.past_start)},
                {"op": "notExist", "field": "canceledDateTime"},
            ],
            m.SERVICE_CALL_FIELDS,
        )
        if not calls:
            return []
        # Ids grow with time: the links of the window's calls have serviceCallID >= the smallest
        # call id of the window, and their resource rows a link id >= the smallest such link. Two
        # range filters per chain cost pages (500 rows), where `in` lists of the ids would cost a
        # request per 200 calls of every resource.
        call_ids = {int(c["id"]) for c in calls}
        assigned: set[int] = set()

        async def chain(link_entity: str, resource_entity: str, link_field: str, item_field: str) -> None:
            links = await self.api.query(
                link_entity,
                [{"op": "gte", "field": "serviceCallID", "value": min(call_ids)}],
                ["serviceCallID", item_field],
            )
            call_of = {
                int(x["id"]): int(x["serviceCallID"]) for x in links if int(x["serviceCallID"]) in call_ids
            }
            if not call_of:
                return
            res = await self.api.query(
                resource_entity,
                [
                    {"op": "eq", "field": "resourceID", "value": rid},
                    {"op": "gte", "field": link_field, "value": min(call_of)},
                ],
                [link_field],
            )
            assigned.update(call_of[int(r[link_field])] for r in res if int(r[link_field]) in call_of)

        async with _nursery() as nursery:
            nursery.start_soon(
                chain, "ServiceCallTickets", "ServiceCallTicketResources", "serviceCallTicketID", "ticketID"
            )
            nursery.start_soon(
                chain, "ServiceCallTasks", "ServiceCallTaskResources", "serviceCallTaskID", "taskID"
            )
        mine = [c for c in calls if int(c["id"]) in assigned]
        names = await self._company_names({int(c["companyID"]) for c in mine if c.get("companyID")})
        out = []
        for c in mine:
            company = c.get("companyID")
            rec = m.service_call_record(c, names.get(int(company)) if company else None)
            if rec is None:
                _skip(skipped, Kind.SERVICE_CALL, "ServiceCalls", c, "it has no start or no end time")
            else:
                out.append(rec)
        return out

    async def _todos(self, rid: int, window: Window, skipped: list[ItemError]) -> list[PsaRecord]:
        rows = await self.api.query(
            "CompanyToDos",
            [
                {"op": "eq", "field": "assignedToResourceID", "value": rid},
                {"op": "gte", "field": "endDateTime", "value": m.format_time(window.past_start)},
            ],
            m.TODO_FIELDS,
        )
        return await self._todo_records(rows)

    async def _owned_contacts(self, rid: int, window: Window, skipped: list[ItemError]) -> list[PsaRecord]:
        """Contacts of companies the resource manages, and contacts of opportunities it owns."""
        owner = [{"op": "eq", "field": "ownerResourceID", "value": rid}]
        companies: list[dict[str, Any]] = []
        opps: list[dict[str, Any]] = []

        async def get_companies() -> None:
            companies.extend(await self.api.query("Companies", owner, ["companyName"]))

        async def get_opps() -> None:
            opps.extend(
                await self.api.query(
                    "Opportunities", [*owner, {"op": "exist", "field": "contactID"}], ["contactID"]
                )
            )

        async with _nursery() as nursery:
            nursery.start_soon(get_companies)
            nursery.start_soon(get_opps)
        names = {int(c["id"]): str(c.get("companyName") or "") for c in companies}
        active = [{"op": "eq", "field": "isActive", "value": 1}]
        rows = await self.api.query_in("Contacts", "companyID", sorted(names), m.CONTACT_FIELDS, active)
        seen = {int(r["id"]) for r in rows}
        opp_contacts = {int(o["contactID"]) for o in opps if o.get("contactID")} - seen
        rows += await self.api.query_in("Contacts", "id", sorted(opp_contacts), m.CONTACT_FIELDS, active)
        names.update(
            await self._company_names(
                {int(r["companyID"]) for r in rows if r.get("companyID") and int(r["companyID"]) not in names}
            )
        )
        return self._contacts(rows, names, Kind.CONTACT, skipped)

    async def all_contacts(self) -> PsaLoad:
        skipped: list[ItemError] = []
        rows = await self.api.query(
            "Contacts", [{"op": "eq", "field": "isActive", "value": 1}], m.CONTACT_FIELDS
        )
        companies = await self.api.query(
            "Companies", [{"op": "gte", "field": "id", "value": 0}], ["companyName"]
        )
        names = {int(c["id"]): str(c.get("companyName") or "") for c in companies}
        return PsaLoad(self._contacts(rows, names, Kind.PUBLIC_CONTACT, skipped), skipped)

    def _contacts(self, rows: list[dict[str, Any]], names: dict[int, str], kind: Kind,
                  skipped: list[ItemError]) -> list[PsaRecord]:
        out = []
        for row in rows:
            if not m.is_active(row.get("isActive")):
                continue
            company = names.get(int(row["companyID"])) if row.get("companyID") else None
            rec = m.contact_record(row, company, kind)
            if rec is None:
                _skip(skipped, kind, "Contacts", row, "it has neither a first nor a last name")
            else:
                out.append(rec)
        return out

    # -- the port: writes -----------------------------------------------------------------------

    async def apply(self, writes: Sequence[PsaWrite]) -> Sequence[PsaRecord | ItemError | None]:
        current = await self._current_rows(writes)
        results: list[PsaRecord | ItemError | _Target | None] = []
        for w in writes:
            results.append(await self._apply_one(w, current))
        records = await self._read_back([r for r in results if isinstance(r, _Target)])
        out: list[PsaRecord | ItemError | None] = []
        for w, r in zip(writes, results, strict=True):
            if isinstance(r, _Target):
                rec = records.get(r)
                out.append(
                    rec
                    if rec is not None
                    else ItemError(
                        _key(w), "not_found", f"{r.entity} {r.record_id} was written but cannot be read back"
                    )
                )
            else:
                out.append(r)
        return out

    async def _current_rows(self, writes: Sequence[PsaWrite]) -> dict[_Target, dict[str, Any]]:
        """One batched read of every existing row the writes touch."""
        wanted: dict[str, set[int]] = {"Appointments": set(), "CompanyToDos": set()}
        for w in writes:
            target = _target(w)
            if target is not None and target.entity in wanted:
                wanted[target.entity].add(target.record_id)
        out: dict[_Target, dict[str, Any]] = {}
        fields = {"Appointments": ["resourceID", "description"], "CompanyToDos": ["companyID"]}
        for entity, ids in wanted.items():
            if ids:
                for row in await self.api.query_in(entity, "id", sorted(ids), fields[entity]):
                    out[_Target(entity, int(row["id"]))] = row
        return out

    async def _apply_one(
        self, w: PsaWrite, current: dict[_Target, dict[str, Any]]
    ) -> PsaRecord | ItemError | _Target | None:
        key = _key(w)
        if w.op == "create":
            if w.kind is not Kind.IMPORTED or not isinstance(w.payload, Appointment) or not w.exchange_key:
                return ItemError(
                    key, "invalid_write", "only imported Exchange appointments are created in Autotask"
                )
            rid = self._resource_id(w.resource or "")
            if rid is None:
                return ItemError(
                    key, "invalid_write", f"no Autotask resource id for the import ({w.resource!r})"
                )
            body = {"resourceID": rid, **m.imported_fields(w.payload, w.exchange_key)}
            resp = await self.api.request("POST", "V1.0/Appointments", body, what="create Appointments")
            return self._written(resp, key, "create", "Appointments", None)
        target = _target(w)
        if target is None:
            return ItemError(key, "invalid_write", f"cannot {w.op} {w.psa_key!r} in Autotask")
        row = current.get(target)
        if row is None and w.op == "delete":
            return None  # deleting what is gone is done
        if row is None:
            return ItemError(
                key, "not_found", f"Autotask {target.entity} {target.record_id} no longer exists"
            )
        if w.op == "delete":
            if w.kind is not Kind.IMPORTED or m.split_marker(str(row.get("description") or ""))[1] is None:
                return ItemError(
                    key,
                    "invalid_write",
                    f"Autotask {target.entity} {target.record_id} is not "
                    "an imported appointment; the sync never deletes it",
                )
            resp = await self.api.request(
                "DELETE",
                f"V1.0/Appointments/{target.record_id}",
                what=f"delete Appointments {target.record_id}",
            )
            result = self._written(resp, key, "delete", "Appointments", target.record_id)
            if isinstance(result, ItemError) and result.code == "not_found":
                return None  # removed meanwhile by someone else: done all the same
            return None if isinstance(result, _Target) else result
        if w.op != "update" or w.payload is None:
            return ItemError(key, "invalid_write", f"unknown PSA write {w.op!r}")
        return await self._update(w, key, target, row)

    async def _update(
        self, w: PsaWrite, key: str, target: _Target, row: dict[str, Any]
    ) -> PsaRecord | ItemError | _Target | None:
        p = w.payload
        if w.kind is Kind.APPOINTMENT and isinstance(p, Appointment):
            patch = m.appointment_patch(p, w.fields)
        elif w.kind is Kind.IMPORTED and isinstance(p, Appointment):
            _, marker = m.split_marker(str(row.get("description") or ""))
            exchange_key = w.exchange_key or (str(marker["key"]) if marker else None)
            if not exchange_key:
                return ItemError(
                    key,
                    "invalid_write",
                    f"Autotask Appointments {target.record_id} has lost its import marker",
                )
            patch = m.imported_patch(p, exchange_key, w.fields)
        elif w.kind is Kind.TODO and isinstance(p, Task):
            patch = m.todo_patch(p, w.fields)
        else:
            return ItemError(key, "invalid_write", f"{w.kind.value} rows are not written back to Autotask")
        if not patch:
            return target  # nothing that Autotask stores changed: no request
        if target.entity == "CompanyToDos":  # no top-level ToDos: PATCH through the company
            company = row.get("companyID")
            url = f"V1.0/Companies/{company}/ToDos"
        else:
            url = f"V1.0/{target.entity}"
        resp = await self.api.request(
            "PATCH", url, {"id": target.record_id, **patch}, what=f"update {target.entity} {target.record_id}"
        )
        return self._written(resp, key, "update", target.entity, target.record_id)

    @staticmethod
    def _written(
        resp: Response, key: str, op: str, entity: str, record_id: int | None
    ) -> _Target | ItemError:
        item_id = resp.body.get("itemId") if isinstance(resp.body, dict) else None
        if resp.status == 200 and (isinstance(item_id, int) or record_id is not None):
            return _Target(entity, int(item_id) if isinstance(item_id, int) else int(record_id or 0))
        what = f"{entity} {record_id}" if record_id is not None else f"new {entity}"
        missing = "no matching records" in resp.error_text().lower()
        code = "not_found" if missing else f"autotask_{resp.status}"
        return ItemError(
            key,
            code,
            f"Autotask refused to {op} {what}: HTTP {resp.status}: {resp.error_text()}",
            retryable=resp.status >= 500 and not missing and not isinstance(resp.body, dict),
        )

    async def _read_back(self, targets: list[_Target]) -> dict[_Target, PsaRecord]:
        out: dict[_Target, PsaRecord] = {}
        appts = sorted({t.record_id for t in targets if t.entity == "Appointments"})
        for row in (
            await self.api.query_in("Appointments", "id", appts, m.APPOINTMENT_FIELDS) if appts else []
        ):
            rec = m.appointment_record(row)
            if rec is not None:
                out[_Target("Appointments", int(row["id"]))] = rec
        todos = sorted({t.record_id for t in targets if t.entity == "CompanyToDos"})
        rows = await self.api.query_in("CompanyToDos", "id", todos, m.TODO_FIELDS) if todos else []
        for row, rec in zip(rows, await self._todo_records(rows), strict=True):
            out[_Target("CompanyToDos", int(row["id"]))] = rec
        return out

    async def _todo_records(self, rows: list[dict[str, Any]]) -> list[PsaRecord]:
        """To-do rows as records, with their action types' and companies' names."""
        names = await self._action_type_names({_int(r.get("actionType")) for r in rows})
        companies = await self._company_names({c for r in rows if (c := _int(r.get("companyID")))})
        return [m.todo_record(r, names.get(_int(r.get("actionType"))),
                              companies.get(_int(r.get("companyID")) or 0)) for r in rows]

    # -- check-config --connect ----------------------------------------------------------------

    async def check(self, psa_resources: Sequence[str]) -> list[CheckResult]:
        """Zone, login, every configured resource, and the permission to write their appointments.

        A failed zone lookup or login is a failure (``ok=False``); a missing or inactive resource
        and missing appointment rights are warnings (``ok=True, warning=True``): the daemon runs,
        and the affected users are reported in every cycle."""
        out: list[CheckResult] = []
        try:
            zone = await self.api.zone()
            out.append(
                CheckResult("autotask zone", True, f"API user {self.api.creds.username} is in zone {zone}")
            )
            db = await self.api.threshold()
            used, limit = db.get("used"), db.get("limit")
            busy = isinstance(used, int) and isinstance(limit, int) and used >= THRESHOLD_WARN * limit
            message = f"logged in; the database used {used} of {limit} requests this hour"
            if busy:
                message += (
                    " - nearly used up: Autotask slows down every integration and suspends the "
                    "tenant at the limit; check the other integrations or lower requests_per_hour"
                )
            out.append(CheckResult("autotask login", True, message, warning=busy))
        except errors.ExchangedError as exc:
            out.append(
                CheckResult("autotask login", False, exc.message + (f" ({exc.hint})" if exc.hint else ""))
            )
            return out
        active: list[int] = []
        for psa_resource in psa_resources:
            subject = f"psa_resource {psa_resource}"
            try:
                res = await self.resource(psa_resource)
            except errors.ExchangedError as exc:
                out.append(CheckResult(subject, True, f"could not check: {exc.message}", warning=True))
                continue
            if res is None:
                out.append(
                    CheckResult(
                        subject,
                        True,
                        f"Autotask has no resource {psa_resource}; nothing is synced for it: "
                        "check users[].psa_resource",
                        warning=True,
                    )
                )
            elif not res.is_active:
                out.append(
                    CheckResult(
                        subject,
                        True,
                        f"Autotask resource {psa_resource} ({res.name}) is "
                        "inactive; nothing is synced for it",
                        warning=True,
                    )
                )
            else:
                out.append(CheckResult(subject, True, f"{res.name} <{res.email}> is active"))
                active.append(int(psa_resource))
        if active:
            out.append(await self._probe_appointment_rights(active[0]))
        return out

    async def _probe_appointment_rights(self, rid: int) -> CheckResult:
        """A no-op PATCH of an appointment of a configured resource (only its id is sent, nothing
        changes); if the resource has no appointment, a probe appointment in the past is created
        and deleted at once."""
        subject = "autotask appointment rights"
        hint = (
            "the API user may not manage other resources' appointments: enable the system setting "
            "that lets API users edit appointments of other resources"
        )
        try:
            rows = await self.api.query(
                "Appointments", [{"op": "eq", "field": "resourceID", "value": rid}], ["resourceID"]
            )
            if rows:
                resp = await self.api.request(
                    "PATCH", "V1.0/Appointments", {"id": int(rows[0]["id"])}, what="permission probe"
                )
                if resp.status == 200:
                    return CheckResult(
                        subject, True, f"the API user may write appointments of resource {rid}"
                    )
                return CheckResult(
                    subject, True, f"{hint} (HTTP {resp.status}: {resp.error_text()})", warning=True
                )
            start = trio.current_time()  # only for a unique title
            resp = await self.api.request(
                "POST",
                "V1.0/Appointments",
                {
                    "resourceID": rid,
                    "title": f"exchanged permission probe {int(start)} (safe to delete)",
                    "startDateTime": "2000-01-01T00:00:00.000Z",
                    "endDateTime": "2000-01-01T00:01:00.000Z",
                },
                what="permission probe",
            )
            if resp.status != 200 or not isinstance(resp.body, dict):
                return CheckResult(
                    subject, True, f"{hint} (HTTP {resp.status}: {resp.error_text()})", warning=True
                )
            await self.api.request(
                "DELETE", f"V1.0/Appointments/{resp.body.get('itemId')}", what="permission probe clean-up"
            )
            return CheckResult(subject, True, f"the API user may write appointments of resource {rid}")
        except errors.ExchangedError as exc:
            return CheckResult(subject, True, f"could not check: {exc.message}", warning=True)

    async def aclose(self) -> None:
        self.closed = True


@asynccontextmanager
async def _nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for concurrent queries that raises the first typed error itself, not a group:
    callers (the runner) catch ``PsaUnavailable``, not an ``ExceptionGroup`` around it."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        first = _first_typed(group)
        if first is not None:
            raise first from None
        raise


def _first_typed(group: BaseExceptionGroup[BaseException]) -> errors.ExchangedError | None:
    for exc in group.exceptions:
        if isinstance(exc, errors.ExchangedError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_typed(exc)
            if found is not None:
                return found
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _key(w: PsaWrite) -> str:
    return w.psa_key or w.exchange_key or "?"


def _target(w: PsaWrite) -> _Target | None:
    if not w.psa_key:
        return None
    try:
        kind, raw = split_psa_key(w.psa_key)
        record_id = int(raw)
    except ValueError:
        return None
    entity = {
        Kind.APPOINTMENT: "Appointments",
        Kind.IMPORTED: "Appointments",
        Kind.TODO: "CompanyToDos",
        Kind.SERVICE_CALL: "ServiceCalls",
        Kind.CONTACT: "Contacts",
    }.get(kind)
    return _Target(entity, record_id) if entity else None


def open_autotask(
    psa_cfg: Any, *, previous: AutotaskConnector | None = None, **api_options: Any
) -> AutotaskConnector:
    """The connector for ``psa: {connector: autotask, ...}``; no I/O until the first call.

    ``psa_cfg`` is ``config.AutotaskPsaConfig`` or anything with its attributes (username,
    secret/secret_file, integration_code/integration_code_file, zone_lookup_url,
    requests_per_hour, ca_bundle, request_deadline_s, max_answer_mb). ``previous``: the
    connector of the config generation this one replaces (reload); the new one takes over its
    hourly budget (with the new limit) and its thread limit, so that a reload neither resets the
    count nor doubles the threads in flight.
    ``api_options`` tune the client for tests (retry_base_s, retry_cap_s, max_attempts, ...).
    """
    api = AutotaskApi(
        credentials_from(psa_cfg),
        zone_lookup_url=str(
            getattr(psa_cfg, "zone_lookup_url", None) or "https://webservices.autotask.net/ATServicesRest/"
        ),
        ca_bundle=getattr(psa_cfg, "ca_bundle", None),
        requests_per_hour=int(getattr(psa_cfg, "requests_per_hour", None) or 3000),
        request_deadline_s=float(getattr(psa_cfg, "request_deadline_s", None) or DEFAULT_DEADLINE_S),
        max_answer_mb=float(getattr(psa_cfg, "max_answer_mb", None) or DEFAULT_MAX_ANSWER_MB),
        **api_options,
    )
    if previous is not None:
        api.share_limits(previous.api)
    return AutotaskConnector(api)


async def check(psa_cfg: Any, psa_resources: Sequence[str]) -> list[CheckResult]:
    """``exchanged check-config --connect``: the Autotask part, each result ok / failed / warning."""
    try:
        connector = open_autotask(psa_cfg)
    except errors.ExchangedError as exc:
        return [CheckResult("autotask login", False, exc.message)]
    try:
        return await connector.check(psa_resources)
    finally:
        await connector.aclose()
