"""Streaming notifications: a GetStreamingEvents connection stays open and carries each change as
it happens, with keep-alives, ConnectionTimeout, subscription expiry, the hanging-connection limit
and the subscriptions-per-connection limit. Tests that need the server's switches skip against a
real Exchange; the first runs against both.

Nothing here asserts on elapsed time: each test waits for a condition with a generous timeout."""

from __future__ import annotations

import dataclasses
import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorInvalidRequest,
    ErrorSubscriptionNotFound,
)
from exchangelib.services import GetStreamingEvents

from exchanged.testing.ews import EwsTestServer

from .conftest import EwsTarget

UTC = EWSTimeZone("UTC")
T0 = EWSDateTime(2026, 12, 7, 9, 0, tzinfo=UTC)
PATIENCE_S = 30.0  # how long a condition may take to come true (never asserted as a duration)


class SingleShot(GetStreamingEvents):
    """exchangelib's GetStreamingEvents without its retry loop (ErrorExceededConnectionCount would
    shrink the session pool and try again): one request, its errors raised."""

    def _get_elements(self, payload: Any) -> Iterator[Any]:
        try:
            yield from self._response_generator(payload=payload)
        finally:
            self.stop_streaming()


def stream(account: Any, sub_ids: list[str], minutes: int = 1) -> Iterator[Any]:
    return SingleShot(account=account).call(subscription_ids=sub_ids, connection_timeout=minutes)


def wait_until(cond: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {PATIENCE_S} s: {what}")


class Listener:
    """A streaming connection read in a thread: notifications and the way it ended, in queues."""

    def __init__(self, account: Any, sub_ids: list[str], minutes: int = 1) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.ended: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(account, sub_ids, minutes), daemon=True)
        self._thread.start()

    def _run(self, account: Any, sub_ids: list[str], minutes: int) -> None:
        try:
            for note in stream(account, sub_ids, minutes):
                if isinstance(note, Exception):
                    raise note
                for e in note.events:
                    self.events.put((type(e).__name__, e.item_id.id if e.item_id else ""))
        except BaseException as exc:  # handed to the test
            self.ended.put(exc)
            return
        self.ended.put(None)

    def next_event(self) -> tuple[str, str]:
        return self.events.get(timeout=PATIENCE_S)

    def end(self) -> BaseException | None:
        return self.ended.get(timeout=PATIENCE_S)


@pytest.fixture
def limits(emulator: EwsTestServer) -> Iterator[Any]:
    """The server's streaming limits, shortened for a test and put back afterwards."""
    saved = dataclasses.replace(emulator.streaming)
    yield emulator.streaming
    for f in dataclasses.fields(saved):
        setattr(emulator.streaming, f.name, getattr(saved, f.name))
    emulator.expire_subscriptions()


@pytest.fixture(autouse=True)
def roomy_pool(account: Any) -> None:
    """An open stream holds one of exchangelib's sessions for its whole life; exchangelib's default
    pool has one, so the test's own requests would wait for the stream to end."""
    account.protocol.max_connections = 8


def _item(account: Any, folder: Any, subject: str) -> CalendarItem:
    item = CalendarItem(account=account, folder=folder, subject=subject, start=T0,
                        end=T0 + dt.timedelta(hours=1))
    item.save(send_meeting_invitations="SendToNone")
    return item


def test_changes_arrive_on_the_open_connection_as_they_happen(ews: EwsTarget, account: Any,
                                                              calendar: Any) -> None:
    """One connection, three changes made while it is open, three events in order."""
    sub_id = calendar.subscribe_to_streaming()
    listener = Listener(account, [sub_id])
    try:
        item = _item(account, calendar, "notify me")
        assert listener.next_event() == ("CreatedEvent", item.id)
        item.subject = "notify me again"
        item.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
        assert listener.next_event()[0] == "ModifiedEvent"
        item.delete(send_meeting_cancellations="SendToNone")
        assert listener.next_event()[0] == "DeletedEvent"
    finally:
        calendar.unsubscribe(sub_id)


