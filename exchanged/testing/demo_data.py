"""Exchange-side sample data for `exchanged demo` and the end-to-end tests.

These appointments live only in Exchange, as a user would have made them in Outlook, so that the
import rules have something to show: an ordinary meeting, a private one (imported without details),
one shown as Free (imported unless `import_free_time: false`), and a recurring series (expanded
into occurrences up to `recurring_future_days`). They are written with the unmodified exchangelib
client through the bundled EWS server, exactly as a user's client would.
"""

from __future__ import annotations

from datetime import datetime, timedelta

ENGLISH_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def seed_demo_calendar(url: str, ca_file: str, username: str, password: str, mailbox: str,
                       now: datetime) -> int:
    """Create the sample Exchange-only appointments in `mailbox`; returns how many were created."""
    from exchangelib import (
        IMPERSONATION,
        Account,
        CalendarItem,
        Configuration,
        Credentials,
        EWSDateTime,
        EWSTimeZone,
        FailFast,
    )
    from exchangelib.protocol import BaseProtocol
    from exchangelib.recurrence import DailyPattern, Recurrence

    from exchanged.testing.tls import ca_adapter_class

    BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(ca_file)
    config = Configuration(service_endpoint=url, credentials=Credentials(username, password),
                           auth_type="basic", retry_policy=FailFast())
    account = Account(mailbox, config=config, autodiscover=False, access_type=IMPERSONATION,
                      default_timezone=EWSTimeZone("UTC"))
    utc = EWSTimeZone("UTC")

    def at(days: int, hour: int, minutes: int = 0) -> EWSDateTime:
        day = (now + timedelta(days=days)).replace(hour=hour, minute=minutes, second=0, microsecond=0)
        return EWSDateTime(day.year, day.month, day.day, day.hour, day.minute, tzinfo=utc)

    items = [
        CalendarItem(account=account, folder=account.calendar, subject="Quarterly review with Fabrikam",
                     body="Agenda: renewals, open tickets.", location="Room 2",
                     start=at(1, 9), end=at(1, 10), legacy_free_busy_status="Busy"),
        CalendarItem(account=account, folder=account.calendar, subject="Dentist",
                     body="Private note", start=at(2, 14), end=at(2, 15), sensitivity="Private",
                     legacy_free_busy_status="OOF"),
        CalendarItem(account=account, folder=account.calendar, subject="Optional: lunch & learn",
                     start=at(3, 12), end=at(3, 13), legacy_free_busy_status="Free"),
    ]
    series_start = at(0, 8, 30)
    items.append(CalendarItem(
        account=account, folder=account.calendar, subject="Daily stand-up",
        start=series_start, end=series_start + timedelta(minutes=15), legacy_free_busy_status="Busy",
        recurrence=Recurrence(pattern=DailyPattern(interval=1), start=series_start.date(),
                              number=20),
    ))
    results = account.bulk_create(folder=account.calendar, items=items,
                                  send_meeting_invitations="SendToNone")
    failures = [r for r in results if isinstance(r, Exception)]
    if failures:
        raise RuntimeError(f"seeding the demo calendar of {mailbox} failed: {failures[0]}")
    return len(results)
