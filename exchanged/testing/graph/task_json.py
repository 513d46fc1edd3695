"""To Do task lists, tasks and linkedResources <-> task folders and stored EWS Task items."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

from lxml import etree

from ..ews import items as it
from ..ews.recurrence import PRIVATE
from ..ews.soap import TNS, Element, fmt_dt, parse_dt, t
from ..ews.store import FolderRow
from .convert import (
    IMPORTANCE,
    TASK_STATUS,
    bad_request,
    body_json,
    bool_value,
    categories_of,
    enum_value,
    etag,
    graph_datetime,
    graph_timestamp,
    parse_graph_datetime,
    reverse,
    set_body,
    set_categories,
    string_value,
    to_graph_id,
)

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
        it.set_child(elem, "Subject", string_value(body["title"], "title"))
    if "body" in body:
        set_body(elem, body["body"])
    if "importance" in body:
        it.set_child(elem, "Importance", enum_value(body["importance"], IMPORTANCE, "importance"))
    if "categories" in body:
        set_categories(elem, body["categories"])
    if "status" in body:
        it.set_child(elem, "Status", enum_value(body["status"], TASK_STATUS, "status"))
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
        it.set_child(elem, "ReminderIsSet", bool_value(body["isReminderOn"], "isReminderOn"))
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
            node.set(name, string_value(resource[name], f"linkedResources.{name}"))


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
        "importance": reverse(IMPORTANCE).get(it.child_text(elem, "Importance") or "Normal", "normal"),
        "isReminderOn": it.child_text(elem, "ReminderIsSet") == "true",
        "status": reverse(TASK_STATUS).get(it.child_text(elem, "Status") or "NotStarted", "notStarted"),
        "title": it.child_text(elem, "Subject") or "",
        "createdDateTime": graph_timestamp(it.child_text(elem, "DateTimeCreated")),
        "lastModifiedDateTime": graph_timestamp(it.child_text(elem, "LastModifiedTime")),
        "hasAttachments": False,
        "categories": categories_of(elem),
        "id": to_graph_id(row_id),
        "body": body_json(elem),
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
