"""Reload (SIGHUP or ``exchangectl reload``), all-or-nothing:

=============  =================================================================================
outcome        when, and what happens
=============  =================================================================================
rejected       the file does not validate (or a new adapter cannot be opened): the old config
               keeps running; the problems go to the log, ``status.config.last_reload`` and a mail
unchanged      the file (and every secret it names) is what runs already: nothing is done, no
               credential check is sent (921 SIGHUPs in 10 s sent 904 ResolveNames before)
deferred       valid, but cycles are running: the scheduler is held (no new cycle starts) and the
               new config is applied the moment the last running cycle ends, or after
               ``DEFER_MAX_S`` at the latest: a stuck cycle never holds the other users' cycles
               (it goes on with the old adapters, or fails when they are closed)
applied        ``config.generation`` += 1; users added/removed/changed handed to the scheduler;
               a server identity change marks every user for a full resync; newly enabled users
               get a confirmation mail; ``RELOADING=1`` ... ``READY=1`` around it
=============  =================================================================================

:class:`Reloader` keeps the reload's own state (the lock, the config waiting for running cycles,
the last outcome) and drives the daemon it belongs to; the daemon swaps its adapters
(``Daemon.swap_adapters``) and keeps everything else it owns.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import structlog
import trio

from exchanged import errors, sdnotify
from exchanged.control.protocol import ReloadRecord
from exchanged.errors import present
from exchanged.logs import configure_from_config
from exchanged.status import iso, now

if TYPE_CHECKING:
    from exchanged.config import Config
    from exchanged.daemon import Daemon

log = structlog.get_logger("exchanged.daemon")

DEFER_MAX_S = 120.0  # the longest a deferred reload holds the scheduler for running cycles
CHECK_EVERY_S = 60.0  # credential checks after reloads: at most one per this many seconds


class Reloader:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.last: ReloadRecord | None = None
        self._lock = trio.Lock()
        self._pending: Config | None = None  # valid config waiting for running cycles to end
        self._applied: trio.Event | None = None  # set when the deferred reload is done
        self._last_check: float | None = None  # trio time of the last credential check started
        self._check_queued = False

    @property
    def deferred(self) -> bool:
        """A valid config waits for the running cycles to end (the scheduler is held meanwhile)."""
        return self._applied is not None

    async def wait_applied(self) -> None:
        """Until the deferred reload (if any) has been applied or dropped."""
        if self._applied is not None:
            await self._applied.wait()

    async def request(self, *, source: str) -> ReloadRecord:
        from exchanged.config import ConfigInvalid, iter_problems

        d = self.d
        async with self._lock:
            log.info("reload requested", source=source, config=d.config_path)
            try:
                new = await d.load_config(d.config_path)
            except ConfigInvalid as exc:
                return self._rejected(list(iter_problems(exc)) or [exc.message], present(exc))
            if new == d.cfg and self._applied is None:
                if self.last is not None and self.last.result == "rejected":
                    d.notifier.resolved_prefix("config")  # back to the running file: cleared
                self.last = ReloadRecord(iso(now()), "unchanged", [])
                log.info("reload: the config is unchanged, nothing to do", source=source)
                return self.last
            for warning in new.warnings:
                log.warning("config warning", warning=warning)
            self._warn_restart_only(new)
            if d.scheduler.running > 0 or self._applied is not None:
                # cycles run, or an earlier reload already waits for them: the newest file wins
                return self._defer(new)
            return await self._apply(new)

    def _rejected(self, problems: list[str], presented: errors.Presented) -> ReloadRecord:
        d = self.d
        self.last = ReloadRecord(iso(now()), "rejected", problems)
        log.error("reload rejected: the old config keeps running", errors=problems)
        # one key per distinct rejection: a second, different problem is mailed too
        digest = hashlib.sha256("\n".join(problems).encode()).hexdigest()[:12]
        d.notifier.error(f"config:{digest}", errors.Presented(
            presented.reason, f"reload of {d.config_path} rejected, the previous config keeps running:\n"
            + "\n".join(problems), presented.hint), None)
        sdnotify.status(f"reload rejected ({len(problems)} problem(s)); {d.status_line()}")
        return self.last

    def _defer(self, new: Config) -> ReloadRecord:
        d = self.d
        self._pending = new
        if self._applied is None:  # the first deferral holds the scheduler and starts the waiter
            self._applied = trio.Event()
            d.scheduler.hold()
            d.start_soon(self._apply_when_idle)
        self.last = ReloadRecord(iso(now()), "deferred", [])
        log.info("reload deferred until running cycles end", running=d.scheduler.running)
        sdnotify.status(f"reload deferred: waiting for {d.scheduler.running} running cycle(s)")
        return self.last

    async def _apply_when_idle(self) -> None:
        d = self.d
        try:
            with trio.move_on_after(DEFER_MAX_S) as waited:
                await d.scheduler.wait_idle()
            if waited.cancelled_caught:
                log.warning("reload: cycles still running after the wait for them; applying now",
                            running=d.scheduler.running, waited_s=DEFER_MAX_S)
            async with self._lock:
                new, self._pending = self._pending, None
                if new is not None and not d.stopping:
                    await self._apply(new)
        finally:
            d.scheduler.release()
            applied, self._applied = self._applied, None
            if applied is not None:
                applied.set()

    def _check_soon(self) -> None:
        """The credential check after a reload, at most one per ``CHECK_EVERY_S``: reloads in
        between are covered by one check of the config current when it runs."""
        if self._check_queued:
            return
        self._check_queued = True
        self.d.start_soon(self._check_when_due)

    async def _check_when_due(self) -> None:
        try:
            if self._last_check is not None:
                await trio.sleep_until(self._last_check + CHECK_EVERY_S)
        finally:
            self._check_queued = False
        self._last_check = trio.current_time()
        await self.d.check_credentials(self.d.cfg)

    def _warn_restart_only(self, new: Config) -> None:
        if new.control != self.d.cfg.control:
            log.warning("control.socket/control.group changes take effect at the next restart")
        if new.logging != self.d.cfg.logging:
            configure_from_config(new)

    async def _apply(self, new: Config) -> ReloadRecord:
        from exchanged.config import diff_configs

        d = self.d
        old = d.cfg
        sdnotify.reloading("reloading configuration")
        d.scheduler.hold()  # nothing starts while the adapters and users change hands
        try:
            try:
                await d.swap_adapters(old, new)
            except Exception as exc:
                p = present(exc)
                result = self._rejected([p.line()], p)
                sdnotify.ready(d.status_line())
                return result
            diff = diff_configs(old, new)
            d.cfg = new
            d.generation += 1
            d.loaded_at = now()
            d.notifier.reconfigure(new)
            d.notifier.resolved_prefix("config")
            d.apply_users(new)
            d.forget_errors()
            d.exchange.update(server=new.server.address, version=new.server.version)
            if diff.resync_all:
                d.scheduler.mark_full()
                log.warning("server identity changed: every user resyncs fully")
            # a user whose settings changed resyncs fully: what is in scope may have changed
            changed = [m for m in diff.changed if m in d.scheduler.mailboxes()]
            if changed:
                d.scheduler.mark_full(changed)
            self.last = ReloadRecord(iso(now()), "applied", [], added=sorted(diff.added),
                                     removed=sorted(diff.removed), changed=sorted(diff.changed),
                                     resync_all=diff.resync_all)
            log.info("config applied", generation=d.generation, added=sorted(diff.added),
                     removed=sorted(diff.removed), changed=sorted(diff.changed), resync_all=diff.resync_all)
        finally:
            d.scheduler.release()
        await d.confirm_new_users(new, on_start=False, newly_enabled=sorted(diff.newly_enabled))
        self._check_soon()
        sdnotify.ready(d.status_line())
        d.status_poke()
        return self.last


__all__ = ["Reloader"]
