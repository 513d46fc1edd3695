"""Graph JSON <-> the EWS test server's stored item XML (one store, two front ends).

Items are stored as EWS ``t:CalendarItem`` / ``t:Contact`` / ``t:Task`` elements (see
exchanged/testing/ews/items.py); this module renders them as Graph ``event``, ``contact`` and
``todoTask`` objects and turns Graph request bodies into the same XML, so an item written through
one front end reads the same through the other. Mappings:

* ids: a Graph id is the EWS id in URL-safe base64 (``+/`` -> ``-_``), as Exchange's REST ids are;
  occurrences keep the EWS test server's occurrence ids (master id + original start).
* ``singleValueExtendedProperties``: ``"String {GUID} Name NAME"`` <-> ``ExtendedFieldURI
  PropertySetId=GUID PropertyName=NAME PropertyType=String`` (also ``Id 0x..`` and ``String 0x..``
  tags; EWS distinguished property sets map to their well-known GUIDs).
* To Do: a task list is a tasks folder (the default list is the mailbox's Tasks folder); a task is
  a ``t:Task``; ``linkedResources`` are kept in the item under a private namespace, which EWS
  clients do not see (Exchange exposes them through no documented EWS property either).
"""

from __future__ import annotations

import copy
import datetime as dt
import html
import re
import uuid
import zoneinfo
from typing import Any

from lxml import etree

from ..ews import items as it
from ..ews.recurrence import PRIVATE, original_starts, series_zone
from ..ews.soap import TNS, Element, EwsError, fmt_dt, local, parse_dt, sub, t
from ..ews.store import FolderRow, ItemRow


class GraphError(Exception):
    """A Graph error response: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_request(message: str, code: str = "ErrorInvalidRequest") -> GraphError:
    return GraphError(400, code, message)


# -- ids -------------------------------------------------------------------------------------------------
def to_graph_id(ews_id: str) -> str:
    return ews_id.replace("+", "-").replace("/", "_")


def to_ews_id(graph_id: str) -> str:
    return graph_id.replace("-", "+").replace("_", "/")


def etag(change_key: str) -> str:
    return f'W/"{change_key}"'


# -- time ------------------------------------------------------------------------------------------------
def zone_for(name: str | None) -> dt.tzinfo | None:
    """The zone a Graph ``timeZone`` names (Windows or IANA name), None if unknown."""
    if not name:
        return None
    if name in ("UTC", "Etc/UTC", "Coordinated Universal Time", "tzone://Microsoft/Utc"):
        return dt.UTC
    from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

    iana = MS_TIMEZONE_TO_IANA_MAP.get(name, name)
    try:
        return zoneinfo.ZoneInfo(iana)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def windows_zone(name: str) -> str | None:
    """The Windows zone name for a Graph ``timeZone`` value (they may be IANA names)."""
    from exchangelib.winzone import IANA_TO_MS_TIMEZONE_MAP, MS_TIMEZONE_TO_IANA_MAP

    if name in MS_TIMEZONE_TO_IANA_MAP:
        return name
    if name in ("UTC", "Etc/UTC"):
        return "UTC"
    hit = IANA_TO_MS_TIMEZONE_MAP.get(name)
    return hit[0] if hit else None


def graph_datetime(value: dt.datetime, zone_name: str, zone: dt.tzinfo) -> dict[str, str]:
    local_value = value.astimezone(zone).replace(tzinfo=None)
    return {"dateTime": local_value.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": zone_name}


def graph_timestamp(value: dt.datetime | str | None) -> str | None:
    """createdDateTime / lastModifiedDateTime form: UTC with 7 fraction digits and Z."""
    if isinstance(value, str):
        value = parse_dt(value)
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def parse_graph_datetime(value: Any, where: str) -> dt.datetime:
    """A dateTimeTimeZone object as UTC; GraphError naming ``where`` when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise bad_request(f"{where}: expected an object with dateTime and timeZone.")
    zone_name = value.get("timeZone") or "UTC"
    if not isinstance(zone_name, str):
        raise bad_request(f"{where}.timeZone: expected a time zone name.")
    zone = zone_for(zone_name)
    if zone is None:
        raise GraphError(
            400,
            "TimeZoneNotSupportedException",
            f"A valid TimeZone value must be specified. The following TimeZone value is not supported: "
            f"'{zone_name}'.",
        )
    text = value["dateTime"].strip()
    match = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?)(\.\d+)?(Z|[+-]\d{2}:\d{2})?$", text)
    if not match:
        raise bad_request(
            f"{where}: cannot convert the literal '{text}' to the expected type 'Edm.DateTime'."
        )
    try:
        base = dt.datetime.fromisoformat(match.group(1))
        if match.group(3):
            base = base.replace(microsecond=int((match.group(3)[1:] + "000000")[:6]))
        if match.group(4):
            parsed = dt.datetime.fromisoformat(match.group(1) + (match.group(4).replace("Z", "+00:00")))
            return parsed.astimezone(dt.UTC)
        return base.replace(tzinfo=zone).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise bad_request(f"{where}: the date-time '{text}' is out of range.") from None


