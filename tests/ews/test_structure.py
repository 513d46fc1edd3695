"""Response structure against Microsoft's EWS operation reference: element names, namespaces and order.

These tests post hand-written requests shaped like the reference's request examples and check the
answers' skeleton; the behaviour itself is covered through exchangelib in the other modules.
"""

from __future__ import annotations

import re

import pytest
import requests
from lxml import etree
from requests.auth import HTTPBasicAuth
from requests_ntlm import HttpNtlmAuth

from .conftest import NTLM, EwsTarget

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS = {"s": S, "m": M, "t": T, "e": E}


def _post(
    ews: EwsTarget, body: str, version: str = "Exchange2016"
) -> tuple[requests.Response, etree._Element]:
    impersonation = ""
    if ews.server is not None:
        impersonation = (
            "<t:ExchangeImpersonation><t:ConnectingSID>"
            f"<t:PrimarySmtpAddress>{ews.mailboxes[0]}</t:PrimarySmtpAddress>"
            "</t:ConnectingSID></t:ExchangeImpersonation>"
        )
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soap:Envelope xmlns:soap="{S}" xmlns:t="{T}" xmlns:m="{M}">'
        f'<soap:Header><t:RequestServerVersion Version="{version}"/>{impersonation}</soap:Header>'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    )
    r = requests.post(
        ews.url,
        data=envelope.encode(),
        headers={"Content-Type": "text/xml; charset=utf-8"},
        auth=(HttpNtlmAuth(ews.user, ews.password) if ews.auth_type == NTLM
              else HTTPBasicAuth(ews.user, ews.password)),
        verify=ews.ca_file or True,
        timeout=30,
    )
    return r, etree.fromstring(r.content)


def _names(elem: etree._Element) -> list[str]:
    return [etree.QName(c).localname for c in elem if isinstance(c.tag, str)]


