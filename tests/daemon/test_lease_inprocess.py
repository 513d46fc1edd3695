"""The daemon's side of leases that the end-to-end multi-node test cannot provoke on cue: a state
store that fails while the lease is being taken (in-process, in-memory adapters, autojump clock)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from exchanged import errors
from tests.daemon.test_daemon_inprocess import ALICE, Env, env, started, wait_for  # noqa: F401 - env: fixture


async def test_no_lease_no_cycle_when_the_state_store_fails_taking_it(
    env: Env, autojump_clock: trio.testing.MockClock  # noqa: F811
) -> None:
    failing = True
    take = env.state.try_lease

    async def try_lease(mailbox: str, node: str, ttl_s: float) -> bool:
        if failing and mailbox == ALICE:
            raise errors.StateError("state database postgresql://db/exchanged: connection refused")
        return await take(mailbox, node, ttl_s)

    env.state.try_lease = try_lease  # type: ignore[method-assign]
    async with started(env.daemon()) as d:
        out = await d.sync([ALICE], full=False, wait=True, allow_deletes=False)
        assert out["ok"] is False
        assert out["results"][ALICE]["result"] == "error"
        assert "cannot take this user's lease" in out["results"][ALICE]["error"]
        assert env.runner.of(ALICE) == []  # without the lease the cycle never ran
        row = next(u for u in await d.users() if u["mailbox"] == ALICE)
        assert row["last_result"] == "error" and "connection refused" in row["last_error"]
        # the state database is a cause every mailbox shares: one key for all of them
        assert ("error", "cause:state_error") in env.notifier.events
        failing = False
        out = await d.sync([ALICE], full=False, wait=True, allow_deletes=False)
        assert out["results"][ALICE]["result"] == "ok" and len(env.runner.of(ALICE)) == 1
        assert ("resolved", "cause:state_error") in env.notifier.events


async def test_a_cycle_that_cannot_renew_its_lease_stops_before_another_node_can_take_it(
    env: Env, autojump_clock: trio.testing.MockClock  # noqa: F811
) -> None:
    env.state.clock = trio.current_time  # lease expiry on the test's virtual clock
    env.runner.gates[ALICE] = trio.Event()  # alice's first cycle runs until it is stopped
    take = env.state.try_lease
    failing = False

    async def try_lease(mailbox: str, node: str, ttl_s: float) -> bool:
        if failing and mailbox == ALICE:
            raise errors.StateError("state database postgresql://db/exchanged: connection timed out")
        return await take(mailbox, node, ttl_s)

    env.state.try_lease = try_lease  # type: ignore[method-assign]
    overlaps: list[float] = []
    async with started(env.daemon()) as d:
        await wait_for(lambda: d.scheduler.snapshot()[ALICE].state == "syncing")
        failing = True  # from now on this node cannot reach the state store to renew

        async def other_node() -> None:  # tries to take alice over the whole time
            while True:
                if await take(ALICE, "other-node", 300) and d.scheduler.snapshot()[ALICE].state == "syncing":
                    overlaps.append(trio.current_time())
                await trio.sleep(5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_node)
            await wait_for(lambda: overlaps or env.state.leases.get(ALICE, ("",))[0] == "other-node")
            nursery.cancel_scope.cancel()
        assert overlaps == []  # the other node got alice only after this node's cycle had stopped
        outcome = d.scheduler.snapshot()[ALICE].last_outcome
        assert outcome is not None and outcome.result == "error" and outcome.reason == "lease_lost"
        assert "could not be renewed" in (outcome.error or "")


def test_the_node_name_is_kept_in_the_state_directory_and_locked_while_in_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exchanged.leases import node_identity as _node_identity

    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/elsewhere")
    first, fd = _node_identity()
    assert fd is not None and first.startswith(socket.gethostname() + ":")
    assert (tmp_path / "node-id").stat().st_mode & 0o077 == 0
    other, other_fd = _node_identity()  # a second daemon while the first runs: a name of its own
    assert other_fd is None and other != first and f":{os.getpid()}:" in other
    os.close(fd)
    again, fd = _node_identity()  # the next start after the first ended (or was killed): the same node
    assert again == first and fd is not None
    os.close(fd)
    monkeypatch.delenv("STATE_DIRECTORY")
    alone, none = _node_identity()
    assert none is None and f":{os.getpid()}:" in alone
