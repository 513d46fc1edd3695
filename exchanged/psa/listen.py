"""PostgreSQL ``LISTEN`` for the ``sql`` PSA (``psa.listen_channel``): triggers on the PSA's tables
``NOTIFY`` the channel, and the daemon's change probe runs at once instead of at its next
``sync.psa_poll_seconds``.

A notification only says "look now": the probe decides which resources changed (a payload is
never trusted), and the periodic probe stays the safety net, so a notification lost while the
listening connection was down costs at most one probe interval.

psycopg's connection blocks, so a worker thread waits on it in slices of ``SLICE_S`` (a cancelled
wait leaves its thread to end with its slice); one thread at a time owns the connection (a lock).
Notifications are counted, and a wait returns when the count passed what the last wait saw: one
that arrived while nobody was waiting (the waiting task had been cancelled) answers the next wait
at once instead of being lost.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import trio

from exchanged import errors
from exchanged.ports import CheckResult

CHANNEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SLICE_S = 10.0
# the tables the change probe reads (psa/sql.py _PROBE_QUERIES): a change to any of them may move
# an item of some resource
TABLES = ("appointments", "service_calls", "service_call_resources", "todos", "contacts", "companies",
          "opportunities")


def trigger_sql(channel: str) -> str:
    """The SQL that makes the PSA's tables ``NOTIFY`` ``channel`` after every statement that
    changes them (docs/OPERATIONS.md gives it; run it once, as the owner of the tables)."""
    if not CHANNEL_RE.match(channel):
        raise ValueError(f"{channel!r} is not a channel name (lower-case letters, digits, _)")
    lines = [
        "CREATE OR REPLACE FUNCTION exchanged_notify() RETURNS trigger LANGUAGE plpgsql AS $$",
        "BEGIN",
        f"  PERFORM pg_notify('{channel}', TG_TABLE_NAME);",
        "  RETURN NULL;",
        "END $$;",
    ]
    for table in TABLES:
        lines += [
            f"DROP TRIGGER IF EXISTS exchanged_notify ON {table};",
            f"CREATE TRIGGER exchanged_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}",
            "  FOR EACH STATEMENT EXECUTE FUNCTION exchanged_notify();",
        ]
    return "\n".join(lines) + "\n"


class Listener:
    """``LISTEN channel`` on a connection of its own; ``wait()`` returns at the next notification."""

    def __init__(self, target: str, channel: str, shown: str) -> None:
        if not CHANNEL_RE.match(channel):
            raise errors.PsaError(f"psa.listen_channel: {channel!r} is not a channel name",
                                  hint="use lower-case letters, digits and _, e.g. exchanged_psa")
        self.channel = channel
        self._target = target
        self._shown = shown
        self._conn: Any = None
        self._lock = threading.Lock()  # held by the one thread using the connection
        self._seen = 0  # notifications received (written by the worker thread only)
        self._taken = 0  # what the last wait returned for (written by trio only)
        self.closed = False

    async def wait(self) -> None:
        """Return at the next notification (at once for one that came since the last return).
        ``PsaUnavailable`` when the database cannot be reached or refuses the LISTEN."""
        while self._seen <= self._taken:
            await trio.to_thread.run_sync(self._wait_slice, SLICE_S, abandon_on_cancel=True)
        self._taken = self._seen

    def _wait_slice(self, slice_s: float) -> None:
        import psycopg

        with self._lock:
            if self.closed or self._seen > self._taken:
                return
            try:
                if self._conn is None:
                    self._conn = self._connect()
                for _ in self._conn.notifies(timeout=slice_s, stop_after=1):
                    self._seen += 1
                if self.closed:  # closed while this thread had the connection
                    self._drop()
            except psycopg.Error as exc:
                self._drop()
                raise errors.PsaUnavailable(
                    f"PSA database {self._shown}: LISTEN {self.channel}: {' '.join(str(exc).split())}",
                    hint="PSA changes are probed every sync.psa_poll_seconds until the database answers",
                ) from None

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(self._target, autocommit=True, connect_timeout=10,
                               application_name="exchanged-listen")
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    async def check(self) -> CheckResult:
        """For ``check-config --connect``: the LISTEN works (else a failure) and the triggers of
        ``trigger_sql`` are on every table the probe reads, notifying this channel (else a warning:
        the daemon still probes every ``sync.psa_poll_seconds``)."""
        return await trio.to_thread.run_sync(self._check_blocking)

    def _check_blocking(self) -> CheckResult:
        import psycopg

        try:
            conn = self._connect()
        except psycopg.Error as exc:
            return CheckResult("psa listen", False,
                               f"{self._shown}: LISTEN {self.channel}: {' '.join(str(exc).split())}")
        try:
            rows = conn.execute(
                "SELECT c.relname, p.prosrc FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgname = 'exchanged_notify' "
                "AND c.relnamespace = ANY (current_schemas(false)::regnamespace[])").fetchall()
        finally:
            conn.close()
        notifying = {str(table) for table, source in rows if f"'{self.channel}'" in str(source)}
        missing = [t for t in TABLES if t not in notifying]
        if missing:
            return CheckResult("psa listen", True, warning=True, message=(
                f"{self._shown}: LISTEN {self.channel} works, but no trigger notifies it on "
                f"{', '.join(missing)}: run the SQL of docs/OPERATIONS.md \"Changes pushed by "
                "PostgreSQL\" for this channel (until then changes wait for sync.psa_poll_seconds)"))
        return CheckResult("psa listen", True,
                           f"{self._shown}: LISTEN {self.channel} works, the triggers notify it")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection may fail to close; it is gone either way
                pass

    async def aclose(self) -> None:
        """Close the connection now if no thread uses it, else when that thread's slice ends."""
        self.closed = True
        if self._lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._lock.release()


__all__ = ["CHANNEL_RE", "SLICE_S", "Listener", "trigger_sql"]
