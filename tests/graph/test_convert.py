"""Graph JSON <-> payloads: what a real Graph answer looks like comes back as the model means it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchanged.graph import convert
from exchanged.model import Appointment, FolderKind, Task

BERLIN = convert.mailbox_zone("W. Europe Standard Time")


def test_all_day_events_float_and_are_whole_days_of_the_mailbox_zone() -> None:
    # asked with Prefer: outlook.timezone="UTC", Graph names the days at midnight "UTC"
    doc = {
        "id": "A",
        "changeKey": "c",
        "subject": "Holiday",
        "isAllDay": True,
        "start": {"dateTime": "2026-12-10T00:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-12T00:00:00.0000000", "timeZone": "UTC"},
    }
    item = convert.item_from_graph(FolderKind.CALENDAR, doc, BERLIN)
    assert isinstance(item.payload, Appointment)
    assert item.payload.start == datetime(2026, 12, 9, 23, 0, tzinfo=UTC)
    assert item.payload.end == datetime(2026, 12, 11, 23, 0, tzinfo=UTC)
    body = convert.new_body(
        FolderKind.CALENDAR, item.payload, "appointment:1", (), BERLIN, "W. Europe Standard Time"
    )
    assert body["start"] == {"dateTime": "2026-12-10T00:00:00", "timeZone": "W. Europe Standard Time"}
    assert body["end"] == {"dateTime": "2026-12-12T00:00:00", "timeZone": "W. Europe Standard Time"}


def test_seven_fractional_digits_and_occurrence_keys() -> None:
    doc = {
        "id": "O1",
        "changeKey": "c",
        "subject": "Stand-up",
        "type": "occurrence",
        "iCalUId": "UID1",
        "originalStart": "2026-12-10T08:00:00Z",
        "seriesMasterId": "M",
        "start": {"dateTime": "2026-12-10T08:00:00.1234567", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-10T08:15:00.0000000", "timeZone": "UTC"},
    }
    item = convert.item_from_graph(FolderKind.CALENDAR, doc, UTC)
    assert item.exchange_key == "UID1@2026-12-10T08:00:00Z" and item.psa_key is None
    assert item.payload.start == datetime(2026, 12, 10, 8, 0, 0, 123456, tzinfo=UTC)  # type: ignore[union-attr]


def test_the_key_is_the_ews_adapters_property_read_case_insensitively() -> None:
    prop = "String {8F4B6D2E-3C1A-4E7B-9A5D-2F6C8B1E7D34} Name exchanged-psa-key"
    doc = {
        "id": "X",
        "subject": "s",
        "start": {"dateTime": "2026-12-10T08:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-10T09:00:00", "timeZone": "UTC"},
        "singleValueExtendedProperties": [{"id": prop, "value": "appointment:7"}],
    }
    assert convert.item_from_graph(FolderKind.CALENDAR, doc, UTC).psa_key == "appointment:7"
    from exchanged.exchange.convert import PsaKeyProperty

    assert (
        f"String {{{PsaKeyProperty.property_set_id}}} Name {PsaKeyProperty.property_name}"
    ) == convert.PSA_KEY_PROP


def test_html_bodies_lose_their_markup_and_unknown_fields_are_refused() -> None:
    doc = {
        "id": "T",
        "title": "Call",
        "status": "notStarted",
        "body": {"contentType": "html", "content": "<html><body><p>line one</p><p>two</p></body></html>"},
    }
    task = convert.item_from_graph(FolderKind.TASKS, doc, UTC).payload
    assert isinstance(task, Task) and task.body == "line one\ntwo"
    with pytest.raises(convert.Unmappable):
        convert.update_body(FolderKind.TASKS, task, ("colour",), None, UTC, "UTC")
    un = convert.update_body(FolderKind.TASKS, Task("Call"), ("completed",), None, UTC, "UTC")
    assert un == {"status": "notStarted", "completedDateTime": None}


def test_a_moved_all_day_event_sends_both_bounds() -> None:
    day = datetime(2026, 12, 9, 23, 0, tzinfo=UTC)
    p = Appointment("Holiday", day, day + timedelta(days=1), is_all_day=True)
    body = convert.update_body(FolderKind.CALENDAR, p, ("start",), None, BERLIN, "W. Europe Standard Time")
    assert (
        body["start"]["dateTime"] == "2026-12-10T00:00:00"
        and body["end"]["dateTime"] == "2026-12-11T00:00:00"
    )
    assert body["isAllDay"] is True


def _event(**extra: object) -> dict[str, object]:
    return {
        "id": "E",
        "subject": "s",
        "start": {"dateTime": "2026-12-10T08:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-10T09:00:00", "timeZone": "UTC"},
        **extra,
    }


def test_reminders_are_read_only_with_what_we_last_wrote_and_written_with_it() -> None:
    # without our property (a delta answer) the adapter cannot tell a user's reminder from ours
    assert convert.item_from_graph(FolderKind.CALENDAR, _event(isReminderOn=True), UTC).reminder is None
    mine = [{"id": convert.REMINDER_PROP, "value": "15"}]
    item = convert.item_from_graph(
        FolderKind.CALENDAR,
        _event(isReminderOn=True, reminderMinutesBeforeStart=60, singleValueExtendedProperties=mine),
        UTC,
    )
    assert (item.reminder, item.reminder_written) == ("60", "15")
    off = convert.item_from_graph(
        FolderKind.CALENDAR, _event(isReminderOn=False, singleValueExtendedProperties=[]), UTC
    )
    assert (off.reminder, off.reminder_written) == ("off", None)
    payload = item.payload
    body = convert.new_body(FolderKind.CALENDAR, payload, "appointment:1", (), UTC, "UTC", "30")
    assert body["isReminderOn"] is True and body["reminderMinutesBeforeStart"] == 30
    assert {"id": convert.REMINDER_PROP, "value": "30"} in body["singleValueExtendedProperties"]
    patch = convert.update_body(FolderKind.CALENDAR, payload, (), None, UTC, "UTC", "off")
    assert patch == {
        "isReminderOn": False,
        "singleValueExtendedProperties": [{"id": convert.REMINDER_PROP, "value": "off"}],
    }
    assert convert.update_body(FolderKind.CALENDAR, payload, (), None, UTC, "UTC") == {}


def test_attendees_of_imported_meetings_are_read_never_on_ours() -> None:
    people = [
        {
            "emailAddress": {"name": "Dan Lee", "address": "dan@x.test"},
            "status": {"response": "tentativelyAccepted"},
        },
        {"emailAddress": {"name": "Ann", "address": "ann@x.test"}, "status": {"response": "accepted"}},
        {"emailAddress": {"name": "Ida", "address": "ida@x.test"}, "status": {"response": "notResponded"}},
    ]
    organizer = {"emailAddress": {"name": "Al", "address": "al@x.test"}}
    item = convert.item_from_graph(FolderKind.CALENDAR, _event(attendees=people, organizer=organizer), UTC)
    assert [(a.email, a.response) for a in item.payload.attendees] == [  # type: ignore[union-attr]
        ("al@x.test", "organizer"),
        ("ann@x.test", "accepted"),
        ("dan@x.test", "tentative"),
        ("ida@x.test", "none"),
    ]
    alone = convert.item_from_graph(FolderKind.CALENDAR, _event(organizer=organizer), UTC)
    assert alone.payload.attendees == ()  # type: ignore[union-attr]
    ours = convert.item_from_graph(
        FolderKind.CALENDAR, _event(attendees=people, organizer=organizer), UTC, psa_key="appointment:1"
    )
    assert ours.payload.attendees == ()  # type: ignore[union-attr]
    body = convert.new_body(FolderKind.CALENDAR, item.payload, "appointment:1", (), UTC, "UTC")
    assert "attendees" not in body


def test_to_do_reminders_are_times_and_what_we_wrote_is_a_linked_resource() -> None:
    task = {
        "id": "T",
        "title": "Call Ann",
        "isReminderOn": True,
        "reminderDateTime": {"dateTime": "2027-03-13T20:45:00.0000000", "timeZone": "UTC"},
    }
    assert convert.item_from_graph(FolderKind.TASKS, task, UTC).reminder is None  # delta: unknown
    link = convert.reminder_link("2027-03-13T20:30:00Z")
    item = convert.item_from_graph(FolderKind.TASKS, {**task, "linkedResources": [link]}, UTC)
    assert (item.reminder, item.reminder_written) == ("2027-03-13T20:45:00Z", "2027-03-13T20:30:00Z")
    body = convert.new_body(FolderKind.TASKS, item.payload, "todo:1", (), UTC, "UTC", "2027-03-13T20:30:00Z")
    assert body["isReminderOn"] is True
    assert body["reminderDateTime"] == {"dateTime": "2027-03-13T20:30:00", "timeZone": "UTC"}
    assert link in body["linkedResources"]
    patch = convert.update_body(FolderKind.TASKS, item.payload, (), None, UTC, "UTC", "off")
    assert patch == {"isReminderOn": False}
