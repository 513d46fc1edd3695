"""Streaming notifications as Exchange serves them: subscriptions, hanging connections, expiry.

``Subscribe`` with a ``StreamingSubscriptionRequest`` registers a subscription on one mailbox's
folders. ``GetStreamingEvents`` then holds its HTTP connection open (chunked transfer encoding) for
``ConnectionTimeout`` minutes (1-30), writing one SOAP envelope per delivery as changes happen, a
keep-alive envelope (``ConnectionStatus`` OK, no notifications) when nothing happened for
``keepalive_s``, and a last one with ``ConnectionStatus`` Closed. Facts of Exchange kept here:

* a subscription expires ``subscription_ttl_s`` after the last connection carrying it ended (or
  after it was made, if none ever did); afterwards ``ErrorSubscriptionNotFound``, as for an id
  this server never issued (subscriptions do not survive a restart);
* at most ``max_connections`` hanging connections per login at a time
  (``ErrorExceededConnectionCount``: Exchange's HangingConnectionLimit, 10 by default);
* at most ``max_subscriptions`` subscription ids per connection (about 200 in Exchange);
* ``X-AnchorMailbox`` / ``X-PreferServerAffinity`` are accepted and recorded per request, so a
  test can check that a group of subscriptions and its connection used one anchor.

Test switches: ``drop_streams()`` cuts every open streaming connection without its last envelope
(a load balancer or a restarting front end), ``expire_subscriptions()`` forgets every
subscription at once. ``minute_s`` scales the minutes of ``ConnectionTimeout`` for tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import now_text
from .soap import Element, EwsError, envelope, error, m, response_root, serialize, sub, success, t
from .store import FolderRow, Store


@dataclass
class StreamingLimits:
    minute_s: float = 60.0  # seconds in a minute of ConnectionTimeout (tests shorten it)
    keepalive_s: float = 30.0  # a keep-alive envelope after this long without events
    subscription_ttl_s: float = 300.0  # a subscription without a connection expires after this
    max_connections: int = 10  # hanging connections per login (HangingConnectionLimit)
    max_subscriptions: int = 200  # subscription ids per GetStreamingEvents
    poll_s: float = 0.05  # how often an open stream looks at the store


@dataclass
class Subscription:
    login: str
    mailbox: str
    seqs: dict[str, int]  # folder id -> last delivered change sequence
    anchor: str | None  # X-AnchorMailbox of the Subscribe request
    folder_mailboxes: frozenset[str] = frozenset()  # the store's mailboxes of the folders
    streams: int = 0  # open connections carrying it
    idle_since: float = field(default_factory=time.monotonic)


@dataclass
class StreamRecord:
    login: str
    anchor: str | None
    affinity: bool
    subscriptions: list[str]
    opened: float
    closed: float | None = None
    ended: str = ""  # "timeout", "dropped", "client"


class Streams:
    """The subscriptions and open streaming connections of one server."""

    def __init__(self, store: Store, limits: StreamingLimits) -> None:
        self.store = store
        self.limits = limits
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._open: dict[str, int] = {}  # login -> open connections
        self._generation = 0  # moved by drop_streams(): open streams end without a word
        self.history: deque[StreamRecord] = deque(maxlen=1000)

    # -- subscriptions ------------------------------------------------------------------------------
    def subscribe(self, login: str, mailbox: str, folders: list[FolderRow], anchor: str | None) -> str:
        sid = uuid.uuid4().hex
        seqs = {f.id: self.store.current_seq(f.mailbox) for f in folders}
        with self._lock:
            self._subs[sid] = Subscription(login, mailbox, seqs, anchor,
                                           frozenset(f.mailbox for f in folders))
        return sid

    def unsubscribe(self, sid: str) -> bool:
        with self._lock:
            return self._subs.pop(sid, None) is not None

    def _alive(self, sid: str, now: float) -> Subscription | None:
        """The subscription, unless it is unknown or expired (then it is forgotten). Lock held."""
        s = self._subs.get(sid)
        if s is None:
            return None
        if s.streams == 0 and now - s.idle_since > self.limits.subscription_ttl_s:
            del self._subs[sid]
            return None
        return s

    def expire_subscriptions(self) -> int:
        with self._lock:
            n = len(self._subs)
            self._subs.clear()
            return n

    def drop_streams(self) -> None:
        with self._lock:
            self._generation += 1

    def subscriptions(self) -> dict[str, Subscription]:
        with self._lock:
            now = time.monotonic()
            return {sid: s for sid in list(self._subs) if (s := self._alive(sid, now)) is not None}

    def open_connections(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._open.items() if v}

    # -- GetStreamingEvents ---------------------------------------------------------------------------
    def open(self, login: str, sids: list[str], timeout_min: int, anchor: str | None,
             affinity: bool) -> tuple[StreamRecord, int] | EwsError:
        """Check and register a new hanging connection; an EwsError answers it at once instead."""
        if not sids:
            return EwsError("ErrorInvalidRequest", "GetStreamingEvents needs at least one SubscriptionId.")
        if len(sids) > self.limits.max_subscriptions:
            return EwsError("ErrorInvalidRequest",
                            f"Too many subscriptions on one connection: {len(sids)}, at most "
                            f"{self.limits.max_subscriptions}.")
        if not 1 <= timeout_min <= 30:
            return EwsError("ErrorInvalidArgument", "ConnectionTimeout must be between 1 and 30 minutes.")
        with self._lock:
            now = time.monotonic()
            for sid in sids:
                s = self._alive(sid, now)
                if s is None:
                    return EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found.")
                if s.login != login:
                    return EwsError("ErrorSubscriptionAccessDenied",
                                    "The subscription belongs to another account.")
            if self._open.get(login, 0) >= self.limits.max_connections:
                return EwsError("ErrorExceededConnectionCount",
                                f"You have exceeded the available concurrent connections for your account "
                                f"({self.limits.max_connections}). Try again once your other requests "
                                f"have completed.")
            self._open[login] = self._open.get(login, 0) + 1
            for sid in sids:
                self._subs[sid].streams += 1
            record = StreamRecord(login, anchor, affinity, list(sids), now)
            self.history.append(record)
            return record, self._generation

    def close(self, record: StreamRecord, ended: str) -> None:
        with self._lock:
            now = time.monotonic()
            record.closed, record.ended = now, ended
            self._open[record.login] = max(0, self._open.get(record.login, 0) - 1)
            for sid in record.subscriptions:
                s = self._subs.get(sid)
                if s is not None:
                    s.streams = max(0, s.streams - 1)
                    if s.streams == 0:
                        s.idle_since = now

    def serve(self, record: StreamRecord, generation: int, timeout_min: int,
              write: Callable[[bytes], None], gone: Callable[[], bool]) -> str:
        """Write envelopes until the connection times out (last envelope: Closed), the server drops
        it, or the client goes away; returns how it ended. ``write`` raises OSError when the
        client is gone."""
        lim = self.limits
        start = time.monotonic()
        deadline = start + timeout_min * lim.minute_s
        last_write = start
        while True:
            now = time.monotonic()
            with self._lock:
                if self._generation != generation:
                    return "dropped"
            if gone():
                return "client"
            with self.store.lock:
                current = self.store.mailbox_seqs()  # one query: which mailboxes changed at all
                events = {sid: self._take(sid, current) for sid in record.subscriptions}
            events = {sid: evs for sid, evs in events.items() if evs}
            lost = [sid for sid in record.subscriptions if not self._known(sid)]
            closing = now >= deadline
            try:
                if lost:
                    write(_error_document(lost))
                    return "expired"
                if events or closing or now - last_write >= lim.keepalive_s:
                    write(_document(events, "Closed" if closing else "OK"))
                    last_write = now
            except OSError:
                return "client"
            if closing:
                return "timeout"
            time.sleep(lim.poll_s)

    def _known(self, sid: str) -> bool:
        with self._lock:
            return sid in self._subs

    def _take(self, sid: str, current: dict[str, int]) -> list[tuple[str, str, FolderRow]]:
        """Events of one subscription since its last delivery (store lock held); ``current``: each
        mailbox's change sequence now. A mailbox whose sequence has not passed what was delivered
        has nothing to deliver (a stream of 200 quiet subscriptions costs no query per poll)."""
        with self._lock:
            s = self._subs.get(sid)
            seqs = dict(s.seqs) if s is not None else {}
            mailboxes = s.folder_mailboxes if s is not None else frozenset()
        if not seqs or all(current.get(mb, 0) <= min(seqs.values()) for mb in mailboxes):
            return []
        out: list[tuple[str, str, FolderRow]] = []
        moved: dict[str, int] = {}
        for fid, seq in seqs.items():
            folder = self.store.folder(fid)
            if folder is None:
                continue
            for kind, _seq, item_id, _row in self.store.item_changes(fid, seq):
                name = {"Create": "CreatedEvent", "Update": "ModifiedEvent", "Delete": "DeletedEvent"}[kind]
                out.append((name, item_id, folder))
            moved[fid] = self.store.current_seq(folder.mailbox)
        with self._lock:
            s = self._subs.get(sid)
            if s is not None:
                s.seqs.update(moved)
        return out


def _document(events: dict[str, list[tuple[str, str, FolderRow]]], status: str) -> bytes:
    env, body = envelope()
    container = response_root(body, "GetStreamingEvents")
    msg = success(container, "GetStreamingEvents")
    if events:
        notifications = sub(msg, m("Notifications"))
        for sid, evs in events.items():
            note = sub(notifications, m("Notification"))
            sub(note, t("SubscriptionId"), sid)
            for name, item_id, folder in evs:
                ev = sub(note, t(name))
                sub(ev, t("TimeStamp"), now_text())
                sub(ev, t("ItemId"), Id=item_id)
                sub(ev, t("ParentFolderId"), Id=folder.id, ChangeKey=folder.change_key)
    sub(msg, m("ConnectionStatus"), status)
    return serialize(env)


def _error_document(sids: list[str]) -> bytes:
    """What Exchange writes when a subscription of an open stream is gone: the error, Closed."""
    env, body = envelope()
    container = response_root(body, "GetStreamingEvents")
    msg = error(container, "GetStreamingEvents",
                EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found."))
    ids = sub(msg, m("ErrorSubscriptionIds"))
    for sid in sids:
        sub(ids, m("SubscriptionId"), sid)
    sub(msg, m("ConnectionStatus"), "Closed")
    return serialize(env)


def error_answer(err: EwsError) -> bytes:
    env, body = envelope()
    error(response_root(body, "GetStreamingEvents"), "GetStreamingEvents", err)
    return serialize(env)


__all__ = ["Element", "StreamingLimits", "Streams", "Subscription", "error_answer"]
