"""Contacts (default folder, delta, extended properties) and Microsoft To Do (lists, tasks,
tasks delta, linkedResources)."""

from __future__ import annotations

from typing import Any

from .conftest import PSA_KEY, Graph

U = "/users/alice@example.test"


def contact(given: str, **extra: Any) -> dict[str, Any]:
    return {"givenName": given, "surname": "Doe", **extra}


def test_contacts_crud_fields_and_key(graph: Graph) -> None:
    r = graph.post(
        f"{U}/contacts",
        json=contact(
            "Jane",
            companyName="ACME",
            jobTitle="CTO",
            emailAddresses=[{"address": "jane@acme.test", "name": "Jane Doe"}],
            businessPhones=["+49 30 1234"],
            mobilePhone="+49 170 1",
            categories=["PSA"],
            singleValueExtendedProperties=[{"id": PSA_KEY, "value": "contact:5"}],
        ),
    )
    assert r.status_code == 201, r.text
    c = r.json()
    assert (c["displayName"], c["fileAs"], c["companyName"], c["jobTitle"]) == (
        "Jane Doe",
        "Doe, Jane",
        "ACME",
        "CTO",
    )
    assert c["emailAddresses"][0]["address"] == "jane@acme.test"
    assert (c["businessPhones"], c["mobilePhone"], c["categories"]) == (["+49 30 1234"], "+49 170 1", ["PSA"])
    expand = f"$expand=singleValueExtendedProperties($filter=id eq '{PSA_KEY}')"
    got = graph.get(f"{U}/contacts/{c['id']}?{expand}").json()
    assert got["singleValueExtendedProperties"] == [{"id": PSA_KEY, "value": "contact:5"}]
    found = graph.get(
        f"{U}/contacts?$filter=singleValueExtendedProperties/Any(ep: ep/id eq '{PSA_KEY}'"
        " and ep/value eq 'contact:5')"
    ).json()["value"]
    assert [x["id"] for x in found] == [c["id"]]
    r = graph.patch(f"{U}/contacts/{c['id']}", json={"surname": "Roe", "mobilePhone": None})
    assert r.status_code == 200, r.text
    assert (r.json()["displayName"], r.json()["mobilePhone"]) == ("Jane Roe", None)
    assert r.json()["businessPhones"] == ["+49 30 1234"]
    assert graph.delete(f"{U}/contacts/{c['id']}").status_code == 204
    assert graph.get(f"{U}/contacts/{c['id']}").status_code == 404


def test_contacts_delta(graph: Graph) -> None:
    ids = [graph.post(f"{U}/contacts", json=contact(f"C{n}")).json()["id"] for n in range(3)]
    pages = {"Prefer": "odata.maxpagesize=2"}
    items, link = graph.all_pages(f"{U}/contacts/delta", headers=pages)
    assert sorted(i["givenName"] for i in items) == ["C0", "C1", "C2"]
    graph.patch(f"{U}/contacts/{ids[0]}", json={"givenName": "C0b"})
    graph.delete(f"{U}/contacts/{ids[1]}")
    changes, _ = graph.all_pages(link)
    assert [c["givenName"] for c in changes if "@removed" not in c] == ["C0b"]
    assert [c["id"] for c in changes if "@removed" in c] == [ids[1]]
    # the folder form of the same collection
    folder = graph.get(f"{U}/contacts/{ids[0]}").json()["parentFolderId"]
    items, _ = graph.all_pages(f"{U}/contactFolders/{folder}/contacts/delta?$select=givenName")
    assert sorted(i["givenName"] for i in items) == ["C0b", "C2"]
    assert set(items[0]) <= {"id", "@odata.etag", "givenName"}


