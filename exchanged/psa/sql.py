"""The ``sql`` PSA connector: the PSA's data in the documented SQL schema (SPEC section 7).

Theory of operation
-------------------
* Tables are created when missing (never altered or dropped); times are UTC, ISO-8601 text in
  SQLite (``2026-11-29T12:00:00Z``; offsets and a space separator are read too) and
  ``timestamptz`` in PostgreSQL.
* ``load`` reads the rows of one resource and maps them to ``PsaRecord``s:

  ============================  ======================  ====================================
  rows                          kind                    payload
  ============================  ======================  ====================================
  appointments, origin psa      ``APPOINTMENT``         Appointment(title, description, ...)
  appointments, origin exchange ``IMPORTED``            Appointment; ``exchange_key`` = uid
  service calls (not canceled)  ``SERVICE_CALL``        "Service call: <company>: <line 1>"
  todos                         ``TODO``                "<action type>: <line 1>" (psa/render.py)
  contacts of owned companies   ``CONTACT``             Contact (active contacts only)
  and of owned opportunities
  ============================  ======================  ====================================

  A service call is loaded for every resource in ``service_call_resources``. Completed service
  calls stay in the calendar (the time was spent); canceled ones (``canceled_time`` set) are
  out. Contacts with ``is_active`` NULL count as active.
* Bad rows (a required value NULL, end before start, text that is not valid UTF-8, a text over
  ``MAX_TEXT`` characters, an imported row without ``exchange_uid``) are skipped, never guessed
  at: each is an ``ItemError`` (code ``invalid_row``) in the answer's ``skipped``, and
  logged once per process. Characters XML cannot carry (control characters) are dropped.
* ``apply`` carries each write out in its own transaction: imported rows are created (or, after
  a lost reply, found again by ``exchange_uid`` and rewritten), updated in full, and deleted;
  PSA-owned appointments and to-dos get only the named fields that flow back; PSA-owned rows are
  never deleted (``ItemError``). Every write bumps ``last_modified``.
* A database that cannot be read raises ``PsaUnavailable`` (never an empty answer). A missing
  SQLite file is "unreachable" too: a mistyped path must not look like an empty PSA.
* Existing tables are inspected when the connector first opens the database (``inspect_schema``;
  the daemon does it at start and reload, ``check-config --connect`` too): a missing column is a
  ``PsaError`` naming the table and the column. Ids may be integers or text (``id TEXT PRIMARY
  KEY``): keys carry them as text, and an imported row gets its id from the database when the
  column generates one (SQLite rowid, an identity, a default; read back with ``RETURNING id``),
  else from the connector (``exchanged-<uuid>`` for text ids, ``MAX(id) + 1`` for integer ones).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
import trio

from exchanged import errors
from exchanged.db import POSTGRES, SQLITE, Database, DbUrl, Tx, UrlError, parse_url
from exchanged.model import (
    RESPONSES,
    Appointment,
    Attendee,
    Contact,
    ItemError,
    Kind,
    PsaRecord,
    ShowAs,
    Task,
    Window,
    attendee_list,
    make_psa_key,
    payload_span,
    split_psa_key,
)
from exchanged.ports import PsaChanges, PsaConnectorBase, PsaLoad, PsaResource, PsaWrite
from exchanged.psa.listen import Listener
from exchanged.psa.render import service_call_subject, todo_body, todo_subject
from exchanged.state.codec import parse_ts

log = structlog.get_logger("exchanged.psa.sql")

MAX_TEXT = 100_000  # characters of a description/title; more is a bad row, not a calendar entry
_MARGIN = timedelta(days=1)  # the SQL pre-filter is coarse (text times may carry offsets)
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# --- schema -------------------------------------------------------------------------------------

TABLES: dict[str, str] = {
    "resources": "id {pk}, email TEXT, first_name TEXT, last_name TEXT, is_active {bool} DEFAULT {true}",
    "companies": "id {pk}, name TEXT, owner_resource_id BIGINT",
    "contacts": ("id {pk}, company_id BIGINT, first_name TEXT, last_name TEXT, email_address TEXT, "
                 "phone TEXT, mobile_phone TEXT, title TEXT, is_active {bool} DEFAULT {true}, "
                 "last_modified {ts}"),
    "opportunities": ("id {pk}, company_id BIGINT, contact_id BIGINT, owner_resource_id BIGINT, "
                      "title TEXT, status TEXT, last_modified {ts}"),
    "appointments": ("id {pk}, resource_id BIGINT, title TEXT, description TEXT, start_time {ts}, "
                     "end_time {ts}, last_modified {ts}, origin TEXT DEFAULT 'psa', exchange_uid TEXT, "
                     "show_as TEXT, is_private {bool} DEFAULT {false}"),
    "service_calls": ("id {pk}, company_id BIGINT, description TEXT, start_time {ts}, end_time {ts}, "
                      "status TEXT, is_complete {bool} DEFAULT {false}, canceled_time {ts}, "
                      "last_modified {ts}"),
    "service_call_resources": "service_call_id BIGINT NOT NULL, resource_id BIGINT NOT NULL, "
                              "PRIMARY KEY (service_call_id, resource_id)",
    "todos": ("id {pk}, assigned_resource_id BIGINT, company_id BIGINT, contact_id BIGINT, "
              "action_type TEXT, description TEXT, start_time {ts}, end_time {ts}, completed_time {ts}, "
              "last_modified {ts}"),
    # who takes part in an imported meeting (all_details); the sync rewrites a row's attendees.
    # appointment_id is text: it holds integer and text appointment ids alike
    "appointment_attendees": "appointment_id TEXT NOT NULL, name TEXT, email TEXT, response TEXT",
}

INDEXES: dict[str, list[str]] = {
    "companies": ["CREATE INDEX IF NOT EXISTS companies_owner ON companies (owner_resource_id)"],
    "contacts": ["CREATE INDEX IF NOT EXISTS contacts_company ON contacts (company_id)"],
    "opportunities": ["CREATE INDEX IF NOT EXISTS opportunities_owner ON opportunities (owner_resource_id)"],
    "appointments": ["CREATE INDEX IF NOT EXISTS appointments_resource ON appointments (resource_id)",
                     "CREATE INDEX IF NOT EXISTS appointments_uid ON appointments (exchange_uid)"],
    "service_call_resources": [
        "CREATE INDEX IF NOT EXISTS service_call_resources_resource ON service_call_resources (resource_id)"],
    "todos": ["CREATE INDEX IF NOT EXISTS todos_resource ON todos (assigned_resource_id)"],
    "appointment_attendees": [
        "CREATE INDEX IF NOT EXISTS appointment_attendees_appointment "
        "ON appointment_attendees (appointment_id)"],
}

_WORDS = {
    SQLITE: {"pk": "INTEGER PRIMARY KEY", "ts": "TEXT", "bool": "INTEGER", "true": "1", "false": "0"},
    POSTGRES: {"pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "ts": "TIMESTAMPTZ",
               "bool": "BOOLEAN", "true": "TRUE", "false": "FALSE"},
}


_PK_CLAUSE = re.compile(r",?\s*PRIMARY KEY \([^)]*\)")


def _needed_columns(table: str) -> list[str]:
    return [part.split()[0] for part in _PK_CLAUSE.sub("", TABLES[table]).split(",") if part.strip()]


@dataclass(frozen=True, slots=True)
class Schema:
    """What the existing tables are like: which ids are text, who makes an imported row's id."""

    text_ids: frozenset[str] = frozenset()  # tables whose ``id`` column holds text
    generated_appointment_id: bool = True  # the database fills appointments.id itself


