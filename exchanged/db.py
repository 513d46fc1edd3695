"""One database connection, used from trio: URLs, masking, transactions in a worker thread.

Shared by the state stores and the ``sql`` PSA connector. Both SQLite (``sqlite3``) and
PostgreSQL (psycopg 3) are driven through one small interface, ``Tx.query``, with ``?`` as the
parameter mark (turned into ``%s`` for psycopg), so the SQL of the callers is written once.

Why one connection behind a lock: SQLite allows one writer anyway, and the daemon's state and PSA
traffic is a handful of short transactions per cycle; one connection keeps transactions simple
and ordered. Every call runs in a worker thread (``trio.to_thread.run_sync``) that is never
abandoned on cancellation, so a transaction is always finished (committed or rolled back) before
the connection is used again.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import trio

from exchanged.logs import register_secret

T = TypeVar("T")

SQLITE = "sqlite"
POSTGRES = "postgres"

_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@?#\s]*:)(?P<pw>[^@\s]*)@", re.IGNORECASE)


# every query parameter that carries a secret: libpq's password and sslpassword, and any other
# ...password/...secret/...token/...key=value (sslkey names a file: masking it costs nothing)
_QUERY_PASSWORD = re.compile(
    r"(?P<head>[?&][a-z_]*(?:password|passwd|pwd|secret|token|key)=)(?P<pw>[^&#\s]*)", re.IGNORECASE)


def url_has_secret(url: str) -> bool:
    """True when the URL carries a password (``user:pw@`` or a secret query parameter)."""
    return bool(_PASSWORD.search(url) or _QUERY_PASSWORD.search(url))


def mask_url(url: str) -> str:
    """The URL with its password (``user:pw@``) and every secret parameter (``?password=``,
    ``&sslpassword=``, ...) replaced by ``***``."""
    url = _PASSWORD.sub(lambda m: f"{m.group('head')}***@", url)
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group('head')}***", url)


@dataclass(frozen=True, slots=True)
class DbUrl:
    dialect: str  # SQLITE | POSTGRES
    target: str  # SQLite: a file path or ":memory:"; PostgreSQL: a libpq URL
    shown: str  # the URL with the password masked, for messages

    @property
    def is_memory(self) -> bool:
        return self.dialect == SQLITE and self.target == ":memory:"


class UrlError(ValueError):
    """A database URL this module cannot use (the message names the masked URL)."""


def parse_url(url: str) -> DbUrl:
    """Parse a database URL as SQLAlchemy writes them.

    ``sqlite:////abs/path.db``, ``sqlite:///relative.db``, ``sqlite://`` (in memory),
    ``postgresql://user:pass@host:port/db``, ``postgres://...``, ``postgresql+psycopg://...``.
    """
    shown = mask_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UrlError(f"{shown!r} is not a database URL (sqlite:///path or postgresql://...)")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if rest in ("", "/:memory:", ":memory:"):
            return DbUrl(SQLITE, ":memory:", shown)
        if not rest.startswith("/"):
            raise UrlError(f"{shown!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        path = rest[1:].split("?", 1)[0]
        if not path:
            raise UrlError(f"{shown!r}: the SQLite URL names no file")
        return DbUrl(SQLITE, path, shown)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        match = _PASSWORD.match(url)
        if match and match.group("pw"):
            register_secret(match.group("pw"))
        for found in _QUERY_PASSWORD.finditer(url):
            register_secret(found.group("pw"))
        return DbUrl(POSTGRES, "postgresql://" + rest, shown)
    raise UrlError(f"{shown!r}: unsupported database scheme {scheme!r} (use sqlite:/// or postgresql://)")


class Tx:
    """One open transaction: ``query`` runs a statement and returns its rows (tuples)."""

    def __init__(self, dialect: str, conn: Any) -> None:
        self.dialect = dialect
        self._conn = conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.dialect == SQLITE:
            return list(self._conn.execute(sql, tuple(params)).fetchall())
        with self._conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description is not None else []

    def change_counter(self) -> tuple[int, int, int] | None:
        """SQLite: a value that moves whenever anything is committed to the database file, by this
        connection (``total_changes``) or any other (``PRAGMA data_version``); None elsewhere."""
        if self.dialect != SQLITE:
            return None
        [(version,)] = self._conn.execute("PRAGMA data_version").fetchall()
        return id(self._conn), int(version), int(self._conn.total_changes)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == SQLITE:
            self._conn.executemany(sql, [tuple(r) for r in rows])
            return
        with self._conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])  # type: ignore[arg-type]


def _text(raw: bytes) -> str:
    # invalid UTF-8 in a SQLite text column must not break a whole query: it becomes lone
    # surrogates, which the PSA connector reports as a bad row
    return raw.decode("utf-8", "surrogateescape")


class Database:
    """One connection to ``url``, opened lazily, re-opened after a connection failure.

    ``fail(message)`` builds the exception raised for any database failure (``StateError`` for
    the state store, ``PsaUnavailable`` for the PSA); the message names the masked URL and what
    the database said, never the password.
    """

    def __init__(self, url: DbUrl, *, what: str, fail: Callable[[str], Exception],
                 create_file: bool = True) -> None:
        self.url = url
        self.what = what
        self._fail = fail
        self._create_file = create_file
        self._conn: Any = None
        self._lock = trio.Lock()
        self.closed = False

    @property
    def dialect(self) -> str:
        return self.url.dialect

    # -- connection (worker thread) ---------------------------------------------------------------

    def _connect(self) -> Any:
        if self.url.dialect == SQLITE:
            return self._connect_sqlite()
        import psycopg

        conn = psycopg.connect(self.url.target, autocommit=True, connect_timeout=10,
                               application_name="exchanged")
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def _connect_sqlite(self) -> sqlite3.Connection:
        target = self.url.target
        if target != ":memory:":
            path = Path(target)
            if not path.exists():
                if not self._create_file:
                    raise FileNotFoundError(f"{path} does not exist")
                path.parent.mkdir(parents=True, exist_ok=True)
                # 0600 whatever the umask: the state mirrors every item, private ones included
                # (SQLite gives its -wal and -shm files the mode of the database file)
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=30)
        conn.text_factory = _text
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            if target != ":memory:":
                # WAL + synchronous=FULL: a COMMIT returns only after the WAL is on disk, so a
                # committed batch survives kill -9 and a power cut (NORMAL would survive only kill -9)
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = OFF")
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- transactions -----------------------------------------------------------------------------

    def _transaction(self, fn: Callable[[Tx], T], write: bool) -> T:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        tx = Tx(self.url.dialect, conn)
        if self.url.dialect == SQLITE:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(tx)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            conn.execute("COMMIT")
            return result
        with conn.transaction():
            return fn(tx)

    def _run_sync(self, fn: Callable[[Tx], T], write: bool, idempotent: bool = False) -> T:
        if (not write or idempotent) and self._conn is not None and self.url.dialect == POSTGRES:
            # a read on a connection from an earlier call: if the server went away in between
            # (restart, idle timeout), try once more on a fresh connection. Writes are not
            # repeated (whether a failed COMMIT landed cannot be known here) unless the caller
            # says that doing one twice is the same as doing it once (taking a lease).
            try:
                return self._transaction(fn, write)
            except Exception as exc:
                if not (_is_psycopg_error(exc) and _is_connection_error(exc)):
                    return self._translate(exc)
                self._drop_connection()
        try:
            return self._transaction(fn, write)
        except Exception as exc:
            return self._translate(exc)

    def _translate(self, exc: Exception) -> NoReturn:
        """Database failures become the caller's error type; anything else (a bug) propagates."""
        if isinstance(exc, sqlite3.Error | OSError):
            if isinstance(exc, sqlite3.OperationalError | OSError):
                self._drop_connection()
            raise self._fail(self.describe(exc)) from None
        if _is_psycopg_error(exc):
            if _is_connection_error(exc):
                self._drop_connection()
            raise self._fail(self.describe(exc)) from None
        raise exc

    def describe(self, exc: BaseException) -> str:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{self.what} {self.url.shown}: {mask_url(detail)}"

    async def run(self, fn: Callable[[Tx], T], *, write: bool = False, idempotent: bool = False) -> T:
        """Run ``fn`` in one transaction in a worker thread; commit if it returns, else roll back.

        ``idempotent``: a write that may safely run twice; like a read, it is tried once more on a
        fresh connection when the server dropped the old one.
        """
        if self.closed:
            raise self._fail(f"{self.what} {self.url.shown} is closed")
        async with self._lock:
            return await trio.to_thread.run_sync(self._run_sync, fn, write, idempotent)

    def run_blocking(self, fn: Callable[[Tx], T], *, write: bool = False) -> T:
        """``run`` for synchronous callers outside trio (seeding sample data, tools)."""
        return self._run_sync(fn, write)

    def close_blocking(self) -> None:
        self.closed = True
        self._drop_connection()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            await trio.to_thread.run_sync(self._drop_connection)


def _is_psycopg_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.Error)


def _is_connection_error(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


__all__ = ["POSTGRES", "SQLITE", "Database", "DbUrl", "Tx", "UrlError", "mask_url", "parse_url"]
