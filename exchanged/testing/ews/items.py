"""Item XML: what is stored, what the server adds, and how shapes and field paths select from it.

Items are kept as the `t:CalendarItem` / `t:Task` / `t:Contact` element the client sent, minus
anything the server owns (ItemId, ParentFolderId, times). Reads inject the server's fields and
order children as Microsoft's schema does (clients validate nothing, but the structural tests and
strict clients do).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import uuid

from lxml import etree

from .soap import TNS, Element, EwsError, fmt_dt, local, parse_dt, sub, t
from .store import FolderRow, ItemRow

ITEM_TYPES = {
    "CalendarItem": "IPM.Appointment",
    "Task": "IPM.Task",
    "Contact": "IPM.Contact",
    "Message": "IPM.Note",
    "Item": "IPM.Note",
}
DEFAULT_FOLDER = {
    "CalendarItem": "calendar",
    "Task": "tasks",
    "Contact": "contacts",
    "Message": "drafts",
    "Item": "drafts",
}
SERVER_OWNED = {
    "ItemId",
    "ParentFolderId",
    "DateTimeCreated",
    "LastModifiedTime",
    "DateTimeReceived",
    "Size",
    "HasAttachments",
    "IsAssociated",
    "CalendarItemType",
    "IsRecurring",
    "MyResponseType",
    "EffectiveRights",
    "LastModifiedName",
    "FirstOccurrence",
    "LastOccurrence",
    "IsComplete",
    "ChangeCount",
    "ConversationId",
    "DisplayTo",
    "DisplayCc",
    "IsMeeting",
    "IsOrganizer",
    "AppointmentState",
    "IsCancelled",
    "MeetingRequestWasSent",
    "Owner",
}

_ITEM_ORDER = [
    "MimeContent",
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "Subject",
    "Sensitivity",
    "Body",
    "Attachments",
    "DateTimeReceived",
    "Size",
    "Categories",
    "Importance",
    "InReplyTo",
    "IsSubmitted",
    "IsDraft",
    "IsFromMe",
    "IsResend",
    "IsUnmodified",
    "InternetMessageHeaders",
    "DateTimeSent",
    "DateTimeCreated",
    "ResponseObjects",
    "ReminderDueBy",
    "ReminderIsSet",
    "ReminderNextTime",
    "ReminderMinutesBeforeStart",
    "DisplayCc",
    "DisplayTo",
    "HasAttachments",
    "ExtendedProperty",
    "Culture",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "IsAssociated",
    "WebClientReadFormQueryString",
    "WebClientEditFormQueryString",
    "ConversationId",
    "UniqueBody",
    "Flag",
    "StoreEntryId",
    "InstanceKey",
    "NormalizedBody",
    "EntityExtractionResult",
    "PolicyTag",
    "ArchiveTag",
    "RetentionDate",
    "Preview",
    "RightsManagementLicenseData",
    "PredictedActionReasons",
    "IsClutter",
    "BlockStatus",
    "HasBlockedImages",
    "TextBody",
    "IconIndex",
    "SearchKey",
    "SortKey",
    "Hashtags",
    "MentionedMe",
    "Mentions",
]
_TYPE_ORDER = {
    "CalendarItem": [
        "UID",
        "RecurrenceId",
        "DateTimeStamp",
        "Start",
        "End",
        "OriginalStart",
        "IsAllDayEvent",
        "LegacyFreeBusyStatus",
        "Location",
        "When",
        "IsMeeting",
        "IsCancelled",
        "IsRecurring",
        "MeetingRequestWasSent",
        "IsResponseRequested",
        "CalendarItemType",
        "MyResponseType",
        "Organizer",
        "RequiredAttendees",
        "OptionalAttendees",
        "Resources",
        "ConflictingMeetingCount",
        "AdjacentMeetingCount",
        "ConflictingMeetings",
        "AdjacentMeetings",
        "Duration",
        "TimeZone",
        "AppointmentReplyTime",
        "AppointmentSequenceNumber",
        "AppointmentState",
        "Recurrence",
        "FirstOccurrence",
        "LastOccurrence",
        "ModifiedOccurrences",
        "DeletedOccurrences",
        "MeetingTimeZone",
        "StartTimeZone",
        "EndTimeZone",
        "ConferenceType",
        "AllowNewTimeProposal",
        "IsOnlineMeeting",
        "MeetingWorkspaceUrl",
        "NetShowUrl",
        "EnhancedLocation",
        "StartWallClock",
        "EndWallClock",
        "StartTimeZoneId",
        "EndTimeZoneId",
        "IntendedFreeBusyStatus",
        "JoinOnlineMeetingUrl",
        "OnlineMeetingSettings",
        "IsOrganizer",
    ],
    "Task": [
        "ActualWork",
        "AssignedTime",
        "BillingInformation",
        "ChangeCount",
        "Companies",
        "CompleteDate",
        "Contacts",
        "DelegationState",
        "Delegator",
        "DueDate",
        "IsAssignmentEditable",
        "IsComplete",
        "IsRecurring",
        "IsTeamTask",
        "Mileage",
        "Owner",
        "PercentComplete",
        "Recurrence",
        "StartDate",
        "Status",
        "StatusDescription",
        "TotalWork",
    ],
    "Contact": [
        "FileAs",
        "FileAsMapping",
        "DisplayName",
        "GivenName",
        "Initials",
        "MiddleName",
        "Nickname",
        "CompleteName",
        "CompanyName",
        "EmailAddresses",
        "AbchEmailAddresses",
        "PhysicalAddresses",
        "PhoneNumbers",
        "AssistantName",
        "Birthday",
        "BusinessHomePage",
        "Children",
        "Companies",
        "ContactSource",
        "Department",
        "Generation",
        "ImAddresses",
        "JobTitle",
        "Manager",
        "Mileage",
        "OfficeLocation",
        "PostalAddressIndex",
        "Profession",
        "SpouseName",
        "Surname",
        "WeddingAnniversary",
        "HasPicture",
        "PhoneticFullName",
        "PhoneticFirstName",
        "PhoneticLastName",
        "Alias",
        "Notes",
        "Photo",
        "UserSMIMECertificate",
        "MSExchangeCertificate",
        "DirectoryId",
        "ManagerMailbox",
        "DirectReports",
    ],
}
_ORDER = {
    kind: {name: i for i, name in enumerate(_ITEM_ORDER + extra)} for kind, extra in _TYPE_ORDER.items()
}
_DEFAULT_ORDER = {name: i for i, name in enumerate(_ITEM_ORDER)}

# IndexedFieldURI prefixes -> the container element that holds the entries
INDEXED_CONTAINERS = {
    "contacts:EmailAddress": "EmailAddresses",
    "contacts:PhoneNumber": "PhoneNumbers",
    "contacts:ImAddress": "ImAddresses",
    "contacts:PhysicalAddress": "PhysicalAddresses",
}


def order_children(elem: Element) -> None:
    order = _ORDER.get(local(elem.tag), _DEFAULT_ORDER)
    children = list(elem)
    children.sort(key=lambda c: order.get(local(c.tag), len(order)))
    for c in children:
        elem.remove(c)
        elem.append(c)


def child(elem: Element, name: str) -> Element | None:
    return elem.find(t(name))


def child_text(elem: Element, name: str) -> str | None:
    c = elem.find(t(name))
    return None if c is None else (c.text or "")


def set_child(elem: Element, name: str, text: str) -> Element:
    c = elem.find(t(name))
    if c is None:
        c = sub(elem, t(name))
    c.text = text
    return c


def drop_child(elem: Element, name: str) -> None:
    for c in elem.findall(t(name)):
        elem.remove(c)


# -- create / normalise -------------------------------------------------------------------------------
def normalise(elem: Element, mailbox: str, changed: set[str] | None = None) -> None:
    """Fill in what Exchange derives on every write; raise EwsError for values Exchange refuses.

    `changed` names the fields an update wrote (None on create).
    """
    kind = local(elem.tag)
    for name in SERVER_OWNED:
        drop_child(elem, name)
    if child(elem, "ItemClass") is None:
        set_child(elem, "ItemClass", ITEM_TYPES.get(kind, "IPM.Note"))
    if child(elem, "Sensitivity") is None:
        set_child(elem, "Sensitivity", "Normal")
    if child(elem, "Importance") is None:
        set_child(elem, "Importance", "Normal")
    set_child(elem, "HasAttachments", "false")
    set_child(elem, "IsAssociated", "false")
    canonical_values(elem)
    _check_extended_properties(elem)
    if kind == "CalendarItem":
        _normalise_calendar(elem, mailbox)
    elif kind == "Task":
        _normalise_task(elem, changed)
    elif kind == "Contact":
        _normalise_contact(elem)
    order_children(elem)


_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _is_boolean_field(name: str) -> bool:
    return name.startswith(("Is", "Has", "Allow")) or name.endswith("IsSet")


def canonical_values(elem: Element) -> None:
    """Write values as Exchange does: booleans as true/false, date-times in UTC without fractions."""
    for node in elem.iter():
        if not isinstance(node.tag, str) or len(node) or node.text is None:
            continue
        text = node.text.strip()
        if text in ("0", "1") and _is_boolean_field(local(node.tag)):
            node.text = "true" if text == "1" else "false"
        elif _DATETIME.match(text):
            parsed = parse_dt(text)
            if parsed is not None:
                node.text = fmt_dt(parsed)
    for prop in elem.findall(t("ExtendedProperty")):
        uri = prop.find(t("ExtendedFieldURI"))
        if uri is not None and uri.get("PropertyType", "").startswith("Boolean"):
            for v in prop.iter(t("Value")):
                if (v.text or "").strip() in ("0", "1"):
                    v.text = "true" if v.text.strip() == "1" else "false"


def _check_extended_properties(elem: Element) -> None:
    for prop in elem.findall(t("ExtendedProperty")):
        uri = prop.find(t("ExtendedFieldURI"))
        if uri is None:
            raise EwsError(
                "ErrorInvalidExtendedProperty", "An extended property is missing its ExtendedFieldURI."
            )
        ptype = uri.get("PropertyType", "")
        values = [v.text or "" for v in prop.iter(t("Value"))]
        for value in values:
            if not _valid_value(ptype, value):
                raise EwsError(
                    "ErrorInvalidExtendedPropertyValue",
                    f"The extended property value {value!r} is not a valid {ptype}.",
                )


def _valid_value(ptype: str, value: str) -> bool:
    base = ptype.removesuffix("Array")
    if base in ("Integer", "Long", "Short"):
        try:
            int(value)
        except ValueError:
            return False
    elif base == "Boolean":
        return value.lower() in ("true", "false", "1", "0")
    elif base == "SystemTime":
        return parse_dt(value) is not None
    elif base in ("Double", "Float", "Currency"):
        try:
            float(value)
        except ValueError:
            return False
    return True


def _normalise_calendar(elem: Element, mailbox: str) -> None:
    start, end = parse_dt(child_text(elem, "Start")), parse_dt(child_text(elem, "End"))
    if start is None and end is None:
        # Exchange creates a calendar item without times (DavMail does so to learn the user's
        # VTIMEZONE from its MimeContent): it starts now and lasts 30 minutes.
        from .store import utcnow

        start = utcnow().replace(second=0)
        end = start + dt.timedelta(minutes=30)
        set_child(elem, "Start", fmt_dt(start))
        set_child(elem, "End", fmt_dt(end))
    if start is not None and end is not None and end < start:
        raise EwsError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
    if child(elem, "UID") is None:
        set_child(elem, "UID", outlook_uid())
    for name in ("IsAllDayEvent",):
        if child(elem, name) is None:
            set_child(elem, name, "false")
    if child(elem, "LegacyFreeBusyStatus") is None:
        set_child(elem, "LegacyFreeBusyStatus", "Busy")
    recurring = child(elem, "Recurrence") is not None
    set_child(elem, "IsRecurring", "true" if recurring else "false")
    set_child(elem, "CalendarItemType", "RecurringMaster" if recurring else "Single")
    set_child(elem, "MyResponseType", "Organizer")
    attendees = any(
        child(elem, n) is not None for n in ("RequiredAttendees", "OptionalAttendees", "Resources")
    )
    set_child(elem, "IsMeeting", "true" if attendees else "false")
    set_child(elem, "IsCancelled", "false")
    set_child(elem, "IsOrganizer", "true")
    if child(elem, "Organizer") is None:
        org = sub(elem, t("Organizer"))
        mb = sub(org, t("Mailbox"))
        sub(mb, t("Name"), mailbox.split("@", 1)[0])
        sub(mb, t("EmailAddress"), mailbox)
        sub(mb, t("RoutingType"), "SMTP")
        sub(mb, t("MailboxType"), "Mailbox")
    if not recurring:
        drop_child(elem, "ModifiedOccurrences")
        drop_child(elem, "DeletedOccurrences")


GOID_CLASS_ID = bytes.fromhex("040000008200E00074C5B7101A82E008")  # MS-OXOCAL PidLidGlobalObjectId


def outlook_uid() -> str:
    """The UID Exchange gives an item created without one: the hex of an Outlook global object id
    (class id, no instance date, creation time, size 16, a random GUID), as MS-OXOCAL describes."""
    import datetime as _dt
    import struct

    since_1601 = _dt.datetime.now(_dt.UTC) - _dt.datetime(1601, 1, 1, tzinfo=_dt.UTC)
    created = struct.pack("<Q", int(since_1601.total_seconds() * 10**7))  # a FILETIME
    goid = GOID_CLASS_ID + bytes(4) + created + bytes(8) + struct.pack("<I", 16) + uuid.uuid4().bytes
    return goid.hex().upper()


def _normalise_task(elem: Element, changed: set[str] | None) -> None:
    """Keep Status, PercentComplete and CompleteDate consistent, the way Outlook/Exchange do.

    Whichever of Status and PercentComplete the client wrote wins; on create Status wins.
    """
    status = child_text(elem, "Status") or "NotStarted"
    try:
        percent = float(child_text(elem, "PercentComplete") or 0)
    except ValueError:
        raise EwsError("ErrorInvalidValueForProperty", "PercentComplete must be a number.") from None
    if not 0 <= percent <= 100:
        raise EwsError("ErrorInvalidValueForProperty", "PercentComplete must be between 0 and 100.")
    percent_wins = changed is not None and "PercentComplete" in changed and "Status" not in changed
    if percent_wins:
        status = "Completed" if percent >= 100 else ("NotStarted" if percent == 0 else "InProgress")
    elif status == "Completed":
        percent = 100
    elif percent >= 100:
        percent = 0
    if status == "Completed":
        if child(elem, "CompleteDate") is None:
            from .store import utcnow

            set_child(elem, "CompleteDate", fmt_dt(utcnow()))
    else:
        drop_child(elem, "CompleteDate")
    set_child(elem, "Status", status)
    set_child(elem, "PercentComplete", f"{percent:g}")
    set_child(elem, "IsComplete", "true" if status == "Completed" else "false")
    set_child(elem, "IsRecurring", "true" if child(elem, "Recurrence") is not None else "false")
    due, start = parse_dt(child_text(elem, "DueDate")), parse_dt(child_text(elem, "StartDate"))
    if due is not None and start is not None and due < start:
        raise EwsError("ErrorInvalidRequest", "The task's DueDate is earlier than its StartDate.")


def _normalise_contact(elem: Element) -> None:
    if child(elem, "DisplayName") is None:
        parts = [child_text(elem, n) for n in ("GivenName", "MiddleName", "Surname")]
        name = " ".join(p for p in parts if p) or child_text(elem, "CompanyName") or ""
        set_child(elem, "DisplayName", name)
    if child(elem, "FileAs") is None:
        given, surname = child_text(elem, "GivenName"), child_text(elem, "Surname")
        file_as = ", ".join(p for p in (surname, given) if p) or child_text(elem, "DisplayName") or ""
        set_child(elem, "FileAs", file_as)


# -- reading -------------------------------------------------------------------------------------------
def full_view(item: ItemRow, folder: FolderRow | None) -> Element:
    """The stored item with every server-owned field, in schema order."""
    elem = etree.fromstring(item.xml)
    sub(elem, t("ItemId"), Id=item.id, ChangeKey=item.change_key)
    if folder is not None:
        sub(elem, t("ParentFolderId"), Id=folder.id, ChangeKey=folder.change_key)
    created = parse_dt(item.created)
    modified = parse_dt(item.modified)
    assert created is not None and modified is not None
    sub(elem, t("DateTimeReceived"), fmt_dt(created))
    sub(elem, t("DateTimeCreated"), fmt_dt(created))
    sub(elem, t("LastModifiedTime"), fmt_dt(modified))
    sub(elem, t("LastModifiedName"), item.mailbox.split("@", 1)[0] or "Public Folder")
    if item.item_type == "Task":
        count = elem.find(t("ChangeCount"))
        if count is None:
            sub(elem, t("ChangeCount"), "1")
    order_children(elem)
    return elem


# Properties FindItem and SyncFolderItems refuse to return (Exchange: "The property Body can't be
# used in FindItem requests", ErrorInvalidPropertyForOperation); clients fetch them with GetItem.
NOT_IN_FIND = frozenset(
    {
        "item:Body",
        "item:MimeContent",
        "item:UniqueBody",
        "item:TextBody",
        "item:NormalizedBody",
    }
)


def check_find_shape(shape: Element | None) -> None:
    if shape is not None and (shape.findtext(t("IncludeMimeContent")) or "").strip().lower() == "true":
        raise EwsError(
            "ErrorInvalidPropertyForOperation",
            "The property MimeContent can't be used in FindItem requests.",
            field_uri="item:MimeContent",
        )
    props = None if shape is None else shape.find(t("AdditionalProperties"))
    for path in [] if props is None else props:
        uri = path.get("FieldURI", "")
        if local(path.tag) == "FieldURI" and uri in NOT_IN_FIND:
            raise EwsError(
                "ErrorInvalidPropertyForOperation",
                f"The property {field_name(uri)} can't be used in FindItem requests.",
                field_uri=uri,
            )


def shaped(full: Element, shape: Element | None, *, in_find: bool = False) -> Element:
    """Select children of a full view according to an ItemShape (BaseShape + AdditionalProperties)."""
    base = "IdOnly"
    additional: list[Element] = []
    if shape is not None:
        base = (shape.findtext(t("BaseShape")) or "IdOnly").strip()
        props = shape.find(t("AdditionalProperties"))
        if props is not None:
            additional = list(props)
    out = etree.Element(full.tag)
    wanted: list[Element] = []
    item_id = full.find(t("ItemId"))
    if item_id is not None:
        wanted.append(copy.deepcopy(item_id))
    if base in ("Default", "AllProperties"):
        for c in full:
            if not str(c.tag).startswith("{" + TNS) or local(c.tag) in ("ItemId", "ExtendedProperty"):
                continue
            if in_find and local(c.tag) in ("Body", "Attachments", "RequiredAttendees", "OptionalAttendees"):
                continue
            wanted.append(copy.deepcopy(c))
    for path in additional:
        if in_find and path.get("FieldURI") in NOT_IN_FIND:
            continue  # SyncFolderItems leaves them out (FindItem refuses them before getting here)
        for c in select(full, path):
            if not any(_same_element(c, w) for w in wanted):
                wanted.append(copy.deepcopy(c))
    merged = _merge_indexed(wanted)
    for c in merged:
        out.append(c)
    order_children(out)
    return out


def _same_element(a: Element, b: Element) -> bool:
    return (
        a.tag == b.tag
        and local(a.tag) != "ExtendedProperty"
        and local(a.tag) not in INDEXED_CONTAINERS.values()
    )


def _merge_indexed(elems: list[Element]) -> list[Element]:
    """Indexed entries selected one by one become one container per kind, as Exchange returns them."""
    out: list[Element] = []
    containers: dict[str, Element] = {}
    for e in elems:
        name = local(e.tag)
        if name in INDEXED_CONTAINERS.values():
            if name in containers:
                existing = {en.get("Key"): en for en in containers[name]}
                for entry in e:
                    same = existing.get(entry.get("Key"))
                    if same is None:
                        containers[name].append(copy.deepcopy(entry))
                    elif len(entry):  # one part of an address asked on its own: join the parts
                        have = {c.tag for c in same}
                        for part in entry:
                            if part.tag not in have:
                                same.append(copy.deepcopy(part))
                        _order_address(same)
                continue
            containers[name] = e
        out.append(e)
    return out


_ADDRESS_ORDER = {
    name: i for i, name in enumerate(("Street", "City", "State", "CountryOrRegion", "PostalCode"))
}


def _order_address(entry: Element) -> None:
    parts = sorted(entry, key=lambda c: _ADDRESS_ORDER.get(local(c.tag), len(_ADDRESS_ORDER)))
    for c in parts:
        entry.remove(c)
        entry.append(c)


def select(full: Element, path: Element) -> list[Element]:
    """Children of a full item view that a FieldURI / IndexedFieldURI / ExtendedFieldURI names."""
    kind = local(path.tag)
    if kind == "FieldURI":
        name = field_name(path.get("FieldURI", ""))
        return list(full.findall(t(name)))
    if kind == "IndexedFieldURI":
        container_name, key, subfield = indexed_parts(path)
        container = full.find(t(container_name))
        if container is None:
            return []
        out = etree.Element(container.tag)
        for entry in container:
            if entry.get("Key") == key:
                if subfield:
                    part = entry.find(t(subfield))
                    if part is None:
                        continue
                    e = sub(out, t("Entry"), Key=key)
                    e.append(copy.deepcopy(part))
                else:
                    out.append(copy.deepcopy(entry))
        return [out] if len(out) else []
    if kind == "ExtendedFieldURI":
        return [
            p for p in full.findall(t("ExtendedProperty")) if ext_matches(p.find(t("ExtendedFieldURI")), path)
        ]
    return []


def select_one(elem: Element, path: Element) -> bool:
    """Whether one child element is what a FieldURI / ExtendedFieldURI names."""
    kind = local(path.tag)
    if kind == "FieldURI":
        return local(elem.tag) == field_name(path.get("FieldURI", ""))
    if kind == "ExtendedFieldURI":
        return local(elem.tag) == "ExtendedProperty" and ext_matches(elem.find(t("ExtendedFieldURI")), path)
    return False


def field_name(field_uri: str) -> str:
    """'calendar:Start' -> 'Start': EWS property paths end in the element's name."""
    return field_uri.rsplit(":", 1)[-1]


