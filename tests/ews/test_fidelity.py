"""What clients other than exchangelib rely on (issue #18): each answer as Exchange gives it.

The expectations come from Microsoft's EWS reference and from what Exchange answers; like the rest
of tests/ews they also run against a real Exchange (EXCHANGED_TEST_EWS_*, see conftest.py).
"""

from __future__ import annotations

import base64
import datetime as dt

import requests
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from requests.auth import HTTPBasicAuth
from requests_ntlm import HttpNtlmAuth

from exchanged.testing.ews.fixtures import MAILBOXES, SERVICE_ACCOUNT

from .conftest import NTLM, EwsTarget
from .test_structure import NS, _post

UTC = EWSTimeZone("UTC")


def _auth(ews: EwsTarget) -> HttpNtlmAuth | HTTPBasicAuth:
    if ews.auth_type == NTLM:
        return HttpNtlmAuth(ews.user, ews.password)
    return HTTPBasicAuth(ews.user, ews.password)


# -- 1. GET of the service URL: IIS's challenge, then 200 -------------------------------------------
def test_get_without_credentials_is_challenged(ews: EwsTarget) -> None:
    r = requests.get(ews.url, verify=ews.ca_file or True, timeout=10)
    assert r.status_code == 401
    offered = r.headers["WWW-Authenticate"].lower()
    assert ews.auth_type.lower().split()[0] in offered  # "ntlm" or "basic"


def test_get_with_credentials_is_answered(ews: EwsTarget) -> None:
    r = requests.get(ews.url, auth=_auth(ews), verify=ews.ca_file or True, timeout=10)
    assert r.status_code == 200


def test_get_with_a_wrong_password_is_challenged_again(ews: EwsTarget) -> None:
    auth = HTTPBasicAuth(ews.user, "wrong-password")
    r = requests.get(ews.url, auth=auth, verify=ews.ca_file or True, timeout=10)
    assert r.status_code == 401
    assert r.headers.get("WWW-Authenticate")


# -- 2. ConvertId: the mailbox that holds the id ----------------------------------------------------
def _root_folder_id(ews: EwsTarget) -> str:
    _, root = _post(
        ews,
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="root"/></m:FolderIds></m:GetFolder>',
    )
    folder_id = root.find(".//t:FolderId", NS)
    assert folder_id is not None
    return str(folder_id.get("Id"))


def test_convert_id_answers_the_mailbox_that_holds_the_id(ews: EwsTarget) -> None:
    """DavMail learns the user's address this way: ConvertId of the root folder's id with a dummy
    Mailbox; Exchange answers the primary SMTP address of the mailbox behind the id."""
    folder_id = _root_folder_id(ews)
    _, root = _post(
        ews,
        '<m:ConvertId DestinationFormat="EwsId"><m:SourceIds>'
        f'<t:AlternateId Format="EwsId" Id="{folder_id}" Mailbox="blah@blah.com"/>'
        "</m:SourceIds></m:ConvertId>",
    )
    msg = root.find("s:Body/m:ConvertIdResponse/m:ResponseMessages/m:ConvertIdResponseMessage", NS)
    assert msg is not None and msg.get("ResponseClass") == "Success"
    alt = msg.find("m:AlternateId", NS)
    assert alt is not None
    assert alt.get("Mailbox", "").lower() == ews.mailboxes[0].lower()
    assert alt.get("Format") == "EwsId"


# -- 3. Ids as long as Exchange's ------------------------------------------------------------------
def test_item_and_folder_ids_are_as_long_as_exchanges(account, calendar) -> None:
    """Exchange's ids are base64 of a structure naming the mailbox and the MAPI entry id: about 150
    characters for an item, about 120 for a folder (clients tell an id from a name by its length)."""
    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    item = CalendarItem(account=account, folder=calendar, subject="id length", start=start,
                        end=start + dt.timedelta(hours=1))
    item.save()
    assert len(item.id) >= 140
    assert len(calendar.id) >= 100
    assert base64.b64decode(item.id)  # base64, as Exchange's


def test_ids_survive_a_restart(tmp_path) -> None:
    from exchangelib.protocol import BaseProtocol

    from exchanged.testing.ews.fixtures import running_server
    from exchanged.testing.tls import ca_adapter_class

    saved = BaseProtocol.HTTP_ADAPTER_CLS
    try:
        with running_server(tmp_path) as server:
            BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
            first = EwsTarget(server.url, server.ca_file, SERVICE_ACCOUNT[0], SERVICE_ACCOUNT[1],
                              list(MAILBOXES), server).account()
            start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
            item = CalendarItem(account=first, folder=first.calendar, subject="kept", start=start,
                                end=start + dt.timedelta(hours=1))
            item.save()
            calendar_id = first.calendar.id
        with running_server(tmp_path) as server:
            BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
            again = EwsTarget(server.url, server.ca_file, SERVICE_ACCOUNT[0], SERVICE_ACCOUNT[1],
                              list(MAILBOXES), server).account()
            assert again.calendar.id == calendar_id
            assert again.calendar.get(id=item.id).subject == "kept"
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = saved
