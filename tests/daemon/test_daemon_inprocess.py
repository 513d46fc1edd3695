"""The daemon in-process on trio's autojump clock: reload semantics, resync marks, mails, deferral.

The adapters are the in-memory fakes, the runner and the notifier are recorders; the config is a
real file loaded by the real ``exchanged.config``.
"""

from __future__ import annotations

import grp
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from exchanged import errors
from exchanged.config import Config, UserConfig, load_config
from exchanged.daemon import Daemon, ReloadRejected
from exchanged.model import Counts, CycleOutcome
from exchanged.openers import Adapters, CycleRunner, NotifierLike, Openers
from exchanged.scheduler import ProgressFn
from tests.memory import MemoryExchange, MemoryPsa, MemoryState

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


@dataclass
class RecordingRunner:
    calls: list[tuple[str, bool, bool]] = field(default_factory=list)
    gates: dict[str, trio.Event] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)
    records_outcomes: bool = False
    adopted: dict[str, int] = field(default_factory=dict)  # items a cycle found by key (state lost)

    async def run_cycle(self, cfg: Config, user: UserConfig | None, *, full: bool, allow_deletes: bool,
                        progress: ProgressFn, cycle_id: str,
                        exchange_unchanged: bool = False) -> CycleOutcome:
        assert user is not None
        self.calls.append((user.mailbox, full, allow_deletes))
        if user.mailbox in self.gates:
            await self.gates[user.mailbox].wait()
        await trio.sleep(1)
        if user.mailbox in self.fail:
            raise self.fail[user.mailbox]
        return CycleOutcome(result="ok", counts=Counts(exported=1),
                            written={("appointment", "exchange"): 1},
                            adopted=self.adopted.get(user.mailbox, 0))

    async def plan(self, cfg: Config, user: UserConfig) -> dict[str, Any]:
        return {"mailbox": user.mailbox}

    def of(self, mailbox: str) -> list[tuple[str, bool, bool]]:
        return [c for c in self.calls if c[0] == mailbox]


@dataclass
class RecordingNotifier:
    events: list[tuple[str, str]] = field(default_factory=list)

    def error(self, key: str, presented: errors.Presented, mailbox: str | None = None, *,
              shared: bool = False) -> None:
        self.events.append(("error", key))

    def resolved(self, key: str, mailbox: str | None = None) -> None:
        self.events.append(("resolved", key))

    def resolved_prefix(self, prefix: str) -> None:
        self.events.append(("resolved", f"{prefix}*"))

    def forget_mailbox(self, mailbox: str) -> None:
        self.events.append(("forget", mailbox))

    def confirm_user(self, mailbox: str, summary: str) -> None:
        self.events.append(("confirm", mailbox))

    def reconfigure(self, cfg: Config) -> None:
        self.events.append(("reconfigure", cfg.profile_name))

    async def flush(self) -> None:
        pass

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()


class EnvOpeners(Openers):
    """The in-memory fakes (one state store for the test), the recording runner and notifier."""

    def __init__(self, env: Env) -> None:
        self.env = env

    @staticmethod
    def seed(psa: MemoryPsa, cfg: Config) -> None:
        for u in cfg.users:
            if u.psa_resource not in psa.resources:
                psa.add_resource(u.psa_resource, u.mailbox)

    async def open(self, cfg: Config) -> Adapters:
        psa = MemoryPsa()
        self.seed(psa, cfg)
        return Adapters(MemoryExchange(), psa, self.env.state)

    async def reopen(self, current: Adapters, old: Config, new: Config) -> Adapters:
        assert isinstance(current.psa, MemoryPsa)
        self.seed(current.psa, new)
        return current

    def runner(self, cfg: Config, adapters: Adapters) -> CycleRunner:
        return self.env.runner

    def notifier(self, cfg: Config) -> NotifierLike:
        return self.env.notifier


