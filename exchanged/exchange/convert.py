"""EWS items (exchangelib objects) <-> the model's payloads, and our identity property.

Mapping (model field -> exchangelib field):

* Appointment <-> CalendarItem: subject, body, start, end, is_all_day, location,
  show_as <-> legacy_free_busy_status, is_private <-> sensitivity (Private; Confidential reads
  as private too, never written).
* Task <-> Task: subject, body, start <-> start_date, due <-> due_date (EWS task dates are days:
  written as the date in the mailbox's time zone, read back as midnight there), completed <->
  status Completed + percent_complete 100 (EWS's CompleteDate is set by the server; read back as
  ``completed``).
* Contact <-> Contact: given_name, surname, company <-> company_name, job_title,
  email <-> email_addresses[EmailAddress1], business_phone/mobile_phone <->
  phone_numbers[BusinessPhone/MobilePhone]; display_name is derived (EWS requires it).

All datetimes leave this module timezone-aware UTC. Days are the mailbox's: every function that
turns a time into a day or back takes ``tz``, the mailbox's zone (``EwsMailbox`` reads it from
Exchange or the config, never from the host). An all-day appointment read is whole days in its
own StartTimeZone when Exchange gives one, else in ``tz``.

Odd items are never fatal: ``item_from_ews`` raises ``Unmappable`` with a reason and the caller
skips the item with a log line (exchangelib #877), unless it carries our PSA key: then
``unreadable_item`` keeps it as an ``ExchangeItem`` with ``unreadable=True`` and a placeholder
payload, so that the sync knows it is there (and repairs it) instead of creating it a second time.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields as dc_fields
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from exchangelib import CalendarItem
from exchangelib import Contact as EwsContact
from exchangelib import Task as EwsTask
from exchangelib.ewsdatetime import EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.extended_properties import ExtendedProperty
from exchangelib.fields import FieldPath
from exchangelib.indexed_properties import EmailAddress, PhoneNumber
from exchangelib.properties import Body, HTMLBody

from exchanged.exchange import xsdatetime
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

# --- identity -------------------------------------------------------------------------------------

PSA_KEY_ATTR = "exchanged_psa_key"
PSA_KEY_PROPERTY_SET = "8f4b6d2e-3c1a-4e7b-9a5d-2f6c8b1e7d34"  # fixed: ours, never change it
PSA_KEY_PROPERTY_NAME = "exchanged-psa-key"


class PsaKeyProperty(ExtendedProperty):
    """The PSA key of an item the daemon created (String, in our own property set)."""

    property_set_id = PSA_KEY_PROPERTY_SET
    property_name = PSA_KEY_PROPERTY_NAME
    property_type = "String"


EXACT_ATTR = "exchanged_exact"
EXACT_PROPERTY_NAME = "exchanged-exact-values"


class ExactValuesProperty(ExtendedProperty):
    """What the daemon wrote where Exchange keeps less than the PSA (JSON): a task's start/due
    times of day and completion time, an all-day appointment's exact bounds. Read back, it lets an
    unchanged field come back exactly as written, so no cycle sees a difference that is only
    Exchange's rounding (see ``exact_merge``)."""

    property_set_id = PSA_KEY_PROPERTY_SET
    property_name = EXACT_PROPERTY_NAME
    property_type = "String"


REMINDER_ATTR = "exchanged_reminder"
REMINDER_PROPERTY_NAME = "exchanged-reminder"


class ReminderWrittenProperty(ExtendedProperty):
    """The reminder code the daemon last wrote on the item ("off", "15", a task's reminder time):
    an item whose reminder differs from it was changed by its user, whose it is from then on."""

    property_set_id = PSA_KEY_PROPERTY_SET
    property_name = REMINDER_PROPERTY_NAME
    property_type = "String"


ITEM_CLASSES: dict[FolderKind, Any] = {
    FolderKind.CALENDAR: CalendarItem,
    FolderKind.TASKS: EwsTask,
    FolderKind.CONTACTS: EwsContact,
    FolderKind.PUBLIC_CONTACTS: EwsContact,
}


