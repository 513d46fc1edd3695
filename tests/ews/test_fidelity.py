"""What clients other than exchangelib rely on (issue #18): each answer as Exchange gives it.

The expectations come from Microsoft's EWS reference and from what Exchange answers; like the rest
of tests/ews they also run against a real Exchange (EXCHANGED_TEST_EWS_*, see conftest.py).
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal

import requests
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from lxml import etree
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


# -- 4. GetUserConfiguration: a response message, never a fault --------------------------------------
def _user_configuration(ews: EwsTarget, name: str, folder: str) -> etree._Element:
    r, root = _post(
        ews,
        "<m:GetUserConfiguration>"
        f'<m:UserConfigurationName Name="{name}"><t:DistinguishedFolderId Id="{folder}"/>'
        "</m:UserConfigurationName>"
        "<m:UserConfigurationProperties>All</m:UserConfigurationProperties>"
        "</m:GetUserConfiguration>",
    )
    assert r.status_code == 200
    msg = root.find(
        "s:Body/m:GetUserConfigurationResponse/m:ResponseMessages/m:GetUserConfigurationResponseMessage", NS
    )
    assert msg is not None
    return msg


def test_an_unknown_user_configuration_is_item_not_found(ews: EwsTarget) -> None:
    for folder in ("root", "calendar", "inbox"):
        msg = _user_configuration(ews, "exchanged.NoSuchConfiguration", folder)
        assert msg.get("ResponseClass") == "Error"
        assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorItemNotFound"


def test_owa_user_options_carry_the_time_zone(ews: EwsTarget, emulator) -> None:
    emulator.set_mailbox_timezone(ews.mailboxes[0], "W. Europe Standard Time")
    try:
        msg = _user_configuration(ews, "OWA.UserOptions", "root")
        assert msg.get("ResponseClass") == "Success"
        conf = msg.find("m:UserConfiguration", NS)
        assert conf is not None
        assert conf.find("t:UserConfigurationName", NS).get("Name") == "OWA.UserOptions"
        entries = {
            e.findtext("t:DictionaryKey/t:Value", namespaces=NS): e.findtext("t:DictionaryValue/t:Value",
                                                                            namespaces=NS)
            for e in conf.iterfind("t:Dictionary/t:DictionaryEntry", NS)
        }
        assert entries["timezone"] == "W. Europe Standard Time"
        other = _user_configuration(ews, "OWA.UserOptions", "calendar")  # it lives in the root only
        assert other.findtext("m:ResponseCode", namespaces=NS) == "ErrorItemNotFound"
    finally:
        emulator.set_mailbox_timezone(ews.mailboxes[0], None)
    msg = _user_configuration(ews, "OWA.UserOptions", "root")
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorItemNotFound"


# -- 5. Folders honour FolderShape; MAPI properties of folders --------------------------------------
def _get_folder(ews: EwsTarget, folder: str, shape: str) -> etree._Element:
    _, root = _post(
        ews,
        f"<m:GetFolder><m:FolderShape>{shape}</m:FolderShape>"
        f'<m:FolderIds><t:DistinguishedFolderId Id="{folder}"/></m:FolderIds></m:GetFolder>',
    )
    msg = root.find("s:Body/m:GetFolderResponse/m:ResponseMessages/m:GetFolderResponseMessage", NS)
    assert msg is not None and msg.get("ResponseClass") == "Success", etree.tostring(root)
    return msg.find("m:Folders", NS)[0]


def _ext(folder: etree._Element) -> dict[int, str]:
    out = {}
    for prop in folder.iterfind("t:ExtendedProperty", NS):
        tag = prop.find("t:ExtendedFieldURI", NS).get("PropertyTag")
        key = int(tag, 16) if tag.lower().startswith("0x") else int(tag)
        out[key] = prop.findtext("t:Value", namespaces=NS)
    return out


def test_id_only_folder_shape_gets_the_id_only(ews: EwsTarget) -> None:
    folder = _get_folder(ews, "calendar", "<t:BaseShape>IdOnly</t:BaseShape>")
    assert [etree.QName(c).localname for c in folder] == ["FolderId"]


def test_folder_mapi_properties_are_answered_as_extended_properties(ews: EwsTarget, account) -> None:
    tags = [("0x3613", "String"), ("0x3602", "Integer"), ("0x3603", "Integer"), ("0x360A", "Boolean"),
            ("0x3008", "SystemTime"), ("0x670A", "SystemTime"), ("0x3001", "String")]
    shape = ("<t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
             + "".join(f'<t:ExtendedFieldURI PropertyTag="{tag}" PropertyType="{ptype}"/>'
                       for tag, ptype in tags)
             + "</t:AdditionalProperties>")
    calendar = _get_folder(ews, "calendar", shape)
    names = {etree.QName(c).localname for c in calendar}
    assert names == {"FolderId", "ExtendedProperty"}
    props = _ext(calendar)
    assert props[0x3613] == "IPF.Appointment"
    assert props[0x3001] == account.calendar.name
    assert int(props[0x3602]) == account.calendar.total_count
    assert int(props[0x3603]) >= 0
    assert props[0x3008].endswith("Z") and props[0x670A].endswith("Z")
    contacts = _ext(_get_folder(ews, "contacts", shape))
    assert contacts[0x3613] == "IPF.Contact"
    root = _ext(_get_folder(ews, "msgfolderroot", shape))
    assert root[0x360A] == "true"


def test_folder_counts_and_commit_time_follow_the_contents(ews: EwsTarget, account, calendar) -> None:
    shape = ('<t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>'
             '<t:ExtendedFieldURI PropertyTag="0x3602" PropertyType="Integer"/>'
             '<t:ExtendedFieldURI PropertyTag="0x670A" PropertyType="SystemTime"/>'
             '<t:FieldURI FieldURI="folder:DisplayName"/>'
             "</t:AdditionalProperties>")

    def props() -> tuple[dict[int, str], etree._Element]:
        _, root = _post(
            ews,
            f"<m:GetFolder><m:FolderShape>{shape}</m:FolderShape>"
            f'<m:FolderIds><t:FolderId Id="{calendar.id}"/></m:FolderIds></m:GetFolder>',
        )
        folder = root.find(".//m:Folders", NS)[0]
        return _ext(folder), folder

    before, folder = props()
    assert before[0x3602] == "0"
    assert folder.findtext("t:DisplayName", namespaces=NS) == calendar.name
    assert folder.find("t:TotalCount", NS) is None  # not asked for
    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    CalendarItem(account=account, folder=calendar, subject="counted", start=start,
                 end=start + dt.timedelta(hours=1)).save()
    after, _ = props()
    assert after[0x3602] == "1"
    assert after[0x670A] >= before[0x670A]


# -- 6. MAPI properties derived from item fields ---------------------------------------------------
def _find_items(ews: EwsTarget, folder_id: str, props: str, extra: str = "") -> list[etree._Element]:
    _, root = _post(
        ews,
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        f"<t:AdditionalProperties>{props}</t:AdditionalProperties></m:ItemShape>{extra}"
        f'<m:ParentFolderIds><t:FolderId Id="{folder_id}"/></m:ParentFolderIds></m:FindItem>',
    )
    msg = root.find("s:Body/m:FindItemResponse/m:ResponseMessages/m:FindItemResponseMessage", NS)
    assert msg is not None and msg.get("ResponseClass") == "Success", etree.tostring(root)
    return list(msg.find("m:RootFolder/t:Items", NS))


def _named(item: etree._Element) -> dict[str, str]:
    """ExtendedProperty values by 'tag' (hex, lower case) or 'Set:id'."""
    out = {}
    for prop in item.iterfind("t:ExtendedProperty", NS):
        uri = prop.find("t:ExtendedFieldURI", NS)
        tag = uri.get("PropertyTag")
        key = (f"0x{int(tag, 16) if tag.lower().startswith('0x') else int(tag):x}" if tag
               else f"{uri.get('DistinguishedPropertySetId')}:{uri.get('PropertyId')}")
        out[key] = prop.findtext("t:Value", namespaces=NS)
    return out


ITEM_TAGS = "".join(
    f'<t:ExtendedFieldURI PropertyTag="{tag}" PropertyType="{ptype}"/>'
    for tag, ptype in (("0x001A", "String"), ("0x0037", "String"), ("0x3001", "String"),
                       ("0x3007", "SystemTime"), ("0x3008", "SystemTime"), ("0x0E23", "Integer"),
                       ("0x10F3", "String"))
)


def test_calendar_items_carry_their_mapi_properties(ews: EwsTarget, account, calendar) -> None:
    from exchangelib.recurrence import DailyPattern, Recurrence

    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    single = CalendarItem(account=account, folder=calendar, subject="single", start=start,
                          end=start + dt.timedelta(hours=1))
    single.save()
    series = CalendarItem(account=account, folder=calendar, subject="series", start=start,
                          end=start + dt.timedelta(hours=1),
                          recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date(),
                                                number=3))
    series.save()
    recurring = '<t:ExtendedFieldURI DistinguishedPropertySetId="Appointment" PropertyId="33315" ' \
                'PropertyType="Boolean"/>'
    items = {i.find("t:ItemId", NS).get("Id"): _named(i)
             for i in _find_items(ews, calendar.id, ITEM_TAGS + recurring)}
    one, many = items[single.id], items[series.id]
    assert one["0x1a"] == "IPM.Appointment"
    assert one["0x37"] == "single" and one["0x3001"] == "single"
    assert one["0x3007"].endswith("Z") and one["0x3008"].endswith("Z")
    assert int(many["0xe23"]) > int(one["0xe23"])  # a per-folder arrival counter
    assert one["0x10f3"]
    assert one["Appointment:33315"] == "false" and many["Appointment:33315"] == "true"


def test_restrictions_and_sorting_see_mapi_properties(ews: EwsTarget, account, calendar) -> None:
    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    for subject in ("bravo", "alpha", "charlie"):
        CalendarItem(account=account, folder=calendar, subject=subject, start=start,
                     end=start + dt.timedelta(hours=1)).save()
    subject_uri = '<t:ExtendedFieldURI PropertyTag="0x0037" PropertyType="String"/>'
    article_uri = '<t:ExtendedFieldURI PropertyTag="0x0E23" PropertyType="Integer"/>'
    sort = (f'<m:SortOrder><t:FieldOrder Order="Descending">{subject_uri}</t:FieldOrder></m:SortOrder>')
    found = _find_items(ews, calendar.id, subject_uri + article_uri, sort)
    assert [_named(i)["0x37"] for i in found] == ["charlie", "bravo", "alpha"]
    first_article = min(int(_named(i)["0xe23"]) for i in found)
    restriction = (
        f"<m:Restriction><t:IsGreaterThan>{article_uri}"
        f'<t:FieldURIOrConstant><t:Constant Value="{first_article}"/></t:FieldURIOrConstant>'
        "</t:IsGreaterThan></m:Restriction>"
    )
    newer = _find_items(ews, calendar.id, subject_uri, restriction)
    assert sorted(_named(i)["0x37"] for i in newer) == ["alpha", "charlie"]
    only = _find_items(ews, calendar.id, subject_uri,
                       f"<m:Restriction><t:IsEqualTo>{subject_uri}<t:FieldURIOrConstant>"
                       '<t:Constant Value="bravo"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction>')
    assert [_named(i)["0x37"] for i in only] == ["bravo"]


def test_tasks_and_contacts_carry_their_named_properties(ews: EwsTarget, account, tasks, contacts) -> None:
    from exchangelib import Contact, Task
    from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress

    Task(account=account, folder=tasks, subject="to do", status="InProgress",
         percent_complete=Decimal(50)).save()
    task_uris = "".join(
        f'<t:ExtendedFieldURI DistinguishedPropertySetId="Task" PropertyId="{pid}" PropertyType="{ptype}"/>'
        for pid, ptype in ((33025, "Integer"), (33052, "Boolean"), (33026, "Double"))
    )
    (task,) = _find_items(ews, tasks.id, task_uris + ITEM_TAGS)
    props = _named(task)
    assert props["Task:33025"] == "1" and props["Task:33052"] == "false"
    assert float(props["Task:33026"]) == 0.5
    assert props["0x1a"] == "IPM.Task"

    Contact(account=account, folder=contacts, display_name="Ada Lovelace", given_name="Ada",
            surname="Lovelace", company_name="Engines",
            email_addresses=[EmailAddress(label="EmailAddress1", email="ada@example.test")],
            phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="+44 1")],
            physical_addresses=[PhysicalAddress(label="Home", street="1 Lane", city="London"),
                                PhysicalAddress(label="Business", city="Cambridge")]).save()
    contact_uris = "".join(
        f'<t:ExtendedFieldURI PropertyTag="{tag}" PropertyType="String"/>'
        for tag in ("0x3A06", "0x3A11", "0x3A16", "0x3A1C", "0x3A59", "0x3A5D", "0x3001", "0x001A")
    ) + "".join(
        f'<t:ExtendedFieldURI DistinguishedPropertySetId="Address" PropertyId="{pid}" PropertyType="String"/>'
        for pid in (0x8083, 0x8046)
    )
    (contact,) = _find_items(ews, contacts.id, contact_uris)
    props = _named(contact)
    assert props["0x3a06"] == "Ada" and props["0x3a11"] == "Lovelace" and props["0x3a16"] == "Engines"
    assert props["0x3a1c"] == "+44 1" and props["0x3a59"] == "London" and props["0x3a5d"] == "1 Lane"
    assert props["0x1a"] == "IPM.Contact" and "Lovelace" in props["0x3001"]
    assert props[f"Address:{0x8083}"] == "ada@example.test"
    assert props[f"Address:{0x8046}"] == "Cambridge"


# -- 7. MimeContent: iCalendar for calendar items, vCard for contacts ------------------------------
def _get_mime(ews: EwsTarget, item_id: str) -> etree._Element:
    _, root = _post(
        ews,
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>"
        "<t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape>"
        f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>',
    )
    msg = root.find("s:Body/m:GetItemResponse/m:ResponseMessages/m:GetItemResponseMessage", NS)
    assert msg is not None
    return msg


def _mime_of(msg: etree._Element) -> bytes:
    assert msg.get("ResponseClass") == "Success", etree.tostring(msg)
    mime = msg.find("m:Items/*/t:MimeContent", NS)
    assert mime is not None, etree.tostring(msg)
    return base64.b64decode(mime.text or "")


def _create(ews: EwsTarget, folder_id: str, item_xml: str) -> str:
    _, root = _post(
        ews,
        '<m:CreateItem SendMeetingInvitations="SendToNone">'
        f'<m:SavedItemFolderId><t:FolderId Id="{folder_id}"/></m:SavedItemFolderId>'
        f"<m:Items>{item_xml}</m:Items></m:CreateItem>",
    )
    msg = root.find("s:Body/m:CreateItemResponse/m:ResponseMessages/m:CreateItemResponseMessage", NS)
    assert msg is not None and msg.get("ResponseClass") == "Success", etree.tostring(root)
    return str(msg.find("m:Items/*/t:ItemId", NS).get("Id"))


def test_calendar_items_are_answered_as_icalendar(ews: EwsTarget, account, calendar) -> None:
    import icalendar

    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    item = CalendarItem(account=account, folder=calendar, subject="planning", location="Room 1",
                        body="agenda", start=start, end=start + dt.timedelta(hours=1))
    item.save()
    cal = icalendar.Calendar.from_ical(_mime_of(_get_mime(ews, item.id)))
    (event,) = cal.walk("VEVENT")
    assert str(event["SUMMARY"]) == "planning" and str(event["LOCATION"]) == "Room 1"
    assert event.decoded("DTSTART") == dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)
    assert event.decoded("DTEND") == dt.datetime(2026, 12, 3, 11, 0, tzinfo=dt.UTC)
    item.refresh()
    assert str(event["UID"]) == item.uid


def test_a_calendar_item_is_created_and_updated_from_icalendar(ews: EwsTarget, account, calendar) -> None:
    ics = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
           "UID:exchanged-mime-test-1\r\nSUMMARY:from ical\r\nLOCATION:Hall\r\n"
           "DTSTART:20261204T090000Z\r\nDTEND:20261204T093000Z\r\nRRULE:FREQ=DAILY;COUNT=3\r\n"
           "END:VEVENT\r\nEND:VCALENDAR\r\n")
    mime = base64.b64encode(ics.encode()).decode()
    item_id = _create(ews, calendar.id,
                      f"<t:CalendarItem><t:MimeContent>{mime}</t:MimeContent></t:CalendarItem>")
    item = calendar.get(id=item_id)
    assert item.subject == "from ical" and item.location == "Hall"
    assert item.start == EWSDateTime(2026, 12, 4, 9, 0, tzinfo=UTC)
    assert item.uid == "exchanged-mime-test-1"
    assert item.recurrence is not None and item.recurrence.boundary.number == 3
    updated = ics.replace("SUMMARY:from ical", "SUMMARY:changed").replace("RRULE:FREQ=DAILY;COUNT=3\r\n", "")
    _, root = _post(
        ews,
        '<m:UpdateItem ConflictResolution="AlwaysOverwrite"'
        ' SendMeetingInvitationsOrCancellations="SendToNone">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item_id}"/><t:Updates><t:SetItemField>'
        '<t:FieldURI FieldURI="item:MimeContent"/><t:CalendarItem>'
        f"<t:MimeContent>{base64.b64encode(updated.encode()).decode()}</t:MimeContent>"
        "</t:CalendarItem></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
    )
    msg = root.find(".//m:UpdateItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Success", etree.tostring(root)
    assert calendar.get(id=item_id).subject == "changed"


def test_contacts_are_answered_and_written_as_vcard(ews: EwsTarget, account, contacts) -> None:
    import icalendar
    from exchangelib import Contact
    from exchangelib.indexed_properties import EmailAddress

    contact = Contact(account=account, folder=contacts, display_name="Ada Lovelace", given_name="Ada",
                      surname="Lovelace", company_name="Engines",
                      email_addresses=[EmailAddress(label="EmailAddress1", email="ada@example.test")])
    contact.save()
    card = icalendar.Component.from_ical(_mime_of(_get_mime(ews, contact.id)))
    assert card.name == "VCARD"
    assert str(card["FN"]) == "Ada Lovelace"
    assert card["N"].fields.family == "Lovelace" and card["N"].fields.given == "Ada"
    assert "ada@example.test" in str(card["EMAIL"])

    vcf = ("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Grace Hopper\r\nN:Hopper;Grace;;;\r\nORG:Navy\r\n"
           "EMAIL;TYPE=INTERNET:grace@example.test\r\nTEL;TYPE=CELL:+1 555\r\n"
           "ADR;TYPE=HOME:;;1 Street;Arlington;VA;22201;USA\r\nEND:VCARD\r\n")
    item_id = _create(ews, contacts.id, "<t:Contact><t:MimeContent>"
                      f"{base64.b64encode(vcf.encode()).decode()}</t:MimeContent></t:Contact>")
    grace = contacts.get(id=item_id)
    assert grace.display_name == "Grace Hopper" and grace.surname == "Hopper"
    assert grace.given_name == "Grace" and grace.company_name == "Navy"
    assert [e.email for e in grace.email_addresses] == ["grace@example.test"]
    assert [p.phone_number for p in grace.phone_numbers if p.label == "MobilePhone"] == ["+1 555"]
    home = next(a for a in grace.physical_addresses if a.label == "Home")
    assert (home.street, home.city, home.zipcode) == ("1 Street", "Arlington", "22201")


def test_tasks_are_answered_as_a_message_and_not_written_from_mime(ews: EwsTarget, account, tasks) -> None:
    """Exchange answers a task's MimeContent as a MIME message; writing one is refused explicitly here."""
    import email

    from exchangelib import Task

    task = Task(account=account, folder=tasks, subject="with mime", body="do it")
    task.save()
    message = email.message_from_bytes(_mime_of(_get_mime(ews, task.id)))
    assert message["Subject"] == "with mime"
    if ews.server is None:
        return
    _, root = _post(
        ews,
        f'<m:CreateItem><m:SavedItemFolderId><t:FolderId Id="{tasks.id}"/></m:SavedItemFolderId>'
        "<m:Items><t:Task><t:MimeContent>"
        f"{base64.b64encode(b'Subject: x' + bytes([13, 10, 13, 10]) + b'body').decode()}"
        "</t:MimeContent></t:Task></m:Items></m:CreateItem>",
    )
    msg = root.find(".//m:CreateItemResponseMessage", NS)
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorUnsupportedMimeConversion"


