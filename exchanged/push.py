"""Pushed changes in the daemon: what each mailbox's subscription says, and what a cycle may skip.

The adapter (``ports.PushSource``, EWS streaming) reports to a :class:`PushTracker` (its
``ports.PushSink``): ``changed`` (a notification), ``live`` (a subscription works, first time or
after a gap), ``lost`` (none: the mailbox is polled). The tracker turns ``changed`` and ``live``
into a debounced cycle of that mailbox (``Scheduler.nudge``: same lock, lease, back-off and
concurrency rules as any cycle), keeps what ``status`` shows (``pushed`` or ``polled``, and why),
and decides per cycle whether the runner may trust the subscription instead of reading Exchange:

A cycle may skip SyncFolderItems (``exchange_unchanged``) only when all of this holds, else it
reads as always:

* it is a scheduled cycle or one the PSA change probe asked for (not manual, not pushed), not a
  full resync;
* the mailbox's subscription has been live since before the last cycle that read Exchange started
  (no gap since: a reconnect or a new subscription makes ``live_since`` newer);
* no notification arrived since that read started;
* that read is younger than ``SAFETY_READ_S``: a subscription that fails silently is caught by a
  real read at least that often.

So the periodic cycle every ``sync_interval_minutes`` stays (the PSA side is looked at each time);
with a healthy subscription a quiet mailbox's cycle reads Exchange once per ``SAFETY_READ_S``.
Everything here is in memory: after a restart the first cycle reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from exchanged.control.protocol import PushStatus
from exchanged.errors import present

if TYPE_CHECKING:
    from exchanged.daemon import Daemon
    from exchanged.ports import PsaConnector

log = structlog.get_logger("exchanged.push")
daemon_log = structlog.get_logger("exchanged.daemon")  # PushService logs as the daemon did

SAFETY_READ_S = 3600.0  # a pushed mailbox's quiet cycles still read Exchange at least this often
VOUCHED_REASONS = frozenset({"scheduled", "psa"})  # a PSA probe's cycle: the PSA changed, not Exchange
NOTIFY_SPACING_S = 1.0  # PSA notifications start a probe at most this often


class Nudger(Protocol):
    def nudge(self, mailbox: str, reason: str = "push") -> bool: ...


@dataclass
class _Mailbox:
    mode: str = "polled"  # pushed | polled
    why: str | None = "no subscription yet"
    since: datetime | None = None  # wall time of the last change of mode
    live_since: float | None = None  # trio time the subscription last became live (after a gap)
    last_event: float | None = None  # trio time of the last notification
    last_read: float | None = None  # trio time the last cycle that read Exchange started
    events: int = 0
    was_live: bool = False  # live before: a later ``live`` follows a gap


class PushTracker:
    """``ports.PushSink`` for the daemon; one per watch (a reload makes a new one)."""

    def __init__(self, nudger: Nudger, *, wall: Callable[[], datetime],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._nudger = nudger
        self._wall = wall
        self._on_change = on_change
        self._boxes: dict[str, _Mailbox] = {}

    def _box(self, mailbox: str) -> _Mailbox:
        return self._boxes.setdefault(mailbox, _Mailbox())

    def _mode(self, box: _Mailbox, mode: str, why: str | None, mailbox: str) -> None:
        if (box.mode, box.why) != (mode, why):
            box.mode, box.why, box.since = mode, why, self._wall()
            if mode == "pushed":
                log.info("changes are pushed", mailbox=mailbox)
            else:
                log.warning("changes are polled", mailbox=mailbox, why=why)
            self._on_change()

    # -- ports.PushSink -----------------------------------------------------------------------------

    def changed(self, mailbox: str) -> None:
        box = self._box(mailbox)
        box.last_event = trio.current_time()
        box.events += 1
        self._nudger.nudge(mailbox, "push")

    def live(self, mailbox: str) -> None:
        box = self._box(mailbox)
        box.live_since = trio.current_time()
        self._mode(box, "pushed", None, mailbox)
        if box.was_live:  # a gap: what happened in it is unknown, sync now
            self._nudger.nudge(mailbox, "push")
        # the first subscription after the start needs no cycle of its own: the start-up schedule
        # gives every mailbox its first cycle (spread over the interval), and that cycle reads
        box.was_live = True

    def lost(self, mailbox: str, why: str) -> None:
        box = self._box(mailbox)
        box.live_since = None
        # polled from now on: the scheduled cycles read Exchange as they did before push, so the
        # next ``live`` is no gap to fill at once. (It nudged: while Exchange refused the stream,
        # every retry, each a new Subscribe, gave every mailbox of the group an extra cycle.)
        box.was_live = False
        self._mode(box, "polled", why, mailbox)

    # -- the daemon's questions ----------------------------------------------------------------------

    def forget_all(self, why: str) -> None:
        """The watch ended (reload, stop, no push source): every mailbox is polled."""
        for mailbox, box in self._boxes.items():
            box.live_since = None
            self._mode(box, "polled", why, mailbox)

    def vouch(self, mailbox: str, reason: str, full: bool) -> bool:
        """May this cycle skip reading Exchange? Records the read when it may not (see above)."""
        box = self._box(mailbox)
        now = trio.current_time()
        ok = (not full and reason in VOUCHED_REASONS and box.mode == "pushed"
              and box.live_since is not None and box.last_read is not None
              and box.live_since <= box.last_read
              and (box.last_event is None or box.last_event < box.last_read)
              and now - box.last_read < SAFETY_READ_S)
        if not ok:
            box.last_read = now
        return ok

    def read_failed(self, mailbox: str) -> None:
        """The cycle that should have read Exchange failed: the next one reads again."""
        self._box(mailbox).last_read = None

    def row(self, mailbox: str) -> PushStatus:
        box = self._boxes.get(mailbox) or _Mailbox()
        since = box.since.astimezone(UTC).isoformat(timespec="seconds") if box.since else None
        return PushStatus(box.mode, box.why, since)


class PushService:
    """The daemon's push tasks: watch every synced folder of every enabled mailbox while the
    account can push (``serve_push``), and ask the PSA which resources changed
    (``serve_psa_probe``); both nudge the scheduler. ``config_applied`` after a reload restarts the
    watch when the account or the mailboxes changed."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._scope: trio.CancelScope | None = None
        self._watching: tuple[int, tuple[tuple[str, frozenset[Any]], ...]] | None = None
        self._listen_failing = False

    def config_applied(self) -> None:
        if self._scope is not None and self._wanted() != self._watching:
            self._scope.cancel()  # watch the new config's mailboxes (or account)

    def _wanted(self) -> tuple[int, tuple[tuple[str, frozenset[Any]], ...]]:
        """(the account, the watched folders of every enabled mailbox) of the running config."""
        from exchanged.engine import enabled_kinds
        from exchanged.model import FOLDER_OF_KIND
        from exchanged.openers import user_spec

        cfg = self.d.cfg
        folders = tuple((u.mailbox, frozenset(FOLDER_OF_KIND[k] for k in enabled_kinds(
            user_spec(cfg, u).settings))) for u in cfg.enabled_users()) if cfg.enabled else ()
        return id(self.d.adapters.account if self.d.adapters else None), folders

    async def serve_push(self) -> None:
        """Watch every synced folder of every enabled mailbox while the account can push; restarted
        when a reload changes the account or the mailboxes. Mailboxes it cannot watch are polled."""
        from exchanged.ports import PushSource

        while True:
            self._watching = wanted = self._wanted()
            account = self.d.adapters.account if self.d.adapters else None
            mailboxes = dict(wanted[1])
            with trio.CancelScope() as scope:
                self._scope = scope
                if isinstance(account, PushSource) and mailboxes:
                    try:
                        await account.watch(mailboxes, self.d.push)
                    except Exception as exc:  # the watch must never take the daemon down
                        daemon_log.error("watching for pushed changes failed", error=present(exc).line())
                why = ("Graph: changes are polled (push needs a public webhook, which exchanged "
                       "does not open)" if self.d.cfg.server.use_ms_graph
                       else "this Exchange connection pushes no changes")
                for mailbox in mailboxes:
                    self.d.push.lost(mailbox, why)
                await trio.sleep_forever()
            self.d.push.forget_all("the subscriptions are being renewed (reload)")

    async def serve_psa_probe(self) -> None:
        """Every ``sync.psa_poll_seconds``: ask the PSA which resources' rows changed (a cheap probe,
        ``PsaConnector.probe_changes``) and nudge only their users' cycles. A connector without a
        probe, or a failing probe, leaves the users to their periodic cycles."""
        cursor: object | None = None
        seen: object = None
        failing = False
        while True:
            psa = self.d.adapters.psa if self.d.adapters is not None else None
            if psa is not None and self.d.cfg.enabled:
                if psa is not seen:  # a reload opened another connector: a new baseline
                    cursor, seen = None, psa
                try:
                    with trio.fail_after(max(5.0, float(self.d.cfg.sync.psa_poll_seconds))):
                        changes = await psa.probe_changes(cursor)
                except Exception as exc:  # the periodic cycle is the safety net
                    if not failing:
                        daemon_log.warning("PSA change probe failed; PSA changes wait for each user's "
                                           "periodic cycle until it works again", error=present(exc).line())
                    failing = True
                else:
                    if failing:
                        daemon_log.info("PSA change probe works again")
                    failing = False
                    if changes is not None:
                        cursor = changes.cursor
                        self._nudge_resources(changes.resources)
            await self._until_next_probe(psa)

    async def _until_next_probe(self, psa: PsaConnector | None) -> None:
        """``sync.psa_poll_seconds``, or less when the PSA says it changed (``wait_for_change``:
        PostgreSQL NOTIFY with ``psa.listen_channel``); a burst of notifications is one probe a
        second at most. A failing LISTEN is said once and the interval rules until it works."""
        poll = float(self.d.cfg.sync.psa_poll_seconds)
        with trio.move_on_after(poll):
            try:
                if psa is not None:
                    await psa.wait_for_change()
            except Exception as exc:
                if not self._listen_failing:
                    daemon_log.warning("PSA change notifications failed; PSA changes are probed every "
                                       "sync.psa_poll_seconds until they work again",
                                       error=present(exc).line())
                self._listen_failing = True
                await trio.sleep_forever()  # the rest of the interval
            else:
                if self._listen_failing:
                    daemon_log.info("PSA change notifications work again")
                self._listen_failing = False
            await trio.sleep(min(poll, NOTIFY_SPACING_S))

    def _nudge_resources(self, resources: frozenset[str]) -> None:
        if not resources:
            return
        for user in self.d.cfg.enabled_users():
            if user.psa_resource in resources:
                self.d.scheduler.nudge(user.mailbox, "psa")


