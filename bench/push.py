"""Pushed changes (issue 17): the real daemon (``exchanged run``) with N mailboxes on the EWS test
server (its own process, streaming notifications on), the sql PSA in SQLite, the SQLite state.

Figures:
- ``quiet_mailbox_ews_requests_per_hour``: after every mailbox is pushed and settled, EWS requests
  counted at the server over ``quiet_minutes`` (at least one sync interval, so every mailbox has
  its scheduled cycle in it), per mailbox and hour; plus, stated separately and added, the hourly
  safety read (``push.SAFETY_READ_S``: one SyncFolderItems per folder an hour), which a window
  shorter than an hour may not contain. Polling's figure: 3 folders x 6 cycles = 18 an hour.
- ``change_latency_exchange_to_psa_p95_s``: an appointment edited with exchangelib (as Outlook)
  until the PSA row shows it, ``edits`` mailboxes one after the other.
- ``change_latency_psa_to_exchange_p95_s``: a PSA row edited (title, ``last_modified``) until the
  Exchange item shows it, ``edits`` edits started ``stagger_s`` apart and watched together.
- ``change_latency_psa_to_exchange_listen_p95_s`` (``run_listen``): the same PSA edits with the sql
  PSA in PostgreSQL (a throw-away server), the triggers docs/OPERATIONS.md gives and
  ``psa.listen_channel`` set, the probe at its slowest (``psa_poll_seconds`` 3600): each edit's
  NOTIFY wakes the daemon, so the time is the debounce plus one cycle.
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    PASSWORD,
    SERVICE_ACCOUNT,
    EwsProcess,
    Workdir,
    delta,
    emit,
    mailbox_name,
    note,
    seed_psa,
    stop_daemon,
    utcnow,
    wait_for,
    write_config,
)
from bench.node import _answers, _sync_all, rpc

START_TIMEOUT_S = 120.0
WATCH_TIMEOUT_S = 300.0  # a change not seen by then is a failed run, never a figure
POLLING_REQUESTS_PER_HOUR = 18  # 3 SyncFolderItems every 10 minutes
END_OF_FIRST = "SELECT end_time FROM appointments WHERE resource_id = ? AND title = 'Appointment 0'"


@dataclass(frozen=True)
class PushSizes:
    mailboxes: int
    quiet_minutes: float
    edits: int
    stagger_s: float = 1.5
    psa_poll_seconds: int = 30


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Psa:
    """The bench's PSA database: ``execute`` takes ``?`` placeholders for SQLite and PostgreSQL."""

    url: str

    @property
    def dialect(self) -> str:
        from exchanged.db import POSTGRES, SQLITE

        return SQLITE if self.url.startswith("sqlite") else POSTGRES

    def execute(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.url.startswith("sqlite"):
            con = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            try:
                with con:
                    return con.execute(sql, params).fetchall()
            finally:
                con.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params) if params else conn.execute(sql)
            return cur.fetchall() if cur.description else []


def run(sizes: PushSizes) -> None:
    """Polling's PSA probe (SQLite): the quiet figure and both latencies."""
    from exchanged.push import SAFETY_READ_S

    work = Workdir.make("push")
    psa = Psa(f"sqlite:///{work.path / 'psa.db'}")
    try:
        settings = {"connector": "sql", "url": psa.url}
        with _daemon(sizes, work, psa, settings, sizes.psa_poll_seconds) as (ews, now):
            _quiet(sizes, ews, SAFETY_READ_S)
            _exchange_to_psa(sizes, ews, psa)
            _psa_to_exchange(sizes, ews, psa, now, "change_latency_psa_to_exchange_p95_s",
                             psa_poll_seconds=sizes.psa_poll_seconds, target=sizes.psa_poll_seconds + 5)
    finally:
        work.remove()


