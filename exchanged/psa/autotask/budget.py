"""The request budget: no more than ``limit`` Autotask requests in any rolling hour.

The customer's database allows 10,000 external requests per rolling hour for *all* its
integrations together; ``psa.requests_per_hour`` is this daemon's share. One ``RequestBudget``
is shared by every user's cycle (it lives in the connector), so the share holds however many
cycles run at once. A request that would exceed it waits (cancellable) until the oldest request
of the window is an hour old; waiting cycles are counted for status. ``interrupt(reason)`` ends
every wait at once, and makes every later one fail at once, with ``PsaBudgetExhausted`` (the
daemon calls it when it stops: a wait of up to an hour must not hold a stop up). Time comes from
trio's clock, so tests run it on the autojump clock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from exchanged import errors

HOUR_S = 3600.0


class RequestBudget:
    def __init__(self, limit: int, *, window_s: float = HOUR_S) -> None:
        if limit < 1:
            raise ValueError("requests_per_hour must be at least 1")
        self.limit = limit
        self.window_s = window_s
        self._stamps: deque[float] = deque()
        self.waiting = 0  # tasks waiting for budget right now
        self.waited = 0  # requests that had to wait, since start
        self.total = 0  # requests let through, since start
        self.interrupted: str | None = None  # why waits end at once (interrupt)
        self._interrupt = trio.Event()

    def interrupt(self, reason: str) -> None:
        """Every wait (for budget, or a back-off through ``pause``) ends now, and so does every
        later one, the moment it would start; requests the budget allows still go through."""
        if self.interrupted is None:
            self.interrupted = reason
        self._interrupt.set()

    async def pause(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (trio time); False, at once, when the waits are interrupted."""
        if self.interrupted is None:
            with trio.move_on_at(deadline):
                await self._interrupt.wait()
        return self.interrupted is None

    def _expire(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window_s:
            self._stamps.popleft()

    def used(self) -> int:
        self._expire(trio.current_time())
        return len(self._stamps)

    async def acquire(self) -> None:
        """Take one request from the budget, waiting for the window to roll on if it is used up."""
        counted = False
        while True:
            now = trio.current_time()
            self._expire(now)
            if len(self._stamps) < self.limit:
                self._stamps.append(now)
                self.total += 1
                return
            if not counted:
                self.waited += 1
                counted = True
            self.waiting += 1
            try:
                free_at = self._stamps[0] + self.window_s
                if not await self.pause(free_at):
                    raise errors.PsaBudgetExhausted(
                        "the wait for the Autotask hourly request budget was interrupted "
                        f"({self.interrupted}): all {self.limit} requests of psa.requests_per_hour are "
                        f"used, the next one is free in {max(0.0, free_at - trio.current_time()):.0f} s",
                        hint="nothing was lost: the next cycle carries on; if cycles often wait, raise "
                        "psa.requests_per_hour or the sync interval",
                    )
            finally:
                self.waiting -= 1

    def status(self) -> dict[str, Any]:
        used = self.used()
        free_at = None
        if used >= self.limit and self._stamps:
            free_at = round(self._stamps[0] + self.window_s - trio.current_time(), 1)
        return {
            "used": used,
            "limit": self.limit,
            "waiting": self.waiting,
            "waited_total": self.waited,
            "requests_total": self.total,
            "next_free_in_s": free_at,
        }
