"""What every benchmark shares: the EWS test server as a child process, the PSA and config files,
and the one output format (one JSON object per line on stdout).

The EWS server always runs in its own process, so that its CPU time and memory are never counted
as the daemon's.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = "svc-bench@example.test"
PASSWORD = "Bench-s3cret"
LAN_LATENCY_MS = 20  # what stands in for a LAN Exchange (issue 6)
SERVER_START_TIMEOUT_S = 120.0


def emit(name: str, value: float, unit: str, **inputs: Any) -> dict[str, Any]:
    """Print one figure as one JSON line (flushed: a smoke test reads it as it comes)."""
    line = {"name": name, "value": round(value, 3) if isinstance(value, float) else value,
            "unit": unit, **inputs}
    print(json.dumps(line), flush=True)
    return line


def note(text: str) -> None:
    """Progress for the human on stderr; stdout carries only figures."""
    print(f"bench: {text}", file=sys.__stderr__, flush=True)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "mem_mb": mem_kb // 1024,
            "python": platform.python_version()}


def mailbox_name(i: int) -> str:
    return f"user{i:05d}@example.test"


class EwsProcess:
    """``python -m exchanged.testing.ews`` as a child process, with its stats and faults."""

    def __init__(self, state_dir: Path, mailboxes: Sequence[str]) -> None:
        self.state_dir = state_dir
        args = [sys.executable, "-m", "exchanged.testing.ews", "--port", "0", "--state-dir",
                str(state_dir), "--service-account", f"{SERVICE_ACCOUNT}:{PASSWORD}"]
        for m in mailboxes:
            args += ["--mailbox", m]
        self._stderr = (state_dir.parent / "ews-server.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints its address once it accepts
        if not line:
            raise SystemExit(f"bench: the EWS test server did not start (log: {self._stderr.name})")
        info = json.loads(line)
        self.url: str = info["url"]
        self.ca_file: str = info["ca_file"]
        self.port = int(self.url.split(":")[2].split("/")[0])
        self._ctx = ssl.create_default_context(cafile=self.ca_file)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"https://localhost:{self.port}{path}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self._ctx, timeout=60) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def requests(self) -> dict[str, int]:
        return dict(self._call("/__emulator/stats")["requests"])

    def set_latency(self, ms: int) -> None:
        self._call("/__emulator/faults", {"latency_ms": ms})

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


def stop_daemon(daemon: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, and SIGKILL after a minute: the daemon of a bench run never outlives it."""
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- the PSA ----------------------------------------------------------------------------------------


def seed_psa(url: str, resources: Sequence[str], appointments: dict[int, int], now: datetime) -> None:
    """A PSA in the ``sql`` schema: one resource per mailbox (ids 1..n) and, for the resource ids
    given, that many PSA appointments spread over the next weeks (all in the sync window)."""
    from exchanged.db import Database, Tx, parse_url
    from exchanged.psa.sample import insert_rows
    from exchanged.psa.sql import ensure_schema

    day = now.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)
    db = Database(parse_url(url), what="PSA database", fail=RuntimeError)

    def run(tx: Tx) -> None:
        ensure_schema(tx)
        insert_rows(tx, "resources", [
            {"id": i + 1, "email": m, "first_name": "User", "last_name": f"{i + 1}", "is_active": True}
            for i, m in enumerate(resources)])
        next_id = 1
        for rid, count in appointments.items():
            rows = []
            for n in range(count):
                start = day + timedelta(days=n // 8, hours=n % 8)
                rows.append({"id": next_id, "resource_id": rid, "title": f"Appointment {n}",
                             "description": f"Bench appointment {n} of resource {rid}",
                             "start_time": start, "end_time": start + timedelta(minutes=45),
                             "last_modified": now, "origin": "psa", "exchange_uid": None,
                             "show_as": "busy", "is_private": False})
                next_id += 1
            insert_rows(tx, "appointments", rows)

    try:
        db.run_blocking(run, write=True)
    finally:
        db.close_blocking()


# --- the config ---------------------------------------------------------------------------------------


def write_config(base: Path, ews: EwsProcess, mailboxes: Iterable[str], *,
                 max_concurrent_users: int = 8, smtp_port: int | None = None,
                 **overrides: Any) -> Path:
    """The daemon's YAML for these mailboxes (user i <-> PSA resource i+1), as an operator writes it."""
    pw = base / "sync-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    cfg: dict[str, Any] = {
        "enabled": True,
        "profile_name": "bench",
        "server": {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                   "ca_bundle": ews.ca_file},
        "sync_interval_minutes": 10,
        "credentials": {"username": SERVICE_ACCOUNT, "password_file": str(pw), "auth_type": "basic"},
        "sync": {"max_concurrent_users": max_concurrent_users},
        "users": [{"mailbox": m, "psa_resource": str(i + 1)} for i, m in enumerate(mailboxes)],
        "psa": {"connector": "sql", "url": f"sqlite:///{base / 'psa.db'}"},
        "state": {"url": f"sqlite:///{base / 'state.db'}"},
        "control": {"socket": str(base / "control.sock"), "group": None},
        "logging": {"format": "json"},
    }
    if smtp_port is not None:
        cfg["notifications"] = {
            "email": "ops@example.test",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                     "from": "exchanged@example.test"}}
    cfg.update(overrides)
    path = base / "exchanged.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class Workdir:
    path: Path

    @classmethod
    def make(cls, name: str) -> Workdir:
        return cls(Path(tempfile.mkdtemp(prefix=f"exchanged-bench-{name}-")))

    def remove(self) -> None:
        """Gone after the run, unless EXCHANGED_BENCH_KEEP=1 (to read the daemon's log)."""
        if os.environ.get("EXCHANGED_BENCH_KEEP") == "1":
            note(f"kept {self.path}")
            return
        shutil.rmtree(self.path, ignore_errors=True)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def wait_for(pred: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.1)
