"""Autotask entities <-> the shared model (SPEC section 7), in pure functions.

The mapping, field by field (docs/AUTOTASK.md has the table):

* ``Appointments`` -> ``Kind.APPOINTMENT`` (title, description, startDateTime, endDateTime,
  updateDateTime), or ``Kind.IMPORTED`` when the description ends with the import marker.
* ``ServiceCalls`` -> ``Kind.SERVICE_CALL`` appointments, subject ``Service call: <company>``.
* ``CompanyToDos`` -> ``Kind.TODO`` tasks: subject ``<action type>: <first line of
  activityDescription>``, the company's name below the description (``psa/render.py``), start/due
  from startDateTime/endDateTime, completion from completedDate.
* ``Contacts`` -> ``Kind.CONTACT`` / ``Kind.PUBLIC_CONTACT``.

The import marker. Autotask appointments have no field for "which Exchange item is this" (no
UDFs on Appointments), so an appointment the daemon imports carries a last line in its
description::

    [exchanged-import] {"key": "<exchange key>", "show_as": "busy", "private": false, ...}

It keeps the Exchange key (the identity of an imported row, SPEC "Identity") and the fields
Autotask cannot store (show_as, private, all-day, location), so that what is read back equals what
was written and an unchanged item is never rewritten. Users see the line in Autotask; editing it
away turns the row into an ordinary PSA appointment (exported, never deleted by the sync).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from exchanged.model import (
    RESPONSES,
    Appointment,
    Attendee,
    Contact,
    Kind,
    PsaRecord,
    ShowAs,
    Task,
    attendee_list,
    make_psa_key,
)
from exchanged.psa.render import service_call_subject, todo_body, todo_subject

MARKER = "[exchanged-import] "
TITLE_MAX = 256
DESCRIPTION_MAX = 8000
NO_SUBJECT = "(no subject)"

# IncludeFields per entity: only what is mapped (id is always added)
APPOINTMENT_FIELDS = ("resourceID", "title", "description", "startDateTime", "endDateTime", "updateDateTime")
SERVICE_CALL_FIELDS = (
    "companyID",
    "description",
    "startDateTime",
    "endDateTime",
    "canceledDateTime",
    "lastModifiedDateTime",
)
TODO_FIELDS = (
    "companyID",
    "assignedToResourceID",
    "actionType",
    "activityDescription",
    "startDateTime",
    "endDateTime",
    "completedDate",
    "lastModifiedDate",
)
CONTACT_FIELDS = (
    "companyID",
    "firstName",
    "lastName",
    "emailAddress",
    "phone",
    "mobilePhone",
    "title",
    "isActive",
    "lastModifiedDate",
)
RESOURCE_FIELDS = ("email", "firstName", "lastName", "isActive")


def parse_time(value: Any) -> datetime | None:
    """An API time (UTC, ``Z`` or offset or none, 0-7 fractional digits) as an aware datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    date, sep, rest = text.partition(".")
    if sep:  # normalise the fraction to 6 digits; fromisoformat of 3.11 wants 3 or 6
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits) :]
        text = f"{date}.{(digits + '000000')[:6]}{tz}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime | None) -> str | None:
    """UTC with milliseconds and ``Z``, the form the API documents for submitted times."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: Any) -> str:
    """Text as Exchange can carry it: characters XML cannot hold are dropped (as the sql connector
    does)."""
    return "" if value is None else _XML_INVALID.sub("", str(value))


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def is_active(value: Any) -> bool:
    """Resources use a boolean, Contacts an int 0/1."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true")
    return bool(value)


# --- the import marker -----------------------------------------------------------------------------


def split_marker(description: str) -> tuple[str, dict[str, Any] | None]:
    """(the description without the marker line, the marker's data or None)."""
    at = description.rfind(MARKER)
    if at < 0 or (at > 0 and description[at - 1] != "\n"):
        return description, None
    line = description[at + len(MARKER) :].strip()
    try:
        data = json.loads(line)
    except ValueError:
        return description, None
    if not isinstance(data, dict) or not isinstance(data.get("key"), str):
        return description, None
    body = description[:at]
    if body.endswith("\n\n"):
        body = body[:-2]
    elif body.endswith("\n"):
        body = body[:-1]
    return body, data


