"""Bad input never escapes as a traceback, and concurrent clients see consistent results."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchangelib import (
    IMPERSONATION,
    NTLM,
    Account,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from exchanged.testing.ews import EwsTestServer
from exchanged.testing.ews.fixtures import SERVICE_ACCOUNT

S = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"

OPERATIONS = [
    "GetFolder",
    "FindFolder",
    "CreateFolder",
    "DeleteFolder",
    "CreateItem",
    "GetItem",
    "UpdateItem",
    "DeleteItem",
    "FindItem",
    "SyncFolderItems",
    "SyncFolderHierarchy",
    "ConvertId",
    "ResolveNames",
    "Subscribe",
    "GetStreamingEvents",
    "Unsubscribe",
    "MoveItem",
    "EmptyFolder",
    "Bogus",
]
CHILDREN = [
    "ItemShape",
    "FolderShape",
    "ItemIds",
    "FolderIds",
    "ParentFolderIds",
    "SavedItemFolderId",
    "Items",
    "ItemChanges",
    "SyncFolderId",
    "SyncState",
    "MaxChangesReturned",
    "IndexedPageItemView",
    "CalendarView",
    "Restriction",
    "SortOrder",
    "Folders",
    "ParentFolderId",
    "SourceIds",
    "SubscriptionIds",
    "ToFolderId",
    "Ignore",
    "ConnectionTimeout",
    "UnresolvedEntry",
]
TYPES = [
    "ItemId",
    "FolderId",
    "DistinguishedFolderId",
    "CalendarItem",
    "Task",
    "Contact",
    "ItemChange",
    "Updates",
    "SetItemField",
    "FieldURI",
    "IsEqualTo",
    "And",
    "Not",
    "Constant",
    "BaseShape",
    "AdditionalProperties",
    "ExtendedFieldURI",
    "Recurrence",
    "DailyRecurrence",
    "NumberedRecurrence",
    "Excludes",
    "Bitmask",
    "Interval",
    "DaysOfWeek",
    "WeeklyRecurrence",
    "AbsoluteMonthlyRecurrence",
    "RelativeYearlyRecurrence",
    "DayOfMonth",
    "DayOfWeekIndex",
    "Month",
    "EndDateRecurrence",
    "NoEndRecurrence",
    "StartDate",
    "EndDate",
    "NumberOfOccurrences",
    "OccurrenceItemId",
    "RecurringMasterItemId",
    "IndexedFieldURI",
    "ExtendedProperty",
    "Value",
    "Values",
    "Contains",
    "FieldOrder",
    "Start",
    "End",
    "Status",
    "PercentComplete",
    "DueDate",
    "EmailAddresses",
    "Entry",
    "DeleteItemField",
    "AppendToItemField",
    "Or",
    "IsGreaterThan",
    "Exists",
    "Subject",
    "Body",
    "Folder",
    "ContactsFolder",
    "DisplayName",
    "AlternateId",
    "StreamingSubscriptionRequest",
    "Mailbox",
    "EmailAddress",
]
ATTRS = [
    "Id",
    "ChangeKey",
    "FieldURI",
    "Value",
    "MaxEntriesReturned",
    "Offset",
    "StartDate",
    "EndDate",
    "Traversal",
    "ConflictResolution",
    "DeleteType",
    "PropertyType",
    "PropertyTag",
    "InstanceIndex",
    "FieldIndex",
    "Key",
    "PropertySetId",
    "PropertyName",
    "BasePoint",
    "Order",
    "ContainmentMode",
    "RecurringMasterId",
    "OccurrenceId",
    "DistinguishedPropertySetId",
    "Format",
]
VALUES = st.sampled_from(
    [
        "",
        "calendar",
        "root",
        "publicfoldersroot",
        "DUMMY",
        "-1",
        "0",
        "513",
        "x" * 50,
        "2026-12-01T00:00:00Z",
        "9999-99-99",
        "RVhESQAAAAAAAAAAAAAAAAAAAAA=",
        "true",
        "<&>",
        "0x3FFB",
        "Integer",
        "StringArray",
        "Monday Day",
        "Last",
        "End",
        "Descending",
        "item:Subject",
        "calendar:Start",
        "contacts:EmailAddress",
        "EmailAddress1",
        "contacts:PhysicalAddress:Street",
        "99999999999999999999",
        "2026-12-01",
        "1e400",
        "alice@example.test",
    ]
)


def _element(depth: int) -> st.SearchStrategy[etree._Element]:
    def build(name: str, attrs: dict[str, str], text: str, kids: list[etree._Element]) -> etree._Element:
        el = etree.Element(f"{{{T}}}{name}", {k: v for k, v in attrs.items()})
        el.text = text
        el.extend(kids)
        return el

    kids = st.lists(_element(depth - 1), max_size=3) if depth > 0 else st.just([])
    return st.builds(
        build,
        st.sampled_from(TYPES + CHILDREN),
        st.dictionaries(st.sampled_from(ATTRS), VALUES, max_size=3),
        VALUES,
        kids,
    )


@st.composite
def requests_(draw: st.DrawFn) -> bytes:
    env = etree.Element(f"{{{S}}}Envelope")
    header = etree.SubElement(env, f"{{{S}}}Header")
    if draw(st.booleans()):
        etree.SubElement(
            header,
            f"{{{T}}}RequestServerVersion",
            Version=draw(st.sampled_from(["Exchange2016", "Exchange2013", "Bogus"])),
        )
    body = etree.SubElement(env, f"{{{S}}}Body")
    op = etree.SubElement(body, f"{{{M}}}{draw(st.sampled_from(OPERATIONS))}")
    for name in draw(st.lists(st.sampled_from(CHILDREN), max_size=4)):
        child = etree.SubElement(op, f"{{{M}}}{name}")
        child.text = draw(VALUES)
        child.extend(draw(st.lists(_element(2), max_size=2)))
    raw = etree.tostring(env)
    cut = draw(st.integers(min_value=0, max_value=len(raw)))
    return raw if draw(st.booleans()) else raw[:cut]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EwsTestServer]:
    # The dispatcher is exercised in-process, without sockets; one store for all examples.
    server = EwsTestServer(tmp_path_factory.mktemp("fuzz"), ["alice@example.test"], {})
    yield server
    server.store.close()


@settings(max_examples=300, deadline=None)
@given(body=requests_())
def test_any_request_gets_a_soap_answer_never_a_traceback(fuzz_server: EwsTestServer, body: bytes) -> None:
    status, payload = fuzz_server.dispatcher.handle("alice@example.test", body, {})
    assert status in (200, 500)
    root = etree.fromstring(payload)
    assert etree.QName(root).localname == "Envelope"
    assert b"Traceback" not in payload
    internal = root.find(f".//{{{S}}}Fault/detail")
    if internal is not None:
        codes = [c.text for c in internal if etree.QName(c).localname == "ResponseCode"]
        assert codes != ["ErrorInternalServerError"], body


def test_concurrent_clients_create_without_loss(ews, emulator: EwsTestServer, calendar) -> None:
    config = Configuration(
        service_endpoint=emulator.url,
        credentials=Credentials(*SERVICE_ACCOUNT),
        auth_type=NTLM,
        max_connections=4,
    )
    account = Account("alice@example.test", config=config, autodiscover=False, access_type=IMPERSONATION)
    folder = account.calendar // calendar.name
    t0 = EWSDateTime(2026, 12, 1, 8, 0, tzinfo=EWSTimeZone("UTC"))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            items = [
                CalendarItem(
                    account=account,
                    folder=folder,
                    subject=f"w{n}-{i}",
                    start=t0 + dt.timedelta(hours=i),
                    end=t0 + dt.timedelta(hours=i + 1),
                )
                for i in range(30)
            ]
            account.bulk_create(folder=folder, items=items, send_meeting_invitations="SendToNone")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert calendar.all().count() == 120
    changes = list(calendar.sync_items())
    assert len(changes) == 120


def test_state_dir_survives_unclean_stop(tmp_path: Path) -> None:
    server = EwsTestServer(tmp_path / "s", ["alice@example.test"], {}).start()
    server.stop()
    again = EwsTestServer(tmp_path / "s", ["alice@example.test", "carol@example.test"], {}).start()
    try:
        assert set(again.store.mailboxes()) == {"alice@example.test", "carol@example.test"}
    finally:
        again.stop()
