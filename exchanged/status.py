"""The daemon's status: what each user's last cycle did, the one-line summary for systemd, and the
``status`` document (``control.protocol.StatusDocument``, the type exchangectl reads back).

Pure functions over the scheduler's snapshot, the config and the per-user records the daemon keeps;
the only I/O is :func:`held_elsewhere` (the state store's leases), which answers within a second
or not at all, because status must answer even when the state store does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import trio

from exchanged.control.protocol import (
    CycleStatus,
    ExchangeStatus,
    LeaseHolder,
    Progress,
    PsaStatus,
    PushStatus,
    ResourceRow,
    UserStatus,
)
from exchanged.model import Counts, CycleOutcome

if TYPE_CHECKING:
    from exchanged.config import Config, UserConfig
    from exchanged.ports import CheckResult, ExchangeAccount, Lease, PsaConnector, PsaResource, StateStore
    from exchanged.scheduler import Scheduler, UserRuntime

PUBLIC_FOLDER = "public-folder"  # the scheduler's name for the cycle of the public contacts folder
LEASES_TIMEOUT_S = 1.0  # reading the leases for status gives up after this long


def iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at is not None else None


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CycleRecord:
    """What the last cycles of one user (or of the public folder) did, as status shows it."""

    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: Counts().as_dict())
    error_keys: set[str] = field(default_factory=set)  # notifier keys currently open for this user

    def note(self, outcome: CycleOutcome) -> None:
        self.last_result = outcome.result
        self.last_error = outcome.error
        self.counts = outcome.counts.as_dict()
        if outcome.result != "error":
            self.last_success = now()


def daemon_state(cfg: Config, scheduler: Scheduler, exchange: ExchangeStatus) -> str:
    """running | paused | disabled | degraded (SPEC section 5)."""
    if not cfg.enabled:
        return "disabled"
    if scheduler.paused:
        return "paused"
    snap = scheduler.snapshot()
    if (exchange.reachable is False or exchange.login == "refused"
            or any(r.state == "error" for r in snap.values())):
        return "degraded"
    return "running"


def status_line(cfg: Config, scheduler: Scheduler, *, reload_deferred: bool) -> str:
    """systemd's STATUS= line."""
    if not cfg.enabled:
        return "disabled (enabled: false in the config); control socket up, no cycles"
    snap = scheduler.snapshot()
    syncing = sum(1 for r in snap.values() if r.state == "syncing")
    errors_ = sum(1 for r in snap.values() if r.state == "error")
    parts = [f"{len(snap)} user{'' if len(snap) == 1 else 's'}", f"{syncing} syncing"]
    if errors_:
        parts.append(f"{errors_} failing")
    if scheduler.paused:
        parts.append("paused")
    elif reload_deferred:
        parts.append("reload deferred")
    else:
        runs = [r.next_run for r in snap.values() if r.next_run is not None]
        upcoming = min(runs) if runs else None  # scheduler.next_run() would walk them all again
        if upcoming is not None:
            parts.append(f"next cycle {upcoming.astimezone().strftime('%H:%M')}")
    return ", ".join(parts)


async def held_elsewhere(state: StateStore | None, node_id: str) -> dict[str, LeaseHolder]:
    """Users whose live lease another node holds (PostgreSQL state; SQLite keeps no leases)."""
    if state is None:
        return {}
    leases: dict[str, Lease] = {}
    with contextlib.suppress(Exception), trio.move_on_after(LEASES_TIMEOUT_S):
        leases = await state.lease_holders()  # status must answer even when the state store does not
    return {m: LeaseHolder(lease.node, iso(lease.expires_at))
            for m, lease in leases.items() if lease.node != node_id}


def _cycle_status(state: str | None, rt: UserRuntime | None, rec: CycleRecord) -> CycleStatus:
    progress = rt.progress if rt is not None else None
    return CycleStatus(
        state=state, last_attempt=iso(rec.last_attempt), last_success=iso(rec.last_success),
        last_result=rec.last_result, last_error=rec.last_error,
        next_run=iso(rt.next_run) if rt is not None else None,
        progress=Progress(progress["done"], progress["total"]) if progress else None,
        counts=dict(rec.counts))


def source_of(mailbox: str, generated: Collection[str]) -> str:
    """Where a configured user comes from: ``users:`` in the YAML, or ``users_from_psa``."""
    return "users_from_psa" if mailbox in generated else "config"