def test_a_series_with_exceptions_is_answered_with_exdate_and_recurrence_ids(
    ews: EwsTarget, account, calendar
) -> None:
    import icalendar
    from exchangelib.recurrence import DailyPattern, Recurrence

    start = EWSDateTime(2026, 12, 3, 10, 0, tzinfo=UTC)
    series = CalendarItem(account=account, folder=calendar, subject="daily", start=start,
                          end=start + dt.timedelta(hours=1),
                          recurrence=Recurrence(pattern=DailyPattern(interval=1), start=start.date(),
                                                number=4))
    series.save()
    second = series.occurrence(index=2)
    second.refresh()
    second.subject = "moved"
    second.save(update_fields=["subject"])
    third = series.occurrence(index=3)
    third.refresh()
    third.delete()
    cal = icalendar.Calendar.from_ical(_mime_of(_get_mime(ews, series.id)))
    events = cal.walk("VEVENT")
    master = next(e for e in events if e.get("RECURRENCE-ID") is None)
    assert master["RRULE"]["FREQ"] == ["DAILY"] and master["RRULE"]["COUNT"] == [4]
    assert [d.dt for d in master["EXDATE"].dts] == [dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)]
    (moved,) = [e for e in events if e.get("RECURRENCE-ID") is not None]
    assert str(moved["SUMMARY"]) == "moved"
    assert moved.decoded("RECURRENCE-ID") == dt.datetime(2026, 12, 4, 10, 0, tzinfo=dt.UTC)


