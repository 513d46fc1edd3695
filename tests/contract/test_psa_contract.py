"""The PsaConnector contract: every connector (memory twin, sql on SQLite and PostgreSQL, ...).

To add a connector, write a function that yields a ``PsaHarness`` (the connector plus ways to put
rows into its PSA and to make the PSA unreachable) and add it to ``IMPLEMENTATIONS``. Harness
capabilities that a PSA lacks may be None; the tests that need them are skipped for it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchanged import errors
from exchanged.db import Database, Tx, parse_url
from exchanged.model import Appointment, Contact, ItemError, Kind, PsaRecord, Task, Window, make_psa_key
from exchanged.ports import PsaConnector, PsaWrite
from exchanged.psa.sample import insert_rows
from exchanged.psa.sql import ensure_schema, open_sql_connector
from tests.memory import MemoryPsa

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = Window(now=NOW, past_start=NOW - timedelta(days=7), recurring_end=NOW + timedelta(days=30))
JANE, BOB = "29682885", "29682886"


@dataclass
class PsaHarness:
    psa: PsaConnector
    add_appointment: Callable[[str, Appointment], str]
    add_todo: Callable[[str, Task], str]
    go_away: Callable[[], None]
    # a contact of a company the resource owns
    add_contact: Callable[[str, Contact], str] | None = None
    # a service call assigned to these resources, between start and end
    add_service_call: Callable[[Sequence[str], datetime, datetime], str] | None = None
    # an appointment of the resource that cannot be synced (no start, or the end before the start)
    add_bad_appointment: Callable[[str], str] | None = None


# --- implementations ----------------------------------------------------------------------------


def _rows_by_kind(data: Any, psa: PsaConnector, go_away: Callable[[], None],
                  bad: Callable[[str], str] | None = None) -> PsaHarness:
    """A harness whose rows go in through ``data.add(kind, payload, resources)`` (the memory PSA and
    the Autotask test server's store alike), with the contract's resources."""
    for rid in (JANE, BOB):
        data.add_resource(rid, f"{rid}@example.test", f"Resource {rid}")

    def service_call(resources: Sequence[str], start: datetime, end: datetime) -> str:
        key: str = data.add(Kind.SERVICE_CALL, Appointment("Service call", start, end), resources)
        return key

    return PsaHarness(psa, lambda r, p: data.add(Kind.APPOINTMENT, p, [r]),
                      lambda r, t: data.add(Kind.TODO, t, [r]), go_away,
                      lambda r, c: data.add(Kind.CONTACT, c, [r]), service_call, bad)


@asynccontextmanager
async def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PsaHarness]:
    psa = MemoryPsa(now=lambda: NOW)

    def go_away() -> None:
        psa.unavailable = True

    yield _rows_by_kind(psa, psa, go_away, lambda r: psa.add_bad(Kind.APPOINTMENT, [r]))


class SqlRows:
    """Puts rows into a sql PSA through a connection of its own (as the PSA application would)."""

    def __init__(self, url: str) -> None:
        self.db = Database(parse_url(url), what="test PSA", fail=RuntimeError)
        self._ids = itertools.count(1000)
        self.db.run_blocking(self._seed, write=True)

    def _seed(self, tx: Tx) -> None:
        ensure_schema(tx)
        insert_rows(tx, "resources", [{"id": int(r), "email": f"{r}@example.test", "first_name": "Resource",
                                       "last_name": r, "is_active": True} for r in (JANE, BOB)])

    def insert(self, table: str, **row: Any) -> int:
        row = {"id": next(self._ids), **row}
        self.db.run_blocking(lambda tx: insert_rows(tx, table, [row]), write=True)
        return int(row["id"])

    def appointment(self, resource: str, p: Appointment) -> str:
        rid = self.insert("appointments", resource_id=int(resource), title=p.subject, description=p.body,
                          start_time=p.start, end_time=p.end, last_modified=NOW, origin="psa",
                          show_as=p.show_as.value, is_private=p.is_private)
        return f"appointment:{rid}"

    def bad_appointment(self, resource: str) -> str:
        start = NOW + timedelta(days=1)
        rid = self.insert("appointments", resource_id=int(resource), title="Backwards", description="",
                          start_time=start, end_time=start - timedelta(hours=1), last_modified=NOW,
                          origin="psa", show_as="busy", is_private=False)
        return f"appointment:{rid}"

    def todo(self, resource: str, t: Task) -> str:
        rid = self.insert("todos", assigned_resource_id=int(resource), action_type=t.subject,
                          description=t.body, start_time=t.start, end_time=t.due, completed_time=t.completed,
                          last_modified=NOW)
        return f"todo:{rid}"

    def contact(self, resource: str, c: Contact) -> str:
        company = self.insert("companies", name=c.company, owner_resource_id=int(resource))
        rid = self.insert("contacts", company_id=company, first_name=c.given_name, last_name=c.surname,
                          email_address=c.email, phone=c.business_phone, mobile_phone=c.mobile_phone,
                          title=c.job_title, is_active=True, last_modified=NOW)
        return f"contact:{rid}"

    def service_call(self, resources: Sequence[str], start: datetime, end: datetime) -> str:
        rid = self.insert("service_calls", company_id=None, description="Service call", start_time=start,
                          end_time=end, status="new", is_complete=False, last_modified=NOW)
        links = [{"service_call_id": rid, "resource_id": int(r)} for r in resources]
        self.db.run_blocking(lambda tx: insert_rows(tx, "service_call_resources", links), write=True)
        return f"service_call:{rid}"

    def close(self) -> None:
        self.db.close_blocking()


def point_at_nothing(psa: Any, url: str) -> None:
    """Make a sql connector's database unreachable from its next call on."""
    psa.db._drop_connection()
    psa.db.url = parse_url(url)


@asynccontextmanager
async def _sql(url: str, dead_url: str) -> AsyncIterator[PsaHarness]:
    rows = SqlRows(url)
    psa = open_sql_connector(url, now=lambda: NOW)
    try:
        yield PsaHarness(psa, rows.appointment, rows.todo, lambda: point_at_nothing(psa, dead_url),
                         rows.contact, rows.service_call, rows.bad_appointment)
    finally:
        await psa.aclose()
        rows.close()


@asynccontextmanager
async def _sql_sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PsaHarness]:
    async with _sql(f"sqlite:///{tmp_path / 'psa.db'}", f"sqlite:///{tmp_path / 'gone' / 'psa.db'}") as h:
        yield h


