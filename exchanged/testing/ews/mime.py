"""t:MimeContent: calendar items as iCalendar, contacts as vCard, read and written (icalendar).

Exchange answers ``IncludeMimeContent=true`` with the item as MIME (base64): an iCalendar VCALENDAR
for a calendar item, a vCard for a contact; clients such as DavMail build and write items this
way; tasks and other items are answered as a plain RFC 5322 message. What this server cannot
write (MimeContent of tasks and messages, iCalendar with RECURRENCE-ID/EXDATE/RDATE, RRULEs beyond
one EWS pattern) is ErrorUnsupportedMimeConversion, never a silent omission; iCalendar/vCard text
that does not parse is ErrorMimeContentConversionFailed.
"""

from __future__ import annotations

import base64
import datetime as dt
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import icalendar
from lxml import etree

from .items import child_text, drop_child, set_child
from .soap import Element, EwsError, fmt_dt, local, parse_dt, sub, t

_WEEKDAYS = {"Monday": "MO", "Tuesday": "TU", "Wednesday": "WE", "Thursday": "TH", "Friday": "FR",
             "Saturday": "SA", "Sunday": "SU"}
_DAY_NAMES = {v: k for k, v in _WEEKDAYS.items()}
_PHONES = {"BusinessPhone": ["WORK", "VOICE"], "HomePhone": ["HOME", "VOICE"], "MobilePhone": ["CELL"],
           "BusinessFax": ["WORK", "FAX"]}
_ADDRESSES = {"Business": "WORK", "Home": "HOME", "Other": "OTHER"}
_ADDRESS_PARTS = ("Street", "City", "State", "CountryOrRegion", "PostalCode")  # schema order


def unsupported(what: str) -> EwsError:
    return EwsError("ErrorUnsupportedMimeConversion",
                    f"The MIME conversion of {what} is not supported by this test server.")


def mime_content(full: Element) -> Element:
    """The t:MimeContent element for a full item view: iCalendar for a calendar item, vCard for a
    contact, a plain RFC 5322 message (subject and text body) for anything else, as Exchange sends
    tasks and messages."""
    kind = local(full.tag)
    if kind == "CalendarItem":
        data = _to_icalendar(full)
    elif kind == "Contact":
        data = _to_vcard(full)
    else:
        data = _to_message(full)
    el = etree.Element(t("MimeContent"), CharacterSet="UTF-8")
    el.text = base64.b64encode(data).decode()
    return el


def _to_message(full: Element) -> bytes:
    msg = EmailMessage()
    msg["Subject"] = child_text(full, "Subject") or ""
    created = parse_dt(child_text(full, "DateTimeCreated"))
    if created is not None:
        msg["Date"] = format_datetime(created)
    content_class = "task" if local(full.tag) == "Task" else "message"
    msg["Content-Class"] = f"urn:content-classes:{content_class}"
    msg.set_content(_body_text(full) or "")
    return bytes(msg)


def wants_mime(shape: Element | None) -> bool:
    if shape is None:
        return False
    if (shape.findtext(t("IncludeMimeContent")) or "").strip().lower() == "true":
        return True
    props = shape.find(t("AdditionalProperties"))
    return props is not None and any(p.get("FieldURI") == "item:MimeContent" for p in props)


# -- reading -------------------------------------------------------------------------------------------
def _body_text(full: Element) -> str | None:
    body = full.find(t("Body"))
    if body is None or not body.text:
        return None
    if body.get("BodyType") == "HTML":
        return "".join(etree.fromstring(f"<x>{body.text}</x>", etree.HTMLParser()).itertext()).strip()
    return body.text


