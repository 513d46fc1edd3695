"""The real adapter against the EWS test server: throttling, lost replies, TLS, logins,
impersonation, per-user credentials, the public folder, and what is sent on the wire."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
from exchangelib import FailFast

from exchanged import errors
from exchanged.exchange import EwsAccount, ExchangeSettings, acheck_connect, check_connect, open_account
from exchanged.exchange import mailbox as mailbox_mod
from exchanged.exchange.account import MAX_THROTTLED_ATTEMPTS
from exchanged.exchange.settings import UserCredentials
from exchanged.model import (
    Appointment,
    Contact,
    ExchangeItem,
    FolderKind,
    Kind,
    Task,
    exchange_baseline,
    payload_hash,
    unconfirmed_hash,
)
from exchanged.ports import ItemUpdate, NewItem
from exchanged.testing.ews import DEFAULT_PASSWORD, EwsTestServer

from .conftest import ALICE, BOB

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def appt(n: int) -> NewItem:
    return NewItem(Kind.APPOINTMENT, f"appointment:{n}",
                   Appointment(subject=f"Visit {n}", start=T0 + timedelta(hours=n),
                               end=T0 + timedelta(hours=n, minutes=30)))


def requests(server: EwsTestServer) -> dict[str, int]:
    return dict(server.stats()["requests"])


# --- throttling and lost replies ---------------------------------------------------------------------


async def test_throttling_is_obeyed_and_the_call_succeeds(ews_server: EwsTestServer,
                                                          account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(1)])
    ews_server.reset_stats()
    ews_server.set_faults(throttle_next=2, back_off_ms=50)
    found = await mb.find_by_psa_keys(FolderKind.CALENDAR, ["appointment:1"])
    assert list(found) == ["appointment:1"]
    stats = ews_server.stats()
    assert stats["throttled"] == 2
    # two refused FindItem, then the one that worked: no request skipped the back-off, none extra
    assert stats["requests"]["FindItem"] == 3
    gate = account.session_for(ALICE).gate
    assert gate.waits >= 2  # every retry waited for the gate to open


async def test_throttling_that_does_not_end_raises_throttled(ews_server: EwsTestServer,
                                                             account: EwsAccount) -> None:
    ews_server.set_faults(throttle_next=MAX_THROTTLED_ATTEMPTS + 5, back_off_ms=10)
    with pytest.raises(errors.Throttled) as info:
        await account.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    assert info.value.back_off_s is not None
    assert ALICE in errors.present(info.value).message
    assert requests(ews_server)["FindItem"] == MAX_THROTTLED_ATTEMPTS


async def test_the_back_off_is_shared_by_every_mailbox_of_the_sync_account(
        ews_server: EwsTestServer, account: EwsAccount) -> None:
    assert account.session_for(ALICE) is account.session_for(BOB)
    ews_server.set_faults(throttle_next=1, back_off_ms=30)
    await account.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    gate = account.session_for(BOB).gate
    assert gate.not_before > 0  # bob's requests wait for the same gate


def _throttled_while_every_session_is_busy(protocol: Any, service: Any) -> bool:
    """exchangelib's own reaction to ErrorServerBusy, in a thread, while the protocol's other
    sessions are out with other requests; True when it came back (False: it hangs)."""
    from exchangelib.errors import ErrorServerBusy

    held = [protocol.get_session() for _ in range(2)]  # two requests of other mailboxes in flight
    came_back = threading.Event()

    def throttled() -> None:
        with contextlib.suppress(ErrorServerBusy):  # FailFast: raised to our call() and its gate
            service._handle_backoff(ErrorServerBusy("busy", back_off=1.0))
        came_back.set()

    threading.Thread(target=throttled, daemon=True).start()
    try:
        return came_back.wait(30)  # a hang guard: it returns at once or never
    finally:
        for session in held:
            protocol.release_session(session)


async def test_a_throttled_answer_never_deadlocks_the_session_pool(account: EwsAccount) -> None:
    """exchangelib shrinks its session pool on ErrorServerBusy under a lock it takes again when no
    session is free: the thread hung for good, and every thread of the protocol behind it (a
    ``sync --wait`` that never answered during a throttling storm)."""
    from exchangelib.services import GetFolder

    from exchanged.exchange.streaming import EwsPush

    ews = account.ews_account(ALICE)
    assert _throttled_while_every_session_is_busy(ews.protocol, GetFolder(account=ews)), \
        "the request protocol deadlocked in exchangelib's decrease_poolsize"
    stream = EwsPush(account)._stream_account(ALICE)
    assert _throttled_while_every_session_is_busy(stream.protocol, GetFolder(account=stream)), \
        "the streaming protocol deadlocked in exchangelib's decrease_poolsize"


async def test_find_by_psa_keys_lists_the_folder_when_that_is_fewer_requests(
        ews_server: EwsTestServer, account: EwsAccount) -> None:
    """120 keys searched one by one cost 3 FindItem (50 per restriction); with a folder hint of 5
    keyed items the adapter lists the keyed items once and finds the same ones, the older of two
    items with one key included."""
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(3)])
    [dup] = await mb.create(FolderKind.CALENDAR, [appt(1)])  # a second item with key appointment:1
    await mb.create(FolderKind.CALENDAR, [NewItem(Kind.APPOINTMENT, "", appt(9).payload)])  # no key
    keys = [f"appointment:{n}" for n in range(120)]
    ews_server.reset_stats()
    by_key = await mb.find_by_psa_keys(FolderKind.CALENDAR, keys)
    assert requests(ews_server).get("FindItem") == 3
    ews_server.reset_stats()
    listed = await mb.find_by_psa_keys(FolderKind.CALENDAR, keys, folder_hint=5)
    assert requests(ews_server).get("FindItem") == 1
    assert sorted(listed) == sorted(by_key) == ["appointment:0", "appointment:1", "appointment:2"]
    assert {k: i.item_id for k, i in listed.items()} == {k: i.item_id for k, i in by_key.items()}
    assert isinstance(dup, ExchangeItem) and listed["appointment:1"].item_id != dup.item_id
    ews_server.reset_stats()  # a big folder and few keys: searching by key stays cheaper
    assert await mb.find_by_psa_keys(FolderKind.CALENDAR, keys[:2], folder_hint=5000) == {
        k: by_key[k] for k in keys[:2]}
    assert requests(ews_server).get("FindItem") == 1


async def test_lost_create_reply_adopts_instead_of_duplicating(ews_server: EwsTestServer,
                                                               account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    await mb.time_zone()  # read once an hour (GetUserConfiguration): not the request to lose here
    ews_server.reset_stats()
    ews_server.set_faults(drop_next=1)
    results = await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(3)])
    assert [r.psa_key for r in results] == [f"appointment:{n}" for n in range(3)]  # type: ignore[union-attr]
    assert ews_server.stats()["dropped"] == 1
    reqs = requests(ews_server)
    assert reqs["CreateItem"] == 1  # the server had created all three: nothing was sent again
    assert reqs["FindItem"] == 1  # adoption by extended property
    pages = [p async for p in mb.changes(FolderKind.CALENDAR, None)]
    keys = sorted(i.psa_key for p in pages for i in p.upserted if i.psa_key)
    assert keys == [f"appointment:{n}" for n in range(3)]


async def test_lost_update_reply_is_sent_again(ews_server: EwsTestServer, account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    ews_server.reset_stats()
    ews_server.set_faults(drop_next=1)
    new = dataclasses.replace(item.payload, subject="renamed")  # type: ignore[type-var]
    [res] = await mb.update(FolderKind.CALENDAR,
                            [ItemUpdate(item.item_id, item.change_key, new, ("subject",))])
    assert isinstance(res, ExchangeItem) and res.payload.subject == "renamed"  # type: ignore[union-attr]
    assert requests(ews_server)["UpdateItem"] == 2


async def test_a_refused_connection_is_exchange_unavailable(settings: ExchangeSettings) -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    acc = open_account(dataclasses.replace(settings, port=port))
    try:
        with pytest.raises(errors.ExchangeUnavailable) as info:
            await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.TASKS, ["x"])
    finally:
        await acc.aclose()
    assert "refused" in str(info.value) and ALICE in str(info.value)


@contextlib.contextmanager
def _listener(answer: bytes | None) -> Iterator[int]:
    """A TCP port that accepts and then says ``answer`` to each connection (None: nothing, ever)."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            if answer is not None:
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        for conn in held:
            conn.close()


