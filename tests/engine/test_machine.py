"""A Hypothesis state machine: random edits on both sides between cycles, faults included.

After every cycle: every in-scope item exists exactly once on each side, the two agree field by
field per the rules, and another cycle plans nothing and writes nothing (``World.assert_converged``).
``EXCHANGED_LONG=1`` runs many more examples.
"""

from __future__ import annotations

import os
from datetime import timedelta

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from exchanged.model import Appointment, Contact, FolderKind, ImportMode, Kind, ShowAs, Task
from tests.sync.world import NOW, RESOURCE, World

LONG = os.environ.get("EXCHANGED_LONG") == "1"
OWNED_FOLDERS = (FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS)
words = st.sampled_from(["alpha", "beta", "gamma", "delta"])
hours = st.integers(min_value=-24 * 9, max_value=24 * 40)


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = World()

    def run(self, fn, *args):  # type: ignore[no-untyped-def]
        return trio.run(fn, *args)

    @initialize(mode=st.sampled_from(list(ImportMode)), free=st.booleans(), skip_private=st.booleans(),
                skip_tentative=st.booleans(), skip_all_day=st.booleans())
    def configure(self, mode: ImportMode, free: bool, skip_private: bool, skip_tentative: bool,
                  skip_all_day: bool) -> None:
        self.w.configure(import_appointments=mode, import_free_time=free, skip_private=skip_private,
                         skip_show_as=frozenset({ShowAs.TENTATIVE}) if skip_tentative else frozenset(),
                         skip_all_day=skip_all_day, skip_categories=frozenset({"Personal"}),
                         recurring_future_days=10, max_deletes_per_cycle=3)

    @rule(mode=st.sampled_from(list(ImportMode)), free=st.booleans(), skip_private=st.booleans(),
          appointments=st.booleans(), todos=st.booleans())
    def reconfigure(self, mode: ImportMode, free: bool, skip_private: bool, appointments: bool,
                    todos: bool) -> None:
        """An operator edits the config between cycles (a reload)."""
        self.w.configure(import_appointments=mode, import_free_time=free, skip_private=skip_private,
                         appointments_export=appointments, todos=todos)

    # -- the PSA side ------------------------------------------------------------------------

    @rule(kind=st.sampled_from([Kind.APPOINTMENT, Kind.SERVICE_CALL, Kind.TODO, Kind.CONTACT]),
          at=hours, subject=words)
    def psa_add(self, kind: Kind, at: int, subject: str) -> None:
        start = self.w.now + timedelta(hours=at)
        payload: Appointment | Task | Contact
        if kind is Kind.TODO:
            payload = Task(subject, due=start)
        elif kind is Kind.CONTACT:
            payload = Contact(subject, "Doe")
        else:
            payload = Appointment(subject, start, start + timedelta(hours=1))
        self.w.psa.add(kind, payload, [RESOURCE])

    def owned_rows(self) -> list[str]:
        return sorted(k for k, r in self.w.psa.rows.items() if r.record.kind is not Kind.IMPORTED)

    @precondition(lambda self: self.owned_rows())
    @rule(i=st.integers(0, 99), subject=words, shift=st.integers(-5, 5))
    def psa_edit(self, i: int, subject: str, shift: int) -> None:
        key = self.owned_rows()[i % len(self.owned_rows())]
        p = self.w.psa.rows[key].record.payload
        if isinstance(p, Appointment):
            d = timedelta(hours=shift)
            self.w.psa.edit(key, subject=subject, start=p.start + d, end=p.end + d)
        elif isinstance(p, Task):
            self.w.psa.edit(key, subject=subject)
        else:
            self.w.psa.edit(key, given_name=subject)

    @precondition(lambda self: self.owned_rows())
    @rule(i=st.integers(0, 99))
    def psa_remove(self, i: int) -> None:
        self.w.psa.remove(self.owned_rows()[i % len(self.owned_rows())])

    def imported_rows(self) -> list[str]:
        return sorted(k for k, r in self.w.psa.rows.items() if r.record.kind is Kind.IMPORTED)

    @precondition(lambda self: self.imported_rows())
    @rule(i=st.integers(0, 99), subject=words, delete=st.booleans())
    def psa_touch_imported(self, i: int, subject: str, delete: bool) -> None:
        key = self.imported_rows()[i % len(self.imported_rows())]
        if delete:
            self.w.psa.remove(key)
        else:
            self.w.psa.edit(key, subject=subject, body="edited in the PSA")

    # -- the Exchange side -------------------------------------------------------------------

    def exchange_items(self, owned: bool) -> list[tuple[FolderKind, str]]:
        out = []
        for folder in OWNED_FOLDERS:
            for item in self.w.mb.items(folder):
                if (item.psa_key is not None) == owned and not item.is_recurring_master:
                    out.append((folder, item.item_id))
        return sorted(out)

    @precondition(lambda self: self.exchange_items(True) or self.exchange_items(False))
    @rule(i=st.integers(0, 99), owned=st.booleans(), subject=words, shift=st.integers(-30, 30),
          show_as=st.sampled_from(list(ShowAs)), complete=st.booleans())
    def exchange_edit(self, i: int, owned: bool, subject: str, shift: int, show_as: ShowAs,
                      complete: bool) -> None:
        items = self.exchange_items(owned) or self.exchange_items(not owned)
        folder, item_id = items[i % len(items)]
        p = self.w.mb.get(folder, item_id).payload
        d = timedelta(hours=shift)
        if isinstance(p, Appointment):
            self.w.mb.user_edit(folder, item_id, subject=subject, start=p.start + d, end=p.end + d,
                                show_as=show_as)
        elif isinstance(p, Task):
            self.w.mb.user_edit(folder, item_id, subject=subject, due=(p.due or NOW) + d,
                                completed=self.w.now if complete else None)
        else:
            self.w.mb.user_edit(folder, item_id, company=subject)

    @precondition(lambda self: self.exchange_items(True) or self.exchange_items(False))
    @rule(i=st.integers(0, 99), owned=st.booleans())
    def exchange_delete(self, i: int, owned: bool) -> None:
        items = self.exchange_items(owned) or self.exchange_items(not owned)
        folder, item_id = items[i % len(items)]
        self.w.mb.user_delete(folder, item_id)

    @rule(at=hours, subject=words, private=st.booleans(), all_day=st.booleans(),
          show_as=st.sampled_from(list(ShowAs)), personal=st.booleans())
    def exchange_add_foreign(self, at: int, subject: str, private: bool, all_day: bool, show_as: ShowAs,
                             personal: bool) -> None:
        start = self.w.now + timedelta(hours=at)
        self.w.mb.user_add(FolderKind.CALENDAR,
                           Appointment(subject, start, start + timedelta(hours=1), body="details",
                                       is_private=private, is_all_day=all_day, show_as=show_as),
                           categories=("Personal",) if personal else ())

    @rule(first=st.integers(-24 * 5, 24 * 5), count=st.integers(1, 20), every=st.sampled_from([24, 48, 168]))
    def exchange_add_series(self, first: int, count: int, every: int) -> None:
        start = self.w.now + timedelta(hours=first)
        starts = [start + timedelta(hours=every * n) for n in range(count)]
        self.w.mb.user_add_series(Appointment("series", start, start + timedelta(minutes=30)), starts)

    def series(self) -> list[str]:
        return sorted(i.item_id for i in self.w.mb.items(FolderKind.CALENDAR) if i.is_recurring_master)

    @precondition(lambda self: self.series())
    @rule(i=st.integers(0, 99), n=st.integers(0, 99), delete=st.booleans(), subject=words)
    def exchange_touch_occurrence(self, i: int, n: int, delete: bool, subject: str) -> None:
        master = self.series()[i % len(self.series())]
        occurrences = self.w.mb.folders[FolderKind.CALENDAR].series[master].occurrences
        live = sorted(k for k, v in occurrences.items() if v is not None)
        if not live:
            return
        original = live[n % len(live)]
        if delete:
            self.w.mb.user_delete_occurrence(master, original)
        else:
            self.w.mb.user_edit_occurrence(master, original, subject=subject)

    # -- time, cycles, faults ----------------------------------------------------------------

    @rule(h=st.integers(1, 72))
    def time_passes(self, h: int) -> None:
        self.w.now += timedelta(hours=h)

    @rule()
    def cycle(self) -> None:
        out = self.run(lambda: self.w.cycle(allow_deletes=True))
        assert out.result == "ok", out
        self.run(self.w.assert_converged)

    @rule()
    def guarded_cycle(self) -> None:
        """Without ``--allow-deletes``: a cycle deletes nothing it holds back, never more than the cap."""
        out = self.run(self.w.cycle)
        assert out.result in ("ok", "held_back"), out
        assert out.counts.deleted <= self.w.settings.max_deletes_per_cycle
        if out.result == "held_back":  # the empty-side guard holds per kind; the cap holds everything
            assert out.held_back_deletes > 0
            if out.reason == "deletes_held_back":
                assert out.counts.deleted == 0

    @rule(where=st.sampled_from(["exchange", "psa", "state"]), skip=st.integers(0, 12), drop=st.booleans())
    def crash_then_cycle(self, where: str, skip: int, drop: bool) -> None:
        target = {"exchange": self.w.exchange, "psa": self.w.psa, "state": self.w.state}[where]
        target.fault(None, skip=skip, drop=drop)  # type: ignore[attr-defined]
        self.run(lambda: self.w.cycle(allow_deletes=True))
        target.faults.clear()  # type: ignore[attr-defined]
        self.w.runner = self.w.make_runner()  # a restart
        for _ in range(3):
            out = self.run(lambda: self.w.cycle(allow_deletes=True))
            if out.result == "ok":
                break
        assert out.result == "ok", out
        self.run(self.w.assert_converged)

    @invariant()
    def no_duplicates_in_exchange(self) -> None:
        for folder in OWNED_FOLDERS:
            keys = [i.psa_key for i in self.w.mb.items(folder) if i.psa_key]
            assert len(keys) == len(set(keys)), f"duplicate Exchange items: {keys}"


SyncMachine.TestCase.settings = settings(
    max_examples=500 if LONG else 60,
    stateful_step_count=40 if LONG else 20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSync = SyncMachine.TestCase