# --- attendees: Appointments have no field for them, so a readable block above the marker ------------

ATTENDEES_HEADING = "Attendees:"
_ATTENDEE_LINE = re.compile(r"^- (?P<name>.*?) ?<(?P<email>[^<>]*)> \((?P<response>[a-z]+)\)$")


def attendees_block(attendees: Sequence[Attendee]) -> str:
    """``Attendees:`` and one ``- Name <address> (response)`` line each ("" for none)."""
    if not attendees:
        return ""
    lines = [f"- {a.name} <{a.email}> ({a.response})" if a.name else f"- <{a.email}> ({a.response})"
             for a in attendees]
    return "\n".join([ATTENDEES_HEADING, *lines])


def split_attendees(body: str) -> tuple[str, tuple[Attendee, ...]]:
    """(the body without a trailing attendees block, the attendees it lists); only a block whose
    every line reads as written counts (anything else stays text)."""
    at = body.rfind(ATTENDEES_HEADING)
    if at < 0 or (at > 0 and body[at - 1] != "\n"):
        return body, ()
    lines = body[at + len(ATTENDEES_HEADING):].strip("\n").split("\n")
    found = [_ATTENDEE_LINE.match(line) for line in lines]
    if not lines or not all(found):
        return body, ()
    people = [Attendee(email=m["email"], name=m["name"], response=m["response"]) for m in found if m]
    if any(p.response not in RESPONSES for p in people):
        return body, ()
    return body[:at].rstrip("\n"), attendee_list(people)


