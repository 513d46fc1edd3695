"""Soak run (bench, not CI): the daemon with many users against the EWS test server for a while,
with background edits and faults, sampling the daemon's RSS, open file descriptors and threads.

    .venv/bin/python -m bench.soak --users 500 --minutes 60 [--sample-s 30] [--edit-s 5]
                                   [--fault-s 20] [--manual-s 120]

A flat profile is the target: after the first full round of cycles the samples should level off.
Output: one JSON object per sample on stdout (``{"name": "soak_sample", ...}``), then a summary
(first / last / max of each figure over the second half of the run, and its growth); progress on
stderr. The EWS server runs in its own process (bench/common.py), so its memory is never counted.

What happens meanwhile:
* every ``--edit-s``: a few PSA appointments of random users are added, retitled or deleted;
* every ``--fault-s``: a random fault on the EWS server (ErrorServerBusy with or without
  BackOffMilliseconds, 503s, lost answers, latency), cleared at the next tick;
* every ``--manual-s``: ``exchangectl sync`` of 20 random users (besides the scheduled cycles,
  which run every ``sync_interval_minutes`` = 10, spread over the interval).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    EwsProcess,
    Workdir,
    emit,
    mailbox_name,
    note,
    proc_rss_mb,
    seed_psa,
    utcnow,
    wait_for,
    write_config,
)


def sample(pid: int) -> dict[str, float]:
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return {"rss_mb": round(proc_rss_mb(pid), 1), "fds": fds, "threads": threads}


def rpc(path: Path, method: str, params: dict[str, Any]) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf) if buf else None


def edit_psa(db: Path, rng: random.Random, users: int, next_id: list[int]) -> None:
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            for _ in range(rng.randint(1, 5)):
                rid = rng.randint(1, users)
                roll = rng.random()
                if roll < 0.5:
                    start = utcnow() + timedelta(days=rng.randint(0, 14), hours=rng.randint(0, 10))
                    con.execute("INSERT INTO appointments (id, resource_id, title, description, "
                                "start_time, end_time, origin, show_as, is_private) "
                                "VALUES (?, ?, ?, '', ?, ?, 'psa', 'busy', 0)",
                                (next_id[0], rid, f"Soak {next_id[0]}", start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")))
                    next_id[0] += 1
                elif roll < 0.8:
                    con.execute("UPDATE appointments SET title = title || '.' WHERE id IN (SELECT id "
                                "FROM appointments WHERE resource_id = ? AND origin = 'psa' LIMIT 1)",
                                (rid,))
                else:
                    con.execute("DELETE FROM appointments WHERE id IN (SELECT id "
                                "FROM appointments WHERE resource_id = ? AND origin = 'psa' LIMIT 1)",
                                (rid,))
    finally:
        con.close()


FAULTS: list[dict[str, Any]] = [
    {"throttle_next": 3, "back_off_ms": 500},
    {"throttle_next": 2, "back_off_ms": 0},
    {"throttle_next": 2, "back_off_ms": 300, "throttle_style": "message"},
    {"fail_next": 2, "fail_status": 503},
    {"drop_next": 1, "only_ops": "CreateItem"},
    {"drop_next": 1},
    {"latency_ms": 80},
]
CLEAR = {"throttle_next": 0, "fail_next": 0, "drop_next": 0, "latency_ms": 0, "only_ops": ""}


def summary(samples: list[dict[str, Any]]) -> None:
    half = samples[len(samples) // 2:] or samples
    for key in ("rss_mb", "fds", "threads"):
        values = [s[key] for s in half]
        emit(f"soak_{key}", values[-1], "MB" if key == "rss_mb" else "count",
             first=values[0], last=values[-1], max=max(values), growth=round(values[-1] - values[0], 1),
             samples=len(values))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--edit-s", type=float, default=5.0)
    ap.add_argument("--fault-s", type=float, default=20.0)
    ap.add_argument("--manual-s", type=float, default=120.0)
    ap.add_argument("--appointments", type=int, default=10, help="PSA appointments per user at start")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**9)
    rng = random.Random(seed)
    note(f"soak: {args.users} users, {args.minutes} min, seed {seed}")
    work = Workdir.make("soak")
    mailboxes = [mailbox_name(i) for i in range(args.users)]
    ews = EwsProcess(work.path / "ews", mailboxes)
    daemon: subprocess.Popen[bytes] | None = None
    samples: list[dict[str, Any]] = []
    try:
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", mailboxes,
                 {i + 1: args.appointments for i in range(args.users)}, utcnow())
        config = write_config(work.path, ews, mailboxes)
        log = (work.path / "daemon.log").open("ab")
        daemon = subprocess.Popen([sys.executable, "-m", "exchanged", "run", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=log)
        sock = work.path / "control.sock"
        wait_for(sock.exists, "the control socket", 120)
        start = time.monotonic()
        end = start + args.minutes * 60
        ticks = {"sample": start, "edit": start, "fault": start, "manual": start + args.manual_s}
        next_id = [10**6]
        faulted = False
        while time.monotonic() < end:
            if daemon.poll() is not None:
                raise SystemExit(f"bench: the daemon exited with {daemon.returncode} (log: {log.name})")
            now = time.monotonic()
            if now >= ticks["sample"]:
                s = {"t_s": round(now - start, 1), **sample(daemon.pid)}
                status = rpc(sock, "status", {}) or {}
                users = (status.get("result") or {}).get("users", [])
                s["synced_users"] = sum(1 for u in users if u.get("last_success"))
                s["failing_users"] = sum(1 for u in users if u.get("last_result") == "error")
                samples.append(s)
                emit("soak_sample", s["rss_mb"], "MB", **s)
                ticks["sample"] = now + args.sample_s
            if now >= ticks["edit"]:
                edit_psa(work.path / "psa.db", rng, args.users, next_id)
                ticks["edit"] = now + args.edit_s
            if now >= ticks["fault"]:
                fault = CLEAR if faulted else {**CLEAR, **rng.choice(FAULTS)}
                ews._call("/__emulator/faults", fault)
                faulted = not faulted
                ticks["fault"] = now + args.fault_s
            if now >= ticks["manual"]:
                rpc(sock, "sync", {"mailboxes": rng.sample(mailboxes, min(20, len(mailboxes)))})
                ticks["manual"] = now + args.manual_s
            time.sleep(0.5)
        ews._call("/__emulator/faults", CLEAR)
        summary(samples)
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
        emit("soak_stop_exit_code", rc, "code", seed=seed)
        return 0 if rc == 0 else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        ews.stop()
        work.remove()


if __name__ == "__main__":
    raise SystemExit(main())