async def test_a_server_that_never_answers_is_a_timeout_said_as_such(settings: ExchangeSettings) -> None:
    # plain HTTP: the request goes out and no answer comes (server.read_timeout_s)
    with _listener(None) as port:
        acc = open_account(dataclasses.replace(settings, port=port, allow_plaintext=True,
                                               connect_timeout_s=0.5, read_timeout_s=0.7))
        try:
            with pytest.raises(errors.ExchangeUnavailable) as info:
                await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.TASKS, ["x"])
        finally:
            await acc.aclose()
    assert f"no answer from localhost:{port} within 0.7 s (server.read_timeout_s)" in str(info.value)
    assert "closed before" not in str(info.value)
    # TLS: the handshake never completes (server.connect_timeout_s)
    with _listener(None) as port:
        acc = open_account(dataclasses.replace(settings, port=port, connect_timeout_s=0.5,
                                               read_timeout_s=0.7))
        try:
            with pytest.raises(errors.ExchangeError) as info:
                await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.TASKS, ["x"])
        finally:
            await acc.aclose()
    assert f"no answer from localhost:{port} within 0.5 s (the TLS handshake; server.connect_timeout_s)" \
        in str(info.value)


async def test_a_plaintext_port_where_tls_is_expected_is_said_plainly(settings: ExchangeSettings) -> None:
    with _listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n") as port:
        acc = open_account(dataclasses.replace(settings, port=port))
        try:
            with pytest.raises(errors.TlsError) as info:
                await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.TASKS, ["x"])
        finally:
            await acc.aclose()
    shown = errors.present(info.value)
    assert f"localhost:{port} does not speak TLS" in shown.message
    assert "HTTPSConnectionPool" not in shown.line() and "WRONG_VERSION" not in shown.line()
    assert "server.port" in shown.hint


