"""Graph JSON (v1.0 event, contact, todoTask) <-> the model's payloads; pure, no I/O.

The PSA key lives where the EWS adapter keeps it, so that both adapters read the same mailbox:

* events and contacts: the named extended property ``String {PSA_KEY_PROPERTY_SET} Name
  exchanged-psa-key`` (``singleValueExtendedProperties``), and beside it, as on EWS,
  ``exchanged-exact-values`` (what Exchange rounds: an all-day appointment's exact bounds);
* To Do tasks (the To Do API exposes no extended properties): a ``linkedResource`` with
  ``applicationName`` "exchanged" and ``externalId`` = the PSA key; the exact values (To Do keeps
  start and due as days) in a second one, ``applicationName`` "exchanged-exact", as EWS keeps them
  in its second property.

Bodies: events are read with ``Prefer: outlook.body-content-type="text"`` (Graph's default is
HTML, which does not convert back to the text we wrote).

Datetimes: every event is read and written with ``Prefer: outlook.timezone="UTC"``; an all-day
event is written as whole days in the mailbox's time zone (Graph wants midnight in the event's
zone) and read as the days Graph names (all-day events float: midnight in any zone asked for),
which are midnights of the mailbox's zone in the model. Task dates are days, written as the UTC
date and read back as midnight UTC (as on EWS).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from exchanged.exchange.convert import (
    EXACT_PROPERTY_NAME,
    PSA_KEY_PROPERTY_NAME,
    PSA_KEY_PROPERTY_SET,
    REMINDER_OFF,
    REMINDER_PROPERTY_NAME,
    Unmappable,
    body_text,
    check_payload,
    exact_merge,
    exact_values,
)
from exchanged.model import (
    Appointment,
    Attendee,
    Contact,
    ExchangeItem,
    FolderKind,
    Payload,
    ShowAs,
    Task,
    attendee_list,
    occurrence_key,
    unreadable_payload,
)

PSA_KEY_PROP = f"String {{{PSA_KEY_PROPERTY_SET}}} Name {PSA_KEY_PROPERTY_NAME}"
EXACT_PROP = f"String {{{PSA_KEY_PROPERTY_SET}}} Name {EXACT_PROPERTY_NAME}"
# the reminder code the daemon last wrote on an event (as on EWS: engine.rules.reminder_to_write)
REMINDER_PROP = f"String {{{PSA_KEY_PROPERTY_SET}}} Name {REMINDER_PROPERTY_NAME}"
LINK_APP = "exchanged"  # linkedResources.applicationName of a task's PSA key
EXACT_APP = "exchanged-exact"  # ... and of its exact values (JSON in externalId)
REMINDER_APP = "exchanged-reminder"  # ... and of the reminder code the daemon last wrote on it

# $expand of the properties we read (events and contacts)
EXPAND_KEY = (
    f"singleValueExtendedProperties($filter=id eq '{PSA_KEY_PROP}' or id eq '{EXACT_PROP}'"
    f" or id eq '{REMINDER_PROP}')"
)

_SHOW_AS_FROM = {
    "free": ShowAs.FREE,
    "tentative": ShowAs.TENTATIVE,
    "busy": ShowAs.BUSY,
    "oof": ShowAs.OOF,
    "workingElsewhere": ShowAs.WORKING_ELSEWHERE,
    "unknown": ShowAs.NO_DATA,
}
_SHOW_AS_TO = {v: k for k, v in _SHOW_AS_FROM.items()}

# fields of the model -> Graph properties a PATCH sends
_EVENT_FIELDS = {
    "subject": ("subject",),
    "body": ("body",),
    "start": ("start", "end", "isAllDay"),  # start and end go together: Graph checks an all-day pair
    "end": ("start", "end", "isAllDay"),
    "location": ("location",),
    "is_all_day": ("isAllDay", "start", "end"),
    "show_as": ("showAs",),
    "is_private": ("sensitivity",),
}
_TASK_FIELDS = {
    "subject": ("title",),
    "body": ("body",),
    "start": ("startDateTime",),
    "due": ("dueDateTime",),
    "completed": ("status", "completedDateTime"),
}
_CONTACT_FIELDS = {
    "given_name": ("givenName",),
    "surname": ("surname",),
    "company": ("companyName",),
    "job_title": ("jobTitle",),
    "email": ("emailAddresses",),
    "business_phone": ("businessPhones",),
    "mobile_phone": ("mobilePhone",),
}


# --- time zones -------------------------------------------------------------------------------------


def mailbox_zone(name: str | None) -> tzinfo:
    """The zone of a mailboxSettings.timeZone value (Windows or IANA name); UTC when unknown."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

    iana = MS_TIMEZONE_TO_IANA_MAP.get(name)
    if iana:
        try:
            return ZoneInfo(iana)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def parse_dt(value: Any, what: str = "date") -> datetime | None:
    """A dateTimeTimeZone (``{"dateTime","timeZone"}``) as an aware UTC datetime."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not isinstance(value.get("dateTime"), str):
        raise Unmappable(f"{what} is not a dateTimeTimeZone: {value!r}"[:200])
    text = value["dateTime"]
    if "." in text:  # Graph writes 7 fractional digits; Python reads at most 6
        head, frac = text.split(".", 1)
        digits = "".join(c for c in frac if c.isdigit())[:6]
        rest = frac[len("".join(c for c in frac if c.isdigit())) :]
        text = f"{head}.{digits}{rest}" if digits else head + rest
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Unmappable(f"{what} {value['dateTime']!r} is not a date and time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=mailbox_zone(str(value.get("timeZone") or "UTC")))
    return parsed.astimezone(UTC)


def dt_value(value: datetime, tz_name: str = "UTC") -> dict[str, str]:
    """A dateTimeTimeZone in UTC (or, for all-day bounds, the local wall time in ``tz_name``)."""
    if tz_name == "UTC":
        value = value.astimezone(UTC)
    return {"dateTime": value.replace(tzinfo=None).isoformat(timespec="seconds"), "timeZone": tz_name}


# --- Graph -> model -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _body(doc: Mapping[str, Any]) -> str:
    body = doc.get("body")
    if not isinstance(body, Mapping):
        return ""
    content = _text(body.get("content"))
    if str(body.get("contentType", "text")).lower() == "html":
        return body_text(
            content
            if content.lstrip().lower().startswith(("<html", "<!doctype"))
            else f"<html>{content}</html>"
        )
    return content


def extended(doc: Mapping[str, Any], prop_id: str) -> str | None:
    for prop in doc.get("singleValueExtendedProperties") or ():
        if isinstance(prop, Mapping) and str(prop.get("id", "")).lower() == prop_id.lower():
            value = prop.get("value")
            return value if isinstance(value, str) and value else None
    return None


def linked(doc: Mapping[str, Any], app: str) -> str | None:
    for res in doc.get("linkedResources") or ():
        if isinstance(res, Mapping) and res.get("applicationName") == app:
            value = res.get("externalId")
            return value if isinstance(value, str) and value else None
    return None


def psa_key_of(folder: FolderKind, doc: Mapping[str, Any]) -> str | None:
    return linked(doc, LINK_APP) if folder is FolderKind.TASKS else extended(doc, PSA_KEY_PROP)


def _floating_day(value: Any, tz: tzinfo, what: str) -> datetime | None:
    """An all-day bound: Graph gives all-day events as midnight of the day in whatever zone was
    asked for (they float); the model's bound is midnight of that day in the mailbox's zone."""
    if not isinstance(value, Mapping) or not isinstance(value.get("dateTime"), str):
        return parse_dt(value, what)
    try:
        day = datetime.fromisoformat(value["dateTime"][:10]).date()
    except ValueError:
        raise Unmappable(f"{what} {value['dateTime']!r} is not a date") from None
    return datetime.combine(day, time(0, 0)).replace(tzinfo=tz).astimezone(UTC)


_RESPONSE_FROM_GRAPH = {
    "accepted": "accepted",
    "tentativelyAccepted": "tentative",
    "declined": "declined",
    "notResponded": "none",
    "none": "none",
    "organizer": "organizer",
}


def _attendee(value: Any, response: str | None = None) -> Attendee | None:
    if not isinstance(value, Mapping):
        return None
    address = value.get("emailAddress")
    if not isinstance(address, Mapping):
        return None
    email, name = _text(address.get("address")).strip(), _text(address.get("name")).strip()
    if not (email or name):
        return None
    status = value.get("status")
    said = response or _RESPONSE_FROM_GRAPH.get(
        _text(status.get("response")) if isinstance(status, Mapping) else "", "unknown"
    )
    return Attendee(email=email, name=name, response=said)


def attendees_from_graph(doc: Mapping[str, Any]) -> tuple[Attendee, ...]:
    """Who takes part in a meeting, as the EWS adapter reads it (``attendees_from_ews``): the
    attendees with their answers, and the organizer when there are attendees."""
    people = [a for a in (_attendee(v) for v in doc.get("attendees") or ()) if a is not None]
    organizer = _attendee(doc.get("organizer"), "organizer")
    if people and organizer is not None and all(p.email.lower() != organizer.email.lower() for p in people):
        people.append(organizer)
    return attendee_list(people)


def appointment_from_graph(doc: Mapping[str, Any], tz: tzinfo) -> Appointment:
    if doc.get("isAllDay"):
        start, end = _floating_day(doc.get("start"), tz, "start"), _floating_day(doc.get("end"), tz, "end")
    else:
        start, end = parse_dt(doc.get("start"), "start"), parse_dt(doc.get("end"), "end")
    if start is None or end is None:
        raise Unmappable("event without start or end")
    location = doc.get("location")
    return Appointment(
        subject=_text(doc.get("subject")),
        start=start,
        end=end,
        body=_body(doc),
        location=_text(location.get("displayName")) if isinstance(location, Mapping) else "",
        is_all_day=bool(doc.get("isAllDay")),
        show_as=_SHOW_AS_FROM.get(_text(doc.get("showAs")), ShowAs.BUSY),
        is_private=doc.get("sensitivity") in ("private", "confidential"),
        attendees=attendees_from_graph(doc),
    )


def _day(value: datetime | None) -> datetime | None:
    return None if value is None else datetime.combine(value.date(), time(0, 0), tzinfo=UTC)


def task_from_graph(doc: Mapping[str, Any]) -> Task:
    completed: datetime | None = None
    if doc.get("status") == "completed":
        completed = (
            parse_dt(doc.get("completedDateTime"), "completedDateTime")
            or _modified(doc)
            or datetime(1970, 1, 1, tzinfo=UTC)
        )
    return Task(
        subject=_text(doc.get("title")),
        body=_body(doc),
        start=_day(parse_dt(doc.get("startDateTime"), "startDateTime")),
        due=_day(parse_dt(doc.get("dueDateTime"), "dueDateTime")),
        completed=completed,
    )


def contact_from_graph(doc: Mapping[str, Any]) -> Contact:
    emails = [e for e in doc.get("emailAddresses") or () if isinstance(e, Mapping)]
    phones = [p for p in doc.get("businessPhones") or () if isinstance(p, str)]
    return Contact(
        given_name=_text(doc.get("givenName")),
        surname=_text(doc.get("surname")),
        company=_text(doc.get("companyName")),
        job_title=_text(doc.get("jobTitle")),
        email=_text(emails[0].get("address")) if emails else "",
        business_phone=phones[0] if phones else "",
        mobile_phone=_text(doc.get("mobilePhone")),
    )


def _modified(doc: Mapping[str, Any]) -> datetime | None:
    value = doc.get("lastModifiedDateTime")
    if not isinstance(value, str):
        return None
    try:
        return parse_dt({"dateTime": value, "timeZone": "UTC"})
    except Unmappable:
        return None


_GOID_CLASS_ID = "040000008200E00074C5B7101A82E008"  # MS-OXOCAL PidLidGlobalObjectId
_VCAL_UID = b"vCal-Uid\x01\x00\x00\x00"


def series_uid(ical_uid: str) -> str:
    """The UID EWS reports for the event (and its whole series) from Graph's ``iCalUId``.

    ``iCalUId`` is the hex of the item's global object id (MS-OXOCAL): an occurrence's carries its
    date in the instance-date bytes (so each occurrence has its own), and a UID not in Outlook's
    form (from an iCalendar invitation) is wrapped as "vCal-Uid" data. EWS's ``UID`` is the id
    without the instance date, or the wrapped UID itself; the same key on both paths is what lets
    a mailbox moved from EWS to Graph keep its imported appointments.
    """
    text = ical_uid.strip()
    if not text.upper().startswith(_GOID_CLASS_ID) or len(text) < 80:
        return text
    try:
        goid = bytearray(bytes.fromhex(text))
    except ValueError:
        return text
    data = bytes(goid[40:])
    if data.startswith(_VCAL_UID):
        return data[len(_VCAL_UID) :].split(b"\x00", 1)[0].decode("utf-8", "replace")
    goid[16:20] = bytes(4)
    return bytes(goid).hex().upper()


def reminder_of(folder: FolderKind, doc: Mapping[str, Any]) -> str | None:
    """An item's reminder as the engine's code: "off", an event's minutes before the start, a To Do
    task's reminder time in UTC ("2027-03-13T20:45:00Z"); None when the answer carries none."""
    if folder not in (FolderKind.CALENDAR, FolderKind.TASKS) or "isReminderOn" not in doc:
        return None
    if not doc.get("isReminderOn"):
        return REMINDER_OFF
    if folder is FolderKind.TASKS:
        try:
            when = parse_dt(doc.get("reminderDateTime"), "reminderDateTime")
        except Unmappable:
            return None  # unreadable: left alone
        return REMINDER_OFF if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    minutes = doc.get("reminderMinutesBeforeStart")
    return str(int(minutes)) if isinstance(minutes, int | float) else "0"


