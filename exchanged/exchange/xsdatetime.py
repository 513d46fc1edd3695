"""EWS date-times with fractional seconds, read as exchangelib cannot.

Exchange writes ``2026-12-06T06:23:19Z``; grommunio (an Exchange-compatible server) writes
``2026-12-06T06:23:19.632983600Z``, with 7 to 9 fractional digits. exchangelib 5.6 parses a
``Z`` value with ``strptime('%Y-%m-%dT%H:%M:%SZ')`` only: anything with a fraction becomes a
logged "Cannot convert value" and the field ``None``. On such a server every task then reads with
no due date and every cycle rewrites it.

``install()`` (called when the adapter is imported) replaces two parsers, the only places where
exchangelib turns an xs:dateTime text into a value:

* ``EWSDateTime.from_string``: a value with a fraction is parsed with ``datetime.fromisoformat``
  (any number of digits, to the microsecond); a naive one still raises ``NaiveDateTimeNotAllowed``
  so that exchangelib applies the account's zone as it does for whole seconds. Every other value
  goes to exchangelib's own parser unchanged.
* ``DateTimeBackedDateField.from_xml`` (task start and due dates): a value with a UTC offset gives
  the date as written (exchangelib does that only for the exact 25-character form, so
  ``...T00:00:00.0000000+01:00`` would otherwise become the previous day in UTC).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from exchangelib import errors as ews_errors
from exchangelib import ewsdatetime
from exchangelib import fields as ews_fields

_FRACTION = re.compile(r"T\d\d:\d\d:\d\d\.\d+")
_OFFSET = re.compile(r"T[\d:.]+[+-]\d\d:\d\d$")

_original_from_string = ewsdatetime.EWSDateTime.from_string.__func__  # type: ignore[attr-defined]
_original_date_from_xml = ews_fields.DateTimeBackedDateField.from_xml


def parse(text: str) -> dt.datetime:
    """An xs:dateTime with a fraction as an aware UTC ``EWSDateTime`` (``ValueError`` if malformed;
    ``NaiveDateTimeNotAllowed`` without a zone)."""
    value = dt.datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ews_errors.NaiveDateTimeNotAllowed(value)
    utc = ewsdatetime.UTC
    aware = value.astimezone(utc).replace(tzinfo=utc)
    if isinstance(aware, ewsdatetime.EWSDateTime):
        return aware
    return ewsdatetime.EWSDateTime.from_datetime(aware)


def _from_string(cls: Any, date_string: str) -> Any:
    if _FRACTION.search(date_string):
        return parse(date_string)
    return _original_from_string(cls, date_string)


def _date_from_xml(self: Any, elem: Any, account: Any) -> Any:
    val = self._get_val_from_elem(elem)
    if val is not None and _OFFSET.search(val.strip()):
        return dt.datetime.fromisoformat(val.strip()).date()  # the day as written, not in UTC
    return _original_date_from_xml(self, elem, account)


def install() -> None:
    """Make exchangelib read fractional seconds (idempotent)."""
    ewsdatetime.EWSDateTime.from_string = classmethod(_from_string)  # type: ignore[method-assign,assignment]
    ews_fields.DateTimeBackedDateField.from_xml = _date_from_xml  # type: ignore[method-assign]


__all__ = ["install", "parse"]
