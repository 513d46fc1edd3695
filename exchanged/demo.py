"""`exchanged demo`: a complete local setup with no outside server.

It starts the bundled EWS server on loopback over TLS (its own throw-away CA), seeds a sample PSA
in SQLite and a few Exchange-side appointments (a private one, a free one, a recurring series),
starts an SMTP sink for the error and confirmation mails, writes a config that points at all of
them, and runs the real daemon (`exchanged run`) as a child process. After the first sync of every
user it prints `exchangectl status` and the commands to try; `--once` stops there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAILBOXES = ("alice@example.test", "bob@example.test")
SERVICE_ACCOUNT = "svc-exsync@example.test"
PASSWORD = "SECRET"
FIRST_SYNC_TIMEOUT_S = 180.0


def _say(text: str) -> None:
    print(text, flush=True)


def write_config(base: Path, *, ews_port: int, ca_file: str, smtp_port: int) -> Path:
    password_file = base / "sync-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    config: dict[str, Any] = {
        "enabled": True,
        "profile_name": "exchanged demo",
        "server": {
            "address": "localhost",
            "port": ews_port,
            "version": "Exchange2016",
            "ca_bundle": ca_file,
        },
        "sync_interval_minutes": 10,
        "credentials": {
            "local_setup_basic_auth": True,
            "auth_type": "basic",
            "username": SERVICE_ACCOUNT,
            "password_file": str(password_file),
            "use_for_all_users": True,
        },
        "notifications": {
            "email": "ops@example.test",
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                     "from": "exchanged@example.test"},
            "repeat_after_minutes": 240,
        },
        "sync": {"past_days": 7, "recurring_future_days": 30, "import_appointments": "all_details"},
        "users": [
            {"mailbox": MAILBOXES[0], "psa_resource": "1", "enabled": True},
            {"mailbox": MAILBOXES[1], "psa_resource": "2", "enabled": True,
             "settings": {"todos": False}},
        ],
        "psa": {"connector": "sql", "url": f"sqlite:///{base / 'psa.db'}"},
        "state": {"url": f"sqlite:///{base / 'state.db'}"},
        "control": {"socket": str(base / "control.sock"), "group": None},
        "logging": {"format": "console"},
    }
    import yaml

    path = base / "exchanged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def seed_exchange(url: str, ca_file: str, now: datetime) -> None:
    """Appointments that live only in Exchange, so the import rules have something to show."""
    from exchanged.testing.demo_data import seed_demo_calendar

    seed_demo_calendar(url, ca_file, SERVICE_ACCOUNT, PASSWORD, MAILBOXES[0], now)


def _ctl(socket_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchanged.ctl", "--socket", str(socket_path), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def wait_first_sync(socket_path: Path, daemon: subprocess.Popen[bytes]) -> None:
    """Wait for the control socket, then ask for a first cycle of every user and wait for it.

    The scheduler spreads first runs over the interval; an operator who wants to see a result now
    runs `exchangectl sync --wait`, and so does the demo.
    """
    deadline = time.monotonic() + FIRST_SYNC_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"demo: the daemon exited with code {daemon.returncode} before its first sync")
        if _ctl(socket_path, "version").returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise SystemExit("demo: the daemon did not open its control socket in time; see its log above")
    _say("\n$ exchangectl sync --wait")
    done = _ctl(socket_path, "sync", "--wait")
    _say((done.stdout + done.stderr).rstrip())


def cli_demo(args: Any) -> int:
    from exchanged.psa.sample import seed_sample
    from exchanged.testing import TESTING_EXTRA

    try:
        from exchanged.testing.ews import EwsTestServer
        from exchanged.testing.smtp import SmtpSink
    except ModuleNotFoundError as exc:
        if exc.name not in TESTING_EXTRA:
            raise
        print(f"exchanged demo: {exc}", file=sys.stderr)
        return 2

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="exchanged-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    fresh = not (base / "psa.db").exists()

    with EwsTestServer(state_dir=str(base / "ews"), mailboxes=list(MAILBOXES),
                       service_accounts={SERVICE_ACCOUNT: PASSWORD}) as ews, SmtpSink() as smtp:
        _say(f"demo: EWS server  {ews.url}  (CA {ews.ca_file})")
        _say(f"demo: SMTP sink   127.0.0.1:{smtp.port}")
        if fresh:
            seed_sample(f"sqlite:///{base / 'psa.db'}", now)
            seed_exchange(ews.url, ews.ca_file, now)
        _say(f"demo: sample PSA  {base / 'psa.db'}")
        port = int(ews.url.split(":")[2].split("/")[0])
        config = write_config(base, ews_port=port, ca_file=ews.ca_file, smtp_port=smtp.port)
        socket_path = base / "control.sock"
        env = {**os.environ, "EXCHANGED_SOCKET": str(socket_path)}
        _say(f"demo: config      {config}")
        _say("demo: starting the daemon: exchanged run --config " + str(config))
        daemon = subprocess.Popen([sys.executable, "-m", "exchanged", "run", "--config", str(config)],
                                  env=env)
        try:
            wait_first_sync(socket_path, daemon)
            _say("\n$ exchangectl status")
            _say(_ctl(socket_path, "status").stdout)
            _say(f"demo: {len(smtp.messages)} mail(s) in the SMTP sink (confirmations and errors)")
            ctl = f"EXCHANGED_SOCKET={socket_path} {sys.executable} -m exchanged.ctl"
            _say("\nTry:")
            for cmd in ("status", "users", f"plan {MAILBOXES[0]}", f"history {MAILBOXES[0]}",
                        "sync --wait", "pause", "resume", "reload --wait"):
                _say(f"  {ctl} {cmd}")
            _say(f"  sqlite3 {base / 'psa.db'} 'select id, title, start_time, origin from appointments'")
            if args.once:
                return 0
            _say("\ndemo: running; Ctrl-C stops it")
            while daemon.poll() is None:
                time.sleep(1)
            return 0
        except KeyboardInterrupt:
            return 0
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()


__all__ = ["cli_demo"]
