"""Graph events <-> the stored EWS CalendarItem (see convert.py for the shared ground)."""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

from lxml import etree

from ..ews import items as it
from ..ews.recurrence import original_starts, series_zone
from ..ews.soap import TNS, Element, EwsError, fmt_dt, local, parse_dt, sub, t
from .convert import (
    IMPORTANCE,
    SENSITIVITY,
    SHOW_AS,
    apply_extended,
    bad_request,
    body_as,
    body_json,
    bool_value,
    common_json,
    enum_value,
    graph_datetime,
    graph_timestamp,
    parse_graph_datetime,
    preview,
    reverse,
    set_body,
    set_categories,
    string_value,
    to_graph_id,
    windows_zone,
    zone_for,
)

# -- events -------------------------------------------------------------------------------------------------
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_PATTERNS = {
    "daily": "DailyRecurrence",
    "weekly": "WeeklyRecurrence",
    "absoluteMonthly": "AbsoluteMonthlyRecurrence",
    "relativeMonthly": "RelativeMonthlyRecurrence",
    "absoluteYearly": "AbsoluteYearlyRecurrence",
    "relativeYearly": "RelativeYearlyRecurrence",
}
_RANGES = {"endDate": "EndDateRecurrence", "noEnd": "NoEndRecurrence", "numbered": "NumberedRecurrence"}
_INDEXES = {"first": "First", "second": "Second", "third": "Third", "fourth": "Fourth", "last": "Last"}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
EVENT_FIELDS = {
    "subject",
    "body",
    "start",
    "end",
    "isAllDay",
    "showAs",
    "sensitivity",
    "categories",
    "location",
    "importance",
    "isReminderOn",
    "reminderMinutesBeforeStart",
    "singleValueExtendedProperties",
    "attendees",
    "recurrence",
    "responseRequested",
    "allowNewTimeProposals",
    "hideAttendees",
    "isOnlineMeeting",
    "transactionId",
}


