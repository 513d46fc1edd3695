"""Scheduler behaviour on trio's autojump clock: every time here is virtual, nothing sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from exchanged.model import Counts, CycleOutcome
from exchanged.scheduler import CycleRequest, ProgressFn, Scheduler, UnknownMailbox


@dataclass
class Recorder:
    """A cycle function that records every call and takes ``duration[mailbox]`` virtual seconds."""

    duration: dict[str, float] = field(default_factory=dict)
    default: float = 1.0
    fail: set[str] = field(default_factory=set)
    calls: list[tuple[str, float, CycleRequest]] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=dict)
    max_active_per_user: int = 0
    max_active: int = 0
    gate: dict[str, trio.Event] = field(default_factory=dict)

    async def __call__(self, mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        self.calls.append((mailbox, trio.current_time(), request))
        self.active[mailbox] = self.active.get(mailbox, 0) + 1
        self.max_active_per_user = max(self.max_active_per_user, self.active[mailbox])
        self.max_active = max(self.max_active, sum(self.active.values()))
        try:
            progress(0, 2)
            if mailbox in self.gate:
                await self.gate[mailbox].wait()
            await trio.sleep(self.duration.get(mailbox, self.default))
            progress(2, 2)
            if mailbox in self.fail:
                raise RuntimeError(f"boom in {mailbox}")
            return CycleOutcome(result="ok", counts=Counts(exported=1))
        finally:
            self.active[mailbox] -= 1

    def starts(self, mailbox: str) -> list[float]:
        return [t for m, t, _ in self.calls if m == mailbox]


@asynccontextmanager
async def running(sched: Scheduler) -> AsyncIterator[Scheduler]:
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.serve)
        yield sched
        nursery.cancel_scope.cancel()


async def test_interval_and_spread(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=90, max_concurrent=8)
    t0 = trio.current_time()
    sched.set_users(["a", "b", "c"])
    async with running(sched):
        await trio.sleep(250)
    rel = {m: [t - t0 for t in rec.starts(m)] for m in "abc"}
    assert rel["a"] == pytest.approx([0, 90, 180]), rel
    assert rel["b"] == pytest.approx([30, 120, 210]), rel
    assert rel["c"] == pytest.approx([60, 150, 240]), rel


async def test_overrun_delays_next_without_stacking(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 250})
    sched = Scheduler(rec, interval_s=100, max_concurrent=8)
    t0 = trio.current_time()
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(600)
    # 0..250 overran two slots: the next starts at its end, once, not three times in a burst
    assert [t - t0 for t in rec.starts("a")] == pytest.approx([0, 250, 500])
    assert rec.max_active_per_user == 1


async def test_short_cycle_keeps_the_slot_grid(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 40})
    sched = Scheduler(rec, interval_s=100, max_concurrent=8)
    t0 = trio.current_time()
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(350)
    assert [t - t0 for t in rec.starts("a")] == pytest.approx([0, 100, 200, 300])


async def test_concurrency_limit(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(default=50)
    sched = Scheduler(rec, interval_s=20, max_concurrent=2)
    sched.set_users(["a", "b", "c", "d", "e"])
    async with running(sched):
        await trio.sleep(400)
        assert sched.running <= 2
    assert rec.max_active == 2
    assert all(rec.starts(m) for m in "abcde")  # nobody starves
    assert rec.max_active_per_user == 1


async def test_limit_adjustable_on_set_users(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(default=50)
    sched = Scheduler(rec, interval_s=10, max_concurrent=1)
    sched.set_users(["a", "b", "c"])
    async with running(sched):
        await trio.sleep(100)
        assert rec.max_active == 1
        sched.set_users(["a", "b", "c"], max_concurrent=3)
        await trio.sleep(200)
    assert rec.max_active == 3


async def test_pause_and_resume_global(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=100)
    sched.set_users(["a", "b"])
    async with running(sched):
        await trio.sleep(60)  # a at 0, b at 50
        assert len(rec.calls) == 2
        sched.pause()
        await trio.sleep(300)
        assert len(rec.calls) == 2
        assert {r.state for r in sched.snapshot().values()} == {"paused"}
        sched.resume()
        await trio.sleep(1)
        # one catch-up cycle per user on resume, not one per missed slot
        assert len(rec.calls) == 4


async def test_pause_and_resume_per_user(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=100)
    sched.set_users(["a", "b"])
    sched.pause(["a"])
    async with running(sched):
        await trio.sleep(320)
        assert rec.starts("a") == []
        assert len(rec.starts("b")) == 3
        snap = sched.snapshot()
        assert snap["a"].state == "paused" and snap["a"].next_run is None
        assert snap["b"].state == "idle"
        sched.resume(["a"])
        await trio.sleep(1)
        assert len(rec.starts("a")) == 1


async def test_manual_request_on_paused_user_still_runs(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=100)
    sched.set_users(["a"])
    sched.pause()
    async with running(sched):
        outcomes = await sched.request_sync(["a"]).wait()
    assert outcomes["a"].result == "ok"
    assert [r.reason for _, _, r in rec.calls] == ["manual"]


async def test_manual_sync_queues_behind_running_cycle_and_merges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder(duration={"a": 100})
    sched = Scheduler(rec, interval_s=1000)
    t0 = trio.current_time()
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(10)  # a's scheduled cycle runs 0..100
        first = sched.request_sync(["a"], full=True)
        second = sched.request_sync(["a"], allow_deletes=True)
        outcomes = await first.wait()
        assert outcomes["a"].result == "ok"
        assert (await second.wait())["a"].result == "ok"
    assert [t - t0 for t in rec.starts("a")] == pytest.approx([0, 100])
    assert rec.calls[1][2] == CycleRequest(full=True, allow_deletes=True, reason="manual")
    assert rec.max_active_per_user == 1


async def test_unknown_mailbox_is_refused_and_nothing_queued(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=100)
    sched.set_users(["a"])
    with pytest.raises(UnknownMailbox) as info:
        sched.request_sync(["a", "zz@x"])
    assert info.value.reason == "unknown_mailbox" and "zz@x" in info.value.message
    assert not sched.snapshot()["a"].pending_manual
    with pytest.raises(UnknownMailbox):
        sched.pause(["zz@x"])


async def test_hold_defers_new_cycles_until_running_ones_end(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 100, "b": 1})
    sched = Scheduler(rec, interval_s=60)
    t0 = trio.current_time()
    sched.set_users(["a", "b"])  # a at 0 (runs to 100), b at 30
    async with running(sched):
        await trio.sleep(5)
        sched.hold()
        handle = sched.request_sync(["b"])
        await sched.wait_idle()
        idle_at = trio.current_time() - t0
        assert idle_at == pytest.approx(100)
        assert rec.starts("b") == []  # neither the scheduled slot at 30 nor the manual request
        await trio.sleep(50)
        assert rec.starts("b") == []
        sched.release()
        await handle.wait()
    assert rec.starts("b") == [pytest.approx(t0 + 150)]


async def test_quiesce_context(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 100})
    sched = Scheduler(rec, interval_s=60)
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(5)
        async with sched.quiesce():
            assert sched.running == 0
            before = len(rec.calls)
            await trio.sleep(500)
            assert len(rec.calls) == before
        await trio.sleep(1)
        assert len(rec.calls) == before + 1


async def test_set_users_add_and_remove(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 100})
    sched = Scheduler(rec, interval_s=60)
    t0 = trio.current_time()
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(10)
        sched.set_users(["b", "c"])  # a removed mid-cycle; b and c new
        assert list(sched.snapshot()) == ["b", "c"]
        await trio.sleep(200)
        assert rec.active.get("a") == 0  # a's cycle was allowed to finish
    assert [t - t0 for t in rec.starts("a")] == [0]
    # new users spread over the interval from the moment they were added
    assert rec.starts("b")[0] - t0 == pytest.approx(10)
    assert rec.starts("c")[0] - t0 == pytest.approx(40)


async def test_failing_cycle_is_recorded_and_schedule_goes_on(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(fail={"a"})
    sched = Scheduler(rec, interval_s=50)
    sched.set_users(["a", "b"])
    async with running(sched):
        await trio.sleep(120)
        snap = sched.snapshot()
    assert len(rec.starts("a")) == 3 and len(rec.starts("b")) == 2
    assert snap["a"].state == "error"
    assert snap["a"].last_outcome is not None and "boom in a" in (snap["a"].last_outcome.error or "")
    assert snap["b"].state == "idle"


async def test_mark_full_applies_to_the_next_cycle_only(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=50)
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(10)
        sched.mark_full()
        await trio.sleep(100)
    assert [r.full for _, _, r in rec.calls] == [False, True, False]


async def test_stop_waits_grace_then_cancels(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 5, "b": 1000})
    sched = Scheduler(rec, interval_s=100)
    sched.set_users(["a", "b"])
    sched.set_users(["a", "b"], max_concurrent=8)
    finished: list[str] = []

    async def cycle(mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        out = await rec(mailbox, request, progress)
        finished.append(mailbox)
        return out

    sched.set_cycle(cycle)
    sched.request_sync(["a", "b"])
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.serve)
        await trio.sleep(1)
        t = trio.current_time()
        await sched.stop(grace_s=8)
        assert trio.current_time() - t == pytest.approx(8)
    assert finished == ["a"]  # a ended inside the grace, b was cancelled
    assert rec.active == {"a": 0, "b": 0}


async def test_snapshot_progress_and_wall_clock(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 10})
    rec.gate["a"] = trio.Event()
    wall = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    sched = Scheduler(rec, interval_s=600, wall_clock=lambda: wall)
    sched.set_users(["a", "b"])
    async with running(sched):
        await trio.sleep(1)
        snap = sched.snapshot()
        assert snap["a"].state == "syncing" and snap["a"].progress == {"done": 0, "total": 2}
        assert snap["a"].running_reason == "scheduled"
        # b is due 300 s after start; 1 s has passed
        assert snap["b"].next_run == datetime(2026, 1, 1, 10, 4, 59, tzinfo=UTC)
        assert sched.running == 1
        rec.gate["a"].set()
        await trio.sleep(20)
        assert sched.snapshot()["a"].last_outcome == CycleOutcome(result="ok", counts=Counts(exported=1))


async def test_a_cycle_past_its_timeout_is_an_error_and_others_go_on(
        autojump_clock: trio.testing.MockClock) -> None:
    """Issue #14: a server that never answers kept one cycle "syncing" for 38 minutes."""
    rec = Recorder(duration={"stuck": 100_000.0})
    sched = Scheduler(rec, interval_s=900, cycle_timeout_s=600)
    sched.set_users(["stuck", "b"])
    async with running(sched):
        await trio.sleep(700)
        snap = sched.snapshot()
        assert snap["stuck"].state == "error", snap["stuck"]
        outcome = snap["stuck"].last_outcome
        assert outcome is not None and outcome.reason == "cycle_timeout"
        assert "ran longer than 10 minutes (sync.cycle_timeout_minutes)" in (outcome.error or ""), outcome
        assert rec.active["stuck"] == 0  # cancelled, not left running
        await trio.sleep(2000)
    assert len(rec.starts("b")) >= 3 and len(rec.starts("stuck")) >= 2


