"""The back-off gate and the retry loop of ``EwsAccount.call``, on trio's MockClock (no server)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing
from exchangelib.errors import (
    ErrorInternalServerTransientError,
    ErrorInvalidSyncStateData,
    ErrorServerBusy,
    ErrorTimeoutExpired,
)

from exchanged import errors
from exchanged.exchange import ExchangeSettings, open_account
from exchanged.exchange.account import (
    MAX_THROTTLED_ATTEMPTS,
    MAX_UNAVAILABLE_ATTEMPTS,
    QUICK_RETRY_S,
    AmbiguousWrite,
)
from exchanged.exchange.backoff import BackOffGate

SETTINGS = ExchangeSettings(address="mail.example.test", username="svc", password="pw",
                            enabled_mailboxes=("a@example.test",), max_connections=2)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_gate_waits_for_the_servers_hint(clock: trio.testing.MockClock) -> None:
    gate = BackOffGate()
    start = trio.current_time()
    assert gate.throttled(2.5) == 2.5
    await gate.wait_turn()
    assert trio.current_time() - start == pytest.approx(2.5)
    before = trio.current_time()
    await gate.wait_turn()  # open now: no wait
    assert trio.current_time() == before


async def test_exponential_with_jitter_up_to_the_cap(clock: trio.testing.MockClock) -> None:
    gate = BackOffGate(base_s=1.0, cap_s=20.0, rng=random.Random(7))
    delays = [gate.next_delay(None) for _ in range(8)]
    ceilings = [min(20.0, 2.0 ** n) for n in range(8)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 20.0
    gate.succeeded()
    assert gate.consecutive_failures == 0
    assert gate.next_delay(None) <= 1.0


async def test_a_hint_is_capped(clock: trio.testing.MockClock) -> None:
    assert BackOffGate(hint_cap_s=60).next_delay(3600) == 60


async def test_the_servers_hint_is_obeyed_beyond_the_exponential_cap(clock: trio.testing.MockClock) -> None:
    gate = BackOffGate()
    assert gate.throttled(400) == 400  # the server asked for it: not cut to 120 (or 300) s
    until = gate.closed_until()
    assert until is not None and until - trio.current_time() == pytest.approx(400)
    assert gate.hinted
    assert max(BackOffGate(rng=random.Random(1)).next_delay(None) for _ in range(12)) <= 120


async def test_an_unreachable_server_gets_one_quick_retry_and_leaves_the_gate_open(
        clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    refused = ErrorTimeoutExpired("Reraised from ConnectionError(NewConnectionError(Connection refused))")
    for _ in range(3):  # every cycle: the same two tries, no back-off growing from cycle to cycle
        calls, fn = _script(refused, refused, refused, "never")
        start = trio.current_time()
        with pytest.raises(errors.ExchangeUnavailable, match="refused"):
            await acc.call("a@example.test", "GetFolder", fn)  # type: ignore[arg-type]
        assert calls == [2]
        assert trio.current_time() - start <= QUICK_RETRY_S  # MockClock: the waits, not real time
        assert acc.back_off_until() is None
    # exchangelib re-raises the same as ErrorServerBusy once its pool has two sessions: still no throttling
    busy = ErrorServerBusy(
        "Reraised from ErrorTimeoutExpired(Reraised from ConnectionError(HTTPSConnectionPool(host='mail', "
        "port=443): Max retries exceeded (Caused by NewConnectionError('Failed to establish a new "
        "connection: [Errno 111] Connection refused'))))", back_off=1.0)
    calls, fn = _script(busy, busy, "never")
    with pytest.raises(errors.ExchangeUnavailable, match="refused"):
        await acc.call("a@example.test", "GetFolder", fn)  # type: ignore[arg-type]
    assert calls == [2] and acc.back_off_until() is None
    dns = ErrorTimeoutExpired("Reraised from ConnectionError(NameResolutionError(Failed to resolve))")
    calls, fn = _script(dns, dns, "never")
    with pytest.raises(errors.ExchangeUnavailable, match="cannot resolve"):
        await acc.call("a@example.test", "GetFolder", fn)  # type: ignore[arg-type]
    assert calls == [2]
    await acc.aclose()


async def test_a_timeout_is_not_retried_and_is_called_a_timeout(clock: trio.testing.MockClock) -> None:
    acc = open_account(dataclasses.replace(SETTINGS, read_timeout_s=45))
    timeout = ErrorTimeoutExpired("Reraised from ReadTimeout(HTTPSConnectionPool(host='mail', port=443): "
                                  "Read timed out. (read timeout=45.0))")
    calls, fn = _script(timeout, "never")
    with pytest.raises(errors.ExchangeUnavailable) as info:
        await acc.call("a@example.test", "GetFolder", fn)  # type: ignore[arg-type]
    assert calls == [1]
    assert "no answer from mail.example.test within 45 s (server.read_timeout_s)" in str(info.value)
    assert "closed before" not in str(info.value)
    connect = ErrorTimeoutExpired("Reraised from ConnectTimeout(MaxRetryError(ConnectTimeoutError("
                                  "'Connection to mail timed out. (connect timeout=10.0)')))")
    calls, fn = _script(connect, "never")
    with pytest.raises(errors.ExchangeUnavailable, match=r"no connection to .* within 10 s"):
        await acc.call("a@example.test", "GetFolder", fn)  # type: ignore[arg-type]
    assert calls == [1]
    await acc.aclose()


async def test_waiting_is_cancellable(clock: trio.testing.MockClock) -> None:
    gate = BackOffGate()
    gate.throttled(300)
    with trio.move_on_after(1) as scope:
        await gate.wait_turn()
    assert scope.cancelled_caught  # SIGTERM-style cancellation never waits out a back-off


def _script(*steps: object) -> tuple[list[int], object]:
    """A blocking function that raises / returns the given steps in order; counts its calls."""
    calls = [0]
    items = list(steps)

    def fn() -> object:
        calls[0] += 1
        step = items.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    return calls, fn


async def test_call_backs_off_by_the_hint_then_succeeds(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    calls, fn = _script(ErrorServerBusy("busy", back_off=30.0), ErrorServerBusy("busy", back_off=10.0), "ok")
    start = trio.current_time()
    assert await acc.call("a@example.test", "FindItem", fn) == "ok"  # type: ignore[arg-type]
    assert calls == [3]
    assert trio.current_time() - start >= 40  # no request before the server's back-off ended
    await acc.aclose()


async def test_call_gives_up_throttled_after_max_attempts(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    calls, fn = _script(*[ErrorServerBusy("busy", back_off=1.0)] * MAX_THROTTLED_ATTEMPTS)
    with pytest.raises(errors.Throttled) as info:
        await acc.call("a@example.test", "GetItem", fn)  # type: ignore[arg-type]
    assert calls == [MAX_THROTTLED_ATTEMPTS]
    assert info.value.back_off_s == 1.0 and info.value.mailbox == "a@example.test"
    await acc.aclose()


async def test_503_without_hint_backs_off_exponentially(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    calls, fn = _script(ErrorInternalServerTransientError("Caused by HTTP 503 response"), "ok")
    start = trio.current_time()
    assert await acc.call("a@example.test", "GetItem", fn) == "ok"  # type: ignore[arg-type]
    assert trio.current_time() > start and calls == [2]
    await acc.aclose()


async def test_lost_replies_of_writes_are_not_retried(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    lost = ErrorTimeoutExpired("Reraised from ConnectionError(RemoteDisconnected('Remote end closed'))")
    calls, fn = _script(*[lost] * MAX_UNAVAILABLE_ATTEMPTS)
    with pytest.raises(errors.ExchangeUnavailable):
        await acc.call("a@example.test", "GetItem", fn)  # type: ignore[arg-type]
    assert calls == [MAX_UNAVAILABLE_ATTEMPTS]
    calls, fn = _script(lost, "never")
    with pytest.raises(AmbiguousWrite):
        await acc.call("a@example.test", "CreateItem", fn, write=True)  # type: ignore[arg-type]
    assert calls == [1]  # a write whose answer was lost is never blindly sent again
    refused = ErrorTimeoutExpired("Reraised from ConnectionError(NewConnectionError(Connection refused))")
    calls, fn = _script(refused, "created")
    assert await acc.call("a@example.test", "CreateItem", fn, write=True) == "created"  # type: ignore[arg-type]
    assert calls == [2]  # refused: nothing was sent, so sending it again is safe
    await acc.aclose()


async def test_writes_retry_a_refusal_by_throttling(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    calls, fn = _script(ErrorServerBusy("busy", back_off=5.0), "created")
    assert await acc.call("a@example.test", "CreateItem", fn, write=True) == "created"  # type: ignore[arg-type]
    assert calls == [2]  # the server refused the first one: nothing was created, sending again is safe
    await acc.aclose()


async def test_other_errors_are_not_retried(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    calls, fn = _script(ErrorInvalidSyncStateData("bad state"), "never")
    with pytest.raises(errors.SyncStateInvalid):
        await acc.call("a@example.test", "SyncFolderItems", fn)  # type: ignore[arg-type]
    assert calls == [1]
    await acc.aclose()


async def test_closed_account_refuses_calls(clock: trio.testing.MockClock) -> None:
    acc = open_account(SETTINGS)
    await acc.aclose()
    with pytest.raises(errors.ExchangeError, match="closed"):
        await acc.call("a@example.test", "GetItem", lambda: None)