def run_listen(sizes: PushSizes) -> None:
    """The PSA in PostgreSQL with LISTEN/NOTIFY: PSA -> Exchange without waiting for a probe."""
    from exchanged.psa.listen import trigger_sql
    from exchanged.testing.postgres import throwaway_postgres

    work = Workdir.make("push-listen")
    channel = "exchanged_psa"
    try:
        note("a throw-away PostgreSQL for the PSA")
        with throwaway_postgres() as url:
            psa = Psa(url)
            settings = {"connector": "sql", "url": url, "listen_channel": channel}
            with _daemon(sizes, work, psa, settings, 3600, before_start=lambda: psa.execute(
                    trigger_sql(channel), ())) as (ews, now):
                _psa_to_exchange(sizes, ews, psa, now, "change_latency_psa_to_exchange_listen_p95_s",
                                 psa_poll_seconds=3600, listen_channel=channel, target=5)
    finally:
        work.remove()


@contextmanager
def _daemon(sizes: PushSizes, work: Workdir, psa: Psa, psa_settings: dict[str, Any], psa_poll_seconds: int,
            before_start: Any = None) -> Iterator[tuple[EwsProcess, datetime]]:
    """``exchanged run`` with ``sizes.mailboxes`` mailboxes (3 PSA appointments each) on the EWS
    test server, every mailbox pushed, exported, and settled (the cycles of its own writes run)."""
    from exchanged.psa.sql import ts_param  # noqa: F401 - imported early: fail before the long run
    from exchanged.testing.ews.fixtures import trust_ca

    mailboxes = [mailbox_name(i) for i in range(sizes.mailboxes)]
    note(f"EWS test server with {sizes.mailboxes} mailboxes (streaming notifications)")
    ews = EwsProcess(work.path / "ews", mailboxes)
    trust_ca(ews.ca_file)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        now = utcnow()
        seed_psa(psa.url, mailboxes, {i + 1: 3 for i in range(sizes.mailboxes)}, now)
        if before_start is not None:
            before_start()
        config = write_config(work.path, ews, mailboxes, psa=psa_settings,
                              sync={"max_concurrent_users": 8, "psa_poll_seconds": psa_poll_seconds})
        sock = work.path / "control.sock"
        log = (work.path / "daemon.log").open("ab")
        daemon = subprocess.Popen([sys.executable, "-m", "exchanged", "run", "--config", str(config)],
                                  stdout=log, stderr=log)
        wait_for(lambda: daemon.poll() is not None or _answers(sock), "the daemon's control socket",
                 START_TIMEOUT_S)
        note("waiting until every mailbox is pushed")
        wait_for(lambda: all(u.get("push") == "pushed" for u in rpc(sock, "status")["users"]),
                 "every mailbox pushed", START_TIMEOUT_S)
        note("first cycles (exchangectl sync --wait), then one more: settled")
        _sync_all(sock)
        _sync_all(sock)
        time.sleep(10)  # the notifications of the daemon's own writes make one cycle each: let them run
        wait_for(lambda: rpc(sock, "status")["running"] == 0, "no cycle running", START_TIMEOUT_S)
        yield ews, now
    finally:
        stop_daemon(daemon)
        ews.stop()


def _quiet(sizes: PushSizes, ews: EwsProcess, safety_read_s: float) -> None:
    note(f"{sizes.quiet_minutes} quiet minutes: requests counted at the server")
    before = ews.requests()
    t0 = time.monotonic()
    time.sleep(sizes.quiet_minutes * 60)
    hours = (time.monotonic() - t0) / 3600
    ops = delta(ews.requests(), before)
    measured = sum(ops.values()) / sizes.mailboxes / hours
    safety = 3 * 3600 / safety_read_s  # one SyncFolderItems per folder per SAFETY_READ_S
    emit("quiet_mailbox_ews_requests_per_hour", measured + safety, "requests/h", mailboxes=sizes.mailboxes,
         window_minutes=sizes.quiet_minutes, measured_in_window_per_hour=round(measured, 3),
         hourly_safety_read=safety, requests_by_operation=ops, interval_minutes=10,
         polling_per_hour=POLLING_REQUESTS_PER_HOUR, target=POLLING_REQUESTS_PER_HOUR / 3)


