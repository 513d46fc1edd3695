"""Reminders (sync.reminder_minutes): set at create, follow the setting, the user's own kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from exchanged.engine import ReminderMinutes, UserSettings
from exchanged.engine.rules import reminder_code, reminder_for_create, reminder_to_write
from exchanged.model import Appointment, ExchangeItem, FolderKind, Kind, Task

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
SOON = Appointment("Visit", NOW + timedelta(days=1), NOW + timedelta(days=1, hours=1))
PAST = Appointment("Done", NOW - timedelta(days=1), NOW - timedelta(hours=23))
DEFAULTS = UserSettings()
THIRTY = UserSettings(reminder_minutes=ReminderMinutes(appointments=30, todos=10))


def item(reminder: str | None, written: str | None, payload: Appointment | Task = SOON) -> ExchangeItem:
    folder = FolderKind.TASKS if isinstance(payload, Task) else FolderKind.CALENDAR
    return ExchangeItem(folder, "id", "ck", payload, psa_key="appointment:1", reminder=reminder,
                        reminder_written=written)


def test_codes_follow_outlook_defaults() -> None:
    assert reminder_code(Kind.APPOINTMENT, SOON, DEFAULTS) == "15"
    assert reminder_code(Kind.SERVICE_CALL, SOON, DEFAULTS) == "15"
    task = Task("Call", start=NOW + timedelta(hours=5), due=NOW + timedelta(hours=6))
    assert reminder_code(Kind.TODO, task, DEFAULTS) == "off"  # tasks: none by default
    assert reminder_code(Kind.TODO, task, THIRTY) == "2026-12-06T12:50:00Z"  # 10 minutes before its start
    assert reminder_code(Kind.TODO, Task("Filed", due=task.due, completed=NOW), THIRTY) == "off"


def test_create_sets_the_setting_but_never_on_what_has_started() -> None:
    assert reminder_for_create(Kind.APPOINTMENT, SOON, DEFAULTS, NOW) == "15"
    assert reminder_for_create(Kind.APPOINTMENT, PAST, DEFAULTS, NOW) == "off"
    assert reminder_for_create(Kind.CONTACT, SOON, DEFAULTS, NOW) is None


def test_a_changed_setting_updates_ours_and_keeps_the_users() -> None:
    assert reminder_to_write(Kind.APPOINTMENT, SOON, item("15", "15"), THIRTY, NOW) == "30"
    assert reminder_to_write(Kind.APPOINTMENT, SOON, item("60", "15"), THIRTY, NOW) is None  # the user's
    assert reminder_to_write(Kind.APPOINTMENT, SOON, item("30", "30"), THIRTY, NOW) is None  # as it should be
    assert reminder_to_write(Kind.APPOINTMENT, SOON, item("15", None), THIRTY, NOW) == "30"  # from before
    assert reminder_to_write(Kind.APPOINTMENT, PAST, item("15", "15"), THIRTY, NOW) is None  # started
    assert reminder_to_write(Kind.APPOINTMENT, SOON, item(None, None), THIRTY, NOW) is None  # not read
