"""Graph JSON <-> the EWS test server's stored item XML (one store, two front ends).

Items are stored as EWS ``t:CalendarItem`` / ``t:Contact`` / ``t:Task`` elements (see
exchanged/testing/ews/items.py); event_json.py, contact_json.py and task_json.py render them as
Graph ``event``, ``contact`` and ``todoTask`` objects and turn Graph request bodies into the same
XML, so an item written through one front end reads the same through the other. This module holds
what the three share (errors, ids, times, extended properties, common fields). Mappings:

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

import datetime as dt
import html
import re
import zoneinfo
from typing import Any

from lxml import etree

from ..ews import items as it
from ..ews.soap import Element, parse_dt, sub, t
from ..ews.store import ItemRow


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
SENSITIVITY = {
    "normal": "Normal",
    "personal": "Personal",
    "private": "Private",
    "confidential": "Confidential",
}
SHOW_AS = {
    "free": "Free",
    "tentative": "Tentative",
    "busy": "Busy",
    "oof": "OOF",
    "workingElsewhere": "WorkingElsewhere",
    "unknown": "NoData",
}
IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
TASK_STATUS = {
    "notStarted": "NotStarted",
    "inProgress": "InProgress",
    "completed": "Completed",
    "waitingOnOthers": "WaitingOnOthers",
    "deferred": "Deferred",
}


def reverse(mapping: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


def enum_value(value: Any, mapping: dict[str, str], where: str) -> str:
    if not isinstance(value, str) or value not in mapping:
        raise bad_request(
            f"Cannot convert the literal '{value}' to the expected type for {where}; expected one of "
            f"{sorted(mapping)}.",
            "BadRequest",
        )
    return mapping[value]


def string_value(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"{where}: expected a string, got {type(value).__name__}.", "BadRequest")
    return value


def bool_value(value: Any, where: str) -> str:
    if not isinstance(value, bool):
        raise bad_request(f"{where}: expected true or false.", "BadRequest")
    return "true" if value else "false"


def set_body(elem: Element, value: Any) -> None:
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
        string_value(value.get("content"), "body.content"),
        BodyType="HTML" if kind == "html" else "Text",
    )


def set_categories(elem: Element, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("categories: expected an array of strings.", "BadRequest")
    it.drop_child(elem, "Categories")
    if value:
        cats = sub(elem, t("Categories"))
        for v in value:
            sub(cats, t("String"), v)


def body_json(elem: Element) -> dict[str, str]:
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


def preview(elem: Element) -> str:
    body = body_json(elem)
    text = body["content"]
    if body["contentType"] == "html":
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return " ".join(text.split())[:255]


def categories_of(elem: Element) -> list[str]:
    cats = elem.find(t("Categories"))
    return [] if cats is None else [s.text or "" for s in cats.findall(t("String"))]


def common_json(row_id: str, elem: Element, change_key: str) -> dict[str, Any]:
    return {
        "@odata.etag": etag(change_key),
        "id": to_graph_id(row_id),
        "createdDateTime": graph_timestamp(it.child_text(elem, "DateTimeCreated")),
        "lastModifiedDateTime": graph_timestamp(it.child_text(elem, "LastModifiedTime")),
        "changeKey": change_key,
        "categories": categories_of(elem),
    }


def apply_extended(elem: Element, body: dict[str, Any]) -> None:
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


def stored_xml(elem: Element) -> str:
    return str(etree.tostring(elem).decode())


def row_elem(row: ItemRow) -> Element:
    return etree.fromstring(row.xml)
