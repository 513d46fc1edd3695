"""The data model every layer shares: what a PSA row and an Exchange item *are* to the sync.

Plain frozen dataclasses and enums, no I/O and no third-party imports, so that the engine, the
adapters, the state store and the tests all speak the same language.

Theory of identity
------------------
* A PSA-owned item is known by its ``psa_key``: ``"<kind>:<psa id>"`` (``appointment:42``,
  ``service_call:7``, ``todo:9``, ``contact:12``, ``public_contact:12``). The daemon writes that key
  into an extended property of every Exchange item it creates, so an item can be found again
  ("adopted") after a lost reply or a crash, and never duplicated.
* An Exchange-owned appointment (imported into the PSA) is known by its ``exchange_key``: the
  iCalendar UID for a single item, ``"<UID>@<original start, ISO UTC>"`` for one occurrence of a
  recurring series. The PSA row that mirrors it carries that key in ``appointments.exchange_uid``.
* All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What is synced, and therefore which rules apply (SPEC section 4)."""

    APPOINTMENT = "appointment"  # PSA appointment -> Exchange calendar; PSA owns
    SERVICE_CALL = "service_call"  # PSA service call -> Exchange calendar; PSA owns
    TODO = "todo"  # PSA to-do -> Exchange task; PSA owns
    CONTACT = "contact"  # owned PSA contact -> the user's Exchange contacts; PSA owns
    PUBLIC_CONTACT = "public_contact"  # every PSA contact -> one public folder; PSA owns
    IMPORTED = "imported"  # Exchange appointment -> PSA appointment; Exchange owns


class FolderKind(StrEnum):
    CALENDAR = "calendar"
    TASKS = "tasks"
    CONTACTS = "contacts"
    PUBLIC_CONTACTS = "public_contacts"


FOLDER_OF_KIND: dict[Kind, FolderKind] = {
    Kind.APPOINTMENT: FolderKind.CALENDAR,
    Kind.SERVICE_CALL: FolderKind.CALENDAR,
    Kind.IMPORTED: FolderKind.CALENDAR,
    Kind.TODO: FolderKind.TASKS,
    Kind.CONTACT: FolderKind.CONTACTS,
    Kind.PUBLIC_CONTACT: FolderKind.PUBLIC_CONTACTS,
}

PSA_OWNED: frozenset[Kind] = frozenset(k for k in Kind if k is not Kind.IMPORTED)


class ShowAs(StrEnum):
    """Exchange's LegacyFreeBusyStatus, lower-cased; the PSA's ``show_as`` column uses the same."""

    FREE = "free"
    TENTATIVE = "tentative"
    BUSY = "busy"
    OOF = "oof"
    WORKING_ELSEWHERE = "working_elsewhere"
    NO_DATA = "no_data"


class ImportMode(StrEnum):
    ALL_DETAILS = "all_details"
    NO_DETAILS = "no_details"
    NONE = "none"


def make_psa_key(kind: Kind, psa_id: str | int) -> str:
    return f"{kind.value}:{psa_id}"


def split_psa_key(psa_key: str) -> tuple[Kind, str]:
    kind, _, psa_id = psa_key.partition(":")
    return Kind(kind), psa_id


def occurrence_key(uid: str, original_start: datetime) -> str:
    """The ``exchange_key`` of one occurrence of a recurring series: ``<UID>@<original start>``.

    The original start is written in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` so that every adapter (and the
    in-memory fake) produces the same key for the same occurrence.
    """
    return f"{uid}@{original_start.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


# --- payloads: the fields both sides share, per Exchange item type ------------------------------


RESPONSES = ("accepted", "tentative", "declined", "none", "organizer", "unknown")


@dataclass(frozen=True, slots=True, order=True)
class Attendee:
    """One participant of a meeting: ``response`` is one of ``RESPONSES``."""

    email: str
    name: str = ""
    response: str = "unknown"


def attendee_list(attendees: Iterable[Attendee]) -> tuple[Attendee, ...]:
    """Attendees in the one order every side uses (by address, then name), each address once."""
    seen: dict[str, Attendee] = {}
    for a in sorted(attendees):
        seen.setdefault(a.email.lower() or a.name, a)
    return tuple(seen.values())


@dataclass(frozen=True, slots=True)
class Appointment:
    subject: str
    start: datetime
    end: datetime
    body: str = ""
    location: str = ""
    is_all_day: bool = False
    show_as: ShowAs = ShowAs.BUSY
    is_private: bool = False
    # imported meetings (Exchange owns): who takes part; always () on PSA-owned appointments (the
    # daemon never writes attendees to Exchange, so it can never send an invitation)
    attendees: tuple[Attendee, ...] = ()


@dataclass(frozen=True, slots=True)
class Task:
    subject: str
    body: str = ""
    start: datetime | None = None
    due: datetime | None = None
    completed: datetime | None = None  # None: not complete