def register_psa_key_property() -> None:
    """Register ``exchanged_psa_key`` on CalendarItem, Task and Contact (idempotent)."""
    for cls in (CalendarItem, EwsTask, EwsContact):
        if not any(f.name == PSA_KEY_ATTR for f in cls.FIELDS):
            cls.register(PSA_KEY_ATTR, PsaKeyProperty)
    for cls in (CalendarItem, EwsTask):
        if not any(f.name == EXACT_ATTR for f in cls.FIELDS):
            cls.register(EXACT_ATTR, ExactValuesProperty)
        if not any(f.name == REMINDER_ATTR for f in cls.FIELDS):
            cls.register(REMINDER_ATTR, ReminderWrittenProperty)


register_psa_key_property()
xsdatetime.install()  # grommunio's fractional seconds (see xsdatetime)


class Unmappable(Exception):
    """An item this adapter cannot represent (skipped with a log line when read, an ``ItemError``
    with ``code`` when written)."""

    def __init__(self, message: str, code: str = "invalid_payload") -> None:
        super().__init__(message)
        self.code = code


EWS_FIRST_DAY = datetime(1601, 1, 2, tzinfo=UTC)  # FILETIME's epoch, with a day for any zone
EWS_LAST_DAY = datetime(9999, 12, 30, tzinfo=UTC)
MAX_SHORT_TEXT = 255  # subject, location, names: Exchange's (and exchangelib's) limit; body is free


def check_payload(payload: Payload) -> None:
    """What Exchange would refuse (or keep otherwise than sent) for one item, found before the
    batch is sent: an item error with a short message, not a value that comes back different
    and is rewritten every cycle (a date in year 1), nor one whose error carries 99 KB of it."""
    if isinstance(payload, Appointment) and payload.end < payload.start:
        raise Unmappable("the end of the appointment is before its start",
                         "ErrorCalendarEndDateIsEarlierThanStartDate")
    for f in dc_fields(payload):
        value = getattr(payload, f.name)
        if isinstance(value, datetime):
            aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            if not EWS_FIRST_DAY <= aware <= EWS_LAST_DAY:
                raise Unmappable(f"{f.name} {value.date().isoformat()} is outside the dates Exchange "
                                 "stores (1601 to 9999): correct it in the PSA", "out_of_range")
        elif isinstance(value, str) and f.name != "body" and len(value) > MAX_SHORT_TEXT:
            raise Unmappable(f"{f.name} has {len(value):,} characters, Exchange keeps at most "
                             f"{MAX_SHORT_TEXT}: shorten it in the PSA ({value[:40]!r}...)", "too_long")


# --- the fields we read (GetItem/FindItem additional properties) -------------------------------------

_CAL_READ = ("subject", "body", "start", "end", "is_all_day", "location", "legacy_free_busy_status",
             "sensitivity", "categories", "uid", "type", "original_start", "last_modified_time",
             "_start_timezone",  # an all-day item's days are those of its own zone
             "reminder_is_set", "reminder_minutes_before_start",
             "organizer", "required_attendees", "optional_attendees")  # GetItem only (not FindItem)
# what FindItem (a CalendarView) cannot return: read with GetItem
VIEW_UNREADABLE = frozenset({"body", "organizer", "required_attendees", "optional_attendees"})
_TASK_READ = ("subject", "body", "start_date", "due_date", "status", "complete_date",
              "percent_complete", "categories", "last_modified_time", "reminder_is_set", "reminder_due_by")
_CONTACT_READ = ("given_name", "surname", "display_name", "company_name", "job_title",
                 "categories", "last_modified_time")

EMAIL_LABEL = "EmailAddress1"
BUSINESS_PHONE = "BusinessPhone"
MOBILE_PHONE = "MobilePhone"


