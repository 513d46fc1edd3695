"""``users_from_psa``: every active PSA resource whose email is an Exchange mailbox is a user.

The vendor's Resources tab has "select all"; here ``users_from_psa: {enabled: all_active}`` does
it. ``expand_users`` (pure) adds one user per active resource that is not excluded, not already
listed in ``users:`` (an explicit entry overrides it, a disabled one included) and whose address
is a mailbox. ``PsaUsers`` keeps what the daemon needs around it: the generated users of the
running config (a file config never holds them: each load is expanded again) and which addresses
Exchange answered for (``ExchangeAccount.check``), so that a known resource costs no request.

The daemon expands at start, at every reload, and once per sync interval; a user set that changed
is applied as a reload would apply it (added users get the confirmation mail, removed ones stop),
and each resource that appeared or left is said in the log (status shows the users).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import structlog
import trio

from exchanged.errors import present

if TYPE_CHECKING:
    from exchanged.config import Config, UserConfig
    from exchanged.openers import Adapters
    from exchanged.ports import PsaResource

log = structlog.get_logger("exchanged.daemon")


def candidates(cfg: Config, resources: Iterable[PsaResource]) -> list[PsaResource]:
    """The resources ``users_from_psa`` would make users of (before the mailbox check)."""
    rule = cfg.users_from_psa
    if rule.enabled != "all_active":
        return []
    excluded = {x.strip().lower() for x in rule.exclude}
    listed_ids = {u.psa_resource for u in cfg.users}
    listed_mail = {u.mailbox for u in cfg.users}
    out = []
    for r in resources:
        email = r.email.strip().lower()
        if not r.is_active or not email or "@" not in email:
            continue
        if r.psa_resource.lower() in excluded or email in excluded:
            continue
        if r.psa_resource in listed_ids or email in listed_mail:
            continue  # users: entries override the rule
        out.append(r)
    return out


def expand_users(cfg: Config, resources: Iterable[PsaResource], is_mailbox: Callable[[str], bool]) -> Config:
    """``cfg`` (a file config: no generated users) with one user per candidate that is a mailbox."""
    from exchanged.config import UserConfig

    added: dict[str, UserConfig] = {}
    for r in candidates(cfg, resources):
        email = r.email.strip().lower()
        if email in added or not is_mailbox(email):
            continue
        added[email] = UserConfig(mailbox=email, psa_resource=r.psa_resource)
    if not added:
        return cfg
    return cfg.model_copy(update={"users": (*cfg.users, *added.values())})


class PsaUsers:
    """The generated users of the running config and the mailbox answers seen so far."""

    def __init__(self) -> None:
        self.generated: frozenset[str] = frozenset()  # mailboxes of the running config's generated users
        self.last_added: frozenset[str] = frozenset()  # those of the newest expansion (not yet applied)
        self._mailbox: dict[str, bool] = {}

    async def expand_config(self, file_cfg: Config, running: Config, adapters: Adapters | None) -> Config:
        """``file_cfg`` with the users ``users_from_psa`` adds, asking the PSA and Exchange through
        ``adapters`` (None before the start: no generated users yet); ``running``: the config now
        running, whose generated users stay while the PSA cannot be asked."""
        if file_cfg.users_from_psa.enabled == "none" or adapters is None:
            self.last_added = frozenset()
            return file_cfg
        try:
            resources = await adapters.psa.all_resources()
        except Exception as exc:  # the PSA is down: the users it gave stay until it answers
            log.warning("users_from_psa: cannot list the PSA's resources; the users it gave stay",
                        error=present(exc).line())
            return self.keep(file_cfg, running)

        async def is_mailbox(address: str) -> bool:
            try:
                results = await adapters.account.check([address])
            except Exception as exc:
                log.warning("users_from_psa: cannot check the mailbox", mailbox=address,
                            error=present(exc).line())
                return False
            return any(r.subject.lower() == address and r.ok for r in results)

        return await self.expand(file_cfg, resources, is_mailbox)

    async def serve(self, running: Callable[[], Config], reload: Callable[[], Awaitable[object]]) -> None:
        """The PSA's resources again once per sync interval of the ``running`` config (a reload
        when the users they give changed; "unchanged" otherwise, at the cost of reading the file)."""
        if running().users_from_psa.enabled == "all_active":
            await reload()  # at start, once the PSA is open
        while True:
            await trio.sleep(running().sync_interval_minutes * 60)
            if running().users_from_psa.enabled == "all_active" or self.generated:
                await reload()

    async def expand(self, file_cfg: Config, resources: Sequence[PsaResource],
                     check: Callable[[str], Awaitable[bool]]) -> Config:
        for r in candidates(file_cfg, resources):
            email = r.email.strip().lower()
            if email not in self._mailbox:
                self._mailbox[email] = await check(email)
                if not self._mailbox[email]:
                    log.warning("PSA resource has no Exchange mailbox: not synced (users_from_psa)",
                                psa_resource=r.psa_resource, email=email)
        new = expand_users(file_cfg, resources, lambda e: self._mailbox.get(e, False))
        listed = {u.mailbox for u in file_cfg.users}
        self.last_added = frozenset(u.mailbox for u in new.users if u.mailbox not in listed)
        return new

    def keep(self, file_cfg: Config, running: Config) -> Config:
        """``file_cfg`` with the running config's generated users (the PSA could not be asked)."""
        listed = {u.mailbox for u in file_cfg.users}
        kept = tuple(u for u in running.users if u.mailbox in self.generated and u.mailbox not in listed)
        self.last_added = frozenset(u.mailbox for u in kept)
        return file_cfg.model_copy(update={"users": (*file_cfg.users, *kept)}) if kept else file_cfg

    def applied(self, new: Config) -> None:
        """``new`` runs now: remember its generated users and say which appeared and which left."""
        generated = self.last_added & {u.mailbox for u in new.users}
        by_mailbox: dict[str, UserConfig] = {u.mailbox: u for u in new.users}
        for mailbox in sorted(generated - self.generated):
            log.info("PSA resource added as a user (users_from_psa)", mailbox=mailbox,
                     psa_resource=by_mailbox[mailbox].psa_resource)
        for mailbox in sorted(self.generated - generated):
            log.info("PSA resource no longer a user (users_from_psa: inactive, excluded, gone from "
                     "the PSA or listed in users:)", mailbox=mailbox)
        self.generated = generated


__all__ = ["PsaUsers", "candidates", "expand_users"]
