"""The composition root: config, adapters, one root nursery, signals, reload, systemd.

Theory of operation
-------------------
``cli_run`` loads and validates the config (invalid: one block on stderr, exit 1), sets up logging,
and runs ``Daemon.run`` under trio. ``run`` opens the adapters (state store, PSA connector,
Exchange account; failure: one line on stderr, exit 1), then starts each long-lived part with
``nursery.start()`` in one root nursery: the signal handler, the notifier, the control server, the
scheduler and the watchdog. Only when all of them are up does it send ``READY=1``.

Reload (SIGHUP or ``exchangectl reload``) is all-or-nothing: see ``exchanged/reload.py``. The
lease-guarded cycle is ``exchanged/leases.py``, the status document ``exchanged/status.py``.

SIGTERM/SIGINT: ``STOPPING=1``, no new cycles, running ones get ``GRACE_S`` seconds and are then
cancelled, the adapters are closed (state flushed), exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
import trio

from exchanged import PROTOCOL_VERSION, __version__, sdnotify
from exchanged.confirm import Confirmations
from exchanged.control.protocol import (
    ChangeLine,
    ConfigStatus,
    ExchangeStatus,
    ItemErrorLine,
    StatusDocument,
    SyncAnswer,
    SyncOutcome,
)
from exchanged.cycles import Cycles
from exchanged.errors import ControlError, ExchangedError, present
from exchanged.leases import lease_ttl_s, node_identity
from exchanged.logs import configure_from_config
from exchanged.metrics import CONTENT_TYPE, CycleCounters, Snapshot
from exchanged.metrics import render as render_metrics
from exchanged.model import Counts, CycleOutcome
from exchanged.openers import Adapters, CycleRunner, NotifierLike, Openers, close_replaced
from exchanged.pruning import HistoryPruner
from exchanged.psa_users import PsaUsers
from exchanged.push import PushService, PushTracker
from exchanged.reload import Reloader
from exchanged.scheduler import Scheduler, UnknownMailbox
from exchanged.signals import ignore_from_now, remember_early, take_pending
from exchanged.status import (
    PUBLIC_FOLDER,
    CredentialCheck,
    CycleRecord,
    daemon_state,
    exchange_row,
    held_elsewhere,
    iso,
    now,
    psa_row,
    public_folder_row,
    resource_rows,
    status_line,
    user_rows,
)

if TYPE_CHECKING:
    from exchanged.config import Config
    from exchanged.ports import CheckResult

log = structlog.get_logger("exchanged.daemon")

GRACE_S = 8.0  # SIGTERM: running cycles get this long, so that the whole stop stays within 10 s
CLOSE_TIMEOUT_S = 1.0  # closing the adapters (flushing state) may take at most this long
STATUS_EVERY_S = 30.0  # STATUS= refresh while nothing else changes
STATUS_MIN_GAP_S = 1.0  # changes within this time share one STATUS= update
STUCK_GRACE_S = 300.0  # a cancelled cycle still running this long after its timeout: stuck
CHECK_TIMEOUT_S = 120.0  # the start-up/reload credential check gives up after this long
HISTORY_LIMIT = 1000  # `history` answers at most this many of the newest entries unless asked


# --- errors of the composition root ---------------------------------------------------------------


class ReloadRejected(ControlError):
    reason = "reload_rejected"
    hint = "fix the file (`exchanged check-config`) and reload again; the old config keeps running"


class UserDisabled(ControlError):
    reason = "user_disabled"
    hint = "set enabled: true for this user (and for the integration) in the config and reload"


# --- helpers -------------------------------------------------------------------------------------


async def _load_config_in_thread(path: str) -> Config:
    from exchanged.config import load_config

    # reading files (config, password files) must not stall the loop, its watchdog or the socket
    return await trio.to_thread.run_sync(load_config, path)


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


# --- the daemon ----------------------------------------------------------------------------------


class Daemon:
    """Owns the running config generation and implements ``control.ControlHandler``."""

    def __init__(self, cfg: Config, config_path: str, *, openers: Openers | None = None,
                 config_loader: Callable[[str], Awaitable[Config]] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.generation = 1
        self.loaded_at = now()
        self.started_at = now()
        self.openers = openers or Openers()  # start and every reload open through these
        self._load_file = config_loader or _load_config_in_thread
        self.psa_users = PsaUsers()
        self.pruner = HistoryPruner(lambda: self.adapters.state if self.adapters else None,
                                    lambda: self.cfg.state.history_days)
        self.adapters: Adapters | None = None
        self.runner: CycleRunner | None = None
        self.notifier: NotifierLike = self.openers.notifier(cfg)
        self.records: dict[str, CycleRecord] = {}
        # reachable: the server answered (True/False/None = not known yet); login: the sync
        # account's login "ok" / "refused" / "not checked" (a server that cannot be reached cannot
        # tell); back_off_until: the server asked the daemon to wait until then (throttling)
        self.exchange = ExchangeStatus(cfg.server.address, cfg.server.version)
        self.confirmations = Confirmations()  # users whose confirmation mail waits (confirm.py)
        # metrics (exchanged/metrics.py): counted since the start
        self.counters = CycleCounters()
        self.cycles = Cycles(self)  # one cycle, leased and recorded (cycles.py)
        self.scheduler = Scheduler(self.cycles.run, interval_s=cfg.sync_interval_minutes * 60,
                                   max_concurrent=cfg.sync.max_concurrent_users,
                                   cycle_timeout_s=cfg.sync.cycle_timeout_minutes * 60)
        # pushed changes (EWS streaming): what each mailbox's subscription says; see push.py
        self.push = PushTracker(self.scheduler, wall=now, on_change=self.status_poke)
        self.push_service = PushService(self)  # watching Exchange, probing the PSA (push.py)
        self._stop = trio.Event()
        self.stopping = False
        self._ready = False
        self._nursery: trio.Nursery | None = None
        self.reloader = Reloader(self)
        self._status_changed = trio.Event()
        # the owner name of this node's leases (PostgreSQL state); see leases.node_identity
        self.node_id, self._node_fd = node_identity()
        self.lease_ttl_s = lease_ttl_s()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        # The signal receiver wraps everything, the closing of the adapters included: a second
        # SIGTERM during the stop must not fall back to the default action and kill the process.
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            for signum in take_pending():  # arrived before the receiver was open
                if signum != signal.SIGHUP:  # a reload before the start is moot
                    log.info("stop requested during the start", signal=signal.Signals(signum).name)
                    self._stop.set()
            self.adapters = await self.openers.open(self.cfg)
            try:
                self.runner = self.openers.runner(self.cfg, self.adapters)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await nursery.start(self._serve_signals, signals)
                    await nursery.start(self.notifier.serve)
                    await nursery.start(self._serve_control)
                    await nursery.start(self.scheduler.serve)
                    await nursery.start(sdnotify.serve_watchdog, self._healthy)
                    self.apply_users(self.cfg)
                    nursery.start_soon(self.push_service.serve_push)
                    nursery.start_soon(self.push_service.serve_psa_probe)
                    nursery.start_soon(self._startup_tasks)
                    nursery.start_soon(self.psa_users.serve, lambda: self.cfg, self._reload_for_psa_users)
                    nursery.start_soon(self._serve_status_line)
                    nursery.start_soon(self.pruner.serve)
                    self._ready = True
                    sdnotify.ready(self.status_line())
                    log.info("ready", config=self.config_path, users=len(self.cfg.enabled_users()),
                             enabled=self.cfg.enabled, socket=self.cfg.control.socket)
                    await self._stop.wait()
                    await self._shutdown()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self.adapters.aclose()
                if self._node_fd is not None:  # the node name is free for the next start
                    os.close(self._node_fd)
                    self._node_fd = None
        log.info("stopped")
        return 0

    async def _serve_control(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        from exchanged.control import serve_control

        await serve_control(self.cfg.control.socket, self.cfg.control.group, self, task_status=task_status)

    async def _serve_signals(self, signals: AsyncIterator[int], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                if self.stopping:
                    continue  # no reload while stopping
                assert self._nursery is not None
                self._nursery.start_soon(self._reload_from_signal)
            else:
                log.info("stop requested", signal=signal.Signals(signum).name)
                self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        self.stopping = True
        running = self.scheduler.running
        sdnotify.stopping(f"stopping: waiting up to {GRACE_S:g} s for {running} running cycle(s)")
        log.info("stopping", running=running, grace_s=GRACE_S)
        if self.adapters is not None:  # a cycle waiting for the PSA's budget ends now, not after GRACE_S
            self.adapters.psa.interrupt_waits("the daemon is stopping")
        await self.scheduler.stop(GRACE_S)
        if self.scheduler.running:
            log.warning("running cycles cancelled at the end of the grace period",
                        count=self.scheduler.running)
        with trio.move_on_after(CLOSE_TIMEOUT_S):  # queued mails (a cycle's last error) get a moment to leave
            await self.notifier.flush()

    async def _reload_from_signal(self) -> None:
        try:
            result = await self.reloader.request(source="SIGHUP")
        except Exception as exc:  # a reload must never take the daemon down
            log.error("reload failed", error=present(exc).line(), exc_info=exc)
            return
        log.info("reload by signal", result=result.result)

    async def _startup_tasks(self) -> None:
        await self.confirm_new_users(self.cfg, on_start=True)
        await self.check_credentials(self.cfg)

    async def _reload_for_psa_users(self) -> None:
        await self.reloader.request(source="users_from_psa")

    async def _serve_status_line(self) -> None:
        while True:
            with trio.move_on_after(STATUS_EVERY_S):
                await self._status_changed.wait()
            self._status_changed = trio.Event()
            if not self.stopping:
                sdnotify.status(self.status_line())
            # at most one STATUS= per STATUS_MIN_GAP_S: each walks every user, and with a thousand
            # users a line per cycle start and end was half of the daemon's own CPU (bench/run)
            await trio.sleep(STATUS_MIN_GAP_S)

    def _healthy(self) -> bool:
        """False once a cycle runs STUCK_GRACE_S past sync.cycle_timeout_minutes: its cancellation
        did not end it, and only a restart will (the watchdog stops being fed)."""
        stuck = self.scheduler.stuck(STUCK_GRACE_S)
        if stuck:
            log.error("cycle stuck past its timeout; no more watchdog pings, systemd restarts the daemon",
                      mailboxes=stuck)
        return not stuck

    def status_poke(self) -> None:
        self._status_changed.set()

    # --- users and the scheduler ---------------------------------------------------------------------

    async def load_config(self, path: str) -> Config:
        """The config file, with the users ``users_from_psa`` adds (see psa_users.py)."""
        return await self.psa_users.expand_config(await self._load_file(path), self.cfg, self.adapters)

    def apply_users(self, cfg: Config) -> None:
        self.psa_users.applied(cfg)
        mailboxes = [u.mailbox for u in cfg.enabled_users()]
        if cfg.enabled and cfg.sync.public_folder_all_contacts:
            mailboxes.append(PUBLIC_FOLDER)  # its own cycle, on the same interval and limits
        self.scheduler.set_users(mailboxes, cfg.sync_interval_minutes * 60, cfg.sync.max_concurrent_users)
        self.scheduler.cycle_timeout_s = cfg.sync.cycle_timeout_minutes * 60
        self.push_service.config_applied()

    def forget_errors(self) -> None:
        """Users no longer scheduled (after a reload's ``apply_users``) leave the notifier's open
        errors: a cause they shared with others resolves when the others clear, not never."""
        keep = set(self.scheduler.mailboxes())
        for mailbox, status in self.records.items():
            if mailbox not in keep and status.error_keys:
                self.notifier.forget_mailbox(mailbox)
                status.error_keys = set()
                self.confirmations.forget(mailbox)

    async def confirm_new_users(self, cfg: Config, *, on_start: bool,
                                newly_enabled: Iterable[str] = ()) -> None:
        """Confirmation mails: on start for users never seen before, on reload for newly enabled
        ones; each is sent after that user's first successful cycle (``confirm.Confirmations``),
        never to a mailbox the sync cannot reach yet."""
        assert self.adapters is not None
        state = self.adapters.state
        if on_start:
            try:
                stored = await state.user_records()
            except Exception as exc:
                log.warning("cannot read user records from the state store", error=present(exc).line())
                return
            for mailbox, record in stored.items():
                self.records.setdefault(mailbox, CycleRecord(
                    last_attempt=record.last_attempt, last_success=record.last_success,
                    last_result=record.last_result, last_error=record.last_error,
                    counts={**Counts().as_dict(), **record.counts}))
            self.confirmations.unknown_at_start(cfg, stored)
        else:
            self.confirmations.enabled_again(newly_enabled)

    async def check_credentials(self, cfg: Config) -> None:
        """Try the sync credentials against Exchange; failures are warnings, never a refusal."""
        if not cfg.enabled:
            return
        assert self.adapters is not None
        mailboxes = [u.mailbox for u in cfg.enabled_users()]
        results: Sequence[CheckResult] = []
        with trio.move_on_after(CHECK_TIMEOUT_S) as scope:
            try:
                results = await self.adapters.account.check(mailboxes)
            except Exception as exc:
                p = present(exc)
                self.exchange.note_failure(p.reason, p.line(),
                                           sync_account_login=self.cfg.credentials.use_for_all_users)
                self.exchange.update(checked_at=iso(now()), warnings=[p.line()])
                log.warning("credential check failed", error=p.line())
                self.status_poke()
                return
        if scope.cancelled_caught:
            self.exchange.update(reachable=False, last_error="credential check timed out",
                                 checked_at=iso(now()))
            log.warning("credential check timed out", timeout_s=CHECK_TIMEOUT_S)
            return
        check = CredentialCheck.read(results, mailboxes)
        self.exchange.update(reachable=check.reachable, login=check.login, checked_at=iso(now()),
                             warnings=check.warnings, last_error=check.last_error)
        for warning in check.warnings:
            log.warning("credential check", result=warning)
        if not check.warnings:
            log.info("credential check passed", mailboxes=len(mailboxes))
        self.status_poke()

    # --- metrics ---------------------------------------------------------------------------------------

    def metrics_snapshot(self) -> Snapshot:
        snap = self.scheduler.snapshot()
        users: dict[str, int] = {}
        for rt in snap.values():
            users[rt.state] = users.get(rt.state, 0) + 1
        account = self.adapters.account if self.adapters else None
        psa = self.adapters.psa if self.adapters else None
        requests: dict[tuple[str, str], int] = {}
        waits: dict[str, int] = {}
        for adapter in (account, psa):
            if adapter is not None:
                requests.update(adapter.request_counts())
                waits.update(adapter.throttle_waits())
        return Snapshot(
            cycles=dict(self.counters.cycles),
            last_success={m: r.last_success.timestamp() for m, r in self.records.items()
                          if r.last_success is not None},
            written=dict(self.counters.written), requests=requests, throttle_waits=waits,
            held_back=dict(self.counters.held_back), users=users, config_generation=self.generation,
            config_loaded_at=self.loaded_at.timestamp(),
            exchange_reachable=self.exchange.reachable)

    async def metrics(self) -> dict[str, object]:
        """The control method ``metrics``: the Prometheus text exposition."""
        return {"content_type": CONTENT_TYPE, "text": render_metrics(self.metrics_snapshot)}

    # --- reload (exchanged/reload.py drives it) -------------------------------------------------------

    async def swap_adapters(self, old: Config, new: Config) -> None:
        """Open what the new config connects to differently; close the old ones once swapped."""
        assert self.adapters is not None
        current = self.adapters
        self.adapters = await self.openers.reopen(current, old, new)
        self.runner = self.openers.runner(new, self.adapters)
        await close_replaced(current, self.adapters)

    # --- status (exchanged/status.py) -----------------------------------------------------------------

    def state(self) -> str:
        return daemon_state(self.cfg, self.scheduler, self.exchange)

    def status_line(self) -> str:
        return status_line(self.cfg, self.scheduler, reload_deferred=self.reloader.deferred)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """A task in the daemon's root nursery (reload's waiter, its credential check)."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # --- ControlHandler --------------------------------------------------------------------------------

    async def status(self) -> dict[str, object]:
        state = self.adapters.state if self.adapters is not None else None
        held = await held_elsewhere(state, self.node_id)
        return StatusDocument(
            version=__version__, protocol=PROTOCOL_VERSION, pid=os.getpid(),
            started_at=iso(self.started_at), state=self.state(), ready=self._ready,
            config=ConfigStatus(self.config_path, self.generation, self.cfg.profile_name,
                                iso(self.loaded_at), self.reloader.last, list(self.cfg.warnings)),
            exchange=exchange_row(self.exchange, self.adapters.account if self.adapters else None),
            psa=psa_row(self.cfg, self.adapters.psa if self.adapters is not None else None),
            running=self.scheduler.running, paused=self.scheduler.paused,
            interval_minutes=self.cfg.sync_interval_minutes,
            max_concurrent_users=self.cfg.sync.max_concurrent_users,
            users=user_rows(self.cfg, self.scheduler, self.records, held, push=self.push.row,
                            generated=self.psa_users.generated),
            public_folder=public_folder_row(self.scheduler, self.records),
        ).to_json()

    async def users(self) -> list[dict[str, object]]:
        rows = user_rows(self.cfg, self.scheduler, self.records, push=self.push.row,
                         generated=self.psa_users.generated)
        return [row.to_json() for row in rows]

    async def resources(self) -> list[dict[str, object]]:
        if self.adapters is None:
            raise ControlError("the PSA is not open yet", hint="see exchangectl status; retry in a moment")
        found = await self.adapters.psa.all_resources()
        return resource_rows(self.cfg, found, self.records, self.psa_users.generated)

    def _check_mailboxes(self, mailboxes: list[str] | None) -> list[str] | None:
        if mailboxes is None:
            return None
        wanted = [m.strip().lower() for m in mailboxes]
        if not self.cfg.enabled:
            raise UserDisabled("the integration is switched off (enabled: false in the config)")
        for m in wanted:
            user = self.cfg.user(m)
            if user is not None and not user.enabled:
                raise UserDisabled(f"user {m} is disabled in the config", mailbox=m)
        return wanted

    async def sync(self, mailboxes: list[str] | None, full: bool, wait: bool,
                   allow_deletes: bool) -> dict[str, object]:
        if not self.cfg.enabled:
            raise UserDisabled("the integration is switched off (enabled: false in the config)")
        if self.stopping:
            raise ControlError("the daemon is stopping", hint="start it again and retry")
        selected = self._check_mailboxes(mailboxes)
        handle = self.scheduler.request_sync(selected, full=full, allow_deletes=allow_deletes)
        log.info("manual sync requested", mailboxes=handle.mailboxes, full=full, allow_deletes=allow_deletes)
        queued = [m for m in handle.mailboxes if self.scheduler.snapshot()[m].state == "syncing"]
        results: dict[str, SyncOutcome | None] | None = None
        if wait:
            outcomes = await handle.wait()
            results = {m: _sync_outcome(o) for m, o in outcomes.items()}
        return SyncAnswer(list(handle.mailboxes), queued, full, allow_deletes, results).to_json()

    async def plan(self, mailbox: str) -> dict[str, object]:
        user = self.cfg.user(mailbox.strip().lower())
        if user is None:
            raise UnknownMailbox([mailbox])
        assert self.runner is not None
        return await self.runner.plan(self.cfg, user)

    async def history(self, mailbox: str | None, since: str | None,
                      limit: int | None = None) -> list[dict[str, object]]:
        assert self.adapters is not None
        since_dt = _parse_since(since)
        mailbox = mailbox.strip().lower() if mailbox else None
        entries = await self.adapters.state.history(mailbox, since_dt, limit or HISTORY_LIMIT)
        return [ChangeLine(side=e.side, action=e.action, kind=str(e.kind), key=e.key, fields=list(e.fields),
                           reason=e.reason, subject=e.subject, item_id=e.item_id, at=iso(e.at),
                           mailbox=e.mailbox, cycle_id=e.cycle_id).to_json() for e in entries]

    async def reload(self, wait: bool) -> dict[str, object]:
        record = await self.reloader.request(source="control")
        if record.result == "deferred" and wait:
            await self.reloader.wait_applied()
            assert self.reloader.last is not None
            record = self.reloader.last
        if record.result == "rejected":
            raise ReloadRejected("reload rejected, the old config keeps running: " + "; ".join(record.errors))
        return {**record.to_json(), "generation": self.generation}

    async def pause(self, mailboxes: list[str] | None) -> dict[str, object]:
        selected = self.scheduler.pause(self._select_for_pause(mailboxes))
        log.info("paused", mailboxes=mailboxes or "all")
        self.status_poke()
        return {"paused": selected, "global": mailboxes is None}

    async def resume(self, mailboxes: list[str] | None) -> dict[str, object]:
        selected = self.scheduler.resume(self._select_for_pause(mailboxes))
        log.info("resumed", mailboxes=mailboxes or "all")
        self.status_poke()
        return {"resumed": selected, "global": mailboxes is None}

    def _select_for_pause(self, mailboxes: list[str] | None) -> list[str] | None:
        if mailboxes is None:
            return None
        return self._check_mailboxes(mailboxes)