def reminder_values(folder: FolderKind, code: str) -> dict[str, Any]:
    """The properties that give an event or a To Do task the reminder ``code`` (what we wrote is
    kept beside it: ``REMINDER_PROP`` / ``reminder_link``)."""
    if code == REMINDER_OFF:
        return {"isReminderOn": False}
    if folder is FolderKind.TASKS:
        try:
            when = datetime.fromisoformat(code.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise Unmappable(f"reminder time {code!r} is not a UTC time") from None
        return {"isReminderOn": True, "reminderDateTime": dt_value(when)}
    try:
        return {"isReminderOn": True, "reminderMinutesBeforeStart": int(code)}
    except ValueError:
        raise Unmappable(f"reminder {code!r} is not a number of minutes") from None


def reminder_link(code: str) -> dict[str, str]:
    """A To Do task's record of the reminder the daemon last wrote (To Do has no extended
    properties): a linked resource, as the PSA key and the exact values are kept."""
    return {"applicationName": REMINDER_APP, "externalId": code, "displayName": "exchanged: reminder"}


def link_id(doc: Mapping[str, Any], app: str) -> str | None:
    for res in doc.get("linkedResources") or ():
        if isinstance(res, Mapping) and res.get("applicationName") == app and isinstance(res.get("id"), str):
            return str(res["id"])
    return None


def _carries_ours(folder: FolderKind, doc: Mapping[str, Any]) -> bool:
    """Whether the answer carries what we keep beside an item (properties / linked resources)."""
    return ("linkedResources" if folder is FolderKind.TASKS else "singleValueExtendedProperties") in doc


def item_from_graph(
    folder: FolderKind, doc: Mapping[str, Any], tz: tzinfo, psa_key: str | None = None
) -> ExchangeItem:
    """One Graph resource as an ``ExchangeItem`` (``psa_key``: known already, e.g. from a cache)."""
    item_id = doc.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise Unmappable("resource without an id")
    payload: Payload
    uid = exchange_key = None
    key = psa_key_of(folder, doc) or psa_key
    if folder is FolderKind.CALENDAR:
        payload = exact_merge(appointment_from_graph(doc, tz), extended(doc, EXACT_PROP), tz)
        uid = series_uid(_text(doc.get("iCalUId"))) or None
        kind = _text(doc.get("type"))
        original = doc.get("originalStart")
        if kind in ("occurrence", "exception") and uid and isinstance(original, str):
            start = parse_dt({"dateTime": original, "timeZone": "UTC"}, "originalStart")
            assert start is not None
            exchange_key = occurrence_key(uid, start)
        else:
            exchange_key = uid
    elif folder is FolderKind.TASKS:
        payload = exact_merge(task_from_graph(doc), linked(doc, EXACT_APP), UTC)
    else:
        payload = contact_from_graph(doc)
    if key is not None and isinstance(payload, Appointment) and payload.attendees:
        payload = replace(payload, attendees=())  # ours: the PSA owns it, attendees are not synced
    cats = tuple(c for c in doc.get("categories") or () if isinstance(c, str))
    return ExchangeItem(
        folder=folder,
        item_id=item_id,
        change_key=_text(doc.get("changeKey")) or _text(doc.get("@odata.etag")),
        payload=payload,
        psa_key=key,
        categories=cats,
        uid=uid,
        exchange_key=exchange_key,
        is_recurring_master=doc.get("type") == "seriesMaster",
        last_modified=_modified(doc),
        # the reminder only with what we last wrote (our property): without it a user's own
        # reminder could not be told from ours; the mailbox fills both in for delta answers
        reminder=reminder_of(folder, doc) if _carries_ours(folder, doc) else None,
        reminder_written=linked(doc, REMINDER_APP)
        if folder is FolderKind.TASKS
        else extended(doc, REMINDER_PROP),
    )


def unreadable_item(
    folder: FolderKind, doc: Mapping[str, Any], psa_key: str | None = None
) -> ExchangeItem | None:
    """An item ``item_from_graph`` refused, if it carries our key (kept so that it is repaired,
    never created twice); None for anything else (skipped)."""
    key = psa_key_of(folder, doc) or psa_key
    item_id = doc.get("id")
    if not key or not isinstance(item_id, str) or not item_id:
        return None
    subject = doc.get(
        "title" if folder is FolderKind.TASKS else "subject" if folder is FolderKind.CALENDAR else "surname"
    )
    return ExchangeItem(
        folder=folder,
        item_id=item_id,
        change_key=_text(doc.get("changeKey")),
        payload=unreadable_payload(folder, _text(subject)),
        psa_key=key,
        uid=series_uid(_text(doc.get("iCalUId"))) or None,
        unreadable=True,
    )


# --- model -> Graph -------------------------------------------------------------------------------------


def _all_day_bounds(p: Appointment, tz: tzinfo, tz_name: str) -> tuple[dict[str, str], dict[str, str]]:
    s_day = p.start.astimezone(tz).date()
    e_local = p.end.astimezone(tz)
    e_day = (
        e_local.date()
        if e_local.timetz().replace(tzinfo=None) == time(0, 0)
        else e_local.date() + timedelta(days=1)
    )
    e_day = max(e_day, s_day + timedelta(days=1))
    as_local = {"dateTime": "", "timeZone": tz_name}
    return (
        {**as_local, "dateTime": f"{s_day.isoformat()}T00:00:00"},
        {**as_local, "dateTime": f"{e_day.isoformat()}T00:00:00"},
    )


def event_values(p: Appointment, tz: tzinfo, tz_name: str) -> dict[str, Any]:
    check_payload(p)
    if p.is_all_day:
        start, end = _all_day_bounds(p, tz, tz_name)
    else:
        start, end = dt_value(p.start), dt_value(p.end)
    return {
        "subject": p.subject,
        "body": {"contentType": "text", "content": p.body},
        "start": start,
        "end": end,
        "isAllDay": p.is_all_day,
        "location": {"displayName": p.location},
        "showAs": _SHOW_AS_TO.get(p.show_as, "busy"),
        "sensitivity": "private" if p.is_private else "normal",
    }


def _task_date(value: datetime | None) -> dict[str, str] | None:
    if value is None:
        return None
    return {"dateTime": f"{value.astimezone(UTC).date().isoformat()}T00:00:00", "timeZone": "UTC"}


def task_values(p: Task) -> dict[str, Any]:
    return {
        "title": p.subject,
        "body": {"contentType": "text", "content": p.body},
        "startDateTime": _task_date(p.start),
        "dueDateTime": _task_date(p.due),
        "status": "completed" if p.completed is not None else "notStarted",
        "completedDateTime": dt_value(p.completed) if p.completed is not None else None,
    }


def contact_values(p: Contact) -> dict[str, Any]:
    name = " ".join(x for x in (p.given_name, p.surname) if x) or p.company or p.email or "(no name)"
    return {
        "givenName": p.given_name,
        "surname": p.surname,
        "displayName": name,
        "companyName": p.company,
        "jobTitle": p.job_title,
        "emailAddresses": [{"address": p.email, "name": name}] if p.email else [],
        "businessPhones": [p.business_phone] if p.business_phone else [],
        "mobilePhone": p.mobile_phone,
    }


def values(payload: Payload, tz: tzinfo, tz_name: str) -> dict[str, Any]:
    if isinstance(payload, Appointment):
        return event_values(payload, tz, tz_name)
    if isinstance(payload, Task):
        return task_values(payload)
    return contact_values(payload)


def _key_link(psa_key: str) -> list[dict[str, str]]:
    return [{"applicationName": LINK_APP, "externalId": psa_key, "displayName": f"PSA {psa_key}"}]


def exact_link(payload: Payload) -> dict[str, str] | None:
    """A task's exact values as a linked resource (what To Do rounds to days: times of day, the
    completion time), or None when the payload needs none."""
    exact = exact_values(payload)
    if exact is None:
        return None
    return {"applicationName": EXACT_APP, "externalId": exact, "displayName": "exchanged: exact times"}


def exact_link_id(doc: Mapping[str, Any]) -> str | None:
    for res in doc.get("linkedResources") or ():
        if (
            isinstance(res, Mapping)
            and res.get("applicationName") == EXACT_APP
            and isinstance(res.get("id"), str)
        ):
            return str(res["id"])
    return None


_PAYLOAD_OF = {FolderKind.CALENDAR: Appointment, FolderKind.TASKS: Task, FolderKind.CONTACTS: Contact}


def check_folder(folder: FolderKind, payload: Payload) -> None:
    wanted = _PAYLOAD_OF.get(folder)
    if wanted is None or not isinstance(payload, wanted):
        raise Unmappable(
            f"a {type(payload).__name__.lower()} does not go into the {folder.value} folder",
            "ErrorInvalidPropertyValue",
        )


def new_body(
    folder: FolderKind,
    payload: Payload,
    psa_key: str,
    categories: Sequence[str],
    tz: tzinfo,
    tz_name: str,
    reminder: str | None = None,
) -> dict[str, Any]:
    """The JSON of a create: the payload, the categories and our key (and an event's reminder,
    remembered in our property / link). Never attendees."""
    check_folder(folder, payload)
    doc = values(payload, tz, tz_name)
    doc["categories"] = list(dict.fromkeys(categories))
    if folder is FolderKind.TASKS:
        doc = {k: v for k, v in doc.items() if v is not None}
        doc["linkedResources"] = _key_link(psa_key)
        link = exact_link(payload)
        if link is not None:
            doc["linkedResources"].append(link)
        if reminder is not None:
            doc.update(reminder_values(folder, reminder))
            doc["linkedResources"].append(reminder_link(reminder))
        return doc
    props = [{"id": PSA_KEY_PROP, "value": psa_key}]
    exact = exact_values(payload)
    if exact is not None and folder is FolderKind.CALENDAR:
        props.append({"id": EXACT_PROP, "value": exact})
    if reminder is not None and folder is FolderKind.CALENDAR:
        doc.update(reminder_values(folder, reminder))
        props.append({"id": REMINDER_PROP, "value": reminder})
    doc["singleValueExtendedProperties"] = props
    return doc


def update_body(
    folder: FolderKind,
    payload: Payload,
    changed: Sequence[str],
    categories: Sequence[str] | None,
    tz: tzinfo,
    tz_name: str,
    reminder: str | None = None,
) -> dict[str, Any]:
    """The JSON of a PATCH: only the properties of the changed fields (and the categories when
    given, the reminder when given). Exact values are rewritten with the dates they belong to."""
    table = {FolderKind.CALENDAR: _EVENT_FIELDS, FolderKind.TASKS: _TASK_FIELDS}.get(folder, _CONTACT_FIELDS)
    unknown = [f for f in changed if f not in table]
    if unknown:
        raise Unmappable(f"cannot write field(s) {', '.join(unknown)}")
    full = values(payload, tz, tz_name)
    doc: dict[str, Any] = {}
    for name in changed:
        for prop in table[name]:
            doc[prop] = full[prop]
    if categories is not None:
        doc["categories"] = list(dict.fromkeys(categories))
    if folder is FolderKind.CALENDAR and ({"start", "end", "is_all_day"} & set(changed)):
        exact = exact_values(payload)
        doc["singleValueExtendedProperties"] = [{"id": EXACT_PROP, "value": exact or ""}]
    if reminder is not None and folder is FolderKind.TASKS:
        doc.update(reminder_values(folder, reminder))  # what we wrote: reminder_link, beside
    if reminder is not None and folder is FolderKind.CALENDAR:
        doc.update(reminder_values(folder, reminder))
        doc.setdefault("singleValueExtendedProperties", []).append({"id": REMINDER_PROP, "value": reminder})
    return doc


def delta_state(link: str, extra: Mapping[str, Any] | None = None) -> str:
    """The sync state the runner stores: the delta link and what it belongs to, as JSON."""
    return json.dumps({"v": 1, "delta": link, **(extra or {})}, separators=(",", ":"), sort_keys=True)


def read_state(state: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(state)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("delta"), str):
        return None
    return doc


__all__ = [
    "EXACT_PROP",
    "EXPAND_KEY",
    "LINK_APP",
    "PSA_KEY_PROP",
    "REMINDER_PROP",
    "Unmappable",
    "item_from_graph",
    "mailbox_zone",
    "new_body",
    "parse_dt",
    "update_body",
]
