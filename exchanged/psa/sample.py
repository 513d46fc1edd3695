"""A small sample PSA for `exchanged demo` and the tests, in the ``sql`` connector's schema.

Two working resources (alice@example.test = 1, bob@example.test = 2) and an inactive one; three
companies with account managers; contacts (one inactive); an opportunity that gives Alice a
contact of Bob's company; PSA appointments in and out of the window; service calls (one shared by
Alice and Bob, one canceled, one completed); to-dos (one completed). Times are relative to ``now``
so that the demo always has something in the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from exchanged.db import POSTGRES, Database, Tx, parse_url
from exchanged.psa.sql import TABLES, bool_param, ensure_schema, ts_param

ALICE, BOB, CAROL = 1, 2, 3


def _rows(now: datetime) -> dict[str, list[dict[str, Any]]]:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def at(days: int, hour: float) -> datetime:
        return day + timedelta(days=days, hours=hour)

    return {
        "resources": [
            {"id": ALICE, "email": "alice@example.test", "first_name": "Alice", "last_name": "Archer",
             "is_active": True},
            {"id": BOB, "email": "bob@example.test", "first_name": "Bob", "last_name": "Baker",
             "is_active": True},
            {"id": CAROL, "email": "carol@example.test", "first_name": "Carol", "last_name": "Clark",
             "is_active": False},
        ],
        "companies": [
            {"id": 10, "name": "Contoso Ltd", "owner_resource_id": ALICE},
            {"id": 11, "name": "Fabrikam Inc", "owner_resource_id": BOB},
            {"id": 12, "name": "Northwind Traders", "owner_resource_id": ALICE},
        ],
        "contacts": [
            _contact(100, 10, "Ann", "Smith", "ann.smith@contoso.test", "CEO", now),
            _contact(101, 10, "Dan", "Lee", "dan.lee@contoso.test", "IT manager", now),
            _contact(102, 11, "Eve", "Fox", "eve.fox@fabrikam.test", "Buyer", now),
            _contact(103, 12, "Gus", "Hill", "gus.hill@northwind.test", "Owner", now, active=False),
            _contact(104, 11, "Ida", "Moss", "ida.moss@fabrikam.test", "CFO", now),
            _contact(105, 12, "José", "Núñez", "jose.nunez@northwind.test", "Técnico", now),
        ],
        "opportunities": [
            {"id": 200, "company_id": 11, "contact_id": 104, "owner_resource_id": ALICE,
             "title": "Fabrikam server refresh", "status": "active", "last_modified": now},
        ],
        "appointments": [
            _appt(300, ALICE, "Quarterly review with Contoso", "Agenda:\n- numbers\n- next quarter",
                  at(1, 9), at(1, 10), now),
            _appt(301, ALICE, "Site visit Northwind", "Bring the rack diagram", at(3, 14), at(3, 15.5), now),
            _appt(302, ALICE, "Kick-off Fabrikam", "", at(-2, 10), at(-2, 11), now),
            _appt(303, ALICE, "Old workshop (out of the window)", "", at(-20, 9), at(-20, 17), now),
            _appt(304, BOB, "Fabrikam onboarding", "", at(1, 11), at(1, 12), now),
            _appt(305, BOB, "Doctor", "", at(2, 8), at(2, 9), now, private=True, show_as="oof"),
        ],
        "service_calls": [
            {"id": 400, "company_id": 10, "description": "Replace the firewall\nOld one fails under load",
             "start_time": at(1, 13), "end_time": at(1, 15), "status": "scheduled", "is_complete": False,
             "canceled_time": None, "last_modified": now},
            {"id": 401, "company_id": 11, "description": "Backup check", "start_time": at(2, 9),
             "end_time": at(2, 10), "status": "scheduled", "is_complete": False, "canceled_time": None,
             "last_modified": now},
            {"id": 402, "company_id": 12, "description": "Printer (canceled)", "start_time": at(2, 13),
             "end_time": at(2, 14), "status": "canceled", "is_complete": False, "canceled_time": now,
             "last_modified": now},
            {"id": 403, "company_id": 10, "description": "Password reset", "start_time": at(-1, 9),
             "end_time": at(-1, 9.5), "status": "complete", "is_complete": True, "canceled_time": None,
             "last_modified": now},
        ],
        "service_call_resources": [
            {"service_call_id": 400, "resource_id": ALICE}, {"service_call_id": 400, "resource_id": BOB},
            {"service_call_id": 401, "resource_id": BOB}, {"service_call_id": 402, "resource_id": ALICE},
            {"service_call_id": 403, "resource_id": ALICE},
        ],
        "todos": [
            _todo(500, ALICE, 10, 100, "Call", "Call Ann about the renewal", at(1, 10), at(1, 10.5), None,
                  now),
            _todo(501, BOB, 11, 104, "Email", "Send Fabrikam the quote", at(2, 9), at(2, 17), None, now),
            _todo(502, ALICE, 12, 103, "Follow-up", "Northwind invoice", at(-1, 9), at(-1, 10),
                  at(-1, 9.75), now),
        ],
    }


def _contact(cid: int, company: int, first: str, last: str, email: str, title: str, now: datetime,
             active: bool = True) -> dict[str, Any]:
    return {"id": cid, "company_id": company, "first_name": first, "last_name": last, "email_address": email,
            "phone": f"+1 555 0{cid}", "mobile_phone": f"+1 555 1{cid}", "title": title, "is_active": active,
            "last_modified": now}


def _appt(aid: int, rid: int, title: str, desc: str, start: datetime, end: datetime, now: datetime,
          private: bool = False, show_as: str = "busy") -> dict[str, Any]:
    return {"id": aid, "resource_id": rid, "title": title, "description": desc, "start_time": start,
            "end_time": end, "last_modified": now, "origin": "psa", "exchange_uid": None, "show_as": show_as,
            "is_private": private}


def _todo(tid: int, rid: int, company: int, contact: int, action: str, desc: str, start: datetime,
          end: datetime, done: datetime | None, now: datetime) -> dict[str, Any]:
    return {"id": tid, "assigned_resource_id": rid, "company_id": company, "contact_id": contact,
            "action_type": action, "description": desc, "start_time": start, "end_time": end,
            "completed_time": done, "last_modified": now}


def insert_rows(tx: Tx, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (dicts of column -> Python value) with the dialect's time and bool forms."""
    for row in rows:
        values = [ts_param(tx.dialect, v) if isinstance(v, datetime)
                  else bool_param(tx.dialect, v) if isinstance(v, bool) else v for v in row.values()]
        tx.query(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", values)


def _bump_sequences(tx: Tx) -> None:
    # explicit ids do not move PostgreSQL's identity sequences: move them past the sample
    for table, columns in TABLES.items():
        if columns.startswith("id "):
            tx.query(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                     f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")


def seed_sample(url: str, now: datetime) -> bool:
    """Create the schema and the sample rows in the PSA database at ``url``.

    Returns False (and changes nothing) when the database already has resources.
    """
    db = Database(parse_url(url), what="PSA database", fail=RuntimeError)

    def run(tx: Tx) -> bool:
        ensure_schema(tx)
        if tx.query("SELECT 1 FROM resources"):
            return False
        for table, rows in _rows(now).items():
            insert_rows(tx, table, rows)
        if tx.dialect == POSTGRES:
            _bump_sequences(tx)
        return True

    try:
        return db.run_blocking(run, write=True)
    finally:
        db.close_blocking()


__all__ = ["ALICE", "BOB", "CAROL", "insert_rows", "seed_sample"]
