"""grommunio's date-times (nine fractional digits): the test server's style and the adapter's reading."""

from __future__ import annotations

from datetime import UTC, date, datetime

from exchangelib.ewsdatetime import EWSDateTime
from exchangelib.fields import DateTimeBackedDateField
from lxml import etree

from exchanged.exchange import convert  # noqa: F401  (installs the parser)
from exchanged.exchange.xsdatetime import parse
from exchanged.testing.ews.soap import grommunio_datetimes

TNS = "http://schemas.microsoft.com/exchange/services/2006/types"


def test_the_test_server_writes_nine_digits_stable_per_value() -> None:
    answer = (b'<t:Task xmlns:t="x"><t:DueDate>2026-12-07T00:00:00Z</t:DueDate>'
              b"<t:LastModifiedTime>2026-12-06T06:23:19Z</t:LastModifiedTime></t:Task>")
    out = grommunio_datetimes(answer)
    assert b"<t:DueDate>2026-12-07T00:00:00.000000000Z</t:DueDate>" in out
    stamp = out.split(b"<t:LastModifiedTime>")[1].split(b"</")[0]
    assert len(stamp) == len(b"2026-12-06T06:23:19.632983600Z") and not stamp.endswith(b".000000000Z")
    assert grommunio_datetimes(answer) == out


def test_fractional_seconds_are_read_to_the_microsecond() -> None:
    assert EWSDateTime.from_string("2026-12-06T06:23:19.632983600Z") == datetime(
        2026, 12, 6, 6, 23, 19, 632983, tzinfo=UTC)
    assert parse("2026-12-06T07:23:19.5+01:00") == datetime(2026, 12, 6, 6, 23, 19, 500000, tzinfo=UTC)
    assert EWSDateTime.from_string("2026-12-06T06:23:19Z") == datetime(2026, 12, 6, 6, 23, 19, tzinfo=UTC)


def test_a_task_date_with_an_offset_and_a_fraction_is_the_day_written() -> None:
    elem = etree.fromstring(f'<t:Task xmlns:t="{TNS}"><t:DueDate>2026-12-07T00:00:00.0000000+01:00'
                            "</t:DueDate></t:Task>")
    field = DateTimeBackedDateField("due_date", field_uri="task:DueDate")
    assert field.from_xml(elem, account=None) == date(2026, 12, 7)
