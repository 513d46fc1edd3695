"""Back-off compliance, checked with the EWS server's own request log (arrival times), not sleeps.

* After ErrorServerBusy with BackOffMilliseconds no request of the throttled service account (for
  any of its mailboxes) arrives before that time has passed.
* Without the hint: exponential back-off with "equal jitter", so each wait is at least half its
  exponential step and the gaps grow (the cap and the jitter's spread are checked on trio's
  MockClock in tests/exchange/test_backoff.py).
* SIGTERM while the daemon waits out a long back-off stops it: exit 0.
"""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from exchanged.engine import UserSpec
from exchanged.testing.smtp import SmtpSink
from tests.daemon.harness import wait_until
from tests.reliability.harness import ALICE, BOB, make_env, running
from tests.reliability.inproc import open_stack

pytestmark = pytest.mark.reliability

BASE_S = 1.0  # BackOffGate's default base (exchanged/exchange/backoff.py)


def _gaps_after_faults(log: list[dict[str, Any]], kind: str) -> list[float]:
    """For each request answered with fault ``kind``: seconds until the next request arrived."""
    gaps = []
    for i, entry in enumerate(log[:-1]):
        if entry["fault"] == kind:
            gaps.append(log[i + 1]["t"] - entry["t"])
    return gaps


@pytest.mark.parametrize("style", ["fault", "message"])
async def test_no_request_before_back_off_ms(tmp_path: Path, style: str) -> None:
    async with open_stack(tmp_path) as stack:
        stack.server.reset_stats()
        stack.server.set_faults(throttle_next=2, back_off_ms=700, throttle_style=style)
        outcome = await stack.cycle()
        assert outcome.result == "ok", outcome
        log = stack.server.stats()["log"]
        gaps = _gaps_after_faults(log, "throttle")
        assert len(gaps) == 2, log
        assert min(gaps) >= 0.7, (gaps, log)  # the server's 700 ms, by the server's own clock
        assert await stack.duplicates() == []


async def test_the_back_off_holds_every_mailbox_of_the_account(tmp_path: Path) -> None:
    """Exchange throttles the service account: bob's cycle, started while alice's request waits
    out its back-off, sends nothing before that back-off has passed."""
    async with open_stack(tmp_path) as stack:
        bob = UserSpec(BOB, "2", stack.user.settings)
        stack.server.reset_stats()
        stack.server.set_faults(throttle_next=1, back_off_ms=1500)
        gate = stack.account.session_for(ALICE).gate
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stack.cycle)
            # polling the gate: it has no event to wait on; open until the client has the busy answer
            while gate.not_before <= trio.current_time():  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.start_soon(stack.runner.run_cycle, bob)
        log = stack.server.stats()["log"]
        busy = next(e for e in log if e["fault"] == "throttle")
        early = [e for e in log if busy["t"] < e["t"] < busy["t"] + 1.5]
        assert early == [], (busy, early)
        ops = {e["op"] for e in log if e["t"] > busy["t"]}
        assert "CreateItem" in ops  # both cycles went on after the back-off
        assert await stack.duplicates() == [] and await stack.duplicates(BOB) == []


@pytest.mark.parametrize("faults", [{"fail_next": 3, "fail_status": 503},
                                    {"throttle_next": 3, "back_off_ms": 0}], ids=["http-503", "busy-no-hint"])
async def test_without_hint_exponential_growing_waits(tmp_path: Path, faults: dict[str, Any],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="exchanged.exchange")
    async with open_stack(tmp_path) as stack:
        stack.server.reset_stats()
        stack.server.set_faults(**faults)
        outcome = await stack.cycle()
        assert outcome.result == "ok", outcome
        log = stack.server.stats()["log"]
        kind = "fail" if "fail_next" in faults else "throttle"
        gaps = _gaps_after_faults(log, kind)
        assert len(gaps) == 3, log
        # the delays the adapter chose: base * 2**(n-1) with equal jitter (never a made-up hint,
        # such as the 10 s exchangelib fills in when the server gave none)
        delays = [float(m) for m in re.findall(r"backing off ([0-9.]+) s", caplog.text)]
        assert len(delays) == 3, caplog.text
        for n, (delay, gap) in enumerate(zip(delays, gaps, strict=True), start=1):
            step = BASE_S * 2 ** (n - 1)
            assert step / 2 - 0.05 <= delay <= step + 0.05, delays
            assert gap >= delay - 0.05, (gaps, delays)  # nothing earlier (the log rounds to 0.1 s)


def test_sigterm_during_back_off_stops_the_daemon(tmp_path: Path, smtp: SmtpSink) -> None:
    with running(tmp_path) as server:
        from datetime import UTC, datetime

        from exchanged.psa.sample import seed_sample

        seed_sample(f"sqlite:///{tmp_path / 'psa.db'}", datetime.now(UTC).replace(microsecond=0))
        env = make_env(tmp_path, server, smtp, "d")
        server.set_faults(throttle_next=1000, back_off_ms=600_000)  # ten minutes
        env.start()
        wait_until(lambda: server.stats()["throttled"] >= 1, "a throttled request")
        env.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert env.proc.wait(timeout=60) == 0, env.stderr()  # type: ignore[union-attr]
        assert "Traceback" not in env.stderr()
        env.notify.close()