def test_keep_alives_and_the_closing_envelope(emulator: EwsTestServer, limits: Any, ews: EwsTarget,
                                              account: Any, calendar: Any) -> None:
    """Raw HTTP: the answer is chunked; without events the server writes keep-alives
    (ConnectionStatus OK, no notifications) and, after ConnectionTimeout, Closed."""
    limits.minute_s, limits.keepalive_s = 1.0, 0.1
    sub_id = calendar.subscribe_to_streaming()
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
        'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Header>'
        '<t:RequestServerVersion Version="Exchange2016"/></s:Header><s:Body><m:GetStreamingEvents>'
        f'<m:SubscriptionIds><t:SubscriptionId>{sub_id}</t:SubscriptionId></m:SubscriptionIds>'
        '<m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents></s:Body></s:Envelope>')
    resp = requests.post(emulator.url, data=body.encode(), auth=(ews.user, ews.password), stream=True,
                         verify=emulator.ca_file, timeout=PATIENCE_S,
                         headers={"Content-Type": "text/xml; charset=utf-8"})
    try:
        assert resp.status_code == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        docs = resp.content.decode().split("<?xml")[1:]
    finally:
        resp.close()
        calendar.unsubscribe(sub_id)
    statuses = [d.split("ConnectionStatus>")[1].split("<")[0] for d in docs]
    assert len(docs) >= 2 and statuses[-1] == "Closed" and set(statuses[:-1]) == {"OK"}, statuses
    assert not any("Notification>" in d for d in docs)


def test_connection_timeout_ends_the_stream_and_bounds_are_checked(limits: Any, account: Any,
                                                                   calendar: Any) -> None:
    limits.minute_s = 0.5
    sub_id = calendar.subscribe_to_streaming()
    try:
        assert list(stream(account, [sub_id], minutes=1)) == []  # ends by itself: Closed
        with pytest.raises(Exception, match="ConnectionTimeout"):
            list(stream(account, [sub_id], minutes=31))
    finally:
        calendar.unsubscribe(sub_id)


def test_a_subscription_expires_after_its_last_connection(emulator: EwsTestServer, limits: Any,
                                                          account: Any, calendar: Any) -> None:
    """While a connection carries it, a subscription lives on past the expiry time; after the last
    connection ended, it is gone: ErrorSubscriptionNotFound. Changes in between are not kept."""
    # 5 s of connection, far longer than the TTL, with room for the CreateItem below under load
    limits.minute_s, limits.subscription_ttl_s = 2.5, 0.3
    sub_id = calendar.subscribe_to_streaming()
    listener = Listener(account, [sub_id], minutes=2)
    wait_until(lambda: emulator.streaming_stats()["open_connections"], "the stream is open")
    time.sleep(limits.subscription_ttl_s * 3)
    item = _item(account, calendar, "still carried")
    assert listener.next_event() == ("CreatedEvent", item.id)
    assert listener.end() is None
    time.sleep(limits.subscription_ttl_s * 3)  # no connection now: any would renew it
    with pytest.raises(ErrorSubscriptionNotFound):
        list(stream(account, [sub_id]))


def test_the_connection_limit_per_login(emulator: EwsTestServer, limits: Any, account: Any,
                                        calendar: Any) -> None:
    limits.max_connections, limits.minute_s = 2, 5.0
    subs = [calendar.subscribe_to_streaming() for _ in range(3)]
    listeners = [Listener(account, [s]) for s in subs[:2]]
    wait_until(lambda: sum(emulator.streaming_stats()["open_connections"].values()) == 2, "two streams open")
    with pytest.raises(ErrorExceededConnectionCount):
        list(stream(account, [subs[2]]))
    emulator.drop_streams()
    for listener in listeners:
        listener.end()
    wait_until(lambda: not emulator.streaming_stats()["open_connections"], "the streams are closed")
    limits.minute_s = 0.2
    assert list(stream(account, [subs[2]])) == []  # a freed slot is usable again


def test_subscriptions_per_connection_are_limited(limits: Any, account: Any, calendar: Any) -> None:
    limits.max_subscriptions = 2
    subs = [calendar.subscribe_to_streaming() for _ in range(3)]
    with pytest.raises(ErrorInvalidRequest, match="Too many subscriptions"):
        list(stream(account, subs))


