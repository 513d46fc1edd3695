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
"""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
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


def run(sizes: PushSizes) -> None:
    from exchanged.psa.sql import ts_param  # noqa: F401 - imported early: fail before the long run
    from exchanged.push import SAFETY_READ_S
    from exchanged.testing.ews.fixtures import trust_ca

    work = Workdir.make("push")
    mailboxes = [mailbox_name(i) for i in range(sizes.mailboxes)]
    note(f"EWS test server with {sizes.mailboxes} mailboxes (streaming notifications)")
    ews = EwsProcess(work.path / "ews", mailboxes)
    trust_ca(ews.ca_file)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        now = utcnow()
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", mailboxes,
                 {i + 1: 3 for i in range(sizes.mailboxes)}, now)
        config = write_config(work.path, ews, mailboxes,
                              sync={"max_concurrent_users": 8, "psa_poll_seconds": sizes.psa_poll_seconds})
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
        _quiet(sizes, ews, SAFETY_READ_S)
        _exchange_to_psa(sizes, ews, work.path)
        _psa_to_exchange(sizes, ews, work.path, now)
    finally:
        stop_daemon(daemon)
        ews.stop()
        work.remove()


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


def _psa(base: Path, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(base / "psa.db")
    try:
        with con:
            return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _exchange_to_psa(sizes: PushSizes, ews: EwsProcess, base: Path) -> None:
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
        wait_for(lambda i=i, want=want: str(_psa(base, END_OF_FIRST, (i + 1,))[0][0]).startswith(want),
                 f"the edit of {mailbox_name(i)} in the PSA", WATCH_TIMEOUT_S)
        latencies.append(time.monotonic() - t0)
    emit("change_latency_exchange_to_psa_p95_s", p95(latencies), "s", edits=len(latencies),
         mailboxes=sizes.mailboxes, max_s=round(max(latencies), 3),
         median_s=round(sorted(latencies)[len(latencies) // 2], 3), target=5)


def _psa_to_exchange(sizes: PushSizes, ews: EwsProcess, base: Path, now: datetime) -> None:
    from exchanged.db import SQLITE
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
        stamp = ts_param(SQLITE, now + timedelta(minutes=10 + n))
        _psa(base, "UPDATE appointments SET title = ?, last_modified = ? WHERE resource_id = ? "
                   "AND title = 'Appointment 1'", (title, stamp, i + 1))
        t = threading.Thread(target=watch, args=(i, title, time.monotonic()), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(sizes.stagger_s)
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: PSA edits not seen in Exchange: {errors[:3]}")
    emit("change_latency_psa_to_exchange_p95_s", p95(latencies), "s", edits=len(latencies),
         mailboxes=sizes.mailboxes, psa_poll_seconds=sizes.psa_poll_seconds,
         max_s=round(max(latencies), 3), median_s=round(sorted(latencies)[len(latencies) // 2], 3),
         target=sizes.psa_poll_seconds + 5)
