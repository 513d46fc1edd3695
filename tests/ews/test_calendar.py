"""CalendarView contract: recurring series expanded, exceptions, truncation and range limits."""

from __future__ import annotations

import datetime as dt

import pytest
from exchangelib import CalendarItem, EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.errors import ErrorCalendarViewRangeTooBig
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    AbsoluteYearlyPattern,
    DailyPattern,
    Recurrence,
    RelativeMonthlyPattern,
    RelativeYearlyPattern,
    WeeklyPattern,
)

UTC = EWSTimeZone("UTC")
BERLIN = EWSTimeZone("Europe/Berlin")
DAY0 = EWSDateTime(2026, 12, 1, 0, 0, tzinfo=UTC)


def _series(account, folder, subject: str, start: EWSDateTime, recurrence: Recurrence) -> CalendarItem:
    item = CalendarItem(
        account=account,
        folder=folder,
        subject=subject,
        start=start,
        end=start + dt.timedelta(hours=1),
        recurrence=recurrence,
    )
    item.save(send_meeting_invitations="SendToNone")
    return item


def _view(folder, start: EWSDateTime, days: int, max_items: int | None = None) -> list[CalendarItem]:
    return list(folder.view(start=start, end=start + dt.timedelta(days=days), max_items=max_items))


def test_daily_series_of_20_gives_10_occurrences_in_10_days(account, calendar) -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    master = _series(
        account,
        calendar,
        "daily",
        start,
        Recurrence(pattern=DailyPattern(interval=1), start=EWSDate(2026, 12, 1), number=20),
    )
    seen = _view(calendar, DAY0, 10)
    assert len(seen) == 10
    assert all(o.type == "Occurrence" and o.subject == "daily" for o in seen)
    assert [o.start.astimezone(BERLIN).hour for o in seen] == [9] * 10
    assert len({o.id for o in seen}) == 10
    got = calendar.get(id=master.id)
    assert got.type == "RecurringMaster" and got.recurrence.boundary.number == 20
    assert len(_view(calendar, DAY0, 40)) == 20


def test_weekly_series_keeps_local_time_across_dst(account, calendar) -> None:
    start = EWSDateTime(2027, 3, 15, 9, 0, tzinfo=BERLIN)  # DST starts 2027-03-28 in Berlin
    _series(
        account,
        calendar,
        "weekly",
        start,
        Recurrence(
            pattern=WeeklyPattern(interval=1, weekdays=[1, 3]),
            start=EWSDate(2027, 3, 15),
            end=EWSDate(2027, 4, 30),
        ),
    )
    seen = _view(calendar, EWSDateTime(2027, 3, 14, 0, 0, tzinfo=UTC), 30)
    assert [o.start.astimezone(BERLIN).hour for o in seen] == [9] * len(seen)
    assert [o.start.astimezone(BERLIN).isoweekday() for o in seen][:4] == [1, 3, 1, 3]
    assert len(seen) == 9  # Mon+Wed from Mar 15 up to and including Apr 12


def test_monthly_and_yearly_patterns(account, calendar) -> None:
    s = EWSDateTime(2026, 12, 1, 8, 0, tzinfo=UTC)
    _series(
        account,
        calendar,
        "abs-monthly",
        s,
        Recurrence(
            pattern=AbsoluteMonthlyPattern(interval=1, day_of_month=31), start=EWSDate(2026, 12, 1), number=3
        ),
    )
    _series(
        account,
        calendar,
        "rel-monthly",
        s,
        Recurrence(
            pattern=RelativeMonthlyPattern(interval=2, weekday=5, week_number=5),
            start=EWSDate(2026, 12, 1),
            number=2,
        ),
    )
    _series(
        account,
        calendar,
        "abs-yearly",
        s,
        Recurrence(
            pattern=AbsoluteYearlyPattern(day_of_month=24, month=12), start=EWSDate(2026, 12, 1), number=2
        ),
    )
    _series(
        account,
        calendar,
        "rel-yearly",
        s,
        Recurrence(
            pattern=RelativeYearlyPattern(weekday=4, week_number=1, month=1),
            start=EWSDate(2026, 12, 1),
            number=1,
        ),
    )
    seen = _view(calendar, DAY0, 500)
    by_subject: dict[str, list[dt.date]] = {}
    for o in seen:
        by_subject.setdefault(o.subject, []).append(o.start.date())
    assert by_subject["abs-monthly"] == [dt.date(2026, 12, 31), dt.date(2027, 1, 31), dt.date(2027, 2, 28)]
    assert by_subject["rel-monthly"] == [dt.date(2026, 12, 25), dt.date(2027, 2, 26)]  # last Friday
    assert by_subject["abs-yearly"] == [dt.date(2026, 12, 24), dt.date(2027, 12, 24)]
    assert by_subject["rel-yearly"] == [dt.date(2027, 1, 7)]  # first Thursday of January