def test_a_dropped_stream_ends_without_closing_and_the_subscription_lives_on(
        emulator: EwsTestServer, limits: Any, account: Any, calendar: Any) -> None:
    """The server cuts the connection (no ConnectionStatus Closed); the client may reconnect with
    the same subscription and gets what changed in between, because it has not expired."""
    sub_id = calendar.subscribe_to_streaming()
    listener = Listener(account, [sub_id])
    wait_until(lambda: emulator.streaming_stats()["open_connections"], "the stream is open")
    emulator.set_faults(drop_streams=1)
    listener.end()
    assert emulator.streaming_stats()["connections"][-1]["ended"] == "dropped"
    item = _item(account, calendar, "made while disconnected")
    again = Listener(account, [sub_id])
    assert again.next_event() == ("CreatedEvent", item.id)
    emulator.drop_streams()
    again.end()


def test_an_expired_subscription_ends_an_open_stream(emulator: EwsTestServer, limits: Any,
                                                     account: Any, calendar: Any) -> None:
    sub_id = calendar.subscribe_to_streaming()
    listener = Listener(account, [sub_id])
    wait_until(lambda: emulator.streaming_stats()["open_connections"], "the stream is open")
    emulator.set_faults(expire_subscriptions=1)
    assert isinstance(listener.end(), ErrorSubscriptionNotFound)


def test_anchor_mailbox_and_affinity_headers_are_recorded(emulator: EwsTestServer, limits: Any,
                                                          account: Any, calendar: Any) -> None:
    limits.minute_s = 0.2
    sub_id = calendar.subscribe_to_streaming()
    assert list(stream(account, [sub_id])) == []
    last = emulator.streaming_stats()["connections"][-1]
    assert last["anchor"] == account.primary_smtp_address.lower() and last["affinity"] is True


def test_a_stream_of_quiet_mailboxes_reads_no_folder_per_poll(tmp_path: Any) -> None:
    """An open stream looks at the store every ``poll_s``. Quiet mailboxes must cost no folder
    reads: before, each poll read every folder of every subscription (200 subscriptions: 400
    queries every 50 ms per connection; with 1,000 mailboxes pushed the test server took three
    times the daemon's CPU and halved bench/run's users per node). A change is read for the
    subscription of its mailbox only."""
    from exchanged.testing.ews.store import Store
    from exchanged.testing.ews.streaming import StreamingLimits, Streams

    mailboxes = [f"user{n:02}@example.test" for n in range(30)]
    store = Store(str(tmp_path / "ews.sqlite3"), mailboxes)
    streams = Streams(store, StreamingLimits(minute_s=0.3, poll_s=0.01))
    sids = []
    for mb in mailboxes:
        folders = [store.distinguished(mb, name) for name in ("calendar", "tasks")]
        sids.append(streams.subscribe("svc@example.test", mb, [f for f in folders if f], None))
    reads: list[str] = []
    real_changes = store.item_changes

    def counted(folder_id: str, since: int) -> Any:
        reads.append(folder_id)
        return real_changes(folder_id, since)

    store.item_changes = counted  # type: ignore[method-assign]
    written: list[bytes] = []

    def one_stream() -> None:
        opened = streams.open("svc@example.test", sids, 1, None, False)
        assert not isinstance(opened, Exception)
        record, generation = opened
        assert streams.serve(record, generation, 1, written.append, lambda: False) == "timeout"
        streams.close(record, "timeout")

    one_stream()  # some 30 polls of 30 quiet subscriptions
    assert reads == []
    calendar = store.distinguished(mailboxes[7], "calendar")
    assert calendar is not None
    store.begin()
    store.add_item(mailboxes[7], calendar.id, "CalendarItem", "<t:CalendarItem/>")
    store.commit()
    one_stream()
    tasks = store.distinguished(mailboxes[7], "tasks")
    assert tasks is not None
    assert set(reads) == {calendar.id, tasks.id}  # the changed mailbox's subscription only
    assert any(b"CreatedEvent" in w for w in written)
