"""Confirmation mails: one per user, after the user's first successful cycle.

On start, every enabled user the state store does not know yet waits for one; on reload, every
newly enabled user (known or not: enabled again is confirmed again). The mail goes out after that
user's first successful cycle, never to a mailbox the sync cannot reach yet, and of several nodes
starting together only the one whose ``mark_known`` changed the user sends it. A user the state
store did not know whose cycle adopted items (found by their keys, written before) was synced
before the state was lost: marked known, no mail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog

from exchanged.errors import present

if TYPE_CHECKING:
    from exchanged.config import Config, UserConfig
    from exchanged.openers import NotifierLike
    from exchanged.ports import StateStore, UserRecord

log = structlog.get_logger("exchanged.daemon")


class Confirmations:
    def __init__(self) -> None:
        # users whose confirmation mail waits for their first successful cycle -> whether it is
        # owed even when the state store already knows them (re-enabled by a reload)
        self.pending: dict[str, bool] = {}

    def unknown_at_start(self, cfg: Config, stored: Mapping[str, UserRecord]) -> None:
        for u in cfg.enabled_users():
            if not (stored.get(u.mailbox) and stored[u.mailbox].known):
                self.pending.setdefault(u.mailbox, False)

    def enabled_again(self, mailboxes: Iterable[str]) -> None:
        for mailbox in mailboxes:
            self.pending[mailbox] = True  # enabled again: confirmed again, known or not

    def forget(self, mailbox: str) -> None:
        self.pending.pop(mailbox, None)

    def waiting(self, mailbox: str) -> bool:
        return mailbox in self.pending

    async def after_success(self, mailbox: str, cfg: Config, state: StateStore, notifier: NotifierLike, *,
                            adopted: int = 0) -> None:
        """The first successful cycle of a user waiting for its confirmation mail."""
        again = self.pending.pop(mailbox, None)
        user = cfg.user(mailbox)
        if again is None or user is None:
            return
        try:  # marked first: of several nodes starting together only one sends the mail
            if not await state.mark_known(mailbox) and not again:
                return
        except Exception as exc:
            log.warning("cannot mark user as known; the confirmation mail is sent anyway",
                        mailbox=mailbox, error=present(exc).line())
        if adopted and not again:
            log.info("no confirmation mail: the user was synced before (its items were found by "
                     "their keys; the state store was new)", mailbox=mailbox, adopted=adopted)
            return
        notifier.confirm_user(mailbox, sync_summary(cfg, user))
        log.info("confirmation mail queued", mailbox=mailbox)


def sync_summary(cfg: Config, user: UserConfig) -> str:
    """What is synced for this user, in words (confirmation mail)."""
    s = cfg.effective_sync(user)
    lines = []
    if s.appointments_export:
        lines.append("PSA appointments are copied to your Exchange calendar")
    if s.service_calls_export:
        lines.append("PSA service calls are copied to your Exchange calendar")
    if s.todos:
        lines.append("PSA to-dos are copied to your Exchange tasks")
    if s.contacts_owned:
        lines.append("contacts of the companies and opportunities you own are copied to your"
                     " Exchange contacts")
    mode = str(getattr(s.import_appointments, "value", s.import_appointments))
    if mode == "all_details":
        lines.append("your Exchange appointments are copied to the PSA with all details"
                     " (private ones as \"Private appointment\")")
    elif mode == "no_details":
        lines.append("your Exchange appointments are copied to the PSA as busy times without details")
    if mode != "none" and not s.import_free_time:
        lines.append("Exchange appointments shown as Free are not copied to the PSA")
    lines.append(f"items the sync manages carry the Exchange category \"{s.category}\"; "
                 f"the window reaches {s.past_days} days back")
    return "\n".join(f"- {line}" for line in lines)


__all__ = ["Confirmations", "sync_summary"]
