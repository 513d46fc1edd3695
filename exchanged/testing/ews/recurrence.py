"""Recurring series: expansion into occurrences, and exceptions (modified or deleted occurrences).

Occurrences are computed on the fly in the series' own time zone (StartTimeZone, mapped from the
Windows zone name), so a 09:00 weekly meeting stays at 09:00 local across DST changes. Occurrence
ids encode the master id and the original start, so they stay valid as long as the series does.
Exceptions are kept inside the master's stored XML under a private namespace; Exchange keeps them
as attachments of the master, which clients cannot see either.
"""

from __future__ import annotations

import base64
import calendar
import copy
import datetime as dt
import struct
import zoneinfo
from collections.abc import Iterator
from typing import Any

from lxml import etree

from . import items as it
from .soap import EwsError, fmt_dt, local, parse_dt, sub, t
from .store import INSTRUCTION_NORMAL, INSTRUCTION_OCCURRENCE, ItemRow, id_kind, parse_id

Element = Any
PRIVATE = "urn:exchanged:ews-test"
MAX_OCCURRENCES = 5000  # safety net for NoEnd series far outside any view
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [calendar.month_name[i] for i in range(1, 13)]
_INDEX = {"First": 0, "Second": 1, "Third": 2, "Fourth": 3, "Last": -1}


# -- ids ----------------------------------------------------------------------------------------------
def occurrence_id(master_id: str, original: dt.datetime) -> str:
    """The id of one occurrence: the master's id with the occurrence instruction and its start."""
    stamp = struct.pack(">q", int(original.timestamp()))
    parsed = parse_id(master_id)
    if parsed is None:  # the short form of ids written by an older server
        raw = base64.b64decode(master_id)
        return base64.b64encode(b"EXDO" + raw[4:20] + stamp).decode()
    return parsed.packed(INSTRUCTION_OCCURRENCE, stamp)


def is_occurrence_id(value: str) -> bool:
    return id_kind(value) == b"O"


def parse_occurrence_id(value: str) -> tuple[str, dt.datetime]:
    parsed = parse_id(value)
    if parsed is None:
        raw = base64.b64decode(value)
        master = base64.b64encode(b"EXDI" + raw[4:20]).decode()
        stamp_bytes = raw[20:28]
    else:
        master = parsed.packed(INSTRUCTION_NORMAL)
        stamp_bytes = parsed.extra
    (stamp,) = struct.unpack(">q", stamp_bytes)
    return master, dt.datetime.fromtimestamp(stamp, dt.UTC)