# --- TLS, logins, impersonation -------------------------------------------------------------------


async def test_tls_without_the_ca_is_refused_with_an_operator_message(settings: ExchangeSettings) -> None:
    acc = open_account(dataclasses.replace(settings, ca_bundle=None))
    try:
        with pytest.raises(errors.TlsError) as info:
            await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    finally:
        await acc.aclose()
    shown = errors.present(info.value)
    assert "certificate not trusted" in shown.message and ALICE in shown.message
    assert "server.ca_bundle" in shown.hint


def test_an_unreadable_ca_bundle_is_a_clear_config_result(settings: ExchangeSettings) -> None:
    results = check_connect(dataclasses.replace(settings, ca_bundle="/nonexistent/ca.pem"))
    assert [(r.subject, r.ok) for r in results] == [("config", False)]
    assert "server.ca_bundle /nonexistent/ca.pem" in results[0].message


async def test_wrong_password_is_auth_failed(settings: ExchangeSettings) -> None:
    acc = open_account(dataclasses.replace(settings, password="Hunter2-secret"))
    try:
        with pytest.raises(errors.AuthFailed) as info:
            await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    finally:
        await acc.aclose()
    assert "svc@example.test" in str(info.value) and "Hunter2" not in str(info.value)


async def test_impersonation_denied(ews_server: EwsTestServer, settings: ExchangeSettings) -> None:
    # alice may log in, but she is not allowed to impersonate bob
    acc = open_account(dataclasses.replace(settings, username=ALICE, password=DEFAULT_PASSWORD))
    try:
        with pytest.raises(errors.ImpersonationDenied) as info:
            await acc.mailbox(BOB).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    finally:
        await acc.aclose()
    assert BOB in errors.present(info.value).message


