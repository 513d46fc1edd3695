"""The real stack for the reliability tests: the daemon process (``python -m exchanged run``), the EWS
test server in this process (TLS), the sql PSA and the state store (SQLite, or PostgreSQL), an SMTP
sink.

A *data set* is a directory holding ``ews/`` (the EWS server's state), ``psa.db`` and ``state.db``;
:func:`copy_data` clones one so that every crash point starts from the same bytes. A PostgreSQL data
set (:func:`pg_data`) keeps its PSA and state in two schemas of a PostgreSQL server instead, named
in its ``pg.json``; :func:`copy_data` clones those schemas (tables, rows, identity counters), and
every helper here reads the data set's URLs from :func:`psa_url` / :func:`state_url`. A *session* is
one daemon lifetime: start, the scheduled first cycle of each user, optionally a manual (full)
cycle, SIGTERM. Every session counts its side effects (``tests.crash``) into its own
step log, which is how the tests know when a cycle ended and what step k was.

Waiting polls with a generous deadline that only guards against hangs; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import trio

from exchanged.model import FolderKind
from exchanged.testing.ews import EwsTestServer
from exchanged.testing.smtp import SmtpSink
from tests.crash import read_log
from tests.daemon.harness import HANG_GUARD_S, DaemonEnv, NotifySocket, rpc, secret_file, wait_until

ALICE, BOB = "alice@example.test", "bob@example.test"
SVC, PASSWORD = "svc-exsync@example.test", "Ews-Pa55word-7f3k"  # distinctive: grepped for in the output
EWS_WRITES = ("CreateItem", "UpdateItem", "DeleteItem", "SendItem", "MoveItem", "CopyItem")
LONG = os.environ.get("EXCHANGED_LONG", "") not in ("", "0")
SESSION_GUARD_S = 120.0  # hang guard for one daemon lifetime; never asserted


def ews_server(data: Path) -> EwsTestServer:
    """The data set's EWS server, without streaming: a pushed cycle after the daemon's own writes
    would add steps at a moment no run repeats."""
    from exchanged.testing.ews.streaming import StreamingLimits

    return EwsTestServer(state_dir=str(data / "ews"), mailboxes=[ALICE, BOB],
                         service_accounts={SVC: PASSWORD}, streaming=StreamingLimits(max_connections=0))


def copy_data(src: Path, dst: Path) -> Path:
    """Clone a data set (the EWS server of ``src`` must be stopped, and no daemon use its databases)."""
    dst.mkdir(parents=True, exist_ok=True)
    if (src / "ews").exists():
        shutil.copytree(src / "ews", dst / "ews", dirs_exist_ok=True)
    for f in src.iterdir():
        if f.name.startswith(("psa.db", "state.db")):
            shutil.copy2(f, dst / f.name)
    pg = _pg_config(src)
    if pg is not None:
        clones = {part: _clone_schema(pg["server"], pg[part], _schema_name(pg["prefix"], part))
                  for part in ("psa", "state") if part in pg}
        (dst / PG_CONFIG).write_text(json.dumps({**pg, **clones}))
    return dst


# --- PostgreSQL data sets ------------------------------------------------------------------------

PG_CONFIG = "pg.json"  # {"server": url, "prefix": name, "psa": schema, "state": schema}


def pg_data(data: Path, server: str, prefix: str, *, psa: bool = True) -> Path:
    """Make ``data`` a PostgreSQL data set: its state (and, with ``psa``, its PSA) in new, empty
    schemas on ``server`` whose names start with ``prefix`` (:func:`drop_pg_schemas` removes them)."""
    import psycopg

    data.mkdir(parents=True, exist_ok=True)
    pg: dict[str, str] = {"server": server, "prefix": prefix}
    with psycopg.connect(server, autocommit=True) as conn:
        for part in ("psa", "state") if psa else ("state",):
            pg[part] = _schema_name(prefix, part)
            conn.execute(f'CREATE SCHEMA "{pg[part]}"')
    (data / PG_CONFIG).write_text(json.dumps(pg))
    return data


def drop_pg_schemas(server: str, prefix: str) -> None:
    """Drop every schema :func:`pg_data` and :func:`copy_data` made with ``prefix``."""
    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                                            (prefix + "_",))]
        for name in names:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _pg_config(data: Path) -> dict[str, str] | None:
    f = data / PG_CONFIG
    return json.loads(f.read_text()) if f.exists() else None


def _schema_name(prefix: str, part: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}_{part}"


def _clone_schema(server: str, src: str, dst: str) -> str:
    """A copy of schema ``src`` as ``dst``: its tables with columns, defaults, constraints, indexes and
    identity columns (``LIKE ... INCLUDING ALL``), their rows, and where each identity counter stands.
    (Enough for the state store's and the sql PSA's schemas: no foreign keys, views or triggers.)"""
    import psycopg

    with psycopg.connect(server) as conn, conn.transaction():
        conn.execute(f'CREATE SCHEMA "{dst}"')
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s "
                                             "ORDER BY tablename", (src,))]
        for table in tables:
            conn.execute(f'CREATE TABLE "{dst}"."{table}" (LIKE "{src}"."{table}" INCLUDING ALL)')
            conn.execute(f'INSERT INTO "{dst}"."{table}" OVERRIDING SYSTEM VALUE '
                         f'SELECT * FROM "{src}"."{table}"')
        identities = conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                                  "WHERE table_schema = %s AND is_identity = 'YES'", (src,)).fetchall()
        for table, column in identities:
            [(old,)] = conn.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                    (f'"{src}"."{table}"', column)).fetchall()
            [(new,)] = conn.execute("SELECT pg_get_serial_sequence(%s, %s)",
                                    (f'"{dst}"."{table}"', column)).fetchall()
            [(last, called)] = conn.execute(f"SELECT last_value, is_called FROM {old}").fetchall()
            conn.execute("SELECT setval(%s, %s, %s)", (new, last, called))
    return dst


def _with_search_path(server: str, schema: str) -> str:
    from tests.conftest import _with_search_path as with_search_path

    return with_search_path(server, schema)


def expire_leases(data: Path) -> int | None:
    """PostgreSQL state: let every lease run out now, as its TTL would after its node died (a node
    that starts again is another node: it waits for the lease like any other); returns how many
    leases were still held. SQLite (no leases kept): None."""
    import psycopg

    pg = _pg_config(data)
    if pg is None or "state" not in pg:
        return None
    with psycopg.connect(state_url(data)) as conn:
        [(held,)] = conn.execute("SELECT COUNT(*) FROM leases WHERE expires_at > now()").fetchall()
        conn.execute("UPDATE leases SET expires_at = now() - interval '1 second'")
    return int(held)


def psa_url(data: Path) -> str:
    pg = _pg_config(data)
    if pg is not None and "psa" in pg:
        return _with_search_path(pg["server"], pg["psa"])
    return f"sqlite:///{data / 'psa.db'}"


def state_url(data: Path) -> str:
    pg = _pg_config(data)
    if pg is not None and "state" in pg:
        return _with_search_path(pg["server"], pg["state"])
    return f"sqlite:///{data / 'state.db'}"


@contextmanager
def _psa_connection(data: Path) -> Iterator[tuple[Any, str]]:
    """A connection to the data set's PSA and its parameter mark; commits on a normal exit."""
    pg = _pg_config(data)
    if pg is not None and "psa" in pg:
        import psycopg

        with psycopg.connect(psa_url(data)) as conn:  # commits on exit, rolls back on an exception
            yield conn, "%s"
        return
    con = sqlite3.connect(data / "psa.db")
    try:
        with con:
            yield con, "?"
    finally:
        con.close()


