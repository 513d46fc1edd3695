"""The request budget: no more than ``limit`` Autotask requests in any rolling hour.

The customer's database allows 10,000 external requests per rolling hour for *all* its
integrations together; ``psa.requests_per_hour`` is this daemon's share. One ``RequestBudget``
is shared by every user's cycle (it lives in the connector), so the share holds however many
cycles run at once. A request that would exceed it waits (a cancellable ``trio.sleep_until``)
until the oldest request of the window is an hour old; waiting cycles are counted for status.
Time comes from trio's clock, so tests run it on the autojump clock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

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
                await trio.sleep_until(self._stamps[0] + self.window_s)
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