def _to_icalendar(full: Element) -> bytes:
    from .recurrence import series_zone

    cal = icalendar.Calendar()
    cal.add("prodid", "-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN")
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    event = icalendar.Event()
    event.add("uid", child_text(full, "UID") or "")
    if child_text(full, "Subject"):
        event.add("summary", child_text(full, "Subject"))
    start, end = parse_dt(child_text(full, "Start")), parse_dt(child_text(full, "End"))
    if start is None or end is None:
        raise unsupported("a calendar item without Start and End")
    zone = series_zone(full)
    tz_el = full.find(t("StartTimeZone"))
    tzid = None if tz_el is None or zone == dt.UTC else tz_el.get("Id")
    if child_text(full, "IsAllDayEvent") == "true":
        event.add("dtstart", start.astimezone(zone).date())
        event.add("dtend", end.astimezone(zone).date())
    elif tzid:
        # As Exchange writes them: a VTIMEZONE named by the Windows zone, times local to it
        # (clients such as DavMail learn the user's VTIMEZONE this way).
        cal.add_component(icalendar.Timezone.from_tzinfo(
            zone, tzid=tzid, first_date=start.date().replace(month=1, day=1),
            last_date=start.date().replace(year=start.year + 2, month=1, day=1)))
        event.add("dtstart", start.astimezone(zone), parameters={"TZID": tzid})
        event.add("dtend", end.astimezone(zone), parameters={"TZID": tzid})
    else:
        event.add("dtstart", start)
        event.add("dtend", end)
    for prop, name in (("location", "Location"),):
        if child_text(full, name):
            event.add(prop, child_text(full, name))
    text = _body_text(full)
    if text:
        event.add("description", text)
    for prop, name in (("dtstamp", "LastModifiedTime"), ("created", "DateTimeCreated"),
                       ("last-modified", "LastModifiedTime")):
        value = parse_dt(child_text(full, name))
        if value is not None:
            event.add(prop, value)
    rec = full.find(t("Recurrence"))
    if rec is not None:
        event.add("rrule", _rrule(rec))
        deleted = [parse_dt(d.findtext(t("Start"))) for d in full.iterfind(f"{t('DeletedOccurrences')}/*")]
        if any(deleted):
            event.add("exdate", [d for d in deleted if d is not None])
    cal.add_component(event)
    if rec is not None:
        for exception in _exception_events(full, event, end - start):
            cal.add_component(exception)
    return bytes(cal.to_ical())


def _exception_events(full: Element, master: Any, duration: dt.timedelta) -> list[Any]:
    """One VEVENT with RECURRENCE-ID per modified occurrence (the fields it overrides)."""
    from .recurrence import PRIVATE

    out = []
    for exc in full.iterfind(f"{{{PRIVATE}}}Exception"):
        original = parse_dt(exc.get("OriginalStart"))
        if original is None:
            continue
        event = icalendar.Event()
        event.add("uid", str(master["UID"]))
        event.add("recurrence-id", original)
        start = parse_dt(exc.findtext(t("Start"))) or original
        end = parse_dt(exc.findtext(t("End"))) or start + duration
        event.add("dtstart", start)
        event.add("dtend", end)
        for prop, name in (("summary", "Subject"), ("location", "Location")):
            value = exc.findtext(t(name))
            if value is None:
                value = full.findtext(t(name))
            if value:
                event.add(prop, value)
        out.append(event)
    return out


_RELATIVE_DAYS = {"Day": list(_WEEKDAYS.values()), "Weekday": ["MO", "TU", "WE", "TH", "FR"],
                  "WeekendDay": ["SA", "SU"]}
