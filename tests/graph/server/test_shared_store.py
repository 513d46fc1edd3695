"""One mailbox store, two front ends: what exchangelib writes over EWS reads over Graph (same
extended property, same times) and back, in one process and across two processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exchangelib import IMPERSONATION, NTLM, Account, CalendarItem, Configuration, Credentials
from exchangelib import Task as EwsTask
from exchangelib.ewsdatetime import EWSDateTime, EWSTimeZone
from exchangelib.protocol import BaseProtocol

from exchanged.exchange.convert import PSA_KEY_ATTR  # registers the PSA key property on the item classes
from exchanged.testing.ews import EwsTestServer
from exchanged.testing.ews.fixtures import SERVICE_ACCOUNT
from exchanged.testing.graph import GraphTestServer
from exchanged.testing.graph.convert import to_ews_id, to_graph_id
from exchanged.testing.tls import ca_adapter_class

from .conftest import CLIENT_ID, MAILBOXES, PSA_KEY, SECRET, TENANT, Client, Graph, http_client, msal_app

U = "/users/alice@example.test"
UTC = {"Prefer": 'outlook.timezone="UTC"'}
WINDOW = "startDateTime=2026-12-01T00:00:00Z&endDateTime=2027-01-01T00:00:00Z"


@pytest.fixture
def trusted(tmp_path: Path) -> Iterator[Path]:
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    state = tmp_path / "state"
    state.mkdir()
    try:
        yield state
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved


def ews_account(url: str, ca_file: str, mailbox: str = "alice@example.test") -> Account:
    BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(ca_file)
    config = Configuration(service_endpoint=url, credentials=Credentials(*SERVICE_ACCOUNT), auth_type=NTLM)
    return Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION)


def graph_for(server: GraphTestServer, http: Any) -> Graph:
    token = msal_app(server).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    return Graph(server, http, token["access_token"])


def ews_event(account: Account, subject: str, key: str | None, hour: int = 9) -> CalendarItem:
    utc = EWSTimeZone("UTC")
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject=subject,
        start=EWSDateTime(2026, 12, 7, hour, 0, tzinfo=utc),
        end=EWSDateTime(2026, 12, 7, hour + 1, 0, tzinfo=utc),
        legacy_free_busy_status="Tentative",
        sensitivity="Private",
        categories=["PSA"],
    )
    if key is not None:
        setattr(item, PSA_KEY_ATTR, key)
    item.save(send_meeting_invitations="SendToNone")
    return item


def check_both_ways(account: Account, graph: Graph) -> None:
    # EWS -> Graph: the same item, its key under the same property set and name
    written = ews_event(account, "from EWS", "appointment:1")
    expand = f"$expand=singleValueExtendedProperties($filter=id eq '{PSA_KEY}')"
    ours = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PSA_KEY}' and ep/value eq 'appointment:1')"
    r = graph.get(f"{U}/events?$filter={ours}&{expand}", headers=UTC)
    [seen] = r.json()["value"]
    assert to_ews_id(seen["id"]) == written.id
    assert seen["singleValueExtendedProperties"] == [{"id": PSA_KEY, "value": "appointment:1"}]
    assert (seen["subject"], seen["showAs"], seen["sensitivity"], seen["categories"]) == (
        "from EWS",
        "tentative",
        "private",
        ["PSA"],
    )
    assert seen["start"] == {"dateTime": "2026-12-07T09:00:00.0000000", "timeZone": "UTC"}

    # Graph -> EWS: exchangelib reads the Graph-written key through its registered property
    created = graph.post(
        f"{U}/events",
        json={
            "subject": "from Graph",
            "start": {"dateTime": "2026-12-08T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-08T11:00:00", "timeZone": "UTC"},
            "showAs": "oof",
            "singleValueExtendedProperties": [{"id": PSA_KEY, "value": "appointment:2"}],
        },
    ).json()
    item = account.calendar.get(id=to_ews_id(created["id"]))
    assert getattr(item, PSA_KEY_ATTR) == "appointment:2"
    assert (item.subject, item.legacy_free_busy_status) == ("from Graph", "OOF")
    assert item.start == EWSDateTime(2026, 12, 8, 10, 0, tzinfo=EWSTimeZone("UTC"))
    found = list(account.calendar.filter(**{PSA_KEY_ATTR: "appointment:2"}))
    assert [i.id for i in found] == [item.id]

    # a change on one side is a change in the other's delta
    _, link = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}")
    written.subject = "renamed in EWS"
    written.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
    changes, _ = graph.all_pages(link)
    assert [c["subject"] for c in changes] == ["renamed in EWS"]
    written_id = written.id
    written.delete(send_meeting_cancellations="SendToNone")
    changes, _ = graph.all_pages(link)
    assert changes[-1] == {
        "@odata.type": "#microsoft.graph.event",
        "id": to_graph_id(written_id),
        "@removed": {"reason": "deleted"},
    }


def test_one_process_two_front_ends(trusted: Path) -> None:
    ews = EwsTestServer(trusted, MAILBOXES, dict([SERVICE_ACCOUNT])).start()
    graph_server = GraphTestServer(
        trusted, MAILBOXES, TENANT, [Client(CLIENT_ID, secrets=[SECRET])], store=ews.store
    ).start()
    try:
        assert graph_server.ca_file == ews.ca_file
        with http_client(graph_server.ca_file) as http:
            check_both_ways(ews_account(ews.url, ews.ca_file), graph_for(graph_server, http))
    finally:
        graph_server.stop()
        ews.stop()


@pytest.fixture
def ews_process(trusted: Path) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exchanged.testing.ews",
            "--port",
            "0",
            "--state-dir",
            str(trusted),
            "--mailbox",
            MAILBOXES[0],
            "--mailbox",
            MAILBOXES[1],
            "--service-account",
            ":".join(SERVICE_ACCOUNT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_two_processes_on_one_state_dir(trusted: Path, ews_process: dict[str, str]) -> None:
    graph_server = GraphTestServer(trusted, MAILBOXES, TENANT, [Client(CLIENT_ID, secrets=[SECRET])]).start()
    try:
        account = ews_account(ews_process["url"], ews_process["ca_file"])
        with http_client(graph_server.ca_file) as http:
            graph = graph_for(graph_server, http)
            check_both_ways(account, graph)
            # writers on both sides at once: every write lands, none is lost or doubled
            errors: list[BaseException] = []

            def ews_writer() -> None:
                try:
                    for n in range(10):
                        ews_event(account, f"ews {n}", f"appointment:e{n}", hour=12)
                except BaseException as exc:
                    errors.append(exc)

            thread = threading.Thread(target=ews_writer)
            thread.start()
            for n in range(10):
                body = {
                    "subject": f"graph {n}",
                    "start": {"dateTime": "2026-12-09T12:00:00", "timeZone": "UTC"},
                    "end": {"dateTime": "2026-12-09T13:00:00", "timeZone": "UTC"},
                }
                assert graph.post(f"{U}/events", json=body).status_code == 201
            thread.join()
            assert errors == []
            items, _ = graph.all_pages(
                f"{U}/calendarView/delta?{WINDOW}", headers={"Prefer": "odata.maxpagesize=7"}
            )
            subjects = sorted(i["subject"] for i in items)
            assert subjects == sorted(
                ["from Graph", *[f"ews {n}" for n in range(10)], *[f"graph {n}" for n in range(10)]]
            )
            assert len({i["id"] for i in items}) == len(items)
    finally:
        graph_server.stop()


def test_todo_lists_are_task_folders(trusted: Path) -> None:
    """To Do's default list is the Tasks folder; a list created over Graph is a task folder EWS sees."""
    ews = EwsTestServer(trusted, MAILBOXES, dict([SERVICE_ACCOUNT])).start()
    graph_server = GraphTestServer(
        trusted, MAILBOXES, TENANT, [Client(CLIENT_ID, secrets=[SECRET])], store=ews.store
    ).start()
    try:
        account = ews_account(ews.url, ews.ca_file)
        task = EwsTask(account=account, folder=account.tasks, subject="EWS task", status="InProgress")
        setattr(task, PSA_KEY_ATTR, "todo:1")
        task.save()
        with http_client(graph_server.ca_file) as http:
            graph = graph_for(graph_server, http)
            [default] = graph.get(f"{U}/todo/lists").json()["value"]
            [seen] = graph.get(f"{U}/todo/lists/{default['id']}/tasks").json()["value"]
            assert (seen["title"], seen["status"]) == ("EWS task", "inProgress")
            assert "singleValueExtendedProperties" not in seen  # To Do shows no extended properties

            lid = graph.post(f"{U}/todo/lists", json={"displayName": "PSA"}).json()["id"]
            created = graph.post(
                f"{U}/todo/lists/{lid}/tasks",
                json={
                    "title": "Graph task",
                    "linkedResources": [{"applicationName": "exchanged", "externalId": "todo:2"}],
                },
            ).json()
            folder = account.msg_folder_root / "PSA"
            [ews_seen] = list(folder.all())
            assert ews_seen.id == to_ews_id(created["id"]) and ews_seen.subject == "Graph task"
            ews_seen.status = "Completed"
            ews_seen.save(update_fields=["status"])
            back = graph.get(f"{U}/todo/lists/{lid}/tasks/{created['id']}?$expand=linkedResources").json()
            assert back["status"] == "completed" and back["linkedResources"][0]["externalId"] == "todo:2"
    finally:
        graph_server.stop()
        ews.stop()


