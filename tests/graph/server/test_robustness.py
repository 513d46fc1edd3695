"""Whatever a client sends, the Graph test server answers with a Graph error, never an internal
one: request bodies built from the real field names with values of any JSON type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchanged.testing.graph import Client, GraphTestServer
from exchanged.testing.graph.api import Request
from exchanged.testing.graph.auth import DEFAULT_PERMISSIONS, Grant
from exchanged.testing.graph.contact_json import CONTACT_FIELDS
from exchanged.testing.graph.event_json import EVENT_FIELDS
from exchanged.testing.graph.task_json import TASK_FIELDS

from .conftest import CLIENT_ID, TENANT

U = "/users/alice@example.test"
GRANT = Grant(CLIENT_ID, frozenset(DEFAULT_PERMISSIONS))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "2026-12-07T09:00:00",
            "UTC",
            "W. Europe Standard Time",
            "busy",
            "private",
            "daily",
            "numbered",
            "2026-12-07",
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "dateTime",
                    "timeZone",
                    "contentType",
                    "content",
                    "displayName",
                    "address",
                    "name",
                    "id",
                    "value",
                    "pattern",
                    "range",
                    "type",
                    "interval",
                    "daysOfWeek",
                    "startDate",
                    "numberOfOccurrences",
                    "emailAddress",
                    "applicationName",
                    "externalId",
                    "street",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


def bodies(fields: set[str]) -> st.SearchStrategy[Any]:
    return st.dictionaries(st.sampled_from(sorted(fields)), json_values, max_size=6) | json_values


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphTestServer]:
    srv = GraphTestServer(
        tmp_path_factory.mktemp("fuzz"), ["alice@example.test"], TENANT, [Client(CLIENT_ID)]
    )
    try:
        yield srv
    finally:
        srv.store.close()


def call(
    server: GraphTestServer, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
) -> Any:
    headers = {"content-type": "application/json"}
    return server.api.handle(Request(method, path, query or {}, headers, body, GRANT))


def first_id(server: GraphTestServer, kind: str, body: dict[str, Any]) -> str:
    response = call(server, "POST", f"{U}/{kind}", body)
    assert response.status == 201, response.body
    return str(response.body["id"])


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=bodies(EVENT_FIELDS))
def test_event_bodies(server: GraphTestServer, body: Any) -> None:
    answer = call(server, "POST", f"{U}/events", body)
    assert answer.status in (201, 400), answer.body
    if answer.status == 400:
        assert set(answer.body["error"]) == {"code", "message", "innerError"}
    target = first_id(
        server,
        "events",
        {
            "subject": "x",
            "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "UTC"},
        },
    )
    assert call(server, "PATCH", f"{U}/events/{target}", body).status in (200, 400)


@FUZZ
@given(body=bodies(CONTACT_FIELDS))
def test_contact_bodies(server: GraphTestServer, body: Any) -> None:
    assert call(server, "POST", f"{U}/contacts", body).status in (201, 400)


@FUZZ
@given(body=bodies(TASK_FIELDS))
def test_task_bodies(server: GraphTestServer, body: Any) -> None:
    lists = call(server, "GET", f"{U}/todo/lists").body["value"]
    assert call(server, "POST", f"{U}/todo/lists/{lists[0]['id']}/tasks", body).status in (201, 400)


@FUZZ
@given(
    option=st.sampled_from(
        ["$filter", "$expand", "$select", "$top", "$skip", "startDateTime", "$deltatoken"]
    ),
    value=st.text(max_size=40)
    | st.sampled_from(
        [
            "singleValueExtendedProperties/Any(ep: ep/id eq 'String {8f4b6d2e-3c1a-4e7b-9a5d-2f6c8b1e7d34}"
            " Name x'",
            "singleValueExtendedProperties($filter=id eq 'String 0x1')",
            "subject eq 'x' or (subject ne null",
        ]
    ),
    path=st.sampled_from(["/events", "/calendarView", "/contacts", "/calendarView/delta", "/contacts/delta"]),
)
def test_query_options(server: GraphTestServer, option: str, value: str, path: str) -> None:
    query = {option: value}
    if "calendarView" in path and option != "startDateTime":
        query.update(startDateTime="2026-12-01T00:00:00Z", endDateTime="2026-12-31T00:00:00Z")
    else:
        query.setdefault("endDateTime", "2026-12-31T00:00:00Z")
    answer = call(server, "GET", f"{U}{path}", None, query)
    assert answer.status in (200, 400, 410), answer.body


BASE = {
    "subject": "x",
    "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "UTC"},
    "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "UTC"},
}
NUMBERED = {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": 3}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"recurrence": {"pattern": {"type": "daily", "interval": "abc"}, "range": NUMBERED}}, "interval"),
        (
            {"recurrence": {"pattern": {"type": "daily"}, "range": {**NUMBERED, "numberOfOccurrences": "x"}}},
            "numberOfOccurrences",
        ),
        (
            {
                "recurrence": {
                    "pattern": {"type": "absoluteYearly", "month": 13, "dayOfMonth": 1},
                    "range": NUMBERED,
                }
            },
            "month",
        ),
        (
            {"recurrence": {"pattern": {"type": "daily"}, "range": {**NUMBERED, "startDate": "garbage"}}},
            "startDate",
        ),
        (
            {"recurrence": {"pattern": {"type": "weekly", "daysOfWeek": "monday"}, "range": NUMBERED}},
            "daysOfWeek",
        ),
        ({"start": {"dateTime": "2026-12-07T09:00:00", "timeZone": 7}}, "timeZone"),
        ({"start": {"dateTime": "9999-12-31T23:59:59", "timeZone": "Pacific Standard Time"}}, "out of range"),
        (
            {"start": {"dateTime": "0001-01-01T00:00:00", "timeZone": "W. Europe Standard Time"}},
            "out of range",
        ),
        ({"reminderMinutesBeforeStart": 10**12}, "reminderMinutesBeforeStart"),
    ],
)
def test_bad_values_are_named_not_internal_errors(
    server: GraphTestServer, change: dict[str, Any], named: str
) -> None:
    answer = call(server, "POST", f"{U}/events", {**BASE, **change})
    assert answer.status == 400, answer.body
    assert named in answer.body["error"]["message"]
