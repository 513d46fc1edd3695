"""The server's JSON against Microsoft's description of Graph v1.0: every answer validates against
our compact description of the types (graph-v1.0-subset.json, as JSON Schema), and that
description matches Microsoft's CSDL property by property when the CSDL is at hand."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from .conftest import PSA_KEY, Graph
from .graph_types import find_csdl, json_schema, load_csdl, load_subset

U = "/users/alice@example.test"
WINDOW = "startDateTime=2026-12-01T00:00:00Z&endDateTime=2027-01-01T00:00:00Z"


def validator(type_name: str) -> jsonschema.Draft202012Validator:
    schema = json_schema(load_subset())
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{type_name}"})


def check(type_name: str, value: Any) -> None:
    errors = sorted(validator(type_name).iter_errors(value), key=lambda e: list(e.path))
    assert not errors, f"{type_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def check_collection(type_name: str, body: dict[str, Any]) -> None:
    assert set(body) <= {"@odata.context", "value", "@odata.nextLink", "@odata.deltaLink"}, body.keys()
    for entry in body["value"]:
        check(type_name, entry)


def test_answers_validate_against_the_described_types(graph: Graph) -> None:
    event = graph.post(
        f"{U}/events",
        json={
            "subject": "s",
            "body": {"contentType": "html", "content": "<p>b</p>"},
            "location": {"displayName": "Room"},
            "showAs": "workingElsewhere",
            "sensitivity": "confidential",
            "importance": "high",
            "categories": ["PSA"],
            "attendees": [{"type": "optional", "emailAddress": {"address": "x@example.test", "name": "X"}}],
            "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "Pacific Standard Time"},
            "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "Pacific Standard Time"},
            "singleValueExtendedProperties": [{"id": PSA_KEY, "value": "appointment:1"}],
        },
    ).json()
    check("event", event)
    check("event", graph.get(f"{U}/events/{event['id']}?$expand=singleValueExtendedProperties").json())
    series = graph.post(
        f"{U}/events",
        json={
            "subject": "r",
            "isAllDay": True,
            "start": {"dateTime": "2026-12-07T00:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-08T00:00:00", "timeZone": "UTC"},
            "recurrence": {
                "pattern": {
                    "type": "relativeMonthly",
                    "interval": 1,
                    "daysOfWeek": ["monday"],
                    "index": "first",
                },
                "range": {"type": "endDate", "startDate": "2026-12-07", "endDate": "2027-06-30"},
            },
        },
    ).json()
    check("event", series)
    check_collection("event", graph.get(f"{U}/events?$top=1").json())
    check_collection("event", graph.get(f"{U}/calendarView?{WINDOW}").json())
    check_collection("event", graph.get(f"{U}/events/{series['id']}/instances?{WINDOW}").json())
    items, link = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}")
    graph.delete(f"{U}/events/{event['id']}")
    removed, _ = graph.all_pages(link)
    for entry in items + removed:
        check("event", entry)

    contact = graph.post(
        f"{U}/contacts",
        json={
            "givenName": "Jane",
            "surname": "Doe",
            "emailAddresses": [{"address": "jane@example.test", "name": "Jane"}],
            "businessPhones": ["1"],
            "homePhones": ["2"],
            "mobilePhone": "3",
            "businessAddress": {"street": "Main St 1", "city": "Berlin", "postalCode": "10115"},
            "personalNotes": "n",
        },
    ).json()
    check("contact", contact)
    check_collection("contact", graph.get(f"{U}/contacts").json())
    check_collection("contact", graph.get(f"{U}/contacts/delta").json())
    check_collection("contactFolder", graph.get(f"{U}/contactFolders").json())

    task_list = graph.post(f"{U}/todo/lists", json={"displayName": "PSA"}).json()
    check("todoTaskList", task_list)
    check_collection("todoTaskList", graph.get(f"{U}/todo/lists").json())
    task = graph.post(
        f"{U}/todo/lists/{task_list['id']}/tasks",
        json={
            "title": "t",
            "status": "completed",
            "importance": "low",
            "dueDateTime": {"dateTime": "2026-12-07T00:00:00", "timeZone": "UTC"},
            "startDateTime": {"dateTime": "2026-12-06T00:00:00", "timeZone": "UTC"},
            "reminderDateTime": {"dateTime": "2026-12-06T08:00:00", "timeZone": "UTC"},
            "isReminderOn": True,
            "linkedResources": [
                {"applicationName": "exchanged", "externalId": "todo:1", "webUrl": "https://x"}
            ],
        },
    ).json()
    check("todoTask", task)
    tasks = f"{U}/todo/lists/{task_list['id']}/tasks"
    check_collection("todoTask", graph.get(f"{tasks}?$expand=linkedResources").json())
    check_collection("todoTask", graph.get(f"{tasks}/delta").json())
    check_collection("linkedResource", graph.get(f"{tasks}/{task['id']}/linkedResources").json())

    check("mailboxSettings", graph.get(f"{U}/mailboxSettings").json())
    check("user", graph.get(U).json())
    check("calendar", graph.get(f"{U}/calendar").json())
    check("odataError", graph.get(f"{U}/events/nope").json())


def test_an_invented_property_or_value_fails_validation() -> None:
    """The check can fail: a property v1.0 does not have, or an enum value it does not know."""
    with pytest.raises(AssertionError, match="uid"):
        check("event", {"id": "x", "uid": "y"})
    with pytest.raises(AssertionError, match="showAs"):
        check("event", {"id": "x", "showAs": "away"})
    with pytest.raises(AssertionError):
        check("dateTimeTimeZone", {"dateTime": 5, "timeZone": "UTC"})


def test_the_described_types_match_microsofts_csdl() -> None:
    path = find_csdl()
    if path is None:
        pytest.skip(
            "Microsoft's v1.0-Prod.csdl (microsoftgraph/msgraph-metadata) is not at hand: put it at "
            "../shared/reference/graph/v1.0-Prod.csdl to check graph-v1.0-subset.json against it"
        )
    types, enums = load_csdl(path)
    subset = load_subset()
    wrong = []
    for type_name, props in subset["types"].items():
        if type_name not in types:
            wrong.append(f"type {type_name} is not in v1.0")
            continue
        for prop, declared in props.items():
            actual = types[type_name].get(prop)
            if actual != declared:
                wrong.append(f"{type_name}.{prop}: described {declared}, v1.0 has {actual}")
    for enum, members in subset["enums"].items():
        if enums.get(enum) != members:
            wrong.append(f"enum {enum}: described {members}, v1.0 has {enums.get(enum)}")
    assert not wrong, "\n".join(wrong)