class Env:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.path = base / "exchanged.yaml"
        self.runner = RecordingRunner()
        self.notifier = RecordingNotifier()
        self.state = MemoryState()
        pw = base / "pw"
        pw.write_text("Pw-s3cret-XYZ\n")
        pw.chmod(0o600)
        self.users: list[dict[str, Any]] = [{"mailbox": ALICE, "psa_resource": "1"},
                                            {"mailbox": BOB, "psa_resource": "2"}]

    def write(self, **overrides: Any) -> None:
        cfg: dict[str, Any] = {
            "profile_name": "inproc",
            "server": {"address": "mail.example.test"},
            "sync_interval_minutes": 10,
            "credentials": {"username": "svc@example.test", "password_file": str(self.base / "pw")},
            "users": self.users,
            "control": {"socket": str(self.base / "c.sock"), "group": grp.getgrgid(os.getgid()).gr_name},
            "logging": {"format": "json"},
        }
        cfg.update(overrides)
        self.path.write_text(yaml.safe_dump(cfg))

    def daemon(self, openers: Openers | None = None) -> Daemon:
        return Daemon(load_config(self.path), str(self.path), openers=openers or EnvOpeners(self),
                      config_loader=self.load)

    async def load(self, path: str) -> Config:
        # in the trio thread: a worker thread would let the autojump clock run away meanwhile
        return load_config(path)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.write()
    return e


async def wait_for(pred: Any) -> None:
    with trio.fail_after(10_000):  # virtual seconds: only a guard against a hang
        while not pred():  # noqa: ASYNC110 - polling a predicate over the daemon's state is the point
            await trio.sleep(0.5)


@asynccontextmanager
async def started(daemon: Daemon) -> AsyncIterator[Daemon]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await wait_for(lambda: daemon._ready)
        yield daemon
        daemon.request_stop()


@pytest.fixture
async def running(env: Env, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Daemon]:
    async with started(env.daemon()) as d:
        yield d