async def test_unknown_mailbox_is_mailbox_not_found(account: EwsAccount) -> None:
    with pytest.raises(errors.MailboxNotFound) as info:
        async for _ in account.mailbox("nobody@example.test").changes(FolderKind.CALENDAR, None):
            pass
    assert "nobody@example.test" in errors.present(info.value).message


async def test_per_user_credentials(ews_server: EwsTestServer, settings: ExchangeSettings) -> None:
    per_user = dataclasses.replace(
        settings, use_for_all_users=False, username="", password="",
        user_credentials={ALICE: UserCredentials(ALICE, DEFAULT_PASSWORD)})
    acc = open_account(per_user)
    try:
        [item] = await acc.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(1)])
        assert isinstance(item, ExchangeItem)
        with pytest.raises(errors.AuthFailed) as info:
            await acc.mailbox(BOB).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
        assert "password_file" in errors.present(info.value).hint
        results = await acc.check([ALICE, BOB])
    finally:
        await acc.aclose()
    assert [(r.subject, r.ok) for r in results] == [(ALICE, True), (BOB, False)]


async def test_ntlm_login(settings: ExchangeSettings) -> None:
    results = await acheck_connect(dataclasses.replace(settings, auth_type="ntlm"))
    assert all(r.ok for r in results), results


def test_check_connect_reports_each_step(settings: ExchangeSettings) -> None:
    results = check_connect(settings, [ALICE, "nobody@example.test"])
    by = {r.subject: r for r in results}
    assert by["login"].ok and by["ews"].ok and by[ALICE].ok
    assert "Exchange Server 2016" in by["ews"].message
    assert not by["nobody@example.test"].ok
    assert "nobody@example.test" in by["nobody@example.test"].message
    bad = check_connect(dataclasses.replace(settings, password="nope"), [ALICE])
    assert [(r.subject, r.ok) for r in bad] == [("login", False), (ALICE, False)]


# --- what goes on the wire --------------------------------------------------------------------------


async def test_pinned_version_and_pool_size(ews_server: EwsTestServer, account: EwsAccount) -> None:
    await account.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    session = account.session_for(ALICE)
    assert session.config.max_connections == account.limiter.total_tokens == 3
    assert isinstance(session.config.retry_policy, FailFast) and session.config.retry_policy.fail_fast
    assert "ConvertId" not in requests(ews_server)  # no version guessing when server.version is set


async def test_quiet_folder_costs_one_request(ews_server: EwsTestServer, account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.TASKS, [])
    [first] = [p async for p in mb.changes(FolderKind.TASKS, None)]
    ews_server.reset_stats()
    pages = [p async for p in mb.changes(FolderKind.TASKS, first.sync_state)]
    assert len(pages) == 1 and not pages[0].upserted
    assert requests(ews_server) == {"SyncFolderItems": 1}