def event_xml(body: dict[str, Any], base: Element | None, default_zone: str) -> tuple[Element, set[str]]:
    """The CalendarItem for a POST (base None) or PATCH (base = stored XML) body; the EWS field
    names written. GraphError for what Graph refuses."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "BadRequest")
    unknown = sorted(k for k in body if k not in EVENT_FIELDS and not k.startswith("@odata"))
    if unknown:
        raise bad_request(
            f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.event' or is read-only here.",
            "RequestBodyRead",
        )
    elem = etree.Element(t("CalendarItem"), nsmap={"t": TNS}) if base is None else copy.deepcopy(base)
    changed: set[str] = set()
    if base is None and ("start" not in body or "end" not in body):
        raise bad_request("An event needs start and end.", "ErrorInvalidRequest")
    if "subject" in body:
        it.set_child(elem, "Subject", string_value(body["subject"], "subject"))
        changed.add("Subject")
    if "body" in body:
        set_body(elem, body["body"])
        changed.add("Body")
    if "categories" in body:
        set_categories(elem, body["categories"])
    if "sensitivity" in body:
        it.set_child(elem, "Sensitivity", enum_value(body["sensitivity"], SENSITIVITY, "sensitivity"))
    if "importance" in body:
        it.set_child(elem, "Importance", enum_value(body["importance"], IMPORTANCE, "importance"))
    if "showAs" in body:
        it.set_child(elem, "LegacyFreeBusyStatus", enum_value(body["showAs"], SHOW_AS, "showAs"))
    if "isReminderOn" in body:
        it.set_child(elem, "ReminderIsSet", bool_value(body["isReminderOn"], "isReminderOn"))
    if "reminderMinutesBeforeStart" in body:
        minutes = _number(
            body["reminderMinutesBeforeStart"], None, 0, 2**31 - 1, "reminderMinutesBeforeStart"
        )
        it.set_child(elem, "ReminderMinutesBeforeStart", str(minutes))
    if "location" in body:
        loc = body["location"]
        name = loc.get("displayName") if isinstance(loc, dict) else None
        if loc is not None and not isinstance(loc, dict):
            raise bad_request("location: expected an object with displayName.", "BadRequest")
        if name:
            it.set_child(elem, "Location", string_value(name, "location.displayName"))
        else:
            it.drop_child(elem, "Location")
    if "isAllDay" in body:
        it.set_child(elem, "IsAllDayEvent", bool_value(body["isAllDay"], "isAllDay"))
    for name, tag in (("start", "Start"), ("end", "End")):
        if name in body:
            value = parse_graph_datetime(body[name], name)
            it.set_child(elem, tag, fmt_dt(value))
            changed.add(tag)
            zone_name = (body[name].get("timeZone") or "UTC") if isinstance(body[name], dict) else "UTC"
            windows = windows_zone(zone_name) or windows_zone(default_zone) or "UTC"
            zone_tag = "StartTimeZone" if name == "start" else "EndTimeZone"
            it.drop_child(elem, zone_tag)
            sub(elem, t(zone_tag), Id=windows, Name=windows)
            if name == "start":
                it.drop_child(elem, "MeetingTimeZone")
    _check_all_day(elem, body)
    if "attendees" in body:
        _set_attendees(elem, body["attendees"])
    if "recurrence" in body:
        _set_recurrence(elem, body["recurrence"])
    if elem.find(t("Recurrence")) is not None:
        try:
            next(original_starts(elem), None)  # the series must expand (the EWS side's rules)
        except EwsError as exc:
            raise bad_request(f"recurrence: {exc.text}", "ErrorInvalidRecurrence") from None
    apply_extended(elem, body)
    return elem, changed


def _check_all_day(elem: Element, body: dict[str, Any]) -> None:
    if it.child_text(elem, "IsAllDayEvent") != "true":
        return
    zone = series_zone(elem)
    for tag in ("Start", "End"):
        value = parse_dt(it.child_text(elem, tag))
        if value is not None and value.astimezone(zone).time() != dt.time(0):
            raise bad_request(
                "The start and end of an all-day event must be at midnight, in the same time zone "
                f"(isAllDay is true but {tag.lower()} is {value.astimezone(zone).time()} in "
                f"{getattr(zone, 'key', zone)}).",
                "ErrorPropertyValidationFailure",
            )


def _set_attendees(elem: Element, value: Any) -> None:
    if not isinstance(value, list):
        raise bad_request("attendees: expected an array.", "BadRequest")
    for name in ("RequiredAttendees", "OptionalAttendees", "Resources"):
        it.drop_child(elem, name)
    groups: dict[str, Element] = {}
    for attendee in value:
        if not isinstance(attendee, dict) or not isinstance(attendee.get("emailAddress"), dict):
            raise bad_request("attendees: each entry needs an emailAddress object.", "BadRequest")
        kind = {
            "required": "RequiredAttendees",
            "optional": "OptionalAttendees",
            "resource": "Resources",
        }.get(str(attendee.get("type", "required")), "RequiredAttendees")
        group = groups.get(kind)
        if group is None:
            group = groups[kind] = sub(elem, t(kind))
        mb = sub(sub(group, t("Attendee")), t("Mailbox"))
        address = attendee["emailAddress"]
        sub(
            mb,
            t("Name"),
            string_value(address.get("name") or address.get("address"), "attendees.emailAddress.name"),
        )
        sub(mb, t("EmailAddress"), string_value(address.get("address"), "attendees.emailAddress.address"))
        sub(mb, t("RoutingType"), "SMTP")


def _set_recurrence(elem: Element, value: Any) -> None:
    it.drop_child(elem, "Recurrence")
    if value is None:
        return
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("pattern"), dict)
        or not isinstance(value.get("range"), dict)
    ):
        raise bad_request("recurrence: expected an object with pattern and range.", "BadRequest")
    pattern, rng = value["pattern"], value["range"]
    kind = enum_value(pattern.get("type"), _PATTERNS, "recurrence.pattern.type")
    rec = sub(elem, t("Recurrence"))
    p = sub(rec, t(kind))
    weekdays = pattern.get("daysOfWeek") or []
    if not isinstance(weekdays, list) or any(d not in _WEEKDAYS for d in weekdays):
        raise bad_request(
            f"recurrence.pattern.daysOfWeek: expected weekday names, got {weekdays!r}.", "BadRequest"
        )
    days = " ".join(d.capitalize() for d in weekdays)
    if "Yearly" not in kind:
        sub(p, t("Interval"), str(_number(pattern.get("interval"), 1, 1, 999, "recurrence.pattern.interval")))
    if kind in ("WeeklyRecurrence", "RelativeMonthlyRecurrence", "RelativeYearlyRecurrence"):
        if not days:
            raise bad_request("recurrence.pattern.daysOfWeek is required for this pattern.", "BadRequest")
        sub(p, t("DaysOfWeek"), days)
    if kind == "WeeklyRecurrence":
        first = pattern.get("firstDayOfWeek") or "sunday"
        if first not in _WEEKDAYS:
            raise bad_request(f"recurrence.pattern.firstDayOfWeek: '{first}' is not a weekday.", "BadRequest")
        sub(p, t("FirstDayOfWeek"), first.capitalize())
    if kind.startswith("Relative"):
        index = enum_value(pattern.get("index") or "first", _INDEXES, "recurrence.pattern.index")
        sub(p, t("DayOfWeekIndex"), index)
    if kind.startswith("Absolute"):
        sub(
            p,
            t("DayOfMonth"),
            str(_number(pattern.get("dayOfMonth"), 1, 1, 31, "recurrence.pattern.dayOfMonth")),
        )
    if "Yearly" in kind:
        sub(p, t("Month"), _MONTHS[_number(pattern.get("month"), 1, 1, 12, "recurrence.pattern.month") - 1])
    range_kind = enum_value(rng.get("type"), _RANGES, "recurrence.range.type")
    r = sub(rec, t(range_kind))
    sub(r, t("StartDate"), _date(rng.get("startDate"), "recurrence.range.startDate"))
    if range_kind == "EndDateRecurrence":
        sub(r, t("EndDate"), _date(rng.get("endDate"), "recurrence.range.endDate"))
    if range_kind == "NumberedRecurrence":
        count = _number(rng.get("numberOfOccurrences"), None, 1, 999, "recurrence.range.numberOfOccurrences")
        sub(r, t("NumberOfOccurrences"), str(count))


def _number(value: Any, default: int | None, low: int, high: int, where: str) -> int:
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(
            f"{where}: expected a whole number from {low} to {high}, got {value!r}.", "BadRequest"
        )
    return value


def _date(value: Any, where: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat() if isinstance(value, str) else _no_date(where)
    except ValueError:
        return _no_date(where)


def _no_date(where: str) -> str:
    raise bad_request(f"{where}: expected a date (YYYY-MM-DD).", "BadRequest")


def _recurrence_json(elem: Element) -> dict[str, Any] | None:
    rec = elem.find(t("Recurrence"))
    if rec is None:
        return None
    pattern = next((c for c in rec if local(c.tag) in _PATTERNS.values()), None)
    rng = next((c for c in rec if local(c.tag) in _RANGES.values()), None)
    if pattern is None or rng is None:
        return None
    ptype = reverse(_PATTERNS)[local(pattern.tag)]
    days = [d.lower() for d in (pattern.findtext(t("DaysOfWeek")) or "").split() if d.lower() in _WEEKDAYS]
    month = pattern.findtext(t("Month"))
    rtype = reverse(_RANGES)[local(rng.tag)]
    zone = elem.find(t("StartTimeZone"))
    return {
        "pattern": {
            "type": ptype,
            "interval": int(pattern.findtext(t("Interval")) or 1),
            "month": _MONTHS.index(month) + 1 if month in _MONTHS else 0,
            "dayOfMonth": int(pattern.findtext(t("DayOfMonth")) or 0),
            "daysOfWeek": days,
            "firstDayOfWeek": (pattern.findtext(t("FirstDayOfWeek")) or "Sunday").lower(),
            "index": reverse(_INDEXES).get(pattern.findtext(t("DayOfWeekIndex")) or "First", "first"),
        },
        "range": {
            "type": rtype,
            "startDate": (rng.findtext(t("StartDate")) or "")[:10],
            "endDate": (rng.findtext(t("EndDate")) or "0001-01-01")[:10],
            "recurrenceTimeZone": zone.get("Id", "UTC") if zone is not None else "UTC",
            "numberOfOccurrences": int(rng.findtext(t("NumberOfOccurrences")) or 0),
        },
    }


# the stored EWS ResponseType as Graph's responseStatus.response (one store, both front ends agree)
_RESPONSE_TO_GRAPH = {
    "Accept": "accepted",
    "Tentative": "tentativelyAccepted",
    "Decline": "declined",
    "NoResponseReceived": "notResponded",
    "Organizer": "organizer",
    "Unknown": "none",
}


def _attendees_json(elem: Element) -> list[dict[str, Any]]:
    out = []
    for group, kind in (
        ("RequiredAttendees", "required"),
        ("OptionalAttendees", "optional"),
        ("Resources", "resource"),
    ):
        container = elem.find(t(group))
        for attendee in [] if container is None else container.findall(t("Attendee")):
            mb = attendee.find(t("Mailbox"))
            out.append(
                {
                    "type": kind,
                    "status": {
                        "response": _RESPONSE_TO_GRAPH.get(
                            attendee.findtext(t("ResponseType")) or "", "none"
                        ),
                        "time": "0001-01-01T00:00:00Z",
                    },
                    "emailAddress": {
                        "name": "" if mb is None else mb.findtext(t("Name")) or "",
                        "address": "" if mb is None else mb.findtext(t("EmailAddress")) or "",
                    },
                }
            )
    return out


def event_json(
    item_id: str,
    master_id: str,
    elem: Element,
    change_key: str,
    zone_name: str,
    mailbox: str,
    body_type: str | None = None,
) -> dict[str, Any]:
    """A Graph event for a stored (or expanded occurrence) CalendarItem, times in ``zone_name``,
    the body in ``body_type`` ("text"; otherwise HTML, Graph's default)."""
    zone = zone_for(zone_name) or dt.UTC
    start = parse_dt(it.child_text(elem, "Start")) or dt.datetime(1, 1, 1, tzinfo=dt.UTC)
    end = parse_dt(it.child_text(elem, "End")) or start
    all_day = it.child_text(elem, "IsAllDayEvent") == "true"
    if all_day:
        # All-day events are dates: midnight of the event's own days, whatever zone is asked for.
        own = series_zone(elem)
        start_json = {
            "dateTime": start.astimezone(own).strftime("%Y-%m-%dT00:00:00.0000000"),
            "timeZone": zone_name,
        }
        end_json = {
            "dateTime": end.astimezone(own).strftime("%Y-%m-%dT00:00:00.0000000"),
            "timeZone": zone_name,
        }
    else:
        start_json, end_json = graph_datetime(start, zone_name, zone), graph_datetime(end, zone_name, zone)
    kind = it.child_text(elem, "CalendarItemType") or "Single"
    graph_type = {"Single": "singleInstance", "RecurringMaster": "seriesMaster"}.get(kind, kind.lower())
    sensitivity = it.child_text(elem, "Sensitivity") or "Normal"
    show_as = it.child_text(elem, "LegacyFreeBusyStatus") or "Busy"
    organizer = elem.find(t("Organizer"))
    org_mb = None if organizer is None else organizer.find(t("Mailbox"))
    start_zone = elem.find(t("StartTimeZone"))
    end_zone = elem.find(t("EndTimeZone"))
    location = it.child_text(elem, "Location") or ""
    out = common_json(item_id, elem, change_key)
    attendees = _attendees_json(elem)
    out.update(
        {
            "transactionId": None,
            "originalStartTimeZone": start_zone.get("Id", "UTC") if start_zone is not None else "UTC",
            "originalEndTimeZone": end_zone.get("Id", "UTC")
            if end_zone is not None
            else (start_zone.get("Id", "UTC") if start_zone is not None else "UTC"),
            "iCalUId": ical_uid(
                it.child_text(elem, "UID") or "",
                parse_dt(it.child_text(elem, "OriginalStart"))
                if kind in ("Occurrence", "Exception")
                else None,
            ),
            "reminderMinutesBeforeStart": int(it.child_text(elem, "ReminderMinutesBeforeStart") or 15),
            "isReminderOn": it.child_text(elem, "ReminderIsSet") == "true",
            "hasAttachments": False,
            "subject": it.child_text(elem, "Subject") or "",
            "bodyPreview": preview(elem),
            "importance": reverse(IMPORTANCE).get(it.child_text(elem, "Importance") or "Normal", "normal"),
            "sensitivity": reverse(SENSITIVITY).get(sensitivity, "normal"),
            "isAllDay": all_day,
            "isCancelled": it.child_text(elem, "IsCancelled") == "true",
            "isOrganizer": True,
            "responseRequested": True,
            "seriesMasterId": None if kind in ("Single", "RecurringMaster") else to_graph_id(master_id),
            "showAs": reverse(SHOW_AS).get(show_as, "busy"),
            "type": graph_type,
            "webLink": f"https://outlook.office365.com/owa/?itemid={to_graph_id(item_id)}&exvsurl=1&path=/calendar/item",
            "onlineMeetingUrl": None,
            "isOnlineMeeting": False,
            "onlineMeetingProvider": "unknown",
            "allowNewTimeProposals": True,
            "isDraft": False,
            "hideAttendees": False,
            "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
            "body": body_as(body_json(elem), body_type),
            "start": start_json,
            "end": end_json,
            "location": {
                "displayName": location,
                "locationType": "default",
                "uniqueIdType": "unknown",
                "address": {},
                "coordinates": {},
            },
            "locations": [{"displayName": location, "locationType": "default", "uniqueIdType": "unknown"}]
            if location
            else [],
            "recurrence": _recurrence_json(elem) if kind == "RecurringMaster" else None,
            "attendees": attendees,
            "organizer": {
                "emailAddress": {
                    "name": (org_mb.findtext(t("Name")) if org_mb is not None else None)
                    or mailbox.split("@")[0],
                    "address": (org_mb.findtext(t("EmailAddress")) if org_mb is not None else None)
                    or mailbox,
                }
            },
            "onlineMeeting": None,
        }
    )
    if kind in ("Occurrence", "Exception"):
        original = parse_dt(it.child_text(elem, "OriginalStart"))
        if original is not None:
            out["originalStart"] = graph_timestamp(original)
    return out


def ical_uid(uid: str, original: dt.datetime | None = None) -> str:
    """Graph's iCalUId: the hex of the item's global object id (MS-OXOCAL PidLidGlobalObjectId).

    A UID in Outlook's form (what Exchange generates: EWS's UID) is that id without an instance
    date; any other UID (from an iCalendar invitation) is wrapped as "vCal-Uid" data, so Graph's
    iCalUId differs from EWS's UID for it. An occurrence's iCalUId carries its original date in
    the instance-date bytes (year high, year low, month, day), so each occurrence has its own."""
    if (
        re.fullmatch(r"[0-9A-Fa-f]+", uid)
        and len(uid) >= 40
        and uid.upper().startswith(it.GOID_CLASS_ID.hex().upper())
    ):
        goid = bytearray(bytes.fromhex(uid[: len(uid) // 2 * 2]))
    else:
        data = b"vCal-Uid" + (1).to_bytes(4, "little") + uid.encode() + b"\x00"
        goid = bytearray(it.GOID_CLASS_ID + bytes(4) + bytes(16) + len(data).to_bytes(4, "little") + data)
    if original is not None:
        goid[16:20] = bytes([original.year >> 8, original.year & 0xFF, original.month, original.day])
    return bytes(goid).hex().upper()