async def test_start_confirms_unseen_users_once(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for(lambda: len([e for e in env.notifier.events if e[0] == "confirm"]) == 2)
    assert ("confirm", ALICE) in env.notifier.events and ("confirm", BOB) in env.notifier.events
    assert (await env.state.user_records())[ALICE].known


async def test_after_a_state_loss_synced_users_get_no_second_confirmation(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue #14: after the state was lost every user got the "now synced" mail again. A first
    cycle that adopts items (found by their keys) was synced before; one that adopts none is new."""
    env.runner.adopted[ALICE] = 7
    async with started(env.daemon()):
        await wait_for(lambda: ("confirm", BOB) in env.notifier.events)
        await trio.sleep(700)
    assert ("confirm", ALICE) not in env.notifier.events
    assert await env.state.user_records() and (await env.state.user_records())[ALICE].known


async def test_the_confirmation_waits_for_the_first_successful_cycle(
        env: Env, autojump_clock: trio.testing.MockClock) -> None:
    env.runner.fail[BOB] = errors.ImpersonationDenied("may not impersonate", mailbox=BOB)
    async with started(env.daemon()) as d:
        await wait_for(lambda: env.runner.of(ALICE) and env.runner.of(BOB))
        await wait_for(lambda: d.scheduler.running == 0)
        assert ("confirm", ALICE) in env.notifier.events
        assert ("confirm", BOB) not in env.notifier.events  # his mailbox cannot be synced yet
        assert not (await env.state.user_records()).get(BOB) or \
            not (await env.state.user_records())[BOB].known
        del env.runner.fail[BOB]
        await d.sync([BOB], full=False, wait=True, allow_deletes=False)
        assert ("confirm", BOB) in env.notifier.events
        await d.sync([BOB], full=False, wait=True, allow_deletes=False)
    assert env.notifier.events.count(("confirm", BOB)) == 1


async def test_a_shared_cause_is_one_key_and_status_tells_login_from_reachable(
        env: Env, autojump_clock: trio.testing.MockClock) -> None:
    refused = errors.AuthFailed("the login of svc@example.test (basic) was refused")
    async with started(env.daemon()) as d:
        env.runner.fail[ALICE] = refused
        env.runner.fail[BOB] = refused
        await d.sync(None, full=False, wait=True, allow_deletes=False)
        assert {k for kind, k in env.notifier.events if kind == "error"} == {"cause:auth_failed"}
        exchange = (await d.status())["exchange"]
        assert exchange["reachable"] is True and exchange["login"] == "refused"
        assert (await d.status())["state"] == "degraded"
        env.runner.fail[ALICE] = errors.ExchangeUnavailable("connection to mail refused")
        env.runner.fail[BOB] = errors.ImpersonationDenied("may not impersonate", mailbox=BOB)
        await d.sync(None, full=False, wait=True, allow_deletes=False)
        exchange = (await d.status())["exchange"]
        assert exchange["reachable"] is False and exchange["login"] == "not checked"
        assert ("error", f"user:{BOB}:impersonation_denied") in env.notifier.events  # one mailbox's own
        del env.runner.fail[ALICE], env.runner.fail[BOB]
        await d.sync(None, full=False, wait=True, allow_deletes=False)
        exchange = (await d.status())["exchange"]
        assert exchange["reachable"] is True and exchange["login"] == "ok"
        assert exchange["back_off_until"] is None
        # the server asked for a back-off of 90 s: status says until when
        assert d.adapters is not None
        d.adapters.account.back_off_until = (  # type: ignore[attr-defined]
            lambda: (trio.current_time() + 90, True))
        exchange = (await d.status())["exchange"]
        until = datetime.fromisoformat(exchange["back_off_until"])
        assert 88 <= (until - datetime.now(UTC)).total_seconds() <= 91  # status gives whole seconds
        assert exchange["back_off_by_server"] is True


async def test_known_users_get_no_confirmation(env: Env, autojump_clock: trio.testing.MockClock) -> None:
    await env.state.mark_known(ALICE)
    await env.state.mark_known(BOB)
    async with started(env.daemon()) as d:
        await wait_for(lambda: env.runner.of(ALICE))
        await trio.sleep(5)
        assert d.generation == 1
    assert not [e for e in env.notifier.events if e[0] == "confirm"]


async def test_server_change_marks_every_user_full(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for(lambda: env.runner.of(ALICE) and env.runner.of(BOB))
    await wait_for(lambda: running.scheduler.running == 0)
    env.write(server={"address": "mail2.example.test"})
    result = await running.reload(wait=True)
    assert result["result"] == "applied" and result["resync_all"] is True
    assert running.generation == 2
    assert (await running.status())["exchange"]["server"] == "mail2.example.test"
    await wait_for(lambda: len(env.runner.of(ALICE)) >= 2 and len(env.runner.of(BOB)) >= 2)
    assert env.runner.of(ALICE)[1][1] is True and env.runner.of(BOB)[1][1] is True
    await wait_for(lambda: len(env.runner.of(ALICE)) >= 3)
    assert env.runner.of(ALICE)[2][1] is False  # only the next cycle is full


async def test_changed_user_settings_resync_that_user_only(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for(lambda: env.runner.of(ALICE) and env.runner.of(BOB))
    await wait_for(lambda: running.scheduler.running == 0)
    env.users[0] = {"mailbox": ALICE, "psa_resource": "1", "settings": {"todos": False}}
    env.write()
    result = await running.reload(wait=True)
    assert result["changed"] == [ALICE] and result["resync_all"] is False
    await wait_for(lambda: len(env.runner.of(ALICE)) >= 2 and len(env.runner.of(BOB)) >= 2)
    assert env.runner.of(ALICE)[1][1] is True and env.runner.of(BOB)[1][1] is False


async def test_added_and_newly_enabled_users(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    await wait_for(lambda: running.scheduler.running == 0 and env.runner.of(ALICE))
    env.users.append({"mailbox": CAROL, "psa_resource": "3"})
    env.users[1] = {"mailbox": BOB, "psa_resource": "2", "enabled": False}
    env.write()
    await wait_for(lambda: running.scheduler.running == 0)
    before = len(env.notifier.events)
    result = await running.reload(wait=True)
    assert result["result"] == "applied" and result["added"] == [CAROL]
    await wait_for(lambda: ("confirm", CAROL) in env.notifier.events[before:])  # after her first cycle
    assert running.scheduler.mailboxes() == [ALICE, CAROL]
    rows = {u["mailbox"]: u for u in await running.users()}
    assert rows[BOB]["state"] == "disabled" and rows[BOB]["enabled"] is False
    await wait_for(lambda: env.runner.of(CAROL))
    # re-enabling bob is "newly enabled": he gets a confirmation mail again
    env.users[1] = {"mailbox": BOB, "psa_resource": "2"}
    env.write()
    await wait_for(lambda: running.scheduler.running == 0)
    await running.reload(wait=True)
    await wait_for(lambda: ("confirm", BOB) in env.notifier.events[before:])


async def test_rejected_reload_keeps_running_and_mails_once_cleared(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    env.write(sync_interval_minutes=5)
    with pytest.raises(ReloadRejected) as info:
        await running.reload(wait=False)
    assert "sync_interval_minutes" in info.value.message
    status = await running.status()
    assert status["config"]["generation"] == 1
    assert status["config"]["last_reload"]["result"] == "rejected"
    assert running.scheduler.interval_s == 600
    first = [k for kind, k in env.notifier.events if kind == "error" and k.startswith("config:")]
    assert len(first) == 1
    # another problem within repeat_after_minutes is another key: mailed too (OPERATIONS.md)
    env.write(sync_interval_minutes=5, sync={"past_days": 45})
    with pytest.raises(ReloadRejected):
        await running.reload(wait=False)
    keys = {k for kind, k in env.notifier.events if kind == "error" and k.startswith("config:")}
    assert len(keys) == 2
    env.write()  # the file that runs: nothing to apply, the rejection is cleared
    await wait_for(lambda: running.scheduler.running == 0)
    assert (await running.reload(wait=True))["result"] == "unchanged"
    assert ("resolved", "config*") in env.notifier.events


async def test_deferred_reload_holds_new_cycles_until_running_ones_end(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    env.runner.gates[ALICE] = trio.Event()  # before the start: alice's first cycle (at 0 s) hangs
    async with started(env.daemon()) as running:
        await wait_for(lambda: running.scheduler.running == 1)
        env.users.append({"mailbox": CAROL, "psa_resource": "3"})
        env.write()
        result = await running.reload(wait=False)
        assert result["result"] == "deferred"
        # a manual sync of bob waits too: nothing new starts while the reload waits
        await running.sync([BOB], full=False, wait=False, allow_deletes=False)
        await trio.sleep(60)
        assert env.runner.of(BOB) == [] and running.generation == 1
        assert (await running.status())["config"]["last_reload"]["result"] == "deferred"
        env.write(sync_interval_minutes=12)  # a second reload while the first waits: the newest wins
        assert (await running.reload(wait=False))["result"] == "deferred"
        outcome: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                outcome.update(await running.reload(wait=True))

            nursery.start_soon(waiter)
            await trio.sleep(1)
            env.runner.gates[ALICE].set()
        assert outcome["result"] == "applied" and running.generation == 2  # applied once
        assert running.scheduler.interval_s == 720 and CAROL in running.scheduler.mailboxes()
        await wait_for(lambda: env.runner.of(BOB) and env.runner.of(CAROL))


async def test_a_deferred_reload_waits_a_bounded_time_for_a_stuck_cycle(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue #14: a reload deferred behind a cycle that never ends held the scheduler, and another
    user went 14 minutes overdue and never started."""
    from exchanged.reload import DEFER_MAX_S

    env.runner.gates[ALICE] = trio.Event()  # alice's first cycle never ends
    async with started(env.daemon()) as running:
        await wait_for(lambda: running.scheduler.running == 1)
        env.write(sync_interval_minutes=12)
        assert (await running.reload(wait=False))["result"] == "deferred"
        await trio.sleep(DEFER_MAX_S + 1)
        assert running.generation == 2 and running.scheduler.interval_s == 720
        await wait_for(lambda: env.runner.of(BOB))  # bob's first slot came and his cycle ran
        env.runner.gates[ALICE].set()


async def test_an_identical_reload_is_a_no_op_and_checks_are_rate_limited(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue #14: 921 SIGHUPs in 10 s sent 904 ResolveNames and 1,734 GetFolder."""
    from exchanged.reload import CHECK_EVERY_S

    async with started(env.daemon()) as running:
        await trio.sleep(1)
        account = running.adapters.account
        checks = account.requests["check"]
        for _ in range(50):
            assert (await running.reload(wait=False))["result"] == "unchanged"
        await trio.sleep(1)
        assert running.generation == 1 and account.requests["check"] == checks
        for n in range(50):  # 50 different configs in a burst: one check now, one after the pause
            env.write(sync_interval_minutes=10 + n % 2 + 1)
            assert (await running.reload(wait=False))["result"] == "applied"
        await trio.sleep(1)
        assert account.requests["check"] == checks + 1
        await trio.sleep(CHECK_EVERY_S)
        assert account.requests["check"] == checks + 2
        await trio.sleep(10 * CHECK_EVERY_S)
        assert account.requests["check"] == checks + 2


async def test_cycle_errors_mailed_per_reason_and_resolved(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    env.runner.fail[BOB] = errors.AuthFailed("login refused", mailbox=BOB)
    out = await running.sync([BOB], full=False, wait=True, allow_deletes=False)
    assert out["results"][BOB]["result"] == "error" and out["ok"] is False
    key = "cause:auth_failed"  # the sync account's login: one cause for every mailbox
    assert ("error", key) in env.notifier.events
    row = next(u for u in await running.users() if u["mailbox"] == BOB)
    assert row["state"] == "error" and "login refused" in row["last_error"]
    assert (await running.status())["state"] == "degraded"
    del env.runner.fail[BOB]
    await running.sync([BOB], full=True, wait=True, allow_deletes=True)
    assert ("resolved", key) in env.notifier.events
    assert env.runner.of(BOB)[-1] == (BOB, True, True)
    # a crash (a bug) is an error outcome too, never the end of the scheduler
    env.runner.fail[ALICE] = RuntimeError("boom")
    out = await running.sync([ALICE], full=False, wait=True, allow_deletes=False)
    assert "boom" in out["results"][ALICE]["error"]
    assert ("error", f"user:{ALICE}:internal_error") in env.notifier.events


async def test_control_refusals(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(errors.ControlError) as info:
        await running.sync(["nobody@example.test"], full=False, wait=False, allow_deletes=False)
    assert info.value.reason == "unknown_mailbox"
    with pytest.raises(errors.ControlError) as info:
        await running.plan("nobody@example.test")
    assert info.value.reason == "unknown_mailbox"
    with pytest.raises(errors.ControlError) as info:
        await running.history(None, "yesterday")
    assert "since" in info.value.message
    assert await running.history(ALICE, "2026-01-01") == []
    assert (await running.plan(ALICE.upper())) == {"mailbox": ALICE}
    assert (await running.pause([BOB]))["paused"] == [BOB]
    rows = {u["mailbox"]: u for u in await running.users()}
    bob = rows[BOB]
    assert bob["state"] == "syncing" or (bob["state"] == "paused" and bob["next_run"] is None)
    assert (await running.resume(None))["global"] is True


async def test_user_leased_by_another_node_is_skipped(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    assert await env.state.try_lease(ALICE, "other-node", 1e9)
    async with started(env.daemon()) as d:
        out = await d.sync([ALICE], full=False, wait=True, allow_deletes=False)
        assert out["results"][ALICE]["result"] == "skipped" and out["ok"] is True
        assert env.runner.of(ALICE) == []
        row = next(u for u in await d.users() if u["mailbox"] == ALICE)
        assert row["state"] == "idle" and row["last_attempt"] is None
        await env.state.release_lease(ALICE, "other-node")
        out = await d.sync([ALICE], full=False, wait=True, allow_deletes=False)
        assert out["results"][ALICE]["result"] == "ok" and len(env.runner.of(ALICE)) == 1
        assert ALICE not in env.state.leases  # released after the cycle


async def test_lease_lost_mid_cycle_stops_the_cycle(env: Env, autojump_clock: trio.testing.MockClock) -> None:
    env.runner.gates[ALICE] = trio.Event()  # alice's first cycle hangs until the lease is gone
    async with started(env.daemon()) as d:
        await wait_for(lambda: d.scheduler.running == 1)
        env.state.leases[ALICE] = ("thief", 1e12)  # another node took it (e.g. after a network split)
        await wait_for(lambda: d.scheduler.snapshot()[ALICE].last_outcome is not None)
        outcome = d.scheduler.snapshot()[ALICE].last_outcome
        assert outcome is not None and outcome.result == "error" and outcome.reason == "lease_lost"
        assert env.state.leases[ALICE][0] == "thief"  # never released on the thief's behalf


async def test_an_unexpected_failure_opening_the_state_never_shows_its_password(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store masks its own errors; anything else it raises is wrapped here, masked too."""
    import exchanged.state

    url = "postgresql://sync:hunter2@db.example.test/exchanged"

    def boom(u: str) -> None:
        raise RuntimeError(f"driver exploded connecting to {u}")

    monkeypatch.setattr(exchanged.state, "open_state_store", boom)
    env.write(state={"url": url})
    with pytest.raises(errors.StateError) as caught:
        await Openers().state(load_config(env.path))
    assert "hunter2" not in str(caught.value) and "db.example.test" in str(caught.value)


class PartOpeners(Openers):
    """Only the part openers injected (start and reload go through the base class): each adapter
    opened is a fresh fake, recorded, so the test sees which ones a reload replaced and closed."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.opened: list[tuple[str, object]] = []

    def runner(self, cfg: Config, adapters: Adapters) -> CycleRunner:
        return self.env.runner

    def notifier(self, cfg: Config) -> NotifierLike:
        return self.env.notifier

    async def exchange(self, cfg: Config) -> Any:
        account = MemoryExchange()
        self.opened.append(("exchange", account))
        return account

    async def psa(self, cfg: Config) -> Any:
        psa = MemoryPsa()
        EnvOpeners.seed(psa, cfg)
        self.opened.append(("psa", psa))
        return psa

    async def state(self, cfg: Config) -> Any:
        self.opened.append(("state", self.env.state))
        return self.env.state


async def test_reload_opens_through_the_same_injected_openers(
    env: Env, autojump_clock: trio.testing.MockClock
) -> None:
    """A reload that changes the server opens the new account through the openers the daemon was
    given (before: a module-level opener, so a crash-counting wrapper was lost at the first reload)."""
    openers = PartOpeners(env)
    async with started(env.daemon(openers)) as d:
        assert [what for what, _ in openers.opened] == ["state", "psa", "exchange"]
        first = d.adapters.account if d.adapters else None
        await wait_for(lambda: d.scheduler.running == 0)
        env.write(server={"address": "mail2.example.test"})
        assert (await d.reload(wait=True))["result"] == "applied"
        assert [what for what, _ in openers.opened] == ["state", "psa", "exchange", "exchange"]
        assert d.adapters is not None and d.adapters.account is openers.opened[-1][1]
        assert isinstance(first, MemoryExchange) and first.closed and not d.adapters.account.closed


def _families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    [sample] = [s for f in families.values() for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sample.value)


async def test_metrics_over_the_control_method_and_the_textfile(
        env: Env, tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    textfile = tmp_path / "metrics" / "exchanged.prom"
    textfile.parent.mkdir()
    env.write(metrics={"textfile": str(textfile)})
    env.runner.fail[BOB] = errors.ImpersonationDenied("may not impersonate", mailbox=BOB)
    async with started(env.daemon()) as d:
        await d.sync(None, full=False, wait=True, allow_deletes=False)
        await d.sync([ALICE], full=False, wait=True, allow_deletes=False)
        answer = await d.metrics()
        families = _families(answer["text"])
        assert answer["content_type"].startswith("text/plain; version=0.0.4")
        ok = _value(families, "exchanged_cycles_total", result="ok")
        assert ok >= 2 and _value(families, "exchanged_cycles_total", result="error") >= 1
        assert _value(families, "exchanged_items_written_total", kind="appointment", side="exchange") == ok
        alice_last = _value(families, "exchanged_last_success_timestamp_seconds", mailbox=ALICE)
        assert abs(alice_last - datetime.now(UTC).timestamp()) < 60
        assert not [s for s in families["exchanged_last_success_timestamp_seconds"].samples
                    if s.labels["mailbox"] == BOB]  # never succeeded
        assert _value(families, "exchanged_config_generation") == 1
        assert _value(families, "exchanged_config_generation_age_seconds") >= 0
        assert sum(x.value for x in families["exchanged_users"].samples) == 2  # by state
        assert _value(families, "exchanged_deletions_held_back", mailbox=ALICE) == 0
        # written after each cycle, atomically, for node_exporter's textfile collector
        from_file = _families(textfile.read_text())
        assert 1 <= _value(from_file, "exchanged_cycles_total", result="ok") <= ok + 1
    assert not list(textfile.parent.glob("*.prom.*"))  # once stopped: no temporary file left behind


async def test_status_document_keeps_every_field_and_reads_back_typed(
    env: Env, running: Daemon, autojump_clock: trio.testing.MockClock
) -> None:
    """The status answer has SPEC section 5's fields (and the ones added since), exactly these
    keys, and exchangectl's typed reading of it gives the same document back."""
    from exchanged.control.protocol import StatusDocument

    await wait_for(lambda: env.runner.of(ALICE) and running.scheduler.running == 0)
    env.write(sync_interval_minutes=12)
    assert (await running.reload(wait=True))["result"] == "applied"
    doc = await running.status()
    assert set(doc) == {"version", "protocol", "pid", "started_at", "state", "ready", "config", "exchange",
                        "psa", "running", "paused", "interval_minutes", "max_concurrent_users", "users",
                        "public_folder"}
    assert set(doc["config"]) == {"path", "generation", "profile_name", "loaded_at", "last_reload",
                                  "warnings"}
    assert set(doc["config"]["last_reload"]) == {"at", "result", "errors", "added", "removed", "changed",
                                                 "resync_all"}
    assert set(doc["exchange"]) >= {"server", "version", "reachable", "last_error"}
    assert doc["psa"] == {"connector": "sql"}
    assert doc["state"] in ("running", "degraded") and doc["config"]["generation"] == 2
    row = next(u for u in doc["users"] if u["mailbox"] == ALICE)
    assert set(row) == {"mailbox", "psa_resource", "enabled", "state", "last_attempt", "last_success",
                        "last_result", "last_error", "next_run", "progress", "counts", "held_by",
                        "push", "push_note", "push_since", "source"}
    assert row["source"] == "config"  # listed in the YAML (users_from_psa would say so)
    assert row["push"] == "polled"  # the in-memory account pushes nothing, and says so
    assert row["last_result"] == "ok" and row["counts"]["exported"] == 1
    assert StatusDocument.from_json(doc).to_json() == doc
    assert await running.users() == doc["users"]


async def test_the_journal_is_pruned_after_state_history_days(
        env: Env, autojump_clock: trio.testing.MockClock) -> None:
    from exchanged.model import JournalEntry, Kind
    from exchanged.ports import StateBatch

    now = datetime.now(UTC)
    old, recent = (JournalEntry(now - timedelta(days=days), ALICE, "psa", "create", Kind.IMPORTED,
                                f"imported:{days}", None, (), "new in Exchange", "c", f"item {days}")
                   for days in (40, 20))
    await env.state.commit(ALICE, StateBatch(journal=[old, recent]))
    env.write(state={"history_days": 30})
    async with started(env.daemon()) as d:
        await wait_for(lambda: len(env.state.journal) < 2 or None)
        rows = await d.history(ALICE, None, limit=10)
        assert [r["subject"] for r in rows if r["key"].startswith("imported:")] == ["item 20"]


async def test_a_removed_user_leaves_the_open_errors(
        env: Env, running: Daemon, autojump_clock: trio.testing.MockClock) -> None:
    env.runner.fail[BOB] = errors.ExchangeUnavailable("connection to mail refused")
    await running.sync([BOB], full=False, wait=True, allow_deletes=False)
    await wait_for(lambda: running.scheduler.running == 0)
    env.users = [u for u in env.users if u["mailbox"] != BOB]
    env.write()
    assert (await running.reload(wait=True))["result"] == "applied"
    assert ("forget", BOB) in env.notifier.events