def _sync_outcome(o: CycleOutcome) -> SyncOutcome:
    return SyncOutcome(o.result, o.error, o.counts.as_dict(), o.held_back_deletes,
                       [ItemErrorLine(e.key, e.code, e.message) for e in o.item_errors])


def _parse_since(since: str | None) -> datetime | None:
    if not since:
        return None
    try:
        at = datetime.fromisoformat(since)
    except ValueError:
        raise ControlError(f"since {since!r} is not an ISO 8601 date/time",
                           hint="e.g. 2026-11-29 or 2026-11-29T08:00") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


# --- command line --------------------------------------------------------------------------------


def _register_secrets(cfg: Config) -> None:
    from exchanged.logs import register_secret

    def reveal(secret: object) -> str | None:
        if secret is None:
            return None
        return secret.get_secret_value() if hasattr(secret, "get_secret_value") else str(secret)

    register_secret(reveal(cfg.credentials.password))
    for user in cfg.users:
        register_secret(reveal(user.password))
    for name in ("secret", "integration_code"):
        register_secret(reveal(getattr(cfg.psa, name, None)))
    register_secret(reveal(cfg.notifications.smtp.password))


def _say(line: str) -> None:
    print(f"exchanged: {line}", file=sys.stderr, flush=True)


def cli_run(args: argparse.Namespace, openers: Openers | None = None) -> int:
    """``exchanged run --config PATH``: 0 after a clean stop, 1 on a fatal start-up error.

    ``openers``: what the daemon opens (default: the real adapters); tests pass their own
    (tests/daemon_entry.py)."""
    from exchanged.config import ConfigInvalid, iter_problems, load_config

    path = str(args.config)
    try:
        cfg = load_config(path)
    except ConfigInvalid as exc:
        _say(f"cannot start: the config {path} is invalid ({len(exc.problems)} problem(s)):")
        for line in iter_problems(exc):
            print(f"  {line}", file=sys.stderr)
        print("  fix them and check with `exchanged check-config`", file=sys.stderr, flush=True)
        return 1
    _register_secrets(cfg)
    configure_from_config(cfg)
    for warning in cfg.warnings:
        log.warning("config warning", warning=warning)
    daemon = Daemon(cfg, path, openers=openers)
    # Daemon.run handles these through trio's signal receiver; before it is open (and after it
    # closes) they are noted, never fatal and never lost (exchanged/signals.py)
    remember_early()
    try:
        try:
            return trio.run(daemon.run)
        finally:
            ignore_from_now()  # the interpreter's exit would reset a Python handler to "terminate"
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        known = [e for e in _leaves(exc) if isinstance(e, ExchangedError)]
        if known:
            shown = present(known[0])
            log.error("fatal", reason=shown.reason, error=shown.line())
            _say(f"cannot start: {shown.line()}" if not daemon._ready else f"stopped: {shown.line()}")
            return 1
        leaf = next(iter(_leaves(exc)))
        log.error("fatal internal error", exc_info=leaf)
        _say(f"stopped by an internal error: {type(leaf).__name__}: {leaf} "
             "(this is a bug; the log has the traceback)")
        return 1

