"""The real daemon over the bundled EWS server (TLS), the sql PSA (the sample data) in SQLite and the
SQLite state store: the set-up of the end-to-end modules.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.daemon.harness import DaemonEnv, NotifySocket, SmtpSink

SVC, PASSWORD = "svc-exsync@example.test", "SECRET"


@contextmanager
def ews_daemon(base: Path, now: datetime, mailboxes: list[str], users: list[dict[str, Any]],
               sync: dict[str, Any]) -> Iterator[tuple[DaemonEnv, Any]]:
    """Yields ``(env, ews)`` with the config written and the PSA seeded; the caller starts the
    daemon (``env.start_ready()``) once the Exchange side holds what it needs. Cleans up after."""
    from exchanged.psa.sample import seed_sample
    from exchanged.testing.ews import EwsTestServer
    from exchanged.testing.ews.fixtures import trust_ca

    smtp = SmtpSink()
    notify = NotifySocket(base / "notify.sock")
    try:
        with EwsTestServer(state_dir=str(base / "ews"), mailboxes=mailboxes,
                           service_accounts={SVC: PASSWORD}) as ews:
            trust_ca(ews.ca_file)
            env = DaemonEnv(base=base, smtp=smtp, notify=notify)
            seed_sample(f"sqlite:///{base / 'psa.db'}", now)
            pw = base / "ews-password"
            pw.write_text(PASSWORD + "\n")
            pw.chmod(0o600)
            env.memory = False
            env.users = users
            env.extra = {
                "server": {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                           "ca_bundle": ews.ca_file},
                "credentials": {"username": SVC, "password_file": str(pw)},
                "sync": sync,
                "control": {"socket": str(env.socket_path), "group": grp.getgrgid(os.getgid()).gr_name},
            }
            env.write_config()
            try:
                yield env, ews
            finally:
                env.kill()
    finally:
        notify.close()
        smtp.stop()
