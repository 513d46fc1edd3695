"""Back-off for one EWS session pool, on trio's clock (cancellable: SIGTERM is never blocked).

exchangelib shares one connection pool per (endpoint, credentials), and Exchange throttles per
account, so one ``BackOffGate`` is shared by every mailbox reached through the same credentials.

* After ``ErrorServerBusy`` with ``BackOffMilliseconds``: no request through this gate before that
  time has passed.
* Without a hint (HTTP 503, a closed connection, ErrorServerBusy without the value): exponential
  back-off with jitter, ``base * 2**n`` capped at ``cap`` seconds, where ``n`` counts consecutive
  failures and resets on the first success.
* Every wait is ``trio.sleep_until`` on ``trio.current_time()``: tests run it on ``MockClock``.
"""

from __future__ import annotations

import random

import trio


class BackOffGate:
    def __init__(self, *, base_s: float = 1.0, cap_s: float = 300.0,
                 rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()
        self._not_before = 0.0  # trio time
        self._failures = 0
        self.waits = 0  # how often a caller had to wait (statistics, tests)

    @property
    def not_before(self) -> float:
        return self._not_before

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    async def wait_turn(self) -> None:
        """Sleep until the gate is open (no-op when it is)."""
        while True:
            delay = self._not_before - trio.current_time()
            if delay <= 0:
                return
            self.waits += 1
            await trio.sleep_until(self._not_before)

    def next_delay(self, hint_s: float | None) -> float:
        """The delay after one more failure: the server's hint, or exponential with jitter."""
        self._failures += 1
        if hint_s is not None and hint_s > 0:
            return min(float(hint_s), self.cap_s)
        ceiling = min(self.cap_s, self.base_s * (2 ** (self._failures - 1)))
        # "equal jitter": at least half the exponential step, so the back-off really grows
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def throttled(self, hint_s: float | None) -> float:
        """Close the gate after a throttling answer; returns the delay chosen."""
        delay = self.next_delay(hint_s)
        self._not_before = max(self._not_before, trio.current_time() + delay)
        return delay

    def succeeded(self) -> None:
        self._failures = 0

    def statistics(self) -> dict[str, float | int]:
        return {"not_before": self._not_before, "consecutive_failures": self._failures,
                "waits": self.waits}