def test_both_servers_started_at_once_on_a_new_state_dir(tmp_path: Path) -> None:
    """Started together on an empty state dir, the two processes make one CA and one store."""
    state = tmp_path / "fresh"
    ews_cmd = [
        sys.executable,
        "-m",
        "exchanged.testing.ews",
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--mailbox",
        MAILBOXES[0],
        "--service-account",
        ":".join(SERVICE_ACCOUNT),
    ]
    graph_cmd = [
        sys.executable,
        "-m",
        "exchanged.testing.graph",
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--tenant",
        TENANT,
        "--client",
        f"{CLIENT_ID}:{SECRET}",
        "--mailbox",
        MAILBOXES[0],
        "--mailbox",
        MAILBOXES[1],
    ]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for cmd in (ews_cmd, graph_cmd)]
    try:
        infos = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        assert len(infos) == 2 and infos[0]["ca_file"] == infos[1]["ca_file"]
        with http_client(infos[1]["ca_file"]) as http:  # the one CA verifies both servers
            assert (
                http.get(infos[0]["url"].replace("/EWS/Exchange.asmx", "/__emulator/stats")).status_code
                == 200
            )
            form = {
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
                "scope": "https://graph.microsoft.com/.default",
            }
            token = http.post(f"{infos[1]['login_url']}/{TENANT}/oauth2/v2.0/token", data=form).json()[
                "access_token"
            ]
            r = http.get(
                f"{infos[1]['url']}/v1.0/users/bob@example.test/todo/lists",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200 and len(r.json()["value"]) == 1  # one Tasks folder, not two
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=20)