async def test_contact_update_keeps_numbers_we_do_not_manage(ews_server: EwsTestServer,
                                                              account: EwsAccount) -> None:
    from exchangelib.indexed_properties import PhoneNumber

    mb = account.mailbox(ALICE)
    contact = Contact(given_name="Ann", surname="Lee", business_phone="111", mobile_phone="222")
    [c] = await mb.create(FolderKind.CONTACTS, [NewItem(Kind.CONTACT, "contact:1", contact)])
    assert isinstance(c, ExchangeItem)
    ews = account.ews_account(ALICE)

    def add_home_phone() -> None:
        item = next(iter(ews.fetch(ids=[(c.item_id, None)], only_fields=["phone_numbers"])))
        item.phone_numbers = [*item.phone_numbers, PhoneNumber(label="HomePhone", phone_number="333")]
        item.save(update_fields=["phone_numbers"])

    await trio.to_thread.run_sync(add_home_phone)
    new = dataclasses.replace(contact, business_phone="444", mobile_phone="")
    [res] = await mb.update(FolderKind.CONTACTS, [ItemUpdate(c.item_id, "", new,
                                                              ("business_phone", "mobile_phone"))])
    assert isinstance(res, ExchangeItem) and res.payload == new

    def phones() -> dict[str, str]:
        item = next(iter(ews.fetch(ids=[(c.item_id, None)], only_fields=["phone_numbers"])))
        return {p.label: p.phone_number for p in item.phone_numbers or []}

    assert await trio.to_thread.run_sync(phones) == {"BusinessPhone": "444", "HomePhone": "333"}


async def test_nothing_sends_invitations(ews_server: EwsTestServer, account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    [item] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(item, ExchangeItem)
    new = dataclasses.replace(item.payload, subject="x")  # type: ignore[type-var]
    await mb.update(FolderKind.CALENDAR, [ItemUpdate(item.item_id, item.change_key, new, ("subject",))])
    await mb.delete(FolderKind.CALENDAR, [item.item_id])
    assert ews_server.invitations() == []  # the server records every mode other than SendToNone


async def test_calendar_view_splits_a_truncated_range(ews_server: EwsTestServer, account: EwsAccount,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(5)])
    monkeypatch.setattr(mailbox_mod, "VIEW_MAX", 2)
    view = await mb.calendar_view(T0 - timedelta(days=1), T0 + timedelta(days=1), details=False)
    assert sorted(i.psa_key or "" for i in view) == [f"appointment:{n}" for n in range(5)]


async def test_an_odd_item_in_a_folder_is_skipped_not_fatal(ews_server: EwsTestServer,
                                                           account: EwsAccount) -> None:
    from exchangelib import Message

    mb = account.mailbox(ALICE)
    await mb.create(FolderKind.CALENDAR, [appt(1)])
    folder = account.distinguished_folder(ALICE, mailbox_mod.FOLDER_CLASSES[FolderKind.CALENDAR])
    ews = account.ews_account(ALICE)

    def add_message() -> None:
        Message(account=ews, folder=folder, subject="a mail where it does not belong").save()

    await trio.to_thread.run_sync(add_message)
    items = [i for p in [p async for p in mb.changes(FolderKind.CALENDAR, None)] for i in p.upserted]
    assert [i.psa_key for i in items] == ["appointment:1"]


async def test_an_item_without_start_is_kept_if_ours_and_skipped_if_foreign(
        ews_server: EwsTestServer, account: EwsAccount, caplog: pytest.LogCaptureFixture) -> None:
    """docs/SYNC_RULES.md "Unreadable items": ours are kept (flagged) so that the sync repairs
    them instead of exporting them again; a foreign one is skipped with a log line, as before."""
    from exchangelib import CalendarItem

    from exchanged.exchange import convert

    mb = account.mailbox(ALICE)
    [ours] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(ours, ExchangeItem)
    folder = account.distinguished_folder(ALICE, mailbox_mod.FOLDER_CLASSES[FolderKind.CALENDAR])
    ews = account.ews_account(ALICE)

    def add_foreign() -> str:
        item = CalendarItem(account=ews, folder=folder, subject="Dentist", start=convert.to_ews(T0),
                            end=convert.to_ews(T0 + timedelta(hours=1)))
        item.save(send_meeting_invitations="SendToNone")
        return str(item.id)

    foreign = await trio.to_thread.run_sync(add_foreign)
    with ews_server.store.lock:
        for item_id in (ours.item_id, foreign):
            row = ews_server.store.item(item_id)
            assert row is not None
            ews_server.store.update_item(row, re.sub(r"<t:Start>.*?</t:Start>", "", row.xml, count=1))
    items = [i for p in [p async for p in mb.changes(FolderKind.CALENDAR, None)] for i in p.upserted]
    [kept] = items
    assert kept.item_id == ours.item_id and kept.unreadable and kept.psa_key == "appointment:1"
    assert kept.payload.subject == "Visit 1" and kept.uid  # the placeholder keeps what could be read
    assert f"item {ours.item_id} (appointment:1) cannot be read: calendar item without start or end; " \
           "kept as unreadable" in caplog.text
    assert f"skipping item {foreign}: calendar item without start or end" in caplog.text
    # the mirror keeps the flag (state/codec)
    from exchanged.state.codec import decode_item, encode_item

    assert decode_item(encode_item(kept)) == kept
    assert '"unreadable"' not in encode_item(dataclasses.replace(kept, unreadable=False))