def ews_writes(server: EwsTestServer) -> int:
    reqs = server.stats()["requests"]
    return sum(reqs.get(op, 0) for op in EWS_WRITES)


@dataclass
class StackEnv(DaemonEnv):
    """``DaemonEnv`` over the real adapters, with the step counter of ``tests.crash``."""

    crash_after: int = 0
    step_log: Path = field(default_factory=lambda: Path("/nonexistent"))
    env_extra: dict[str, str] = field(default_factory=dict)
    marks: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.env_extra)
        return env

    def entry_args(self) -> list[str]:
        return [*super().entry_args(), "--crash-after", str(self.crash_after),
                "--crash-log", str(self.step_log)]

    def steps(self) -> list[tuple[int, str, str]]:
        return read_log(self.step_log)

    def outcomes(self) -> int:
        return sum(1 for _, what, _ in self.steps() if what == "state.record_outcome")

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def make_env(data: Path, server: EwsTestServer, smtp: SmtpSink, name: str, *,
             users: list[dict[str, Any]] | None = None, crash_after: int = 0, **extra: Any) -> StackEnv:
    """A daemon environment on data set ``data`` (its own run directory ``data/name``)."""
    run = data / name
    run.mkdir(parents=True, exist_ok=True)
    env = StackEnv(base=run, smtp=smtp, notify=NotifySocket(run / "n.sock"), memory=False,
                   crash_after=crash_after, step_log=run / "steps.log")
    env.users = users or [{"mailbox": ALICE, "psa_resource": "1"}]
    env.extra = {
        "server": {"address": "localhost", "port": server.port, "version": "Exchange2016",
                   "ca_bundle": server.ca_file},
        "credentials": {"username": SVC, "password_file": secret_file(run / "ews-password", PASSWORD)},
        "psa": {"connector": "sql", "url": psa_url(data)},
        "state": {"url": state_url(data)},
        "sync_interval_minutes": 600,  # only the first user's scheduled cycle and the manual ones run
        # one cycle at a time, and only the cycles a test starts (no hourly-or-sooner PSA probe, no
        # push: ews_server): the steps are numbered alike every run
        "sync": {"max_concurrent_users": 1, "psa_poll_seconds": 3600},
        **extra,
    }
    env.write_config()
    return env


