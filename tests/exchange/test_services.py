"""The hardened exchangelib services on static answers: throttling hints in both places Exchange
puts them, fault details in a foreign namespace, and an unreadable item among good ones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from exchangelib.errors import ErrorNonExistentMailbox, ErrorServerBusy

from exchanged.exchange import ExchangeSettings, open_account
from exchanged.exchange.services import GetItemRobust, SyncFolderItemsIds, UnreadableItem

SOAP = ('<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
        ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body>{}</s:Body></s:Envelope>')


@pytest.fixture
def ews_account() -> Iterator[object]:
    acc = open_account(ExchangeSettings(address="mail.example.test", username="svc", password="pw",
                                        version="Exchange2016"))
    yield acc.ews_account("alice@example.test")  # parsing only: no request is made
    trio.run(acc.aclose)


def test_back_off_from_a_response_message(ews_account: object) -> None:
    xml = SOAP.format(
        '<m:GetItemResponse><m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Error">'
        '<m:MessageText>busy</m:MessageText><m:ResponseCode>ErrorServerBusy</m:ResponseCode>'
        '<m:MessageXml><t:Value Name="BackOffMilliseconds">2500</t:Value></m:MessageXml>'
        '</m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse>')
    with pytest.raises(ErrorServerBusy) as info:
        list(GetItemRobust(account=ews_account).parse(xml.encode()))
    assert info.value.back_off == 2.5  # stock exchangelib loses it here


@pytest.mark.parametrize("ns", ["http://schemas.microsoft.com/exchange/services/2006/errors",
                                "http://schemas.microsoft.com/exchange/services/2006/messages"])
def test_fault_details_in_either_namespace(ews_account: object, ns: str) -> None:
    busy = SOAP.format(
        f'<s:Fault><faultcode>a:ErrorServerBusy</faultcode><faultstring>busy</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{ns}">ErrorServerBusy</e:ResponseCode><e:Message xmlns:e="{ns}">busy'
        '</e:Message><t:MessageXml><t:Value Name="BackOffMilliseconds">700</t:Value></t:MessageXml>'
        '</detail></s:Fault>')
    with pytest.raises(ErrorServerBusy) as info:
        list(GetItemRobust(account=ews_account).parse(busy.encode()))
    assert info.value.back_off == 0.7
    missing = SOAP.format(
        f'<s:Fault><faultcode>a:ErrorNonExistentMailbox</faultcode><faultstring>no</faultstring><detail>'
        f'<e:ResponseCode xmlns:e="{ns}">ErrorNonExistentMailbox</e:ResponseCode>'
        f'<e:Message xmlns:e="{ns}">no mailbox</e:Message></detail></s:Fault>')
    with pytest.raises(ErrorNonExistentMailbox):
        list(GetItemRobust(account=ews_account).parse(missing.encode()))


def test_an_unreadable_item_does_not_spoil_the_answer(ews_account: object) -> None:
    xml = SOAP.format(
        '<m:GetItemResponse><m:ResponseMessages>'
        '<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items>'
        '<t:CalendarItem><t:ItemId Id="A" ChangeKey="1"/><t:Subject>fine</t:Subject></t:CalendarItem>'
        '</m:Items></m:GetItemResponseMessage>'
        '<m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode><m:Items>'
        '<t:SomethingNew><t:ItemId Id="B" ChangeKey="2"/></t:SomethingNew>'
        '</m:Items></m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse>')
    good, odd = list(GetItemRobust(account=ews_account).parse(xml.encode()))
    assert good.subject == "fine"
    assert isinstance(odd, UnreadableItem) and odd.item_id == "B"


def test_sync_reads_ids_only(ews_account: object) -> None:
    xml = SOAP.format(
        '<m:SyncFolderItemsResponse><m:ResponseMessages>'
        '<m:SyncFolderItemsResponseMessage ResponseClass="Success">'
        '<m:ResponseCode>NoError</m:ResponseCode><m:SyncState>S2</m:SyncState>'
        '<m:IncludesLastItemInRange>false</m:IncludesLastItemInRange><m:Changes>'
        '<t:Create><t:SomethingNew><t:ItemId Id="A" ChangeKey="1"/></t:SomethingNew></t:Create>'
        '<t:Update><t:CalendarItem><t:ItemId Id="B" ChangeKey="2"/></t:CalendarItem></t:Update>'
        '<t:Delete><t:ItemId Id="C" ChangeKey="3"/></t:Delete>'
        '</m:Changes></m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse>')
    svc = SyncFolderItemsIds(account=ews_account)
    changes = [c[:3] for c in svc.parse(xml.encode())]
    assert changes == [("create", "A", "1"), ("update", "B", "2"), ("delete", "C", "3")]
    assert svc.sync_state == "S2" and svc.includes_last_item_in_range is False
