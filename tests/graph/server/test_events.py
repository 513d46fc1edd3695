"""Events: writes, reads in a time zone, extended properties, calendarView and its delta."""

from __future__ import annotations

from typing import Any

from .conftest import PSA_KEY, Graph

U = "/users/alice@example.test"
UTC = {"Prefer": 'outlook.timezone="UTC"'}
WINDOW = "startDateTime=2026-12-01T00:00:00Z&endDateTime=2027-01-01T00:00:00Z"


def event(subject: str, day: int = 7, hour: int = 9, **extra: Any) -> dict[str, Any]:
    return {
        "subject": subject,
        "start": {"dateTime": f"2026-12-{day:02d}T{hour:02d}:00:00", "timeZone": "UTC"},
        "end": {"dateTime": f"2026-12-{day:02d}T{hour + 1:02d}:00:00", "timeZone": "UTC"},
        **extra,
    }


def create(graph: Graph, body: dict[str, Any], user: str = U) -> dict[str, Any]:
    r = graph.post(f"{user}/events", json=body, headers=UTC)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_create_get_patch_delete_with_fields(graph: Graph) -> None:
    created = create(
        graph,
        {
            "subject": "Service call",
            "body": {"contentType": "text", "content": "Printer on fire"},
            "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "W. Europe Standard Time"},
            "end": {"dateTime": "2026-12-07T10:30:00", "timeZone": "W. Europe Standard Time"},
            "location": {"displayName": "Room 1"},
            "showAs": "tentative",
            "sensitivity": "private",
            "categories": ["PSA", "Service"],
            "singleValueExtendedProperties": [{"id": PSA_KEY, "value": "appointment:1"}],
        },
    )
    assert created["start"] == {"dateTime": "2026-12-07T08:00:00.0000000", "timeZone": "UTC"}
    assert created["end"] == {"dateTime": "2026-12-07T09:30:00.0000000", "timeZone": "UTC"}
    assert created["originalStartTimeZone"] == "W. Europe Standard Time"
    assert (created["showAs"], created["sensitivity"], created["categories"]) == (
        "tentative",
        "private",
        ["PSA", "Service"],
    )
    assert created["type"] == "singleInstance" and created["attendees"] == []
    assert created["@odata.etag"] == f'W/"{created["changeKey"]}"'
    eid = created["id"]

    local = graph.get(f"{U}/events/{eid}", headers={"Prefer": 'outlook.timezone="W. Europe Standard Time"'})
    assert local.json()["start"]["dateTime"] == "2026-12-07T09:00:00.0000000"
    assert local.headers["Preference-Applied"] == 'outlook.timezone="W. Europe Standard Time"'
    assert "singleValueExtendedProperties" not in local.json()

    r = graph.patch(f"{U}/events/{eid}", json={"subject": "Renamed", "showAs": "free"}, headers=UTC)
    assert r.status_code == 200, r.text
    assert (r.json()["subject"], r.json()["showAs"], r.json()["sensitivity"]) == (
        "Renamed",
        "free",
        "private",
    )
    assert r.json()["changeKey"] != created["changeKey"]
    # a stale etag is refused
    stale = graph.patch(
        f"{U}/events/{eid}", json={"subject": "x"}, headers={"If-Match": created["@odata.etag"]}
    )
    assert stale.status_code == 412

    assert graph.delete(f"{U}/events/{eid}").status_code == 204
    gone = graph.get(f"{U}/events/{eid}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
    assert graph.server.invitations() == []  # no attendees, no invitations


def test_all_day_events_are_dates_in_the_mailbox_zone(graph: Graph) -> None:
    zone = "W. Europe Standard Time"
    body = {
        "subject": "Holiday",
        "isAllDay": True,
        "start": {"dateTime": "2026-12-24T00:00:00", "timeZone": zone},
        "end": {"dateTime": "2026-12-25T00:00:00", "timeZone": zone},
    }
    created = create(graph, body)
    assert created["isAllDay"] is True
    assert created["start"] == {"dateTime": "2026-12-24T00:00:00.0000000", "timeZone": "UTC"}
    assert created["end"] == {"dateTime": "2026-12-25T00:00:00.0000000", "timeZone": "UTC"}
    body["start"] = {"dateTime": "2026-12-24T10:00:00", "timeZone": zone}
    r = graph.post(f"{U}/events", json=body)
    assert r.status_code == 400 and "midnight" in r.json()["error"]["message"]


def test_bad_input_is_refused_with_graph_errors(graph: Graph) -> None:
    r = graph.post(
        f"{U}/events", json={**event("x"), "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "Mars"}}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "TimeZoneNotSupportedException"
    r = graph.post(f"{U}/events", json=event("x", showAs="sometimes"))
    assert r.status_code == 400
    r = graph.post(f"{U}/events", json={**event("x"), "nonsense": 1})
    assert r.status_code == 400 and "nonsense" in r.json()["error"]["message"]
    r = graph.get(f"{U}/events/not-an-id")
    assert r.status_code == 400 and r.json()["error"]["code"] == "ErrorInvalidIdMalformed"
    r = graph.get("/users/nobody@example.test/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "ErrorInvalidUser"
    body = r.json()["error"]
    assert set(body) == {"code", "message", "innerError"} and "request-id" in body["innerError"]
    # another mailbox's item is not found through this one
    other = create(graph, event("bob's"), "/users/bob@example.test")
    assert graph.get(f"{U}/events/{other['id']}").status_code == 404


def test_filter_and_expand_on_extended_properties(graph: Graph) -> None:
    for n in (1, 2):
        create(
            graph,
            event(f"A{n}", singleValueExtendedProperties=[{"id": PSA_KEY, "value": f"appointment:{n}"}]),
        )
    create(graph, event("not ours"))
    expand = f"$expand=singleValueExtendedProperties($filter=id eq '{PSA_KEY}')"
    ours = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PSA_KEY}'"
    r = graph.get(f"{U}/events?$filter={ours} and ep/value eq 'appointment:2')&{expand}")
    assert r.status_code == 200, r.text
    [hit] = r.json()["value"]
    assert hit["subject"] == "A2"
    assert hit["singleValueExtendedProperties"] == [{"id": PSA_KEY, "value": "appointment:2"}]
    r = graph.get(f"{U}/events?$filter={ours} and ep/value ne null)&$top=500")
    assert sorted(e["subject"] for e in r.json()["value"]) == ["A1", "A2"]
    # the GUID's case does not matter, the id must be named
    upper = PSA_KEY.replace("8f4b6d2e", "8F4B6D2E")
    r = graph.get(
        f"{U}/events?$filter=singleValueExtendedProperties/any(ep:ep/id eq '{upper}'"
        " and ep/value eq 'appointment:1')"
    )
    assert [e["subject"] for e in r.json()["value"]] == ["A1"]
    r = graph.get(f"{U}/events?$filter=singleValueExtendedProperties/Any(ep: ep/value eq 'appointment:1')")
    assert r.status_code == 400
    # PATCH replaces our property's value and keeps the event's others
    eid = hit["id"]
    graph.patch(
        f"{U}/events/{eid}",
        json={"singleValueExtendedProperties": [{"id": PSA_KEY, "value": "appointment:9"}]},
    )
    r = graph.get(f"{U}/events/{eid}?{expand}")
    assert r.json()["singleValueExtendedProperties"] == [{"id": PSA_KEY, "value": "appointment:9"}]


def test_calendar_view_pages_and_delta_tracks_changes(graph: Graph) -> None:
    ids = [create(graph, event(f"E{n}", day=n + 1))["id"] for n in range(5)]
    create(
        graph,
        event("outside", day=1, hour=9)
        | {
            "start": {"dateTime": "2027-02-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2027-02-01T10:00:00", "timeZone": "UTC"},
        },
    )
    r = graph.get(f"{U}/calendarView?{WINDOW}&$top=2", headers=UTC)
    assert [e["subject"] for e in r.json()["value"]] == ["E0", "E1"]
    assert "$skip=2" in r.json()["@odata.nextLink"]

    pages = {"Prefer": 'outlook.timezone="UTC", odata.maxpagesize=2'}
    first = graph.get(f"{U}/calendarView/delta?{WINDOW}", headers=pages)
    assert first.headers["Preference-Applied"].startswith("odata.maxpagesize=2")
    items, delta_link = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}", headers=pages)
    assert sorted(e["subject"] for e in items) == [f"E{n}" for n in range(5)]
    assert "$deltatoken=" in delta_link
    assert graph.server.stats()["requests"]["GET /v1.0/users/{user}/calendarView/delta"] == 1 + 3

    again, next_link = graph.all_pages(delta_link, headers=pages)
    assert again == [] and next_link != delta_link

    graph.patch(f"{U}/events/{ids[0]}", json={"subject": "E0 changed"})
    assert graph.delete(f"{U}/events/{ids[1]}").status_code == 204
    create(graph, event("E5", day=20))
    graph.patch(
        f"{U}/events/{ids[2]}",
        json=event("moved out")
        | {
            "start": {"dateTime": "2027-03-01T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2027-03-01T10:00:00", "timeZone": "UTC"},
        },
    )
    changes, _ = graph.all_pages(next_link, headers=pages)
    removed = sorted(c["id"] for c in changes if "@removed" in c)
    assert removed == sorted([ids[1], ids[2]])
    assert sorted(c["subject"] for c in changes if "@removed" not in c) == ["E0 changed", "E5"]
    # an old delta link can be used again (a client whose reply got lost)
    replay, _ = graph.all_pages(next_link, headers=pages)
    assert len(replay) == len(changes)


def test_recurring_series_expand_into_occurrences(graph: Graph) -> None:
    series = create(
        graph,
        event("Daily")
        | {
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": 3},
            }
        },
    )
    assert series["type"] == "seriesMaster"
    assert series["recurrence"]["range"]["numberOfOccurrences"] == 3
    items, link = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}")
    assert [(e["type"], e["seriesMasterId"]) for e in items] == [("occurrence", series["id"])] * 3
    assert [e["start"]["dateTime"][:10] for e in items] == ["2026-12-07", "2026-12-08", "2026-12-09"]
    second = items[1]["id"]
    assert graph.get(f"{U}/events/{second}").json()["type"] == "occurrence"
    r = graph.patch(f"{U}/events/{items[2]['id']}", json={"subject": "Moved one"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "exception"
    assert graph.delete(f"{U}/events/{second}").status_code == 204
    changes, _ = graph.all_pages(link)
    assert {c["id"] for c in changes if "@removed" in c} == {second}
    assert {c.get("subject") for c in changes if "@removed" not in c} == {"Daily", "Moved one"}
    # /events lists the series master only
    listed = graph.get(f"{U}/events").json()["value"]
    assert [e["type"] for e in listed] == ["seriesMaster"]


def test_delta_refuses_query_options_and_unknown_tokens(graph: Graph) -> None:
    r = graph.get(f"{U}/calendarView/delta?{WINDOW}&$expand=singleValueExtendedProperties")
    assert r.status_code == 400
    r = graph.get(f"{U}/calendarView/delta")
    assert r.status_code == 400 and "StartDateTime" in r.json()["error"]["message"]
    r = graph.get(f"{U}/calendarView/delta?$deltatoken=nonsense")
    assert r.status_code == 410 and r.json()["error"]["code"] == "SyncStateNotFound"
    _, link = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}")
    graph.server.set_faults(expire_tokens_next=1)
    assert graph.get(link).status_code == 410
    assert graph.get(link).status_code == 200
    # a token of alice's calendar is not bob's
    assert graph.get(link.replace("alice@", "bob@")).status_code == 400


def test_mailbox_settings_time_zone(graph: Graph) -> None:
    graph.server.set_time_zone("alice@example.test", "W. Europe Standard Time")
    r = graph.get(f"{U}/mailboxSettings/timeZone")
    assert r.json()["value"] == "W. Europe Standard Time"
    assert graph.get(f"{U}/mailboxSettings").json()["timeZone"] == "W. Europe Standard Time"
    assert graph.get("/users/bob@example.test/mailboxSettings/timeZone").json()["value"] == "UTC"
    # writing needs MailboxSettings.ReadWrite, which the default grant does not hold
    assert graph.patch(f"{U}/mailboxSettings", json={"timeZone": "UTC"}).status_code == 403


def test_delta_links_survive_a_restart_and_long_rounds_page(tmp_path: Any) -> None:
    from .conftest import http_client, msal_app, start_graph

    state = tmp_path / "state"
    server = start_graph(state)
    scope = ["https://graph.microsoft.com/.default"]
    try:
        with http_client(server.ca_file) as http:
            graph = Graph(
                server, http, msal_app(server).acquire_token_for_client(scopes=scope)["access_token"]
            )
            reqs = [
                {
                    "id": str(n),
                    "method": "POST",
                    "url": f"{U}/events",
                    "headers": {"Content-Type": "application/json"},
                    "body": event(f"N{n:03d}", day=1 + n % 28, hour=n % 20),
                }
                for n in range(20)
            ]
            for _ in range(6):
                assert graph.post("/$batch", json={"requests": reqs}).status_code == 200
            pages = {"Prefer": "odata.maxpagesize=50"}
            first = graph.get(f"{U}/calendarView/delta?{WINDOW}", headers=pages).json()
            assert len(first["value"]) == 50
            # the same nextLink twice gives the same page (a client whose answer was lost asks again)
            second = graph.get(first["@odata.nextLink"], headers=pages).json()
            assert graph.get(first["@odata.nextLink"], headers=pages).json()["value"] == second["value"]
            items, link = graph.all_pages(first["@odata.nextLink"], headers=pages)
            assert len(first["value"]) + len(items) == 120
            assert len({e["id"] for e in first["value"] + items}) == 120
    finally:
        server.stop()
    server = start_graph(state)
    try:
        with http_client(server.ca_file) as http:
            graph = Graph(
                server, http, msal_app(server).acquire_token_for_client(scopes=scope)["access_token"]
            )
            create(graph, event("after restart"))
            changes, _ = graph.all_pages(link.replace(link.split("/v1.0")[0], server.url))
            assert [c["subject"] for c in changes] == ["after restart"]
    finally:
        server.stop()


def test_bodies_come_back_as_html_unless_text_is_preferred(graph: Graph) -> None:
    created = create(graph, event("b", body={"contentType": "text", "content": "Printer <on> fire\nnow"}))
    assert created["body"]["contentType"] == "html"
    assert "Printer &lt;on&gt; fire<br>" in created["body"]["content"]
    assert created["bodyPreview"] == "Printer <on> fire now"
    prefer = {"Prefer": 'outlook.timezone="UTC", outlook.body-content-type="text"'}
    r = graph.get(f"{U}/events/{created['id']}", headers=prefer)
    assert r.json()["body"] == {"contentType": "text", "content": "Printer <on> fire\nnow"}
    assert r.headers["Preference-Applied"] == 'outlook.timezone="UTC", outlook.body-content-type="text"'
    html_event = create(
        graph, event("h", body={"contentType": "html", "content": "<p>Hello &amp; bye</p><p>x</p>"})
    )
    r = graph.get(f"{U}/events/{html_event['id']}", headers=prefer)
    assert r.json()["body"] == {"contentType": "text", "content": "Hello & bye\nx"}
    items, _ = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}", headers=prefer)
    assert {i["body"]["content"] for i in items} == {"Printer <on> fire\nnow", "Hello & bye\nx"}