def test_todo_lists_tasks_and_linked_resources(graph: Graph) -> None:
    lists = graph.get(f"{U}/todo/lists").json()["value"]
    assert [(x["displayName"], x["wellknownListName"]) for x in lists] == [("Tasks", "defaultList")]
    r = graph.post(f"{U}/todo/lists", json={"displayName": "PSA"})
    assert r.status_code == 201 and r.json()["wellknownListName"] == "none"
    lid = r.json()["id"]
    assert [x["displayName"] for x in graph.get(f"{U}/todo/lists").json()["value"]] == ["Tasks", "PSA"]

    r = graph.post(
        f"{U}/todo/lists/{lid}/tasks",
        json={
            "title": "Call back",
            "body": {"contentType": "text", "content": "about the printer"},
            "startDateTime": {"dateTime": "2026-12-07T00:00:00", "timeZone": "UTC"},
            "dueDateTime": {"dateTime": "2026-12-09T00:00:00", "timeZone": "W. Europe Standard Time"},
            "categories": ["PSA"],
            "linkedResources": [
                {"applicationName": "exchanged", "externalId": "todo:9", "displayName": "PSA todo:9"}
            ],
        },
    )
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["status"] == "notStarted" and "completedDateTime" not in task
    assert task["dueDateTime"] == {"dateTime": "2026-12-08T23:00:00.0000000", "timeZone": "UTC"}
    [link] = task["linkedResources"]
    assert (link["applicationName"], link["externalId"]) == ("exchanged", "todo:9")
    tid = task["id"]

    r = graph.patch(f"{U}/todo/lists/{lid}/tasks/{tid}", json={"status": "completed"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and "completedDateTime" in r.json()
    r = graph.patch(f"{U}/todo/lists/{lid}/tasks/{tid}", json={"status": "notStarted"})
    assert "completedDateTime" not in r.json()

    listed = graph.get(f"{U}/todo/lists/{lid}/tasks?$expand=linkedResources").json()["value"]
    assert listed[0]["linkedResources"][0]["externalId"] == "todo:9"
    assert "linkedResources" not in graph.get(f"{U}/todo/lists/{lid}/tasks/{tid}").json()
    base = f"{U}/todo/lists/{lid}/tasks/{tid}/linkedResources"
    added = graph.post(base, json={"applicationName": "other", "externalId": "x"}).json()
    assert graph.patch(f"{base}/{added['id']}", json={"externalId": "y"}).json()["externalId"] == "y"
    assert graph.delete(f"{base}/{added['id']}").status_code == 204
    assert [x["externalId"] for x in graph.get(base).json()["value"]] == ["todo:9"]
    # the task is not in the default list
    default_id = lists[0]["id"]
    assert graph.get(f"{U}/todo/lists/{default_id}/tasks/{tid}").status_code == 404


def test_tasks_delta(graph: Graph) -> None:
    lid = graph.post(f"{U}/todo/lists", json={"displayName": "PSA"}).json()["id"]
    ids = [graph.post(f"{U}/todo/lists/{lid}/tasks", json={"title": f"T{n}"}).json()["id"] for n in range(3)]
    items, link = graph.all_pages(
        f"{U}/todo/lists/{lid}/tasks/delta", headers={"Prefer": "odata.maxpagesize=2"}
    )
    assert sorted(i["title"] for i in items) == ["T0", "T1", "T2"]
    graph.patch(f"{U}/todo/lists/{lid}/tasks/{ids[2]}", json={"status": "completed"})
    assert graph.delete(f"{U}/todo/lists/{lid}/tasks/{ids[0]}").status_code == 204
    changes, _ = graph.all_pages(link)
    assert [(c["title"], c["status"]) for c in changes if "@removed" not in c] == [("T2", "completed")]
    assert [c["id"] for c in changes if "@removed" in c] == [ids[0]]
    # a list's delta token is not another list's
    other = graph.post(f"{U}/todo/lists", json={"displayName": "Other"}).json()["id"]
    assert graph.get(link.replace(lid, other)).status_code == 400


def test_todo_needs_tasks_permission_and_validates(graph: Graph) -> None:
    lid = graph.post(f"{U}/todo/lists", json={"displayName": "PSA"}).json()["id"]
    r = graph.post(f"{U}/todo/lists/{lid}/tasks", json={"title": "x", "status": "finished"})
    assert r.status_code == 400
    r = graph.post(f"{U}/todo/lists/{lid}/tasks", json={"title": "x", "linkedResources": [{"bogus": 1}]})
    assert r.status_code == 400
    assert graph.post(f"{U}/todo/lists", json={}).status_code == 400