def read_fields(folder: FolderKind) -> list[FieldPath]:
    """The properties we fetch: only what we map, plus our extended property."""
    cls = ITEM_CLASSES[folder]
    names = {FolderKind.CALENDAR: _CAL_READ, FolderKind.TASKS: _TASK_READ}.get(folder, _CONTACT_READ)
    extra = (PSA_KEY_ATTR, EXACT_ATTR, REMINDER_ATTR) if cls in (CalendarItem, EwsTask) else (PSA_KEY_ATTR,)
    paths = [FieldPath(field=cls.get_field_by_fieldname(n)) for n in (*names, *extra)]
    if cls is EwsContact:
        email = cls.get_field_by_fieldname("email_addresses")
        phones = cls.get_field_by_fieldname("phone_numbers")
        paths.append(FieldPath(field=email, label=EMAIL_LABEL,
                               subfield=EmailAddress.get_field_by_fieldname("email")))
        for label in (BUSINESS_PHONE, MOBILE_PHONE):
            paths.append(FieldPath(field=phones, label=label,
                                   subfield=PhoneNumber.get_field_by_fieldname("phone_number")))
    return paths


def key_field(folder: FolderKind) -> FieldPath:
    return FieldPath(field=ITEM_CLASSES[folder].get_field_by_fieldname(PSA_KEY_ATTR))


# --- datetimes ------------------------------------------------------------------------------------

UTC_EWS = EWSTimeZone("UTC")


def ews_timezone(name: str) -> EWSTimeZone:
    """An IANA zone name as exchangelib's zone (``ValueError`` for an unknown name)."""
    try:
        return EWSTimeZone(name)
    except Exception as exc:  # exchangelib raises its UnknownTimeZone, zoneinfo several kinds
        raise ValueError(f"unknown time zone {name!r}: {exc}") from None


def to_utc(value: datetime) -> datetime:
    """Any aware datetime (EWSDateTime included) as a plain stdlib datetime in UTC."""
    if value.tzinfo is None:
        raise Unmappable(f"naive datetime {value!r}")
    off = value.utcoffset() or timedelta(0)
    naive = datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                     value.microsecond) - off
    return naive.replace(tzinfo=UTC)


def to_ews(value: datetime) -> EWSDateTime:
    v = to_utc(value)
    return EWSDateTime(v.year, v.month, v.day, v.hour, v.minute, v.second, tzinfo=UTC_EWS)


def _midnight(day: date, tz: tzinfo) -> datetime:
    return to_utc(datetime.combine(day, time(0, 0)).replace(tzinfo=tz))


def _ews_date(day: date) -> EWSDate:
    return EWSDate(day.year, day.month, day.day)


# --- text -----------------------------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"<\s*(br|/p|/div|/li|/tr)\b[^>]*>", re.IGNORECASE)


def body_text(value: Any) -> str:
    """Plain text of an item body; HTML bodies (Outlook edits) lose their markup."""
    if value is None:
        return ""
    text = str(value)
    if isinstance(value, HTMLBody) or text.lstrip().lower().startswith(("<html", "<!doctype")):
        text = re.sub(r"(?is)<(head|style|script)\b.*?</\1\s*>", "", text)
        text = _BREAK.sub("\n", text)
        text = html.unescape(_TAG.sub("", text))
        text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip()
    return text  # plain text stays exactly as stored: what we wrote comes back unchanged


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _none_if_empty(value: str) -> str | None:
    return value if value else None


# --- Exchange -> model ----------------------------------------------------------------------------

_SHOW_AS_FROM_EWS = {"Free": ShowAs.FREE, "Tentative": ShowAs.TENTATIVE, "Busy": ShowAs.BUSY,
                     "OOF": ShowAs.OOF, "WorkingElsewhere": ShowAs.WORKING_ELSEWHERE,
                     "NoData": ShowAs.NO_DATA}
_SHOW_AS_TO_EWS = {v: k for k, v in _SHOW_AS_FROM_EWS.items()}


def _item_zone(item: Any, tz: tzinfo) -> tzinfo:
    """The zone an all-day item's days are in: its own StartTimeZone, else the mailbox's."""
    own = getattr(item, "_start_timezone", None)
    return own if isinstance(own, tzinfo) else tz