def test_every_answer_is_text_xml_with_server_version(ews: EwsTarget) -> None:
    r, root = _post(
        ews,
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>',
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/xml; charset=utf-8"
    info = root.find("s:Header/t:ServerVersionInfo", NS)
    assert info is not None and info.get("MajorVersion") == "15"
    assert {"MinorVersion", "MajorBuildNumber", "MinorBuildNumber"} <= set(info.keys())


def test_get_folder_response_skeleton(ews: EwsTarget) -> None:
    _, root = _post(
        ews,
        "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>',
    )
    msg = root.find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
    assert msg is not None and msg.get("ResponseClass") == "Success"
    assert _names(msg) == ["ResponseCode", "Folders"]
    folder = msg.find("m:Folders/t:CalendarFolder", NS)
    assert folder is not None
    names = _names(folder)
    assert names[0] == "FolderId"
    assert names.index("DisplayName") < names.index("TotalCount") < names.index("ChildFolderCount")


def test_find_item_paging_attributes(ews: EwsTarget) -> None:
    _, root = _post(
        ews,
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>'
        '<m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" BasePoint="Beginning"/>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
    )
    msg = root.find("s:Body/m:FindItemResponse/m:ResponseMessages/m:FindItemResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "RootFolder"]
    rf = msg.find("m:RootFolder", NS)
    assert {"IndexedPagingOffset", "TotalItemsInView", "IncludesLastItemInRange"} <= set(rf.keys())
    assert _names(rf) == ["Items"]


def test_sync_folder_items_order(ews: EwsTarget) -> None:
    _, root = _post(
        ews,
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
        '<m:SyncFolderId><t:DistinguishedFolderId Id="calendar"/></m:SyncFolderId>'
        "<m:MaxChangesReturned>10</m:MaxChangesReturned></m:SyncFolderItems>",
    )
    msg = root.find(
        "s:Body/m:SyncFolderItemsResponse/m:ResponseMessages/m:SyncFolderItemsResponseMessage", NS
    )
    assert _names(msg) == ["ResponseCode", "SyncState", "IncludesLastItemInRange", "Changes"]


def test_error_message_order_and_code(ews: EwsTarget) -> None:
    _, root = _post(
        ews,
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
        '<m:ItemIds><t:ItemId Id="bm90LWFuLWlk"/></m:ItemIds></m:GetItem>',
    )
    msg = root.find("s:Body/m:GetItemResponse/m:ResponseMessages/m:GetItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error"
    assert _names(msg)[:3] == ["MessageText", "ResponseCode", "DescriptiveLinkKey"]
    assert msg.findtext("m:ResponseCode", namespaces=NS) in ("ErrorInvalidIdMalformed", "ErrorItemNotFound")


def test_version_guess_answer(ews: EwsTarget) -> None:
    """exchangelib guesses the version with ConvertId of the id "DUMMY"; the header must come back."""
    _, root = _post(
        ews,
        '<m:ConvertId DestinationFormat="EntryId"><m:SourceIds>'
        '<t:AlternateId Format="EwsId" Id="DUMMY" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>',
    )
    assert root.find("s:Header/t:ServerVersionInfo", NS) is not None
    msg = root.find("s:Body/m:ConvertIdResponse/m:ResponseMessages/m:ConvertIdResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error"
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidIdMalformed"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("<m:GetFolder><m:FolderIds>", "ErrorSchemaValidation"),
        ("<m:NoSuchOperation/>", "ErrorInvalidRequest"),
    ],
)
def test_malformed_requests_get_soap_faults(ews: EwsTarget, body: str, code: str) -> None:
    try:
        r, root = _post(ews, body)
    except etree.XMLSyntaxError:
        pytest.fail("the server answered a malformed request with something that is not XML")
    assert r.status_code == 500
    fault = root.find("s:Body/s:Fault", NS)
    assert fault is not None and fault.findtext("faultcode")
    assert fault.findtext("detail/e:ResponseCode", namespaces=NS) == code
    assert b"Traceback" not in r.content


def test_unknown_server_version_is_a_fault(ews: EwsTarget) -> None:
    r, root = _post(ews, "<m:GetFolder/>", version="Exchange2099")
    assert r.status_code == 500
    assert root.findtext("s:Body/s:Fault/detail/e:ResponseCode", namespaces=NS) == "ErrorInvalidServerVersion"


def test_date_times_have_no_fractions(ews: EwsTarget, account, calendar) -> None:
    import datetime as dt

    from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

    start = EWSDateTime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=EWSTimeZone("UTC"))
    CalendarItem(
        account=account, folder=calendar, subject="fractions", start=start, end=start + dt.timedelta(hours=1)
    ).save(send_meeting_invitations="SendToNone")
    r, _ = _post(
        ews,
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape>'
        f'<m:ParentFolderIds><t:FolderId Id="{calendar.id}"/></m:ParentFolderIds></m:FindItem>',
    )
    stamps = re.findall(rb">(\d{4}-\d\d-\d\dT[^<]*)<", r.content)
    assert stamps and all(re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s in stamps)


def test_create_update_delete_item_skeletons(ews: EwsTarget, calendar) -> None:
    _, root = _post(
        ews,
        '<m:CreateItem SendMeetingInvitations="SendToNone"><m:SavedItemFolderId>'
        f'<t:FolderId Id="{calendar.id}"/></m:SavedItemFolderId><m:Items><t:CalendarItem>'
        "<t:Subject>skeleton</t:Subject><t:Start>2026-12-01T10:00:00Z</t:Start>"
        "<t:End>2026-12-01T11:00:00Z</t:End></t:CalendarItem></m:Items></m:CreateItem>",
    )
    msg = root.find("s:Body/m:CreateItemResponse/m:ResponseMessages/m:CreateItemResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "Items"]
    item_id = msg.find("m:Items/t:CalendarItem/t:ItemId", NS)
    assert item_id.get("Id") and item_id.get("ChangeKey")

    _, root = _post(
        ews,
        '<m:UpdateItem ConflictResolution="AlwaysOverwrite" '
        'SendMeetingInvitationsOrCancellations="SendToNone"><m:ItemChanges><t:ItemChange>'
        f'<t:ItemId Id="{item_id.get("Id")}" ChangeKey="{item_id.get("ChangeKey")}"/><t:Updates>'
        '<t:SetItemField><t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>renamed</t:Subject>'
        "</t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
    )
    msg = root.find("s:Body/m:UpdateItemResponse/m:ResponseMessages/m:UpdateItemResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "Items", "ConflictResults"]
    new_id = msg.find("m:Items/t:CalendarItem/t:ItemId", NS)
    assert new_id.get("Id") == item_id.get("Id") and new_id.get("ChangeKey") != item_id.get("ChangeKey")

    _, root = _post(
        ews,
        '<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone"><m:ItemIds>'
        f'<t:ItemId Id="{item_id.get("Id")}"/></m:ItemIds></m:DeleteItem>',
    )
    msg = root.find("s:Body/m:DeleteItemResponse/m:ResponseMessages/m:DeleteItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Success" and _names(msg) == ["ResponseCode"]


def test_find_item_refuses_body(ews: EwsTarget) -> None:
    """Exchange: "The property Body can't be used in FindItem requests" (exchangelib never asks)."""
    _, root = _post(
        ews,
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '<t:AdditionalProperties><t:FieldURI FieldURI="item:Body"/></t:AdditionalProperties></m:ItemShape>'
        '<m:ParentFolderIds><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>',
    )
    msg = root.find("s:Body/m:FindItemResponse/m:ResponseMessages/m:FindItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error"
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidPropertyForOperation"
    assert msg.find("m:MessageXml/t:FieldURI", NS).get("FieldURI") == "item:Body"


def test_folder_operation_skeletons(ews: EwsTarget, calendar) -> None:
    _, root = _post(
        ews,
        '<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
        f'<m:ParentFolderIds><t:FolderId Id="{calendar.id}"/></m:ParentFolderIds></m:FindFolder>',
    )
    msg = root.find("s:Body/m:FindFolderResponse/m:ResponseMessages/m:FindFolderResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "RootFolder"]
    rf = msg.find("m:RootFolder", NS)
    assert rf.get("TotalItemsInView") == "0" and rf.get("IncludesLastItemInRange") == "true"
    assert _names(rf) == ["Folders"]  # present also when empty

    _, root = _post(
        ews,
        f'<m:CreateFolder><m:ParentFolderId><t:FolderId Id="{calendar.id}"/></m:ParentFolderId>'
        "<m:Folders><t:CalendarFolder><t:DisplayName>skeleton</t:DisplayName></t:CalendarFolder>"
        "</m:Folders></m:CreateFolder>",
    )
    msg = root.find("s:Body/m:CreateFolderResponse/m:ResponseMessages/m:CreateFolderResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "Folders"]
    assert msg.find("m:Folders/t:CalendarFolder/t:FolderId", NS).get("Id")

    _, root = _post(
        ews,
        "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        f'<m:SyncFolderId><t:FolderId Id="{calendar.id}"/></m:SyncFolderId></m:SyncFolderHierarchy>',
    )
    path = "s:Body/m:SyncFolderHierarchyResponse/m:ResponseMessages/m:SyncFolderHierarchyResponseMessage"
    msg = root.find(path, NS)
    assert _names(msg) == ["ResponseCode", "SyncState", "IncludesLastFolderInRange", "Changes"]
    assert [_names(c) for c in msg.find("m:Changes", NS)] == [["CalendarFolder"]]


def test_resolve_names_skeleton(ews: EwsTarget) -> None:
    _, root = _post(
        ews,
        '<m:ResolveNames ReturnFullContactData="false">'
        f"<m:UnresolvedEntry>{ews.mailboxes[0]}</m:UnresolvedEntry></m:ResolveNames>",
    )
    msg = root.find("s:Body/m:ResolveNamesResponse/m:ResponseMessages/m:ResolveNamesResponseMessage", NS)
    assert _names(msg) == ["ResponseCode", "ResolutionSet"]
    mailbox = msg.find("m:ResolutionSet/t:Resolution/t:Mailbox", NS)
    assert _names(mailbox)[:2] == ["Name", "EmailAddress"]
    assert mailbox.findtext("t:EmailAddress", namespaces=NS).lower() == ews.mailboxes[0].lower()


def test_never_overwrite_needs_a_change_key(ews: EwsTarget, calendar, account) -> None:
    import datetime as dt

    from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

    start = EWSDateTime(2026, 12, 1, 10, 0, tzinfo=EWSTimeZone("UTC"))
    item = CalendarItem(
        account=account, folder=calendar, subject="ck", start=start, end=start + dt.timedelta(hours=1)
    )
    item.save(send_meeting_invitations="SendToNone")
    _, root = _post(
        ews,
        '<m:UpdateItem ConflictResolution="NeverOverwrite" '
        'SendMeetingInvitationsOrCancellations="SendToNone">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item.id}"/><t:Updates><t:SetItemField>'
        '<t:FieldURI FieldURI="item:Subject"/><t:CalendarItem><t:Subject>x</t:Subject></t:CalendarItem>'
        "</t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
    )
    msg = root.find("s:Body/m:UpdateItemResponse/m:ResponseMessages/m:UpdateItemResponseMessage", NS)
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorChangeKeyRequiredForWriteOperations"


def test_append_to_item_field(ews: EwsTarget, calendar, account) -> None:
    import datetime as dt

    from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone

    start = EWSDateTime(2026, 12, 1, 10, 0, tzinfo=EWSTimeZone("UTC"))
    item = CalendarItem(
        account=account,
        folder=calendar,
        subject="ap",
        body="one",
        start=start,
        end=start + dt.timedelta(hours=1),
    )
    item.save(send_meeting_invitations="SendToNone")
    _, root = _post(
        ews,
        '<m:UpdateItem ConflictResolution="AutoResolve" SendMeetingInvitationsOrCancellations="SendToNone">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item.id}" ChangeKey="{item.changekey}"/><t:Updates>'
        '<t:AppendToItemField><t:FieldURI FieldURI="item:Body"/><t:CalendarItem>'
        '<t:Body BodyType="Text"> two</t:Body></t:CalendarItem></t:AppendToItemField>'
        "</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
    )
    msg = root.find("s:Body/m:UpdateItemResponse/m:ResponseMessages/m:UpdateItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Success"
    assert calendar.get(id=item.id).body == "one two"
