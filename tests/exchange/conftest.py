"""Fixtures of the Exchange adapter tests: the EWS test server in-process (real TLS, real
exchangelib), adapter settings pointing at it, and a harness that lets the contract suite run the
same tests against the real adapter and against ``MemoryExchange``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
import trio

from exchanged.exchange import EwsAccount, ExchangeSettings, open_account
from exchanged.model import Appointment, FolderKind
from exchanged.testing.ews import EwsTestServer
from exchanged.testing.ews.fixtures import SERVICE_ACCOUNT, start_server
from tests.memory import MemoryExchange

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture
def ews_server(tmp_path: Any) -> Iterator[EwsTestServer]:
    server = start_server(tmp_path / "ews")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(ews_server: EwsTestServer) -> ExchangeSettings:
    return ExchangeSettings(
        address="localhost", port=ews_server.port, ca_bundle=ews_server.ca_file,
        username=SERVICE_ACCOUNT[0], password=SERVICE_ACCOUNT[1], version="Exchange2016",
        enabled_mailboxes=(ALICE, BOB), category="PSA", max_connections=3)


@pytest.fixture
async def account(settings: ExchangeSettings) -> AsyncIterator[EwsAccount]:
    acc = open_account(settings)
    try:
        yield acc
    finally:
        await acc.aclose()


class Harness:
    """What a contract test needs besides the port: request counts, faults, a user's edits."""

    account: Any

    def requests(self) -> dict[str, int]:
        raise NotImplementedError

    def drop_next(self, op: str) -> None:
        raise NotImplementedError

    async def user_edit(self, folder: FolderKind, item_id: str, **values: Any) -> None:
        raise NotImplementedError

    async def user_add_series(self, first: Appointment, starts: Sequence[datetime]) -> str:
        """A foreign recurring series in alice's calendar; returns its UID."""
        raise NotImplementedError

    async def user_break(self, folder: FolderKind, item_id: str) -> None:
        """The item loses its Start (what no real server should send, but one might): unreadable."""
        raise NotImplementedError


class MemoryHarness(Harness):
    def __init__(self) -> None:
        self.account = MemoryExchange()

    def requests(self) -> dict[str, int]:
        return dict(self.account.requests)

    def drop_next(self, op: str) -> None:
        self.account.fault(op, drop=True)

    async def user_edit(self, folder: FolderKind, item_id: str, **values: Any) -> None:
        self.account.mailbox(ALICE).user_edit(folder, item_id, **values)

    async def user_add_series(self, first: Appointment, starts: Sequence[datetime]) -> str:
        master = self.account.mailbox(ALICE).user_add_series(first, starts)
        assert master.uid is not None
        return master.uid

    async def user_break(self, folder: FolderKind, item_id: str) -> None:
        self.account.mailbox(ALICE).user_break(folder, item_id, missing=("start",))


class EwsHarness(Harness):
    page_size = 512  # SyncFolderItems MaxChangesReturned
    series_in_changes = "master"  # SyncFolderItems lists a recurring series' master

    def __init__(self, server: EwsTestServer, account: EwsAccount) -> None:
        self.server = server
        self.account = account
        self.ews = account  # what a user's edits go through (Outlook: EWS on the same store)

    def requests(self) -> dict[str, int]:
        return dict(self.server.stats()["requests"])

    def drop_next(self, op: str) -> None:
        self.server.set_faults(drop_next=1)

    async def _in_thread(self, fn: Any) -> Any:
        return await trio.to_thread.run_sync(fn)

    async def user_break(self, folder: FolderKind, item_id: str) -> None:
        store = self.server.store
        with store.lock:  # the server holds it for a whole operation
            row = store.item(item_id)
            assert row is not None, item_id
            xml = re.sub(r"<t:Start>.*?</t:Start>", "", row.xml, count=1)
            assert xml != row.xml
            store.update_item(row, xml)

    async def user_edit(self, folder: FolderKind, item_id: str, **values: Any) -> None:
        """What Outlook does: change fields of the item directly (exchangelib, not the adapter)."""
        from exchanged.exchange import convert

        acc = self.ews.ews_account(ALICE)
        names = {"location": "location", "subject": "subject", "business_phone": "phone_numbers"}

        def edit() -> None:
            cls = convert.ITEM_CLASSES[folder]
            item = next(iter(acc.fetch(ids=[(item_id, None)], only_fields=list({names[k] for k in values}))))
            assert isinstance(item, cls), item
            for k, v in values.items():
                setattr(item, names[k], v)
            item.save(update_fields=list({names[k] for k in values}))

        await self._in_thread(edit)

    async def user_add_series(self, first: Appointment, starts: Sequence[datetime]) -> str:
        from exchangelib import CalendarItem
        from exchangelib.recurrence import DailyPattern, Recurrence

        from exchanged.exchange import convert
        from exchanged.exchange.mailbox import FOLDER_CLASSES

        acc = self.ews.ews_account(ALICE)
        folder = self.ews.distinguished_folder(ALICE, FOLDER_CLASSES[FolderKind.CALENDAR])
        days = (starts[1] - starts[0]).days if len(starts) > 1 else 1

        def add() -> str:
            item = CalendarItem(
                account=acc, folder=folder, subject=first.subject,
                start=convert.to_ews(starts[0]), end=convert.to_ews(starts[0] + (first.end - first.start)),
                recurrence=Recurrence(pattern=DailyPattern(interval=days), start=starts[0].date(),
                                      number=len(starts)))
            item.save(send_meeting_invitations="SendToNone")
            item.refresh()
            return str(item.uid)

        return str(await self._in_thread(add))