async def test_a_cycle_that_ignores_its_cancellation_is_reported_stuck(
        autojump_clock: trio.testing.MockClock) -> None:
    """The daemon stops feeding systemd's watchdog on ``stuck()``: only a restart ends such a cycle."""

    async def deaf(mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        with trio.CancelScope(shield=True):
            await trio.sleep(10 * 24 * 3600)  # longer than the test; not forever: it must return
        return CycleOutcome(result="ok")

    sched = Scheduler(deaf, interval_s=900, cycle_timeout_s=600)
    sched.set_users(["deaf"])
    async with running(sched):
        await trio.sleep(650)
        assert sched.stuck(grace_s=300) == []
        await trio.sleep(300)
        assert sched.stuck(grace_s=300) == ["deaf"]


async def test_a_burst_of_nudges_is_one_cycle_after_the_debounce(
        autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 5})
    sched = Scheduler(rec, interval_s=1000, max_concurrent=8, debounce_s=2)
    t0 = trio.current_time()
    sched.set_users(["a", "b"])
    async with running(sched):
        await trio.sleep(600)  # a's first (scheduled) cycle at 0, b's at 500
        for _ in range(50):  # 50 notifications within a second
            assert sched.nudge("a")
            await trio.sleep(0.02)
        await trio.sleep(10)
        assert not sched.nudge("nobody")
    starts = [(t - t0, r.reason) for m, t, r in rec.calls if m == "a"]
    assert starts == [(0, "scheduled"), (pytest.approx(602), "push")], starts
    # the nudged cycle kept the schedule: a's next scheduled cycle is still due at 1000
    assert sched.snapshot()["a"].next_run is not None


