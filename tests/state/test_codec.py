"""Mirror items survive the trip through the state database's JSON exactly (property-based)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from exchanged.model import Appointment, Contact, ExchangeItem, FolderKind, ShowAs, Task
from exchanged.state.codec import decode_item, encode_item, parse_ts, ts

texts = st.text(st.characters(codec="utf-8"), max_size=40)
times = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                     timezones=st.just(UTC))
payloads = st.one_of(
    st.builds(Appointment, texts, times, times, texts, texts, st.booleans(), st.sampled_from(ShowAs),
              st.booleans()),
    st.builds(Task, texts, texts, st.none() | times, st.none() | times, st.none() | times),
    st.builds(Contact, texts, texts, texts, texts, texts, texts, texts),
)
items = st.builds(ExchangeItem, st.sampled_from(FolderKind), texts, texts, payloads, st.none() | texts,
                  st.lists(texts, max_size=3).map(tuple), st.none() | texts, st.none() | texts,
                  st.booleans(), st.none() | times, st.booleans(), st.none() | texts, st.none() | texts)


@given(items)
def test_items_round_trip(item: ExchangeItem) -> None:
    assert decode_item(encode_item(item)) == item


def test_times_are_stored_in_utc_and_sort_as_text() -> None:
    cet = timezone(timedelta(hours=1))
    assert ts(datetime(2026, 11, 29, 13, 0, tzinfo=cet)) == "2026-11-29T12:00:00.000000Z"
    assert ts(datetime(2026, 11, 29, 12, 0)) == "2026-11-29T12:00:00.000000Z"  # naive: taken as UTC
    early, late = datetime(2026, 1, 1, 9, tzinfo=UTC), datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert str(ts(early)) < str(ts(late))
    assert parse_ts("2026-11-29T12:00:00Z") == datetime(2026, 11, 29, 12, tzinfo=UTC)