@dataclass(frozen=True, slots=True)
class Contact:
    given_name: str
    surname: str
    company: str = ""
    job_title: str = ""
    email: str = ""
    business_phone: str = ""
    mobile_phone: str = ""


Payload = Appointment | Task | Contact


def payload_span(payload: Payload) -> tuple[datetime | None, datetime | None]:
    """(start, end) the window test uses (``Window.in_scope``), the one rule for both sides and
    every connector: appointments their times, to-dos start and due (or start when there is no
    due date), contacts none (always in scope)."""
    if isinstance(payload, Appointment):
        return payload.start, payload.end
    if isinstance(payload, Task):
        return payload.start, payload.due or payload.start
    return None, None


def payload_dict(payload: Payload) -> dict[str, Any]:
    """JSON-ready dict of a payload (datetimes as ISO strings, enums as values). Attendees only
    when there are some: the hashes of payloads without them stay what they were before attendees
    existed (no pair looks changed after an upgrade)."""
    out: dict[str, Any] = {}
    for f in fields(payload):
        value = getattr(payload, f.name)
        if f.name == "attendees":
            if not value:
                continue
            value = [[a.email, a.name, a.response] for a in value]
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, StrEnum):
            value = value.value
        out[f.name] = value
    return out


CLIPPED = "…"  # the last character of a text a side cut to what it can store
_CLIP_MIN = 1000  # shorter texts are never taken for clipped ones


def same_value(a: object, b: object) -> bool:
    """Equal at the precision both sides keep: times to the second (Exchange keeps no fraction,
    a PSA may: PostgreSQL ``now()``), and a text one side stored clipped (``…`` at the end of a
    long text whose start is the other) counts as the text it was cut from."""
    if a == b:
        return True
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a.replace(microsecond=0) == b.replace(microsecond=0)
    if isinstance(a, str) and isinstance(b, str):
        short, long = (a, b) if len(a) <= len(b) else (b, a)
        return len(short) >= _CLIP_MIN and short.endswith(CLIPPED) and long.startswith(short[:-1])
    return False


def payload_hash(payload: Payload) -> str:
    """Stable content hash: equal payloads hash equal across processes and versions of Python.
    Times count to the second (``same_value``), so a fraction one side drops is no change."""
    doc = {"type": type(payload).__name__, **payload_dict(payload)}
    for name in list(doc):
        when = getattr(payload, name, None)
        if isinstance(when, datetime) and when.microsecond:
            doc[name] = when.replace(microsecond=0).isoformat()
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


UNCONFIRMED = "?"  # prefix of an exchange_hash taken from what was sent, not from what Exchange holds


def unconfirmed_hash(payload: Payload) -> str:
    """The ``Mapping.exchange_hash`` of an item just created: CreateItem answers only its id and
    change key, so the hash is of the payload as sent. When the item is first seen by a sync, the
    engine takes what Exchange holds as the baseline if the change key is still the create's (no
    edit since, only the server's own normalising), else compares with what was sent."""
    return UNCONFIRMED + payload_hash(payload)


def exchange_baseline(mapping_hash: str, mapping_change_key: str, item_change_key: str,
                      item_hash: str) -> str:
    """The Exchange hash to compare a seen item with (resolves ``unconfirmed_hash``)."""
    if not mapping_hash.startswith(UNCONFIRMED):
        return mapping_hash
    return item_hash if item_change_key == mapping_change_key else mapping_hash[len(UNCONFIRMED):]


def all_fields(payload: Payload) -> tuple[str, ...]:
    """Every field name of a payload that a write to Exchange carries (what a repair of an
    unreadable item sends): attendees are never written to Exchange."""
    return tuple(f.name for f in fields(payload) if f.name != "attendees")


def fields_to_write(item: ExchangeItem, desired: Payload) -> tuple[str, ...]:
    """What an overwrite of ``item`` with ``desired`` sends: the fields that differ, or every
    field when the item is unreadable (its payload is a placeholder, nothing in it can be trusted)."""
    return all_fields(desired) if item.unreadable else changed_fields(item.payload, desired)


def changed_fields(old: Payload, new: Payload) -> tuple[str, ...]:
    """Names of the fields whose values differ (same payload type expected)."""
    if type(old) is not type(new):
        return tuple(f.name for f in fields(new))
    # field by field, without dataclasses.asdict: its deep copies were most of a no-op cycle's CPU
    return tuple(f.name for f in fields(new) if not same_value(getattr(old, f.name), getattr(new, f.name)))


