"""Back-off for one EWS session pool, on trio's clock (cancellable: SIGTERM is never blocked).

exchangelib shares one connection pool per (endpoint, credentials), and Exchange throttles per
account, so one ``BackOffGate`` is shared by every mailbox reached through the same credentials.

* After ``ErrorServerBusy`` with ``BackOffMilliseconds``: no request through this gate before that
  time has passed (the server's wish is obeyed up to ``hint_cap`` = 15 minutes).
* Without a hint (HTTP 503, a closed connection, ErrorServerBusy without the value): exponential
  back-off with jitter, ``base * 2**n`` capped at ``cap`` (120 s), where ``n`` counts consecutive
  failures and resets on the first success.
* Only throttling closes the gate: a server that cannot be reached is not a reason to make the
  next cycle wait (``EwsAccount.call`` retries that once, quickly, and gives up).
* Every wait is ``trio.sleep_until`` on ``trio.current_time()``: tests run it on ``MockClock``.
"""

from __future__ import annotations

import random

import trio

BACKOFF_CAP_S = 120.0  # exponential back-off without a hint of the server
SERVER_HINT_CAP_S = 900.0  # BackOffMilliseconds is obeyed up to this


class BackOffGate:
    def __init__(self, *, base_s: float = 1.0, cap_s: float = BACKOFF_CAP_S,
                 hint_cap_s: float = SERVER_HINT_CAP_S, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.hint_cap_s = hint_cap_s
        self.hinted = False  # the gate is closed by the server's own BackOffMilliseconds
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
            return min(float(hint_s), self.hint_cap_s)
        ceiling = min(self.cap_s, self.base_s * (2 ** (self._failures - 1)))
        # "equal jitter": at least half the exponential step, so the back-off really grows
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def throttled(self, hint_s: float | None) -> float:
        """Close the gate after a throttling answer; returns the delay chosen."""
        delay = self.next_delay(hint_s)
        until = trio.current_time() + delay
        if until >= self._not_before:
            self._not_before = until
            self.hinted = hint_s is not None and hint_s > 0
        return delay

    def closed_until(self) -> float | None:
        """The trio time before which no request goes out, or None when the gate is open."""
        return self._not_before if self._not_before > trio.current_time() else None

    def succeeded(self) -> None:
        self._failures = 0

    def statistics(self) -> dict[str, float | int]:
        return {"not_before": self._not_before, "consecutive_failures": self._failures,
                "waits": self.waits}
