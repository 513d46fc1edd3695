"""Scheduler invariants under random users, durations, limits and manual requests (Hypothesis).

Each example runs a whole virtual day in a fresh trio run on the autojump clock.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanged.model import CycleOutcome
from exchanged.scheduler import CycleRequest, ProgressFn, Scheduler

users_st = st.lists(st.sampled_from([f"u{i}@x.test" for i in range(6)]), min_size=1, max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(
    users=users_st,
    interval=st.integers(min_value=10, max_value=100),
    limit=st.integers(min_value=1, max_value=4),
    durations=st.lists(st.integers(min_value=1, max_value=250), min_size=6, max_size=6),
    manual_at=st.lists(st.tuples(st.integers(0, 900), st.integers(0, 5)), max_size=8),
    fail=st.sets(st.integers(0, 5), max_size=2),
)
def test_invariants(users: list[str], interval: int, limit: int, durations: list[int],
                    manual_at: list[tuple[int, int]], fail: set[int]) -> None:
    active: dict[str, int] = {}
    violations: list[str] = []
    peak_total = 0
    starts: dict[str, list[tuple[float, float]]] = {u: [] for u in users}
    duration = {u: durations[i] for i, u in enumerate(users)}
    failing = {users[i] for i in fail if i < len(users)}

    async def cycle(mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        nonlocal peak_total
        active[mailbox] = active.get(mailbox, 0) + 1
        if active[mailbox] > 1:  # recorded, not raised: the scheduler turns exceptions into outcomes
            violations.append(f"two cycles of {mailbox} at once")
        peak_total = max(peak_total, sum(active.values()))
        begin = trio.current_time()
        try:
            await trio.sleep(duration[mailbox])
            if mailbox in failing:
                raise RuntimeError("boom")
            return CycleOutcome(result="ok")
        finally:
            active[mailbox] -= 1
            starts[mailbox].append((begin, trio.current_time()))

    async def main() -> None:
        sched = Scheduler(cycle, interval_s=interval, max_concurrent=limit)
        sched.set_users(users)
        async with trio.open_nursery() as nursery:
            await nursery.start(sched.serve)
            t0 = trio.current_time()
            for at, idx in sorted(manual_at):
                await trio.sleep_until(t0 + at)
                sched.request_sync([users[idx % len(users)]])
            await trio.sleep_until(t0 + 1000)
            await sched.stop(grace_s=0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert violations == []
    assert peak_total <= limit
    for user, runs in starts.items():
        runs.sort()
        if limit >= len(users):  # without contention every user starts within its spread offset
            assert runs, f"{user} never ran"
        for (_b1, e1), (b2, _e2) in itertools.pairwise(runs):
            assert b2 >= e1, "a cycle started before the previous one of the same user ended"
        if limit >= len(users):
            # nobody waits for a slot: a user is never left idle longer than one interval
            for (_b1, e1), (b2, _e2) in itertools.pairwise(runs):
                assert b2 - e1 <= interval + 1e-6