@asynccontextmanager
async def _sql_postgres(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PsaHarness]:
    from exchanged.testing.postgres import free_port

    dead = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/psa"
    async with _sql(request.getfixturevalue("pg_url"), dead) as h:
        yield h


@asynccontextmanager
async def _autotask(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[PsaHarness]:
    # the Autotask connector against the bundled Autotask REST test server (real HTTPS, loopback)
    from exchanged.psa.autotask import mapping as m
    from exchanged.testing.autotask import AutotaskServer
    from tests.autotask.conftest import CODE, SECRET, USER, base_seed, make_connector

    with AutotaskServer(api_user=(USER, SECRET, CODE), seed=base_seed()) as server:
        psa = make_connector(server, max_attempts=2)

        def bad(resource: str) -> str:
            row = server.store.put("Appointments", {"resourceID": int(resource), "title": "No start",
                                                    "endDateTime": m.format_time(NOW + timedelta(days=1))})
            return make_psa_key(Kind.APPOINTMENT, row["id"])

        try:
            yield _rows_by_kind(server.psa, psa, server.stop, bad)
        finally:
            await psa.aclose()


IMPLEMENTATIONS = [
    pytest.param(_memory, id="memory"),
    pytest.param(_autotask, id="autotask"),
    pytest.param(_sql_sqlite, id="sql-sqlite"),
    pytest.param(_sql_postgres, id="sql-postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=IMPLEMENTATIONS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PsaHarness]:
    async with request.param(tmp_path, request) as found:
        yield found


# --- helpers ------------------------------------------------------------------------------------


def appt(days: float, subject: str = "Visit", body: str = "") -> Appointment:
    start = NOW + timedelta(days=days)
    return Appointment(subject=subject, start=start, end=start + timedelta(hours=1), body=body)


def keys(records: Any) -> set[str]:
    return {r.psa_key for r in records}


def dates(task: Any) -> tuple[datetime | None, ...]:
    assert isinstance(task, Task)
    return task.start, task.due, task.completed


ALL_BUT_PUBLIC = frozenset(Kind) - {Kind.PUBLIC_CONTACT}


# --- the contract -------------------------------------------------------------------------------


async def test_resources_are_found_by_their_psa_id(harness: PsaHarness) -> None:
    found = await harness.psa.resource(JANE)
    assert found is not None and found.psa_resource == JANE and found.is_active
    assert "@" in found.email
    assert await harness.psa.resource("999999999") is None


async def test_load_returns_the_resources_rows_in_the_window(harness: PsaHarness) -> None:
    mine = harness.add_appointment(JANE, appt(1, body="notes"))
    future = harness.add_appointment(JANE, appt(200))
    recent = harness.add_appointment(JANE, appt(-6.5))  # ended after now - past_days
    harness.add_appointment(JANE, appt(-10))  # ended before the window
    harness.add_appointment(BOB, appt(1))
    records = (await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)).records
    assert keys(records) == {mine, future, recent}
    assert all(r.kind is Kind.APPOINTMENT for r in records)
    assert {r.psa_key: r.payload for r in records}[mine] == appt(1, body="notes")
    assert (await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)).records == []
    assert (await harness.psa.load(JANE, frozenset(), WINDOW)).records == []


async def test_todos_load_with_their_dates(harness: PsaHarness) -> None:
    task = Task("Call", body="Call Ann", start=NOW + timedelta(days=1), due=NOW + timedelta(days=2))
    key = harness.add_todo(JANE, task)
    done = harness.add_todo(JANE, replace(task, completed=NOW))
    harness.add_todo(JANE, replace(task, start=NOW - timedelta(days=20), due=NOW - timedelta(days=19)))
    harness.add_todo(BOB, task)
    records = {r.psa_key: r for r in (await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)).records}
    assert set(records) == {key, done}
    assert records[key].kind is Kind.TODO
    # how a PSA names its to-dos differs (an action type, a description): the dates may not
    assert dates(records[key].payload) == (task.start, task.due, None)
    assert dates(records[done].payload) == (task.start, task.due, NOW)