def _column_info(tx: Tx, table: str) -> dict[str, tuple[str, bool, bool]]:
    """column -> (declared type, has a default/identity, is the SQLite rowid alias)."""
    if tx.dialect == SQLITE:
        rows = tx.query(f"PRAGMA table_info({table})")
        pks = [r for r in rows if r[5]]
        return {str(r[1]).lower(): (str(r[2] or "").upper(), r[4] is not None,
                                    len(pks) == 1 and r[5] == 1 and str(r[2] or "").upper() == "INTEGER")
                for r in rows}
    rows = tx.query("SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
                    "d.adbin IS NOT NULL OR a.attidentity IN ('a', 'd') "
                    "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid "
                    "AND d.adnum = a.attnum WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 "
                    "AND NOT a.attisdropped", (table,))
    return {str(r[0]).lower(): (str(r[1]).upper(), bool(r[2]), False) for r in rows}


def inspect_schema(tx: Tx) -> Schema:
    """Check every table the connector uses; a missing column is a ``PsaError`` naming it."""
    problems: list[str] = []
    text_ids: set[str] = set()
    generated = True
    for table in TABLES:
        info = _column_info(tx, table)
        missing = [c for c in _needed_columns(table) if c not in info]
        if missing:
            problems.append(f"table {table} has no column {', '.join(missing)}")
            continue
        if "id" in info:
            kind, has_default, rowid = info["id"]
            if "INT" not in kind:  # SQLite's own rule for integer affinity; PostgreSQL's int types
                text_ids.add(table)
            if table == "appointments":
                generated = rowid or has_default
    if problems:
        raise errors.PsaError(
            "the PSA tables do not fit the sql connector: " + "; ".join(problems),
            hint="add the missing columns (SPEC section 7 / docs/CONFIG.md psa.url); the daemon "
                 "creates missing tables but never alters existing ones")
    return Schema(frozenset(text_ids), generated)


def _table_exists(tx: Tx, table: str) -> bool:
    if tx.dialect == SQLITE:
        return bool(tx.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))
    return tx.query("SELECT to_regclass(?)", (table,))[0][0] is not None


def ensure_schema(tx: Tx) -> list[str]:
    """Create the missing tables (and their indexes); returns the names created."""
    if tx.dialect == POSTGRES:
        tx.query("SELECT pg_advisory_xact_lock(?)", (0x70736173,))  # nodes starting together
    created = []
    for table, columns in TABLES.items():
        if _table_exists(tx, table):
            continue
        tx.query(f"CREATE TABLE {table} ({columns.format(**_WORDS[tx.dialect])})")
        for statement in INDEXES.get(table, []):
            tx.query(statement)
        created.append(table)
    return created


