"""A mailbox synced over EWS, the config switched to Graph (one store behind both test servers):
events and contacts are adopted by their key (zero creates, zero deletes); to-dos move to the
Graph list (see docs/GRAPH.md "Moving a mailbox from EWS to Graph")."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exchanged.engine import UserSettings, UserSpec
from exchanged.exchange import ExchangeSettings
from exchanged.exchange import open_account as open_ews
from exchanged.graph import GraphAccount
from exchanged.model import Appointment, Contact, Kind, Task
from exchanged.sync import SyncRunner
from exchanged.testing.ews.fixtures import SERVICE_ACCOUNT, start_server
from exchanged.testing.graph.fixtures import settings_for
from tests.memory import MemoryPsa, MemoryState

graph_server = pytest.importorskip("exchanged.testing.graph.server")
auth = pytest.importorskip("exchanged.testing.graph.auth")

pytestmark = pytest.mark.e2e

ALICE = "alice@example.test"
RESOURCE = "7"
TENANT, CLIENT, SECRET = "contoso.example", "app-1", "app-secret"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    ews = start_server(tmp_path / "store", [ALICE])
    graph = graph_server.GraphTestServer(
        tmp_path / "store",
        [ALICE],
        TENANT,
        [auth.Client(CLIENT, [SECRET])],
        store=ews.store,
        time_zones={ALICE: "UTC"},
    )
    graph.start()
    try:
        yield ews, graph
    finally:
        graph.stop()
        ews.stop()


def graph_writes(graph: Any) -> dict[str, int]:
    """Creates and deletes Graph was asked for, $batch parts included, by path pattern."""
    stats = graph.stats()
    out: dict[str, int] = {}
    for table in (stats["requests"], stats.get("batched", {})):
        for op, n in table.items():
            if op.split(" ")[0] in ("POST", "DELETE") and "$batch" not in op and "token" not in op:
                out[op] = out.get(op, 0) + n
    return out


async def test_ews_to_graph_adopts_events_and_contacts_without_a_write(servers: tuple[Any, Any]) -> None:
    ews, graph = servers
    now = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    for n in range(25):
        start = now + timedelta(days=1 + n // 8, hours=n % 8)
        psa.add(
            Kind.APPOINTMENT,
            Appointment(f"Visit {n}", start, start + timedelta(minutes=45), body=f"b{n}", location="HQ"),
            [RESOURCE],
        )
    day = datetime(2026, 12, 10, tzinfo=UTC)  # a whole day in the mailbox's zone (EWS: the host's, UTC here)
    psa.add(
        Kind.APPOINTMENT, Appointment("Holiday", day, day + timedelta(days=1), is_all_day=True), [RESOURCE]
    )
    psa.add(
        Kind.SERVICE_CALL,
        Appointment("Fix the printer", now + timedelta(days=2), now + timedelta(days=2, hours=2)),
        [RESOURCE],
    )
    for n in range(3):
        psa.add(
            Kind.CONTACT, Contact(f"Ann{n}", "Lee", company="ACME", email=f"ann{n}@acme.test"), [RESOURCE]
        )
    psa.add(Kind.TODO, Task("Call back", due=datetime(2026, 12, 10, tzinfo=UTC)), [RESOURCE])
    state = MemoryState()
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA"))

    ews_account = open_ews(
        ExchangeSettings(
            address="localhost",
            port=ews.port,
            ca_bundle=ews.ca_file,
            username=SERVICE_ACCOUNT[0],
            password=SERVICE_ACCOUNT[1],
            version="Exchange2016",
            enabled_mailboxes=(ALICE,),
            category="PSA",
        )
    )
    first = await SyncRunner(ews_account, psa, state, now=lambda: now, server_identity="ews").run_cycle(user)
    await ews_account.aclose()
    assert first.result == "ok" and first.counts.exported == 31, first

    account = GraphAccount(
        settings_for(graph, tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                     enabled_mailboxes=(ALICE,), category="PSA"),
        now=lambda: now,
    )
    graph.reset_stats()
    runner = SyncRunner(account, psa, state, now=lambda: now, server_identity="graph")
    switched = await runner.run_cycle(user, cycle_id="switched")
    assert switched.result == "ok", (
        switched.item_errors,
        [
            (e.side, e.action, e.key, e.fields, e.reason)
            for e in await state.history(ALICE, None)
            if e.cycle_id == "switched"
        ],
    )
    journal = [
        (e.side, e.action, e.key) for e in await state.history(ALICE, None) if e.cycle_id == "switched"
    ]
    writes = graph_writes(graph)
    # events and contacts: adopted by the key both adapters write, nothing created or deleted
    assert not [op for op in writes if "/events" in op or "/contacts" in op], (writes, journal)
    assert not [j for j in journal if j[0] == "psa" and j[1] != "adopt"], journal
    # the to-do: its EWS task's key is not readable through the To Do API; it is created once in
    # the Graph list, and the EWS task removed from the default list (next test)
    assert [j for j in journal if j[2].startswith("todo:")] == [("exchange", "create", "todo:31")]
    assert writes.get("POST /v1.0/users/{user}/todo/lists/{list}/tasks") == 1, writes
    again = await runner.run_cycle(user, cycle_id="again")
    assert again.result == "ok" and again.counts.exported == 0 and again.counts.deleted == 0, again
    await account.aclose()


async def test_ews_to_graph_leaves_one_copy_of_each_todo(servers: tuple[Any, Any]) -> None:
    ews, graph = servers
    now = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    psa = MemoryPsa(now=lambda: now)
    psa.add_resource(RESOURCE, ALICE, "Alice")
    psa.add(Kind.TODO, Task("Call back", due=datetime(2026, 12, 10, tzinfo=UTC)), [RESOURCE])
    state = MemoryState()
    user = UserSpec(ALICE, RESOURCE, UserSettings(category="PSA"))
    ews_account = open_ews(
        ExchangeSettings(
            address="localhost",
            port=ews.port,
            ca_bundle=ews.ca_file,
            username=SERVICE_ACCOUNT[0],
            password=SERVICE_ACCOUNT[1],
            version="Exchange2016",
            enabled_mailboxes=(ALICE,),
        )
    )
    assert (
        await SyncRunner(ews_account, psa, state, now=lambda: now, server_identity="ews").run_cycle(user)
    ).result == "ok"
    await ews_account.aclose()
    account = GraphAccount(
        settings_for(graph, tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                     enabled_mailboxes=(ALICE,)),
        now=lambda: now,
    )
    assert (
        await SyncRunner(account, psa, state, now=lambda: now, server_identity="graph").run_cycle(user)
    ).result == "ok"
    titles = []
    for lst in await account.client.pages(ALICE, "lists", f"/users/{ALICE}/todo/lists"):
        tasks = await account.client.pages(ALICE, "tasks", f"/users/{ALICE}/todo/lists/{lst['id']}/tasks")
        titles += [t["title"] for t in tasks]
    await account.aclose()
    assert titles == ["Call back"], titles
