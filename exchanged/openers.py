"""What the daemon opens and builds from a config: the three adapters, the cycle runner, the notifier.

``Daemon`` takes one :class:`Openers` object and uses it at start (:meth:`Openers.open`) and at
every reload (:meth:`Openers.reopen`, which opens only what the new config connects to
differently). The production openers are this class as it is; tests pass a subclass (the
in-memory fakes, the crash-at-step-k counter: ``tests/daemon_entry.py``) the way trio takes a
``clock=`` and supervisor an ``options`` object. Nothing here reads the environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from exchanged import errors
from exchanged.errors import ExchangedError, present
from exchanged.model import CycleOutcome
from exchanged.scheduler import ProgressFn

if TYPE_CHECKING:
    from exchanged.config import Config, UserConfig
    from exchanged.engine import UserSpec
    from exchanged.ports import ExchangeAccount, PsaConnector, StateStore

log = structlog.get_logger("exchanged.daemon")


class _Closable(Protocol):
    async def aclose(self) -> None: ...


async def close_quietly(thing: _Closable | None, what: str) -> None:
    if thing is None:
        return
    try:
        await thing.aclose()
    except Exception as exc:  # closing must never stop the others from closing
        log.warning("closing failed", what=what, error=present(exc).line())


@dataclass
class Adapters:
    account: ExchangeAccount
    psa: PsaConnector
    state: StateStore

    async def aclose(self) -> None:
        await close_quietly(self.account, "exchange")
        await close_quietly(self.psa, "psa")
        await close_quietly(self.state, "state")


class CycleRunner(Protocol):
    records_outcomes: bool  # True: the runner writes ``record_outcome`` to the state store itself

    async def run_cycle(self, cfg: Config, user: UserConfig | None, *, full: bool, allow_deletes: bool,
                        progress: ProgressFn, cycle_id: str,
                        exchange_unchanged: bool = False) -> CycleOutcome:
        """One cycle of ``user``; ``None``: the public contacts folder. ``exchange_unchanged``: a
        silent subscription vouches for the mailbox (push.py; ``SyncRunner.run_cycle``)."""
        ...

    async def plan(self, cfg: Config, user: UserConfig) -> dict[str, Any]: ...


class NotifierLike(Protocol):
    def error(self, key: str, presented: errors.Presented, mailbox: str | None = None, *,
              shared: bool = False) -> object: ...

    def resolved(self, key: str, mailbox: str | None = None) -> object: ...

    def resolved_prefix(self, prefix: str) -> object: ...

    def forget_mailbox(self, mailbox: str) -> object: ...

    def confirm_user(self, mailbox: str, summary: str) -> object: ...

    def reconfigure(self, cfg: Config) -> None: ...

    async def flush(self) -> None: ...

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...


class SyncCycleRunner:
    """``exchanged.sync.runner.SyncRunner`` for the daemon (one per config generation)."""

    records_outcomes = True

    def __init__(self, cfg: Config, adapters: Adapters) -> None:
        from exchanged.config import server_identity
        from exchanged.sync.runner import SyncRunner

        self._runner = SyncRunner(adapters.account, adapters.psa, adapters.state,
                                  server_identity=server_identity(cfg))

    async def run_cycle(self, cfg: Config, user: UserConfig | None, *, full: bool, allow_deletes: bool,
                        progress: ProgressFn, cycle_id: str,
                        exchange_unchanged: bool = False) -> CycleOutcome:
        from exchanged.engine import UserSettings

        if user is None:
            return await self._runner.run_public_contacts(
                UserSettings.from_config(cfg.sync), full=full, allow_deletes=allow_deletes,
                progress=progress, cycle_id=cycle_id)
        return await self._runner.run_cycle(user_spec(cfg, user), full=full, allow_deletes=allow_deletes,
                                            progress=progress, cycle_id=cycle_id,
                                            exchange_unchanged=exchange_unchanged)

    async def plan(self, cfg: Config, user: UserConfig) -> dict[str, Any]:
        return await self._runner.plan(user_spec(cfg, user))


def user_spec(cfg: Config, user: UserConfig) -> UserSpec:
    from exchanged.engine import UserSettings, UserSpec

    return UserSpec(mailbox=user.mailbox, psa_resource=user.psa_resource,
                    settings=UserSettings.from_config(cfg.effective_sync(user)), time_zone=user.time_zone)


class Openers:
    """The production openers; override a part in a subclass to inject another (tests)."""

    async def state(self, cfg: Config) -> StateStore:
        from exchanged.state import mask_url, open_state_store  # never a password in a message

        try:
            return await open_state_store(cfg.state.url)
        except ExchangedError:
            raise
        except Exception as exc:
            raise errors.StateError(f"cannot open the state database {mask_url(cfg.state.url)}: "
                                    f"{mask_url(str(exc))}") from None

    async def psa(self, cfg: Config) -> PsaConnector:
        from exchanged.psa import open_connector

        return await open_connector(cfg.psa)

    async def exchange(self, cfg: Config) -> ExchangeAccount:
        """EWS, or Graph with ``server.use_ms_graph`` (Exchange Online: docs/GRAPH.md)."""
        if cfg.server.use_ms_graph:
            from exchanged.graph import open_account as open_graph

            return open_graph(cfg)
        from exchanged.exchange import open_account

        return open_account(cfg)

    def runner(self, cfg: Config, adapters: Adapters) -> CycleRunner:
        return SyncCycleRunner(cfg, adapters)

    def notifier(self, cfg: Config) -> NotifierLike:
        from exchanged.notify import Notifier

        return Notifier.from_config(cfg)

    async def open(self, cfg: Config) -> Adapters:
        """The three adapters the config names; none is left open when one fails."""
        state = await self.state(cfg)
        psa: PsaConnector | None = None
        try:
            psa = await self.psa(cfg)
            account = await self.exchange(cfg)
        except BaseException:
            await close_quietly(psa, "psa")
            await close_quietly(state, "state")
            raise
        return Adapters(account, psa, state)

    async def reopen(self, current: Adapters, old: Config, new: Config) -> Adapters:
        """The adapters for ``new``: those it connects to differently newly opened (through the same
        part openers as at start), the others kept. A failure closes what was opened and raises;
        the caller closes the replaced ones of ``current`` once it has swapped."""
        account, psa, state = current.account, current.psa, current.state
        opened: list[_Closable] = []
        try:
            if new.state != old.state:
                state = await self.state(new)
                opened.append(state)
            if new.psa != old.psa:
                psa = await self.psa(new)
                opened.append(psa)
            # Graph's account also holds the sync window (its calendar delta's range) and category
            graph_sync = new.server.use_ms_graph and new.sync != old.sync
            if new.server != old.server or new.credentials != old.credentials or graph_sync:
                account = await self.exchange(new)
                opened.append(account)
        except BaseException:
            for thing in opened:
                await close_quietly(thing, "new adapter")
            raise
        return Adapters(account, psa, state)


async def close_replaced(current: Adapters, new: Adapters) -> None:
    """Close the adapters of ``current`` that ``new`` no longer uses."""
    pairs: Sequence[tuple[_Closable, _Closable, str]] = (
        (current.account, new.account, "exchange"), (current.psa, new.psa, "psa"),
        (current.state, new.state, "state"))
    for old, kept, what in pairs:
        if old is not kept:
            await close_quietly(old, what)


__all__ = ["Adapters", "CycleRunner", "NotifierLike", "Openers", "SyncCycleRunner", "close_quietly",
           "close_replaced", "user_spec"]
