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