def _cal_bounds(item: Any, tz: tzinfo) -> tuple[datetime, datetime]:
    start, end = item.start, item.end
    if start is None or end is None:
        raise Unmappable("calendar item without start or end")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return to_utc(start), to_utc(end)
    # all-day: exchangelib hands out dates in the item's zone (end inclusive)
    tz = _item_zone(item, tz)
    s_day = start if not isinstance(start, datetime) else start.astimezone(tz).date()
    e_day = end if not isinstance(end, datetime) else end.astimezone(tz).date()
    return _midnight(s_day, tz), _midnight(e_day + timedelta(days=1), tz)


_RESPONSE_FROM_EWS = {"Accept": "accepted", "Tentative": "tentative", "Decline": "declined",
                      "NoResponseReceived": "none", "Organizer": "organizer", "Unknown": "unknown"}


def _attendee(value: Any, response: str | None = None) -> Attendee | None:
    mailbox = getattr(value, "mailbox", value)
    email = _s(getattr(mailbox, "email_address", None)).strip()
    name = _s(getattr(mailbox, "name", None)).strip()
    if not (email or name):
        return None
    said = response or _RESPONSE_FROM_EWS.get(_s(getattr(value, "response_type", None)), "unknown")
    return Attendee(email=email, name=name, response=said)


def attendees_from_ews(item: Any) -> tuple[Attendee, ...]:
    """Who takes part in a meeting: required and optional attendees with their answers, and the
    organizer (only when there are attendees: an appointment of one's own has none)."""
    people = [a for a in (_attendee(v) for v in (*(getattr(item, "required_attendees", None) or ()),
                                               *(getattr(item, "optional_attendees", None) or ())))
              if a is not None]
    organizer = getattr(item, "organizer", None)
    if people and organizer is not None:
        found = _attendee(organizer, "organizer")
        if found is not None and all(p.email.lower() != found.email.lower() for p in people):
            people.append(found)
    return attendee_list(people)


def appointment_from_ews(item: Any, tz: tzinfo) -> Appointment:
    start, end = _cal_bounds(item, tz)
    return Appointment(
        subject=_s(item.subject), start=start, end=end, body=body_text(item.body),
        location=_s(item.location), is_all_day=bool(item.is_all_day),
        show_as=_SHOW_AS_FROM_EWS.get(_s(item.legacy_free_busy_status), ShowAs.BUSY),
        is_private=item.sensitivity in ("Private", "Confidential"), attendees=attendees_from_ews(item))


def _day_start(value: Any, tz: tzinfo) -> datetime | None:
    """A task date (a day) as the UTC instant of its midnight in the mailbox's zone."""
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value.astimezone(tz).date()
    return _midnight(value, tz)


def _local_day(value: datetime, tz: tzinfo) -> date:
    return value.astimezone(tz).date()


def task_from_ews(item: Any, tz: tzinfo) -> Task:
    completed: datetime | None = None
    if item.status == "Completed" or (item.percent_complete is not None
                                       and Decimal(item.percent_complete) >= 100):
        stamp = item.complete_date or item.last_modified_time
        completed = to_utc(stamp) if isinstance(stamp, datetime) else datetime(1970, 1, 1, tzinfo=UTC)
    return Task(subject=_s(item.subject), body=body_text(item.body), start=_day_start(item.start_date, tz),
                due=_day_start(item.due_date, tz), completed=completed)


def _indexed(values: Iterable[Any] | None, label: str, attr: str) -> str:
    for v in values or ():
        if getattr(v, "label", None) == label:
            return _s(getattr(v, attr, None))
    return ""


def contact_from_ews(item: Any) -> Contact:
    return Contact(
        given_name=_s(item.given_name), surname=_s(item.surname), company=_s(item.company_name),
        job_title=_s(item.job_title), email=_indexed(item.email_addresses, EMAIL_LABEL, "email"),
        business_phone=_indexed(item.phone_numbers, BUSINESS_PHONE, "phone_number"),
        mobile_phone=_indexed(item.phone_numbers, MOBILE_PHONE, "phone_number"))