async def test_nudges_during_a_cycle_make_one_cycle_after_it(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder(duration={"a": 30})
    sched = Scheduler(rec, interval_s=1000, max_concurrent=8, debounce_s=2)
    t0 = trio.current_time()
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(1)  # a's first cycle runs 0..30
        for _ in range(20):
            sched.nudge("a")
            await trio.sleep(1)
        await trio.sleep(100)
    starts = [t - t0 for t in rec.starts("a")]
    assert starts == pytest.approx([0, 30]), starts  # one more cycle, right after the running one
    assert rec.max_active_per_user == 1


async def test_a_paused_user_is_not_nudged_into_a_cycle(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    sched = Scheduler(rec, interval_s=1000, max_concurrent=8, debounce_s=2)
    sched.set_users(["a"])
    async with running(sched):
        await trio.sleep(5)
        sched.pause(["a"])
        sched.nudge("a")
        await trio.sleep(50)
        assert len(rec.starts("a")) == 1
        sched.resume(["a"])
        await trio.sleep(5)
    assert len(rec.starts("a")) == 2  # the nudge waited for the resume


def test_an_unknown_mailbox_error_lists_ten_names_and_counts_the_rest() -> None:
    """Issue #14: asking for 10,000 unknown mailboxes gave an error that listed all of them."""
    names = [f"user{n}@example.test" for n in range(10_000)]
    message = str(UnknownMailbox(names))
    assert "user9@example.test and 9,990 more" in message and "user10@" not in message
    assert len(message) < 500