# --- values -------------------------------------------------------------------------------------


class BadRow(ValueError):
    """A row the connector cannot use; the message says what is wrong with it."""


def ts_param(dialect: str, value: datetime | None) -> Any:
    if value is None:
        return None
    value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if dialect == POSTGRES:
        return value
    return value.isoformat().replace("+00:00", "Z")


def bool_param(dialect: str, value: bool) -> Any:
    return bool(value) if dialect == POSTGRES else int(bool(value))


def _time(value: Any, column: str, *, required: bool = False) -> datetime | None:
    if value is None or value == "":
        if required:
            raise BadRow(f"{column} is empty")
        return None
    try:
        parsed = parse_ts(value if isinstance(value, datetime) else str(value).strip())
    except ValueError:
        raise BadRow(f"{column} {str(value)[:40]!r} is not an ISO-8601 time") from None
    return parsed.astimezone(UTC) if parsed else None


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes")
    return bool(value)


def _text(value: Any, column: str) -> str:
    if value is None:
        return ""
    text = str(value)
    if _SURROGATE.search(text):
        raise BadRow(f"{column} is not valid UTF-8 text")
    if len(text) > MAX_TEXT:
        raise BadRow(f"{column} has {len(text)} characters (at most {MAX_TEXT})")
    return _XML_INVALID.sub("", text)


def _clip(text: str) -> str:
    # an Exchange body longer than a row may hold is cut, so that it reads back as a good row
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def _show_as(value: Any) -> ShowAs:
    try:
        return ShowAs(str(value).strip().lower())
    except ValueError:
        return ShowAs.BUSY  # NULL or a value Exchange does not know: busy, as a PSA entry is