async def test_a_service_call_is_loaded_for_every_assigned_resource(harness: PsaHarness) -> None:
    if harness.add_service_call is None:
        pytest.skip("this PSA harness cannot add service calls")
    start = NOW + timedelta(days=1)
    key = harness.add_service_call([JANE, BOB], start, start + timedelta(hours=2))
    for resource in (JANE, BOB):
        [rec] = (await harness.psa.load(resource, frozenset({Kind.SERVICE_CALL}), WINDOW)).records
        assert rec.kind is Kind.SERVICE_CALL and rec.psa_key == key
        assert isinstance(rec.payload, Appointment)
        assert (rec.payload.start, rec.payload.end) == (start, start + timedelta(hours=2))
    assert (await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)).records == []


async def test_owned_contacts_and_all_contacts(harness: PsaHarness) -> None:
    if harness.add_contact is None:
        pytest.skip("this PSA harness cannot add contacts")
    ann = Contact("Ann", "Smith", company="Contoso", email="ann@contoso.test", business_phone="+1 555")
    eve = Contact("Eve", "Fox", company="Fabrikam", job_title="Buyer")
    mine = harness.add_contact(JANE, ann)
    theirs = harness.add_contact(BOB, eve)
    [rec] = (await harness.psa.load(JANE, frozenset({Kind.CONTACT}), WINDOW)).records
    assert (rec.kind, rec.psa_key, rec.payload) == (Kind.CONTACT, mine, ann)
    public = {r.psa_key: r for r in (await harness.psa.all_contacts()).records}
    public_keys = [k.replace("contact:", "public_contact:") for k in (mine, theirs)]
    assert set(public) == set(public_keys)
    assert all(r.kind is Kind.PUBLIC_CONTACT for r in public.values())
    assert public[public_keys[1]].payload == eve


