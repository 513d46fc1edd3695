"""End-to-end harness: the real daemon process, a fake NOTIFY_SOCKET, a control client; mail goes to
the shipped SMTP sink (``exchanged.testing.smtp.SmtpSink``, started by the caller).

Waiting is done by polling with a generous deadline that only guards against hangs; nothing here
asserts how long anything took.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import yaml

from exchanged.testing.smtp import SmtpSink

REPO = Path(__file__).resolve().parents[2]  # the checkout holding tests/ (tests.daemon_entry)

HANG_GUARD_S = 30.0  # only to avoid a hung test run; never asserted


def wait_until(pred: Callable[[], Any], what: str, timeout: float = HANG_GUARD_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.02)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; collects every message.

    A thread reads it all the time, as systemd reads its own: unread, its queue (net.unix.
    max_dgram_qlen, 10 datagrams by default) fills after a few status lines, and the daemon's
    notifications are then dropped (STATUS=) or wait (READY, RELOADING, STOPPING).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.poll()
            except OSError:
                return  # closed

    def poll(self) -> list[str]:
        with self._lock:
            while True:
                try:
                    self.messages.append(self.sock.recv(65536).decode())
                except BlockingIOError:
                    return self.messages

    def wait_for(self, prefix: str, after: int = 0) -> int:
        """Index of the first message after ``after`` that starts with ``prefix``."""

        def found() -> int | None:
            for i, msg in enumerate(self.poll()[after:], start=after):
                if msg.startswith(prefix):
                    return i + 1  # +1 so that index 0 is truthy
            return None

        return wait_until(found, f"notify message {prefix!r}") - 1  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def secret_file(path: Path, value: str) -> str:
    """Write ``value`` (one line) to ``path``, readable by its owner only, as a secret file must be."""
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def body_of(msg: Message) -> str:
    if msg.is_multipart():
        return "\n".join(body_of(part) for part in msg.get_payload())  # type: ignore[union-attr,arg-type]
    payload = msg.get_payload(decode=True)
    return payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)


def rpc(path: Path | str, method: str, params: dict[str, Any] | None = None,
        timeout: float = HANG_GUARD_S) -> Any:
    """One JSON-RPC call; returns the result or raises RpcError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf)
    if "error" in answer:
        raise RpcError(answer["error"])
    return answer["result"]


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error
        self.reason = (error.get("data") or {}).get("reason")


@dataclass
class DaemonEnv:
    base: Path
    smtp: SmtpSink
    notify: NotifySocket
    users: list[dict[str, Any]] = field(default_factory=lambda: [
        {"mailbox": "alice@example.test", "psa_resource": "1"},
    ])
    proc: subprocess.Popen[bytes] | None = None
    hooks: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    memory: bool = True  # False: the real adapters the config names (EWS, sql PSA, SQLite state)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.base / "exchanged.yaml"

    @property
    def socket_path(self) -> Path:
        return self.base / "run" / "control.sock"

    @property
    def hooks_path(self) -> Path:
        return self.base / "hooks.json"

    @property
    def stderr_path(self) -> Path:
        return self.base / "stderr.log"

    def config(self, **overrides: Any) -> dict[str, Any]:
        pw = self.base / "sync-password"
        if not pw.exists():
            secret_file(pw, "Pw-s3cret-XYZ")
        cfg: dict[str, Any] = {
            "enabled": True,
            "profile_name": "e2e",
            "server": {"address": "mail.example.test"},
            "sync_interval_minutes": 10,
            "credentials": {"username": "svc@example.test", "password_file": str(pw)},
            "notifications": {
                "email": "ops@example.test; lead@example.test",
                "smtp": {"host": "127.0.0.1", "port": self.smtp.port, "security": "none",
                         "from": "exchanged@example.test"},
                "repeat_after_minutes": 240,
            },
            "users": self.users,
            "psa": {"connector": "sql", "url": f"sqlite:///{self.base}/psa.db"},
            "state": {"url": f"sqlite:///{self.base}/state.db"},
            "control": {"socket": str(self.socket_path), "group": grp.getgrgid(os.getgid()).gr_name},
            "logging": {"format": "json"},
        }
        cfg.update(self.extra)
        cfg.update(overrides)
        return cfg

    def write_config(self, **overrides: Any) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config(**overrides), sort_keys=False))

    def write_hooks(self, **hooks: Any) -> None:
        self.hooks = hooks
        self.hooks_path.write_text(json.dumps(hooks))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "NOTIFY_SOCKET": str(self.notify.path),
            "PYTHONUNBUFFERED": "1",
            # ``-m tests.daemon_entry`` from any working directory
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        })
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(self.extra_env)
        return env

    def start(self) -> subprocess.Popen[bytes]:
        if not self.config_path.exists():
            self.write_config()
        if not self.hooks_path.exists():
            self.write_hooks()
        self.proc = self.spawn()
        return self.proc

    def entry_args(self) -> list[str]:
        """The test openers the daemon is built with (tests/daemon_entry.py)."""
        return ["--memory"] if self.memory else []

    def spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.daemon_entry", "--config", str(self.config_path),
             "--hooks", str(self.hooks_path), *self.entry_args()],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=self.stderr_path.open("ab"),
        )

    def start_ready(self) -> int:
        self.start()
        return self.notify.wait_for("READY=1")

    def rpc(self, method: str, **params: Any) -> Any:
        return rpc(self.socket_path, method, params)

    def status(self) -> dict[str, Any]:
        return self.rpc("status")  # type: ignore[no-any-return]

    def user(self, mailbox: str) -> dict[str, Any]:
        return next(u for u in self.status()["users"] if u["mailbox"] == mailbox)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=HANG_GUARD_S)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
