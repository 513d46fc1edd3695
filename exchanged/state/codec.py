"""(De)serialization of model values for the state database.

Times are stored as text in one fixed form, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC), so that text
order is time order in SQLite and PostgreSQL alike. Mirror items are JSON documents; payloads carry
their type name, and fields are decoded by the annotations of the model classes (datetimes, enums),
so a new payload field with a default needs no change here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Any

from exchanged.model import (
    Appointment,
    Attendee,
    Contact,
    ExchangeItem,
    FolderKind,
    Payload,
    Task,
    payload_dict,
)

PAYLOAD_TYPES: dict[str, type] = {"Appointment": Appointment, "Task": Task, "Contact": Contact}


def ts(value: datetime | None) -> str | None:
    """A datetime as stored text (naive datetimes are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_field(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    args = typing.get_args(hint) or (hint,)
    if datetime in args:
        return parse_ts(value)
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, Enum):
            return arg(value)
    if tuple in (typing.get_origin(hint), hint) and isinstance(value, list):
        return tuple(value)
    return value


def encode_payload(payload: Payload) -> dict[str, Any]:
    return {"type": type(payload).__name__, **payload_dict(payload)}


def decode_payload(doc: dict[str, Any]) -> Payload:
    cls = PAYLOAD_TYPES[doc["type"]]
    hints = _hints(cls)
    values = {f.name: _decode_field(hints[f.name], doc[f.name])
              for f in dataclasses.fields(cls) if f.name in doc and f.name != "attendees"}
    if doc.get("attendees"):
        values["attendees"] = tuple(Attendee(*a) for a in doc["attendees"])
    return typing.cast(Payload, cls(**values))


def encode_item(item: ExchangeItem) -> str:
    doc = {
        "folder": item.folder.value,
        "item_id": item.item_id,
        "change_key": item.change_key,
        "payload": encode_payload(item.payload),
        "psa_key": item.psa_key,
        "categories": list(item.categories),
        "uid": item.uid,
        "exchange_key": item.exchange_key,
        "is_recurring_master": item.is_recurring_master,
        "last_modified": ts(item.last_modified),
    }
    if item.unreadable:  # only then: the documents of readable items stay as they were
        doc["unreadable"] = True
    if item.reminder is not None:  # the reminder rule needs both after a restart (SYNC_RULES "Reminders")
        doc["reminder"] = item.reminder
    if item.reminder_written is not None:
        doc["reminder_written"] = item.reminder_written
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def decode_item(text: str) -> ExchangeItem:
    """Raises ``ValueError``/``KeyError``/``TypeError`` on a damaged document."""
    doc = json.loads(text)
    return ExchangeItem(
        folder=FolderKind(doc["folder"]),
        item_id=doc["item_id"],
        change_key=doc["change_key"],
        payload=decode_payload(doc["payload"]),
        psa_key=doc.get("psa_key"),
        categories=tuple(doc.get("categories") or ()),
        uid=doc.get("uid"),
        exchange_key=doc.get("exchange_key"),
        is_recurring_master=bool(doc.get("is_recurring_master", False)),
        last_modified=parse_ts(doc.get("last_modified")),
        unreadable=bool(doc.get("unreadable", False)),
        reminder=_text_or_none(doc.get("reminder")),
        reminder_written=_text_or_none(doc.get("reminder_written")),
    )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["decode_item", "decode_payload", "encode_item", "encode_payload", "parse_ts", "ts"]
