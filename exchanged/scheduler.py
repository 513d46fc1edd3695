"""Per-user sync cycles: interval, spread, locks, concurrency limit, pause/resume, manual requests.

Theory of operation
-------------------
The scheduler knows nothing of syncing. It calls a *cycle function*
``cycle(mailbox, request, progress) -> CycleOutcome`` for one user at a time and records what came
back. All time comes from trio's clock (``trio.current_time()``), so the tests run it on
``trio.testing.MockClock(autojump_threshold=0)`` without real sleeping; wall-clock datetimes are
only computed for display (``snapshot()``), from the trio-time offset.

One loop task (``serve``) decides; each cycle runs as its own task in the scheduler's nursery.

=====================  ======================================================================
rule                   how
=====================  ======================================================================
interval               after a scheduled cycle, the next is due at ``max(slot + interval, end)``
                       (``slot`` = when it was due): no stacking (never two at once for one
                       user), no burst (an overrun never queues several catch-up cycles;
                       a start a whole interval late re-bases ``slot`` on the real start).
spread                 users added in one ``set_users`` call get first runs at
                       ``now + interval * i / n``: at start-up all users spread evenly, a user
                       added later by a reload runs at once.
lock                   a user with a running cycle is never started again; manual requests wait
                       (merged: ``full`` and ``allow_deletes`` are or-ed) and run right after.
concurrency            at most ``max_concurrent`` cycles at once; the earliest due starts first.
pause                  a global flag and a per-user set, independent; a paused user gets no
                       *scheduled* cycle, but an explicit manual request still runs.
hold                   ``hold()`` (reload deferral, stop): no cycle of any kind starts until
                       ``release()``; ``wait_idle()`` waits for running ones to end.
errors                 a cycle function that raises is recorded as an ``error`` outcome; the
                       scheduler never dies of it.
cycle timeout          a cycle running longer than ``cycle_timeout_s`` (``sync.cycle_timeout_
                       minutes``) is cancelled and recorded as an ``error`` outcome saying so;
                       what it committed is kept (the runner commits per batch), the user's
                       next cycle goes on from there.
nudge                  ``nudge(mailbox)`` (a change notification, a PSA probe hit) asks for a
                       cycle ``debounce_s`` from the first nudge: a burst of nudges is one
                       cycle; nudges while the user's cycle runs make one cycle after it. A
                       nudged cycle stands in for a scheduled one that is due anyway; it obeys
                       pause, hold, the lock and the concurrency limit like a scheduled one.
=====================  ======================================================================
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from exchanged.errors import ControlError, present
from exchanged.model import CycleOutcome

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class CycleRequest:
    full: bool = False
    allow_deletes: bool = False
    reason: str = "scheduled"  # scheduled | manual | reload | startup


CycleFn = Callable[[str, CycleRequest, ProgressFn], Awaitable[CycleOutcome]]


class UnknownMailbox(ControlError):
    reason = "unknown_mailbox"
    hint = "`exchangectl users` lists the mailboxes of the running config"

    SHOWN = 10  # names listed in the message; the rest are counted

    def __init__(self, mailboxes: Sequence[str]) -> None:
        names = ", ".join(m[:320] for m in mailboxes[:self.SHOWN])
        if len(mailboxes) > self.SHOWN:
            names += f" and {len(mailboxes) - self.SHOWN:,} more"
        super().__init__(f"not an enabled user of the running config: {names}")
        self.mailboxes = list(mailboxes)


class _Ticket:
    """One user's share of a manual request: resolved with the outcome of the cycle that served it."""

    def __init__(self, mailbox: str) -> None:
        self.mailbox = mailbox
        self.outcome: CycleOutcome | None = None
        self._done = trio.Event()

    def resolve(self, outcome: CycleOutcome) -> None:
        if not self._done.is_set():
            self.outcome = outcome
            self._done.set()

    async def wait(self) -> CycleOutcome:
        await self._done.wait()
        assert self.outcome is not None
        return self.outcome


class SyncHandle:
    """What ``request_sync`` returns: await ``wait()`` for every user's outcome."""

    def __init__(self, tickets: list[_Ticket]) -> None:
        self._tickets = tickets

    @property
    def mailboxes(self) -> list[str]:
        return [t.mailbox for t in self._tickets]

    async def wait(self) -> dict[str, CycleOutcome]:
        return {t.mailbox: await t.wait() for t in self._tickets}


@dataclass
class _Pending:
    full: bool
    allow_deletes: bool
    reason: str
    tickets: list[_Ticket] = field(default_factory=list)


