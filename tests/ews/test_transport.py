"""Transport contract: TLS, authentication, version, impersonation, throttling and faults."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from exchangelib import BASIC, DELEGATE, IMPERSONATION, NTLM, CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.errors import (
    ErrorImpersonateUserDenied,
    ErrorServerBusy,
    TransportError,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol

from exchanged.testing.ews import EwsTestServer

from .conftest import EwsTarget

UTC = EWSTimeZone("UTC")


def _event(account, folder, subject: str) -> CalendarItem:
    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    return CalendarItem(
        account=account, folder=folder, subject=subject, start=start, end=start + dt.timedelta(hours=1)
    )


def test_server_reports_exchange_2016(account) -> None:
    assert account.version.build.major_version == 15
    assert account.version.api_version.startswith("Exchange2016") or account.version.build.minor_version >= 1


def test_auth_probe_offers_ntlm_and_basic(ews: EwsTarget) -> None:
    ews.require(NTLM)
    ews.require(BASIC)
    verify = ews.ca_file or True
    r = requests.post(ews.url, data=b"<x/>", verify=verify, timeout=10)
    assert r.status_code == 401
    offered = r.headers["WWW-Authenticate"].lower()
    assert "ntlm" in offered and "basic" in offered


def test_probe_without_auth_type_chooses_ntlm(ews: EwsTarget) -> None:
    ews.require(NTLM)
    account = ews.account(auth_type=None)
    assert account.protocol.auth_type == NTLM


@pytest.mark.parametrize("auth_type", [NTLM, BASIC])
def test_service_account_reads_calendar(ews: EwsTarget, auth_type: str) -> None:
    ews.require(auth_type)
    account = ews.account(auth_type=auth_type)
    assert account.calendar.name


@pytest.mark.parametrize("auth_type", [NTLM, BASIC])
def test_wrong_password_is_refused(ews: EwsTarget, auth_type: str) -> None:
    ews.require(auth_type)
    account = ews.account(password="wrong-password", auth_type=auth_type)
    with pytest.raises(UnauthorizedError):
        account.root.refresh()


def test_a_basic_only_server_refuses_ntlm_and_the_basic_target_logs_in(
    ews: EwsTarget, emulator: EwsTestServer
) -> None:
    """The real-server mode against a server with NTLM off (EXCHANGED_TEST_EWS_AUTH=basic): the
    tests log in with Basic by default and skip what needs NTLM."""
    emulator.set_faults(basic_only=1)
    try:
        verify = ews.ca_file or True
        offered = requests.post(ews.url, data=b"<x/>", verify=verify, timeout=10).headers["WWW-Authenticate"]
        assert "basic" in offered.lower() and "ntlm" not in offered.lower()
        with pytest.raises(UnauthorizedError):
            ews.account(password="ntlm-cache-key", auth_type=NTLM).root.refresh()
        basic = EwsTarget(ews.url, ews.ca_file, ews.user, ews.password, ews.mailboxes,
                          auth_type=BASIC, offered=frozenset({BASIC}))
        assert basic.account().calendar.name  # the default login of such a target is Basic
        with pytest.raises(pytest.skip.Exception):
            basic.require(NTLM)
    finally:
        emulator.set_faults(basic_only=0)


def test_client_without_the_ca_fails_tls(ews: EwsTarget, emulator: EwsTestServer) -> None:
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = requests.adapters.HTTPAdapter
    try:
        account = ews.account(password="other-cache-key", auth_type=BASIC)
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            account.root.refresh()
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved


def test_mailbox_logs_in_as_itself(ews: EwsTarget, emulator: EwsTestServer) -> None:
    bob = ews.account("bob@example.test", user="bob@example.test", password="SECRET", access_type=DELEGATE)
    assert bob.calendar.name == "Calendar"


def test_mailbox_may_not_impersonate_another(ews: EwsTarget, emulator: EwsTestServer) -> None:
    bob_as_alice = ews.account(
        "alice@example.test", user="bob@example.test", password="SECRET", access_type=IMPERSONATION
    )
    with pytest.raises(ErrorImpersonateUserDenied):
        bob_as_alice.root.refresh()


def test_impersonation_separates_mailboxes(ews: EwsTarget, emulator: EwsTestServer) -> None:
    alice = ews.account("alice@example.test")
    bob = ews.account("bob@example.test")
    item = _event(alice, alice.calendar, "only-in-alice")
    item.save(send_meeting_invitations="SendToNone")
    try:
        assert alice.calendar.filter(subject="only-in-alice").count() == 1
        assert bob.calendar.filter(subject="only-in-alice").count() == 0
        assert alice.calendar.id != bob.calendar.id
    finally:
        item.delete()


def test_throttling_surfaces_as_server_busy_with_back_off(account, calendar, emulator: EwsTestServer) -> None:
    emulator.set_faults(throttle_next=1, back_off_ms=1500)
    with pytest.raises(ErrorServerBusy) as info:
        list(calendar.all())
    assert info.value.back_off == 1.5
    assert list(calendar.all()) == []  # the next request is served again


def test_fail_next_answers_the_status(account, calendar, emulator: EwsTestServer) -> None:
    emulator.set_faults(fail_next=1, fail_status=503)
    with pytest.raises((ErrorServerBusy, TransportError)):
        list(calendar.all())
    assert emulator.stats()["failed"] >= 1
    assert list(calendar.all()) == []


def test_dropped_reply_still_carries_out_the_request(account, calendar, emulator: EwsTestServer) -> None:
    emulator.set_faults(drop_next=1)
    item = _event(account, calendar, "lost-reply")
    with pytest.raises((ErrorServerBusy, TransportError)):
        item.save(send_meeting_invitations="SendToNone")
    assert calendar.filter(subject="lost-reply").count() == 1


def test_stats_count_requests_per_operation(account, calendar, emulator: EwsTestServer) -> None:
    before = emulator.stats()["requests"].get("FindItem", 0)
    list(calendar.all())
    assert emulator.stats()["requests"]["FindItem"] == before + 1


def test_throttling_inside_a_response_message(account, calendar, emulator: EwsTestServer) -> None:
    emulator.set_faults(throttle_next=1, throttle_style="message", back_off_ms=500)
    try:
        with pytest.raises(ErrorServerBusy):
            list(calendar.all())
        assert list(calendar.all()) == []
    finally:
        emulator.set_faults(throttle_style="fault")


@pytest.mark.parametrize("auth_type", [NTLM, BASIC])
def test_domain_backslash_user_logs_in(ews: EwsTarget, emulator: EwsTestServer, auth_type: str) -> None:
    account = ews.account(user="EXAMPLE\\svc", auth_type=auth_type)
    assert account.calendar.name == "Calendar"


def test_impersonating_an_unknown_mailbox(ews: EwsTarget, emulator: EwsTestServer) -> None:
    from exchangelib.errors import ErrorNonExistentMailbox

    with pytest.raises(ErrorNonExistentMailbox):
        ews.account("nobody@example.test").root.refresh()