def session(env: StackEnv, manual: list[tuple[list[str], bool]] = (), scheduled: int = 1  # type: ignore[assignment]
            ) -> int:
    """One daemon lifetime: wait for ``scheduled`` scheduled cycles (the first user runs at start,
    the others only after half the interval), then each manual cycle ``(mailboxes, full)`` in turn
    (``sync --wait``), then SIGTERM. ``env.marks`` gets the step count before each manual cycle.
    Returns the exit code (137: the step counter crashed it)."""
    env.start()
    env.marks = []
    try:
        wait_until(lambda: env.died() or env.outcomes() >= scheduled, "the first cycles", SESSION_GUARD_S)
        for mailboxes, full in manual:
            if env.died():
                break
            env.marks.append(len(env.steps()))
            try:
                rpc(env.socket_path, "sync", {"mailboxes": mailboxes, "full": full, "wait": True},
                    timeout=SESSION_GUARD_S)
            except Exception:  # the daemon died mid-call (the crash under test)
                wait_until(env.died, "the daemon's exit after a broken control answer")
        if not env.died():
            env.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert env.proc is not None
        return env.proc.wait(timeout=HANG_GUARD_S)
    finally:
        env.kill()
        env.notify.close()


def writes_after(env: StackEnv, mark: int) -> list[str]:
    """The Exchange and PSA writes after step ``mark`` (state bookkeeping left out)."""
    return [f"{what} {detail}" for k, what, detail in env.steps()
            if k > mark and not what.startswith("state.")]


# --- reading both sides --------------------------------------------------------------------------


def exchange_snapshot(server: EwsTestServer,
                      mailboxes: tuple[str, ...] = (ALICE, BOB)) -> Counter[tuple[Any, ...]]:
    """Every item of the synced folders (read through the adapter, i.e. exchangelib), as a multiset
    of (mailbox, folder, psa key, payload)."""
    from exchanged.exchange import EwsAccount, ExchangeSettings

    settings = ExchangeSettings(address="localhost", port=server.port, ca_bundle=server.ca_file,
                                username=SVC, password=PASSWORD, version="Exchange2016",
                                enabled_mailboxes=mailboxes)

    async def read() -> Counter[tuple[Any, ...]]:
        account = EwsAccount(settings)
        out: Counter[tuple[Any, ...]] = Counter()
        try:
            for mailbox in mailboxes:
                mb = account.mailbox(mailbox)
                for folder in (FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS):
                    async for page in mb.changes(folder, None):
                        for item in page.upserted:
                            out[(mailbox, folder.value, item.psa_key, repr(item.payload))] += 1
        finally:
            await account.aclose()
        return out

    return trio.run(read)