def test_ical_uid_is_the_global_object_id_as_exchange_writes_it(graph: Graph) -> None:
    """iCalUId is per occurrence (instance date in the id); the adapter's series_uid gives back
    the UID EWS reports, for Exchange's own UIDs and for an invitation's foreign one."""
    from exchanged.graph.convert import series_uid
    from exchanged.testing.graph.convert import to_ews_id

    series = create(
        graph,
        event("Daily")
        | {
            "recurrence": {
                "pattern": {"type": "daily", "interval": 1},
                "range": {"type": "numbered", "startDate": "2026-12-07", "numberOfOccurrences": 2},
            }
        },
    )
    row = graph.server.store.item(to_ews_id(series["id"]))
    assert row is not None
    ews_uid = row.xml.split("UID>", 1)[1].split("<", 1)[0]
    assert ews_uid.startswith("040000008200E00074C5B7101A82E008") and len(ews_uid) == 112
    assert series["iCalUId"] == ews_uid
    occurrences, _ = graph.all_pages(f"{U}/calendarView/delta?{WINDOW}")
    ids = [o["iCalUId"] for o in occurrences]
    assert len(set(ids)) == 2 and ews_uid not in ids
    assert ids[0][32:40] == "07EA0C07"  # 2026-12-07: year high, year low, month, day
    assert {series_uid(i) for i in ids} == {ews_uid}
    # an event whose UID came from elsewhere (an iCalendar invitation)
    foreign = "partner-event-17@partner.example"
    graph.server.store.update_item(row, row.xml.replace(ews_uid, foreign))
    wrapped = graph.get(f"{U}/events/{series['id']}").json()["iCalUId"]
    assert b"vCal-Uid".hex().upper() in wrapped
    assert series_uid(wrapped) == foreign
