"""The runner in this process over the real parts: the EWS test server (TLS) through the real
Exchange adapter (exchangelib), the sql PSA connector on SQLite, the SQLite state store. Faster than
a daemon process per case, which is what the seeded fault runs need; the runner, the adapters and
the server are the same code the daemon runs."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from exchanged.engine import UserSettings, UserSpec
from exchanged.exchange import EwsAccount, ExchangeSettings
from exchanged.model import CycleOutcome, FolderKind
from exchanged.psa.sample import seed_sample
from exchanged.psa.sql import open_sql_connector
from exchanged.state import open_state_store
from exchanged.sync import SyncRunner
from exchanged.testing.ews import EwsTestServer
from tests.reliability.harness import ALICE, BOB, EWS_WRITES, PASSWORD, SVC

IDENTITY = '["localhost","","exchange2016",""]'


@dataclass
class Stack:
    server: EwsTestServer
    account: EwsAccount
    runner: SyncRunner
    psa_path: Path
    user: UserSpec
    psa: Any
    state: Any

    async def cycle(self, **kwargs: Any) -> CycleOutcome:
        return await self.runner.run_cycle(self.user, **kwargs)

    def ews_writes(self) -> int:
        reqs = self.server.stats()["requests"]
        return sum(reqs.get(op, 0) for op in EWS_WRITES)

    def psa_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.psa_path)
        try:
            with con:
                return con.execute(sql, params).fetchall()
        finally:
            con.close()

    async def exchange_items(self, mailbox: str = ALICE) -> list[Any]:
        mb = self.account.mailbox(mailbox)
        out = []
        for folder in (FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS):
            async for page in mb.changes(folder, None):
                out.extend(page.upserted)
        return out

    async def duplicates(self, mailbox: str = ALICE) -> list[Any]:
        items = await self.exchange_items(mailbox)
        keys = Counter((i.folder, i.psa_key or i.uid or repr(i.payload)) for i in items)
        dups = [k for k, n in keys.items() if n > 1]
        dups += self.psa_rows("SELECT exchange_uid, COUNT(*) FROM appointments "
                              "WHERE exchange_uid IS NOT NULL "
                              "GROUP BY resource_id, exchange_uid HAVING COUNT(*) > 1")
        return dups

    async def plan_writes(self) -> list[dict[str, Any]]:
        """What the next cycle would still write (empty: converged)."""
        plan = await self.runner.plan(self.user)
        return [a for a in plan["actions"] if a.get("action") in ("create", "update", "delete")]


def settings_for(server: EwsTestServer, **overrides: Any) -> ExchangeSettings:
    values: dict[str, Any] = {"address": "localhost", "port": server.port, "ca_bundle": server.ca_file,
                              "username": SVC, "password": PASSWORD, "version": "Exchange2016",
                              "enabled_mailboxes": (ALICE, BOB), "category": "PSA"}
    values.update(overrides)
    return ExchangeSettings(**values)


@asynccontextmanager
async def open_stack(base: Path, *, now: datetime | None = None, server: EwsTestServer | None = None,
                     settings: UserSettings | None = None, seed: bool = True,
                     **account_overrides: Any) -> AsyncIterator[Stack]:
    base.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test directory, once
    now = now or datetime.now(UTC).replace(microsecond=0)
    psa_path = base / "psa.db"
    if seed:
        seed_sample(f"sqlite:///{psa_path}", now)
    own = server is None
    if server is None:
        server = EwsTestServer(state_dir=str(base / "ews"), mailboxes=[ALICE, BOB],
                               service_accounts={SVC: PASSWORD})
        await trio.to_thread.run_sync(server.start)
    account = EwsAccount(settings_for(server, **account_overrides))
    psa = open_sql_connector(f"sqlite:///{psa_path}")
    state = await open_state_store(f"sqlite:///{base / 'state.db'}")
    runner = SyncRunner(account, psa, state, server_identity=IDENTITY)
    user = UserSpec(ALICE, "1", settings or UserSettings())
    try:
        yield Stack(server, account, runner, psa_path, user, psa, state)
    finally:
        await account.aclose()
        await psa.aclose()
        await state.aclose()
        if own:
            await trio.to_thread.run_sync(server.stop)