def test_deleted_and_modified_occurrences(account, calendar) -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC)
    master = _series(
        account,
        calendar,
        "series",
        start,
        Recurrence(pattern=DailyPattern(interval=1), start=EWSDate(2026, 12, 1), number=5),
    )
    occurrences = _view(calendar, DAY0, 10)
    occurrences[1].delete(send_meeting_cancellations="SendToNone")
    moved = occurrences[2]
    moved.subject = "moved"
    moved.start = moved.start + dt.timedelta(hours=2)
    moved.end = moved.end + dt.timedelta(hours=2)
    moved.save(update_fields=["subject", "start", "end"], send_meeting_invitations="SendToNone")
    seen = _view(calendar, DAY0, 10)
    assert len(seen) == 4
    exc = [o for o in seen if o.subject == "moved"]
    assert len(exc) == 1 and exc[0].type == "Exception" and exc[0].start.hour == 11
    got = calendar.get(id=master.id)
    assert len(got.deleted_occurrences) == 1 and got.deleted_occurrences[0].start == start + dt.timedelta(
        days=1
    )
    assert len(got.modified_occurrences) == 1
    assert got.modified_occurrences[0].original_start == start + dt.timedelta(days=2)


def test_single_items_overlapping_the_view(account, calendar) -> None:
    for n, (h0, h1) in enumerate([(-2, -1), (-1, 1), (5, 6), (240, 241)]):
        CalendarItem(
            account=account,
            folder=calendar,
            subject=f"single {n}",
            start=DAY0 + dt.timedelta(hours=h0),
            end=DAY0 + dt.timedelta(hours=h1),
        ).save(send_meeting_invitations="SendToNone")
    assert sorted(o.subject for o in _view(calendar, DAY0, 10)) == ["single 1", "single 2"]


def test_max_entries_truncates(account, calendar) -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC)
    _series(
        account,
        calendar,
        "many",
        start,
        Recurrence(pattern=DailyPattern(interval=1), start=EWSDate(2026, 12, 1), number=30),
    )
    seen = _view(calendar, DAY0, 40, max_items=7)
    assert len(seen) == 7
    assert seen[0].start == start


def test_range_over_two_years_is_refused(account, calendar) -> None:
    with pytest.raises(ErrorCalendarViewRangeTooBig):
        _view(calendar, DAY0, 3 * 365)


def test_find_item_without_view_returns_masters(account, calendar) -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC)
    _series(
        account,
        calendar,
        "master-only",
        start,
        Recurrence(pattern=DailyPattern(interval=1), start=EWSDate(2026, 12, 1), number=5),
    )
    found = list(calendar.all())
    assert len(found) == 1 and found[0].type == "RecurringMaster"


def test_occurrence_by_index_and_master_lookup(account, calendar) -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC)
    master = _series(
        account,
        calendar,
        "indexed",
        start,
        Recurrence(pattern=DailyPattern(interval=2), start=EWSDate(2026, 12, 1), number=4),
    )
    third = master.occurrence(index=3)
    third.refresh()
    assert third.start == start + dt.timedelta(days=4) and third.type == "Occurrence"
    first = _view(calendar, DAY0, 3)[0]
    back = first.recurring_master()
    back.refresh()
    assert back.id == master.id and back.type == "RecurringMaster"
