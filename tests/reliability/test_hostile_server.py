"""A broken or hostile EWS server (issue #14), through ``tests.proxy.HostileProxy`` between the real
adapter (exchangelib) and the EWS test server: answers cut short, corrupted, trickled, inflated.
Never a duplicate, never a hang, never a blow-up: a bad answer is an error of its request (retried
like a lost reply), and the daemon's state stays as the last good answer left it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from exchanged.model import FolderKind, Kind
from exchanged.testing.ews import EwsTestServer
from tests.proxy import HostileProxy, proxy_for
from tests.reliability.harness import ALICE, PASSWORD, SVC
from tests.reliability.inproc import open_stack

pytestmark = pytest.mark.reliability


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EwsTestServer]:
    srv = EwsTestServer(state_dir=str(tmp_path / "ews"), mailboxes=[ALICE, "bob@example.test"],
                        service_accounts={SVC: PASSWORD}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def proxy(server: EwsTestServer) -> Iterator[HostileProxy]:
    p = proxy_for(server)
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.parametrize("mangle", [
    {"action": "truncate"},  # cut after the first GetItemResponseMessage, framing consistent
    {"action": "corrupt", "find": b"</m:Items>", "replace": b"</m:Itemz>"},
])
async def test_a_cut_or_corrupt_getitem_answer_never_duplicates(tmp_path: Path, server: EwsTestServer,
                                                                 proxy: HostileProxy,
                                                                 mangle: dict[str, object]) -> None:
    """Issue #14 point 1: GetItem answers cut short (exchangelib recovers a shorter list from them)
    while the state is rebuilt after a loss: the sync pages and then the adoption searches read
    short. Before the fix, 11 items became 16 (items "missing" were created again)."""
    async with open_stack(tmp_path, server=server, port=proxy.port) as stack:
        assert (await stack.cycle()).result == "ok"
        before = sorted((i.folder.value, i.psa_key) for i in await stack.exchange_items())
    (tmp_path / "state.db").unlink()
    async with open_stack(tmp_path, server=server, port=proxy.port, seed=False) as stack:
        action = str(mangle.pop("action"))
        proxy.rule("GetItem", action, times=6, **mangle)
        await stack.cycle()  # errors or not: never a duplicate
        assert proxy.applied[f"GetItem {action}"] >= 1
        proxy.clear()
        assert await stack.duplicates() == []
        again = await stack.cycle()
        assert again.result == "ok" and again.counts.exported == 0, again
        after = sorted((i.folder.value, i.psa_key) for i in await stack.exchange_items())
        assert after == before


async def test_a_short_getitem_answer_is_retried_not_believed(tmp_path: Path, server: EwsTestServer,
                                                              proxy: HostileProxy) -> None:
    """The adapter's own guarantee: a bulk read answers every id asked or fails."""
    async with open_stack(tmp_path, server=server, port=proxy.port) as stack:
        assert (await stack.cycle()).result == "ok"
        mb = stack.account.mailbox(ALICE)
        keys = sorted(i.psa_key for i in await stack.exchange_items()
                      if i.folder is FolderKind.CALENDAR and i.psa_key)
        assert len(keys) >= 3
        proxy.rule("GetItem", "truncate")
        found = await mb.find_by_psa_keys(FolderKind.CALENDAR, keys)
        assert proxy.applied["GetItem truncate"] == 1
        assert sorted(found) == keys  # the short answer was asked again, not taken as "2 are gone"


async def test_a_cut_sync_answer_is_an_error_not_a_short_page(tmp_path: Path, server: EwsTestServer,
                                                              proxy: HostileProxy) -> None:
    async with open_stack(tmp_path, server=server, port=proxy.port) as stack:
        assert (await stack.cycle()).result == "ok"
        proxy.rule("SyncFolderItems", "truncate", marker=b"<m:Changes>", times=None)
        outcome = await stack.cycle(full=True)
        assert outcome.result == "error", outcome
        assert "incomplete answer" in (outcome.error or ""), outcome.error
        proxy.clear()
        assert (await stack.cycle()).result == "ok"
        assert await stack.duplicates() == []


# --- deadlines and size (issue #14 points 2 and 3) ------------------------------------------------------


