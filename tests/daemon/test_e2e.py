"""The real `exchanged run` process, driven through its socket, signals and exchangectl.

In-memory adapters (``python -m tests.daemon_entry --memory``) stand in for Exchange, the PSA and the
state store; the notify socket, the control socket, the SMTP server and the process are real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from exchanged.testing.smtp import Received
from tests.daemon.harness import DaemonEnv, RpcError, body_of, wait_until

pytestmark = pytest.mark.e2e

HAVE_NOTIFY = importlib.util.find_spec("exchanged.notify") is not None
BOB = {"mailbox": "bob@example.test", "psa_resource": "2"}
ALICE = "alice@example.test"


def test_ready_status_socket_and_clean_stop(daemon_env: DaemonEnv) -> None:
    ready = daemon_env.start_ready()
    assert "STATUS=" in daemon_env.notify.messages[ready]
    mode = stat.S_IMODE(os.stat(daemon_env.socket_path).st_mode)
    assert mode == 0o660

    # the first cycle of the only user runs at once (spread offset 0)
    user = wait_until(lambda: (u := daemon_env.user(ALICE))["last_result"] and u, "first cycle")
    status = daemon_env.status()
    for key in ("version", "protocol", "pid", "started_at", "state", "config", "exchange", "running",
                "users"):
        assert key in status, key
    assert status["pid"] == daemon_env.proc.pid  # type: ignore[union-attr]
    assert status["state"] == "running"
    cfg = status["config"]
    assert cfg["path"] == str(daemon_env.config_path) and cfg["generation"] == 1
    assert cfg["profile_name"] == "e2e" and cfg["loaded_at"] and cfg["last_reload"] is None
    assert set(status["exchange"]) >= {"server", "version", "reachable", "last_error"}
    assert status["exchange"]["server"] == "mail.example.test"
    for key in ("mailbox", "psa_resource", "enabled", "state", "last_attempt", "last_success",
                "last_result", "last_error", "next_run", "progress", "counts"):
        assert key in user, key
    assert user["last_result"] == "ok" and user["state"] == "idle" and user["next_run"]
    assert set(user["counts"]) == {"exported", "imported", "updated", "deleted"}

    stop_from = len(daemon_env.notify.poll())
    assert daemon_env.stop() == 0
    daemon_env.notify.wait_for("STOPPING=1", after=stop_from)
    assert not daemon_env.socket_path.exists()  # the socket is removed on a clean stop
    assert "Pw-s3cret-XYZ" not in daemon_env.stderr()


def test_reload_rejected_keeps_old_config_then_applied(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ready()
    before = len(daemon_env.notify.poll())
    daemon_env.config_path.write_text(daemon_env.config_path.read_text()
                                      .replace("sync_interval_minutes: 10", "sync_interval_minutes: 3"))
    daemon_env.signal(signal.SIGHUP)
    last = wait_until(lambda: daemon_env.status()["config"]["last_reload"], "reload outcome")
    assert last["result"] == "rejected"
    assert any("sync_interval_minutes" in e for e in last["errors"])
    status = daemon_env.status()
    assert status["config"]["generation"] == 1 and status["interval_minutes"] == 10
    assert [u["mailbox"] for u in status["users"]] == [ALICE]
    # a rejected reload never announces RELOADING to systemd
    assert not any(m.startswith("RELOADING=1") for m in daemon_env.notify.poll()[before:])

    with pytest.raises(RpcError) as info:
        daemon_env.rpc("reload")
    assert info.value.reason == "reload_rejected"

    if HAVE_NOTIFY:
        [mail, *_] = wait_until(
            lambda: [r for r in daemon_env.smtp.snapshot() if "sync_interval_minutes" in body_of(r.message)],
            "rejection mail")
        assert {"ops@example.test", "lead@example.test"} <= set(mail.rcpt_tos)
        assert "Pw-s3cret-XYZ" not in body_of(mail.message)

    daemon_env.users = [{"mailbox": ALICE, "psa_resource": "1"}, BOB]
    daemon_env.write_config()
    mark = len(daemon_env.notify.poll())
    result = daemon_env.rpc("reload")
    assert result["result"] in ("applied", "deferred")
    if result["result"] == "deferred":
        result = daemon_env.rpc("reload", wait=True)
    assert result["result"] == "applied"
    status = daemon_env.status()
    assert status["config"]["generation"] == 2
    assert status["config"]["last_reload"]["result"] == "applied"
    assert [u["mailbox"] for u in status["users"]] == [ALICE, BOB["mailbox"]]
    reloading = daemon_env.notify.wait_for("RELOADING=1", after=mark)
    daemon_env.notify.wait_for("READY=1", after=reloading)
    # the new user is scheduled (a user added by a reload runs at once)
    wait_until(lambda: daemon_env.user(BOB["mailbox"])["last_result"] == "ok", "bob's first cycle")
    assert daemon_env.stop() == 0


def start_with_a_held_cycle(env: DaemonEnv) -> Path:
    """Start the daemon and wait until its first cycle (alice's) runs; the cycle is held until the
    returned gate file is removed."""
    gate = env.base / "gate"
    gate.write_text("hold")
    env.write_hooks(hold_while_exists=str(gate))
    env.start_ready()
    wait_until(lambda: env.status()["running"] == 1, "alice's first cycle running")
    return gate


def test_reload_deferred_while_a_cycle_runs(daemon_env: DaemonEnv) -> None:
    gate = start_with_a_held_cycle(daemon_env)
    assert daemon_env.user(ALICE)["state"] == "syncing"

    daemon_env.users = [{"mailbox": ALICE, "psa_resource": "1"}, BOB]
    daemon_env.write_config()
    result = daemon_env.rpc("reload")
    assert result["result"] == "deferred"
    status = daemon_env.status()
    assert status["config"]["last_reload"]["result"] == "deferred"
    assert status["config"]["generation"] == 1
    assert [u["mailbox"] for u in status["users"]] == [ALICE]

    # a manual request meanwhile is accepted and queued, never refused
    queued = daemon_env.rpc("sync", mailboxes=[ALICE])
    assert queued["started"] == [ALICE]

    gate.unlink()  # let the running cycle end: the reload is applied, then cycles resume
    applied = daemon_env.rpc("reload", wait=True)
    assert applied["result"] == "applied"
    status = daemon_env.status()
    assert status["config"]["generation"] >= 2
    assert BOB["mailbox"] in [u["mailbox"] for u in status["users"]]
    wait_until(lambda: daemon_env.user(BOB["mailbox"])["last_result"] == "ok", "bob's first cycle")
    assert daemon_env.stop() == 0


def test_sigterm_during_a_cycle_exits_zero(daemon_env: DaemonEnv) -> None:
    start_with_a_held_cycle(daemon_env)
    mark = len(daemon_env.notify.poll())
    daemon_env.signal(signal.SIGTERM)
    daemon_env.notify.wait_for("STOPPING=1", after=mark)
    # the gated cycle never ends by itself: the grace period runs out and it is cancelled
    assert daemon_env.stop() == 0


def test_failing_user_mailed_once_then_resolved(daemon_env: DaemonEnv) -> None:
    if not HAVE_NOTIFY:
        pytest.skip("exchanged.notify not in this tree yet")
    daemon_env.users = [{"mailbox": ALICE, "psa_resource": "1"}, BOB]
    daemon_env.write_hooks(fail_mailboxes=[BOB["mailbox"]])
    daemon_env.start_ready()
    for _ in range(3):
        out = daemon_env.rpc("sync", mailboxes=[BOB["mailbox"]], wait=True)
        assert out["results"][BOB["mailbox"]]["result"] == "error"
    bob = daemon_env.user(BOB["mailbox"])
    assert bob["state"] == "error" and "not found" in bob["last_error"]
    assert daemon_env.status()["state"] == "degraded"

    def error_mails() -> list[Received]:
        return [r for r in daemon_env.smtp.snapshot()
                if " ERROR " in str(r.message["Subject"]) and BOB["mailbox"] in str(r.message["Subject"])]

    wait_until(error_mails, "error mail")
    daemon_env.write_hooks()
    out = daemon_env.rpc("sync", mailboxes=[BOB["mailbox"]], wait=True)
    assert out["results"][BOB["mailbox"]]["result"] == "ok"
    resolved = wait_until(
        lambda: [m for m in daemon_env.smtp.messages if " RESOLVED " in (m["Subject"] or "")],
        "resolved mail")
    assert BOB["mailbox"] in resolved[0]["Subject"]
    mail = error_mails()[0]
    assert "not found" in body_of(mail.message) and "ops@example.test" in mail.rcpt_tos
    assert "Pw-s3cret-XYZ" not in body_of(mail.message)
    assert len(error_mails()) == 1  # three failures, one mail
    assert daemon_env.stop() == 0


def test_confirmation_mail_on_start_for_new_users(daemon_env: DaemonEnv) -> None:
    if not HAVE_NOTIFY:
        pytest.skip("exchanged.notify not in this tree yet")
    daemon_env.start_ready()
    mail = wait_until(lambda: [r for r in daemon_env.smtp.snapshot() if ALICE in r.rcpt_tos],
                      "confirmation mail")[0]
    assert "calendar" in body_of(mail.message)
    assert daemon_env.stop() == 0


def test_disabled_integration_runs_without_cycles(daemon_env: DaemonEnv) -> None:
    daemon_env.write_config(enabled=False)
    ready = daemon_env.start_ready()
    assert "disabled" in daemon_env.notify.messages[ready]
    status = daemon_env.status()
    assert status["state"] == "disabled" and status["running"] == 0
    assert status["users"][0]["state"] == "disabled" and status["users"][0]["enabled"] is False
    with pytest.raises(RpcError) as info:
        daemon_env.rpc("sync")
    assert info.value.reason == "user_disabled"
    assert daemon_env.user(ALICE)["last_attempt"] is None
    assert daemon_env.stop() == 0


def test_pause_resume_and_unknown_mailbox(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ready()
    assert daemon_env.rpc("pause")["global"] is True
    status = daemon_env.status()
    assert status["state"] == "paused" and status["users"][0]["state"] in ("paused", "syncing")
    daemon_env.rpc("resume")
    assert daemon_env.status()["state"] in ("running", "degraded")
    with pytest.raises(RpcError) as info:
        daemon_env.rpc("sync", mailboxes=["nobody@example.test"])
    assert info.value.reason == "unknown_mailbox"
    assert daemon_env.stop() == 0


def test_invalid_config_is_one_block_on_stderr_exit_1(daemon_env: DaemonEnv) -> None:
    daemon_env.write_config(sync_interval_minutes=2)
    proc = daemon_env.start()
    assert proc.wait(timeout=30) == 1
    err = daemon_env.stderr()
    assert "sync_interval_minutes" in err and "invalid" in err
    assert "Traceback" not in err


def test_second_daemon_on_the_same_socket_fails_with_one_line(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ready()
    first = daemon_env.stderr()
    second = daemon_env.spawn()
    assert second.wait(timeout=30) == 1
    err = daemon_env.stderr()[len(first):]
    fatal = [line for line in err.splitlines() if line.startswith("exchanged: ")]
    assert len(fatal) == 1 and "cannot start" in fatal[0] and "another exchanged" in fatal[0]
    assert "Traceback" not in err
    assert daemon_env.status()["state"] in ("running", "degraded")  # the first one is untouched
    assert daemon_env.stop() == 0


@pytest.mark.skipif(shutil.which("exchangectl") is None and importlib.util.find_spec("exchanged.ctl") is None,
                    reason="exchangectl not in this tree yet")
def test_exchangectl_status_and_reload(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ready()

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(daemon_env.socket_path),
                               *args], capture_output=True, text=True, timeout=30)

    out = ctl("status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["generation"] == 1
    human = ctl("status")
    assert human.returncode == 0 and ALICE in human.stdout
    assert ctl("reload").returncode == 0
    daemon_env.write_config(sync_interval_minutes=1)
    assert ctl("reload").returncode == 1
    assert daemon_env.stop() == 0
    assert ctl("status").returncode == 3


def test_watchdog_pings_when_systemd_asks(daemon_env: DaemonEnv) -> None:
    daemon_env.extra_env = {"WATCHDOG_USEC": "200000"}  # WatchdogSec=0.2s: a ping every 0.1 s
    ready = daemon_env.start_ready()
    first = daemon_env.notify.wait_for("WATCHDOG=1")
    daemon_env.notify.wait_for("WATCHDOG=1", after=max(first, ready) + 1)  # and it keeps pinging
    assert daemon_env.stop() == 0


def test_no_watchdog_pings_without_watchdog_usec(daemon_env: DaemonEnv) -> None:
    daemon_env.start_ready()
    daemon_env.rpc("sync", mailboxes=[ALICE], wait=True)  # some activity; the loop is alive
    assert daemon_env.stop() == 0
    assert not [m for m in daemon_env.notify.poll() if m.startswith("WATCHDOG=1")]