def test_tls_material_is_created_once_for_servers_starting_together(tmp_path: Path) -> None:
    import fcntl

    from exchanged.testing.tls import load_or_create_tls

    results: list[Path] = []
    with open(tmp_path / ".tls.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another server is creating the CA right now
        thread = threading.Thread(target=lambda: results.append(load_or_create_tls(tmp_path, "other")[0]))
        thread.start()
        thread.join(timeout=0.5)
        assert results == []  # it waits instead of making a CA of its own
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        load_or_create_tls(elsewhere, "first")  # the first server's CA, moved into place
        for name in ("ca.pem", "ca.key", "server.pem"):
            (tmp_path / name).write_bytes((elsewhere / name).read_bytes())
        created = (tmp_path / "ca.pem").read_bytes()
    thread.join()
    assert results == [tmp_path / "ca.pem"]
    assert (tmp_path / "ca.pem").read_bytes() == created



def open_new_stores(paths: list[str], barrier: Any, errors: Any) -> None:
    from exchanged.testing.ews.store import Store

    for path in paths:
        barrier.wait()  # both processes open each new database at the same moment
        try:
            Store(path, ["alice@example.test", "bob@example.test"]).close()
        except Exception as e:  # reported to the test
            errors.put(f"{path}: {e!r}")


def test_two_processes_create_the_same_new_stores_together(tmp_path: Path) -> None:
    """Both test servers started on a new state dir create its database at the same moment: the
    one that loses the race waits for the other instead of failing with "database is locked"."""
    import multiprocessing

    from exchanged.testing.ews.store import Store

    ctx = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"state{i}" / "ews.sqlite3") for i in range(30)]
    barrier, errors = ctx.Barrier(2, timeout=60), ctx.Queue()
    procs = [ctx.Process(target=open_new_stores, args=(paths, barrier, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert errors.empty(), errors.get()
    for path in paths:
        store = Store(path, [])
        assert sorted(store.mailboxes()) == ["alice@example.test", "bob@example.test"]
        store.close()
