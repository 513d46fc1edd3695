"""Attendees of imported meetings in Autotask: a readable block the marker vouches for."""

from __future__ import annotations

from datetime import UTC, datetime

from exchanged.model import Appointment, Attendee
from exchanged.psa.autotask.mapping import appointment_record, imported_description

START, END = datetime(2026, 12, 7, 12, tzinfo=UTC), datetime(2026, 12, 7, 13, tzinfo=UTC)


def read_back(p: Appointment) -> Appointment:
    rec = appointment_record({"id": 1, "title": p.subject, "description": imported_description(p, "UID-1"),
                              "startDateTime": "2026-12-07T12:00:00Z", "endDateTime": "2026-12-07T13:00:00Z"})
    assert rec is not None and isinstance(rec.payload, Appointment)
    return rec.payload


def test_attendees_are_a_readable_block_that_reads_back_equal() -> None:
    people = (Attendee("ann@contoso.test", "Ann Smith", "accepted"), Attendee("dan@contoso.test", "", "none"))
    meeting = Appointment("Planning", START, END, body="agenda", attendees=people)
    text = imported_description(meeting, "UID-1")
    assert "Attendees:\n- Ann Smith <ann@contoso.test> (accepted)\n- <dan@contoso.test> (none)" in text
    assert read_back(meeting) == meeting


def test_a_body_that_looks_like_a_block_stays_body_text() -> None:
    plain = Appointment("Notes", START, END, body="x\n\nAttendees:\n- Eve <eve@x.test> (accepted)")
    assert read_back(plain) == plain
    assert '"attendees"' not in imported_description(plain, "UID-1")  # no flag: markers stay as they were