async def test_imported_rows_round_trip_with_their_exchange_key(harness: PsaHarness) -> None:
    payload = appt(2, subject="Lunch", body="with Bob")
    [created] = await harness.psa.apply(
        [PsaWrite("create", Kind.IMPORTED, None, payload, exchange_key="UID-9", resource=JANE)])
    assert isinstance(created, PsaRecord)
    assert (created.kind, created.payload, created.exchange_key) == (Kind.IMPORTED, payload, "UID-9")
    assert created.psa_key.startswith("imported:")
    assert list((await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records) == [created]
    assert (await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)).records == []
    assert (await harness.psa.load(BOB, frozenset({Kind.IMPORTED}), WINDOW)).records == []
    changed = replace(payload, subject="Lunch moved", start=payload.start + timedelta(hours=1),
                      end=payload.end + timedelta(hours=1))
    [updated] = await harness.psa.apply([PsaWrite("update", Kind.IMPORTED, created.psa_key, changed,
                                                  fields=("subject", "start", "end"), exchange_key="UID-9")])
    assert isinstance(updated, PsaRecord) and updated.payload == changed
    assert list((await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records) == [updated]
    assert list(await harness.psa.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])) == [None]
    assert (await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records == []
    [again] = await harness.psa.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])
    assert again is None  # deleting what is gone is done


async def test_psa_owned_rows_change_only_in_the_named_fields(harness: PsaHarness) -> None:
    key = harness.add_appointment(JANE, appt(1, subject="Visit"))
    moved = replace(appt(1, subject="renamed in Outlook"), start=appt(3).start, end=appt(3).end)
    [rec] = await harness.psa.apply(
        [PsaWrite("update", Kind.APPOINTMENT, key, moved, fields=("start", "end"))])
    assert isinstance(rec, PsaRecord) and rec.payload == replace(moved, subject="Visit")
    read = await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)
    loaded = {r.psa_key: r for r in read.records}
    assert loaded[key].payload == replace(moved, subject="Visit")
    todo = harness.add_todo(JANE, Task("Call", body="Call", start=appt(1).start, due=appt(1).end))
    done = Task("Call", body="Call", start=appt(1).start, due=appt(1).end, completed=NOW)
    [t] = await harness.psa.apply([PsaWrite("update", Kind.TODO, todo, done, fields=("completed",))])
    assert isinstance(t, PsaRecord) and isinstance(t.payload, Task) and t.payload.completed == NOW
    tasks = {r.psa_key: r for r in (await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)).records}
    assert dates(tasks[todo].payload) == dates(done)


async def test_psa_owned_rows_are_never_deleted_and_missing_rows_are_item_errors(harness: PsaHarness) -> None:
    key = harness.add_appointment(JANE, appt(1))
    todo = harness.add_todo(JANE, Task("Call", start=NOW, due=NOW + timedelta(hours=1)))
    results = await harness.psa.apply([
        PsaWrite("delete", Kind.APPOINTMENT, key, None),
        PsaWrite("delete", Kind.TODO, todo, None),
        PsaWrite("update", Kind.APPOINTMENT, "appointment:987654", appt(1), fields=("start",)),
    ])
    assert all(isinstance(r, ItemError) for r in results)
    assert [r.key for r in results if isinstance(r, ItemError)] == [key, todo, "appointment:987654"]
    assert key in keys((await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)).records)
    assert todo in keys((await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)).records)


