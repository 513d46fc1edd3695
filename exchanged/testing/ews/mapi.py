"""MAPI properties Exchange derives from folders and items, readable as t:ExtendedProperty.

Exchange exposes every folder and item field both under its EWS name and under the MAPI property
tag (or named property) behind it; clients other than exchangelib (DavMail, Evolution's EWS
backend, ...) ask for these tags. A property with no value is left out, as Exchange leaves out
properties that are not set.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from .soap import Element, sub, t

# (PropertyTag, PropertyType) -> value, for one folder or item
Props = dict[tuple[int, str], str]
# (DistinguishedPropertySetId, PropertyId, PropertyType) -> value
NamedProps = dict[tuple[str, int, str], str]

PR_MESSAGE_CLASS = 0x001A
PR_SUBJECT = 0x0037
PR_INTERNET_ARTICLE_NUMBER = 0x0E23
PR_URL_COMP_NAME = 0x10F3
PR_ATTR_HIDDEN = 0x10F4
PR_DISPLAY_NAME = 0x3001
PR_CREATION_TIME = 0x3007
PR_LAST_MODIFICATION_TIME = 0x3008
PR_FOLDER_TYPE = 0x3601
PR_CONTENT_COUNT = 0x3602
PR_CONTENT_UNREAD = 0x3603
PR_SUBFOLDERS = 0x360A
PR_CONTAINER_CLASS = 0x3613
PR_LOCAL_COMMIT_TIME_MAX = 0x670A
PR_CHANGE_NUMBER = 0x67A4


def ext_property(parent: Element, uri_attrs: dict[str, str], value: str) -> Element:
    prop = sub(parent, t("ExtendedProperty"))
    sub(prop, t("ExtendedFieldURI"), **uri_attrs)
    sub(prop, t("Value"), value)
    return prop


def tagged(props: Props) -> Iterable[tuple[dict[str, str], str]]:
    for (tag, ptype), value in props.items():
        yield {"PropertyTag": f"0x{tag:x}", "PropertyType": ptype}, value


def named(props: NamedProps) -> Iterable[tuple[dict[str, str], str]]:
    for (pset, pid, ptype), value in props.items():
        yield {"DistinguishedPropertySetId": pset, "PropertyId": str(pid), "PropertyType": ptype}, value


def elements(pairs: Iterable[tuple[dict[str, str], str]]) -> list[Element]:
    holder = etree.Element("x")
    for attrs, value in pairs:
        ext_property(holder, attrs, value)
    return list(holder)


# -- items ---------------------------------------------------------------------------------------------
PR_GIVEN_NAME = 0x3A06
PR_SURNAME = 0x3A11
PR_MIDDLE_NAME = 0x3A44
PR_COMPANY_NAME = 0x3A16
PR_TITLE = 0x3A17
PR_DEPARTMENT_NAME = 0x3A18
PR_BUSINESS_TELEPHONE = 0x3A08
PR_HOME_TELEPHONE = 0x3A09
PR_MOBILE_TELEPHONE = 0x3A1C
PR_BUSINESS_FAX = 0x3A24
# PhysicalAddresses Key -> tags of (Street, City, State, PostalCode, CountryOrRegion)
_HOME_ADDRESS = (0x3A5D, 0x3A59, 0x3A5C, 0x3A5B, 0x3A5A)
_OTHER_ADDRESS = (0x3A63, 0x3A5F, 0x3A62, 0x3A61, 0x3A60)
_ADDRESS_PARTS = ("Street", "City", "State", "PostalCode", "CountryOrRegion")
# PSETID_Address named properties (DistinguishedPropertySetId "Address")
PID_LID_WORK_ADDRESS = (0x8045, 0x8046, 0x8047, 0x8048, 0x8049)
PID_LID_EMAIL = {"EmailAddress1": 0x8083, "EmailAddress2": 0x8093, "EmailAddress3": 0x80A3}
PID_LID_RECURRING = 0x8223  # PSETID_Appointment, Boolean
PID_LID_TASK_STATUS = 0x8101  # PSETID_Task, Integer
PID_LID_PERCENT_COMPLETE = 0x8102  # Double
PID_LID_TASK_START_DATE = 0x8104  # SystemTime
PID_LID_TASK_DUE_DATE = 0x8105  # SystemTime
PID_LID_TASK_DATE_COMPLETED = 0x810F  # SystemTime
PID_LID_TASK_COMPLETE = 0x811C  # Boolean
TASK_STATUS = {"NotStarted": "0", "InProgress": "1", "Completed": "2", "WaitingOnOthers": "3",
               "Deferred": "4"}
_PHONES = {"BusinessPhone": PR_BUSINESS_TELEPHONE, "HomePhone": PR_HOME_TELEPHONE,
           "MobilePhone": PR_MOBILE_TELEPHONE, "BusinessFax": PR_BUSINESS_FAX}


def _text(full: Element, name: str) -> str | None:
    value = full.findtext(t(name))
    return value if value else None


def _entry(full: Element, container: str, key: str) -> Element | None:
    holder = full.find(t(container))
    if holder is None:
        return None
    return next((e for e in holder if e.get("Key") == key), None)


def item_properties(full: Element, item_type: str, article_number: int) -> list[Element]:
    """The MAPI properties Exchange derives from an item's fields (full view), as ExtendedProperty
    elements; ``article_number`` is the item's PR_INTERNET_ARTICLE_NUMBER (rises with each arrival
    in the folder)."""
    props: Props = {}
    names: NamedProps = {}

    def put(tag: int, ptype: str, value: str | None) -> None:
        if value:
            props[(tag, ptype)] = value

    subject = _text(full, "Subject")
    put(PR_MESSAGE_CLASS, "String", _text(full, "ItemClass"))
    put(PR_SUBJECT, "String", subject)
    put(PR_DISPLAY_NAME, "String", _text(full, "DisplayName") if item_type == "Contact" else subject)
    put(PR_CREATION_TIME, "SystemTime", _text(full, "DateTimeCreated"))
    put(PR_LAST_MODIFICATION_TIME, "SystemTime", _text(full, "LastModifiedTime"))
    put(PR_INTERNET_ARTICLE_NUMBER, "Integer", str(article_number))
    item_id = full.find(t("ItemId"))
    url_name = (subject or (item_id.get("Id", "") if item_id is not None else "")).replace("/", "_")
    put(PR_URL_COMP_NAME, "String", f"{url_name}.EML")
    if item_type == "CalendarItem":
        recurring = full.find(t("Recurrence")) is not None or _text(full, "IsRecurring") == "true"
        names[("Appointment", PID_LID_RECURRING, "Boolean")] = "true" if recurring else "false"
    elif item_type == "Task":
        status = _text(full, "Status") or "NotStarted"
        names[("Task", PID_LID_TASK_STATUS, "Integer")] = TASK_STATUS.get(status, "0")
        names[("Task", PID_LID_TASK_COMPLETE, "Boolean")] = "true" if status == "Completed" else "false"
        percent = _text(full, "PercentComplete")
        if percent:
            names[("Task", PID_LID_PERCENT_COMPLETE, "Double")] = str(float(percent) / 100)
        for pid, name in ((PID_LID_TASK_START_DATE, "StartDate"), (PID_LID_TASK_DUE_DATE, "DueDate"),
                          (PID_LID_TASK_DATE_COMPLETED, "CompleteDate")):
            value = _text(full, name)
            if value:
                names[("Task", pid, "SystemTime")] = value
    elif item_type == "Contact":
        for tag, name in ((PR_GIVEN_NAME, "GivenName"), (PR_SURNAME, "Surname"),
                          (PR_MIDDLE_NAME, "MiddleName"), (PR_COMPANY_NAME, "CompanyName"),
                          (PR_TITLE, "JobTitle"), (PR_DEPARTMENT_NAME, "Department")):
            put(tag, "String", _text(full, name))
        for key, tag in _PHONES.items():
            entry = _entry(full, "PhoneNumbers", key)
            put(tag, "String", None if entry is None else entry.text)
        for key, pid in PID_LID_EMAIL.items():
            entry = _entry(full, "EmailAddresses", key)
            if entry is not None and entry.text:
                names[("Address", pid, "String")] = entry.text
        for key, tags in (("Home", _HOME_ADDRESS), ("Other", _OTHER_ADDRESS)):
            entry = _entry(full, "PhysicalAddresses", key)
            for tag, part in zip(tags, _ADDRESS_PARTS, strict=True):
                put(tag, "String", None if entry is None else entry.findtext(t(part)))
        entry = _entry(full, "PhysicalAddresses", "Business")
        for pid, part in zip(PID_LID_WORK_ADDRESS, _ADDRESS_PARTS, strict=True):
            value = None if entry is None else entry.findtext(t(part))
            if value:
                names[("Address", pid, "String")] = value
    return elements([*tagged(props), *named(names)])


# -- writing: a derived property written by a client sets the field behind it -----------------------
_WRITABLE_TAGS: dict[int, str] = {PR_SUBJECT: "Subject", PR_MESSAGE_CLASS: "ItemClass"}
_CONTACT_TAGS: dict[int, str] = {PR_DISPLAY_NAME: "DisplayName", PR_GIVEN_NAME: "GivenName",
                                 PR_SURNAME: "Surname", PR_MIDDLE_NAME: "MiddleName",
                                 PR_COMPANY_NAME: "CompanyName", PR_TITLE: "JobTitle",
                                 PR_DEPARTMENT_NAME: "Department"}
_TASK_DATES = {PID_LID_TASK_START_DATE: "StartDate", PID_LID_TASK_DUE_DATE: "DueDate",
               PID_LID_TASK_DATE_COMPLETED: "CompleteDate"}
_STATUS_NAMES = {v: k for k, v in TASK_STATUS.items()}


def _set_field(elem: Element, name: str, value: str) -> None:
    found = elem.find(t(name))
    if found is None:
        found = sub(elem, t(name))
    found.text = value


def _set_entry(elem: Element, container: str, key: str, value: str, part: str | None = None) -> None:
    holder = elem.find(t(container))
    if holder is None:
        holder = sub(elem, t(container))
    entry = next((e for e in holder if e.get("Key") == key), None)
    if entry is None:
        entry = sub(holder, t("Entry"), Key=key)
    if part is None:
        entry.text = value
        return
    _set_field(entry, part, value)
    order = {name: i for i, name in enumerate(("Street", "City", "State", "CountryOrRegion", "PostalCode"))}
    for c in sorted(entry, key=lambda c: order.get(etree.QName(c).localname, 9)):
        entry.remove(c)
        entry.append(c)


def absorb_written(elem: Element, item_type: str) -> None:
    """ExtendedProperty values a client wrote under the MAPI tags of fields (DavMail writes contacts
    and tasks this way) become those fields, as on Exchange, where both name one property."""
    address_parts = ("Street", "City", "State", "PostalCode", "CountryOrRegion")
    phones = {tag: key for key, tag in _PHONES.items()}
    for prop in list(elem.findall(t("ExtendedProperty"))):
        uri = prop.find(t("ExtendedFieldURI"))
        value = prop.findtext(t("Value"))
        if uri is None or value is None:
            continue
        tag_text, pid_text = uri.get("PropertyTag"), uri.get("PropertyId")
        pset = uri.get("DistinguishedPropertySetId")
        try:
            tag = int(tag_text, 0) if tag_text else None
            pid = int(pid_text, 0) if pid_text else None
        except ValueError:
            continue
        taken = True
        if tag in _WRITABLE_TAGS:
            _set_field(elem, _WRITABLE_TAGS[tag], value)
        elif item_type == "Contact" and tag in _CONTACT_TAGS:
            _set_field(elem, _CONTACT_TAGS[tag], value)
        elif item_type == "Contact" and tag in phones:
            _set_entry(elem, "PhoneNumbers", phones[tag], value)
        elif item_type == "Contact" and tag in _HOME_ADDRESS:
            _set_entry(elem, "PhysicalAddresses", "Home", value, address_parts[_HOME_ADDRESS.index(tag)])
        elif item_type == "Contact" and tag in _OTHER_ADDRESS:
            _set_entry(elem, "PhysicalAddresses", "Other", value, address_parts[_OTHER_ADDRESS.index(tag)])
        elif item_type == "Contact" and pset == "Address" and pid in PID_LID_WORK_ADDRESS:
            _set_entry(elem, "PhysicalAddresses", "Business", value,
                       address_parts[PID_LID_WORK_ADDRESS.index(pid)])
        elif item_type == "Contact" and pset == "Address" and pid in PID_LID_EMAIL.values():
            key = next(k for k, v in PID_LID_EMAIL.items() if v == pid)
            _set_entry(elem, "EmailAddresses", key, value)
        elif item_type == "Task" and pset == "Task" and pid == PID_LID_TASK_STATUS:
            _set_field(elem, "Status", _STATUS_NAMES.get(value, "NotStarted"))
        elif item_type == "Task" and pset == "Task" and pid == PID_LID_PERCENT_COMPLETE:
            _set_field(elem, "PercentComplete", f"{float(value) * 100:g}")
        elif item_type == "Task" and pset == "Task" and pid in _TASK_DATES:
            _set_field(elem, _TASK_DATES[pid], value)
        elif item_type == "Task" and pset == "Task" and pid == PID_LID_TASK_COMPLETE:
            if value.lower() == "true":
                _set_field(elem, "Status", "Completed")
        else:
            taken = False
        if taken:
            elem.remove(prop)