# --- the two views the engine compares ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The sync window of one cycle (SPEC section 4 "Window")."""

    now: datetime
    past_start: datetime  # now - past_days: items ending before this are out of scope
    recurring_end: datetime  # now + recurring_future_days: occurrences starting after are out

    def in_scope(self, start: datetime | None, end: datetime | None) -> bool:
        """Single items: everything not ended before ``past_start`` (all future ones included)."""
        reference = end or start
        return reference is None or reference >= self.past_start


@dataclass(frozen=True, slots=True)
class PsaRecord:
    """One in-scope row of the PSA, as the connector reads it."""

    kind: Kind
    psa_key: str
    payload: Payload
    last_modified: datetime | None = None
    exchange_key: str | None = None  # IMPORTED rows: the Exchange item they mirror


@dataclass(frozen=True, slots=True)
class ExchangeItem:
    """One item of an Exchange folder, as the adapter reads it."""

    folder: FolderKind
    item_id: str
    change_key: str
    payload: Payload
    psa_key: str | None = None  # our extended property; None on items the daemon did not create
    categories: tuple[str, ...] = ()
    uid: str | None = None  # calendar items: the iCalendar UID
    exchange_key: str | None = None  # calendar items: UID, or UID@original-start for occurrences
    is_recurring_master: bool = False
    last_modified: datetime | None = None
    # the adapter could not read the item's content (e.g. a calendar item without a start) but it
    # carries our PSA key: it is kept, with a placeholder payload (``unreadable_payload``), so that
    # the sync knows it is there; the engine repairs it from the PSA, never re-creates or deletes
    # it for being unreadable. Items without our key that cannot be read are skipped by adapters.
    unreadable: bool = False
    # calendar items and tasks: the reminder as Exchange has it, as a ``reminder code``
    # (``engine.rules.reminder_code``: "off", minutes before start, or a task's reminder time),
    # None when the adapter does not read reminders; ``reminder_written`` is the code the daemon
    # last wrote (kept beside the item), None when it never wrote one. The two differing means the
    # user changed the reminder: it is theirs from then on (SYNC_RULES "Reminders").
    reminder: str | None = None
    reminder_written: str | None = None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unreadable_payload(folder: FolderKind, subject: str = "") -> Payload:
    """The placeholder payload of an unreadable item: the type its folder holds, with only the
    subject (or a contact's surname), as far as it could be read, for people reading a plan."""
    if folder is FolderKind.CALENDAR:
        return Appointment(subject, EPOCH, EPOCH)
    if folder is FolderKind.TASKS:
        return Task(subject)
    return Contact("", subject)


@dataclass(frozen=True, slots=True)
class Mapping:
    """What the state store remembers of one synced pair, as of the last successful write."""

    kind: Kind
    psa_key: str
    folder: FolderKind
    item_id: str
    change_key: str
    psa_hash: str  # payload_hash of the PSA side when last synced
    # payload_hash of the Exchange side when last synced; after a create that was not re-read,
    # ``unconfirmed_hash`` of what was sent (see there)
    exchange_hash: str
    exchange_key: str | None = None  # IMPORTED: the Exchange identity


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemError:
    """One item that failed while the rest of its batch went on."""

    key: str  # psa_key, exchange_key or item_id: whatever names the item to an operator
    code: str  # stable reason, e.g. "ErrorInvalidPropertyValue", "invalid_row"
    message: str
    retryable: bool = False


@dataclass(slots=True)
class Counts:
    exported: int = 0
    imported: int = 0
    updated: int = 0
    deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"exported": self.exported, "imported": self.imported, "updated": self.updated,
                "deleted": self.deleted}


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One change the daemon made, for ``exchangectl history``."""

    at: datetime
    mailbox: str
    side: str  # "exchange" | "psa"
    action: str  # "create" | "update" | "delete" | "adopt"
    kind: Kind
    key: str  # psa_key or exchange_key
    item_id: str | None
    fields: tuple[str, ...]
    reason: str
    cycle_id: str = ""
    subject: str = ""  # what the item is called (appointment subject, contact name), as written


@dataclass(slots=True)
class CycleOutcome:
    """What one sync cycle of one user did; the scheduler records it in status."""

    result: str  # "ok" | "partial" | "held_back" | "error"
    counts: Counts = field(default_factory=Counts)
    error: str | None = None  # one line for status and mail when result is "error"
    item_errors: list[ItemError] = field(default_factory=list)
    held_back_deletes: int = 0
    # the stable ``errors.ExchangedError.reason`` of an "error" outcome (None: unknown); the daemon
    # keys error mails on it, so one failure mailed once, a different one mailed again
    reason: str | None = None
    # items created/updated/deleted by (kind, side): the metric exchanged_items_written_total
    written: dict[tuple[str, str], int] = field(default_factory=dict)
    # items found on the other side by their key and taken over (no write): a first cycle that
    # adopts was synced before (e.g. the state store was lost), so it is no "now synced" news
    adopted: int = 0
