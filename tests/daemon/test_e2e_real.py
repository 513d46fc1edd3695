"""The daemon process over the real adapters: the bundled EWS server (TLS), the sql PSA in SQLite,
the SQLite state store, a real SMTP sink, driven by exchangectl."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.ews_daemon import PASSWORD, ews_daemon
from tests.daemon.harness import DaemonEnv, wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice@example.test", "bob@example.test"


@pytest.fixture
def real(tmp_path: Path) -> Iterator[tuple[DaemonEnv, Any]]:
    users = [{"mailbox": ALICE, "psa_resource": "1"}, {"mailbox": BOB, "psa_resource": "2"}]
    with ews_daemon(tmp_path, datetime.now(UTC).replace(microsecond=0), [ALICE, BOB], users) as found:
        yield found


def ctl(env: DaemonEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exchanged.ctl", "--socket", str(env.socket_path), *args],
                          capture_output=True, text=True, timeout=120)


def test_real_stack_sync_history_and_deferred_reload(real: tuple[DaemonEnv, Any]) -> None:
    real_env, ews = real
    real_env.start_ready()
    done = ctl(real_env, "sync", ALICE, "--wait", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    alice = real_env.user(ALICE)
    assert alice["last_result"] == "ok", alice
    # the manual cycle queued behind the first scheduled one, which exported the PSA's items
    assert set(alice["counts"]) == {"exported", "imported", "updated", "deleted"}
    status = real_env.status()
    assert status["exchange"]["reachable"] is True
    history = real_env.rpc("history", mailbox=ALICE)
    assert history and all(h["mailbox"] == ALICE for h in history)
    assert any(h["side"] == "exchange" and h["action"] == "create" for h in history)

    # a slow Exchange keeps a full cycle running long enough to reload meanwhile
    ews.set_faults(latency_ms=400)
    real_env.rpc("sync", mailboxes=[ALICE], full=True)
    wait_until(lambda: real_env.status()["running"] >= 1, "a running cycle")
    real_env.write_config(sync_interval_minutes=11)
    deferred = ctl(real_env, "reload", "--json")
    assert deferred.returncode == 0, deferred.stderr
    assert json.loads(deferred.stdout)["result"] == "deferred"
    ews.set_faults(latency_ms=0)
    applied = ctl(real_env, "reload", "--wait", "--json")
    assert applied.returncode == 0 and json.loads(applied.stdout)["result"] == "applied"
    status = real_env.status()
    assert status["config"]["generation"] >= 2 and status["interval_minutes"] == 11
    mark = len(real_env.notify.poll())
    real_env.signal(signal.SIGTERM)
    real_env.notify.wait_for("STOPPING=1", after=mark)
    assert real_env.stop() == 0
    assert PASSWORD + "\n" not in real_env.stderr()


def test_unopenable_state_database_is_one_line_exit_1(daemon_env: DaemonEnv) -> None:
    blocker = daemon_env.base / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    daemon_env.memory = False
    daemon_env.write_config(state={"url": f"sqlite:///{blocker}/state.db"})
    proc = daemon_env.start()
    assert proc.wait(timeout=60) == 1
    err = daemon_env.stderr()
    fatal = [line for line in err.splitlines() if line.startswith("exchanged: ")]
    assert len(fatal) == 1 and "cannot start" in fatal[0] and "state" in fatal[0], err
    assert "Traceback" not in err
    assert not daemon_env.socket_path.exists()
