"""What one user's cycle is asked to do: the effective ``sync:`` settings, and the window."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from exchanged.model import ImportMode, Kind, ShowAs, Window


@dataclass(frozen=True, slots=True)
class ReminderMinutes:
    """``sync.reminder_minutes``: minutes before the start (a to-do: its start, else its due time)
    at which Outlook reminds; None: no reminder. Defaults as Outlook's: 15 minutes for calendar
    items, none for tasks (see docs/CONFIG.md)."""

    appointments: int | None = 15
    service_calls: int | None = 15
    todos: int | None = None

    def of(self, kind: Kind) -> int | None:
        return {Kind.APPOINTMENT: self.appointments, Kind.SERVICE_CALL: self.service_calls,
                Kind.TODO: self.todos}.get(kind)


@dataclass(frozen=True, slots=True)
class UserSettings:
    """The effective ``sync:`` settings of one user; field names are the config keys."""

    appointments_export: bool = True
    contacts_owned: bool = True
    service_calls_export: bool = True
    todos: bool = True
    public_folder_all_contacts: bool = False
    import_appointments: ImportMode = ImportMode.ALL_DETAILS
    import_free_time: bool = True
    past_days: int = 7
    recurring_future_days: int = 30
    category: str = "PSA"
    max_deletes_per_cycle: int = 25
    skip_show_as: frozenset[ShowAs] = frozenset()
    skip_private: bool = False
    skip_all_day: bool = False
    skip_categories: frozenset[str] = frozenset()
    reminder_minutes: ReminderMinutes = ReminderMinutes()

    @classmethod
    def from_config(cls, sync: Any) -> UserSettings:
        """Build from the config's effective ``sync:`` section (``config.SyncConfig``).

        The engine does not import the config module; every field here must be a key of it, by
        the same name (tests/config/test_settings_mapping.py): a key renamed on one side fails
        at once, never falls back to a default. Keys the engine does not use are ignored.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(sync, f.name)
            if f.name == "import_appointments":
                value = ImportMode(value)
            elif f.name == "skip_show_as":
                value = frozenset(ShowAs(v) for v in value)
            elif f.name == "skip_categories":
                value = frozenset(str(v) for v in value)
            elif f.name == "reminder_minutes":
                value = ReminderMinutes(**{f.name: getattr(value, f.name) for f in fields(ReminderMinutes)})
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class UserSpec:
    """One enabled user: the mailbox, the PSA resource it mirrors, and its settings."""

    mailbox: str
    psa_resource: str
    settings: UserSettings = UserSettings()
    time_zone: str | None = None  # users[].time_zone (IANA); None: the mailbox's own, from Exchange


def window(now: datetime, settings: UserSettings) -> Window:
    return Window(
        now=now,
        past_start=now - timedelta(days=settings.past_days),
        recurring_end=now + timedelta(days=settings.recurring_future_days),
    )


def enabled_kinds(settings: UserSettings) -> frozenset[Kind]:
    """The kinds one user's cycle syncs (the public folder has its own cycle, never a user's)."""
    kinds: set[Kind] = set()
    if settings.appointments_export:
        kinds.add(Kind.APPOINTMENT)
    if settings.service_calls_export:
        kinds.add(Kind.SERVICE_CALL)
    if settings.todos:
        kinds.add(Kind.TODO)
    if settings.contacts_owned:
        kinds.add(Kind.CONTACT)
    if settings.import_appointments is not ImportMode.NONE:
        kinds.add(Kind.IMPORTED)
    return frozenset(kinds)