def imported_description(payload: Appointment, exchange_key: str) -> str:
    block = attendees_block(payload.attendees)
    if len(block) > DESCRIPTION_MAX // 2:  # a meeting of hundreds: the first ones
        block = block[: DESCRIPTION_MAX // 2].rsplit("\n", 1)[0]
    marker = MARKER + json.dumps(
        {
            "key": exchange_key,
            "show_as": payload.show_as.value,
            "private": payload.is_private,
            "all_day": payload.is_all_day,
            "location": payload.location,
            **({"subject": payload.subject} if _title(payload.subject) != payload.subject else {}),
            **({"attendees": True} if block else {}),  # the block above is ours, not the body's
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    tail = f"{block}\n\n{marker}" if block else marker
    room = DESCRIPTION_MAX - len(tail) - 2
    body = payload.body[: max(0, room)]
    return f"{body}\n\n{tail}" if body else tail


def _title(subject: str) -> str:
    return subject[:TITLE_MAX] if subject.strip() else NO_SUBJECT


def imported_fields(payload: Appointment, exchange_key: str) -> dict[str, Any]:
    """The Appointments fields of an imported Exchange appointment."""
    return {
        "title": _title(payload.subject),
        "description": imported_description(payload, exchange_key),
        "startDateTime": format_time(payload.start),
        "endDateTime": format_time(payload.end),
    }


# --- entity -> record ------------------------------------------------------------------------------


def appointment_record(row: dict[str, Any]) -> PsaRecord | None:
    start, end = parse_time(row.get("startDateTime")), parse_time(row.get("endDateTime"))
    if start is None or end is None:
        return None
    description = _text(row.get("description"))
    body, marker = split_marker(description)
    modified = parse_time(row.get("updateDateTime"))
    if marker is None:
        payload = Appointment(subject=_text(row.get("title")), start=start, end=end, body=description)
        return PsaRecord(Kind.APPOINTMENT, make_psa_key(Kind.APPOINTMENT, row["id"]), payload, modified)
    try:
        show_as = ShowAs(str(marker.get("show_as", "busy")))
    except ValueError:
        show_as = ShowAs.BUSY
    kept = marker.get("subject")
    subject = kept if isinstance(kept, str) else _text(row.get("title"))
    body, attendees = split_attendees(body) if marker.get("attendees") else (body, ())
    payload = Appointment(
        subject=subject,
        start=start,
        end=end,
        body=body,
        location=_text(marker.get("location")),
        is_all_day=bool(marker.get("all_day")),
        show_as=show_as,
        is_private=bool(marker.get("private")),
        attendees=attendees,
    )
    return PsaRecord(
        Kind.IMPORTED,
        make_psa_key(Kind.IMPORTED, row["id"]),
        payload,
        modified,
        exchange_key=str(marker["key"]),
    )


def service_call_record(row: dict[str, Any], company: str | None) -> PsaRecord | None:
    start, end = parse_time(row.get("startDateTime")), parse_time(row.get("endDateTime"))
    if start is None or end is None:
        return None
    body = _text(row.get("description"))
    payload = Appointment(subject=service_call_subject(company, body), start=start, end=end, body=body)
    return PsaRecord(
        Kind.SERVICE_CALL,
        make_psa_key(Kind.SERVICE_CALL, row["id"]),
        payload,
        parse_time(row.get("lastModifiedDateTime")),
    )


def todo_record(row: dict[str, Any], action_type: str | None, company: str | None = None) -> PsaRecord:
    """``action_type`` is the ``ActionTypes.name`` of the row, ``company`` its company's name."""
    description = _text(row.get("activityDescription"))
    payload = Task(
        subject=todo_subject(action_type, description),
        body=todo_body(description, company),
        start=parse_time(row.get("startDateTime")),
        due=parse_time(row.get("endDateTime")),
        completed=parse_time(row.get("completedDate")),
    )
    return PsaRecord(
        Kind.TODO, make_psa_key(Kind.TODO, row["id"]), payload, parse_time(row.get("lastModifiedDate"))
    )


def contact_record(row: dict[str, Any], company: str | None, kind: Kind = Kind.CONTACT) -> PsaRecord | None:
    """A contact, every text stripped; one with neither first nor last name is no contact (None)."""
    payload = Contact(
        given_name=_text(row.get("firstName")).strip(),
        surname=_text(row.get("lastName")).strip(),
        company=(company or "").strip(),
        job_title=_text(row.get("title")).strip(),
        email=_text(row.get("emailAddress")).strip(),
        business_phone=_text(row.get("phone")).strip(),
        mobile_phone=_text(row.get("mobilePhone")).strip(),
    )
    if not (payload.given_name or payload.surname):
        return None
    return PsaRecord(kind, make_psa_key(kind, row["id"]), payload, parse_time(row.get("lastModifiedDate")))


def full_name(row: dict[str, Any]) -> str:
    name = f"{_text(row.get('firstName'))} {_text(row.get('lastName'))}".strip()
    return name or _text(row.get("email"))


# --- model fields -> entity fields (writes) --------------------------------------------------------

APPOINTMENT_TIME_FIELDS = {"start": "startDateTime", "end": "endDateTime"}
TODO_TIME_FIELDS = {"start": "startDateTime", "due": "endDateTime", "completed": "completedDate"}


def appointment_patch(payload: Appointment, names: tuple[str, ...]) -> dict[str, Any]:
    """Start/end of a PSA appointment that changed in Exchange (nothing else flows back)."""
    return {
        APPOINTMENT_TIME_FIELDS[n]: format_time(getattr(payload, n))
        for n in names
        if n in APPOINTMENT_TIME_FIELDS
    }


def imported_patch(payload: Appointment, exchange_key: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Only the Appointments fields the changed payload fields touch."""
    full = imported_fields(payload, exchange_key)
    out: dict[str, Any] = {}
    for n in names:
        if n in APPOINTMENT_TIME_FIELDS:
            out[APPOINTMENT_TIME_FIELDS[n]] = full[APPOINTMENT_TIME_FIELDS[n]]
        elif n == "subject":
            out["title"] = full["title"]
            out["description"] = full["description"]  # the marker may carry the subject
        else:  # body, location, show_as, is_private, is_all_day live in the description
            out["description"] = full["description"]
    return out


def todo_patch(payload: Task, names: tuple[str, ...]) -> dict[str, Any]:
    """Start/due/completion of a to-do that changed in Exchange."""
    return {TODO_TIME_FIELDS[n]: format_time(getattr(payload, n)) for n in names if n in TODO_TIME_FIELDS}


__all__ = [
    "APPOINTMENT_FIELDS",
    "CONTACT_FIELDS",
    "MARKER",
    "RESOURCE_FIELDS",
    "SERVICE_CALL_FIELDS",
    "TODO_FIELDS",
    "appointment_record",
    "contact_record",
    "format_time",
    "parse_time",
    "service_call_record",
    "split_marker",
    "todo_record",
]
