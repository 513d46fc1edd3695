"""A mailbox moved from on-premises Exchange (EWS) to Exchange Online (Graph): the daemon has
synced it over EWS; the config is switched to Graph, the store stays (the EWS and Graph test
servers serve one mailbox store, as Exchange Online serves the moved mailbox). The next cycle
adopts every event and contact by its PSA key (zero creates, zero deletes), creates each to-do
once in the To Do list (EWS's tasks cannot be found by key through To Do, docs/GRAPH.md) and
removes the EWS task it replaces, and the cycle after that writes nothing. Nothing reaches the
PSA twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exchanged.exchange.convert import PSA_KEY_ATTR  # registers the key property with exchangelib
from tests.daemon.ews_daemon import APP, APP_SECRET, TENANT, _graph_server, ews_daemon
from tests.daemon.harness import secret_file
from tests.daemon.test_e2e_rules import ALICE, World, create_exchange_appointment

pytestmark = pytest.mark.e2e

def keyed(items: list[Any]) -> dict[str, Any]:
    return {getattr(i, PSA_KEY_ATTR): i for i in items if getattr(i, PSA_KEY_ATTR, None)}


@pytest.fixture
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, dict[str, Any]]]:
    now = datetime.now(UTC).replace(microsecond=0)
    users = [{"mailbox": ALICE, "psa_resource": "1"}]
    base = tmp_path_factory.mktemp("migration")
    with ews_daemon(base, now, [ALICE], users, {"category": "PSA"}) as (env, ews):
        world = World(env, ews, now)
        day = now.replace(hour=0, minute=0, second=0) + timedelta(days=2)
        create_exchange_appointment(world, ALICE, "Lunch with Zoe", day + timedelta(hours=12), body="corner")
        create_exchange_appointment(world, ALICE, "Daily stand-up", day + timedelta(hours=8), body="15 min",
                                    recurrence=_daily(day, 3))
        create_exchange_appointment(world, ALICE, "Invited by a partner", day + timedelta(hours=15),
                                    body="their invitation", uid="partner-event-17@partner.example")
        ready = env.start_ready()
        world.sync(ALICE)
        before = {
            "events": keyed(world.calendar(ALICE)),
            "contacts": keyed(world.contacts(ALICE)),
            "tasks": keyed(world.tasks(ALICE)),
            "psa": world.psa_snapshot(),
        }
        assert before["events"] and before["contacts"] and before["tasks"], "the EWS cycle exported nothing"
        imported = [row[2] for row in before["psa"]["appointments"] if row[7] == "exchange"]
        assert sorted(imported) == ["Daily stand-up"] * 3 + ["Invited by a partner", "Lunch with Zoe"]
        env.kill()  # (a SIGTERM stop waits ~30 s for the EWS streaming request, see the note of issue 17)

        # the mailbox now lives in Exchange Online: same store, Graph front end, config switched
        ews.graph = _graph_server(env.base, [ALICE], ews)
        env.extra["server"] = {"address": "outlook.office365.com", "use_ms_graph": True,
                               "graph_url": ews.graph.url, "login_url": ews.graph.login_url,
                               "ca_bundle": ews.graph.ca_file}
        env.extra["credentials"] = {"local_setup_basic_auth": False, "tenant_id": TENANT, "client_id": APP,
                                    "client_secret_file": secret_file(env.base / "graph-secret", APP_SECRET)}
        env.write_config()
        env.start()
        env.notify.wait_for("READY=1", after=ready + 1)
        world.graph = ews.graph
        yield world, before


def test_events_and_contacts_are_adopted_and_each_todo_is_created_once(
        migrated: tuple[World, dict[str, Any]]) -> None:
    world, before = migrated
    world.sync(ALICE)
    writes = world.writes()
    for resource in ("events", "contacts"):
        changed = {op: n for op, n in writes.items() if f"/{resource}" in op}
        assert changed == {}, f"{resource} written after the move: {changed}"
    creates = writes.get("POST /v1.0/users/{user}/todo/lists/{list}/tasks", 0)
    assert creates == len(before["tasks"]), writes
    # EWS's tasks are removed from the default Tasks list, each once: never two copies
    deletes = {op: n for op, n in writes.items() if op.startswith("DELETE")}
    assert deletes == {"DELETE /v1.0/users/{user}/todo/lists/{list}/tasks/{id}": len(before["tasks"])}, writes
    assert list(world.account(ALICE).tasks.all()) == []

    # the same events and contacts, under the same ids; each to-do once in the PSA list
    assert keyed(world.calendar(ALICE)).keys() == before["events"].keys()
    assert {k: i.id for k, i in keyed(world.contacts(ALICE)).items()} == {
        k: i.id for k, i in before["contacts"].items()}
    lists = _todo_tasks(world)
    assert sorted(lists) == sorted(before["tasks"])
    changes = psa_changes(before["psa"], world.psa_snapshot())
    assert not changes, f"the PSA changed: {changes}"  # nothing imported or written back twice

    # and then it is quiet
    world.graph.reset_stats()
    world.sync(ALICE)
    assert world.writes() == {}
    changes = psa_changes(before["psa"], world.psa_snapshot())
    assert not changes, f"the PSA changed: {changes}"


def _daily(day: datetime, count: int) -> Any:
    from exchangelib.recurrence import DailyPattern, NumberedPattern, Recurrence

    boundary = NumberedPattern(start=day.date(), number=count)
    return Recurrence(pattern=DailyPattern(interval=1), boundary=boundary)


def psa_changes(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, Any]:
    """Rows that differ per PSA table: {table: {"gone": [...], "new": [...]}}."""
    out = {}
    for table in before:
        gone = [r for r in before[table] if r not in after[table]]
        new = [r for r in after[table] if r not in before[table]]
        if gone or new:
            out[table] = {"gone": gone, "new": new}
    return out


def _todo_tasks(world: World) -> list[str]:
    """PSA keys of the to-dos in To Do's list "PSA", read through Graph (linkedResources)."""
    import ssl

    import httpx

    graph = world.graph
    with httpx.Client(verify=ssl.create_default_context(cafile=graph.ca_file)) as http:
        form = {"grant_type": "client_credentials", "client_id": APP, "client_secret": APP_SECRET,
                "scope": "https://graph.microsoft.com/.default"}
        token = http.post(f"{graph.login_url}/{TENANT}/oauth2/v2.0/token", data=form).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        base = f"{graph.url}/v1.0/users/{ALICE}/todo/lists"
        [psa_list] = [x for x in http.get(base, headers=auth).json()["value"] if x["displayName"] == "PSA"]
        url = f"{base}/{psa_list['id']}/tasks?$expand=linkedResources&$top=500"
        tasks = http.get(url, headers=auth).json()
    return [r["externalId"] for t in tasks["value"] for r in t["linkedResources"]
            if r["applicationName"] == "exchanged"]