# --- the public contacts folder ----------------------------------------------------------------------


async def test_public_contacts_folder_is_created_once_and_listed(ews_server: EwsTestServer,
                                                                 settings: ExchangeSettings) -> None:
    acc = open_account(settings)
    try:
        pub = acc.public_contacts()
        contacts = [NewItem(Kind.PUBLIC_CONTACT, f"public_contact:{n}",
                            Contact(given_name=f"P{n}", surname="Q")) for n in range(3)]
        created = await pub.create(FolderKind.PUBLIC_CONTACTS, contacts)
        assert all(isinstance(c, ExchangeItem) for c in created)
        [page] = [p async for p in pub.changes(FolderKind.PUBLIC_CONTACTS, None)]
        assert len(page.upserted) == 3 and page.last_page
        ews_server.reset_stats()
        [quiet] = [p async for p in pub.changes(FolderKind.PUBLIC_CONTACTS, page.sync_state)]
        assert not quiet.upserted and not quiet.deleted
        assert requests(ews_server) == {"FindItem": 1}
        gone = created[0]
        assert isinstance(gone, ExchangeItem)
        await pub.delete(FolderKind.PUBLIC_CONTACTS, [gone.item_id])
        [after] = [p async for p in pub.changes(FolderKind.PUBLIC_CONTACTS, quiet.sync_state)]
        assert after.deleted == [gone.item_id]
        with pytest.raises(errors.SyncStateInvalid):
            async for _ in pub.changes(FolderKind.PUBLIC_CONTACTS, "SS-of-something-else"):
                pass
    finally:
        await acc.aclose()
    again = open_account(settings)  # a restarted daemon finds the folder instead of making another
    try:
        [page2] = [p async for p in again.public_contacts().changes(FolderKind.PUBLIC_CONTACTS, None)]
        assert len(page2.upserted) == 2
    finally:
        await again.aclose()
    assert requests(ews_server).get("CreateFolder", 0) == 0