async def test_one_bad_write_does_not_stop_the_others(harness: PsaHarness) -> None:
    key = harness.add_appointment(JANE, appt(1))
    results = await harness.psa.apply([
        PsaWrite("delete", Kind.APPOINTMENT, key, None),
        PsaWrite("create", Kind.IMPORTED, None, appt(2), exchange_key="UID-1", resource=JANE),
    ])
    assert isinstance(results[0], ItemError) and isinstance(results[1], PsaRecord)


async def test_an_unreachable_psa_raises_and_never_looks_empty(harness: PsaHarness) -> None:
    harness.add_appointment(JANE, appt(1))
    harness.go_away()
    with pytest.raises(errors.PsaUnavailable):
        await harness.psa.load(JANE, ALL_BUT_PUBLIC, WINDOW)
    with pytest.raises(errors.PsaUnavailable):
        await harness.psa.all_contacts()
    with pytest.raises(errors.PsaUnavailable):
        await harness.psa.apply([PsaWrite("create", Kind.IMPORTED, None, appt(2), exchange_key="U",
                                          resource=JANE)])


__all__ = ["IMPLEMENTATIONS", "NOW", "WINDOW", "PsaHarness"]


async def test_a_row_that_cannot_be_synced_is_skipped_and_reported_by_the_load_that_read_it(
    harness: PsaHarness,
) -> None:
    if harness.add_bad_appointment is None:
        pytest.skip("this PSA harness cannot hold a bad row")
    good = harness.add_appointment(JANE, appt(1))
    bad = harness.add_bad_appointment(JANE)
    harness.add_appointment(BOB, appt(1))
    loaded = await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)
    assert keys(loaded.records) == {good}
    [skipped] = loaded.skipped
    assert skipped.key == bad and skipped.code == "invalid_row" and skipped.message
    assert (await harness.psa.load(BOB, frozenset({Kind.APPOINTMENT}), WINDOW)).skipped == []
    assert (await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)).skipped == []  # not in the kinds


async def test_concurrent_loads_each_report_only_their_own_skipped_rows(harness: PsaHarness) -> None:
    """One connector serves several users' cycles at once (the daemon runs them concurrently)."""
    import trio

    if harness.add_bad_appointment is None:
        pytest.skip("this PSA harness cannot hold a bad row")
    bad = harness.add_bad_appointment(JANE)
    for n in range(3):
        harness.add_appointment(JANE, appt(n + 1))
        harness.add_appointment(BOB, appt(n + 1))
    for _ in range(3):
        got: dict[str, list[str]] = {}

        async def one(resource: str, into: dict[str, list[str]]) -> None:
            loaded = await harness.psa.load(resource, frozenset({Kind.APPOINTMENT}), WINDOW)
            into[resource] = [e.key for e in loaded.skipped]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, JANE, got)
            nursery.start_soon(one, BOB, got)
        assert got == {JANE: [bad], BOB: []}


async def test_the_optional_members_have_their_typed_defaults(harness: PsaHarness) -> None:
    """Every connector answers the optional members of the port (``PsaConnectorBase`` gives the
    defaults): nobody probes for them."""
    psa = harness.psa
    assert isinstance(psa.unstored_import_fields, frozenset)
    assert all(isinstance(f, str) for f in psa.unstored_import_fields)
    harness.add_appointment(JANE, appt(1))
    kinds = frozenset({Kind.APPOINTMENT})
    first = await psa.change_token(JANE, kinds, WINDOW)
    assert await psa.change_token(JANE, kinds, WINDOW) == first  # nothing changed in between
    if first is not None:  # a connector with tokens: a change shows
        harness.add_appointment(JANE, appt(2))
        assert await psa.change_token(JANE, kinds, WINDOW) != first
    budget = psa.budget_status()
    assert budget is None or isinstance(budget, dict)
    assert all(isinstance(k, tuple) and isinstance(n, int) for k, n in psa.request_counts().items())
    assert all(isinstance(n, int) for n in psa.throttle_waits().values())
