"""The typed actions of a plan, and the plan itself.

Each action names one write on one side (or one state-only change) with the ``reason`` an operator
reads in ``exchangectl plan`` and ``history``. Actions that leave a pair in sync carry the
``mapping`` the runner stores when the write succeeded; the runner replaces the hash of the side
it wrote (and the item id/change key of an Exchange result) with what the write returned, so the
mapping always describes what is really there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exchanged.model import Contact, FolderKind, Kind, Mapping, Payload, payload_dict


@dataclass(frozen=True, slots=True)
class ExchangeCreate:
    kind: Kind
    psa_key: str
    folder: FolderKind
    payload: Payload
    reason: str
    mapping: Mapping  # item_id/change_key/exchange_hash filled in from the result
    reminder: str | None = None  # the reminder code the item gets (rules.reminder_code)
    replaces: str | None = None  # a re-create: the item id the mapping had (ports.NewItem.replaces)
    side = "exchange"
    verb = "create"


@dataclass(frozen=True, slots=True)
class ExchangeUpdate:
    kind: Kind
    psa_key: str
    folder: FolderKind
    item_id: str
    change_key: str
    payload: Payload  # the full wanted payload; only ``fields`` are sent
    fields: tuple[str, ...]  # may be empty when only ``categories`` is written
    reason: str
    mapping: Mapping
    # the item's whole category list to write (the configured ``sync.category`` added to what the
    # item has); None: the categories are left as they are
    categories: tuple[str, ...] | None = None
    # the reminder code to write (the setting changed and the user had not changed ours); None: leave it
    reminder: str | None = None
    side = "exchange"
    verb = "update"


@dataclass(frozen=True, slots=True)
class ExchangeDelete:
    kind: Kind
    key: str  # the psa_key (a duplicate or an orphan may have no mapping)
    folder: FolderKind
    item_id: str
    reason: str
    forget: str | None = None  # mapping (psa_key) to drop when the delete is done
    subject: str = ""  # for people reading the plan
    side = "exchange"
    verb = "delete"


@dataclass(frozen=True, slots=True)
class PsaCreate:
    """An Exchange appointment imported as a new PSA row."""

    exchange_key: str
    payload: Payload
    reason: str
    mapping: Mapping  # psa_key/psa_hash filled in from the created row
    replaces: str | None = None  # mapping of a PSA row deleted by a user, dropped on success
    kind: Kind = Kind.IMPORTED
    side = "psa"
    verb = "create"


@dataclass(frozen=True, slots=True)
class PsaUpdate:
    kind: Kind
    psa_key: str
    payload: Payload  # the full wanted payload; only ``fields`` are written
    fields: tuple[str, ...]
    reason: str
    mapping: Mapping
    exchange_key: str | None = None
    # the write moves the pair out of the window (an Exchange user moved it into the past): the
    # mapping is dropped on success instead of kept, as for any pair that left the window
    leaves_window: bool = False
    side = "psa"
    verb = "update"


@dataclass(frozen=True, slots=True)
class PsaDelete:
    kind: Kind
    psa_key: str
    reason: str
    exchange_key: str | None = None
    forget: str | None = None
    subject: str = ""  # for people reading the plan
    side = "psa"
    verb = "delete"


@dataclass(frozen=True, slots=True)
class Adopt:
    """State only: remember (or refresh) a pair that already agrees on both sides."""

    mapping: Mapping
    reason: str
    refresh: bool = False  # bookkeeping only (hashes caught up): not journaled
    side = "state"
    verb = "adopt"

    @property
    def kind(self) -> Kind:
        return self.mapping.kind

    @property
    def psa_key(self) -> str:
        return self.mapping.psa_key


@dataclass(frozen=True, slots=True)
class Forget:
    """State only: drop a mapping whose pair left the window or is gone from both sides."""

    kind: Kind
    psa_key: str
    reason: str
    side = "state"
    verb = "forget"


Action = ExchangeCreate | ExchangeUpdate | ExchangeDelete | PsaCreate | PsaUpdate | PsaDelete | Adopt | Forget
Delete = ExchangeDelete | PsaDelete
WRITES = (ExchangeCreate, ExchangeUpdate, ExchangeDelete, PsaCreate, PsaUpdate, PsaDelete)


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a guard noticed; ``code`` is an ``errors`` reason (e.g. ``side_looks_empty``)."""

    code: str
    kind: Kind | None
    message: str


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    held_back: list[Delete] = field(default_factory=list)  # deletes a guard kept back
    findings: list[Finding] = field(default_factory=list)

    @property
    def writes(self) -> list[Action]:
        return [a for a in self.actions if isinstance(a, WRITES)]

    def is_empty(self) -> bool:
        return not self.actions and not self.held_back

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``exchangectl plan``."""
        return {
            "actions": [describe(a) for a in self.actions],
            "held_back": [describe(a) for a in self.held_back],
            "findings": [{"code": f.code, "kind": f.kind.value if f.kind else None, "message": f.message}
                         for f in self.findings],
        }


def action_key(action: Action) -> str:
    """The key an operator knows the item by."""
    if isinstance(action, ExchangeDelete):
        return action.key
    if isinstance(action, PsaCreate):
        return action.exchange_key
    return action.psa_key


def action_item_id(action: Action) -> str | None:
    if isinstance(action, ExchangeUpdate | ExchangeDelete):
        return action.item_id
    mapping = getattr(action, "mapping", None)
    return mapping.item_id if mapping is not None and mapping.item_id else None


def action_fields(action: Action) -> tuple[str, ...]:
    if isinstance(action, ExchangeUpdate) and action.categories is not None:
        return (*action.fields, "categories")
    if isinstance(action, ExchangeUpdate | PsaUpdate):
        return action.fields
    if isinstance(action, ExchangeCreate | PsaCreate):
        return tuple(payload_dict(action.payload))
    return ()


def title(payload: Payload) -> str:
    """What a person calls the item: the subject, or a contact's name."""
    if isinstance(payload, Contact):
        return f"{payload.given_name} {payload.surname}".strip()
    return payload.subject


def action_subject(action: Action) -> str:
    if isinstance(action, ExchangeDelete | PsaDelete):
        return action.subject
    payload = getattr(action, "payload", None)
    return title(payload) if payload is not None else ""


def describe(action: Action) -> dict[str, Any]:
    return {
        "subject": action_subject(action),
        "side": action.side,
        "action": action.verb,
        "kind": action.kind.value,
        "key": action_key(action),
        "item_id": action_item_id(action),
        "fields": list(action_fields(action)),
        "reason": action.reason,
    }