# -- extended properties ---------------------------------------------------------------------------------
DISTINGUISHED_SETS = {
    "PublicStrings": "00020329-0000-0000-c000-000000000046",
    "Common": "00062008-0000-0000-c000-000000000046",
    "Appointment": "00062002-0000-0000-c000-000000000046",
    "Meeting": "6ed8da90-450b-101b-98da-00aa003f1305",
    "Address": "00062004-0000-0000-c000-000000000046",
    "Task": "00062003-0000-0000-c000-000000000046",
    "InternetHeaders": "00020386-0000-0000-c000-000000000046",
    "CalendarAssistant": "11000e07-b51b-40d6-af21-caa85edab1d0",
    "UnifiedMessaging": "4442858e-a9e3-4e80-b900-317a210cc15b",
}
_PROPERTY_TYPES = {
    name.lower(): name
    for name in (
        "String",
        "Integer",
        "Boolean",
        "SystemTime",
        "Binary",
        "Long",
        "Double",
        "Float",
        "Short",
        "Currency",
        "CLSID",
        "ApplicationTime",
    )
}
_EXT_ID = re.compile(
    r"^\s*(?P<type>\w+)\s+(?:\{(?P<guid>[0-9a-fA-F-]{36})\}\s+(?P<kind>Name|Id)\s+(?P<name>.+?)"
    r"|(?P<tag>0x[0-9a-fA-F]{1,4}))\s*$"
)


def parse_property_id(text: str) -> tuple[str, ...]:
    """A Graph extended property id as a comparable key: (type, guid, 'Name'|'Id', name) or
    (type, tag). GraphError for anything Graph would refuse."""
    match = _EXT_ID.match(text or "")
    if not match:
        raise bad_request(
            f"The extended property id '{text}' is not valid: expected e.g. 'String {{GUID}} Name NAME'.",
            "ErrorInvalidProperty",
        )
    ptype = _PROPERTY_TYPES.get(match.group("type").lower())
    if ptype is None:
        raise bad_request(f"The extended property type in '{text}' is not supported.", "ErrorInvalidProperty")
    if match.group("tag"):
        return (ptype, f"0x{int(match.group('tag'), 16):04x}")
    name = match.group("name")
    if match.group("kind") == "Id":
        try:
            name = str(int(name, 16) if name.lower().startswith("0x") else int(name))
        except ValueError:
            raise bad_request(
                f"The property id in '{text}' is not a number.", "ErrorInvalidProperty"
            ) from None
    return (ptype, match.group("guid").lower(), match.group("kind"), name)


def _key_of_uri(uri: Element) -> tuple[str, ...] | None:
    ptype = uri.get("PropertyType", "")
    guid = uri.get("PropertySetId") or DISTINGUISHED_SETS.get(uri.get("DistinguishedPropertySetId") or "")
    if uri.get("PropertyTag") is not None:
        tag = uri.get("PropertyTag", "")
        try:
            number = int(tag, 16) if tag.lower().startswith("0x") else int(tag)
        except ValueError:
            return None
        return (ptype, f"0x{number:04x}")
    if guid is None:
        return None
    if uri.get("PropertyName") is not None:
        return (ptype, guid.lower(), "Name", uri.get("PropertyName", ""))
    if uri.get("PropertyId") is not None:
        return (ptype, guid.lower(), "Id", str(int(uri.get("PropertyId", "0"))))
    return None


def key_to_id(key: tuple[str, ...]) -> str:
    if len(key) == 2:
        return f"{key[0]} {key[1]}"
    ptype, guid, kind, name = key
    if kind == "Id":
        return f"{ptype} {{{guid}}} Id 0x{int(name):04x}"
    return f"{ptype} {{{guid}}} Name {name}"