_INDEX = {"First": 1, "Second": 2, "Third": 3, "Fourth": 4, "Last": -1}
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def _rrule(rec: Element) -> dict[str, Any]:
    bounds = ("NoEndRecurrence", "EndDateRecurrence", "NumberedRecurrence")
    pattern = next((c for c in rec if local(c.tag).endswith("Recurrence") and local(c.tag) not in bounds),
                   None)
    boundary = next((c for c in rec if local(c.tag) in bounds), None)
    if pattern is None or boundary is None:
        raise unsupported("a recurrence without pattern or range")
    kind = local(pattern.tag)
    rule: dict[str, Any] = {}
    interval = int(pattern.findtext(t("Interval")) or "1")
    days = (pattern.findtext(t("DaysOfWeek")) or "").split()
    byday = [d for name in days for d in (_RELATIVE_DAYS.get(name) or [_WEEKDAYS.get(name, "")]) if d]
    month = pattern.findtext(t("Month"))
    if kind == "DailyRecurrence":
        rule = {"freq": "DAILY", "interval": interval}
    elif kind == "WeeklyRecurrence":
        rule = {"freq": "WEEKLY", "interval": interval}
        if byday:
            rule["byday"] = byday
    elif kind == "AbsoluteMonthlyRecurrence":
        rule = {"freq": "MONTHLY", "interval": interval,
                "bymonthday": int(pattern.findtext(t("DayOfMonth")) or "1")}
    elif kind == "RelativeMonthlyRecurrence":
        rule = {"freq": "MONTHLY", "interval": interval, "byday": byday,
                "bysetpos": _INDEX.get(pattern.findtext(t("DayOfWeekIndex")) or "First", 1)}
    elif kind == "AbsoluteYearlyRecurrence" and month in _MONTHS:
        rule = {"freq": "YEARLY", "bymonth": _MONTHS.index(month) + 1,
                "bymonthday": int(pattern.findtext(t("DayOfMonth")) or "1")}
    elif kind == "RelativeYearlyRecurrence" and month in _MONTHS:
        rule = {"freq": "YEARLY", "bymonth": _MONTHS.index(month) + 1, "byday": byday,
                "bysetpos": _INDEX.get(pattern.findtext(t("DayOfWeekIndex")) or "First", 1)}
    else:
        raise unsupported(f"the recurrence pattern {kind}")
    if local(boundary.tag) == "NumberedRecurrence":
        rule["count"] = int(boundary.findtext(t("NumberOfOccurrences")) or "1")
    elif local(boundary.tag) == "EndDateRecurrence":
        until = dt.date.fromisoformat((boundary.findtext(t("EndDate")) or "")[:10])
        rule["until"] = dt.datetime.combine(until, dt.time(23, 59, 59), dt.UTC)
    return rule


def _to_vcard(full: Element) -> bytes:
    card = icalendar.Component()
    card.name = "VCARD"  # type: ignore[misc]  # icalendar's generic component, named as a vCard

    def add(name: str, value: Any, params: dict[str, str] | None = None) -> None:
        card.add(name, value, parameters=params or {})

    add("VERSION", "3.0")
    add("FN", child_text(full, "DisplayName") or "")
    names = [child_text(full, n) or "" for n in ("Surname", "GivenName", "MiddleName")]
    add("N", icalendar.prop.vN(icalendar.prop.NFields(family=names[0], given=names[1], additional=names[2],
                                                      prefix="", suffix="")))
    if child_text(full, "CompanyName") or child_text(full, "Department"):
        add("ORG", [child_text(full, "CompanyName") or "", child_text(full, "Department") or ""])
    if child_text(full, "JobTitle"):
        add("TITLE", child_text(full, "JobTitle"))
    for entry in full.findall(f"{t('EmailAddresses')}/{t('Entry')}"):
        if entry.text:
            add("EMAIL", entry.text, {"TYPE": "INTERNET"})
    for entry in full.findall(f"{t('PhoneNumbers')}/{t('Entry')}"):
        if entry.text and entry.get("Key") in _PHONES:
            add("TEL", entry.text, {"TYPE": ",".join(_PHONES[entry.get("Key", "")])})
    for entry in full.findall(f"{t('PhysicalAddresses')}/{t('Entry')}"):
        parts = {p: entry.findtext(t(p)) or "" for p in _ADDRESS_PARTS}
        add("ADR", icalendar.prop.vAdr(icalendar.prop.AdrFields(
            po_box="", extended="", street=parts["Street"], locality=parts["City"], region=parts["State"],
            postal_code=parts["PostalCode"], country=parts["CountryOrRegion"])),
            {"TYPE": _ADDRESSES.get(entry.get("Key", ""), "OTHER")})
    text = _body_text(full)
    if text:
        add("NOTE", text)
    return bytes(card.to_ical())


