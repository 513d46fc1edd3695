"""The sql PSA connector beyond the contract: every table's mapping on the sample PSA, the owned
contacts rule, service calls, bad rows, unreachable databases, writes, the factory."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from exchanged import errors
from exchanged.config import SqlPsaConfig
from exchanged.model import Appointment, Contact, ItemError, Kind, PsaRecord, ShowAs, Task, Window
from exchanged.ports import PsaWrite
from exchanged.psa import open_connector
from exchanged.psa.sample import seed_sample
from exchanged.psa.sql import MAX_TEXT, SqlPsa, open_sql_connector, ts_param

ROOT = Path(__file__).resolve().parents[2]

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DAY = NOW.replace(hour=0)
WINDOW = Window(now=NOW, past_start=NOW - timedelta(days=7), recurring_end=NOW + timedelta(days=30))
ALL = frozenset(Kind) - {Kind.PUBLIC_CONTACT}


def at(days: int, hour: float) -> datetime:
    return DAY + timedelta(days=days, hours=hour)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def psa_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'psa.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def sample(psa_url: str) -> AsyncIterator[SqlPsa]:
    assert seed_sample(psa_url, NOW) is True
    assert seed_sample(psa_url, NOW) is False  # a second seeding changes nothing
    psa = open_sql_connector(psa_url, now=lambda: NOW)
    yield psa
    await psa.aclose()


def by_kind(records: Any) -> dict[Kind, dict[str, PsaRecord]]:
    out: dict[Kind, dict[str, PsaRecord]] = {}
    for r in records:
        out.setdefault(r.kind, {})[r.psa_key] = r
    return out


# --- the sample PSA, table by table ---------------------------------------------------------------


async def test_resources(sample: SqlPsa) -> None:
    alice = await sample.resource("1")
    assert alice is not None and (alice.email, alice.name, alice.is_active) == (
        "alice@example.test", "Alice Archer", True)
    carol = await sample.resource("3")
    assert carol is not None and carol.is_active is False
    assert await sample.resource("42") is None and await sample.resource("not-a-number") is None


async def test_alices_records(sample: SqlPsa) -> None:
    loaded = await sample.load("1", ALL, WINDOW)
    records = by_kind(loaded.records)
    assert loaded.skipped == []
    assert set(records) == {Kind.APPOINTMENT, Kind.SERVICE_CALL, Kind.TODO, Kind.CONTACT}
    # appointment 303 ended 20 days ago: out of the window
    assert set(records[Kind.APPOINTMENT]) == {"appointment:300", "appointment:301", "appointment:302"}
    assert records[Kind.APPOINTMENT]["appointment:300"].payload == Appointment(
        "Quarterly review with Contoso", at(1, 9), at(1, 10), body="Agenda:\n- numbers\n- next quarter")
    assert records[Kind.APPOINTMENT]["appointment:300"].last_modified == NOW
    # 402 is canceled; 403 is complete and stays (the time was spent)
    assert set(records[Kind.SERVICE_CALL]) == {"service_call:400", "service_call:403"}
    call = records[Kind.SERVICE_CALL]["service_call:400"].payload
    assert call == Appointment("Service call: Contoso Ltd: Replace the firewall", at(1, 13), at(1, 15),
                               body="Replace the firewall\nOld one fails under load")
    assert set(records[Kind.TODO]) == {"todo:500", "todo:502"}
    # the subject says what to do, the company is below the description (psa/render.py)
    assert records[Kind.TODO]["todo:500"].payload == Task(
        "Call: Call Ann about the renewal", body="Call Ann about the renewal\n\nCompany: Contoso Ltd",
        start=at(1, 10), due=at(1, 10.5))
    assert records[Kind.TODO]["todo:502"].payload.completed == at(-1, 9.75)  # type: ignore[union-attr]
    # owned companies 10 and 12 (103 is inactive) plus 104 through the opportunity Alice owns
    assert set(records[Kind.CONTACT]) == {"contact:100", "contact:101", "contact:104", "contact:105"}
    assert records[Kind.CONTACT]["contact:105"].payload == Contact(
        "José", "Núñez", company="Northwind Traders", job_title="Técnico", email="jose.nunez@northwind.test",
        business_phone="+1 555 0105", mobile_phone="+1 555 1105")


async def test_bobs_records_share_the_service_call(sample: SqlPsa) -> None:
    records = by_kind((await sample.load("2", ALL, WINDOW)).records)
    assert set(records[Kind.SERVICE_CALL]) == {"service_call:400", "service_call:401"}
    assert set(records[Kind.APPOINTMENT]) == {"appointment:304", "appointment:305"}
    private = records[Kind.APPOINTMENT]["appointment:305"].payload
    assert isinstance(private, Appointment) and private.is_private and private.show_as is ShowAs.OOF
    assert set(records[Kind.CONTACT]) == {"contact:102", "contact:104"}
    assert set(records[Kind.TODO]) == {"todo:501"}


async def test_only_the_asked_kinds_are_loaded(sample: SqlPsa) -> None:
    records = (await sample.load("1", frozenset({Kind.TODO}), WINDOW)).records
    assert {r.kind for r in records} == {Kind.TODO}
    assert (await sample.load("3", ALL, WINDOW)).records == []


async def test_all_contacts_are_every_active_contact(sample: SqlPsa) -> None:
    contacts = (await sample.all_contacts()).records
    assert [c.psa_key for c in contacts] == [f"public_contact:{i}" for i in (100, 101, 102, 104, 105)]
    assert all(c.kind is Kind.PUBLIC_CONTACT for c in contacts)


async def test_the_window_moves_with_now(sample: SqlPsa) -> None:
    later = Window(now=NOW + timedelta(days=10), past_start=NOW + timedelta(days=3),
                   recurring_end=NOW + timedelta(days=40))
    records = by_kind((await sample.load("1", ALL, later)).records)
    assert set(records[Kind.APPOINTMENT]) == {"appointment:301"}  # ends at day 3, 15:30
    assert Kind.SERVICE_CALL not in records and Kind.TODO not in records
    assert len(records[Kind.CONTACT]) == 4  # contacts have no time


@pytest.mark.postgres
async def test_postgres_times_are_timestamptz(pg_url: str) -> None:
    import psycopg

    seed_sample(pg_url, NOW)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'appointments' AND column_name LIKE '%time'").fetchall()
    assert dict(rows) == {"start_time": "timestamp with time zone", "end_time": "timestamp with time zone"}


# --- bad rows (SQLite, where anything can be in a column) ---------------------------------------


@pytest.fixture
async def raw(tmp_path: Path) -> AsyncIterator[tuple[sqlite3.Connection, SqlPsa]]:
    url = f"sqlite:///{tmp_path / 'psa.db'}"
    seed_sample(url, NOW)
    conn = sqlite3.connect(tmp_path / "psa.db", isolation_level=None)
    conn.execute("DELETE FROM appointments")
    psa = open_sql_connector(url, now=lambda: NOW)
    yield conn, psa
    await psa.aclose()
    conn.close()


def add(conn: sqlite3.Connection, rid: int, title: Any, start: Any, end: Any, *, description: Any = "",
        origin: str = "psa", uid: str | None = None) -> None:
    conn.execute("INSERT INTO appointments (id, resource_id, title, description, start_time, end_time, "
                 "origin, exchange_uid) VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
                 (rid, title, description, start, end, origin, uid))


async def test_bad_rows_are_skipped_and_reported(raw: tuple[sqlite3.Connection, SqlPsa]) -> None:
    conn, psa = raw
    add(conn, 1, "fine", "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z")
    add(conn, 2, "no start", None, "2026-11-30T10:00:00Z")
    add(conn, 3, "backwards", "2026-11-30T10:00:00Z", "2026-11-30T09:00:00Z")
    add(conn, 4, "garbage time", "next tuesday", "2026-11-30T10:00:00Z")
    add(conn, 5, "huge", "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z", description="x" * (MAX_TEXT + 1))
    add(conn, 6, "no uid", "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z", origin="exchange")
    conn.execute("INSERT INTO appointments (id, resource_id, title, start_time, end_time) VALUES "
                 "(7, 1, CAST(X'41FF42' AS TEXT), '2026-11-30T09:00:00Z', '2026-11-30T10:00:00Z')")
    add(conn, 8, "tab\tand\x0bvertical", "2026-11-30 11:00:00+02:00", "2026-11-30T10:00:00.5Z")
    conn.execute("INSERT INTO contacts (id, company_id, first_name, last_name, is_active) "
                 "VALUES (900, 10, '', NULL, 1)")
    loaded = await psa.load("1", frozenset({Kind.APPOINTMENT, Kind.CONTACT, Kind.IMPORTED}), WINDOW)
    records = {r.psa_key: r for r in loaded.records}
    assert {k for k in records if k.startswith("appointment")} == {"appointment:1", "appointment:8"}
    odd = records["appointment:8"].payload
    assert isinstance(odd, Appointment)
    assert odd.subject == "tab\tandvertical"  # characters XML cannot carry are dropped
    assert odd.start == datetime(2026, 11, 30, 9, tzinfo=UTC)  # offsets are read
    problems = {e.key: e for e in loaded.skipped}
    assert set(problems) == {"appointment:2", "appointment:3", "appointment:4", "appointment:5",
                             "imported:6", "appointment:7", "contact:900"}
    assert all(e.code == "invalid_row" and "skipped" in e.message for e in problems.values())
    assert "start_time is empty" in problems["appointment:2"].message
    assert "before start_time" in problems["appointment:3"].message
    assert "'next tuesday' is not an ISO-8601 time" in problems["appointment:4"].message
    assert "characters" in problems["appointment:5"].message
    assert "exchange_uid" in problems["imported:6"].message
    assert "UTF-8" in problems["appointment:7"].message
    conn.execute("DELETE FROM appointments WHERE id <> 1")
    conn.execute("DELETE FROM contacts WHERE id = 900")
    assert (await psa.load("1", frozenset({Kind.APPOINTMENT}), WINDOW)).skipped == []  # fixed: not reported


async def test_tables_that_exist_are_kept_with_their_data(tmp_path: Path) -> None:
    path = tmp_path / "psa.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE resources (id INTEGER PRIMARY KEY, email TEXT, first_name TEXT, "
                     "last_name TEXT, is_active INTEGER, cost_center TEXT)")
        conn.execute("INSERT INTO resources VALUES (7, 'x@example.test', 'X', 'Y', 1, 'CC1')")
    psa = open_sql_connector(f"sqlite:///{path}")
    assert (await psa.resource("7")) is not None
    assert (await psa.load("7", ALL, WINDOW)).records == []
    await psa.aclose()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert conn.execute("SELECT cost_center FROM resources").fetchall() == [("CC1",)]
    assert {"appointments", "todos", "service_call_resources", "opportunities"} <= tables


# --- unreachable ----------------------------------------------------------------------------------


async def test_a_missing_sqlite_file_is_unavailable_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "psa.db"
    psa = open_sql_connector(f"sqlite:///{path}")
    with pytest.raises(errors.PsaUnavailable) as info:
        await psa.load("1", ALL, WINDOW)
    assert str(path) in info.value.message and "empty one is fine" in info.value.hint
    with pytest.raises(errors.PsaUnavailable):
        await psa.resource("1")
    assert not path.exists() and not path.parent.exists()
    await psa.aclose()


async def test_a_dead_postgres_is_unavailable_and_the_password_is_masked() -> None:
    from exchanged.testing.postgres import free_port

    psa = open_sql_connector(f"postgresql://psa:pw-1a2b3c@127.0.0.1:{free_port()}/psa")
    with pytest.raises(errors.PsaUnavailable) as info:
        await psa.all_contacts()
    assert "pw-1a2b3c" not in info.value.message and "psa:***@127.0.0.1" in info.value.message
    await psa.aclose()


async def test_a_bad_url_names_the_key() -> None:
    with pytest.raises(errors.PsaError, match=r"psa\.url"):
        open_sql_connector("sqlite://relative-without-slashes.db")


# --- writes ---------------------------------------------------------------------------------------


async def test_a_create_after_a_lost_reply_rewrites_the_row_instead_of_adding_one(sample: SqlPsa) -> None:
    first = Appointment("Lunch", at(2, 12), at(2, 13), show_as=ShowAs.TENTATIVE, is_private=True)
    def create(resource: str) -> PsaWrite:
        return PsaWrite("create", Kind.IMPORTED, None, first, exchange_key="UID-1", resource=resource)

    [a] = await sample.apply([create("1")])
    [b] = await sample.apply([create("1")])
    assert isinstance(a, PsaRecord) and isinstance(b, PsaRecord) and a.psa_key == b.psa_key
    assert a.payload == first and a.last_modified == NOW
    imported = (await sample.load("1", frozenset({Kind.IMPORTED}), WINDOW)).records
    assert [r.psa_key for r in imported] == [a.psa_key]
    [c] = await sample.apply([create("2")])
    assert isinstance(c, PsaRecord) and c.psa_key != a.psa_key  # another user's copy of a meeting
    assert int(a.psa_key.split(":")[1]) > 305  # numbered after the sample's ids


async def test_an_imported_body_too_long_for_a_row_is_cut_and_reads_back(sample: SqlPsa) -> None:
    long = Appointment("Offsite", at(2, 9), at(2, 17), body="agenda " * MAX_TEXT)
    [rec] = await sample.apply([PsaWrite("create", Kind.IMPORTED, None, long, exchange_key="U-long",
                                         resource="1")])
    assert isinstance(rec, PsaRecord) and isinstance(rec.payload, Appointment)
    assert len(rec.payload.body) == MAX_TEXT and rec.payload.body.endswith("…")
    loaded = await sample.load("1", frozenset({Kind.IMPORTED}), WINDOW)
    assert [r.psa_key for r in loaded.records] == [rec.psa_key]
    assert loaded.skipped == []


async def test_writes_the_psa_refuses(sample: SqlPsa) -> None:
    appt = Appointment("x", at(1, 9), at(1, 10))
    results = await sample.apply([
        PsaWrite("create", Kind.IMPORTED, None, appt, exchange_key="U", resource="42"),
        PsaWrite("create", Kind.APPOINTMENT, None, appt, exchange_key="U", resource="1"),
        PsaWrite("update", Kind.SERVICE_CALL, "service_call:400", appt, fields=("start",)),
        PsaWrite("update", Kind.IMPORTED, "imported:300", appt, fields=("start",)),  # a PSA row
        PsaWrite("delete", Kind.IMPORTED, "imported:300", None),
        PsaWrite("update", Kind.TODO, "todo:500", appt, fields=("start",)),
        PsaWrite("update", Kind.TODO, "todo:x", Task("x"), fields=("start",)),
        PsaWrite("rename", Kind.TODO, "todo:500", Task("x")),
    ])
    assert all(isinstance(r, ItemError) for r in results), results
    codes = [r.code for r in results if isinstance(r, ItemError)]
    assert codes == ["invalid_write", "invalid_write", "invalid_write", "not_found", "invalid_write",
                     "invalid_row", "invalid_write", "invalid_write"]
    assert "42" in results[0].message  # type: ignore[union-attr]
    records = by_kind((await sample.load("1", ALL, WINDOW)).records)
    assert records[Kind.APPOINTMENT]["appointment:300"].payload.start == at(1, 9)  # type: ignore[union-attr]


async def test_todo_flow_back_writes_only_the_named_fields(sample: SqlPsa) -> None:
    moved = Task("renamed in Outlook", body="new body", start=at(2, 8), due=at(3, 8), completed=at(1, 12))
    [rec] = await sample.apply([PsaWrite("update", Kind.TODO, "todo:500", moved,
                                         fields=("start", "due", "completed"))])
    assert isinstance(rec, PsaRecord)
    assert rec.payload == Task("Call: Call Ann about the renewal",
                               body="Call Ann about the renewal\n\nCompany: Contoso Ltd", start=at(2, 8),
                               due=at(3, 8), completed=at(1, 12))
    assert rec.last_modified == NOW
    [back] = await sample.apply([PsaWrite("update", Kind.TODO, "todo:500", Task("x"), fields=("completed",))])
    assert isinstance(back, PsaRecord) and back.payload.completed is None  # type: ignore[union-attr]


# --- the factory ----------------------------------------------------------------------------------


async def test_the_factory_opens_the_sql_connector(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'psa.db'}"
    seed_sample(url, NOW)
    psa = await open_connector(SqlPsaConfig(url=url))
    assert isinstance(psa, SqlPsa)
    assert (await psa.resource("2")) is not None
    await psa.aclose()


async def test_the_factory_hands_autotask_to_its_connector(monkeypatch: pytest.MonkeyPatch) -> None:
    import exchanged.psa.autotask as autotask

    seen: list[Any] = []
    def fake_open(cfg: Any) -> str:
        seen.append(cfg)
        return "connector"

    monkeypatch.setattr(autotask, "open_autotask", fake_open)

    class Cfg:
        connector = "autotask"

    cfg = Cfg()
    assert await open_connector(cfg) == "connector"
    assert seen == [cfg]


async def test_the_factory_refuses_an_unknown_connector() -> None:
    class Cfg:
        connector = "salesforce"

    with pytest.raises(errors.PsaError, match="salesforce"):
        await open_connector(Cfg())


ALL_KINDS = frozenset({Kind.APPOINTMENT, Kind.IMPORTED, Kind.SERVICE_CALL, Kind.TODO, Kind.CONTACT})


async def test_the_change_token_moves_with_every_change_load_would_see(
        raw: tuple[sqlite3.Connection, SqlPsa]) -> None:
    """The runner skips load and plan while the token is unchanged, so the token must see every
    change of what load returns, also those that do not touch last_modified (a company renamed,
    a service call reassigned, a row edited by hand), and nothing else."""
    conn, psa = raw
    add(conn, 1, "fine", "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z")
    token = await psa.change_token("1", ALL_KINDS, WINDOW)
    await psa.load("1", ALL_KINDS, WINDOW)  # reading changes nothing
    assert await psa.change_token("1", ALL_KINDS, WINDOW) == token
    changes = [
        "UPDATE appointments SET title = 'edited by hand' WHERE id = 1",
        "UPDATE companies SET name = name || ' Ltd' WHERE id IN (SELECT company_id FROM service_calls)",
        "DELETE FROM service_call_resources WHERE resource_id = 1 AND service_call_id = "
        "(SELECT MIN(service_call_id) FROM service_call_resources WHERE resource_id = 1)",
        "UPDATE todos SET completed_time = '2026-11-29T11:00:00Z' WHERE assigned_resource_id = 1",
        "UPDATE contacts SET is_active = 0 WHERE id = (SELECT MIN(id) FROM contacts)",
        "DELETE FROM appointments WHERE id = 1",
    ]
    for sql in changes:
        before = (await psa.load("1", ALL_KINDS, WINDOW)).records
        assert conn.execute(sql).rowcount > 0, sql
        after = (await psa.load("1", ALL_KINDS, WINDOW)).records
        assert after != before, sql  # each change is one load sees...
        new = await psa.change_token("1", ALL_KINDS, WINDOW)
        assert new != token, sql  # ...and so does the token
        token = new
    assert await psa.change_token("2", ALL_KINDS, WINDOW) != token
    assert await psa.change_token("1", frozenset({Kind.TODO}), WINDOW) != token
    [todo] = ((await psa.load("1", frozenset({Kind.TODO}), WINDOW)).records)[:1]
    assert isinstance(todo.payload, Task)
    written = await psa.apply([PsaWrite("update", Kind.TODO, todo.psa_key, Task(
        todo.payload.subject, todo.payload.body, todo.payload.start, todo.payload.due, completed=None),
        ("completed",))])  # the connector's own write (flow-back) counts as well
    assert isinstance(written[0], PsaRecord)
    assert await psa.change_token("1", ALL_KINDS, WINDOW) != token


async def test_the_change_token_works_on_both_databases(sample: SqlPsa) -> None:
    token = await sample.change_token("1", ALL_KINDS, WINDOW)
    assert await sample.change_token("1", ALL_KINDS, WINDOW) == token
    [todo] = [r for r in (await sample.load("1", frozenset({Kind.TODO}), WINDOW)).records][:1]
    assert isinstance(todo.payload, Task)
    [done] = await sample.apply([PsaWrite("update", Kind.TODO, todo.psa_key,
                                          Task(todo.payload.subject, todo.payload.body, todo.payload.start,
                                               todo.payload.due, completed=NOW), ("completed",))])
    assert isinstance(done, PsaRecord)
    assert await sample.change_token("1", ALL_KINDS, WINDOW) != token


# --- existing tables of another shape ---------------------------------------------------------------

TEXT_ID_TABLES = [
    "CREATE TABLE resources (id TEXT PRIMARY KEY, email TEXT, first_name TEXT, last_name TEXT, "
    "is_active BOOLEAN)",
    "CREATE TABLE appointments (id TEXT PRIMARY KEY{default}, resource_id TEXT, title TEXT, "
    "description TEXT, start_time {ts}, end_time {ts}, last_modified {ts}, origin TEXT, "
    "exchange_uid TEXT, show_as TEXT, is_private BOOLEAN)",
]


@pytest.mark.parametrize("generated", [False, True], ids=["connector-ids", "database-ids"])
async def test_tables_with_text_ids_are_read_and_written(psa_url: str, generated: bool) -> None:
    if psa_url.startswith("sqlite:///"):
        Path(psa_url.removeprefix("sqlite:///")).touch()  # noqa: ASYNC240 - an existing (empty) SQLite PSA
    psa = open_sql_connector(psa_url, now=lambda: NOW)
    dialect = "sqlite" if psa_url.startswith("sqlite") else "postgres"
    ts = "TEXT" if dialect == "sqlite" else "TIMESTAMPTZ"
    default = ("" if not generated else " DEFAULT (lower(hex(randomblob(8))))" if dialect == "sqlite"
               else " DEFAULT gen_random_uuid()::text")
    start = at(1, 9)

    def setup(tx: Any) -> None:
        for ddl in TEXT_ID_TABLES:
            tx.query(ddl.format(default=default, ts=ts))
        tx.query("INSERT INTO resources VALUES ('R-7', 'r7@example.test', 'R', 'Seven', TRUE)")
        tx.query("INSERT INTO appointments (id, resource_id, title, description, start_time, end_time, "
                 "last_modified, origin, exchange_uid, show_as, is_private) VALUES ('A-1', 'R-7', "
                 "'Visit', '', ?, ?, ?, 'psa', NULL, 'busy', FALSE)",
                 (ts_param(tx.dialect, start), ts_param(tx.dialect, start + timedelta(hours=1)),
                  ts_param(tx.dialect, NOW)))

    await psa.db.run(setup, write=True)
    try:
        resource = await psa.resource("R-7")
        assert resource is not None and resource.email == "r7@example.test"
        [owned] = (await psa.load("R-7", frozenset({Kind.APPOINTMENT}), WINDOW)).records
        assert owned.psa_key == "appointment:A-1"
        meeting = Appointment("Imported", at(2, 10), at(2, 11))
        [created] = await psa.apply([PsaWrite("create", Kind.IMPORTED, None, meeting,
                                              exchange_key="UID-T", resource="R-7")])
        assert isinstance(created, PsaRecord), created  # not the rowid of another row
        assert created.payload == meeting and created.exchange_key == "UID-T"
        imported = (await psa.load("R-7", frozenset({Kind.IMPORTED}), WINDOW)).records
        assert [r.psa_key for r in imported] == [created.psa_key]
        moved = Appointment("Imported", at(3, 10), at(3, 11))
        [updated] = await psa.apply([PsaWrite("update", Kind.IMPORTED, created.psa_key, moved,
                                              exchange_key="UID-T", resource="R-7")])
        assert isinstance(updated, PsaRecord) and updated.payload == moved
        [flowed] = await psa.apply([PsaWrite("update", Kind.APPOINTMENT, "appointment:A-1",
                                             replace(owned.payload, subject="Visit moved"),
                                             fields=("subject",), resource="R-7")])
        assert isinstance(flowed, PsaRecord) and flowed.payload.subject == "Visit moved"  # type: ignore[union-attr]
        assert await psa.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None,
                                         resource="R-7")]) == [None]
        assert (await psa.load("R-7", frozenset({Kind.IMPORTED}), WINDOW)).records == []
    finally:
        await psa.aclose()


async def test_a_table_without_a_needed_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "psa.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE appointments (id INTEGER PRIMARY KEY, resource_id INTEGER, title TEXT, "
                     "description TEXT, start_time TEXT, end_time TEXT, last_modified TEXT, origin TEXT)")
    psa = open_sql_connector(f"sqlite:///{path}")
    try:
        with pytest.raises(errors.PsaError) as info:
            await psa.load("1", ALL, WINDOW)
        assert "table appointments has no column exchange_uid, show_as, is_private" in info.value.message
        assert not isinstance(info.value, errors.PsaUnavailable)
    finally:
        await psa.aclose()


# --- the change probe (sync.psa_poll_seconds) -------------------------------------------------------


def _execute(psa_url: str, sql: str, params: tuple[Any, ...]) -> None:
    """A write by another program (the PSA itself), on its own connection."""
    if psa_url.startswith("sqlite"):
        with sqlite3.connect(psa_url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql, params)
        return
    import psycopg

    with psycopg.connect(psa_url) as conn:
        conn.execute(sql.replace("?", "%s"), params)


async def test_the_change_probe_names_the_resources_whose_rows_changed(sample: SqlPsa, psa_url: str) -> None:
    first = await sample.probe_changes(None)
    assert first is not None and first.resources == frozenset()  # the baseline
    quiet = await sample.probe_changes(first.cursor)
    assert quiet is not None and quiet.resources == frozenset()
    later = ts_param("sqlite", NOW + timedelta(minutes=5)) if psa_url.startswith("sqlite") else \
        NOW + timedelta(minutes=5)
    _execute(psa_url, "UPDATE appointments SET title = 'moved', last_modified = ? WHERE id = 300", (later,))
    moved = await sample.probe_changes(quiet.cursor)
    assert moved is not None and moved.resources == frozenset({"1"})  # alice's only
    _execute(psa_url, "DELETE FROM todos WHERE assigned_resource_id = 2", ())
    gone = await sample.probe_changes(moved.cursor)
    assert gone is not None and gone.resources == frozenset({"2"})
    again = await sample.probe_changes(gone.cursor)
    assert again is not None and again.resources == frozenset()


# --- PostgreSQL LISTEN/NOTIFY (psa.listen_channel) ----------------------------------------------------


@pytest.mark.postgres
async def test_a_notify_of_the_documented_triggers_wakes_the_waiting_daemon(pg_url: str) -> None:
    """The triggers docs/OPERATIONS.md gives make any change NOTIFY the channel; ``wait_for_change``
    returns then (the daemon probes at once), and a notification that came while nobody waited is
    not lost. Without a notification it keeps waiting."""
    import psycopg

    from exchanged.psa.listen import trigger_sql

    channel = f"exchanged_{uuid.uuid4().hex[:8]}"  # NOTIFY channels are per database, not per schema
    assert seed_sample(pg_url, NOW) is True
    sql_text = trigger_sql(channel)
    assert sql_text.replace(channel, "exchanged_psa") in (ROOT / "docs" / "OPERATIONS.md").read_text()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql_text)
    psa = open_sql_connector(pg_url, now=lambda: NOW, listen_channel=channel)
    try:
        with trio.move_on_after(1.5) as quiet:
            await psa.wait_for_change()
        assert quiet.cancelled_caught  # nothing changed: it waits (and is LISTENing now)
        _execute(pg_url, "UPDATE todos SET description = 'Call back at 3' WHERE id = 500", ())
        with trio.fail_after(30):  # a hang guard: the NOTIFY wakes it at once
            await psa.wait_for_change()
        _execute(pg_url, "DELETE FROM contacts WHERE id = 105", ())
        await trio.sleep(2)  # nobody waits while it arrives
        with trio.fail_after(30):
            await psa.wait_for_change()
    finally:
        await psa.aclose()


def test_listen_needs_postgresql(tmp_path: Path) -> None:
    with pytest.raises(errors.PsaError, match=r"needs a PostgreSQL psa\.url"):
        open_sql_connector(f"sqlite:///{tmp_path / 'psa.db'}", listen_channel="exchanged_psa")


@pytest.mark.postgres
async def test_a_listen_that_fails_is_a_clear_error(pg_url: str) -> None:
    bad = pg_url.replace("postgres@", "nobody-here@")
    psa = open_sql_connector(bad, listen_channel="exchanged_psa")
    try:
        with pytest.raises(errors.PsaUnavailable) as info, trio.fail_after(30):
            await psa.wait_for_change()
        assert "LISTEN exchanged_psa" in str(info.value) and "nobody-here" in str(info.value)
    finally:
        await psa.aclose()


@pytest.mark.postgres
async def test_check_config_connect_checks_the_listen_and_names_tables_without_the_trigger(
        pg_url: str) -> None:
    import psycopg

    from exchanged.psa.listen import Listener, trigger_sql

    assert seed_sample(pg_url, NOW) is True
    listener = Listener(pg_url, "exchanged_psa", "the PSA")
    before = await listener.check()
    assert before.ok and before.warning and "appointments, service_calls" in before.message, before
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(trigger_sql("exchanged_psa"))
        conn.execute("DROP TRIGGER exchanged_notify ON todos")
    partly = await listener.check()
    assert partly.warning and "notifies it on todos:" in partly.message, partly
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(trigger_sql("exchanged_psa"))
    done = await listener.check()
    assert done.ok and not done.warning and "the triggers notify it" in done.message, done
    other = await Listener(pg_url, "another_channel", "the PSA").check()
    assert other.warning, other  # the triggers notify exchanged_psa, not this channel
    refused = await Listener(pg_url.replace("postgres@", "nobody-here@"), "exchanged_psa", "the PSA").check()
    assert not refused.ok and "LISTEN exchanged_psa" in refused.message, refused