def extended_properties(elem: Element) -> list[tuple[tuple[str, ...], str]]:
    """(key, value) of every single-valued extended property of a stored item."""
    out = []
    for prop in elem.findall(t("ExtendedProperty")):
        uri = prop.find(t("ExtendedFieldURI"))
        value = prop.find(t("Value"))
        if uri is None or value is None:
            continue  # multi-valued (Values) ones are multiValueExtendedProperties
        key = _key_of_uri(uri)
        if key is not None:
            out.append((key, value.text or ""))
    return out


def set_extended_property(elem: Element, prop_id: Any, value: Any) -> None:
    if not isinstance(prop_id, str):
        raise bad_request("singleValueExtendedProperties: each entry needs an id string.")
    if value is not None and not isinstance(value, str):
        raise bad_request(f"singleValueExtendedProperties '{prop_id}': the value must be a string.")
    key = parse_property_id(prop_id)
    for prop in elem.findall(t("ExtendedProperty")):
        uri = prop.find(t("ExtendedFieldURI"))
        if uri is not None and _key_of_uri(uri) == key:
            elem.remove(prop)
    if value is None:
        return
    prop = sub(elem, t("ExtendedProperty"))
    if len(key) == 2:
        sub(prop, t("ExtendedFieldURI"), PropertyTag=key[1], PropertyType=key[0])
    elif key[2] == "Name":
        sub(prop, t("ExtendedFieldURI"), PropertySetId=key[1], PropertyName=key[3], PropertyType=key[0])
    else:
        sub(prop, t("ExtendedFieldURI"), PropertySetId=key[1], PropertyId=key[3], PropertyType=key[0])
    sub(prop, t("Value"), value)


# -- shared item fields -------------------------------------------------------------------------------------
_SENSITIVITY = {
    "normal": "Normal",
    "personal": "Personal",
    "private": "Private",
    "confidential": "Confidential",
}
_SHOW_AS = {
    "free": "Free",
    "tentative": "Tentative",
    "busy": "Busy",
    "oof": "OOF",
    "workingElsewhere": "WorkingElsewhere",
    "unknown": "NoData",
}
_IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
_TASK_STATUS = {
    "notStarted": "NotStarted",
    "inProgress": "InProgress",
    "completed": "Completed",
    "waitingOnOthers": "WaitingOnOthers",
    "deferred": "Deferred",
}


def _reverse(mapping: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def _enum(value: Any, mapping: dict[str, str], where: str) -> str:
    if not isinstance(value, str) or value not in mapping:
        raise bad_request(
            f"Cannot convert the literal '{value}' to the expected type for {where}; expected one of "
            f"{sorted(mapping)}.",
            "BadRequest",
        )
    return mapping[value]


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{where}: expected a string, got {type(value).__name__}.", "BadRequest")
    return value


def _bool(value: Any, where: str) -> str:
    if not isinstance(value, bool):
        raise bad_request(f"{where}: expected true or false.", "BadRequest")
    return "true" if value else "false"


def _set_body(elem: Element, value: Any) -> None:
    if value is None:
        it.drop_child(elem, "Body")
        return
    if not isinstance(value, dict):
        raise bad_request("body: expected an object with contentType and content.", "BadRequest")
    kind = str(value.get("contentType", "text")).lower()
    if kind not in ("text", "html"):
        raise bad_request(f"body.contentType '{kind}' is not text or html.", "BadRequest")
    it.drop_child(elem, "Body")
    sub(
        elem,
        t("Body"),
        _string(value.get("content"), "body.content"),
        BodyType="HTML" if kind == "html" else "Text",
    )


def _set_categories(elem: Element, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("categories: expected an array of strings.", "BadRequest")
    it.drop_child(elem, "Categories")
    if value:
        cats = sub(elem, t("Categories"))
        for v in value:
            sub(cats, t("String"), v)


def _body_json(elem: Element) -> dict[str, str]:
    body = elem.find(t("Body"))
    if body is None:
        return {"contentType": "text", "content": ""}
    kind = "html" if body.get("BodyType", "Text").upper() == "HTML" else "text"
    return {"contentType": kind, "content": body.text or ""}


def body_as(body: dict[str, str], wanted: str | None) -> dict[str, str]:
    """An event's body as Graph returns it: HTML unless ``Prefer: outlook.body-content-type="text"``
    (Exchange converts a text body to HTML on the way out, and HTML to text when text is asked)."""
    wanted = "text" if wanted == "text" else "html"
    if body["contentType"] == wanted:
        return body
    if wanted == "html":
        text = html.escape(body["content"]).replace("\r\n", "\n").replace("\n", "<br>\r\n")
        content = (
            '<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n'
            '<meta content="text/plain; charset=utf-8">\r\n</head>\r\n<body>\r\n'
            f'<div class="PlainText">{text}</div>\r\n</body>\r\n</html>\r\n'
        )
        return {"contentType": "html", "content": content if body["content"] else ""}
    text = re.sub(r"(?is)<(head|style|script)\b.*?</\1>", "", body["content"])
    text = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|h\d)>", "\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return {"contentType": "text", "content": "\n".join(line.strip() for line in text.strip().splitlines())}


def _preview(elem: Element) -> str:
    body = _body_json(elem)
    text = body["content"]
    if body["contentType"] == "html":
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.split())[:255]