# -- writing -------------------------------------------------------------------------------------------
def apply_mime(elem: Element, kind: str, *, overwrite: bool) -> None:
    """Replace a t:MimeContent in a CreateItem/UpdateItem item by the fields it carries (fields the
    request sets itself win on create: ``overwrite=False``)."""
    mime = elem.find(t("MimeContent"))
    if mime is None:
        return
    elem.remove(mime)
    if kind not in ("CalendarItem", "Contact"):
        raise unsupported(f"items of type {kind} (written from MIME)")
    try:
        data = base64.b64decode((mime.text or "").strip(), validate=True)
        parsed = icalendar.Component.from_ical(data)
    except (ValueError, TypeError) as exc:
        raise EwsError("ErrorMimeContentConversionFailed",
                       f"The MIME content could not be converted: {exc}") from None
    if kind == "CalendarItem":
        _apply_event(elem, parsed, overwrite)
    elif kind == "Contact":
        if parsed.name != "VCARD":
            raise EwsError("ErrorMimeContentConversionFailed", "A contact's MimeContent must be a vCard.")
        _apply_vcard(elem, parsed, overwrite)


def _setter(elem: Element, overwrite: bool) -> Any:
    def put(name: str, value: str | None, **attrs: str) -> None:
        if value is None or (not overwrite and elem.find(t(name)) is not None):
            return
        el = set_child(elem, name, value)
        for k, v in attrs.items():
            el.set(k, v)
    return put


def _apply_event(elem: Element, cal: Any, overwrite: bool) -> None:
    events = cal.walk("VEVENT") if cal.name == "VCALENDAR" else []
    if len(events) != 1:
        raise EwsError("ErrorMimeContentConversionFailed",
                       f"A calendar item's MimeContent must hold one VEVENT, found {len(events)}.")
    event = events[0]
    if event.get("RECURRENCE-ID") is not None or event.get("EXDATE") is not None or event.get("RDATE"):
        raise unsupported("iCalendar with RECURRENCE-ID, EXDATE or RDATE")
    put = _setter(elem, overwrite)
    start, end = event.decoded("DTSTART", None), event.decoded("DTEND", None)
    if start is None:
        raise EwsError("ErrorMimeContentConversionFailed", "The VEVENT has no DTSTART.")
    if end is None:
        duration = event.decoded("DURATION", None)
        end = start + (duration or (dt.timedelta(days=1) if not isinstance(start, dt.datetime)
                                    else dt.timedelta()))
    all_day = not isinstance(start, dt.datetime)
    if all_day:
        start = dt.datetime.combine(start, dt.time(), dt.UTC)
        end = dt.datetime.combine(end, dt.time(), dt.UTC)
    elif start.tzinfo is None:
        start, end = start.replace(tzinfo=dt.UTC), end.replace(tzinfo=dt.UTC)
    put("Subject", str(event.get("SUMMARY")) if event.get("SUMMARY") is not None else None)
    if event.get("DESCRIPTION") is not None:
        put("Body", str(event.get("DESCRIPTION")), BodyType="Text")
    put("Start", fmt_dt(start))
    put("End", fmt_dt(end))
    put("IsAllDayEvent", "true" if all_day else "false")
    put("Location", str(event.get("LOCATION")) if event.get("LOCATION") is not None else None)
    put("UID", str(event.get("UID")) if event.get("UID") is not None else None)
    rule = event.get("RRULE")
    if rule is not None and (overwrite or elem.find(t("Recurrence")) is None):
        drop_child(elem, "Recurrence")
        _recurrence(elem, rule, start)