class GraphHarness(EwsHarness):
    """The Graph adapter against the Graph test server; the user's edits go through EWS to the
    same store (both test servers serve one set of mailboxes)."""

    page_size = 500  # Prefer: odata.maxpagesize of the adapter's delta requests
    series_in_changes = "occurrences"  # calendarView/delta expands series; masters are not listed
    # an event without a start is in no calendar view: Graph's delta never shows it (searches do)
    unreadable_in_changes = False
    WRITES = {"CreateItem": "POST", "UpdateItem": "PATCH", "DeleteItem": "DELETE"}

    def __init__(self, server: EwsTestServer, graph: Any, account: Any, ews: EwsAccount) -> None:
        super().__init__(server, ews)
        self.graph = graph
        self.account = account

    def requests(self) -> dict[str, int]:
        """EWS operation names for Graph's writes (each part of a $batch counted)."""
        batched = self.graph.stats().get("batched", {})
        out: dict[str, int] = {}
        for op, method in self.WRITES.items():
            n = sum(v for k, v in batched.items()
                    if k.startswith(method + " ") and "/linkedResources" not in k)
            if n:
                out[op] = n
        return out

    def drop_next(self, op: str) -> None:
        self.graph.set_faults(drop_next=1, only="POST /v1.0/$batch")

    @staticmethod
    def _ews_id(item_id: str) -> str:
        from exchanged.testing.graph.convert import to_ews_id  # REST ids are URL-safe EWS ids

        return to_ews_id(item_id)

    async def user_edit(self, folder: FolderKind, item_id: str, **values: Any) -> None:
        await super().user_edit(folder, self._ews_id(item_id), **values)

    async def user_break(self, folder: FolderKind, item_id: str) -> None:
        await super().user_break(folder, self._ews_id(item_id))


@pytest.fixture(params=["ews", "memory", "graph"])
async def harness(request: Any, tmp_path: Any) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield MemoryHarness()
        return
    if request.param == "graph":
        async for h in _graph_harness(tmp_path):
            yield h
        return
    server = start_server(tmp_path / "ews")
    settings = ExchangeSettings(
        address="localhost", port=server.port, ca_bundle=server.ca_file, username=SERVICE_ACCOUNT[0],
        password=SERVICE_ACCOUNT[1], version="Exchange2016", enabled_mailboxes=(ALICE, BOB),
        category="PSA")
    acc = open_account(settings)
    try:
        yield EwsHarness(server, acc)
    finally:
        await acc.aclose()
        server.stop()


def replace_settings(settings: ExchangeSettings, **changes: Any) -> ExchangeSettings:
    return dataclasses.replace(settings, **changes)


async def _graph_harness(tmp_path: Any) -> AsyncIterator[Harness]:
    from exchanged.graph import GraphAccount, GraphSettings
    from exchanged.testing.graph.auth import Client
    from exchanged.testing.graph.server import GraphTestServer

    server = start_server(tmp_path / "store")
    graph = GraphTestServer(tmp_path / "store", [ALICE, BOB], "contoso.example", [Client("app", ["s3cret"])],
                            store=server.store)
    graph.start()
    ews = open_account(ExchangeSettings(
        address="localhost", port=server.port, ca_bundle=server.ca_file, username=SERVICE_ACCOUNT[0],
        password=SERVICE_ACCOUNT[1], version="Exchange2016", enabled_mailboxes=(ALICE, BOB)))
    acc = GraphAccount(GraphSettings(
        graph_url=graph.url, login_url=graph.login_url, tenant_id="contoso.example", client_id="app",
        client_secret="s3cret", ca_bundle=graph.ca_file, enabled_mailboxes=(ALICE, BOB), category="PSA"))
    try:
        yield GraphHarness(server, graph, acc, ews)
    finally:
        await acc.aclose()
        await ews.aclose()
        graph.stop()
        server.stop()
