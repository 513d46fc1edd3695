"""One daemon process (`exchanged run`) with many configured users, against the EWS test server in a
child process (latency 0: what is measured is the daemon, not the wire), the sql PSA in SQLite, the
SQLite state store and an SMTP sink for the confirmation mails. Steered through its control socket
as `exchangectl` does.

Figures: rss_mb_1000_users, users_per_node_at_10_min, reload_ms_1000_users.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    EwsProcess,
    Workdir,
    emit,
    mailbox_name,
    note,
    proc_cpu_s,
    proc_rss_mb,
    seed_psa,
    stop_daemon,
    utcnow,
    wait_for,
    write_config,
)

START_TIMEOUT_S = 120.0
RPC_TIMEOUT_S = 3600.0  # a sync --wait of every user; only a guard against a hang


@dataclass(frozen=True)
class NodeSizes:
    users: int
    items_per_user: int
    reloads: int


def rpc(path: Path, method: str, params: dict[str, Any] | None = None,
        timeout: float = RPC_TIMEOUT_S) -> Any:
    """One JSON-RPC call on the control socket (what exchangectl sends)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                 "params": params or {}}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf)
    if "error" in answer:
        raise SystemExit(f"bench: {method} refused: {answer['error']}")
    return answer["result"]


def _answers(path: Path) -> bool:
    try:
        rpc(path, "version", timeout=5)
        return True
    except (OSError, SystemExit, ValueError):
        return False


def run(sizes: NodeSizes) -> None:
    from exchanged.testing.smtp import SmtpSink

    work = Workdir.make("node")
    mailboxes = [mailbox_name(i) for i in range(sizes.users)]
    note(f"EWS test server with {sizes.users} mailboxes")
    ews = EwsProcess(work.path / "ews", mailboxes)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", mailboxes,
                 {i + 1: sizes.items_per_user for i in range(sizes.users)}, utcnow())
        with SmtpSink() as smtp:
            config = write_config(work.path, ews, mailboxes, smtp_port=smtp.port)
            sock = work.path / "control.sock"
            log = (work.path / "daemon.log").open("ab")
            cmd = [sys.executable, "-m", "exchanged", "run", "--config", str(config)]
            note("starting " + " ".join(cmd))
            daemon = subprocess.Popen(cmd, stdout=log, stderr=log)
            wait_for(lambda: daemon.poll() is not None or _answers(sock), "the daemon's control socket",
                     START_TIMEOUT_S)
            if daemon.poll() is not None:
                raise SystemExit(f"bench: the daemon exited with {daemon.returncode}; see {log.name}")
            _measure(sizes, daemon, sock, ews, config)
    finally:
        stop_daemon(daemon)
        ews.stop()
        work.remove()


def _sync_all(sock: Path) -> dict[str, Any]:
    result = rpc(sock, "sync", {"wait": True})
    failed = {m: r for m, r in result.get("results", {}).items() if r.get("result") == "error"}
    if failed:
        first = next(iter(failed.items()))
        raise SystemExit(f"bench: {len(failed)} cycles failed, e.g. {first}")
    return result  # type: ignore[no-any-return]


def _round(sizes: NodeSizes, daemon: subprocess.Popen[bytes], sock: Path,
           ews: EwsProcess) -> dict[str, float]:
    """One ``sync --wait`` of every user: its rate, both processes' CPU and the EWS requests."""
    before = ews.requests()
    d_cpu, s_cpu = proc_cpu_s(daemon.pid), ews.cpu_s()
    t0 = time.perf_counter()
    _sync_all(sock)
    wall = time.perf_counter() - t0
    d_cpu, s_cpu = proc_cpu_s(daemon.pid) - d_cpu, ews.cpu_s() - s_cpu
    n_req = sum(ews.requests().values()) - sum(before.values())
    return {"cycles_per_s": round(sizes.users / wall, 2), "wall_s": round(wall, 2),
            "daemon_cpu_ms_per_cycle": round(d_cpu * 1000 / sizes.users, 2),
            "ews_server_cpu_ms_per_cycle": round(s_cpu * 1000 / sizes.users, 2),
            "requests_per_cycle": round(n_req / sizes.users, 2)}


def _measure(sizes: NodeSizes, daemon: subprocess.Popen[bytes], sock: Path, ews: EwsProcess,
             config: Path) -> None:
    note(f"first cycle of every one of {sizes.users} users (exchangectl sync --wait)")
    t0 = time.perf_counter()
    _sync_all(sock)
    first_s = time.perf_counter() - t0
    users = rpc(sock, "status")["users"]
    missing = [u["mailbox"] for u in users if not u.get("last_attempt")]
    if missing or len(users) < sizes.users:
        raise SystemExit(f"bench: {len(missing)} users have no last_attempt after the sync, "
                         f"e.g. {missing[:3]}")
    emit("rss_mb_1000_users", proc_rss_mb(daemon.pid), "MiB", users=sizes.users,
         items_per_user=sizes.items_per_user, first_round_s=round(first_s, 2), target=250,
         measured="VmRSS of the exchanged run process after every user's first cycle")

    # the round right after the first cycles still sees their writes (SyncFolderItems reports them,
    # GetItem fetches them, the engine confirms the creates); the next one plans once with nothing to
    # do; from then on cycles are quiet: the steady state a node sustains, which is what is timed
    note("the round after the first cycles (they see their own writes), every user")
    after_write = _round(sizes, daemon, sock, ews)
    note("a round with nothing to do (the first plans once), every user")
    _round(sizes, daemon, sock, ews)
    note("a round of cycles with nothing to do, every user (exchangectl sync --wait): timed")
    steady = _round(sizes, daemon, sock, ews)
    emit("users_per_node_at_10_min", steady["cycles_per_s"] * 600, "users", users=sizes.users, latency_ms=0,
         **steady, max_concurrent_users=8, target=10000, rss_mb_after=round(proc_rss_mb(daemon.pid), 1),
         round_after_first_cycles=after_write,
         measured="the third sync --wait round after the first cycles: no-change cycles per second x 600")

    note(f"{sizes.reloads} reloads of a config with {sizes.users} users (exchangectl reload --wait)")
    times, results = [], []
    raw = yaml.safe_load(config.read_text())
    for n in range(sizes.reloads):
        raw["profile_name"] = f"bench reload {n}"  # a change that touches no user: validate + diff + apply
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        t0 = time.perf_counter()
        answer = rpc(sock, "reload", {"wait": True})
        times.append((time.perf_counter() - t0) * 1000)
        results.append(answer.get("result"))
    emit("reload_ms_1000_users", statistics.median(times), "ms", users=sizes.users, reloads=sizes.reloads,
         all_ms=[round(t, 1) for t in times], results=results,
         measured="exchangectl reload --wait against the running daemon: read, validate, diff, apply")