def _recurrence(elem: Element, rule: Any, start: dt.datetime) -> None:
    freq = (rule.get("FREQ") or [""])[0]
    interval = str((rule.get("INTERVAL") or [1])[0])
    rec = sub(elem, t("Recurrence"))
    if freq == "DAILY":
        sub(sub(rec, t("DailyRecurrence")), t("Interval"), interval)
    elif freq == "WEEKLY":
        pattern = sub(rec, t("WeeklyRecurrence"))
        sub(pattern, t("Interval"), interval)
        days = [_DAY_NAMES[str(d)[-2:]] for d in rule.get("BYDAY", []) if str(d)[-2:] in _DAY_NAMES]
        sub(pattern, t("DaysOfWeek"), " ".join(days) or start.strftime("%A"))
    elif freq == "MONTHLY" and not rule.get("BYDAY"):
        pattern = sub(rec, t("AbsoluteMonthlyRecurrence"))
        sub(pattern, t("Interval"), interval)
        sub(pattern, t("DayOfMonth"), str((rule.get("BYMONTHDAY") or [start.day])[0]))
    elif freq == "YEARLY" and not rule.get("BYDAY"):
        pattern = sub(rec, t("AbsoluteYearlyRecurrence"))
        sub(pattern, t("DayOfMonth"), str((rule.get("BYMONTHDAY") or [start.day])[0]))
        sub(pattern, t("Month"), start.strftime("%B"))
    else:
        raise unsupported(f"the RRULE {rule.to_ical().decode()}")
    if rule.get("COUNT"):
        boundary = sub(rec, t("NumberedRecurrence"))
        sub(boundary, t("StartDate"), start.date().isoformat())
        sub(boundary, t("NumberOfOccurrences"), str(rule["COUNT"][0]))
    elif rule.get("UNTIL"):
        until = rule["UNTIL"][0]
        boundary = sub(rec, t("EndDateRecurrence"))
        sub(boundary, t("StartDate"), start.date().isoformat())
        sub(boundary, t("EndDate"), (until.date() if isinstance(until, dt.datetime) else until).isoformat())
    else:
        sub(sub(rec, t("NoEndRecurrence")), t("StartDate"), start.date().isoformat())


def _apply_vcard(elem: Element, card: Any, overwrite: bool) -> None:
    put = _setter(elem, overwrite)
    n = card.get("N")
    if n is not None:
        fields = n.fields
        put("GivenName", fields.given or None)
        put("Surname", fields.family or None)
        put("MiddleName", fields.additional or None)
    if card.get("FN") is not None:
        put("DisplayName", str(card.get("FN")))
    org = card.get("ORG")
    if org is not None:
        parts = org.to_ical().decode().split(";")
        put("CompanyName", parts[0] or None)
        put("Department", parts[1] if len(parts) > 1 and parts[1] else None)
    if card.get("TITLE") is not None:
        put("JobTitle", str(card.get("TITLE")))
    if card.get("NOTE") is not None:
        put("Body", str(card.get("NOTE")), BodyType="Text")

    def values(name: str) -> list[Any]:
        found = card.get(name)
        return [] if found is None else (found if isinstance(found, list) else [found])

    def container(name: str) -> Element | None:
        existing = elem.find(t(name))
        if existing is not None and not overwrite:
            return None
        drop_child(elem, name)
        return sub(elem, t(name))

    emails = values("EMAIL")
    if emails and (box := container("EmailAddresses")) is not None:
        for i, email in enumerate(emails[:3], start=1):
            sub(box, t("Entry"), str(email), Key=f"EmailAddress{i}")
    phones = values("TEL")
    if phones and (box := container("PhoneNumbers")) is not None:
        used: set[str] = set()
        for tel in phones:
            types = {x.upper() for v in tel.params.get("TYPE", "").split(",") for x in [v.strip()] if x}
            key = ("MobilePhone" if "CELL" in types else "BusinessFax" if "FAX" in types
                   else "HomePhone" if "HOME" in types else "BusinessPhone")
            if key not in used:
                used.add(key)
                sub(box, t("Entry"), str(tel), Key=key)
    addresses = values("ADR")
    if addresses and (box := container("PhysicalAddresses")) is not None:
        used = set()
        for adr in addresses:
            types = {x.strip().upper() for x in str(adr.params.get("TYPE", "")).split(",")}
            key = "Home" if "HOME" in types else "Business" if "WORK" in types else "Other"
            if key in used:
                continue
            used.add(key)
            f = adr.fields
            entry = sub(box, t("Entry"), Key=key)
            for part, value in zip(_ADDRESS_PARTS, (f.street, f.locality, f.region, f.country, f.postal_code),
                                   strict=True):
                if value:
                    sub(entry, t(part), value)
