"""$batch against the Graph test server with Exchange Online's 4-requests-per-mailbox limit applied
to the parts of a batch: the adapter's parts go as one dependsOn chain, so none is refused, and a
part that fails stops nothing behind it (those answer 424 and are sent again)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchanged.graph import GraphAccount
from exchanged.model import Appointment, ExchangeItem, FolderKind, Kind
from exchanged.ports import NewItem
from exchanged.testing.graph.fixtures import running_server, settings_for
from exchanged.testing.graph.server import GraphTestServer

pytestmark = pytest.mark.e2e

ALICE = "alice@example.test"
T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GraphTestServer]:
    with running_server(tmp_path / "graph") as srv:
        srv.set_faults(batch_mailbox_concurrency=4)
        yield srv


def account(server: GraphTestServer) -> GraphAccount:
    return GraphAccount(
        settings_for(server)
    )


def appt(n: int) -> NewItem:
    start = T0 + timedelta(hours=n)
    return NewItem(
        Kind.APPOINTMENT, f"appointment:{n}", Appointment(f"Visit {n}", start, start + timedelta(hours=1))
    )


async def test_twenty_parts_for_one_mailbox_are_never_refused_for_concurrency(
    server: GraphTestServer,
) -> None:
    acc = account(server)
    created = await acc.mailbox(ALICE).create(FolderKind.CALENDAR, [appt(n) for n in range(40)])
    await acc.aclose()
    assert all(isinstance(c, ExchangeItem) for c in created), created
    stats = server.stats()
    assert stats["requests"]["POST /v1.0/$batch"] == 2 and stats["throttled"] == 0, stats["requests"]


async def test_a_failed_part_stops_nothing_behind_it(server: GraphTestServer) -> None:
    acc = account(server)
    mb = acc.mailbox(ALICE)
    [first] = await mb.create(FolderKind.CALENDAR, [appt(0)])
    assert isinstance(first, ExchangeItem)
    await mb.delete(FolderKind.CALENDAR, [first.item_id])
    # the third delete is of an item already gone (404): the ones behind it still go
    [a, b, c, d] = await mb.create(FolderKind.CALENDAR, [appt(n) for n in (1, 2, 3, 4)])
    results = await mb.delete(
        FolderKind.CALENDAR, [a.item_id, b.item_id, first.item_id, c.item_id, d.item_id]
    )  # type: ignore[union-attr]
    await acc.aclose()
    assert [r is None for r in results] == [True, True, False, True, True], results
    assert results[2] is not None and results[2].code == "ErrorItemNotFound"


async def test_many_failed_parts_in_one_batch_still_answer_every_part(server: GraphTestServer) -> None:
    acc = account(server)
    mb = acc.mailbox(ALICE)
    created = await mb.create(FolderKind.CALENDAR, [appt(n) for n in range(20)])
    ids = [c.item_id for c in created if isinstance(c, ExchangeItem)]
    gone = ids[::2]  # every second one deleted first: 10 of the 20 parts below answer 404
    assert await mb.delete(FolderKind.CALENDAR, gone) == [None] * 10
    results = await mb.delete(FolderKind.CALENDAR, ids)
    await acc.aclose()
    assert [r is None for r in results] == [n % 2 == 1 for n in range(20)], results
