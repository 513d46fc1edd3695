"""EWS streaming notifications for the daemon (``ports.PushSource`` of ``EwsAccount``).

One streaming subscription per mailbox covers its synced folders (Created/Modified/Deleted/Moved/
Copied events). Mailboxes are grouped: one group per set of credentials, at most
``SUBSCRIPTIONS_PER_CONNECTION`` per group, each group made and streamed under its first mailbox
as anchor (``X-AnchorMailbox``, ``X-PreferServerAffinity``, as Microsoft asks for groups of
impersonated subscriptions). Each group holds one hanging ``GetStreamingEvents`` connection of
``CONNECTION_TIMEOUT_MIN`` minutes and opens the next when Exchange closes it; at most
``MAX_CONNECTIONS`` groups (Exchange allows 10 hanging connections per account by default:
room is left for a second node or a restart). Mailboxes beyond that are polled, and say so.

Notifications carry no state: a notification only says "look now" (``sink.changed``). A group
that loses its connection or its subscriptions reconnects or subscribes again and reports every
member ``live`` (the daemon then syncs it normally: SyncFolderItems is the truth); a group that
cannot get a connection (refused, ErrorExceededConnectionCount, unreachable) reports its members
``lost`` and tries again with exponential back-off.

Each stream runs in a worker thread of its own (outside the adapter's ``CapacityLimiter``, which
is for requests) on a private exchangelib protocol, so a connection held for 30 minutes never
takes a session the cycles need.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from exchangelib import Account
from exchangelib.errors import ErrorExceededConnectionCount, ErrorSubscriptionNotFound, EWSError
from exchangelib.protocol import Protocol

from exchanged import errors
from exchanged.exchange.account import own_protocol
from exchanged.exchange.errmap import map_error
from exchanged.exchange.mailbox import FOLDER_CLASSES
from exchanged.exchange.services import GetStreamingEventsOnce, SubscribeAnchored
from exchanged.model import FolderKind
from exchanged.ports import PushSink

log = logging.getLogger("exchanged.exchange")

CONNECTION_TIMEOUT_MIN = 30  # the longest Exchange allows
SUBSCRIPTIONS_PER_CONNECTION = 200  # Microsoft's figure per GetStreamingEvents
MAX_CONNECTIONS = 8  # of the default HangingConnectionLimit of 10 per account
RETRY_MIN_S = 5.0
RETRY_MAX_S = 300.0
EVENT_TYPES = ("CreatedEvent", "ModifiedEvent", "DeletedEvent", "MovedEvent", "CopiedEvent")


class _Gap(Exception):
    """The stream ended without Exchange closing it: a reconnect follows, and a sync after it."""


@dataclass
class _Group:
    login_key: str
    anchor: str
    members: dict[str, frozenset[FolderKind]]
    subs: dict[str, str] = field(default_factory=dict)  # subscription id -> mailbox


def plan_groups(sessions: dict[str, str], mailboxes: dict[str, frozenset[FolderKind]], *,
                per_connection: int = SUBSCRIPTIONS_PER_CONNECTION,
                max_connections: int = MAX_CONNECTIONS) -> tuple[list[_Group], list[str]]:
    """Groups of mailboxes per credentials (``sessions``: mailbox -> credentials key), at most
    ``per_connection`` each and ``max_connections`` in all; and the mailboxes left over."""
    by_login: dict[str, list[str]] = {}
    for mailbox in mailboxes:
        by_login.setdefault(sessions[mailbox], []).append(mailbox)
    groups: list[_Group] = []
    over: list[str] = []
    for login_key, members in by_login.items():
        for i in range(0, len(members), per_connection):
            chunk = members[i:i + per_connection]
            if len(groups) >= max_connections:
                over.extend(chunk)
                continue
            groups.append(_Group(login_key, chunk[0], {m: mailboxes[m] for m in chunk}))
    return groups, over


class EwsPush:
    """Streams notifications for the mailboxes of one ``EwsAccount``."""

    def __init__(self, account: Any) -> None:
        self._acc = account  # EwsAccount (not imported: account.py imports this module)
        self._protocols: list[Any] = []

    async def watch(self, mailboxes: dict[str, frozenset[FolderKind]], sink: PushSink, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        sessions: dict[str, str] = {}
        for mailbox in mailboxes:
            try:
                sessions[mailbox] = self._acc.session_for(mailbox).login
            except errors.ExchangedError as exc:
                sink.lost(mailbox, f"no subscription: {exc}")
        groups, over = plan_groups(sessions, {m: mailboxes[m] for m in sessions})
        for mailbox in over:
            sink.lost(mailbox, f"polled: more mailboxes than {MAX_CONNECTIONS} streaming connections of "
                               f"{SUBSCRIPTIONS_PER_CONNECTION} subscriptions carry")
        try:
            async with trio.open_nursery() as nursery:
                for group in groups:
                    nursery.start_soon(self._serve_group, group, sink)
                task_status.started()
        finally:
            protocols, self._protocols = self._protocols, []
            with trio.CancelScope(shield=True):
                for protocol in protocols:
                    await trio.to_thread.run_sync(protocol.close, abandon_on_cancel=True)

    # -- one group ----------------------------------------------------------------------------------

    async def _serve_group(self, group: _Group, sink: PushSink) -> None:
        delay = RETRY_MIN_S
        stream_account: Any = None
        fresh = False  # subscribed, and no stream has worked since: "not found" then is a failure
        while True:
            try:
                if not group.subs:
                    fresh = True
                    await self._subscribe(group, sink)
                    if not group.subs:
                        raise errors.ExchangeError(f"{group.anchor}: no mailbox of this group could be "
                                                   "subscribed to", mailbox=group.anchor)
                    for mailbox in set(group.subs.values()):
                        sink.live(mailbox)
                if stream_account is None:
                    stream_account = await trio.to_thread.run_sync(self._stream_account, group.anchor)
                await self._stream(group, stream_account, sink)  # Exchange closed it: reconnect at once
                delay, fresh = RETRY_MIN_S, False
            except _Gap as gap:
                fresh = False
                # the subscriptions may live on (Exchange queues their events) or be gone; either
                # way every member gets a normal cycle, and the stream is opened again
                log.info("%s: streaming connection broken (%s); reconnecting", group.anchor, gap)
                for mailbox in set(group.subs.values()):
                    sink.live(mailbox)
                await trio.sleep(min(delay, RETRY_MIN_S))
                delay = min(delay * 2, RETRY_MAX_S)
            except ErrorSubscriptionNotFound as exc:
                group.subs.clear()
                if fresh:  # refused right after subscribing: a failure, not an expiry
                    self._lost(group, sink, f"{type(exc).__name__}: {exc}", delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                else:
                    log.info("%s: streaming subscriptions expired; subscribing again", group.anchor)
            except ErrorExceededConnectionCount:
                self._lost(group, sink, f"the server refuses more streaming connections for "
                           f"{group.login_key} (ErrorExceededConnectionCount; its throttling policy's "
                           "HangingConnectionLimit, 10 by default, counts every node and client of this "
                           "account)", delay)
                group.subs.clear()
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:
                err = exc if isinstance(exc, errors.ExchangedError) else map_error(
                    exc, mailbox=group.anchor, op="GetStreamingEvents", host=self._acc.host,
                    login=group.login_key, auth_type=self._acc.settings.auth_type,
                    timeouts=self._acc.timeouts)
                self._lost(group, sink, str(err), delay)
                group.subs.clear()
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _lost(self, group: _Group, sink: PushSink, why: str, delay: float) -> None:
        log.warning("%s: streaming notifications failed for %d mailbox(es): %s; polling them, "
                    "trying again in %.0f s", group.anchor, len(group.members), why, delay)
        for mailbox in group.members:
            sink.lost(mailbox, f"polled: streaming notifications failed: {why}")

    async def _subscribe(self, group: _Group, sink: PushSink) -> None:
        for mailbox, folders in group.members.items():
            ews = self._acc.ews_account(mailbox)
            ews_folders = [self._acc.distinguished_folder(mailbox, FOLDER_CLASSES[f])
                           for f in sorted(folders) if f in FOLDER_CLASSES]

            def subscribe(ews: Any = ews, ews_folders: list[Any] = ews_folders) -> Any:
                [answer] = list(SubscribeAnchored(account=ews, anchor=group.anchor).call(
                    folders=ews_folders, event_types=EVENT_TYPES))
                if isinstance(answer, Exception):
                    raise answer
                return str(answer)  # the subscription id

            try:
                sid = await self._acc.call(mailbox, "Subscribe", subscribe)
            except errors.ExchangedError as exc:
                sink.lost(mailbox, f"polled: the streaming subscription was refused: {exc}")
                continue
            group.subs[sid] = mailbox

    def _stream_account(self, anchor: str) -> Any:
        """An exchangelib account of the anchor mailbox on a private protocol (its own session)."""
        session = self._acc.session_for(anchor)
        acc = Account(primary_smtp_address=anchor, config=session.config, autodiscover=False,
                      access_type=session.access_type, default_timezone=self._acc.tz)
        # not CachingProtocol's shared one; reads keep exchangelib's timeout (keep-alives come slower
        # than a request's answer)
        protocol = own_protocol(type.__call__(Protocol, config=session.config))
        acc.protocol = protocol
        self._protocols.append(protocol)
        return acc

    async def _stream(self, group: _Group, stream_account: Any, sink: PushSink) -> None:
        """One hanging connection; returns when Exchange closes it (``ConnectionStatus`` Closed)."""
        svc = GetStreamingEventsOnce(account=stream_account)
        subs = dict(group.subs)
        token = trio.lowlevel.current_trio_token()

        def deliver(mailboxes: set[str]) -> None:
            for mailbox in mailboxes:
                sink.changed(mailbox)

        def run() -> str | None:
            try:
                for note in svc.call(subscription_ids=list(subs), connection_timeout=CONNECTION_TIMEOUT_MIN):
                    if isinstance(note, Exception):
                        raise note
                    touched = {subs[note.subscription_id]} if note.events and note.subscription_id in subs \
                        else set()
                    if touched:
                        try:
                            trio.from_thread.run_sync(deliver, touched, trio_token=token)
                        except trio.RunFinishedError:
                            return None
            except EWSError:
                raise  # Exchange answered: not found, over the limit, ...
            except Exception as exc:
                if svc.connected:  # the stream was open and broke: reconnect
                    raise _Gap(f"{type(exc).__name__}: {exc}") from exc
                raise
            return svc.connection_status  # type: ignore[no-any-return]

        cancelled = True
        try:
            status = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            cancelled = False
        finally:
            if cancelled:
                # the worker thread is blocked reading the hanging response and holds the socket's
                # reader lock: closing the response first would wait for that read (until Exchange
                # sends something, up to CONNECTION_TIMEOUT_MIN), freezing the event loop and a
                # stop. shutdown() needs no lock and ends the read at once; then close it.
                _shutdown_socket(getattr(svc, "_streaming_response", None))
                _close_quietly(svc.stop_streaming)
        if status != GetStreamingEventsOnce.CLOSED:
            raise _Gap(f"connection status {status!r}")


def _shutdown_socket(response: Any) -> None:
    """Shut down the socket under a streamed ``requests`` response (urllib3 2 keeps the connection
    on the response while it streams); a no-op when there is none."""
    raw = getattr(response, "raw", None)
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if sock is None:  # through http.client's buffered reader
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: no TLS close_notify
        except OSError:
            pass  # already closed or reset: the read has ended anyway


def _close_quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:  # closing a dead stream may fail in many ways; none matters
        log.debug("closing a streaming connection: %s", exc)