@pytest.mark.parametrize("head", [False, True])
async def test_a_trickling_answer_ends_at_the_request_deadline(tmp_path: Path, server: EwsTestServer,
                                                               proxy: HostileProxy, head: bool) -> None:
    """A byte now and then keeps every read within the read timeout: only a total deadline ends
    it, whether the body trickles or already the status line and headers do."""
    async with open_stack(tmp_path, server=server, port=proxy.port, request_deadline_s=2.0,
                          read_timeout_s=30.0) as stack:
        proxy.rule("SyncFolderItems", "trickle", times=None, chunk=1, interval=1.0, head=head)
        with trio.fail_after(100):  # a guard against the hang this test is about; never asserted
            outcome = await stack.cycle()
        assert outcome.result == "error", outcome
        assert "SyncFolderItems" in (outcome.error or "")
        assert "no complete answer within 2 s (server.request_deadline_s" in (outcome.error or ""), outcome
        proxy.clear()
        assert (await stack.cycle()).result == "ok"


async def test_an_answer_over_the_cap_is_an_error_naming_the_operation(tmp_path: Path,
                                                                       server: EwsTestServer,
                                                                       proxy: HostileProxy) -> None:
    async with open_stack(tmp_path, server=server, port=proxy.port, max_answer_mb=1) as stack:
        assert (await stack.cycle()).result == "ok"
        proxy.rule("SyncFolderItems", "inflate", times=None, size=3 * 1024 * 1024)
        with trio.fail_after(120):
            outcome = await stack.cycle(full=True)
        assert outcome.result == "error", outcome
        error = outcome.error or ""
        assert "SyncFolderItems calendar" in error, error
        assert "larger than 1 MB (server.max_answer_mb" in error, error
        assert proxy.applied["SyncFolderItems inflate"] == 1  # not retried: the same answer would come
        proxy.clear()
        assert (await stack.cycle()).result == "ok"
        assert await stack.duplicates() == []


def test_read_bounded_counts_an_undeclared_answer() -> None:
    """Without Content-Length (chunked), the bytes read are counted against the cap."""
    from exchanged.exchange.limits import AnswerTooLarge, Limits, read_bounded

    class Raw:
        def stream(self, amt: int, decode_content: bool) -> Iterator[bytes]:
            while True:
                yield b"x" * amt

    class Resp:
        raw = Raw()
        headers: dict[str, str] = {}
        closed = False

        def close(self) -> None:
            self.closed = True

    resp = Resp()
    with pytest.raises(AnswerTooLarge, match="larger than 1 MB"):
        read_bounded(resp, Limits(deadline_s=60, max_bytes=1024 * 1024), time.monotonic())
    assert resp.closed


# --- HTTP statuses (issue #14 point 10) -------------------------------------------------------------------


async def test_http_429_is_throttling_and_its_retry_after_is_obeyed(tmp_path: Path, server: EwsTestServer,
                                                                    proxy: HostileProxy,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async with open_stack(tmp_path, server=server, port=proxy.port) as stack:
        proxy.rule("SyncFolderItems", "status", times=1, code=429, headers={"Retry-After": "1"})
        outcome = await stack.cycle()
        assert proxy.applied["SyncFolderItems status"] == 1
        assert outcome.result == "ok", outcome  # asked again after the wait, not an error
        assert "SyncFolderItems calendar throttled, backing off 1.0 s" in caplog.text, caplog.text


async def test_a_redirect_names_where_to_once(tmp_path: Path, server: EwsTestServer,
                                              proxy: HostileProxy) -> None:
    async with open_stack(tmp_path, server=server, port=proxy.port) as stack:
        proxy.rule("SyncFolderItems", "status", times=None, code=302,
                   headers={"Location": "https://elsewhere.example.test/EWS/Exchange.asmx"})
        outcome = await stack.cycle()
        assert outcome.result == "error", outcome
        assert ("redirects EWS requests to https://elsewhere.example.test/EWS/Exchange.asmx"
                in (outcome.error or "")), outcome.error
        assert "We were redirected" not in (outcome.error or "")


def test_retry_after_as_seconds_or_a_date() -> None:
    from exchanged.exchange.account import retry_after_s

    assert retry_after_s("120") == 120.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait


# --- precision (issue #14 point 4) -------------------------------------------------------------------


def _fraction(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".250Z"


async def test_psa_times_with_fractional_seconds_are_written_once(tmp_path: Path,
                                                                  server: EwsTestServer) -> None:
    """PostgreSQL now() and friends: "start, end edited in Exchange ... overwritten" every cycle."""
    async with open_stack(tmp_path, server=server) as stack:
        day = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=1)
        con = sqlite3.connect(stack.psa_path)
        with con:
            con.execute("INSERT INTO appointments (id, resource_id, title, description, start_time, "
                        "end_time, origin, show_as, is_private) "
                        "VALUES (900, 1, 'Fraction', '', ?, ?, 'psa', 'busy', 0)",
                        (_fraction(day), _fraction(day + timedelta(hours=1))))
            # both ends: the seed's end is a fixed time of tomorrow, which an hour-rounded start
            # would pass after 10:30 and make the row invalid (the test then read the hour)
            con.execute("UPDATE todos SET start_time = ?, end_time = ? WHERE id = 500",
                        (_fraction(day), _fraction(day + timedelta(minutes=30))))
        con.close()
        assert (await stack.cycle()).result == "ok"
        for _ in range(2):
            before = stack.ews_writes()
            again = await stack.cycle(full=True)
            assert again.result == "ok", again
            assert stack.ews_writes() == before, again.counts
        assert await stack.plan_writes() == []


async def test_an_outlook_body_longer_than_the_psa_keeps_is_imported_once(tmp_path: Path,
                                                                           server: EwsTestServer) -> None:
    """The sql PSA keeps 100,000 characters of a text: the body is cut on import, and before the fix
    the cut row was "changed in Exchange" and rewritten on every cycle."""
    from exchanged.model import Appointment
    from exchanged.ports import NewItem
    from exchanged.psa.sql import MAX_TEXT
    from tests.exchange.test_runner_over_ews import _create_foreign

    async with open_stack(tmp_path, server=server) as stack:
        assert (await stack.cycle()).result == "ok"
        soon = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=1, hours=5)
        body = "long minutes " * 12_000  # 156,000 characters
        await _create_foreign(stack.account, [NewItem(
            Kind.IMPORTED, "foreign:1",
            Appointment("Board meeting", soon, soon + timedelta(hours=2), body=body))])
        first = await stack.cycle()
        assert first.result == "ok" and first.counts.imported == 1, first
        [(stored,)] = stack.psa_rows("SELECT description FROM appointments WHERE title = 'Board meeting'")
        assert len(stored) == MAX_TEXT
        for _ in range(2):
            again = await stack.cycle(full=True)
            assert again.result == "ok" and again.counts.updated == again.counts.imported == 0, again
        assert await stack.plan_writes() == []


