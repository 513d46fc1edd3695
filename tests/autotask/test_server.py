"""The Autotask test server answers like the real API (reference/autotask-rest-api.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from exchanged.testing.autotask import AutotaskServer

from .conftest import CODE, SECRET, USER, api_call, base_seed, t

pytestmark = pytest.mark.e2e


def q(*filters: Any, fields: list[str] | None = None, max_records: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"filter": list(filters)}
    if fields is not None:
        body["IncludeFields"] = fields
    if max_records is not None:
        body["MaxRecords"] = max_records
    return body


def ids(answer: Any) -> list[int]:
    return [row["id"] for row in answer["items"]]


def test_zone_lookup_needs_no_credentials_and_knows_only_the_api_user(server: AutotaskServer) -> None:
    status, body = api_call(server, "GET", f"V1.0/ZoneInformation?user={USER}", auth=None)
    assert status == 200 and body["url"] == server.url and body["ci"] == 1
    status, body = api_call(server, "GET", "v1.0/zoneInformation?user=nobody@example.test", auth=None)
    assert status == 500 and body["errors"]


def test_authentication_answers_as_observed(server: AutotaskServer) -> None:
    assert api_call(server, "GET", "V1.0/Resources/29682885", auth=(USER, "wrong", CODE))[0] == 401
    assert api_call(server, "GET", "V1.0/Resources/29682885", auth=("who@x", SECRET, CODE))[0] == 500
    assert api_call(server, "GET", "V1.0/Resources/29682885", auth=(USER, SECRET, "BAD"))[0] == 500
    status, body = api_call(server, "GET", "V1.0/Resources/29682885")
    assert status == 200 and body["item"]["email"] == "jdoe@example.test"


def test_every_operator_and_nested_groups(server: AutotaskServer) -> None:
    server.store.add_many(
        "Contacts",
        [
            {
                "id": 10,
                "companyID": 1,
                "firstName": "Anna",
                "lastName": "Smith",
                "isActive": 1,
                "emailAddress": "anna@contoso.test",
            },
            {"id": 11, "companyID": 1, "firstName": "Ben", "lastName": "Smithers", "isActive": 0},
            {
                "id": 12,
                "companyID": 2,
                "firstName": "Cleo",
                "lastName": "Jones",
                "isActive": 1,
                "emailAddress": "cleo@fabrikam.test",
            },
        ],
    )

    def run(*filters: Any) -> list[int]:
        status, body = api_call(server, "POST", "V1.0/Contacts/query", q(*filters))
        assert status == 200, body
        return ids(body)

    assert run({"op": "eq", "field": "lastName", "value": "smith"}) == [10]  # case-insensitive
    assert run({"op": "noteq", "field": "companyID", "value": 1}) == [12]
    assert run({"op": "gt", "field": "id", "value": 10}) == [11, 12]
    assert run({"op": "gte", "field": "id", "value": 11}) == [11, 12]
    assert run({"op": "lt", "field": "id", "value": 11}) == [10]
    assert run({"op": "lte", "field": "id", "value": 11}) == [10, 11]
    assert run({"op": "beginsWith", "field": "lastName", "value": "SMI"}) == [10, 11]
    assert run({"op": "endsWith", "field": "lastName", "value": "ers"}) == [11]
    assert run({"op": "contains", "field": "emailAddress", "value": "fabrikam"}) == [12]
    assert run({"op": "exist", "field": "emailAddress"}) == [10, 12]
    assert run({"op": "notExist", "field": "emailAddress"}) == [11]
    assert run({"op": "in", "field": "id", "value": [10, 12, 99]}) == [10, 12]
    assert run({"op": "notIn", "field": "id", "value": [10, 12]}) == [11]
    # top-level items are ANDed; groups nest; field and operator names in any case
    assert run(
        {"op": "eq", "field": "ISACTIVE", "value": 1},
        {
            "op": "or",
            "items": [
                {"op": "EQ", "field": "firstname", "value": "Anna"},
                {
                    "op": "and",
                    "items": [
                        {"op": "eq", "field": "companyId", "value": 2},
                        {"op": "beginswith", "field": "lastName", "value": "J"},
                    ],
                },
            ],
        },
    ) == [10, 12]


def test_unknown_field_is_a_500_naming_it_and_include_fields_project(server: AutotaskServer) -> None:
    status, body = api_call(
        server, "POST", "V1.0/Appointments/query", q({"op": "eq", "field": "projectID", "value": 1})
    )
    assert status == 500 and "projectID" in body["errors"][0] and "Appointments" in body["errors"][0]
    status, body = api_call(
        server, "POST", "V1.0/Resources/query", q({"op": "gte", "field": "id", "value": 0}, fields=["EMAIL"])
    )
    assert status == 200 and all(set(row) == {"id", "email"} for row in body["items"])


def test_keyset_paging_in_500_rows_with_get_and_post(server: AutotaskServer) -> None:
    server.store.add_many(
        "Appointments",
        [
            {"resourceID": 29682885, "title": f"a{n}", "startDateTime": t(1), "endDateTime": t(1, 1)}
            for n in range(1203)
        ],
    )
    body = q({"op": "eq", "field": "resourceID", "value": 29682885})
    status, page = api_call(server, "POST", "V1.0/Appointments/query", body)
    seen = ids(page)
    pages = 1
    assert (
        status == 200 and page["pageDetails"]["count"] == 500 and page["pageDetails"]["prevPageUrl"] is None
    )
    while page["pageDetails"]["nextPageUrl"]:
        method = "GET" if pages % 2 else "POST"  # the mock accepts both on a next URL
        status, page = api_call(
            server, method, page["pageDetails"]["nextPageUrl"], body if method == "POST" else None
        )
        assert status == 200
        seen += ids(page)
        pages += 1
    assert pages == 3 and len(seen) == 1203 and seen == sorted(seen) and len(set(seen)) == 1203
    # GET with the query in `search`, and count
    search = urllib.parse.quote(json.dumps(q({"op": "eq", "field": "title", "value": "a7"})))
    status, page = api_call(server, "GET", f"V1.0/Appointments/query?search={search}")
    assert status == 200 and len(page["items"]) == 1
    status, count = api_call(server, "POST", "V1.0/Appointments/query/count", body)
    assert count == {"queryCount": 1203}
    assert api_call(server, "POST", "V1.0/Appointments/query", q(max_records=501))[0] == 500


def test_create_patch_put_delete_and_their_rules(server: AutotaskServer) -> None:
    new = {
        "resourceID": 29682885,
        "title": "Visit",
        "description": "d",
        "startDateTime": t(1),
        "endDateTime": t(1, 1),
        "updateDateTime": "1999-01-01T00:00:00Z",
    }  # read-only: ignored
    status, body = api_call(server, "POST", "V1.0/Appointments", new)
    assert status == 200 and set(body) == {"itemId"}
    item_id = body["itemId"]
    row = api_call(server, "GET", f"V1.0/Appointments/{item_id}")[1]["item"]
    assert row["updateDateTime"] != "1999-01-01T00:00:00Z" and row["creatorResourceID"] == 29682800
    # PATCH: only the sent fields change
    assert api_call(server, "PATCH", "V1.0/Appointments", {"id": item_id, "title": "Visit 2"})[0] == 200
    row = api_call(server, "GET", f"V1.0/Appointments/{item_id}")[1]["item"]
    assert (row["title"], row["description"]) == ("Visit 2", "d")
    # PUT: omitted writable fields become null; required ones must be there
    put = {"id": item_id, "resourceID": 29682885, "title": "P", "startDateTime": t(1), "endDateTime": t(1, 2)}
    assert api_call(server, "PUT", "V1.0/Appointments", put)[0] == 200
    row = api_call(server, "GET", f"V1.0/Appointments/{item_id}")[1]["item"]
    assert row["description"] is None and row["title"] == "P"
    status, body = api_call(server, "PUT", "V1.0/Appointments", {"id": item_id, "title": "x"})
    assert status == 500 and "required" in body["errors"][0]
    status, body = api_call(server, "POST", "V1.0/Appointments", {"title": "no resource"})
    assert status == 500 and "resourceID" in body["errors"][0]
    status, body = api_call(server, "POST", "V1.0/Appointments", {**new, "endDateTime": t(0)})
    assert status == 500
    assert api_call(server, "DELETE", f"V1.0/Appointments/{item_id}") == (200, {"itemId": item_id})
    status, body = api_call(server, "DELETE", f"V1.0/Appointments/{item_id}")
    assert status == 500 and "No matching records" in body["errors"][0]


def test_missing_by_id_is_null_or_404(server: AutotaskServer) -> None:
    assert api_call(server, "GET", "V1.0/Appointments/424242") == (200, {"item": None})
    server.missing_item = "404"
    assert api_call(server, "GET", "V1.0/Appointments/424242")[0] == 404


def test_todos_are_written_only_through_the_company(server: AutotaskServer) -> None:
    todo = {
        "actionType": 1,
        "assignedToResourceID": 29682885,
        "activityDescription": "Call back",
        "startDateTime": t(1),
        "endDateTime": t(1, 1),
    }
    status, body = api_call(server, "POST", "V1.0/CompanyToDos", {**todo, "companyID": 1})
    assert status == 405 and "does not support http method 'POST'" in body["Message"]
    assert api_call(server, "GET", "V1.0/ToDos/1")[0] == 404  # no top-level ToDos entity
    status, body = api_call(server, "POST", "V1.0/Companies/1/ToDos", todo)
    assert status == 200
    todo_id = body["itemId"]
    assert (
        api_call(server, "PATCH", "V1.0/Companies/1/ToDos", {"id": todo_id, "completedDate": t(0)})[0] == 200
    )
    row = api_call(server, "GET", f"V1.0/CompanyToDos/{todo_id}")[1]["item"]
    assert row["companyID"] == 1 and row["completedDate"] == t(0)
    # the wrong parent does not find it
    assert (
        api_call(server, "PATCH", "V1.0/Companies/2/ToDos", {"id": todo_id, "completedDate": None})[0] == 500
    )
    assert api_call(server, "DELETE", "V1.0/Companies/99/ToDos/1")[0] == 500
    assert api_call(server, "DELETE", "V1.0/Companies/1")[0] == 405  # companies are never deleted
    assert api_call(server, "POST", "V1.0/Resources", {"email": "x"})[0] == 405


def test_appointments_of_others_need_the_system_setting(server: AutotaskServer) -> None:
    server.appointments_of_others = False
    new = {"resourceID": 29682885, "title": "x", "startDateTime": t(1), "endDateTime": t(1, 1)}
    status, body = api_call(server, "POST", "V1.0/Appointments", new)
    assert status == 403 and "permissions" in body["errors"][0]
    assert api_call(server, "POST", "V1.0/Appointments", {**new, "resourceID": 29682800})[0] == 200


def _concurrently(server: AutotaskServer, paths: list[str]) -> list[int]:
    statuses: list[int] = [0] * len(paths)

    def one(n: int) -> None:
        statuses[n] = api_call(server, "GET", paths[n])[0]

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(paths))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return statuses


def test_thread_limit_refuses_a_fourth_request_per_endpoint(server: AutotaskServer) -> None:
    server.faults.latency_ms = 1500  # every request stays in flight long enough to overlap
    statuses = _concurrently(server, ["V1.0/Appointments/1"] * 5)
    stats = server.stats()
    assert statuses.count(429) >= 1 and statuses.count(200) <= 3
    assert stats["thread_limit_rejections"] == statuses.count(429)
    server.reset_stats()
    # other endpoints have their own three
    statuses = _concurrently(server, ["V1.0/Appointments/1"] * 3 + ["V1.0/Companies/1"])
    assert statuses == [200, 200, 200, 200] and server.stats()["max_concurrent"] >= 2


def test_hourly_threshold_and_threshold_information() -> None:
    with AutotaskServer(api_user=(USER, SECRET, CODE), seed=base_seed(), threshold=4) as srv:
        for _ in range(3):
            assert api_call(srv, "GET", "V1.0/Resources/29682885")[0] == 200
        status, body = api_call(srv, "GET", "V1.0/ThresholdInformation")
        assert status == 200 and body == {
            "externalRequestThreshold": 4,
            "requestThresholdTimeframe": 60,
            "currentTimeframeRequestCount": 4,
        }
        status, body = api_call(srv, "GET", "V1.0/Resources/29682885")
        assert status == 429 and "threshold" in body["errors"][0]
        assert srv.stats()["threshold"] == {"limit": 4, "used": 4}


def test_faults_and_stats(server: AutotaskServer) -> None:
    status, _ = api_call(
        server, "POST", f"{server.origin}/__emulator/faults", {"fail_next": 2, "fail_status": 503}, auth=None
    )
    assert status == 200
    assert [api_call(server, "GET", "V1.0/Resources/29682885")[0] for _ in range(3)] == [503, 503, 200]
    assert api_call(server, "POST", f"{server.origin}/__emulator/faults", {"nope": 1}, auth=None)[0] == 400
    status, stats = api_call(server, "GET", f"{server.origin}/__emulator/stats", auth=None)
    assert stats["requests"]["GET Resources"] == 3 and stats["max_concurrent"] == 1
    assert stats["thread_limit_rejections"] == 0 and stats["threshold"]["limit"] == 10000


def test_throttle_next_answers_the_threshold_429_and_does_nothing(server: AutotaskServer) -> None:
    switched = api_call(server, "POST", f"{server.origin}/__emulator/faults", {"throttle_next": 1}, auth=None)
    assert switched[0] == 200, switched
    appointment = {"resourceID": 29682885, "title": "x", "startDateTime": t(1), "endDateTime": t(1, 1)}
    status, body = api_call(server, "POST", "V1.0/Appointments", appointment)
    assert status == 429 and "threshold" in body["errors"][0], body
    assert not list(server.store.rows("Appointments"))
    assert api_call(server, "POST", "V1.0/Appointments", appointment)[0] == 200
    stats = server.stats()
    assert stats["throttled"] == 1 and stats["threshold_rejections"] == 0, stats


def test_a_moved_zone_answers_401_and_the_lookup_names_the_new_one(server: AutotaskServer) -> None:
    old = server.url
    server.move_zone("127.0.0.1")
    status, body = api_call(server, "GET", f"V1.0/ZoneInformation?user={USER}", auth=None)
    assert status == 200 and body["url"] == server.zone_url != old, body
    assert body["url"].startswith("https://127.0.0.1:")
    assert api_call(server, "GET", old + "V1.0/Resources/29682885")[0] == 401
    assert api_call(server, "GET", server.zone_url + "V1.0/Resources/29682885")[0] == 200
    assert server.stats()["wrong_zone"] == 1


def test_state_dir_keeps_data_and_ca_across_restarts(tmp_path: Path) -> None:
    with AutotaskServer(api_user=(USER, SECRET, CODE), state_dir=tmp_path, seed=base_seed()) as srv:
        _status, body = api_call(
            srv,
            "POST",
            "V1.0/Appointments",
            {"resourceID": 29682885, "title": "kept", "startDateTime": t(1), "endDateTime": t(1, 1)},
        )
        item_id = body["itemId"]
        ca = srv.ca_file.read_text()
    with AutotaskServer(api_user=(USER, SECRET, CODE), state_dir=tmp_path, seed={}) as srv:
        assert srv.ca_file.read_text() == ca
        assert api_call(srv, "GET", f"V1.0/Appointments/{item_id}")[1]["item"]["title"] == "kept"


def test_command_line_prints_url_and_ca_then_serves(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(base_seed()))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exchanged.testing.autotask",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "s"),
            "--api-user",
            f"{USER}:{SECRET}:{CODE}",
            "--seed",
            str(seed),
            "--threshold",
            "50",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("https://localhost:") and info["url"].endswith("/ATServicesRest/")

        class Remote:
            url = info["url"]
            ca_file = info["ca_file"]

        status, body = api_call(Remote, "GET", "V1.0/Resources/29682885")  # type: ignore[arg-type]
        assert status == 200 and body["item"]["firstName"] == "Jane"
        stats_url = info["url"].replace("ATServicesRest/", "__emulator/stats")
        status, stats = api_call(Remote, "GET", stats_url, auth=None)  # type: ignore[arg-type]
        assert stats["threshold"]["limit"] == 50
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