def _span(start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None and end < start:
        raise BadRow(f"end_time {end.isoformat()} is before start_time {start.isoformat()}")


def _int_id(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- rows -> records ------------------------------------------------------------------------------

_APPT_COLS = ("id, title, description, start_time, end_time, last_modified, origin, exchange_uid, "
              "show_as, is_private")
_TODO_COLS = ("t.id, t.action_type, t.description, t.start_time, t.end_time, t.completed_time, "
              "t.last_modified, co.name")
_TODO_FROM = "todos t LEFT JOIN companies co ON co.id = t.company_id"
_CONTACT_COLS = ("ct.id, ct.first_name, ct.last_name, co.name, ct.title, ct.email_address, ct.phone, "
                 "ct.mobile_phone, ct.is_active, ct.last_modified")


def _appointment(row: tuple[Any, ...]) -> PsaRecord:
    rid, title, description, start, end, modified, origin, uid, show_as, private = row
    imported = str(origin or "psa").strip().lower() == "exchange"
    kind = Kind.IMPORTED if imported else Kind.APPOINTMENT
    start_t = _time(start, "start_time", required=True)
    end_t = _time(end, "end_time", required=True)
    _span(start_t, end_t)
    assert start_t is not None and end_t is not None
    if imported and not uid:
        raise BadRow("an imported row (origin exchange) has no exchange_uid")
    payload = Appointment(subject=_text(title, "title"), start=start_t, end=end_t,
                          body=_text(description, "description"), show_as=_show_as(show_as),
                          is_private=_flag(private, False))
    return PsaRecord(kind, make_psa_key(kind, rid), payload, _time(modified, "last_modified"),
                     str(uid) if imported else None)


def _service_call(row: tuple[Any, ...]) -> PsaRecord:
    rid, company, description, start, end, modified = row
    start_t = _time(start, "start_time", required=True)
    end_t = _time(end, "end_time", required=True)
    _span(start_t, end_t)
    assert start_t is not None and end_t is not None
    body = _text(description, "description")
    payload = Appointment(subject=service_call_subject(_text(company, "companies.name"), body),
                          start=start_t, end=end_t, body=body)
    return PsaRecord(Kind.SERVICE_CALL, make_psa_key(Kind.SERVICE_CALL, rid), payload,
                     _time(modified, "last_modified"))


def _todo(row: tuple[Any, ...]) -> PsaRecord:
    rid, action_type, description, start, end, completed, modified, company = row
    start_t = _time(start, "start_time")
    due = _time(end, "end_time")
    _span(start_t, due)
    description = _text(description, "description")
    payload = Task(subject=todo_subject(_text(action_type, "action_type"), description),
                   body=todo_body(description, _text(company, "companies.name")), start=start_t, due=due,
                   completed=_time(completed, "completed_time"))
    return PsaRecord(Kind.TODO, make_psa_key(Kind.TODO, rid), payload, _time(modified, "last_modified"))


def _contact(row: tuple[Any, ...], kind: Kind) -> PsaRecord:
    rid, first, last, company, title, email, phone, mobile, _active, modified = row
    payload = Contact(
        given_name=_text(first, "first_name").strip(), surname=_text(last, "last_name").strip(),
        company=_text(company, "companies.name").strip(), job_title=_text(title, "title").strip(),
        email=_text(email, "email_address").strip(), business_phone=_text(phone, "phone").strip(),
        mobile_phone=_text(mobile, "mobile_phone").strip())
    if not (payload.given_name or payload.surname):
        raise BadRow("the contact has neither first_name nor last_name")
    return PsaRecord(kind, make_psa_key(kind, rid), payload, _time(modified, "last_modified"))


@dataclass(frozen=True, slots=True)
class _Read:
    records: list[PsaRecord]
    problems: list[ItemError]


def _appointment_kind(row: tuple[Any, ...]) -> Kind:
    return Kind.IMPORTED if str(row[6] or "psa").strip().lower() == "exchange" else Kind.APPOINTMENT


def _collect(rows: Iterable[tuple[Any, ...]], table: str, kind: Kind | Callable[[tuple[Any, ...]], Kind],
             convert: Callable[[tuple[Any, ...]], PsaRecord]) -> _Read:
    records: list[PsaRecord] = []
    problems: list[ItemError] = []
    seen: set[Any] = set()
    for row in rows:
        if row[0] in seen:  # a row reached twice (a contact of an owned company and opportunity)
            continue
        seen.add(row[0])
        try:
            records.append(convert(row))
        except BadRow as exc:
            key = make_psa_key(kind if isinstance(kind, Kind) else kind(row), row[0])
            problems.append(ItemError(key, "invalid_row",
                                      f"{table} row {row[0]}: {exc}; the row is skipped until it is fixed"))
    return _Read(records, problems)


@dataclass(frozen=True, slots=True)
class _Query:
    """One read of ``load``: the SQL, and how its rows become records."""

    sql: str
    params: tuple[Any, ...]
    table: str
    kind: Kind | Callable[[tuple[Any, ...]], Kind]
    build: Callable[[tuple[Any, ...]], PsaRecord]
    keep: Callable[[tuple[Any, ...]], bool] | None = None


def _queries(tx: Tx, rid: int | str, kinds: frozenset[Kind], window: Window) -> list[_Query]:
    """What ``load`` (and ``change_token``) read for one resource, kinds and window."""
    since = ts_param(tx.dialect, window.past_start - _MARGIN)
    out = []
    if kinds & {Kind.APPOINTMENT, Kind.IMPORTED}:
        out.append(_Query(f"SELECT {_APPT_COLS} FROM appointments WHERE resource_id = ? "
                          "AND (end_time IS NULL OR end_time >= ?) ORDER BY id", (rid, since),
                          "appointments", _appointment_kind, _appointment))
    if Kind.SERVICE_CALL in kinds:
        out.append(_Query(
            "SELECT sc.id, co.name, sc.description, sc.start_time, sc.end_time, sc.last_modified "
            "FROM service_calls sc JOIN service_call_resources r ON r.service_call_id = sc.id "
            "LEFT JOIN companies co ON co.id = sc.company_id "
            "WHERE r.resource_id = ? AND sc.canceled_time IS NULL "
            "AND (sc.end_time IS NULL OR sc.end_time >= ?) ORDER BY sc.id", (rid, since),
            "service_calls", Kind.SERVICE_CALL, _service_call))
    if Kind.TODO in kinds:
        out.append(_Query(f"SELECT {_TODO_COLS} FROM {_TODO_FROM} WHERE t.assigned_resource_id = ? AND "
                          "(COALESCE(t.end_time, t.start_time) IS NULL "
                          "OR COALESCE(t.end_time, t.start_time) >= ?) ORDER BY t.id", (rid, since),
                          "todos", Kind.TODO, _todo))
    if Kind.CONTACT in kinds:
        out.append(_Query(
            f"SELECT {_CONTACT_COLS} FROM contacts ct LEFT JOIN companies co ON co.id = ct.company_id "
            "WHERE ct.company_id IN (SELECT id FROM companies WHERE owner_resource_id = ?) "
            "OR ct.id IN (SELECT contact_id FROM opportunities WHERE owner_resource_id = ?) "
            "ORDER BY ct.id", (rid, rid), "contacts", Kind.CONTACT,
            lambda row: _contact(row, Kind.CONTACT), keep=lambda r: _flag(r[8], True)))
    return out


# per resource, one fingerprint row per table a resource's load reads (see _queries): what the
# change probe compares
_PROBE_QUERIES = (
    "SELECT resource_id, 'a', COUNT(*), MAX(last_modified), MAX(id) FROM appointments "
    "GROUP BY resource_id",
    "SELECT r.resource_id, 's', COUNT(*), MAX(sc.last_modified), MAX(sc.id) FROM service_calls sc "
    "JOIN service_call_resources r ON r.service_call_id = sc.id GROUP BY r.resource_id",
    "SELECT assigned_resource_id, 't', COUNT(*), MAX(last_modified), MAX(id) FROM todos "
    "GROUP BY assigned_resource_id",
    "SELECT co.owner_resource_id, 'c', COUNT(*), MAX(ct.last_modified), MAX(ct.id) FROM contacts ct "
    "JOIN companies co ON co.id = ct.company_id GROUP BY co.owner_resource_id",
    "SELECT o.owner_resource_id, 'o', COUNT(*), MAX(ct.last_modified), MAX(ct.id), MAX(o.last_modified) "
    "FROM opportunities o JOIN contacts ct ON ct.id = o.contact_id GROUP BY o.owner_resource_id",
)


@dataclass(frozen=True, slots=True)
class _Probe:
    counter: object  # SQLite's change counter when it was taken (None: PostgreSQL)
    prints: dict[str, tuple[tuple[Any, ...], ...]]


# --- attendees of imported meetings ---------------------------------------------------------------


def _attendees_query(rid: int | str) -> tuple[str, tuple[Any, ...]]:
    """The attendees of the resource's imported appointments (PSA-owned ones have none to sync)."""
    return ("SELECT aa.appointment_id, aa.name, aa.email, aa.response FROM appointment_attendees aa "
            "JOIN appointments a ON CAST(a.id AS TEXT) = aa.appointment_id "
            "WHERE a.resource_id = ? AND a.origin = 'exchange' ORDER BY aa.appointment_id", (rid,))


def _attendees_by_row(rows: Iterable[tuple[Any, ...]]) -> dict[str, tuple[Attendee, ...]]:
    found: dict[str, list[Attendee]] = {}
    for appointment_id, name, email, response in rows:
        said = str(response or "unknown").strip().lower()
        found.setdefault(str(appointment_id), []).append(Attendee(
            email=str(email or "").strip(), name=str(name or "").strip(),
            response=said if said in RESPONSES else "unknown"))
    return {k: attendee_list(v) for k, v in found.items()}


def _with_attendees(record: PsaRecord, found: dict[str, tuple[Attendee, ...]]) -> PsaRecord:
    if record.kind is not Kind.IMPORTED or not isinstance(record.payload, Appointment):
        return record
    attendees = found.get(split_psa_key(record.psa_key)[1], ())
    return replace(record, payload=replace(record.payload, attendees=attendees)) if attendees else record


def _write_attendees(tx: Tx, row_id: Any, attendees: Sequence[Attendee]) -> None:
    tx.query("DELETE FROM appointment_attendees WHERE appointment_id = ?", (str(row_id),))
    for a in attendees:
        tx.query("INSERT INTO appointment_attendees (appointment_id, name, email, response) "
                 "VALUES (?, ?, ?, ?)", (str(row_id), _clip(a.name), _clip(a.email), a.response))


# --- the connector ------------------------------------------------------------------------------


class SqlPsa(PsaConnectorBase):
    """``ports.PsaConnector`` over the SQL schema; see the module docstring.

    ``unstored_import_fields``: the SPEC section 7 ``appointments`` table has no location and no
    all-day column, so an imported row cannot keep them (the engine does not ask it to).
    """

    unstored_import_fields: frozenset[str] = frozenset({"location", "is_all_day"})

    def __init__(self, db: Database, *, now: Callable[[], datetime] | None = None,
                 listener: Listener | None = None) -> None:
        self.db = db
        self.now = now or (lambda: datetime.now(UTC))
        self.schema: Schema | None = None
        self._reported: set[str] = set()
        self.listener = listener  # psa.listen_channel (PostgreSQL LISTEN): see psa/listen.py
        self.requests: dict[str, int] = {}  # operation -> transactions (metrics)

    async def open(self) -> Schema:
        """Create the missing tables and inspect the existing ones (once; ``PsaError`` naming the
        table and column that do not fit, ``PsaUnavailable`` when the database cannot be read)."""
        if self.schema is None:
            created = await self.db.run(ensure_schema, write=True)
            if created:
                log.info("PSA tables created", url=self.db.url.shown, tables=created)
            self.schema = await self.db.run(inspect_schema)
        return self.schema

    async def _run(self, op: str, fn: Callable[[Tx], Any], *, write: bool = False) -> Any:
        """One transaction for the operation ``op`` (counted for ``request_counts``)."""
        await self.open()
        self.requests[op] = self.requests.get(op, 0) + 1
        return await self.db.run(fn, write=write)

    def request_counts(self) -> dict[tuple[str, str], int]:
        """("sql", operation) -> transactions since the connector was opened (metrics)."""
        return {("sql", op): n for op, n in self.requests.items()}

    def _id(self, table: str, raw: str) -> int | str | None:
        """A row id as its column wants it: text as given, integers parsed (None: not an id)."""
        if self.schema is not None and table in self.schema.text_ids:
            return raw if raw else None
        return _int_id(raw)

    def _report(self, problems: list[ItemError]) -> list[ItemError]:
        """The skipped rows of one read, each logged once per process."""
        for p in problems:
            if p.message not in self._reported:
                self._reported.add(p.message)
                log.warning("PSA row skipped", key=p.key, problem=p.message)
        return problems

    # -- reading ----------------------------------------------------------------------------------

    async def resource(self, psa_resource: str) -> PsaResource | None:
        await self.open()
        rid = self._id("resources", psa_resource)
        if rid is None:
            return None
        rows = await self._run("resource", lambda tx: tx.query(
            "SELECT id, email, first_name, last_name, is_active FROM resources WHERE id = ?", (rid,)))
        if not rows:
            return None
        _, email, first, last, active = rows[0]
        email = str(email or "")
        name = " ".join(str(p).strip() for p in (first, last) if p and str(p).strip()) or email
        return PsaResource(str(rid), email, name, _flag(active, True))

    async def all_resources(self) -> Sequence[PsaResource]:
        rows = await self._run("resources", lambda tx: tx.query(
            "SELECT id, email, first_name, last_name, is_active FROM resources ORDER BY id"))
        out = []
        for rid, email, first, last, active in rows:
            email = str(email or "").strip()
            name = " ".join(str(p).strip() for p in (first, last) if p and str(p).strip()) or email
            out.append(PsaResource(str(rid), email, name, _flag(active, True)))
        return out

    async def load(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> PsaLoad:
        await self.open()
        rid = self._id("resources", psa_resource)
        if rid is None:
            return PsaLoad([])
        reads: list[_Read] = await self._run("load", lambda tx: self._load(tx, rid, kinds, window))
        records = [r for read in reads for r in read.records]
        skipped = self._report([p for read in reads for p in read.problems
                                if split_psa_key(p.key)[0] in kinds])
        in_window = [r for r in records if r.kind in kinds and window.in_scope(*payload_span(r.payload))]
        return PsaLoad(in_window, skipped)

    async def change_token(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> object:
        """Equal on two calls only if nothing ``load`` reads changed in between (whatever wrote it;
        ``last_modified`` is not trusted). SQLite: the database file's change counter (one
        PRAGMA); PostgreSQL: a hash of the rows the load queries return (no records built).
        Process-local. As the window slides, ``load`` may drop rows the window has passed while
        the token stays equal: the runner follows that itself (``engine.stable_until``)."""
        await self.open()
        rid = self._id("resources", psa_resource)
        if rid is None:
            return ("no resource", psa_resource)

        def run(tx: Tx) -> object:
            counter = tx.change_counter()
            if counter is not None:
                return ("sqlite", counter, rid, kinds)
            reads = [(q.sql, q.params) for q in _queries(tx, rid, kinds, window)]
            if Kind.IMPORTED in kinds:
                reads.append(_attendees_query(rid))
            return hash(tuple((sql, tuple(tx.query(sql, params))) for sql, params in reads))

        return await self._run("change_token", run)

    async def probe_changes(self, cursor: object | None) -> PsaChanges | None:
        """The resources whose rows changed since ``cursor``: one fingerprint per resource and
        table (rows, highest ``last_modified``, highest id: an insert, a delete or an edit that
        bumps ``last_modified``), compared with the last probe's. SQLite skips even that while
        the database file's change counter stands still (one PRAGMA). An edit that leaves
        ``last_modified`` as it was is found by the user's periodic cycle (``change_token``)."""
        await self.open()
        previous = cursor if isinstance(cursor, _Probe) else None

        def run(tx: Tx) -> _Probe:
            counter = tx.change_counter()
            if previous is not None and counter is not None and counter == previous.counter:
                return previous
            prints: dict[str, list[tuple[Any, ...]]] = {}
            for sql in _PROBE_QUERIES:
                for rid, *rest in tx.query(sql):
                    if rid is not None:
                        prints.setdefault(str(rid), []).append(tuple(str(v) for v in rest))
            return _Probe(tx.change_counter(), {r: tuple(v) for r, v in prints.items()})

        now_probe: _Probe = await self._run("probe", run)
        if previous is None:
            return PsaChanges(now_probe, frozenset())
        changed = {r for r in now_probe.prints.keys() | previous.prints.keys()
                   if now_probe.prints.get(r) != previous.prints.get(r)}
        return PsaChanges(now_probe, frozenset(changed))

    def _load(self, tx: Tx, rid: int | str, kinds: frozenset[Kind], window: Window) -> list[_Read]:
        reads = []
        for q in _queries(tx, rid, kinds, window):
            rows = tx.query(q.sql, q.params)
            reads.append(_collect([r for r in rows if q.keep is None or q.keep(r)], q.table, q.kind, q.build))
        if Kind.IMPORTED in kinds:
            sql, params = _attendees_query(rid)
            found = _attendees_by_row(tx.query(sql, params))
            reads = [replace(read, records=[_with_attendees(r, found) for r in read.records])
                     for read in reads]
        return reads

    async def all_contacts(self) -> PsaLoad:
        def run(tx: Tx) -> _Read:
            rows = tx.query(f"SELECT {_CONTACT_COLS} FROM contacts ct "
                            "LEFT JOIN companies co ON co.id = ct.company_id ORDER BY ct.id")
            return _collect([r for r in rows if _flag(r[8], True)], "contacts", Kind.PUBLIC_CONTACT,
                            lambda row: _contact(row, Kind.PUBLIC_CONTACT))

        read: _Read = await self._run("contacts", run)
        return PsaLoad(read.records, self._report(read.problems))

    # -- writing ----------------------------------------------------------------------------------

    async def apply(self, writes: Sequence[PsaWrite]) -> Sequence[PsaRecord | ItemError | None]:
        await self.open()
        out: list[PsaRecord | ItemError | None] = []
        for w in writes:
            out.append(await self._run("write", functools.partial(self._apply_one, write=w), write=True))
        return out

    def _apply_one(self, tx: Tx, write: PsaWrite) -> PsaRecord | ItemError | None:
        w = write
        key = w.psa_key or w.exchange_key or "?"
        try:
            if w.op == "create":
                return self._create(tx, w)
            kind, raw_id = split_psa_key(w.psa_key or "")
            rid = self._id(_TABLE_OF_KIND.get(kind, ""), raw_id)
            if rid is None:
                return ItemError(key, "invalid_write", f"{key!r} is not a key of this PSA")
            if w.op == "delete":
                return self._delete(tx, key, kind, rid)
            if w.op == "update":
                return self._update(tx, w, key, kind, rid)
        except ValueError as exc:  # an unknown kind in the key
            return ItemError(key, "invalid_write", str(exc))
        except BadRow as exc:
            return ItemError(key, "invalid_row", f"written, but the row reads back wrong: {exc}")
        return ItemError(key, "invalid_write", f"unknown PSA write {w.op!r}")

    def _create(self, tx: Tx, w: PsaWrite) -> PsaRecord | ItemError:
        key = w.exchange_key or "?"
        if w.kind is not Kind.IMPORTED or not isinstance(w.payload, Appointment) or not w.exchange_key:
            return ItemError(key, "invalid_write",
                             "only imported appointments (with their Exchange key) are created in the PSA")
        rid = self._id("resources", w.resource or "")
        if rid is None or not tx.query("SELECT 1 FROM resources WHERE id = ?", (rid,)):
            return ItemError(key, "invalid_write",
                             f"PSA resource {w.resource!r} is not in the resources table")
        found = tx.query("SELECT id FROM appointments WHERE origin = 'exchange' AND exchange_uid = ? "
                         "AND resource_id = ? ORDER BY id", (w.exchange_key, rid))
        if found:  # written before, reply lost: rewrite that row instead of adding a duplicate
            row_id = found[0][0]
            self._write_imported(tx, row_id, w.payload, w.exchange_key)
        else:
            row_id = self._insert_imported(tx, rid, w.payload, w.exchange_key)
        _write_attendees(tx, row_id, w.payload.attendees)
        return self._read_appointment(tx, row_id)

    def _insert_imported(self, tx: Tx, rid: int | str, p: Appointment, uid: str) -> Any:
        """The new row's id, as the database holds it (never ``last_insert_rowid()``, which is not
        the id of a table whose key is not the SQLite rowid)."""
        d = tx.dialect
        schema = self.schema or Schema()
        columns = ("resource_id, title, description, start_time, end_time, last_modified, origin, "
                   "exchange_uid, show_as, is_private")
        params: tuple[Any, ...] = (rid, _clip(p.subject), _clip(p.body), ts_param(d, p.start),
                                   ts_param(d, p.end), ts_param(d, self.now()), uid, p.show_as.value,
                                   bool_param(d, p.is_private))
        values = "?, ?, ?, ?, ?, ?, 'exchange', ?, ?, ?"
        if not schema.generated_appointment_id:  # the column makes no id: the connector does
            if "appointments" in schema.text_ids:
                new_id: Any = f"exchanged-{uuid.uuid4().hex}"
            else:
                new_id = int(tx.query("SELECT COALESCE(MAX(id), 0) + 1 FROM appointments")[0][0])
            columns, values, params = f"id, {columns}", f"?, {values}", (new_id, *params)
        return tx.query(f"INSERT INTO appointments ({columns}) VALUES ({values}) RETURNING id", params)[0][0]

    def _write_imported(self, tx: Tx, row_id: Any, p: Appointment, uid: str | None) -> None:
        d = tx.dialect
        tx.query("UPDATE appointments SET title = ?, description = ?, start_time = ?, end_time = ?, "
                 "show_as = ?, is_private = ?, exchange_uid = COALESCE(?, exchange_uid), last_modified = ? "
                 "WHERE id = ?",
                 (_clip(p.subject), _clip(p.body), ts_param(d, p.start), ts_param(d, p.end), p.show_as.value,
                  bool_param(d, p.is_private), uid, ts_param(d, self.now()), row_id))

    def _update(self, tx: Tx, w: PsaWrite, key: str, kind: Kind, rid: int | str) -> PsaRecord | ItemError:
        if kind in (Kind.APPOINTMENT, Kind.IMPORTED):
            rows = tx.query("SELECT origin FROM appointments WHERE id = ?", (rid,))
            if not rows or (str(rows[0][0] or "psa").lower() == "exchange") != (kind is Kind.IMPORTED):
                return ItemError(key, "not_found", "the PSA row no longer exists")
            if not isinstance(w.payload, Appointment):
                return ItemError(key, "invalid_row", "payload type does not match the row")
            if kind is Kind.IMPORTED:
                self._write_imported(tx, rid, w.payload, w.exchange_key)
                _write_attendees(tx, rid, w.payload.attendees)
            else:
                self._set(tx, "appointments", rid, _APPOINTMENT_COLUMNS, w.payload, w.fields)
            return self._read_appointment(tx, rid)
        if kind is Kind.TODO:
            if not tx.query("SELECT 1 FROM todos WHERE id = ?", (rid,)):
                return ItemError(key, "not_found", "the PSA row no longer exists")
            if not isinstance(w.payload, Task):
                return ItemError(key, "invalid_row", "payload type does not match the row")
            self._set(tx, "todos", rid, _TODO_COLUMNS, w.payload, w.fields)
            return _todo(tx.query(f"SELECT {_TODO_COLS} FROM {_TODO_FROM} WHERE t.id = ?", (rid,))[0])
        return ItemError(key, "invalid_write",
                         f"{kind.value} rows are read-only for the sync (the PSA owns them)")

    def _set(self, tx: Tx, table: str, rid: int | str, columns: dict[str, str], payload: Any,
             names: Sequence[str]) -> None:
        d = tx.dialect
        chosen = [(columns[n], getattr(payload, n)) for n in names if n in columns]
        values = [_column_param(d, c, v) for c, v in chosen]
        assignments = "".join(f"{c} = ?, " for c, _ in chosen)
        tx.query(f"UPDATE {table} SET {assignments}last_modified = ? WHERE id = ?",
                 (*values, ts_param(d, self.now()), rid))

    def _delete(self, tx: Tx, key: str, kind: Kind, rid: int | str) -> ItemError | None:
        if kind is not Kind.IMPORTED:
            return ItemError(key, "invalid_write", "only imported rows are deleted by the sync")
        rows = tx.query("SELECT origin FROM appointments WHERE id = ?", (rid,))
        if rows and str(rows[0][0] or "psa").lower() != "exchange":
            return ItemError(key, "invalid_write", "the row belongs to the PSA; the sync never deletes it")
        tx.query("DELETE FROM appointments WHERE id = ? AND origin = 'exchange'", (rid,))
        if not tx.query("SELECT 1 FROM appointments WHERE id = ?", (rid,)):
            tx.query("DELETE FROM appointment_attendees WHERE appointment_id = ?", (str(rid),))
        return None  # deleting what is gone is done

    def _read_appointment(self, tx: Tx, rid: Any) -> PsaRecord:
        record = _appointment(tx.query(f"SELECT {_APPT_COLS} FROM appointments WHERE id = ?", (rid,))[0])
        if record.kind is not Kind.IMPORTED:
            return record
        rows = tx.query("SELECT appointment_id, name, email, response FROM appointment_attendees "
                        "WHERE appointment_id = ?", (str(rid),))
        return _with_attendees(record, _attendees_by_row(rows))

    async def wait_for_change(self) -> None:
        """With ``psa.listen_channel``: return at the next NOTIFY of the PSA's triggers (the daemon
        then probes at once); without one, never (the probe runs on its interval)."""
        if self.listener is None:
            await trio.sleep_forever()
            return
        await self.listener.wait()

    async def aclose(self) -> None:
        if self.listener is not None:
            await self.listener.aclose()
        await self.db.aclose()


_TABLE_OF_KIND = {Kind.APPOINTMENT: "appointments", Kind.IMPORTED: "appointments", Kind.TODO: "todos",
                  Kind.SERVICE_CALL: "service_calls", Kind.CONTACT: "contacts",
                  Kind.PUBLIC_CONTACT: "contacts"}
_APPOINTMENT_COLUMNS = {"subject": "title", "body": "description", "start": "start_time", "end": "end_time",
                        "show_as": "show_as", "is_private": "is_private"}
# a to-do's subject and body are composed (psa/render.py), never written back: only what flows back
_TODO_COLUMNS = {"start": "start_time", "due": "end_time", "completed": "completed_time"}
_TIME_COLUMNS = {"start_time", "end_time", "completed_time"}


def _column_param(dialect: str, column: str, value: Any) -> Any:
    if column in _TIME_COLUMNS:
        return ts_param(dialect, value)
    if isinstance(value, ShowAs):
        return value.value
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, bool):
        return bool_param(dialect, value)
    return value


_UNAVAILABLE_HINT = ("check psa.url and that the database is up and readable by the daemon's user; a new "
                     "SQLite PSA needs an existing file (an empty one is fine: the tables are created)")


def open_sql_connector(url: str, *, now: Callable[[], datetime] | None = None,
                       listen_channel: str | None = None) -> SqlPsa:
    """A connector for ``url`` (connects on first use; every failure is ``PsaUnavailable``);
    ``listen_channel``: PostgreSQL only, LISTEN on it (``wait_for_change``)."""
    try:
        parsed: DbUrl = parse_url(url)
    except UrlError as exc:
        raise errors.PsaError(f"psa.url: {exc}", hint="fix psa.url") from None
    listener = None
    if listen_channel:
        if parsed.dialect != POSTGRES:
            raise errors.PsaError("psa.listen_channel: LISTEN/NOTIFY needs a PostgreSQL psa.url",
                                  hint="remove psa.listen_channel (SQLite changes are probed every "
                                       "sync.psa_poll_seconds)")
        listener = Listener(parsed.target, listen_channel, parsed.shown)
    db = Database(parsed, what="PSA database", create_file=False,
                  fail=lambda msg: errors.PsaUnavailable(msg, hint=_UNAVAILABLE_HINT))
    return SqlPsa(db, now=now, listener=listener)


__all__ = ["MAX_TEXT", "TABLES", "Schema", "SqlPsa", "ensure_schema", "inspect_schema", "open_sql_connector"]
