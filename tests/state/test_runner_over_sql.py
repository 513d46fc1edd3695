"""The sync runner over the real stores: the sample PSA (sql connector) and the SQL state store,
with the in-memory Exchange. What the runner commits must fit the schema (one mapping per item,
mirrors that read back equal), and a restart from the database must write nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchanged.engine import UserSettings, UserSpec
from exchanged.model import Appointment, FolderKind, Kind, Window
from exchanged.ports import StateStore
from exchanged.psa.sample import seed_sample
from exchanged.psa.sql import SqlPsa, open_sql_connector
from exchanged.state import open_state_store
from exchanged.sync import SyncRunner
from tests.memory import MemoryExchange

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DAY = NOW.replace(hour=0)
ALICE = "alice@example.test"
USER = UserSpec(ALICE, "1", UserSettings())
WINDOW = Window(NOW, NOW - timedelta(days=7), NOW + timedelta(days=30))


@dataclass
class Stack:
    exchange: MemoryExchange
    psa: SqlPsa
    state: StateStore
    state_url: str

    def runner(self) -> SyncRunner:
        return SyncRunner(self.exchange, self.psa, self.state, now=lambda: NOW, server_identity="test")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    if request.param == "sqlite":
        psa_url, state_url = f"sqlite:///{tmp_path / 'psa.db'}", f"sqlite:///{tmp_path / 'state.db'}"
    else:
        psa_url = state_url = str(request.getfixturevalue("pg_url"))
    seed_sample(psa_url, NOW)
    psa = open_sql_connector(psa_url, now=lambda: NOW)
    state = await open_state_store(state_url)
    found = Stack(MemoryExchange(now=lambda: NOW), psa, state, state_url)
    yield found
    await found.psa.aclose()
    await found.state.aclose()


async def test_the_sample_syncs_then_a_restart_writes_nothing(stack: Stack) -> None:
    first = await stack.runner().run_cycle(USER)
    assert first.result == "ok", first
    mb = stack.exchange.mailbox(ALICE)
    calendar = {i.psa_key for i in mb.items(FolderKind.CALENDAR)}
    assert {"appointment:300", "appointment:301", "appointment:302", "service_call:400"} <= calendar
    assert {i.psa_key for i in mb.items(FolderKind.TASKS)} >= {"todo:500"}
    assert {i.psa_key for i in mb.items(FolderKind.CONTACTS)} == {
        "contact:100", "contact:101", "contact:104", "contact:105"}
    writes = stack.exchange.writes()
    assert (await stack.runner().run_cycle(USER)).result == "ok"
    assert stack.exchange.writes() == writes

    # the daemon restarts: a new store on the same database, a new runner
    await stack.state.aclose()
    stack.state = await open_state_store(stack.state_url)
    again = await stack.runner().run_cycle(USER)
    assert again.result == "ok" and stack.exchange.writes() == writes, again
    history = await stack.state.history(ALICE, None)
    assert {e.key for e in history if e.action == "create"} >= {"appointment:300", "contact:105"}


async def test_outlook_changes_reach_the_sql_psa(stack: Stack) -> None:
    assert (await stack.runner().run_cycle(USER)).result == "ok"
    mb = stack.exchange.mailbox(ALICE)
    [review] = mb.by_psa_key(FolderKind.CALENDAR, "appointment:300")
    later = DAY + timedelta(days=1, hours=15)
    mb.user_edit(FolderKind.CALENDAR, review.item_id, start=later, end=later + timedelta(hours=1))
    mb.user_add(FolderKind.CALENDAR, Appointment("Dentist", DAY + timedelta(days=2, hours=7),
                                                 DAY + timedelta(days=2, hours=8)), uid="UID-dentist")
    out = await stack.runner().run_cycle(USER)
    assert out.result == "ok", out
    records = {r.psa_key: r for r in (await stack.psa.load("1", frozenset(Kind), WINDOW)).records}
    moved = records["appointment:300"].payload
    assert isinstance(moved, Appointment)
    assert (moved.start, moved.subject) == (later, "Quarterly review with Contoso")  # time flowed back
    imported = [r for r in records.values() if r.kind is Kind.IMPORTED]
    assert [(r.exchange_key, r.payload.subject) for r in imported] == [("UID-dentist", "Dentist")]  # type: ignore[union-attr]
    writes = stack.exchange.writes()
    assert (await stack.runner().run_cycle(USER)).result == "ok"
    assert stack.exchange.writes() == writes
