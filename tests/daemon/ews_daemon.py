"""The real daemon over the bundled EWS server (TLS), the sql PSA (the sample data) in SQLite and the
SQLite state store: the set-up of the end-to-end modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from exchanged.testing.smtp import SmtpSink
from tests.daemon.harness import DaemonEnv, NotifySocket, secret_file
from tests.reliability.harness import psa_execute, ts

SVC, PASSWORD = "svc-exsync@example.test", "SECRET"  # the EWS server's service account


@contextmanager
def ews_daemon(base: Path, now: datetime, mailboxes: list[str], users: list[dict[str, Any]],
               sync: dict[str, Any] | None = None, ews_options: dict[str, Any] | None = None,
               ) -> Iterator[tuple[DaemonEnv, Any]]:
    """Yields ``(env, ews)`` with the config written and the PSA seeded; the caller starts the
    daemon (``env.start_ready()``) once the Exchange side holds what it needs. Cleans up after.
    ``sync``: the config's ``sync`` section (None: none, the defaults); ``ews_options``: more
    keyword arguments of ``EwsTestServer`` (``datetime_style``, ``mailbox_timezones``)."""
    from exchanged.psa.sample import seed_sample
    from exchanged.testing.ews import EwsTestServer
    from exchanged.testing.ews.fixtures import trust_ca

    notify = NotifySocket(base / "notify.sock")
    try:
        with SmtpSink() as smtp, EwsTestServer(state_dir=str(base / "ews"), mailboxes=mailboxes,
                                               service_accounts={SVC: PASSWORD},
                                               **(ews_options or {})) as ews:
            trust_ca(ews.ca_file)
            env = DaemonEnv(base=base, smtp=smtp, notify=notify, memory=False, users=users)
            seed_sample(f"sqlite:///{base / 'psa.db'}", now)
            env.extra = {
                "server": {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                           "ca_bundle": ews.ca_file},
                "credentials": {"username": SVC,
                                "password_file": secret_file(base / "ews-password", PASSWORD)},
                **({} if sync is None else {"sync": sync}),
            }
            env.write_config()
            try:
                yield env, ews
            finally:
                env.kill()
    finally:
        notify.close()


def add_psa_appointments(data: Path, now: datetime, resource: int, first_id: int, count: int,
                         title: str) -> list[str]:
    """``count`` PSA-owned appointments of ``resource`` in the sql PSA of ``data`` ("TITLE 0", ...,
    ids from ``first_id``), 15 minutes each, 20 a day every half hour from tomorrow (UTC), as if
    entered in the PSA; returns their PSA keys."""
    day = now.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    rows = []
    for n in range(count):
        start = day + timedelta(days=n // 20, minutes=30 * (n % 20))
        rows.append(("INSERT INTO appointments (id, resource_id, title, description, start_time, "
                     "end_time, last_modified, origin, exchange_uid, show_as, is_private) "
                     "VALUES (?, ?, ?, '', ?, ?, ?, 'psa', NULL, 'busy', 0)",
                     (first_id + n, resource, f"{title} {n}", ts(start),
                      ts(start + timedelta(minutes=15)), ts(now))))
    psa_execute(data, *rows)
    return [f"appointment:{first_id + n}" for n in range(count)]
