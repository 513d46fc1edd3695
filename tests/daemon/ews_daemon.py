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


TENANT, APP, APP_SECRET = "contoso.example", "exchanged-e2e-app", "app-S3cret~value"  # the Graph app


@contextmanager
def ews_daemon(base: Path, now: datetime, mailboxes: list[str], users: list[dict[str, Any]],
               sync: dict[str, Any] | None = None, ews_options: dict[str, Any] | None = None,
               adapter: str = "ews") -> Iterator[tuple[DaemonEnv, Any]]:
    """Yields ``(env, ews)`` with the config written and the PSA seeded; the caller starts the
    daemon (``env.start_ready()``) once the Exchange side holds what it needs. Cleans up after.
    ``sync``: the config's ``sync`` section (None: none, the defaults); ``ews_options``: more
    keyword arguments of ``EwsTestServer`` (``datetime_style``, ``mailbox_timezones``).

    ``adapter="graph"``: the daemon talks Microsoft Graph (``server.use_ms_graph``) to the Graph
    test server, which serves the EWS server's store (``ews.graph``); tests keep looking at the
    mailboxes through EWS, as a second client of the same mailboxes."""
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
            ews.graph = None
            if adapter == "graph":
                ews.graph = _graph_server(base, mailboxes, ews)
                server: dict[str, Any] = {"address": "outlook.office365.com", "use_ms_graph": True,
                                          "graph_url": ews.graph.url, "login_url": ews.graph.login_url,
                                          "ca_bundle": ews.graph.ca_file}
                credentials: dict[str, Any] = {
                    "local_setup_basic_auth": False, "tenant_id": TENANT, "client_id": APP,
                    "client_secret_file": secret_file(base / "graph-secret", APP_SECRET)}
            else:
                server = {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                          "ca_bundle": ews.ca_file}
                credentials = {"username": SVC, "password_file": secret_file(base / "ews-password", PASSWORD)}
            env.extra = {"server": server, "credentials": credentials,
                         **({} if sync is None else {"sync": sync})}
            env.write_config()
            try:
                yield env, ews
            finally:
                env.kill()
                if ews.graph is not None:
                    ews.graph.stop()
    finally:
        notify.close()


def _graph_server(base: Path, mailboxes: list[str], ews: Any) -> Any:
    """The Graph test server on the EWS server's store (two front ends, one set of mailboxes)."""
    from exchanged.testing.graph.auth import Client
    from exchanged.testing.graph.server import GraphTestServer

    graph = GraphTestServer(base / "ews", mailboxes, TENANT, [Client(APP, [APP_SECRET])], store=ews.store)
    graph.start()
    return graph


def graph_writes(graph: Any) -> dict[str, int]:
    """Creates, updates and deletes the Graph server carried out ($batch parts counted one by one)."""
    stats = graph.stats()
    out: dict[str, int] = {}
    for table in (stats["requests"], stats.get("batched", {})):
        for op, n in table.items():
            method, _, path = op.partition(" ")
            if method in ("POST", "PATCH", "DELETE") and "$batch" not in path and "oauth2" not in path:
                out[op] = out.get(op, 0) + n
    return out


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