async def test_create_is_not_re_read_and_the_next_sync_confirms_it(ews_server: EwsTestServer,
                                                                   account: EwsAccount) -> None:
    """CreateItem answers ids only and the adapter does not GetItem what it created (one request
    per 100 items): the result carries the payload as sent and the create's change key. The next
    sync returns the item with that same change key, which is what lets the engine take the
    server's version as the baseline (``model.exchange_baseline``) instead of seeing an edit."""
    mb = account.mailbox(ALICE)
    day = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
    done = Task(subject="filed", start=day, due=day, completed=day)
    await mb.time_zone()  # the mailbox's zone, read once an hour, is not what this counts
    before = requests(ews_server)
    [t] = await mb.create(FolderKind.TASKS, [NewItem(Kind.TODO, "todo:1", done)])
    [a] = await mb.create(FolderKind.CALENDAR, [appt(1)])
    assert isinstance(t, ExchangeItem) and isinstance(a, ExchangeItem)
    made = {k: v - before.get(k, 0) for k, v in requests(ews_server).items()
            if v != before.get(k, 0)}
    assert made == {"CreateItem": 2}
    read = {i.item_id: i for f in (FolderKind.TASKS, FolderKind.CALENDAR)
            async for p in mb.changes(f, None) for i in p.upserted}
    for created in (t, a):
        seen = read[created.item_id]
        assert seen.change_key == created.change_key
        sent = unconfirmed_hash(created.payload)
        assert exchange_baseline(sent, created.change_key, seen.change_key,
                                 payload_hash(seen.payload)) == payload_hash(seen.payload)
    assert read[t.item_id].payload == t.payload and read[a.item_id].payload == a.payload
    assert read[a.item_id].uid  # the server's UID arrives with the sync
    open_again = dataclasses.replace(t.payload, completed=None)  # type: ignore[type-var]
    [t2] = await mb.update(FolderKind.TASKS,
                           [ItemUpdate(t.item_id, t.change_key, open_again, ("completed",))])
    assert isinstance(t2, ExchangeItem) and t2.payload.completed is None  # type: ignore[union-attr]


async def test_closing_an_old_account_leaves_a_newer_ones_pool_alone(settings: ExchangeSettings) -> None:
    """A reload opens the new account before the old one is closed: same endpoint, same login."""
    from exchangelib.protocol import CachingProtocol

    old = open_account(settings)
    await old.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    new = open_account(settings)
    try:
        await new.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
        new_protocol = new.ews_account(ALICE).protocol
        assert new_protocol is not old.ews_account(ALICE).protocol  # the reload got a fresh pool
        await old.aclose()
        key = CachingProtocol._cache_key(new.session_for(ALICE).config)
        assert CachingProtocol._protocol_cache[key][0] is new_protocol
        assert await new.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"]) == {}
    finally:
        await new.aclose()
    assert key not in CachingProtocol._protocol_cache


async def test_request_economy_of_a_sync_page(ews_server: EwsTestServer, account: EwsAccount) -> None:
    mb = account.mailbox(ALICE)
    [first] = [p async for p in mb.changes(FolderKind.CONTACTS, None)]
    await mb.create(FolderKind.CONTACTS, [NewItem(Kind.CONTACT, f"contact:{n}", Contact(f"G{n}", "S"))
                                          for n in range(120)])
    ews_server.reset_stats()
    [page] = [p async for p in mb.changes(FolderKind.CONTACTS, first.sync_state)]
    assert len(page.upserted) == 120
    # one SyncFolderItems, and GetItem only for the changed items, 50 per request
    assert requests(ews_server) == {"SyncFolderItems": 1, "GetItem": 3}


async def test_public_folder_adoption(ews_server: EwsTestServer, account: EwsAccount) -> None:
    pub = account.public_contacts()
    new = [NewItem(Kind.PUBLIC_CONTACT, "public_contact:7", Contact("Pat", "Q"))]
    # the folder lookup first, so that the lost reply hits the CreateItem
    assert await pub.find_by_psa_keys(FolderKind.PUBLIC_CONTACTS, ["public_contact:0"]) == {}
    ews_server.set_faults(drop_next=1)
    [created] = await pub.create(FolderKind.PUBLIC_CONTACTS, new)
    assert isinstance(created, ExchangeItem) and created.psa_key == "public_contact:7"
    found = await pub.find_by_psa_keys(FolderKind.PUBLIC_CONTACTS, ["public_contact:7"])
    assert list(found) == ["public_contact:7"] and found["public_contact:7"].item_id == created.item_id
    [page] = [p async for p in pub.changes(FolderKind.PUBLIC_CONTACTS, None)]
    assert [i.psa_key for i in page.upserted] == ["public_contact:7"]


