"""The per-kind rules of SPEC section 4 as small pure functions.

* ``FLOW_BACK``: the fields of a PSA-owned kind whose Exchange-side edits are written back to the
  PSA (every other Exchange edit of a PSA-owned item is overwritten from the PSA).
* ``import_skip_reason`` / ``render_import``: which Exchange appointments are imported and what
  the PSA row looks like per import mode.
* ``payload_span`` / ``in_scope``: the window test, the same for both sides.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from exchanged.model import (
    Appointment,
    ExchangeItem,
    ImportMode,
    Kind,
    Payload,
    ShowAs,
    Task,
    Window,
    payload_span,
)

from .settings import UserSettings

# Exchange edits of these fields flow back to the PSA (SPEC 4: "start/end changes flow back",
# "start/due date and completion flow back"); every other field of a PSA-owned item is the PSA's.
FLOW_BACK: dict[Kind, tuple[str, ...]] = {
    Kind.APPOINTMENT: ("start", "end"),
    Kind.TODO: ("start", "due", "completed"),
}

PRIVATE_SUBJECT = "Private appointment"
BUSY_SUBJECT = "Busy"

_OCCURRENCE_KEY = re.compile(r"@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def is_occurrence_key(exchange_key: str) -> bool:
    """True for ``UID@original-start`` keys (see ``model.occurrence_key``)."""
    return bool(_OCCURRENCE_KEY.search(exchange_key))


def in_scope(window: Window, payload: Payload, *, occurrence: bool = False) -> bool:
    """Items ending before ``past_start`` are out; single future items are all in; occurrences of
    a recurring series only up to ``recurring_end``."""
    start, end = payload_span(payload)
    if not window.in_scope(start, end):
        return False
    return not (occurrence and start is not None and start > window.recurring_end)


def scope_changes_at(window: Window, payload: Payload, *, occurrence: bool = False) -> datetime | None:
    """The earliest ``now`` after ``window.now`` at which ``in_scope`` of this payload changes
    (the window slides with time, its widths stay), or None if it never does: an item in scope
    leaves when ``past_start`` passes its end; an occurrence after ``recurring_end`` enters when
    ``recurring_end`` reaches its start; nothing out of scope at the past side comes back."""
    start, end = payload_span(payload)
    reference = end or start
    if reference is None or reference < window.past_start:
        return None
    if occurrence and start is not None and start > window.recurring_end:
        return start - (window.recurring_end - window.now)
    return reference + (window.now - window.past_start)


def item_is_occurrence(item: ExchangeItem) -> bool:
    key = item.exchange_key
    return key is not None and key != item.uid and is_occurrence_key(key)


def import_skip_reason(item: ExchangeItem, settings: UserSettings) -> str | None:
    """Why this foreign Exchange appointment is not imported, or None when it is."""
    p = item.payload
    if not isinstance(p, Appointment):
        return "not an appointment"
    if settings.import_appointments is ImportMode.NONE:
        return "import_appointments is none"
    if p.show_as is ShowAs.FREE and not settings.import_free_time:
        return "shown as free and import_free_time is off"
    if p.show_as in settings.skip_show_as:
        return f"shown as {p.show_as.value} (skip_show_as)"
    if p.is_private and settings.skip_private:
        return "private (skip_private)"
    if p.is_all_day and settings.skip_all_day:
        return "all-day (skip_all_day)"
    hit = sorted(set(item.categories) & settings.skip_categories)
    if hit:
        return f"category {hit[0]!r} (skip_categories)"
    return None


def render_import(item: ExchangeItem, settings: UserSettings) -> Appointment:
    """The PSA row of an imported Exchange appointment, per import mode."""
    p = item.payload
    assert isinstance(p, Appointment)
    if p.is_private:  # SPEC 4: "imported as 'Private appointment' with no details"
        return Appointment(PRIVATE_SUBJECT, p.start, p.end, is_all_day=p.is_all_day, show_as=p.show_as,
                           is_private=True)
    if settings.import_appointments is ImportMode.NO_DETAILS:  # a busy block: start and end only
        return Appointment(BUSY_SUBJECT, p.start, p.end, is_all_day=p.is_all_day, show_as=p.show_as)
    return p


# --- reminders --------------------------------------------------------------------------------

REMINDER_OFF = "off"
REMINDER_KINDS = frozenset({Kind.APPOINTMENT, Kind.SERVICE_CALL, Kind.TODO})


def reminder_anchor(payload: Payload) -> datetime | None:
    """What a reminder counts back from: a calendar item's start, a to-do's start (else due)."""
    if isinstance(payload, Appointment):
        return payload.start
    if isinstance(payload, Task):
        return payload.start or payload.due
    return None


def reminder_code(kind: Kind, payload: Payload, settings: UserSettings) -> str:
    """The reminder the settings give an item, as the code ``ExchangeItem.reminder`` uses: "off",
    the minutes before the start of a calendar item ("15"), or a task's reminder time in UTC
    ("2027-03-13T20:45:00Z", Outlook reminds tasks at a time); a completed to-do has none."""
    minutes = settings.reminder_minutes.of(kind)
    anchor = reminder_anchor(payload)
    if minutes is None or anchor is None or (isinstance(payload, Task) and payload.completed is not None):
        return REMINDER_OFF
    if isinstance(payload, Task):
        return (anchor - timedelta(minutes=minutes)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(minutes)


def reminder_for_create(kind: Kind, payload: Payload, settings: UserSettings, now: datetime) -> str | None:
    """A new item's reminder: the setting's, "off" for one that has already started (Outlook would
    pop an overdue reminder for each)."""
    if kind not in REMINDER_KINDS:
        return None
    anchor = reminder_anchor(payload)
    if anchor is None or anchor <= now:
        return REMINDER_OFF
    return reminder_code(kind, payload, settings)


def reminder_to_write(kind: Kind, payload: Payload, item: ExchangeItem, settings: UserSettings,
                      now: datetime) -> str | None:
    """The reminder an existing item of ours is to get, or None to leave it. The PSA does not own
    the reminder: one the user changed in Outlook (it differs from what the daemon last wrote) is
    kept. Else the setting's reminder is written when it differs (the setting changed, the to-do
    moved); items that have started are left as they are."""
    if kind not in REMINDER_KINDS or item.reminder is None or item.unreadable:
        return None  # the adapter reads no reminders
    if item.reminder_written is not None and item.reminder != item.reminder_written:
        return None  # changed by the user: theirs
    anchor = reminder_anchor(payload)
    if anchor is None or anchor <= now:
        return None
    desired = reminder_code(kind, payload, settings)
    return None if desired == item.reminder else desired


def merge_flow_back(kind: Kind, psa: Payload, exchange: Payload) -> Payload:
    """The PSA payload with the flow-back fields as Exchange has them (when that stays valid)."""
    names = FLOW_BACK.get(kind, ())
    if not names or type(psa) is not type(exchange):
        return psa
    merged = replace(psa, **{n: getattr(exchange, n) for n in names})  # type: ignore[arg-type]
    if isinstance(merged, Appointment) and merged.end < merged.start:
        return psa  # never write an impossible appointment back; the PSA's times win
    return merged


__all__ = [
    "BUSY_SUBJECT",
    "FLOW_BACK",
    "PRIVATE_SUBJECT",
    "REMINDER_KINDS",
    "REMINDER_OFF",
    "import_skip_reason",
    "in_scope",
    "is_occurrence_key",
    "item_is_occurrence",
    "merge_flow_back",
    "payload_span",
    "reminder_code",
    "reminder_for_create",
    "reminder_to_write",
    "render_import",
    "scope_changes_at",
]