def user_rows(cfg: Config, scheduler: Scheduler, records: Mapping[str, CycleRecord],
              held: Mapping[str, LeaseHolder] | None = None,
              push: Callable[[str], PushStatus] | None = None,
              generated: Collection[str] = ()) -> list[UserStatus]:
    """``generated``: the mailboxes ``users_from_psa`` added to the running config."""
    snap = scheduler.snapshot()
    rows = []
    held = held or {}
    for user in cfg.users:
        rt = snap.get(user.mailbox)
        rec = records.get(user.mailbox) or CycleRecord()
        state = rt.state if rt is not None else "disabled"
        if user.mailbox in held and state not in ("syncing", "disabled"):
            state = "held_elsewhere"  # another node is syncing it (or died doing so)
        rows.append(UserStatus(user.mailbox, user.psa_resource, user.enabled and cfg.enabled,
                               _cycle_status(state, rt, rec), held.get(user.mailbox),
                               push(user.mailbox) if push is not None else None,
                               source_of(user.mailbox, generated)))
    return rows


def resource_rows(cfg: Config, resources: Sequence[PsaResource], records: Mapping[str, CycleRecord],
                  generated: Collection[str] = ()) -> list[dict[str, object]]:
    """``exchangectl resources``: every PSA resource with the mailbox configured for it (if any),
    whether that user is synced, and its last attempt and success; then any configured user whose
    resource the PSA does not have (``in_psa`` false)."""
    users: dict[str, list[UserConfig]] = {}
    for user in cfg.users:
        users.setdefault(user.psa_resource, []).append(user)

    def row(resource: str, name: str, email: str, active: bool | None, user: UserConfig | None,
            in_psa: bool) -> dict[str, object]:
        rec = records.get(user.mailbox) if user is not None else None
        return ResourceRow(resource, name, email, active, in_psa, user.mailbox if user is not None else None,
                           bool(user is not None and user.enabled and cfg.enabled),
                           iso(rec.last_attempt) if rec else None,
                           iso(rec.last_success) if rec else None,
                           source_of(user.mailbox, generated) if user is not None else None).to_json()

    out = []
    for r in resources:
        mine: list[UserConfig | None] = list(users.pop(r.psa_resource, []))
        for one in mine or [None]:
            out.append(row(r.psa_resource, r.name, r.email, r.is_active, one, True))
    for resource, missing in users.items():
        out.extend(row(resource, "", "", None, gone, False) for gone in missing)
    return out


def public_folder_row(scheduler: Scheduler, records: Mapping[str, CycleRecord]) -> CycleStatus | None:
    rt = scheduler.snapshot().get(PUBLIC_FOLDER)
    if rt is None:
        return None
    return _cycle_status(rt.state, rt, records.get(PUBLIC_FOLDER) or CycleRecord())


def exchange_row(exchange: ExchangeStatus, account: ExchangeAccount | None) -> ExchangeStatus:
    """``exchange`` with the back-off the account waits for now, if any (throttling)."""
    row = replace(exchange, back_off_until=None, back_off_by_server=None)
    closed = account.back_off_until() if account is not None else None
    if closed is not None:
        until, by_server = closed
        at = now() + timedelta(seconds=max(0.0, until - trio.current_time()))
        row.update(back_off_until=iso(at), back_off_by_server=bool(by_server))
    return row


def psa_row(cfg: Config, psa: PsaConnector | None) -> PsaStatus:
    """The PSA connector and, where it has one (Autotask), its request budget."""
    if psa is None:
        return PsaStatus(cfg.psa.connector)
    try:
        budget = psa.budget_status()
    except Exception as exc:  # status must always answer; the budget is informative
        return PsaStatus(cfg.psa.connector, budget_error=f"{type(exc).__name__}: {exc}")
    return PsaStatus(cfg.psa.connector, budget=budget)


__all__ = ["PUBLIC_FOLDER", "CycleRecord", "daemon_state", "held_elsewhere", "iso", "now", "psa_row",
           "public_folder_row", "status_line", "user_rows"]


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """What a credential check's results say about Exchange (``status.exchange``); pure."""

    reachable: bool | None  # None: nothing answered that could tell
    login: str  # ok | refused | not checked
    warnings: list[str]
    last_error: str | None

    @classmethod
    def read(cls, results: Sequence[CheckResult], mailboxes: Sequence[str]) -> CredentialCheck:
        warnings = [f"{r.subject}: {r.message}" for r in results if not r.ok or r.warning]
        by = {r.subject: r for r in results}
        login_ok = all(r.ok for r in results if r.subject in ("login", "ews"))
        reachable: bool | None
        if "login" in by:  # the sync account (credentials.use_for_all_users)
            # a failed login without a failed "ews" line: the server answered and refused it
            reachable = by["ews"].ok if "ews" in by else True
            login = "ok" if by["login"].ok else "refused" if reachable else "not checked"
        else:  # per-user credentials: the server answered if any mailbox did
            mailbox_rows = [r for r in results if r.subject in mailboxes]
            reachable = any(r.ok for r in mailbox_rows) if mailbox_rows else None
            login = "not checked"
        return cls(reachable, login, warnings, None if login_ok else warnings[0] if warnings else None)