@dataclass
class _User:
    mailbox: str
    next_due: float
    paused: bool = False
    running: bool = False
    removed: bool = False  # removed from the config while its cycle still runs
    force_full: bool = False  # next cycle (of any kind) is a full resync
    pending: _Pending | None = None
    progress: tuple[int, int] | None = None
    last_outcome: CycleOutcome | None = None
    last_started: datetime | None = None
    last_ended: datetime | None = None
    running_request: CycleRequest | None = None
    started_at: float = 0.0  # trio time of the running cycle's start
    nudged_at: float | None = None  # a nudge asks for a cycle at this trio time
    nudge_reason: str = "push"


@dataclass(frozen=True)
class UserRuntime:
    """A read-only snapshot of one user, for status."""

    mailbox: str
    state: str  # idle | syncing | paused | error
    next_run: datetime | None
    progress: dict[str, int] | None
    last_outcome: CycleOutcome | None
    last_started: datetime | None
    last_ended: datetime | None
    pending_manual: bool
    running_reason: str | None


def _now_wall() -> datetime:
    return datetime.now(UTC)


def _inf(t: float | None) -> float:
    return math.inf if t is None else t


class Scheduler:
    def __init__(
        self,
        cycle: CycleFn,
        *,
        interval_s: float = 900.0,
        max_concurrent: int = 8,
        wall_clock: Callable[[], datetime] = _now_wall,
        cycle_timeout_s: float | None = None,
        debounce_s: float = 2.0,
    ) -> None:
        self._cycle = cycle
        self.cycle_timeout_s = cycle_timeout_s  # None: no limit; a reload may change it
        self._debounce = float(debounce_s)
        self._interval = float(interval_s)
        self._max = max(1, int(max_concurrent))
        self._wall = wall_clock
        self._users: dict[str, _User] = {}
        self._order: list[str] = []  # config order, for stable tie-breaks
        self._paused_all = False
        self._holds = 0
        self._stopping = False
        self._running = 0
        self._wake = trio.Event()
        self._ended = trio.lowlevel.ParkingLot()  # unparked whenever a cycle ends
        self._nursery: trio.Nursery | None = None

    # --- configuration --------------------------------------------------------------------------

    def set_cycle(self, cycle: CycleFn) -> None:
        """Cycles started from now on use ``cycle`` (a reload builds a new one)."""
        self._cycle = cycle

    def set_users(
        self, mailboxes: Sequence[str], interval_s: float | None = None, max_concurrent: int | None = None
    ) -> None:
        """Adopt the enabled users of a (new) config; running cycles of removed users finish."""
        now = trio.current_time()
        if interval_s is not None and float(interval_s) != self._interval:
            self._interval = float(interval_s)
            # a shorter interval takes effect now, not after the old, longer wait
            for user in self._users.values():
                user.next_due = min(user.next_due, now + self._interval)
        if max_concurrent is not None:
            self._max = max(1, int(max_concurrent))
        wanted = list(dict.fromkeys(mailboxes))
        new = [m for m in wanted if m not in self._users]
        for i, mailbox in enumerate(new):
            offset = self._interval * i / len(new)
            self._users[mailbox] = _User(mailbox=mailbox, next_due=now + offset)
        for mailbox in wanted:
            self._users[mailbox].removed = False
        for mailbox in [m for m in self._users if m not in wanted]:
            self._remove(mailbox)
        self._order = wanted
        self._poke()

    def _remove(self, mailbox: str) -> None:
        user = self._users[mailbox]
        if user.pending is not None:
            for ticket in user.pending.tickets:
                ticket.resolve(CycleOutcome(result="error", error=f"{mailbox}: removed from the config"))
            user.pending = None
        if user.running:
            user.removed = True
        else:
            del self._users[mailbox]

    def mark_full(self, mailboxes: Iterable[str] | None = None) -> None:
        """The next cycle of these users (all when None) is a full resync."""
        for mailbox in self._select(mailboxes):
            self._users[mailbox].force_full = True

    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def max_concurrent(self) -> int:
        return self._max

    @property
    def running(self) -> int:
        return self._running

    @property
    def paused(self) -> bool:
        return self._paused_all

    @property
    def held(self) -> bool:
        return self._holds > 0

    def mailboxes(self) -> list[str]:
        return [m for m in self._order if m in self._users]

    # --- requests -------------------------------------------------------------------------------

    def _select(self, mailboxes: Iterable[str] | None) -> list[str]:
        if mailboxes is None:
            return [m for m in self._order if m in self._users and not self._users[m].removed]
        wanted = list(dict.fromkeys(mailboxes))
        unknown = [m for m in wanted if m not in self._users or self._users[m].removed]
        if unknown:
            raise UnknownMailbox(unknown)
        return wanted

    def request_sync(
        self,
        mailboxes: Iterable[str] | None = None,
        *,
        full: bool = False,
        allow_deletes: bool = False,
        reason: str = "manual",
    ) -> SyncHandle:
        """Queue a cycle for these users (all when None); it runs as soon as the user is free.

        Raises ``UnknownMailbox`` (before queueing anything) when a mailbox is not a current user.
        """
        selected = self._select(mailboxes)
        tickets = []
        for mailbox in selected:
            user = self._users[mailbox]
            ticket = _Ticket(mailbox)
            if user.pending is None:
                user.pending = _Pending(full=full, allow_deletes=allow_deletes, reason=reason)
            else:
                user.pending.full |= full
                user.pending.allow_deletes |= allow_deletes
            user.pending.tickets.append(ticket)
            tickets.append(ticket)
        self._poke()
        return SyncHandle(tickets)

    def nudge(self, mailbox: str, reason: str = "push") -> bool:
        """Something changed for this user: a cycle ``debounce_s`` after the first nudge of a burst
        (see the table above). False when the mailbox is not a current user."""
        user = self._users.get(mailbox)
        if user is None or user.removed:
            return False
        if user.nudged_at is None:
            user.nudged_at = trio.current_time() + self._debounce
            user.nudge_reason = reason
            self._poke()
        return True

    def pause(self, mailboxes: Iterable[str] | None = None) -> list[str]:
        """Stop scheduled cycles (all users when None); running cycles finish."""
        if mailboxes is None:
            self._paused_all = True
            return self.mailboxes()
        selected = self._select(mailboxes)
        for mailbox in selected:
            self._users[mailbox].paused = True
        return selected

    def resume(self, mailboxes: Iterable[str] | None = None) -> list[str]:
        """Undo ``pause``; None clears the global pause and every per-user one."""
        if mailboxes is None:
            self._paused_all = False
            for user in self._users.values():
                user.paused = False
            selected = self.mailboxes()
        else:
            selected = self._select(mailboxes)
            for mailbox in selected:
                self._users[mailbox].paused = False
        self._poke()
        return selected

    # --- hold (reload deferral) and stop ----------------------------------------------------------

    def hold(self) -> None:
        """No new cycle starts until the matching ``release()``; running ones go on."""
        self._holds += 1

    def release(self) -> None:
        self._holds = max(0, self._holds - 1)
        self._poke()

    def stuck(self, grace_s: float) -> list[str]:
        """Mailboxes whose cycle runs ``grace_s`` past its timeout: cancelling it did not end it
        (the daemon's watchdog stops on them)."""
        if self.cycle_timeout_s is None:
            return []
        limit = trio.current_time() - self.cycle_timeout_s - grace_s
        return [u.mailbox for u in self._users.values() if u.running and u.started_at < limit]

    async def wait_idle(self) -> None:
        """Return once no cycle runs (call after ``hold()``, or new ones may start meanwhile)."""
        while self._running > 0:
            await self._ended.park()

    @asynccontextmanager
    async def quiesce(self) -> Any:
        """Hold, wait for running cycles to end, and release on exit."""
        self.hold()
        try:
            await self.wait_idle()
            yield self
        finally:
            self.release()

    async def stop(self, grace_s: float) -> None:
        """No new cycles; running ones get ``grace_s`` seconds, then they are cancelled."""
        self._stopping = True
        self._poke()
        with trio.move_on_after(grace_s):
            await self.wait_idle()
        for user in self._users.values():
            if user.pending is not None:
                for ticket in user.pending.tickets:
                    ticket.resolve(CycleOutcome(result="error", error="the daemon is stopping"))
                user.pending = None
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # --- status -----------------------------------------------------------------------------------

    def _wall_of(self, t: float) -> datetime:
        return self._wall() + timedelta(seconds=max(0.0, t - trio.current_time()))

    def snapshot(self) -> dict[str, UserRuntime]:
        out = {}
        for mailbox in self.mailboxes():
            user = self._users[mailbox]
            if user.running:
                state = "syncing"
            elif user.paused or self._paused_all:
                state = "paused"
            elif user.last_outcome is not None and user.last_outcome.result == "error":
                state = "error"
            else:
                state = "idle"
            if user.running or self._stopping:
                next_run = None
            elif user.pending is not None:
                next_run = self._wall()
            elif user.paused or self._paused_all:
                next_run = None
            else:
                next_run = self._wall_of(user.next_due)
            progress = None
            if user.running and user.progress is not None:
                progress = {"done": user.progress[0], "total": user.progress[1]}
            out[mailbox] = UserRuntime(
                mailbox=mailbox,
                state=state,
                next_run=next_run,
                progress=progress,
                last_outcome=user.last_outcome,
                last_started=user.last_started,
                last_ended=user.last_ended,
                pending_manual=user.pending is not None,
                running_reason=user.running_request.reason if user.running_request else None,
            )
        return out

    def next_run(self) -> datetime | None:
        """The earliest upcoming scheduled cycle of any user, as wall-clock time."""
        runs = [r.next_run for r in self.snapshot().values() if r.next_run is not None]
        return min(runs) if runs else None

    # --- the loop ---------------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake.set()

    def _eligible(self, user: _User, now: float) -> bool:
        if user.running or user.removed:
            return False
        if user.pending is not None:
            return True
        if user.paused or self._paused_all:
            return False
        return min(user.next_due, _inf(user.nudged_at)) <= now

    def _next_deadline(self) -> float:
        if self._holds or self._stopping or self._running >= self._max:
            return math.inf
        dues = [
            min(u.next_due, _inf(u.nudged_at))
            for u in self._users.values()
            if not (u.running or u.removed or u.paused or self._paused_all)
        ]
        return min(dues, default=math.inf)

    def _start_due(self, nursery: trio.Nursery) -> None:
        if self._holds or self._stopping:
            return
        now = trio.current_time()
        rank = {m: i for i, m in enumerate(self._order)}
        due = [u for u in self._users.values() if self._eligible(u, now)]
        # manual requests first (an operator is waiting), then the longest overdue, then config order
        due.sort(key=lambda u: (u.pending is None, min(u.next_due, _inf(u.nudged_at)),
                                rank.get(u.mailbox, 0)))
        for user in due:
            if self._running >= self._max:
                break
            self._launch(nursery, user, now)

    def _launch(self, nursery: trio.Nursery, user: _User, now: float) -> None:
        tickets: list[_Ticket] = []
        if user.pending is not None:
            pending, user.pending = user.pending, None
            request = CycleRequest(
                full=pending.full or user.force_full, allow_deletes=pending.allow_deletes,
                reason=pending.reason,
            )
            tickets = pending.tickets
            # a manual cycle started when the scheduled one was due anyway stands in for it
            slot = user.next_due if user.next_due <= now else None
        elif user.next_due > now:  # nudged before it was due: the schedule stays as it was
            request = CycleRequest(full=user.force_full, reason=user.nudge_reason)
            slot = None
        else:
            request = CycleRequest(full=user.force_full, reason="scheduled")
            slot = user.next_due
        if user.nudged_at is not None and user.nudged_at <= now:
            user.nudged_at = None  # served by this cycle (a later nudge asks for one more)
        if slot is not None and now >= slot + self._interval:
            # started a whole interval late (held, paused, at the concurrency limit): re-base the
            # grid on the real start so that the next cycle does not follow back-to-back
            slot = now
        user.force_full = False
        user.running = True
        user.running_request = request
        user.progress = None
        user.last_started = self._wall()
        user.started_at = now
        self._running += 1
        nursery.start_soon(self._run_one, user, request, tickets, slot)

    async def _run_one(
        self, user: _User, request: CycleRequest, tickets: list[_Ticket], slot: float | None
    ) -> None:
        def progress(done: int, total: int) -> None:
            user.progress = (done, total)

        outcome = CycleOutcome(result="error", error=f"{user.mailbox}: cycle cancelled (daemon stopping)")
        try:
            limit = self.cycle_timeout_s
            with trio.move_on_after(limit if limit is not None else math.inf) as scope:
                outcome = await self._cycle(user.mailbox, request, progress)
            if scope.cancelled_caught:
                assert limit is not None
                minutes = f"{limit / 60:g} minute{'s' if limit != 60 else ''}"
                outcome = CycleOutcome(
                    result="error", reason="cycle_timeout",
                    error=f"{user.mailbox}: the cycle ran longer than {minutes} "
                          "(sync.cycle_timeout_minutes) and was stopped; what it had written is "
                          "kept and the next cycle goes on from there")
        except Exception as exc:  # one user's failure must never stop the others' schedule
            p = present(exc)
            outcome = CycleOutcome(result="error", error=p.line())
        finally:
            end = trio.current_time()
            # a scheduled cycle plans the next slot; a manual one keeps the schedule as it was
            planned = slot + self._interval if slot is not None else user.next_due
            user.next_due = max(planned, end)
            user.running = False
            user.running_request = None
            user.progress = None
            user.last_outcome = outcome
            user.last_ended = self._wall()
            self._running -= 1
            for ticket in tickets:
                ticket.resolve(outcome)
            if user.removed:
                self._users.pop(user.mailbox, None)
            self._ended.unpark_all()
            self._poke()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run cycles until cancelled (or ``stop()``)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                self._wake = trio.Event()
                self._start_due(nursery)
                with trio.move_on_at(self._next_deadline()):
                    await self._wake.wait()