async def test_out_of_range_dates_and_oversized_titles_are_short_item_errors_never_rewritten(
        tmp_path: Path, server: EwsTestServer) -> None:
    """A PSA date in year 1 was exported, read back unreadable and rewritten every cycle; a 99 KB
    title failed every cycle with the whole title in the error (status JSON 101 KB)."""
    async with open_stack(tmp_path, server=server) as stack:
        day = datetime.now(UTC).replace(microsecond=0, second=0, minute=0) + timedelta(days=1)
        con = sqlite3.connect(stack.psa_path)
        with con:
            con.executemany(
                "INSERT INTO appointments (id, resource_id, title, description, start_time, end_time, "
                "origin, show_as, is_private) VALUES (?, 1, ?, '', ?, ?, 'psa', 'busy', 0)",
                [(901, "Since the beginning of time", "0001-01-01T00:00:00Z", day.isoformat()),
                 (902, "T" * 99_000, day.isoformat(), (day + timedelta(hours=1)).isoformat())])
        con.close()
        outcomes = [await stack.cycle(), await stack.cycle(full=True)]
        before = stack.ews_writes()
        outcomes.append(await stack.cycle(full=True))
        assert stack.ews_writes() == before  # nothing is written again and again
        for outcome in outcomes:
            bad = {e.key: e for e in outcome.item_errors}
            assert {"appointment:901", "appointment:902"} <= set(bad), outcome
            assert bad["appointment:901"].code == "out_of_range"
            assert "0001-01-01 is outside the dates Exchange stores" in bad["appointment:901"].message
            assert bad["appointment:902"].code == "too_long"
            assert "99,000 characters" in bad["appointment:902"].message
            assert all(len(e.message) < 400 for e in outcome.item_errors), outcome.item_errors
        keys = {i.psa_key for i in await stack.exchange_items()}
        assert "appointment:901" not in keys and "appointment:902" not in keys
        assert await stack.duplicates() == []


async def test_a_first_cycle_after_a_state_loss_says_it_adopted(tmp_path: Path,
                                                                 server: EwsTestServer) -> None:
    """What the daemon keys the confirmation mail on (no "now synced" mail after a state loss)."""
    async with open_stack(tmp_path, server=server) as stack:
        first = await stack.cycle()
        assert first.result == "ok" and first.adopted == 0 and first.counts.exported > 0
    (tmp_path / "state.db").unlink()
    async with open_stack(tmp_path, server=server, seed=False) as stack:
        again = await stack.cycle()
        assert again.result == "ok" and again.counts.exported == 0 and again.adopted >= first.counts.exported
