"""One cycle of one mailbox as the daemon runs it, and everything the daemon learns from it.

The scheduler calls :meth:`Cycles.run` for each cycle it starts. Around the runner's
``run_cycle`` (exchanged/sync) this module keeps, in order:

1. this node's lease on the user (``leases.run_leased``; PostgreSQL state lets several nodes share
   users): a lease that cannot be taken is the cycle's error, recorded like any other;
2. the vouching of a silent push subscription (``push.PushTracker.vouch``: a quiet scheduled
   cycle then reads the PSA only), and a failed read that ends the vouching;
3. the record of the outcome: the mailbox's ``CycleRecord`` (status), the mails (one per cause:
   ``notify.cause_key``; resolved when it clears; none for a cycle the daemon's own stop
   interrupted), what the failure says of the Exchange server (``ExchangeStatus.note_failure``),
   the confirmation mail after a user's first success (confirm.py), the state store's outcome
   row (unless the runner writes it itself), the metrics counters and textfile.

:class:`Cycles` belongs to a daemon and reads its current config, adapters and runner at each
cycle, so a reload's swap is seen by the next cycle without anything to re-wire.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
import trio

from exchanged import errors
from exchanged.errors import ExchangedError, present
from exchanged.leases import LeaseUnavailable, run_leased
from exchanged.model import CycleOutcome
from exchanged.notify import cause_key
from exchanged.scheduler import CycleRequest, ProgressFn, UnknownMailbox
from exchanged.status import PUBLIC_FOLDER, CycleRecord, now

if TYPE_CHECKING:
    from exchanged.daemon import Daemon

log = structlog.get_logger("exchanged.daemon")

PERSIST_TIMEOUT_S = 1.0  # writing the outcome row may take at most this long (also when cancelled)


def hint_for(reason: str) -> str:
    """The hint of the error class with this ``reason`` (outcomes carry the reason, not the class)."""
    stack: list[type[ExchangedError]] = [ExchangedError]
    while stack:
        cls = stack.pop()
        if cls.__dict__.get("reason") == reason and cls.hint:
            return cls.hint
        stack.extend(cls.__subclasses__())
    return ""


class Cycles:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def run(self, mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        """One cycle under this node's lease on the user (the scheduler's cycle function)."""
        d = self.d
        assert d.adapters is not None
        try:
            return await run_leased(d.adapters.state, mailbox, d.node_id, d.lease_ttl_s,
                                    lambda: self._run(mailbox, request, progress))
        except LeaseUnavailable as exc:
            p = present(exc.cause)
            log.warning("cycle not run: cannot take the lease", mailbox=mailbox, error=p.line())
            outcome = CycleOutcome(result="error", reason=p.reason,
                                   error=f"{mailbox}: cannot take this user's lease: {p.line()}")
            self.record(mailbox, d.records.setdefault(mailbox, CycleRecord()), outcome, p)
            return outcome

    async def _run(self, mailbox: str, request: CycleRequest, progress: ProgressFn) -> CycleOutcome:
        d = self.d
        cfg = d.cfg
        user = cfg.user(mailbox)
        cycle_id = uuid.uuid4().hex[:12]
        bound = log.bind(mailbox=mailbox, cycle_id=cycle_id, reason=request.reason)
        status = d.records.setdefault(mailbox, CycleRecord())
        started = now()
        status.last_attempt = started
        bound.info("cycle started", full=request.full, allow_deletes=request.allow_deletes)
        d.status_poke()
        presented: errors.Presented | None = None
        runner = d.runner
        assert runner is not None
        recorded = False
        try:
            if user is None and mailbox != PUBLIC_FOLDER:
                raise UnknownMailbox([mailbox])
            # a silent, unbroken subscription vouches for the mailbox (push.py): a quiet scheduled
            # cycle then reads the PSA only
            unchanged = user is not None and d.push.vouch(mailbox, request.reason, request.full)
            outcome = await runner.run_cycle(cfg, user, full=request.full,
                                             allow_deletes=request.allow_deletes,
                                             progress=progress, cycle_id=cycle_id,
                                             exchange_unchanged=unchanged)
            if outcome.result == "error" and not unchanged:
                d.push.read_failed(mailbox)
            recorded = runner.records_outcomes
            if outcome.result == "error":
                reason = outcome.reason or "cycle_failed"
                text = outcome.error or "the cycle failed"
                presented = errors.Presented(
                    reason, text if mailbox in text else f"{mailbox}: {text}",
                    hint_for(reason) or "the log has the details of this cycle (journalctl MAILBOX=...)")
        except Exception as exc:
            presented = present(exc)
            if not isinstance(exc, ExchangedError):
                bound.error("cycle crashed", exc_info=exc)
            outcome = CycleOutcome(result="error", error=presented.line(), reason=presented.reason)
        self.record(mailbox, status, outcome, presented)
        if outcome.result == "error":
            bound.warning("cycle failed", error=outcome.error)
            if presented is not None:
                d.exchange.note_failure(presented.reason, presented.line(),
                                        sync_account_login=d.cfg.credentials.use_for_all_users)
        else:
            d.exchange.update(reachable=True, last_error=None)
            if d.cfg.credentials.use_for_all_users and mailbox != PUBLIC_FOLDER:
                d.exchange.update(login="ok")
            if d.confirmations.waiting(mailbox) and outcome.result != "skipped" and d.adapters:
                await d.confirmations.after_success(mailbox, d.cfg, d.adapters.state, d.notifier,
                                                    adopted=outcome.adopted)
            bound.info("cycle done", result=outcome.result, counts=outcome.counts.as_dict(),
                       item_errors=len(outcome.item_errors), held_back_deletes=outcome.held_back_deletes)
        if not recorded:
            await self._persist(mailbox, started, outcome)
        d.counters.count(mailbox, outcome)
        if d.cfg.metrics.textfile:
            await d.counters.write_textfile(d.cfg.metrics.textfile, d.metrics_snapshot())
        d.status_poke()
        return outcome

    def record(self, mailbox: str, status: CycleRecord, outcome: CycleOutcome,
               presented: errors.Presented | None) -> None:
        """The outcome into the mailbox's status record, and the mails it opens or resolves."""
        d = self.d
        status.note(outcome)
        error_key, shared = None, False
        if outcome.result == "error" and presented is not None:
            # a cause shared by many mailboxes (Exchange, TLS, the sync account's login, the PSA,
            # the state database) is one mail naming them all; the rest is one mail per mailbox
            error_key, shared = cause_key(presented.reason, mailbox,
                                          sync_account_login=d.cfg.credentials.use_for_all_users)
        # mails: one per distinct error (the notifier de-duplicates); resolved when it clears
        for key in sorted(status.error_keys - ({error_key} if error_key else set())):
            d.notifier.resolved(key, mailbox)
        status.error_keys = {error_key} if error_key else set()
        if error_key and presented is not None and not d.stopping:
            # a cycle the daemon's own stop interrupted is no error to mail: it runs after the start
            d.notifier.error(error_key, presented, mailbox, shared=shared)

    async def _persist(self, mailbox: str, at: datetime, outcome: CycleOutcome) -> None:
        d = self.d
        assert d.adapters is not None
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(PERSIST_TIMEOUT_S):
                await d.adapters.state.record_outcome(mailbox, at, outcome)
        except Exception as exc:
            log.warning("cannot record the cycle outcome", mailbox=mailbox, error=present(exc).line())