# --- exact values: what Exchange rounds, kept beside the item -----------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else to_utc(value).isoformat()


def _from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return to_utc(parsed) if parsed.tzinfo is not None else None


def exact_values(payload: Payload) -> str | None:
    """The JSON kept in our second property, or None when Exchange stores the payload exactly."""
    if isinstance(payload, Task):
        return json.dumps({"start": _iso(payload.start), "due": _iso(payload.due),
                           "completed": _iso(payload.completed)}, sort_keys=True)
    if isinstance(payload, Appointment) and payload.is_all_day:
        return json.dumps({"start": _iso(payload.start), "end": _iso(payload.end)}, sort_keys=True)
    return None


def _stored(raw: Any) -> dict[str, datetime | None]:
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return {k: _from_iso(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def _task_day(read: datetime | None, written: datetime | None, tz: tzinfo) -> datetime | None:
    """A task date as read (a day in the mailbox's zone), with the time of day we wrote when the
    day is still ours."""
    if read is None or written is None:
        return read
    day = _local_day(read, tz)
    if day == _local_day(written, tz):
        return written
    # moved to another day in Outlook: that day, at the time of day the PSA had (in the mailbox's zone)
    return to_utc(datetime.combine(day, written.astimezone(tz).time()).replace(tzinfo=tz))


def exact_merge(payload: Payload, raw: Any, tz: tzinfo) -> Payload:
    """Field by field: where Exchange still holds what we wrote (as Exchange rounds it), give back
    exactly what we wrote; where it holds something else (a user's edit), give back that."""
    stored = _stored(raw)
    if not stored:
        return payload
    if isinstance(payload, Task):
        completed = payload.completed
        if completed is not None and stored.get("completed") is not None:
            completed = stored["completed"]
        return replace(payload, start=_task_day(payload.start, stored.get("start"), tz),
                       due=_task_day(payload.due, stored.get("due"), tz), completed=completed)
    if isinstance(payload, Appointment) and payload.is_all_day:
        w_start, w_end = stored.get("start"), stored.get("end")
        if w_start is None or w_end is None:
            return payload
        s_day = w_start.astimezone(tz).date()
        e_day = max(s_day, (w_end.astimezone(tz) - timedelta(microseconds=1)).date())
        start = w_start if payload.start == _midnight(s_day, tz) else payload.start
        end = w_end if payload.end == _midnight(e_day + timedelta(days=1), tz) else payload.end
        return replace(payload, start=start, end=end)
    return payload


# --- reminders: the engine's reminder codes (engine.rules.reminder_code) <-> EWS fields ------------

REMINDER_OFF = "off"


def reminder_of(folder: FolderKind, item: Any) -> str | None:
    """The reminder code of an item as read: "off", minutes before a calendar item's start, a task's
    reminder time (UTC); None when the item was read without reminder fields."""
    is_set = getattr(item, "reminder_is_set", None)
    if is_set is None:
        return None
    if not is_set:
        return REMINDER_OFF
    if folder is FolderKind.TASKS:
        due_by = getattr(item, "reminder_due_by", None)
        return _reminder_time(due_by) if isinstance(due_by, datetime) else REMINDER_OFF
    minutes = getattr(item, "reminder_minutes_before_start", None)
    return str(int(minutes)) if minutes is not None else "0"


def _reminder_time(value: datetime) -> str:
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def reminder_values(folder: FolderKind, code: str) -> dict[str, Any]:
    """The EWS fields (and our property) that give an item the reminder ``code``."""
    values: dict[str, Any] = {REMINDER_ATTR: code, "reminder_is_set": code != REMINDER_OFF}
    if code == REMINDER_OFF:
        return values
    if folder is FolderKind.TASKS:
        when = _from_iso(code.replace("Z", "+00:00"))
        if when is None:
            raise Unmappable(f"reminder time {code!r} is not a UTC time")
        values["reminder_due_by"] = to_ews(when)
    else:
        try:
            values["reminder_minutes_before_start"] = int(code)
        except ValueError:
            raise Unmappable(f"reminder {code!r} is not a number of minutes") from None
    return values


def item_from_ews(folder: FolderKind, item: Any, tz: tzinfo = UTC) -> ExchangeItem:
    """One exchangelib item as an ``ExchangeItem``; ``Unmappable`` for what we cannot represent.
    ``tz``: the mailbox's zone (its days)."""
    expected = ITEM_CLASSES[folder]
    if type(item) is not expected:
        raise Unmappable(f"{type(item).__name__} in the {folder.value} folder")
    if not item.id:
        raise Unmappable("item without an id")
    payload: Payload
    uid = exchange_key = None
    is_master = False
    if folder is FolderKind.CALENDAR:
        payload = appointment_from_ews(item, tz)
        uid = _s(item.uid) or None
        kind = _s(item.type)
        is_master = kind == "RecurringMaster"
        if kind in ("Occurrence", "Exception") and item.original_start is not None and uid:
            exchange_key = occurrence_key(uid, to_utc(item.original_start))
        else:
            exchange_key = uid
    elif folder is FolderKind.TASKS:
        payload = task_from_ews(item, tz)
    else:
        payload = contact_from_ews(item)
    if folder is FolderKind.CALENDAR:
        payload = exact_merge(payload, getattr(item, EXACT_ATTR, None), _item_zone(item, tz))
        if getattr(item, PSA_KEY_ATTR, None) and isinstance(payload, Appointment) and payload.attendees:
            payload = replace(payload, attendees=())  # ours: the PSA owns it, attendees are not synced
    elif folder is FolderKind.TASKS:
        payload = exact_merge(payload, getattr(item, EXACT_ATTR, None), tz)
    modified = item.last_modified_time
    reminder = written = None
    if folder in (FolderKind.CALENDAR, FolderKind.TASKS):
        reminder = reminder_of(folder, item)
        written = getattr(item, REMINDER_ATTR, None) or None
    return ExchangeItem(
        folder=folder, item_id=item.id, change_key=item.changekey or "", payload=payload,
        psa_key=getattr(item, PSA_KEY_ATTR, None) or None,
        categories=tuple(item.categories or ()), uid=uid, exchange_key=exchange_key,
        is_recurring_master=is_master,
        last_modified=to_utc(modified) if isinstance(modified, datetime) else None,
        reminder=reminder, reminder_written=written)


def unreadable_item(folder: FolderKind, item: Any) -> ExchangeItem | None:
    """An item ``item_from_ews`` refused, if it is ours: of the folder's class, with an id and our
    PSA key. Only identity is read (and the subject, categories, type and UID as far as they can
    be); None for anything else, which the caller skips."""
    if type(item) is not ITEM_CLASSES[folder] or not getattr(item, "id", None):
        return None
    psa_key = getattr(item, PSA_KEY_ATTR, None)
    if not isinstance(psa_key, str) or not psa_key:
        return None
    subject = getattr(item, "subject" if folder in (FolderKind.CALENDAR, FolderKind.TASKS) else "surname",
                      None)
    cats = getattr(item, "categories", None)
    if not isinstance(cats, list | tuple):
        cats = ()
    uid = (_s(getattr(item, "uid", None)) or None) if folder is FolderKind.CALENDAR else None
    return ExchangeItem(
        folder=folder, item_id=item.id, change_key=_s(getattr(item, "changekey", None)),
        payload=unreadable_payload(folder, subject if isinstance(subject, str) else ""),
        psa_key=psa_key, categories=tuple(c for c in cats if isinstance(c, str)), uid=uid,
        exchange_key=uid, is_recurring_master=_s(getattr(item, "type", None)) == "RecurringMaster",
        unreadable=True)


# --- model -> Exchange ----------------------------------------------------------------------------


def _display_name(c: Contact) -> str:
    return " ".join(p for p in (c.given_name, c.surname) if p) or c.company or c.email or "(no name)"


def _appointment_values(p: Appointment, tz: tzinfo) -> dict[str, Any]:
    values: dict[str, Any] = {
        "subject": p.subject, "body": Body(p.body) if p.body else None,
        "location": _none_if_empty(p.location), "is_all_day": p.is_all_day,
        "legacy_free_busy_status": _SHOW_AS_TO_EWS.get(p.show_as, "Busy"),
        "sensitivity": "Private" if p.is_private else "Normal",
    }
    if p.is_all_day:
        s_day = p.start.astimezone(tz).date()
        e_day = (p.end.astimezone(tz) - timedelta(microseconds=1)).date()
        values["start"], values["end"] = _ews_date(s_day), _ews_date(max(s_day, e_day))
    else:
        values["start"], values["end"] = to_ews(p.start), to_ews(p.end)
    return values


def _task_values(p: Task, tz: tzinfo) -> dict[str, Any]:
    done = p.completed is not None
    return {
        "subject": p.subject, "body": Body(p.body) if p.body else None,
        "start_date": _ews_date(_local_day(p.start, tz)) if p.start else None,
        "due_date": _ews_date(_local_day(p.due, tz)) if p.due else None,
        "status": "Completed" if done else "NotStarted",
        "percent_complete": Decimal(100) if done else Decimal(0),
    }


def _contact_values(p: Contact, *, for_update: bool = False) -> dict[str, Any]:
    emails = [EmailAddress(label=EMAIL_LABEL, email=p.email)] if p.email else []
    phones = [PhoneNumber(label=lbl, phone_number=num)
              for lbl, num in ((BUSINESS_PHONE, p.business_phone), (MOBILE_PHONE, p.mobile_phone)) if num]
    if for_update:
        # an empty managed entry means "delete this label" (see services.UpdateItemOnly)
        if not p.email:
            emails = [EmailAddress(label=EMAIL_LABEL, email=None)]
        for lbl, num in ((BUSINESS_PHONE, p.business_phone), (MOBILE_PHONE, p.mobile_phone)):
            if not num:
                phones.append(PhoneNumber(label=lbl, phone_number=None))
    return {
        "given_name": _none_if_empty(p.given_name), "surname": _none_if_empty(p.surname),
        "display_name": _display_name(p), "company_name": _none_if_empty(p.company),
        "job_title": _none_if_empty(p.job_title), "email_addresses": emails or None,
        "phone_numbers": phones or None,
    }


def payload_values(payload: Payload, tz: tzinfo, *, for_update: bool = False) -> dict[str, Any]:
    if isinstance(payload, Appointment):
        return _appointment_values(payload, tz)
    if isinstance(payload, Task):
        return _task_values(payload, tz)
    return _contact_values(payload, for_update=for_update)


def _payload_folder_ok(folder: FolderKind, payload: Payload) -> bool:
    want = {FolderKind.CALENDAR: Appointment, FolderKind.TASKS: Task}.get(folder, Contact)
    return isinstance(payload, want)


def new_ews_item(folder: FolderKind, payload: Payload, psa_key: str, categories: Sequence[str],
                 account: Any, tz: tzinfo, reminder: str | None = None) -> Any:
    """An unsaved exchangelib item for CreateItem, carrying our key and the categories."""
    if not _payload_folder_ok(folder, payload):
        raise Unmappable(f"a {type(payload).__name__} cannot be stored in the {folder.value} folder",
                         "ErrorInvalidPropertyValue")
    check_payload(payload)
    values = {k: v for k, v in payload_values(payload, tz).items() if v is not None}
    cls = ITEM_CLASSES[folder]
    cats = list(dict.fromkeys(c for c in categories if c))
    exact = exact_values(payload)
    if exact is not None:
        values[EXACT_ATTR] = exact
    values[PSA_KEY_ATTR] = psa_key
    if cats:
        values["categories"] = cats
    if reminder is not None and folder in (FolderKind.CALENDAR, FolderKind.TASKS):
        values.update(reminder_values(folder, reminder))
    item = cls(account=account, **values)
    try:
        # field validation now, so one bad item never fails its whole batch; only the fields set
        # (item.clean() visits all ~80 fields of the class: a quarter of an export's CPU)
        for name, value in values.items():
            setattr(item, name, cls.get_field_by_fieldname(name).clean(value))
        if isinstance(payload, Appointment) and item.end < item.start:
            raise ValueError(f"'end' must be greater than 'start' ({item.start} -> {item.end})")
    except (ValueError, TypeError) as exc:
        raise Unmappable(str(exc), "ErrorInvalidPropertyValue") from None
    return item


# which exchangelib fields carry a model field (updates send only these)
_UPDATE_FIELDS: dict[type, dict[str, tuple[str, ...]]] = {
    Appointment: {
        "subject": ("subject",), "body": ("body",), "start": ("start",), "end": ("end",),
        "location": ("location",), "is_all_day": ("is_all_day", "start", "end"),
        "show_as": ("legacy_free_busy_status",), "is_private": ("sensitivity",),
        "attendees": (),  # never written: no invitation can ever be sent
    },
    Task: {
        "subject": ("subject",), "body": ("body",), "start": ("start_date",), "due": ("due_date",),
        "completed": ("status", "percent_complete"),
    },
    Contact: {
        "given_name": ("given_name", "display_name"), "surname": ("surname", "display_name"),
        "company": ("company_name",), "job_title": ("job_title",), "email": ("email_addresses",),
        "business_phone": ("phone_numbers",), "mobile_phone": ("phone_numbers",),
    },
}


def update_fieldnames(payload: Payload, changed: Iterable[str]) -> list[str]:
    """exchangelib field names for the changed model fields, in a stable order, no duplicates."""
    table = _UPDATE_FIELDS[type(payload)]
    known = {f.name for f in dc_fields(payload)}
    out: list[str] = []
    for name in changed:
        if name not in known:
            raise Unmappable(f"unknown field {name!r} for {type(payload).__name__}")
        for ews_name in table.get(name, ()):
            if ews_name not in out:
                out.append(ews_name)
    if isinstance(payload, Appointment) and payload.is_all_day and (
            "start" in out or "end" in out) and "is_all_day" not in out:
        out.append("is_all_day")  # all-day bounds are dates: EWS needs the flag with them
    if isinstance(payload, Appointment) and ("start" in out) != ("end" in out):
        out.extend(n for n in ("start", "end") if n not in out)  # EWS checks end >= start per change
    rounded = {"start_date", "due_date", "status"} if isinstance(payload, Task) else {"start", "end"}
    if not isinstance(payload, Contact) and rounded & set(out):
        out.append(EXACT_ATTR)  # keep the exact values beside what Exchange rounds
    return out


def update_ews_item(folder: FolderKind, item_id: str, change_key: str, payload: Payload,
                    fieldnames: Sequence[str], account: Any, tz: tzinfo, *,
                    categories: Sequence[str] | None = None, reminder: str | None = None) -> Any:
    """An exchangelib item with id/changekey and the new values of ``fieldnames``; ``categories``
    (the item's whole list) is written when ``"categories"`` is one of them."""
    if not _payload_folder_ok(folder, payload):
        raise Unmappable(f"a {type(payload).__name__} cannot be stored in the {folder.value} folder",
                         "ErrorInvalidPropertyValue")
    check_payload(payload)
    values = payload_values(payload, tz, for_update=True)
    cls = ITEM_CLASSES[folder]
    values[EXACT_ATTR] = exact_values(payload) or "{}"
    values["categories"] = list(dict.fromkeys(c for c in categories or () if c)) or None
    if reminder is not None:
        values.update(reminder_values(folder, reminder))
    item = cls(account=account, id=item_id, changekey=change_key or None)
    for name in fieldnames:
        setattr(item, name, values[name])
    return item