# -- pattern expansion ---------------------------------------------------------------------------------
def series_zone(elem: Element) -> dt.tzinfo:
    tz_el = elem.find(t("StartTimeZone"))
    if tz_el is None:
        tz_el = elem.find(t("MeetingTimeZone"))
    name = None if tz_el is None else (tz_el.get("Id") or tz_el.get("TimeZoneName"))
    if name:
        try:
            from exchangelib.winzone import MS_TIMEZONE_TO_IANA_MAP

            iana = MS_TIMEZONE_TO_IANA_MAP.get(name, name)
            return zoneinfo.ZoneInfo(iana)
        except (ImportError, zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return dt.UTC


def _date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def _weekdays(text: str | None) -> list[int]:
    out: list[int] = []
    for word in (text or "").split():
        if word == "Day":
            out.extend(range(7))
        elif word == "Weekday":
            out.extend(range(5))
        elif word == "WeekendDay":
            out.extend([5, 6])
        elif word in _DAYS:
            out.append(_DAYS.index(word))
    return sorted(set(out))


def _relative_day(year: int, month: int, weekdays: list[int], index: int) -> dt.date | None:
    days = [dt.date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]
    hits = [d for d in days if d.weekday() in weekdays]
    if not hits:
        return None
    return hits[index] if index < len(hits) else hits[-1]


def _clamped(year: int, month: int, day: int) -> dt.date:
    return dt.date(year, month, min(day, calendar.monthrange(year, month)[1]))


def _pattern_dates(pattern: Element, first: dt.date) -> Iterator[dt.date]:
    """Candidate dates of a pattern from the series start date on, in order, unbounded."""
    kind = local(pattern.tag)
    interval = max(int(pattern.findtext(t("Interval")) or "1"), 1)
    if kind == "DailyRecurrence":
        d = first
        while True:
            yield d
            d += dt.timedelta(days=interval)
    elif kind == "WeeklyRecurrence":
        days = _weekdays(pattern.findtext(t("DaysOfWeek"))) or [first.weekday()]
        first_dow = _DAYS.index(pattern.findtext(t("FirstDayOfWeek")) or "Sunday")
        week_start = first - dt.timedelta(days=(first.weekday() - first_dow) % 7)
        ordered = sorted(days, key=lambda wd: (wd - first_dow) % 7)
        while True:
            for wd in ordered:
                d = week_start + dt.timedelta(days=(wd - first_dow) % 7)
                if d >= first:
                    yield d
            week_start += dt.timedelta(weeks=interval)
    elif kind in (
        "AbsoluteMonthlyRecurrence",
        "RelativeMonthlyRecurrence",
        "AbsoluteYearlyRecurrence",
        "RelativeYearlyRecurrence",
    ):
        yearly = "Yearly" in kind
        step = 12 if yearly else interval
        month_name = pattern.findtext(t("Month"))
        month = _MONTHS.index(month_name) + 1 if month_name in _MONTHS else first.month
        y, mth = (first.year, month) if yearly else (first.year, first.month)
        while True:
            if kind.startswith("Absolute"):
                hit: dt.date | None = _clamped(y, mth, int(pattern.findtext(t("DayOfMonth")) or first.day))
            else:
                hit = _relative_day(
                    y,
                    mth,
                    _weekdays(pattern.findtext(t("DaysOfWeek"))),
                    _INDEX.get(pattern.findtext(t("DayOfWeekIndex")) or "First", 0),
                )
            if hit is not None and hit >= first:
                yield hit
            mth += step
            while mth > 12:
                mth -= 12
                y += 1
            if y > first.year + 200:
                return
    else:
        raise EwsError(
            "ErrorInvalidRecurrence", f"Recurrence pattern {kind} is not supported by this test server."
        )


def original_starts(master: Element) -> Iterator[dt.datetime]:
    """UTC original starts of every occurrence of the series, deleted ones included, in order."""
    rec = master.find(t("Recurrence"))
    start = parse_dt(master.findtext(t("Start")))
    if rec is None or start is None:
        return
    zone = series_zone(master)
    local_start = start.astimezone(zone)
    pattern = next((c for c in rec if local(c.tag).endswith("Recurrence")), None)
    boundary = next(
        (c for c in rec if local(c.tag) in ("NoEndRecurrence", "EndDateRecurrence", "NumberedRecurrence")),
        None,
    )
    if pattern is None or boundary is None:
        raise EwsError("ErrorInvalidRecurrence", "A Recurrence needs a pattern and a range.")
    first = _date(boundary.findtext(t("StartDate"))) or local_start.date()
    until = _date(boundary.findtext(t("EndDate"))) if local(boundary.tag) == "EndDateRecurrence" else None
    count = (
        int(boundary.findtext(t("NumberOfOccurrences")) or "0")
        if local(boundary.tag) == "NumberedRecurrence"
        else None
    )
    for n, d in enumerate(_pattern_dates(pattern, first)):
        if until is not None and d > until:
            return
        if count is not None and n >= count:
            return
        if n >= MAX_OCCURRENCES:
            return
        wall = dt.datetime.combine(d, local_start.time().replace(tzinfo=None), tzinfo=zone)
        yield wall.astimezone(dt.UTC)


# -- occurrences and exceptions -----------------------------------------------------------------------
def _deleted(master_xml: Element) -> set[dt.datetime]:
    out: set[dt.datetime] = set()
    deleted = master_xml.find(t("DeletedOccurrences"))
    for d in [] if deleted is None else deleted:
        value = parse_dt(d.findtext(t("Start")))
        if value is not None:
            out.add(value)
    return out


def _exceptions(master_xml: Element) -> dict[dt.datetime, Element]:
    out: dict[dt.datetime, Element] = {}
    for e in master_xml.findall(f"{{{PRIVATE}}}Exception"):
        original = parse_dt(e.get("OriginalStart"))
        if original is not None:
            out[original] = e
    return out


def _occurrence(full: Element, row: ItemRow, original: dt.datetime, exception: Element | None) -> Element:
    start = parse_dt(full.findtext(t("Start")))
    end = parse_dt(full.findtext(t("End")))
    assert start is not None and end is not None
    occ = copy.deepcopy(full)
    for name in (
        "Recurrence",
        "ModifiedOccurrences",
        "DeletedOccurrences",
        "FirstOccurrence",
        "LastOccurrence",
    ):
        it.drop_child(occ, name)
    for e in occ.findall(f"{{{PRIVATE}}}Exception"):
        occ.remove(e)
    occ.find(t("ItemId")).set("Id", occurrence_id(row.id, original))
    it.set_child(occ, "Start", fmt_dt(original))
    it.set_child(occ, "End", fmt_dt(original + (end - start)))
    it.set_child(occ, "OriginalStart", fmt_dt(original))
    it.set_child(occ, "CalendarItemType", "Occurrence")
    if exception is not None:
        it.set_child(occ, "CalendarItemType", "Exception")
        for c in exception:
            it.drop_child(occ, local(c.tag))
            occ.append(copy.deepcopy(c))
    it.order_children(occ)
    return occ


def public_master(full: Element) -> Element:
    for e in full.findall(f"{{{PRIVATE}}}Exception"):
        full.remove(e)
    return full


def in_range(full: Element, row: ItemRow, start: dt.datetime, end: dt.datetime) -> list[Element]:
    """What a CalendarView between start and end shows of this item (the item itself or occurrences)."""
    if full.find(t("Recurrence")) is None:
        s, e = parse_dt(full.findtext(t("Start"))), parse_dt(full.findtext(t("End")))
        if s is not None and e is not None and s < end and (e > start or (s == e and s >= start)):
            return [public_master(full)]
        return []
    deleted = _deleted(full)
    exceptions = _exceptions(full)
    s, e = parse_dt(full.findtext(t("Start"))), parse_dt(full.findtext(t("End")))
    assert s is not None and e is not None
    duration = e - s
    out: list[Element] = []
    for original in original_starts(full):
        if original >= end and not exceptions:
            break
        if original in deleted:
            continue
        exc = exceptions.get(original)
        occ_start, occ_end = original, original + duration
        if exc is not None:
            occ_start = parse_dt(exc.findtext(t("Start"))) or occ_start
            occ_end = parse_dt(exc.findtext(t("End"))) or occ_end
        if occ_start < end and occ_end > start:
            out.append(_occurrence(full, row, original, exc))
        if original >= end + dt.timedelta(days=366):
            break
    return out


def occurrence_at(full: Element, row: ItemRow, original: dt.datetime) -> Element:
    if original in _deleted(full):
        raise EwsError(
            "ErrorItemNotFound", "The specified object was not found in the store (deleted occurrence)."
        )
    for candidate in original_starts(full):
        if candidate == original:
            return _occurrence(full, row, original, _exceptions(full).get(original))
        if candidate > original:
            break
    raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")


def occurrence_by_index(full: Element, row: ItemRow, index: int) -> Element:
    if full.find(t("Recurrence")) is None:
        raise EwsError(
            "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "Item is not a recurring master."
        )
    for n, original in enumerate(original_starts(full), start=1):
        if n == index:
            if original in _deleted(full):
                raise EwsError("ErrorCalendarOccurrenceIsDeletedFromRecurrence", "Occurrence was deleted.")
            return _occurrence(full, row, original, _exceptions(full).get(original))
    raise EwsError("ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange", "Occurrence index is out of range.")


def _check_original(master: Element, original: dt.datetime) -> None:
    for candidate in original_starts(master):
        if candidate == original:
            return
        if candidate > original:
            break
    raise EwsError("ErrorItemNotFound", "The specified occurrence was not found in the series.")


def delete_occurrence(row: ItemRow, original: dt.datetime) -> str:
    master = etree.fromstring(row.xml)
    _check_original(master, original)
    deleted = master.find(t("DeletedOccurrences"))
    if deleted is None:
        deleted = sub(master, t("DeletedOccurrences"))
    d = sub(deleted, t("DeletedOccurrence"))
    sub(d, t("Start"), fmt_dt(original))
    for e in master.findall(f"{{{PRIVATE}}}Exception"):
        if parse_dt(e.get("OriginalStart")) == original:
            master.remove(e)
    _refresh_modified(master, row)
    it.order_children(master)
    return str(etree.tostring(master).decode())


def modify_occurrence(row: ItemRow, original: dt.datetime, updates: list[Element]) -> str:
    master = etree.fromstring(row.xml)
    _check_original(master, original)
    exc = _exceptions(master).get(original)
    if exc is None:
        exc = etree.SubElement(
            master, f"{{{PRIVATE}}}Exception", OriginalStart=fmt_dt(original), nsmap={"x": PRIVATE}
        )
    for upd in updates:
        if not isinstance(upd.tag, str):
            continue
        path = next((c for c in upd if local(c.tag) == "FieldURI"), None)
        source = next((c for c in upd if local(c.tag) == "CalendarItem"), None)
        if path is None:
            raise EwsError("ErrorInvalidPropertyForOperation", "Occurrences take FieldURI updates only here.")
        name = it.field_name(path.get("FieldURI", ""))
        it.drop_child(exc, name)
        if local(upd.tag) == "SetItemField" and source is not None and source.find(t(name)) is not None:
            exc.append(copy.deepcopy(source.find(t(name))))
    it.canonical_values(exc)
    _refresh_modified(master, row)
    it.order_children(master)
    return str(etree.tostring(master).decode())


def _refresh_modified(master: Element, row: ItemRow) -> None:
    it.drop_child(master, "ModifiedOccurrences")
    exceptions = _exceptions(master)
    if not exceptions:
        return
    start, end = parse_dt(master.findtext(t("Start"))), parse_dt(master.findtext(t("End")))
    assert start is not None and end is not None
    mod = sub(master, t("ModifiedOccurrences"))
    for original, exc in sorted(exceptions.items()):
        occ = sub(mod, t("Occurrence"))
        sub(occ, t("ItemId"), Id=occurrence_id(row.id, original), ChangeKey=row.change_key)
        sub(occ, t("Start"), exc.findtext(t("Start")) or fmt_dt(original))
        sub(occ, t("End"), exc.findtext(t("End")) or fmt_dt(original + (end - start)))
        sub(occ, t("OriginalStart"), fmt_dt(original))
