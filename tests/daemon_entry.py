"""The daemon as the subprocess tests start it: the production ``cli_run`` with test openers.

    python -m tests.daemon_entry [--memory] [--hooks PATH] [--crash-after K] [--crash-log PATH] \
        --config PATH

``--memory``: the in-memory Exchange, PSA and state fakes of ``tests.memory`` instead of the real
adapters (the PSA knows each configured user's resource; a reload keeps the fakes and teaches the
PSA the new users). ``--hooks PATH``: a JSON file re-read at every cycle, before the runner:
``{"cycle_delay_s": 2.5, "fail_mailboxes": ["bob@example.test"], "hold_while_exists": "/tmp/f"}``.
``--crash-after K`` / ``--crash-log PATH``: every side effect of the real adapters counted and
logged, the process killed after step K (``tests.crash``; 0 counts only); applies at start and at
every reload, since both open through the same openers.

The production daemon reads none of this: it is built here, by injection (``Daemon(openers=...)``).
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below (half a second): a SIGTERM or SIGHUP from now on is noted, not
    # fatal, as exchanged/cli.py does for `exchanged run`; the tests signal early on purpose.
    from exchanged.signals import remember_early

    remember_early()

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from exchanged import errors
from exchanged.daemon import cli_run
from exchanged.model import CycleOutcome
from exchanged.openers import Adapters, CycleRunner, Openers
from exchanged.scheduler import ProgressFn
from tests import crash
from tests.memory import MemoryExchange, MemoryPsa, MemoryState

if TYPE_CHECKING:
    from exchanged.config import Config, UserConfig
    from exchanged.ports import ExchangeAccount, PsaConnector, StateStore


def _exists(path: str) -> bool:
    return os.path.exists(path)


class HookedRunner:
    """Delays, a gate and failures from the hooks file in front of the real runner."""

    def __init__(self, inner: CycleRunner, hooks: Path | None) -> None:
        self._inner = inner
        self._hooks = hooks
        self.records_outcomes = inner.records_outcomes

    def _read(self) -> dict[str, Any]:
        if self._hooks is None:
            return {}
        try:
            data = json.loads(self._hooks.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def run_cycle(self, cfg: Config, user: UserConfig | None, *, full: bool, allow_deletes: bool,
                        progress: ProgressFn, cycle_id: str,
                        exchange_unchanged: bool = False) -> CycleOutcome:
        hooks = self._read()
        if hooks.get("cycle_delay_s"):
            await trio.sleep(float(hooks["cycle_delay_s"]))
        gate = hooks.get("hold_while_exists")
        # polling a file: the test process has no other way to reach into this one
        while gate and _exists(gate):  # noqa: ASYNC110
            await trio.sleep(0.05)
        mailbox = user.mailbox if user is not None else None
        if mailbox in hooks.get("fail_mailboxes", []):
            raise errors.MailboxNotFound(f"mailbox {mailbox} not found on the Exchange server",
                                         mailbox=mailbox)
        return await self._inner.run_cycle(cfg, user, full=full, allow_deletes=allow_deletes,
                                           progress=progress, cycle_id=cycle_id,
                                           exchange_unchanged=exchange_unchanged)

    async def plan(self, cfg: Config, user: UserConfig) -> dict[str, Any]:
        return await self._inner.plan(cfg, user)


class TestOpeners(Openers):
    """The real adapters, each side effect counted (``--crash-after``); the hooks in front of the runner."""

    def __init__(self, hooks: Path | None, counter: crash.StepCounter | None) -> None:
        self.hooks = hooks
        self.counter = counter

    async def state(self, cfg: Config) -> StateStore:
        store = await super().state(cfg)
        return crash.count_state(store, self.counter) if self.counter else store

    async def psa(self, cfg: Config) -> PsaConnector:
        psa = await super().psa(cfg)
        return crash.count_psa(psa, self.counter) if self.counter else psa

    async def exchange(self, cfg: Config) -> ExchangeAccount:
        account = await super().exchange(cfg)
        return crash.count_account(account, self.counter) if self.counter else account

    def runner(self, cfg: Config, adapters: Adapters) -> CycleRunner:
        return HookedRunner(super().runner(cfg, adapters), self.hooks)


class MemoryOpeners(TestOpeners):
    """One set of in-memory fakes for the life of the process."""

    def __init__(self, hooks: Path | None) -> None:
        super().__init__(hooks, None)
        self.fakes = Adapters(MemoryExchange(), MemoryPsa(), MemoryState())

    def _seed(self, cfg: Config) -> None:
        psa = self.fakes.psa
        assert isinstance(psa, MemoryPsa)
        for user in cfg.users:
            if user.psa_resource not in psa.resources:
                psa.add_resource(user.psa_resource, user.mailbox)

    async def open(self, cfg: Config) -> Adapters:
        self._seed(cfg)
        return self.fakes

    async def reopen(self, current: Adapters, old: Config, new: Config) -> Adapters:
        self._seed(new)
        return current


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.daemon_entry")
    parser.add_argument("--config", required=True)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--hooks", type=Path, default=None)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--crash-log", default=None)
    args = parser.parse_args(argv)
    if args.memory:
        openers: Openers = MemoryOpeners(args.hooks)
    else:
        counter = (crash.StepCounter(args.crash_after, args.crash_log)
                   if args.crash_after is not None else None)
        openers = TestOpeners(args.hooks, counter)
    return cli_run(argparse.Namespace(config=args.config), openers)


if __name__ == "__main__":
    sys.exit(main())