async def test_an_unusable_ca_bundle_fails_calls_not_the_start(settings: ExchangeSettings,
                                                              tmp_path: object) -> None:
    from pathlib import Path

    bogus = Path(str(tmp_path)) / "not-a-ca.pem"
    bogus.write_text("this is not PEM\n")
    acc = open_account(dataclasses.replace(settings, ca_bundle=str(bogus)))  # no exception here
    try:
        with pytest.raises(errors.TlsError) as info:
            await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
        shown = errors.present(info.value)
        assert shown.message.startswith(f"{ALICE}: FindItem by PSA key calendar: server.ca_bundle {bogus}")
        assert "PEM" in shown.hint
    finally:
        await acc.aclose()


async def test_concurrent_cycles_share_the_limiter(ews_server: EwsTestServer,
                                                   settings: ExchangeSettings) -> None:
    acc = open_account(dataclasses.replace(settings, max_connections=2))
    results: dict[str, int] = {}
    try:
        async def one(address: str, n: int) -> None:
            mb = acc.mailbox(address)
            await mb.create(FolderKind.TASKS, [NewItem(Kind.TODO, f"todo:{address}:{n}",
                                                       Task(subject=f"t{n}"))])
            pages = [p async for p in mb.changes(FolderKind.TASKS, None)]
            results[f"{address}:{n}"] = sum(len(p.upserted) for p in pages)

        async with trio.open_nursery() as nursery:
            for n in range(4):
                for address in (ALICE, BOB):
                    nursery.start_soon(one, address, n)
        assert acc.limiter.statistics().borrowed_tokens == 0
    finally:
        await acc.aclose()
    assert len(results) == 8 and all(v >= 1 for v in results.values())
    check = open_account(settings)
    try:
        pages_alice = [p async for p in check.mailbox(ALICE).changes(FolderKind.TASKS, None)]
    finally:
        await check.aclose()
    assert sum(len(p.upserted) for p in pages_alice) == 4


def test_a_pinned_version_that_differs_from_the_server_is_a_warning(settings: ExchangeSettings) -> None:
    results = check_connect(dataclasses.replace(settings, version="Exchange2013"), [ALICE])
    by = {r.subject: r for r in results}
    assert by["login"].ok and by[ALICE].ok
    assert by["version"].ok and by["version"].warning
    assert "server.version is Exchange2013" in by["version"].message
    assert "version" not in {r.subject for r in check_connect(settings, [ALICE])}


async def test_the_mailbox_zone_comes_from_exchange_else_the_config_else_utc(
        ews_server: EwsTestServer, account: EwsAccount, caplog: pytest.LogCaptureFixture) -> None:
    ews_server.set_mailbox_timezone(ALICE, "Eastern Standard Time")  # a Windows name, as Exchange keeps it
    assert await account.mailbox(ALICE).time_zone() == "America/New_York"
    assert await account.mailbox(BOB).time_zone() == "UTC"  # no OWA.UserOptions: ErrorItemNotFound
    assert "has not chosen a time zone" in caplog.text and "users[].time_zone" in caplog.text
    assert await account.mailbox(BOB, time_zone="Europe/Berlin").time_zone() == "Europe/Berlin"
    before = requests(ews_server).get("GetUserConfiguration", 0)
    assert await account.mailbox(ALICE).time_zone() == "America/New_York"
    assert requests(ews_server).get("GetUserConfiguration", 0) == before  # read once an hour, not per call


async def test_check_connect_against_a_server_that_never_answers(settings: ExchangeSettings) -> None:
    with _listener(None) as port:
        results = await acheck_connect(dataclasses.replace(settings, port=port, allow_plaintext=True,
                                                           connect_timeout_s=0.5, read_timeout_s=0.6))
    by = {r.subject: r for r in results}
    assert not by["login"].ok and "not checked" in by["login"].message
    assert f"no answer from localhost:{port} within 0.6 s (server.read_timeout_s)" in by["ews"].message