def duplicates(snapshot: Counter[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Items that exist twice: the same PSA key twice in one folder, or two identical foreign items."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for (mailbox, folder, key, payload), n in snapshot.items():
        keys[(mailbox, folder, key or payload)] += n
    return [k for k, n in keys.items() if n > 1]


def psa_snapshot(data: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every PSA table, rows sorted; ``last_modified`` left out, and the ids of imported rows (the
    only rows whose id a run picks)."""
    with _psa_connection(data) as (con, mark):
        if mark == "?":
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        else:
            tables = [r[0] for r in con.execute("SELECT tablename FROM pg_tables "
                                                "WHERE schemaname = current_schema()")]
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table in sorted(tables):
            cur = con.execute(f"SELECT * FROM {table}")
            cols = [d[0] for d in cur.description]
            rows = []
            for row in cur.fetchall():
                rec = dict(zip(cols, row, strict=True))
                rec.pop("last_modified", None)
                if table == "appointments" and rec.get("origin") != "psa":
                    rec.pop("id", None)
                rows.append(tuple(sorted((k, str(v)) for k, v in rec.items())))
            out[table] = sorted(rows)
        return out


def psa_duplicates(data: Path) -> list[tuple[Any, ...]]:
    """Imported appointments that exist twice (same Exchange UID)."""
    with _psa_connection(data) as (con, _):
        return list(con.execute("SELECT resource_id, exchange_uid, COUNT(*) FROM appointments "
                                "WHERE exchange_uid IS NOT NULL GROUP BY resource_id, exchange_uid "
                                "HAVING COUNT(*) > 1").fetchall())


def psa_execute(data: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run statements (``?`` marks the parameters) in one PSA transaction of the data set."""
    with _psa_connection(data) as (con, mark):
        for sql, params in statements:
            con.execute(sql.replace("?", mark), params)


def ts(value: datetime) -> str:
    """A time as the sql connector stores it in SQLite (PostgreSQL reads the same text)."""
    from exchanged.db import SQLITE
    from exchanged.psa.sql import ts_param

    return str(ts_param(SQLITE, value))


@contextmanager
def running(data: Path) -> Iterator[EwsTestServer]:
    server = ews_server(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def with_account(server: EwsTestServer, fn: Any, mailboxes: tuple[str, ...] = (ALICE,)) -> Any:
    """Run ``await fn(account)`` with an adapter account on ``server`` (a user's own edits)."""
    from exchanged.exchange import EwsAccount, ExchangeSettings

    settings = ExchangeSettings(address="localhost", port=server.port, ca_bundle=server.ca_file,
                                username=SVC, password=PASSWORD, version="Exchange2016",
                                enabled_mailboxes=mailboxes)

    async def run() -> Any:
        account = EwsAccount(settings)
        try:
            return await fn(account)
        finally:
            await account.aclose()

    return trio.run(run)


def outlook_edits(server: EwsTestServer, *, create: list[tuple[str, datetime, datetime]] = (),  # type: ignore[assignment]
                  retitle: dict[str, str] | None = None, delete: list[tuple[FolderKind, str]] = ()  # type: ignore[assignment]
                  ) -> None:
    """What a user does in Outlook: new appointments (no PSA key), a PSA item's subject changed,
    PSA items deleted (found by their PSA key)."""
    from exchangelib import CalendarItem

    from exchanged.exchange import convert

    async def edit(account: Any) -> None:
        ews = account.ews_account(ALICE)
        mb = account.mailbox(ALICE)

        def make() -> None:
            for subject, start, end in create:
                CalendarItem(account=ews, folder=ews.calendar, subject=subject, start=convert.to_ews(start),
                             end=convert.to_ews(end)).save(send_meeting_invitations="SendToNone")

        await trio.to_thread.run_sync(make)
        for key, subject in (retitle or {}).items():
            folder = FolderKind.TASKS if key.startswith("todo:") else FolderKind.CALENDAR
            found = (await mb.find_by_psa_keys(folder, [key]))[key]

            def save(item_id: str = found.item_id, subject: str = subject) -> None:
                item = next(iter(ews.fetch(ids=[(item_id, None)], only_fields=["subject"])))
                item.subject = subject
                kwargs = {"send_meeting_invitations": "SendToNone"} if isinstance(item, CalendarItem) else {}
                item.save(update_fields=["subject"], **kwargs)

            await trio.to_thread.run_sync(save)
        for folder, key in delete:
            found = (await mb.find_by_psa_keys(folder, [key]))[key]
            await mb.delete(folder, [found.item_id])

    with_account(server, edit)
