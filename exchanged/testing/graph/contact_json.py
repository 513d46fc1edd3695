"""Graph contacts <-> the stored EWS Contact (see convert.py for the shared ground)."""

from __future__ import annotations

import copy
from typing import Any

from lxml import etree

from ..ews import items as it
from ..ews.soap import TNS, Element, sub, t
from .convert import (
    apply_extended,
    bad_request,
    body_json,
    common_json,
    set_categories,
    string_value,
    to_graph_id,
)

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
            text = string_value(body[name], name)
            if text:
                it.set_child(elem, tag, text)
            else:
                it.drop_child(elem, tag)
            changed.add(tag)
    if "personalNotes" in body:
        it.drop_child(elem, "Body")
        if body["personalNotes"]:
            sub(elem, t("Body"), string_value(body["personalNotes"], "personalNotes"), BodyType="Text")
    if "categories" in body:
        set_categories(elem, body["categories"])
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
                (f"EmailAddress{i + 1}", string_value(v.get("address"), "emailAddresses.address"))
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
        value = string_value(body["mobilePhone"], "mobilePhone")
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
                (tag, string_value(value.get(part), f"{name}.{part}")) for part, tag in _ADDRESS_PARTS.items()
            ]
            if any(v for _, v in parts):
                entry = sub(box, t("Entry"), Key=key)
                for tag, v in parts:
                    if v:
                        sub(entry, t(tag), v)
            if not len(box):
                elem.remove(box)
    apply_extended(elem, body)
    return elem, changed


def contact_json(row_id: str, elem: Element, change_key: str, folder_id: str) -> dict[str, Any]:
    out = common_json(row_id, elem, change_key)
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
            "personalNotes": body_json(elem)["content"],
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
