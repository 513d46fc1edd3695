"""Conversion between the model's payloads and exchangelib items, settings and error mapping
(no server)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from exchangelib import CalendarItem, Message
from exchangelib import Contact as EwsContact
from exchangelib import Task as EwsTask
from exchangelib import errors as ews
from exchangelib.ewsdatetime import EWSDateTime, EWSTimeZone
from exchangelib.indexed_properties import PhoneNumber
from exchangelib.properties import HTMLBody

from exchanged import errors
from exchanged.exchange import convert, tls
from exchanged.exchange.account import pinned_version
from exchanged.exchange.errmap import is_ambiguous, map_error
from exchanged.exchange.mailbox import decode_listing, encode_listing
from exchanged.exchange.settings import ExchangeSettings, settings_from_config
from exchanged.model import Appointment, Contact, FolderKind, ShowAs, Task, occurrence_key

UTC_TZ = EWSTimeZone("UTC")
T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def round_trip(folder: FolderKind, payload: Any, tz: Any = UTC_TZ) -> Any:
    item = convert.new_ews_item(folder, payload, "k:1", ["PSA"], None, tz)
    item.id, item.changekey = "ID1", "CK1"
    return convert.item_from_ews(folder, item)


@pytest.mark.parametrize("payload", [
    Appointment(subject="Visit", start=T0, end=T0 + timedelta(hours=1), body="line 1\nline 2",
                location="HQ", show_as=ShowAs.TENTATIVE, is_private=True),
    Appointment(subject="Holiday", start=datetime(2026, 12, 24, tzinfo=UTC),
                end=datetime(2026, 12, 27, tzinfo=UTC), is_all_day=True, show_as=ShowAs.OOF),
    Appointment(subject="Elsewhere", start=T0, end=T0, show_as=ShowAs.WORKING_ELSEWHERE),
])
def test_appointments_round_trip(payload: Appointment) -> None:
    item = round_trip(FolderKind.CALENDAR, payload)
    assert item.payload == payload
    assert item.psa_key == "k:1" and item.categories == ("PSA",)


def test_all_day_is_whole_days_in_the_adapter_zone() -> None:
    berlin = EWSTimeZone("Europe/Berlin")
    start = datetime(2026, 12, 23, 23, 0, tzinfo=UTC)  # midnight in Berlin
    payload = Appointment(subject="x", start=start, end=start + timedelta(days=1), is_all_day=True)
    ews_item = convert.new_ews_item(FolderKind.CALENDAR, payload, "k", [], None, berlin)
    assert str(ews_item.start) == "2026-12-24" and str(ews_item.end) == "2026-12-24"


def test_calendar_identity_single_master_and_occurrence() -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC_TZ)
    base = dict(subject="s", start=start, end=start + timedelta(hours=1), uid="UID-1")
    single = CalendarItem(id="A", changekey="c", type="Single", **base)
    master = CalendarItem(id="B", changekey="c", type="RecurringMaster", **base)
    occ = CalendarItem(id="C", changekey="c", type="Occurrence", original_start=start, **base)
    assert convert.item_from_ews(FolderKind.CALENDAR, single).exchange_key == "UID-1"
    m = convert.item_from_ews(FolderKind.CALENDAR, master)
    assert m.is_recurring_master and m.exchange_key == "UID-1"
    o = convert.item_from_ews(FolderKind.CALENDAR, occ)
    assert o.exchange_key == occurrence_key("UID-1", T0.replace(minute=0)) == "UID-1@2026-12-01T09:00:00Z"
    assert o.psa_key is None and not o.is_recurring_master


def test_foreign_calendar_item_with_confidential_and_html_body() -> None:
    start = EWSDateTime(2026, 12, 1, 9, 0, tzinfo=UTC_TZ)
    item = CalendarItem(id="A", changekey="c", subject="Board", start=start, end=start,
                        sensitivity="Confidential", legacy_free_busy_status="Free",
                        body=HTMLBody("<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p>"
                                      "<p>2nd</p></body></html>"))
    got = convert.item_from_ews(FolderKind.CALENDAR, item)
    assert got.payload.is_private and got.payload.show_as is ShowAs.FREE  # type: ignore[union-attr]
    assert got.payload.body == "Hi & bye\n2nd"  # type: ignore[union-attr]


def test_tasks_round_trip_exactly_although_exchange_keeps_days() -> None:
    task = Task(subject="t", start=datetime(2026, 12, 2, 15, 0, tzinfo=UTC),
                due=datetime(2026, 12, 4, 8, 0, tzinfo=UTC),
                completed=datetime(2026, 12, 3, 9, 5, tzinfo=UTC))
    ews_item = convert.new_ews_item(FolderKind.TASKS, task, "todo:1", [], None, UTC_TZ)
    assert str(ews_item.start_date) == "2026-12-02"  # EWS task dates have no time of day
    ews_item.id, ews_item.changekey = "T", "c"
    ews_item.complete_date = EWSDateTime(2026, 12, 5, 10, 0, tzinfo=UTC_TZ)  # set by the server
    assert convert.item_from_ews(FolderKind.TASKS, ews_item).payload == task  # what we wrote, exactly
    # moved to another day in Outlook: that day, with the time of day the PSA had
    ews_item.due_date = ews_item.due_date + timedelta(days=2)
    moved = convert.item_from_ews(FolderKind.TASKS, ews_item).payload
    assert moved.due == datetime(2026, 12, 6, 8, 0, tzinfo=UTC)  # type: ignore[union-attr]
    # reopened in Outlook
    ews_item.status, ews_item.percent_complete = "InProgress", Decimal(50)
    assert convert.item_from_ews(FolderKind.TASKS, ews_item).payload.completed is None  # type: ignore[union-attr]


def test_tasks_made_in_outlook() -> None:
    done = EwsTask(id="T", changekey="c", subject="t", status="Completed", percent_complete=Decimal(100),
                   complete_date=EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC_TZ))
    assert convert.item_from_ews(FolderKind.TASKS, done).payload.completed == datetime(  # type: ignore[union-attr]
        2026, 12, 3, 10, 0, tzinfo=UTC)
    values = convert.payload_values(Task(subject="t", completed=T0), UTC_TZ)
    assert values["status"] == "Completed" and values["percent_complete"] == 100


def test_all_day_bounds_come_back_exactly() -> None:
    payload = Appointment(subject="Fair", start=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
                          end=datetime(2026, 12, 2, 17, 0, tzinfo=UTC), is_all_day=True)
    assert round_trip(FolderKind.CALENDAR, payload).payload == payload


def test_contacts_map_managed_labels_only() -> None:
    contact = Contact(given_name="Ann", surname="Lee", company="ACME", job_title="CFO", email="a@acme.test",
                      business_phone="1", mobile_phone="2")
    assert round_trip(FolderKind.CONTACTS, contact).payload == contact
    assert round_trip(FolderKind.PUBLIC_CONTACTS, contact).payload == contact
    item = EwsContact(id="C", changekey="c", given_name="Bo", display_name="Bo",
                      phone_numbers=[PhoneNumber(label="HomePhone", phone_number="9")])
    assert convert.item_from_ews(FolderKind.CONTACTS, item).payload == Contact(given_name="Bo", surname="")
    assert convert.new_ews_item(FolderKind.CONTACTS, Contact("", "", company="ACME"), "k", [], None,
                                UTC_TZ).display_name == "ACME"


def test_wrong_item_types_are_unmappable() -> None:
    with pytest.raises(convert.Unmappable):
        convert.item_from_ews(FolderKind.CALENDAR, Message(id="M", changekey="c", subject="mail"))
    with pytest.raises(convert.Unmappable):
        convert.new_ews_item(FolderKind.TASKS, Contact("a", "b"), "k", [], None, UTC_TZ)
    with pytest.raises(convert.Unmappable):
        convert.item_from_ews(FolderKind.CALENDAR, CalendarItem(id="A", changekey="c", subject="no dates"))


def test_update_fieldnames() -> None:
    a = Appointment(subject="s", start=T0, end=T0)
    assert convert.update_fieldnames(a, ["subject"]) == ["subject"]
    assert convert.update_fieldnames(a, ["end"]) == ["end", "start", convert.EXACT_ATTR]
    assert convert.update_fieldnames(a, ["show_as", "is_private"]) == [
        "legacy_free_busy_status", "sensitivity"]
    allday = Appointment(subject="s", start=T0, end=T0, is_all_day=True)
    assert convert.update_fieldnames(allday, ["start"]) == ["start", "is_all_day", "end", convert.EXACT_ATTR]
    assert convert.update_fieldnames(Task(subject="t"), ["completed"]) == [
        "status", "percent_complete", convert.EXACT_ATTR]
    assert convert.update_fieldnames(Task(subject="t"), ["subject"]) == ["subject"]
    c = Contact("a", "b")
    assert convert.update_fieldnames(c, ["surname", "mobile_phone", "business_phone"]) == [
        "surname", "display_name", "phone_numbers"]
    with pytest.raises(convert.Unmappable):
        convert.update_fieldnames(c, ["nickname"])


def test_psa_key_property_is_ours_and_registered_once() -> None:
    convert.register_psa_key_property()
    convert.register_psa_key_property()
    for cls in (CalendarItem, EwsTask, EwsContact):
        assert sum(f.name == convert.PSA_KEY_ATTR for f in cls.FIELDS) == 1
    assert convert.PsaKeyProperty.property_name == "exchanged-psa-key"
    assert convert.PsaKeyProperty.property_type == "String"


def test_listing_state_round_trip() -> None:
    listing = {f"AAMk{n}": f"CK{n}" for n in range(2000)}
    state = encode_listing(listing)
    assert decode_listing(state) == listing
    assert decode_listing("exchanged-listing-v1:!!!") is None
    assert decode_listing("H4sIAAAA") is None


# --- settings ---------------------------------------------------------------------------------------


def test_endpoint_and_login_name() -> None:
    s = ExchangeSettings(address="mail.contoso.com", username="svc", domain="CONTOSO", auth_type="ntlm")
    assert s.service_endpoint == "https://mail.contoso.com/EWS/Exchange.asmx"
    assert s.login_name == "CONTOSO\\svc"
    s2 = ExchangeSettings(address="mail.contoso.com", port=8443, virtual_directory="/custom/ews.asmx",
                          username="svc@contoso.com", domain="CONTOSO", auth_type="ntlm")
    assert s2.service_endpoint == "https://mail.contoso.com:8443/custom/ews.asmx"
    assert s2.login_name == "svc@contoso.com"
    plain = ExchangeSettings(address="mail", port=80, allow_plaintext=True)
    assert plain.service_endpoint == "http://mail/EWS/Exchange.asmx"
    assert "pw" not in repr(ExchangeSettings(address="m", password="pw"))


def test_settings_from_a_config_object(tmp_path: Any) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    user_pw = tmp_path / "alice-pw"
    user_pw.write_text("alice-secret")
    cfg = SimpleNamespace(
        server=SimpleNamespace(address="mail.contoso.com", port=443, virtual_directory="",
                               version="Exchange2016", ca_bundle=None, allow_plaintext=False,
                               connect_timeout_s=4, read_timeout_s=25.5),
        credentials=SimpleNamespace(auth_type="ntlm", username="svc", password=None, password_file=str(pw),
                                    domain="CONTOSO", use_for_all_users=False),
        sync=SimpleNamespace(category="PSA", max_concurrent_users=8),
        users=[SimpleNamespace(mailbox="alice@contoso.com", enabled=True, password_file=str(user_pw)),
               SimpleNamespace(mailbox="bob@contoso.com", enabled=False)])
    s = settings_from_config(cfg)
    assert s.password == "s3cret" and s.login_name == "CONTOSO\\svc"
    assert s.enabled_mailboxes == ("alice@contoso.com",)
    assert s.user_credentials["alice@contoso.com"].password == "alice-secret"
    assert s.category == "PSA" and s.max_connections == 8 and s.version == "Exchange2016"
    assert (s.connect_timeout_s, s.read_timeout_s) == (4.0, 25.5)


def test_pinned_versions() -> None:
    assert pinned_version(None) is None
    assert pinned_version("Exchange2016").build.major_version == 15  # type: ignore[union-attr]
    with pytest.raises(errors.ExchangeError, match=r"server\.version 'Exchange1999'"):
        pinned_version("Exchange1999")


# --- error mapping -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "expected"), [
    (ews.UnauthorizedError("Invalid credentials for https://x/EWS"), errors.AuthFailed),
    (ews.ErrorImpersonateUserDenied("no"), errors.ImpersonationDenied),
    (ews.ErrorNonExistentMailbox("no"), errors.MailboxNotFound),
    (ews.ErrorInvalidSyncStateData("bad"), errors.SyncStateInvalid),
    (ews.ErrorServerBusy("busy", back_off=3.0), errors.Throttled),
    (ews.ErrorServerBusy("Caused by closed connection"), errors.Throttled),
    (ews.ErrorInternalServerTransientError("Caused by HTTP 503 response"), errors.Throttled),
    (ews.ErrorTimeoutExpired("Reraised from ConnectionError(Connection refused)"),
     errors.ExchangeUnavailable),
    (ews.TransportError("HTTPSConnectionPool: CERTIFICATE_VERIFY_FAILED"), errors.TlsError),
    (ews.ErrorAccessDenied("denied"), errors.ExchangeError),
    (ValueError("odd"), errors.ExchangeError),
])
def test_error_mapping(exc: BaseException, expected: type) -> None:
    err = map_error(exc, mailbox="a@x.test", op="GetItem", host="mail:443", login="svc", auth_type="basic")
    assert type(err) is expected
    assert err.mailbox == "a@x.test" and "a@x.test" in errors.present(err).message


def test_throttle_hint_and_ambiguity() -> None:
    busy = map_error(ews.ErrorServerBusy("busy", back_off=3.0), mailbox="m", op="o", host="h")
    assert isinstance(busy, errors.Throttled) and busy.back_off_s == 3.0 and not is_ambiguous(busy)
    closed = map_error(ews.ErrorServerBusy("Caused by closed connection"), mailbox="m", op="o", host="h")
    assert is_ambiguous(closed)
    dropped = map_error(ews.ErrorTimeoutExpired("Reraised from ConnectionError(RemoteDisconnected(...))"),
                        mailbox="m", op="o", host="h")
    assert isinstance(dropped, errors.ExchangeUnavailable) and is_ambiguous(dropped)
    refused = map_error(ews.ErrorTimeoutExpired("Reraised from ConnectionError(Connection refused)"),
                        mailbox="m", op="o", host="h")
    assert not is_ambiguous(refused) and "refused" in str(refused)


@pytest.mark.parametrize(("verify_message", "says"), [
    ("unable to get local issuer certificate", "certificate not trusted"),
    ("self-signed certificate in certificate chain", "certificate not trusted"),
    ("certificate has expired", "has expired"),
    ("Hostname mismatch, certificate is not valid for 'mail'.", "another host name"),
])
def test_tls_failures_in_words(verify_message: str, says: str) -> None:
    verr = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {verify_message}")
    verr.verify_message = verify_message
    try:
        try:
            raise verr
        except ssl.SSLError as inner:
            raise ews.TransportError(str(inner)) from None
    except ews.TransportError as outer:
        outer.__context__ = verr
        message, hint = tls.describe_tls_failure(outer, "mail:443")
    assert says in message and "mail:443" in message and hint


def test_a_new_item_is_validated_field_by_field_before_it_joins_a_batch() -> None:
    """Only the fields we set are cleaned (not all of the class's), and a value exchangelib would
    refuse while serialising the whole CreateItem fails this item alone, as Unmappable."""
    from exchanged.exchange.convert import Unmappable, new_ews_item
    from exchanged.model import Appointment, FolderKind

    start = datetime(2026, 12, 1, 9, tzinfo=UTC)
    ok = new_ews_item(FolderKind.CALENDAR, Appointment("Visit", start, start + timedelta(hours=1)),
                      "appointment:1", ["PSA"], None, EWSTimeZone("UTC"))
    assert isinstance(ok, CalendarItem) and ok.subject == "Visit" and ok.categories == ["PSA"]
    assert isinstance(ok.start, EWSDateTime)
    with pytest.raises(Unmappable, match="subject has 300 characters, Exchange keeps at most 255"):
        new_ews_item(FolderKind.CALENDAR, Appointment("x" * 300, start, start + timedelta(hours=1)),
                     "appointment:2", [], None, EWSTimeZone("UTC"))