def test_icalendar_carries_the_items_time_zone(ews: EwsTarget, account, calendar) -> None:
    """DavMail learns the user's VTIMEZONE this way: it creates a calendar item with only a
    StartTimeZone in a scratch folder and reads its MimeContent; Exchange answers a VTIMEZONE named
    by the Windows zone and times local to it."""
    import icalendar

    _, root = _post(
        ews,
        '<m:CreateItem SendMeetingInvitations="SendToNone">'
        f'<m:SavedItemFolderId><t:FolderId Id="{calendar.id}"/></m:SavedItemFolderId><m:Items>'
        '<t:CalendarItem><t:StartTimeZone Id="W. Europe Standard Time"/></t:CalendarItem>'
        "</m:Items></m:CreateItem>",
    )
    msg = root.find(".//m:CreateItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Success", etree.tostring(root)
    item_id = msg.find("m:Items/*/t:ItemId", NS).get("Id")
    cal = icalendar.Calendar.from_ical(_mime_of(_get_mime(ews, item_id)))
    (zone,) = cal.walk("VTIMEZONE")
    assert str(zone["TZID"]) == "W. Europe Standard Time"
    (event,) = cal.walk("VEVENT")
    assert event["DTSTART"].params["TZID"] == "W. Europe Standard Time"


def _ext_xml(tag: str, ptype: str, value: str) -> str:
    attrs = (f'PropertyTag="{tag}"' if not tag.startswith("Task:")
             else f'DistinguishedPropertySetId="Task" PropertyId="{tag[5:]}"')
    return (f'<t:ExtendedProperty><t:ExtendedFieldURI {attrs} PropertyType="{ptype}"/>'
            f"<t:Value>{value}</t:Value></t:ExtendedProperty>")


def test_fields_written_under_their_mapi_tags_are_the_fields(
    ews: EwsTarget, account, tasks, contacts
) -> None:
    """DavMail writes contacts and tasks through MAPI tags; on Exchange the tag and the EWS field
    are one property, so exchangelib reads what was written."""
    task_id = _create(ews, tasks.id, "<t:Task>" + _ext_xml("0x0037", "String", "tagged task")
                      + _ext_xml("Task:33025", "Integer", "1") + _ext_xml("Task:33026", "Double", "0.4")
                      + "</t:Task>")
    task = tasks.get(id=task_id)
    assert task.subject == "tagged task" and task.status == "InProgress" and task.percent_complete == 40
    contact_id = _create(ews, contacts.id, "<t:Contact>" + _ext_xml("0x3001", "String", "Grace Hopper")
                         + _ext_xml("0x3A06", "String", "Grace") + _ext_xml("0x3A11", "String", "Hopper")
                         + _ext_xml("0x3A1C", "String", "+1 555") + _ext_xml("0x3A59", "String", "Arlington")
                         + "</t:Contact>")
    grace = contacts.get(id=contact_id)
    assert (grace.display_name, grace.given_name, grace.surname) == ("Grace Hopper", "Grace", "Hopper")
    assert [p.phone_number for p in grace.phone_numbers if p.label == "MobilePhone"] == ["+1 555"]
    assert [a.city for a in grace.physical_addresses if a.label == "Home"] == ["Arlington"]
    _, root = _post(
        ews,
        '<m:UpdateItem ConflictResolution="AlwaysOverwrite"><m:ItemChanges><t:ItemChange>'
        f'<t:ItemId Id="{task_id}"/><t:Updates><t:SetItemField>'
        '<t:ExtendedFieldURI PropertyTag="0x0037" PropertyType="String"/>'
        f'<t:Task>{_ext_xml("0x0037", "String", "renamed")}</t:Task>'
        "</t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
    )
    assert root.find(".//m:UpdateItemResponseMessage", NS).get("ResponseClass") == "Success"
    assert tasks.get(id=task_id).subject == "renamed"


def test_find_item_refuses_mime_content_rather_than_dropping_it(ews: EwsTarget, calendar, emulator) -> None:
    """Ours, not checked against Exchange (hence `emulator`): an explicit error, never an omission."""
    _, root = _post(
        ews,
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        "<t:IncludeMimeContent>true</t:IncludeMimeContent></m:ItemShape>"
        f'<m:ParentFolderIds><t:FolderId Id="{calendar.id}"/></m:ParentFolderIds></m:FindItem>',
    )
    msg = root.find(".//m:FindItemResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error"
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidPropertyForOperation"


def test_negotiate_is_offered_when_configured_and_spnego_logs_in(ews: EwsTarget, emulator) -> None:
    """IIS with Windows authentication offers Negotiate first; a SPNEGO client (NTLM inside, no
    Kerberos here) logs in on one keep-alive connection."""
    import spnego

    emulator.set_faults(offer_negotiate=1)
    session = requests.Session()
    verify = ews.ca_file or True
    first = session.get(ews.url, timeout=10, verify=verify)
    assert first.status_code == 401
    assert first.headers["WWW-Authenticate"].startswith("Negotiate")
    client = spnego.client(ews.user, ews.password, hostname="localhost", service="HTTP",
                           protocol="negotiate")
    token = client.step()
    assert token[:1] == b"\x60"  # SPNEGO NegTokenInit (NTLM inside), not a bare NTLM message
    r = session.get(ews.url, headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()},
                    timeout=10, verify=verify)
    while r.status_code == 401 and r.headers.get("WWW-Authenticate", "").startswith("Negotiate "):
        challenge = base64.b64decode(r.headers["WWW-Authenticate"].split(",")[0].split(" ", 1)[1])
        token = client.step(challenge)
        if not token:
            break
        r = session.get(ews.url, headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()},
                        timeout=10, verify=verify)
    assert r.status_code == 200