def _account(ews: EwsProcess, mailbox: str) -> Any:
    from exchangelib import IMPERSONATION, Account, Configuration, Credentials

    config = Configuration(service_endpoint=ews.url, credentials=Credentials(SERVICE_ACCOUNT, PASSWORD),
                           auth_type="basic")
    return Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


def _exchange_to_psa(sizes: PushSizes, ews: EwsProcess, psa: Psa) -> None:
    note(f"{sizes.edits} Outlook edits, one after the other, until the PSA shows each")
    latencies = []
    step = max(1, sizes.mailboxes // sizes.edits)
    for n in range(sizes.edits):
        i = (n * step) % sizes.mailboxes
        acc = _account(ews, mailbox_name(i))
        [item] = [a for a in acc.calendar.all().only("subject", "start", "end")
                  if a.subject == "Appointment 0"]
        item.end = item.end + timedelta(minutes=5)
        item.save(update_fields=["end"], send_meeting_invitations="SendToNone")
        want = datetime.fromtimestamp(item.end.timestamp(), UTC).strftime("%Y-%m-%dT%H:%M")
        t0 = time.monotonic()
        wait_for(lambda i=i, want=want: str(psa.execute(END_OF_FIRST, (i + 1,))[0][0]).startswith(want),
                 f"the edit of {mailbox_name(i)} in the PSA", WATCH_TIMEOUT_S)
        latencies.append(time.monotonic() - t0)
    emit("change_latency_exchange_to_psa_p95_s", p95(latencies), "s", edits=len(latencies),
         mailboxes=sizes.mailboxes, max_s=round(max(latencies), 3),
         median_s=round(sorted(latencies)[len(latencies) // 2], 3), target=5)


def _psa_to_exchange(sizes: PushSizes, ews: EwsProcess, psa: Psa, now: datetime, figure: str,
                     target: float, **inputs: Any) -> None:
    from exchanged.psa.sql import ts_param

    note(f"{sizes.edits} PSA edits, {sizes.stagger_s} s apart, until Exchange shows each")
    latencies: list[float] = []
    errors: list[str] = []
    step = max(1, sizes.mailboxes // sizes.edits)
    lock = threading.Lock()

    def watch(i: int, title: str, t0: float) -> None:
        try:
            acc = _account(ews, mailbox_name(i))
            deadline = t0 + WATCH_TIMEOUT_S
            while time.monotonic() < deadline:
                if any(a.subject == title for a in acc.calendar.all().only("subject")):
                    with lock:
                        latencies.append(time.monotonic() - t0)
                    return
                time.sleep(0.5)
            errors.append(f"{mailbox_name(i)}: {title!r} not in Exchange after {WATCH_TIMEOUT_S:.0f} s")
        except Exception as exc:  # handed to the main thread
            errors.append(f"{mailbox_name(i)}: {exc}")

    threads = []
    for n in range(sizes.edits):
        i = (n * step + step // 2) % sizes.mailboxes
        title = f"Moved in the PSA {n}"
        stamp = ts_param(psa.dialect, now + timedelta(minutes=10 + n))
        psa.execute("UPDATE appointments SET title = ?, last_modified = ? WHERE resource_id = ? "
                   "AND title = 'Appointment 1'", (title, stamp, i + 1))
        t = threading.Thread(target=watch, args=(i, title, time.monotonic()), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(sizes.stagger_s)
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: PSA edits not seen in Exchange: {errors[:3]}")
    emit(figure, p95(latencies), "s", edits=len(latencies), mailboxes=sizes.mailboxes, **inputs,
         max_s=round(max(latencies), 3), median_s=round(sorted(latencies)[len(latencies) // 2], 3),
         target=target)
