"""A whole little world for runner tests: memory Exchange, PSA and state, a fixed clock, a user."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from exchanged import engine
from exchanged.engine import UserSettings, UserSpec
from exchanged.model import (
    FOLDER_OF_KIND,
    PSA_OWNED,
    Appointment,
    ExchangeItem,
    FolderKind,
    Kind,
    Payload,
    PsaRecord,
)
from exchanged.sync import SyncRunner
from tests.memory import MemoryExchange, MemoryMailbox, MemoryPsa, MemoryState

NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
MAILBOX = "alice@example.test"
RESOURCE = "29682885"


def appt(subject: str, hours: float = 1, length: float = 1, **kw: Any) -> Appointment:
    start = NOW + timedelta(hours=hours)
    return Appointment(subject, start, start + timedelta(hours=length), **kw)


@dataclass
class World:
    settings: UserSettings = field(default_factory=UserSettings)
    now: datetime = NOW
    exchange: MemoryExchange = field(init=False)
    psa: MemoryPsa = field(init=False)
    state: MemoryState = field(init=False)
    runner: SyncRunner = field(init=False)
    server_identity: str = "mail.example.test/EWS/Exchange2016"

    def __post_init__(self) -> None:
        self.exchange = MemoryExchange(now=lambda: self.now)
        self.psa = MemoryPsa(now=lambda: self.now)
        self.psa.add_resource(RESOURCE, MAILBOX, "Alice")
        self.state = MemoryState()
        self.runner = self.make_runner()

    def make_runner(self) -> SyncRunner:
        return SyncRunner(self.exchange, self.psa, self.state, now=lambda: self.now,
                          server_identity=self.server_identity)

    @property
    def user(self) -> UserSpec:
        return UserSpec(MAILBOX, RESOURCE, self.settings)

    @property
    def mb(self) -> MemoryMailbox:
        return self.exchange.mailbox(MAILBOX)

    def configure(self, **values: Any) -> None:
        self.settings = replace(self.settings, **values)

    async def cycle(self, **kw: Any) -> Any:
        return await self.runner.run_cycle(self.user, **kw)

    def writes(self) -> int:
        return self.exchange.writes() + self.psa.writes()

    def item_of(self, psa_key: str) -> ExchangeItem:
        kind = psa_key.partition(":")[0]
        [item] = self.mb.by_psa_key(FOLDER_OF_KIND[Kind(kind)], psa_key)
        return item

    def imported_rows(self) -> list[PsaRecord]:
        return self.psa.records(Kind.IMPORTED, RESOURCE)

    async def assert_converged(self) -> None:
        """Every in-scope item exactly once on each side, agreeing per the rules; nothing to do."""
        win = engine.window(self.now, self.settings)
        kinds = engine.enabled_kinds(self.settings)
        records = (await self.psa.load(RESOURCE, kinds, win)).records
        for rec in records:
            if rec.kind in PSA_OWNED:
                found = self.mb.by_psa_key(FOLDER_OF_KIND[rec.kind], rec.psa_key)
                assert len(found) == 1, f"{rec.psa_key}: {len(found)} Exchange items"
                assert found[0].payload == rec.payload, rec.psa_key
                assert self.settings.category in found[0].categories
        owned_keys = {r.psa_key for r in records if r.kind in PSA_OWNED}
        for folder in (FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS):
            for item in self.mb.items(folder):
                if item.psa_key and Kind(item.psa_key.partition(":")[0]) in kinds and \
                        engine.in_scope(win, item.payload):
                    assert item.psa_key in owned_keys, f"orphan {item.psa_key} in Exchange"
        if Kind.IMPORTED in kinds:
            expected = await self.expected_imports(win)
            rows = [r for r in records if r.kind is Kind.IMPORTED]
            by_key: dict[str, list[PsaRecord]] = {}
            for r in rows:
                by_key.setdefault(r.exchange_key or "", []).append(r)
            assert set(by_key) == set(expected), (set(by_key) ^ set(expected))
            for key, payload in expected.items():
                assert len(by_key[key]) == 1, f"{key}: {len(by_key[key])} PSA rows"
                assert by_key[key][0].payload == payload, key
        before = self.writes()
        plan = await self.runner.plan(self.user)
        # nothing to write on either side; at most the state confirms what the last creates sent
        assert [a for a in plan["actions"] if a["side"] != "state"] == [] and plan["held_back"] == [], plan
        assert all(a["reason"] == "both sides agree: mapping refreshed" for a in plan["actions"]), plan
        out = await self.cycle()
        assert out.result == "ok", out
        assert self.writes() == before, "a second cycle wrote"
        plan = await self.runner.plan(self.user)
        assert plan["actions"] == [] and plan["held_back"] == [], plan

    async def expected_imports(self, win: Any) -> dict[str, Payload]:
        out: dict[str, Payload] = {}
        cal = self.mb
        items = [i for i in cal.items(FolderKind.CALENDAR) if not i.is_recurring_master]
        items += [i for i in await cal.calendar_view(win.past_start, win.recurring_end)
                  if i.item_id.count(":occ")]
        for item in items:
            if item.psa_key is not None:
                continue
            occ = engine.rules.item_is_occurrence(item)
            if not engine.in_scope(win, item.payload, occurrence=occ):
                continue
            if engine.import_skip_reason(item, self.settings) is None:
                out[item.exchange_key or ""] = engine.render_import(item, self.settings)
        return out