def _categories(elem: Element) -> list[str]:
    cats = elem.find(t("Categories"))
    return [] if cats is None else [s.text or "" for s in cats.findall(t("String"))]


def _common(row_id: str, elem: Element, change_key: str) -> dict[str, Any]:
    return {
        "@odata.etag": etag(change_key),
        "id": to_graph_id(row_id),
        "createdDateTime": graph_timestamp(it.child_text(elem, "DateTimeCreated")),
        "lastModifiedDateTime": graph_timestamp(it.child_text(elem, "LastModifiedTime")),
        "changeKey": change_key,
        "categories": _categories(elem),
    }


def _apply_extended(elem: Element, body: dict[str, Any]) -> None:
    props = body.get("singleValueExtendedProperties")
    if props is None:
        return
    if not isinstance(props, list):
        raise bad_request("singleValueExtendedProperties: expected an array.", "BadRequest")
    for prop in props:
        if not isinstance(prop, dict):
            raise bad_request("singleValueExtendedProperties: each entry must be an object.", "BadRequest")
        set_extended_property(elem, prop.get("id"), prop.get("value"))


def extended_json(elem: Element, keys: list[tuple[str, ...]] | None) -> list[dict[str, str]]:
    """singleValueExtendedProperties as $expand returns them (all, or those whose id is in keys)."""
    return [
        {"id": key_to_id(key), "value": value}
        for key, value in extended_properties(elem)
        if keys is None or key in keys
    ]


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
        it.set_child(elem, "Subject", _string(body["subject"], "subject"))
        changed.add("Subject")
    if "body" in body:
        _set_body(elem, body["body"])
        changed.add("Body")
    if "categories" in body:
        _set_categories(elem, body["categories"])
    if "sensitivity" in body:
        it.set_child(elem, "Sensitivity", _enum(body["sensitivity"], _SENSITIVITY, "sensitivity"))
    if "importance" in body:
        it.set_child(elem, "Importance", _enum(body["importance"], _IMPORTANCE, "importance"))
    if "showAs" in body:
        it.set_child(elem, "LegacyFreeBusyStatus", _enum(body["showAs"], _SHOW_AS, "showAs"))
    if "isReminderOn" in body:
        it.set_child(elem, "ReminderIsSet", _bool(body["isReminderOn"], "isReminderOn"))
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
            it.set_child(elem, "Location", _string(name, "location.displayName"))
        else:
            it.drop_child(elem, "Location")
    if "isAllDay" in body:
        it.set_child(elem, "IsAllDayEvent", _bool(body["isAllDay"], "isAllDay"))
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
    _apply_extended(elem, body)
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
            _string(address.get("name") or address.get("address"), "attendees.emailAddress.name"),
        )
        sub(mb, t("EmailAddress"), _string(address.get("address"), "attendees.emailAddress.address"))
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
    kind = _enum(pattern.get("type"), _PATTERNS, "recurrence.pattern.type")
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
        index = _enum(pattern.get("index") or "first", _INDEXES, "recurrence.pattern.index")
        sub(p, t("DayOfWeekIndex"), index)
    if kind.startswith("Absolute"):
        sub(
            p,
            t("DayOfMonth"),
            str(_number(pattern.get("dayOfMonth"), 1, 1, 31, "recurrence.pattern.dayOfMonth")),
        )
    if "Yearly" in kind:
        sub(p, t("Month"), _MONTHS[_number(pattern.get("month"), 1, 1, 12, "recurrence.pattern.month") - 1])
    range_kind = _enum(rng.get("type"), _RANGES, "recurrence.range.type")
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
    ptype = _reverse(_PATTERNS)[local(pattern.tag)]
    days = [d.lower() for d in (pattern.findtext(t("DaysOfWeek")) or "").split() if d.lower() in _WEEKDAYS]
    month = pattern.findtext(t("Month"))
    rtype = _reverse(_RANGES)[local(rng.tag)]
    zone = elem.find(t("StartTimeZone"))
    return {
        "pattern": {
            "type": ptype,
            "interval": int(pattern.findtext(t("Interval")) or 1),
            "month": _MONTHS.index(month) + 1 if month in _MONTHS else 0,
            "dayOfMonth": int(pattern.findtext(t("DayOfMonth")) or 0),
            "daysOfWeek": days,
            "firstDayOfWeek": (pattern.findtext(t("FirstDayOfWeek")) or "Sunday").lower(),
            "index": _reverse(_INDEXES).get(pattern.findtext(t("DayOfWeekIndex")) or "First", "first"),
        },
        "range": {
            "type": rtype,
            "startDate": (rng.findtext(t("StartDate")) or "")[:10],
            "endDate": (rng.findtext(t("EndDate")) or "0001-01-01")[:10],
            "recurrenceTimeZone": zone.get("Id", "UTC") if zone is not None else "UTC",
            "numberOfOccurrences": int(rng.findtext(t("NumberOfOccurrences")) or 0),
        },
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
                    "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
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
    out = _common(item_id, elem, change_key)
    attendees = _attendees_json(elem)
    out.update(
        {
            "transactionId": None,
            "originalStartTimeZone": start_zone.get("Id", "UTC") if start_zone is not None else "UTC",
            "originalEndTimeZone": end_zone.get("Id", "UTC")
            if end_zone is not None
            else (start_zone.get("Id", "UTC") if start_zone is not None else "UTC"),
            "iCalUId": _ical_uid(
                it.child_text(elem, "UID") or "",
                parse_dt(it.child_text(elem, "OriginalStart"))
                if kind in ("Occurrence", "Exception")
                else None,
            ),
            "reminderMinutesBeforeStart": int(it.child_text(elem, "ReminderMinutesBeforeStart") or 15),
            "isReminderOn": it.child_text(elem, "ReminderIsSet") == "true",
            "hasAttachments": False,
            "subject": it.child_text(elem, "Subject") or "",
            "bodyPreview": _preview(elem),
            "importance": _reverse(_IMPORTANCE).get(it.child_text(elem, "Importance") or "Normal", "normal"),
            "sensitivity": _reverse(_SENSITIVITY).get(sensitivity, "normal"),
            "isAllDay": all_day,
            "isCancelled": it.child_text(elem, "IsCancelled") == "true",
            "isOrganizer": True,
            "responseRequested": True,
            "seriesMasterId": None if kind in ("Single", "RecurringMaster") else to_graph_id(master_id),
            "showAs": _reverse(_SHOW_AS).get(show_as, "busy"),
            "type": graph_type,
            "webLink": f"https://outlook.office365.com/owa/?itemid={to_graph_id(item_id)}&exvsurl=1&path=/calendar/item",
            "onlineMeetingUrl": None,
            "isOnlineMeeting": False,
            "onlineMeetingProvider": "unknown",
            "allowNewTimeProposals": True,
            "isDraft": False,
            "hideAttendees": False,
            "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
            "body": body_as(_body_json(elem), body_type),
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


def _ical_uid(uid: str, original: dt.datetime | None = None) -> str:
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


# -- contacts -----------------------------------------------------------------------------------------------
CONTACT_FIELDS = {
    "givenName",
    "surname",
    "middleName",
    "displayName",
    "fileAs",
    "nickName",
    "initials",
    "companyName",
    "jobTitle",
    "department",
    "officeLocation",
    "profession",
    "assistantName",
    "manager",
    "spouseName",
    "businessHomePage",
    "generation",
    "title",
    "emailAddresses",
    "businessPhones",
    "homePhones",
    "mobilePhone",
    "personalNotes",
    "categories",
    "businessAddress",
    "homeAddress",
    "otherAddress",
    "singleValueExtendedProperties",
    "birthday",
    "imAddresses",
    "children",
}
_CONTACT_STRINGS = {
    "givenName": "GivenName",
    "surname": "Surname",
    "middleName": "MiddleName",
    "displayName": "DisplayName",
    "fileAs": "FileAs",
    "nickName": "Nickname",
    "initials": "Initials",
    "companyName": "CompanyName",
    "jobTitle": "JobTitle",
    "department": "Department",
    "officeLocation": "OfficeLocation",
    "profession": "Profession",
    "assistantName": "AssistantName",
    "manager": "Manager",
    "spouseName": "SpouseName",
    "businessHomePage": "BusinessHomePage",
    "generation": "Generation",
}
_ADDRESSES = {"businessAddress": "Business", "homeAddress": "Home", "otherAddress": "Other"}
_ADDRESS_PARTS = {
    "street": "Street",
    "city": "City",
    "state": "State",
    "countryOrRegion": "CountryOrRegion",
    "postalCode": "PostalCode",
}


def _set_indexed(elem: Element, container: str, entries: list[tuple[str, str]], keys: list[str]) -> None:
    """Replace the entries ``keys`` of an indexed container (EmailAddresses, PhoneNumbers)."""
    box = elem.find(t(container))
    if box is None:
        box = sub(elem, t(container))
    for entry in list(box):
        if entry.get("Key") in keys:
            box.remove(entry)
    for key, value in entries:
        sub(box, t("Entry"), value, Key=key)
    if not len(box):
        elem.remove(box)


def _indexed(elem: Element, container: str) -> dict[str, Element]:
    box = elem.find(t(container))
    return {} if box is None else {e.get("Key", ""): e for e in box}


def contact_xml(body: dict[str, Any], base: Element | None) -> tuple[Element, set[str]]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "BadRequest")
    unknown = sorted(k for k in body if k not in CONTACT_FIELDS and not k.startswith("@odata"))
    if unknown:
        raise bad_request(
            f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.contact' or is read-only here.",
            "RequestBodyRead",
        )
    elem = etree.Element(t("Contact"), nsmap={"t": TNS}) if base is None else copy.deepcopy(base)
    changed: set[str] = set()
    for name, tag in _CONTACT_STRINGS.items():
        if name in body:
            text = _string(body[name], name)
            if text:
                it.set_child(elem, tag, text)
            else:
                it.drop_child(elem, tag)
            changed.add(tag)
    if "personalNotes" in body:
        it.drop_child(elem, "Body")
        if body["personalNotes"]:
            sub(elem, t("Body"), _string(body["personalNotes"], "personalNotes"), BodyType="Text")
    if "categories" in body:
        _set_categories(elem, body["categories"])
    if "emailAddresses" in body:
        value = body["emailAddresses"]
        if not isinstance(value, list) or len(value) > 3 or not all(isinstance(v, dict) for v in value):
            raise bad_request(
                "emailAddresses: expected an array of at most 3 emailAddress objects.", "BadRequest"
            )
        _set_indexed(
            elem,
            "EmailAddresses",
            [
                (f"EmailAddress{i + 1}", _string(v.get("address"), "emailAddresses.address"))
                for i, v in enumerate(value)
            ],
            ["EmailAddress1", "EmailAddress2", "EmailAddress3"],
        )
    for name, keys in (
        ("businessPhones", ["BusinessPhone", "BusinessPhone2"]),
        ("homePhones", ["HomePhone", "HomePhone2"]),
    ):
        if name in body:
            value = body[name] or []
            if not isinstance(value, list) or len(value) > 2 or not all(isinstance(v, str) for v in value):
                raise bad_request(f"{name}: expected an array of at most 2 strings.", "BadRequest")
            _set_indexed(elem, "PhoneNumbers", [(keys[i], v) for i, v in enumerate(value) if v], keys)
    if "mobilePhone" in body:
        value = _string(body["mobilePhone"], "mobilePhone")
        _set_indexed(elem, "PhoneNumbers", [("MobilePhone", value)] if value else [], ["MobilePhone"])
    for name, key in _ADDRESSES.items():
        if name in body:
            value = body[name] or {}
            if not isinstance(value, dict):
                raise bad_request(f"{name}: expected a physicalAddress object.", "BadRequest")
            box = elem.find(t("PhysicalAddresses"))
            if box is None:
                box = sub(elem, t("PhysicalAddresses"))
            for entry in list(box):
                if entry.get("Key") == key:
                    box.remove(entry)
            parts = [
                (tag, _string(value.get(part), f"{name}.{part}")) for part, tag in _ADDRESS_PARTS.items()
            ]
            if any(v for _, v in parts):
                entry = sub(box, t("Entry"), Key=key)
                for tag, v in parts:
                    if v:
                        sub(entry, t(tag), v)
            if not len(box):
                elem.remove(box)
    _apply_extended(elem, body)
    return elem, changed


def contact_json(row_id: str, elem: Element, change_key: str, folder_id: str) -> dict[str, Any]:
    out = _common(row_id, elem, change_key)
    emails = _indexed(elem, "EmailAddresses")
    phones = _indexed(elem, "PhoneNumbers")
    addresses = _indexed(elem, "PhysicalAddresses")

    def address(key: str) -> dict[str, str]:
        entry = addresses.get(key)
        if entry is None:
            return {}
        return {
            part: entry.findtext(t(tag)) or ""
            for part, tag in _ADDRESS_PARTS.items()
            if entry.find(t(tag)) is not None
        }

    out.update(
        {
            "parentFolderId": to_graph_id(folder_id),
            "birthday": None,
            "fileAs": it.child_text(elem, "FileAs") or "",
            "displayName": it.child_text(elem, "DisplayName") or "",
            "givenName": it.child_text(elem, "GivenName"),
            "initials": it.child_text(elem, "Initials"),
            "middleName": it.child_text(elem, "MiddleName"),
            "nickName": it.child_text(elem, "Nickname"),
            "surname": it.child_text(elem, "Surname"),
            "title": None,
            "yomiGivenName": None,
            "yomiSurname": None,
            "yomiCompanyName": None,
            "generation": it.child_text(elem, "Generation"),
            "imAddresses": [],
            "jobTitle": it.child_text(elem, "JobTitle"),
            "companyName": it.child_text(elem, "CompanyName"),
            "department": it.child_text(elem, "Department"),
            "officeLocation": it.child_text(elem, "OfficeLocation"),
            "profession": it.child_text(elem, "Profession"),
            "businessHomePage": it.child_text(elem, "BusinessHomePage"),
            "assistantName": it.child_text(elem, "AssistantName"),
            "manager": it.child_text(elem, "Manager"),
            "homePhones": [phones[k].text or "" for k in ("HomePhone", "HomePhone2") if k in phones],
            "mobilePhone": phones["MobilePhone"].text if "MobilePhone" in phones else None,
            "businessPhones": [
                phones[k].text or "" for k in ("BusinessPhone", "BusinessPhone2") if k in phones
            ],
            "spouseName": it.child_text(elem, "SpouseName"),
            "personalNotes": _body_json(elem)["content"],
            "children": [],
            "emailAddresses": [
                {"name": emails[k].text or "", "address": emails[k].text or ""}
                for k in ("EmailAddress1", "EmailAddress2", "EmailAddress3")
                if k in emails
            ],
            "homeAddress": address("Home"),
            "businessAddress": address("Business"),
            "otherAddress": address("Other"),
        }
    )
    return out


# -- To Do tasks --------------------------------------------------------------------------------------------
TASK_FIELDS = {
    "title",
    "body",
    "importance",
    "status",
    "dueDateTime",
    "startDateTime",
    "completedDateTime",
    "reminderDateTime",
    "isReminderOn",
    "categories",
    "linkedResources",
    "recurrence",
}
LINKED_FIELDS = {"webUrl", "applicationName", "displayName", "externalId"}
_LR = f"{{{PRIVATE}}}LinkedResource"


def task_xml(body: dict[str, Any], base: Element | None) -> tuple[Element, set[str]]:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", "invalidRequest")
    unknown = sorted(k for k in body if k not in TASK_FIELDS and not k.startswith("@odata"))
    if unknown:
        raise bad_request(
            f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.todoTask' or is read-only.",
            "invalidRequest",
        )
    elem = etree.Element(t("Task"), nsmap={"t": TNS}) if base is None else copy.deepcopy(base)
    changed: set[str] = set()
    if base is None and not body.get("title"):
        raise bad_request("A task needs a title.", "invalidRequest")
    if body.get("recurrence") is not None:
        raise bad_request("Recurring tasks are not supported by this test server.", "invalidRequest")
    if "title" in body:
        it.set_child(elem, "Subject", _string(body["title"], "title"))
    if "body" in body:
        _set_body(elem, body["body"])
    if "importance" in body:
        it.set_child(elem, "Importance", _enum(body["importance"], _IMPORTANCE, "importance"))
    if "categories" in body:
        _set_categories(elem, body["categories"])
    if "status" in body:
        it.set_child(elem, "Status", _enum(body["status"], _TASK_STATUS, "status"))
        changed.add("Status")
        if body["status"] != "completed":
            it.drop_child(elem, "CompleteDate")
    for name, tag in (
        ("dueDateTime", "DueDate"),
        ("startDateTime", "StartDate"),
        ("completedDateTime", "CompleteDate"),
    ):
        if name in body:
            if body[name] is None:
                it.drop_child(elem, tag)
            else:
                it.set_child(elem, tag, fmt_dt(parse_graph_datetime(body[name], name)))
            changed.add(tag)
    if "completedDateTime" in body and body["completedDateTime"] is not None and "status" not in body:
        it.set_child(elem, "Status", "Completed")
        changed.add("Status")
    if "reminderDateTime" in body:
        if body["reminderDateTime"] is None:
            it.drop_child(elem, "ReminderDueBy")
        else:
            it.set_child(
                elem,
                "ReminderDueBy",
                fmt_dt(parse_graph_datetime(body["reminderDateTime"], "reminderDateTime")),
            )
    if "isReminderOn" in body:
        it.set_child(elem, "ReminderIsSet", _bool(body["isReminderOn"], "isReminderOn"))
    if "linkedResources" in body:
        value = body["linkedResources"]
        if not isinstance(value, list):
            raise bad_request("linkedResources: expected an array.", "invalidRequest")
        for resource in value:
            add_linked_resource(elem, resource)
    return elem, changed


def add_linked_resource(elem: Element, resource: Any) -> Element:
    node = etree.SubElement(elem, _LR, nsmap={"x": PRIVATE})
    node.set("Id", str(uuid.uuid4()))
    update_linked_resource(node, resource)
    return node


def update_linked_resource(node: Element, resource: Any) -> None:
    if not isinstance(resource, dict):
        raise bad_request("A linkedResource must be an object.", "invalidRequest")
    unknown = sorted(
        k for k in resource if k not in LINKED_FIELDS and k != "id" and not k.startswith("@odata")
    )
    if unknown:
        raise bad_request(
            f"Property '{unknown[0]}' does not exist on type 'microsoft.graph.linkedResource'.",
            "invalidRequest",
        )
    for name in LINKED_FIELDS:
        if name in resource:
            node.set(name, _string(resource[name], f"linkedResources.{name}"))


def linked_resources(elem: Element) -> list[Element]:
    return list(elem.findall(_LR))


def linked_json(node: Element) -> dict[str, Any]:
    return {
        "id": node.get("Id", ""),
        "webUrl": node.get("webUrl"),
        "applicationName": node.get("applicationName"),
        "displayName": node.get("displayName"),
        "externalId": node.get("externalId"),
    }


def _utc_datetime(text: str | None) -> dict[str, str] | None:
    value = parse_dt(text)
    return None if value is None else graph_datetime(value, "UTC", dt.UTC)


def task_json(row_id: str, elem: Element, change_key: str, *, with_linked: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@odata.etag": etag(change_key),
        "importance": _reverse(_IMPORTANCE).get(it.child_text(elem, "Importance") or "Normal", "normal"),
        "isReminderOn": it.child_text(elem, "ReminderIsSet") == "true",
        "status": _reverse(_TASK_STATUS).get(it.child_text(elem, "Status") or "NotStarted", "notStarted"),
        "title": it.child_text(elem, "Subject") or "",
        "createdDateTime": graph_timestamp(it.child_text(elem, "DateTimeCreated")),
        "lastModifiedDateTime": graph_timestamp(it.child_text(elem, "LastModifiedTime")),
        "hasAttachments": False,
        "categories": _categories(elem),
        "id": to_graph_id(row_id),
        "body": _body_json(elem),
    }
    for name, tag in (
        ("dueDateTime", "DueDate"),
        ("startDateTime", "StartDate"),
        ("completedDateTime", "CompleteDate"),
        ("reminderDateTime", "ReminderDueBy"),
    ):
        value = _utc_datetime(it.child_text(elem, tag))
        if value is not None:
            out[name] = value
    if with_linked:
        out["linkedResources"] = [linked_json(n) for n in linked_resources(elem)]
    return out


def task_list_json(folder: FolderRow, default: bool) -> dict[str, Any]:
    return {
        "@odata.etag": etag(folder.change_key),
        "displayName": folder.display_name,
        "isOwner": True,
        "isShared": False,
        "wellknownListName": "defaultList" if default else "none",
        "id": to_graph_id(folder.id),
    }


def stored_xml(elem: Element) -> str:
    return str(etree.tostring(elem).decode())


def row_elem(row: ItemRow) -> Element:
    return etree.fromstring(row.xml)