def indexed_parts(path: Element) -> tuple[str, str, str | None]:
    uri = path.get("FieldURI", "")
    key = path.get("FieldIndex", "")
    for prefix, container in INDEXED_CONTAINERS.items():
        if uri == prefix:
            return container, key, None
        if uri.startswith(prefix + ":"):
            return container, key, uri.rsplit(":", 1)[-1]
    raise EwsError("ErrorInvalidIndexedPagingParameters", f"Unknown indexed property {uri!r}.", field_uri=uri)


_EXT_KEYS = ("DistinguishedPropertySetId", "PropertySetId", "PropertyTag", "PropertyName", "PropertyId")


def _ext_key(uri: Element) -> tuple[str, ...]:
    out = []
    for k in _EXT_KEYS:
        v = uri.get(k)
        if v is None:
            out.append("")
        elif k == "PropertyTag":
            out.append(str(int(v, 16) if v.lower().startswith("0x") else int(v)))
        elif k == "PropertySetId":
            out.append(v.lower())
        else:
            out.append(v)
    return tuple(out)


def ext_matches(a: Element | None, b: Element | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return _ext_key(a) == _ext_key(b)
    except ValueError:
        return False


def values_at(full: Element, path: Element) -> list[str]:
    """Text values a restriction compares against (lists give one value per entry)."""
    out: list[str] = []
    for c in select(full, path):
        name = local(c.tag)
        if name == "ExtendedProperty":
            out.extend((v.text or "") for v in c.iter(t("Value")))
        elif name in INDEXED_CONTAINERS.values():
            for entry in c:
                out.append("".join(entry.itertext()))
        elif len(c):
            strings = [s.text or "" for s in c.findall(t("String"))]
            out.extend(strings if strings else ["".join(c.itertext())])
        else:
            out.append(c.text or "")
    return out


# -- updates -------------------------------------------------------------------------------------------
def apply_set(elem: Element, path: Element, source: Element) -> None:
    """SetItemField: the new value is the matching child of `source` (an item element)."""
    kind = local(path.tag)
    if kind == "FieldURI":
        name = field_name(path.get("FieldURI", ""))
        new = source.find(t(name))
        if new is None:
            raise EwsError(
                "ErrorInvalidPropertySet",
                f"The update names {name} but carries no {name} element.",
                field_uri=path.get("FieldURI"),
            )
        drop_child(elem, name)
        elem.append(copy.deepcopy(new))
    elif kind == "IndexedFieldURI":
        container_name, key, subfield = indexed_parts(path)
        new_container = source.find(t(container_name))
        new_entry = (
            None if new_container is None else next((e for e in new_container if e.get("Key") == key), None)
        )
        if new_entry is None:
            raise EwsError("ErrorInvalidPropertySet", f"The update carries no {container_name} entry {key}.")
        container = elem.find(t(container_name))
        if container is None:
            container = sub(elem, t(container_name))
        entry = next((e for e in container if e.get("Key") == key), None)
        if subfield:
            if entry is None:
                entry = sub(container, t("Entry"), Key=key)
            for c in entry.findall(t(subfield)):
                entry.remove(c)
            for c in new_entry.findall(t(subfield)):
                entry.append(copy.deepcopy(c))
        else:
            if entry is not None:
                container.remove(entry)
            container.append(copy.deepcopy(new_entry))
    elif kind == "ExtendedFieldURI":
        new_props = [
            p
            for p in source.findall(t("ExtendedProperty"))
            if ext_matches(p.find(t("ExtendedFieldURI")), path)
        ]
        if not new_props:
            raise EwsError("ErrorInvalidPropertySet", "The update carries no matching ExtendedProperty.")
        for p in elem.findall(t("ExtendedProperty")):
            if ext_matches(p.find(t("ExtendedFieldURI")), path):
                elem.remove(p)
        elem.append(copy.deepcopy(new_props[0]))
    else:
        raise EwsError("ErrorInvalidPropertySet", f"Unknown property path {kind}.")


def apply_append(elem: Element, path: Element, source: Element) -> None:
    if local(path.tag) != "FieldURI":
        apply_set(elem, path, source)
        return
    name = field_name(path.get("FieldURI", ""))
    new = source.find(t(name))
    if new is None:
        raise EwsError("ErrorInvalidPropertySet", f"The update names {name} but carries no {name} element.")
    existing = elem.find(t(name))
    if existing is None:
        elem.append(copy.deepcopy(new))
    elif len(new):
        for c in new:
            existing.append(copy.deepcopy(c))
    else:
        existing.text = (existing.text or "") + (new.text or "")


def apply_delete(elem: Element, path: Element) -> None:
    kind = local(path.tag)
    if kind == "FieldURI":
        drop_child(elem, field_name(path.get("FieldURI", "")))
    elif kind == "IndexedFieldURI":
        container_name, key, subfield = indexed_parts(path)
        container = elem.find(t(container_name))
        if container is None:
            return
        for entry in list(container):
            if entry.get("Key") != key:
                continue
            if subfield:
                for c in entry.findall(t(subfield)):
                    entry.remove(c)
                if len(entry):
                    continue
            container.remove(entry)
        if not len(container):
            elem.remove(container)
    elif kind == "ExtendedFieldURI":
        for p in elem.findall(t("ExtendedProperty")):
            if ext_matches(p.find(t("ExtendedFieldURI")), path):
                elem.remove(p)


def strip_namespace_noise(elem: Element) -> Element:
    """A standalone copy of a request element, ready for storage (namespaces cleaned up)."""
    clean = copy.deepcopy(elem)
    etree.cleanup_namespaces(clean, top_nsmap={"t": TNS})
    return clean
