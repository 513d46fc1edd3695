"""The ports: what the sync runner needs from the outside world, as small Protocols.

Each port has an in-memory implementation for fast tests and one contract suite that every real
implementation passes too (tests/contract/). The engine never imports an adapter; the daemon
(composition root) picks the adapters from the config and hands them to the runner.

Errors: adapters raise the typed errors of ``exchanged.errors`` (``ExchangeUnavailable``,
``PsaUnavailable``, ``Throttled``, ``AuthFailed``, ...) for whole-call failures, and return
``ItemError`` objects in place of results for single items that failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import trio

from exchanged.model import (
    CycleOutcome,
    ExchangeItem,
    FolderKind,
    ItemError,
    JournalEntry,
    Kind,
    Mapping,
    Payload,
    PsaRecord,
    Window,
)

# --- Exchange -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangePage:
    """One SyncFolderItems page (at most 512 changes) and the sync state after it."""

    upserted: Sequence[ExchangeItem]  # created or updated since the previous state
    deleted: Sequence[str]  # item ids
    sync_state: str
    last_page: bool


@dataclass(frozen=True, slots=True)
class NewItem:
    kind: Kind
    psa_key: str  # written into the extended property
    payload: Payload
    categories: tuple[str, ...] = ()  # the configured sync.category (empty: none)
    reminder: str | None = None  # the reminder code to set (engine.rules.reminder_code); None: none sent
    # a re-create: the id of the item the mapping named, which this folder's sync no longer shows
    # (an adapter whose folder moved, Graph's To Do list after EWS's Tasks folder, removes it)
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    item_id: str
    change_key: str
    payload: Payload  # the full new payload
    changed: tuple[str, ...]  # only these fields are sent (SetItemField per field)
    categories: tuple[str, ...] | None = None  # the item's whole category list to write; None: leave them
    reminder: str | None = None  # the reminder code to write (and remember as ours); None: leave it


class ExchangeMailbox(Protocol):
    """One mailbox (or the public contacts folder) as the sync runner sees it.

    Every method runs its blocking EWS calls in worker threads under the adapter's limiter and
    backs off in trio on throttling (cancellable). Writes never send invitations.
    """

    @property
    def mailbox(self) -> str: ...

    async def time_zone(self) -> str:
        """The IANA zone of this mailbox's days (all-day items, task dates): the ``time_zone`` the
        account's ``mailbox()`` was given (the config's ``users[].time_zone``), else the zone the
        owner chose in Exchange (EWS: ``OWA.UserOptions`` via GetUserConfiguration; Graph:
        ``mailboxSettings.timeZone``, a Windows or IANA name), else ``UTC`` (said in the log once).
        Never the host's. The adapter converts with it in every operation; a changed zone is
        picked up within the adapter's refresh interval."""
        ...

    def changes(self, folder: FolderKind, sync_state: str | None, *,
                known: dict[str, ExchangeItem] | None = None) -> AsyncIterator[ChangePage]:
        """SyncFolderItems from ``sync_state`` (None: from the beginning), page by page.

        ``known``: items the caller holds as they are, by id (the runner passes what it created
        since the folder's last sync). One the server reports under the same change key is
        returned as given instead of being read again: a settled export costs no GetItem.

        Raises ``SyncStateInvalid`` when the server refuses the state (the runner then starts from
        None and treats the result as a full resync, never as deletions of the unseen).
        """
        ...

    async def calendar_view(self, start: datetime, end: datetime) -> Sequence[ExchangeItem]:
        """The calendar between ``start`` and ``end`` with recurring series expanded."""
        ...

    async def find_by_psa_keys(
        self, folder: FolderKind, psa_keys: Sequence[str], *, folder_hint: int | None = None
    ) -> dict[str, ExchangeItem]:
        """Items in ``folder`` carrying one of these keys in our extended property (adoption).

        ``folder_hint``: how many items carrying a PSA key the caller believes the folder holds;
        the adapter may then list them all instead of searching key by key, if that is cheaper."""
        ...

    async def create(
        self, folder: FolderKind, items: Sequence[NewItem]
    ) -> Sequence[ExchangeItem | ItemError]:
        """Bulk create (batches of 100), results in input order. A result may carry the payload as
        sent rather than as the server stored it (no re-read): see ``model.unconfirmed_hash``."""
        ...

    async def update(
        self, folder: FolderKind, updates: Sequence[ItemUpdate]
    ) -> Sequence[ExchangeItem | ItemError]:
        """Bulk update in place, only the changed fields; results in input order."""
        ...

    async def delete(self, folder: FolderKind, item_ids: Sequence[str]) -> Sequence[ItemError | None]:
        """Bulk delete (MoveToDeletedItems); None for each success, in input order."""
        ...


class ExchangeAccount(Protocol):
    """The EWS connection of the configured sync account; hands out mailboxes."""

    def mailbox(self, address: str, *, time_zone: str | None = None) -> ExchangeMailbox:
        """The mailbox at ``address``; ``time_zone`` (IANA, validated by the config) overrides the
        zone the mailbox has in Exchange (see ``ExchangeMailbox.time_zone``)."""
        ...

    def public_contacts(self) -> ExchangeMailbox:
        """The public folder of all PSA contacts (only the PUBLIC_CONTACTS folder is used)."""
        ...

    async def check(self, mailboxes: Sequence[str]) -> list[CheckResult]:
        """Log in, check EWS access and impersonation for each mailbox (check-config --connect)."""
        ...

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(service, operation) -> calls sent since the account was opened (metrics)."""
        ...

    def throttle_waits(self) -> dict[str, int]:
        """service -> back-offs waited for since the account was opened (metrics)."""
        ...

    def back_off_until(self) -> tuple[float, bool] | None:
        """(trio time, asked by the server) of the back-off the account waits for now, or None."""
        ...

    async def aclose(self) -> None: ...


class ExchangeAccountBase:
    """The defaults of the optional members of :class:`ExchangeAccount`: no counters, no back-off."""

    def request_counts(self) -> dict[tuple[str, str], int]:
        return {}

    def throttle_waits(self) -> dict[str, int]:
        return {}

    def back_off_until(self) -> tuple[float, bool] | None:
        return None


class PushSink(Protocol):
    """Where a ``PushSource`` reports; every call returns at once (the daemon's push tracker)."""

    def changed(self, mailbox: str) -> None:
        """A notification: something changed in this mailbox's watched folders. Look now."""
        ...

    def live(self, mailbox: str) -> None:
        """The mailbox's subscription works (first time, or again after any gap: a reconnect,
        an expired subscription). What happened before is unknown: sync it normally."""
        ...

    def lost(self, mailbox: str, why: str) -> None:
        """No working subscription for this mailbox (refused, over a limit, failing): poll it.
        ``why`` says so for status, naming the mailbox's cause once."""
        ...


@runtime_checkable
class PushSource(Protocol):
    """Optional capability of an ``ExchangeAccount``: the server pushes change notifications over
    connections the daemon opens (EWS streaming). An account without it is polled."""

    async def watch(self, mailboxes: dict[str, frozenset[FolderKind]], sink: PushSink, *,
                    task_status: Any = ...) -> None:
        """Watch these folders of these mailboxes until cancelled, reporting to ``sink``;
        ``task_status.started()`` once the first subscriptions are attempted. Never raises
        for a failing server: mailboxes without a subscription are reported ``lost``."""
        ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    subject: str  # "login", "ews", or a mailbox address
    ok: bool
    message: str
    warning: bool = False  # ok but worth a look


# --- PSA ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PsaResource:
    psa_resource: str  # the PSA's id of the resource (SPEC users[].psa_resource)
    email: str
    name: str
    is_active: bool


@dataclass(frozen=True, slots=True)
class PsaWrite:
    """One change the runner asks the PSA to make.

    ``op`` is "create" (an imported appointment: ``psa_key`` None, ``exchange_key`` set),
    "update" (``fields`` names what to write: imported rows get everything, PSA-owned rows only
    what flows back: start/end of appointments, start/due/completed of to-dos), or "delete"
    (imported rows only).
    """

    op: str
    kind: Kind
    psa_key: str | None
    payload: Payload | None
    fields: tuple[str, ...] = ()
    exchange_key: str | None = None
    resource: str | None = None  # psa_resource of the user, for creates


@dataclass(frozen=True, slots=True)
class PsaLoad:
    """What one ``load`` (or ``all_contacts``) read: the records, and the rows it skipped, each an
    ``ItemError`` (code ``invalid_row``) naming the row and what is wrong with it. Returned
    together, so that a connector serving several users at once never mixes up their rows."""

    records: Sequence[PsaRecord]
    skipped: Sequence[ItemError] = ()


@dataclass(frozen=True, slots=True)
class PsaChanges:
    """What a PSA change probe found: the resources whose rows changed since the probe that gave
    ``cursor`` to this one (a first probe, with no cursor, reports none: it sets the baseline)."""

    cursor: object  # hand it to the next probe (process-local)
    resources: frozenset[str]  # psa_resource ids


class PsaConnector(Protocol):
    """The PSA side. :class:`PsaConnectorBase` gives the optional members their defaults."""

    # Appointment fields the connector cannot keep on an imported row. The engine leaves those at
    # their defaults, so a value the PSA cannot hold never looks like a change on every cycle.
    unstored_import_fields: frozenset[str]

    async def resource(self, psa_resource: str) -> PsaResource | None: ...

    async def all_resources(self) -> Sequence[PsaResource]:
        """Every resource of the PSA, active or not, by id (``exchangectl resources``)."""
        ...

    async def load(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> PsaLoad:
        """Every in-scope record of these kinds for this resource, and the rows skipped.

        Raises ``PsaUnavailable`` when the PSA cannot be read; never returns no records for a
        failure (no records must mean "nothing there").
        """
        ...

    async def change_token(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> object:
        """A value equal on two calls only if ``load`` with the same arguments would return the
        same records (process-local; cheaper than ``load``), or None when the connector cannot
        tell. With a token the runner skips load and plan of a cycle in which nothing changed (see
        sync/runner.py ``_Quiet``); with None every cycle loads."""
        ...

    async def all_contacts(self) -> PsaLoad:
        """Every active PSA contact as ``Kind.PUBLIC_CONTACT`` records, and the rows skipped."""
        ...

    async def apply(self, writes: Sequence[PsaWrite]) -> Sequence[PsaRecord | ItemError | None]:
        """Carry out the writes in order; a created/updated record, None for a delete, or an error."""
        ...

    def interrupt_waits(self, reason: str) -> None:
        """The daemon is stopping: a call waiting for a request budget or a back-off fails now
        with a message naming ``reason`` (instead of holding the stop for the grace period)."""
        ...

    def budget_status(self) -> dict[str, object] | None:
        """The connector's request budget for ``status.psa.budget``; None: it has none."""
        ...

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(service, operation) -> PSA calls since the connector was opened (metrics)."""
        ...

    def throttle_waits(self) -> dict[str, int]:
        """service -> back-offs waited for since the connector was opened (metrics)."""
        ...

    async def probe_changes(self, cursor: object | None) -> PsaChanges | None:
        """A cheap look at which resources' rows changed since the probe that returned ``cursor``
        (``sync.psa_poll_seconds``; the daemon then cycles only their users). None: the connector
        has no probe (its users wait for their periodic cycle)."""
        ...

    async def wait_for_change(self) -> None:
        """Return when the PSA says that something changed (the daemon then probes at once instead
        of at the next ``sync.psa_poll_seconds``): the ``sql`` connector's PostgreSQL LISTEN
        (``psa.listen_channel``). Without such a signal it never returns."""
        ...

    async def aclose(self) -> None: ...


class PsaConnectorBase:
    """The defaults of the optional members of :class:`PsaConnector`: nothing unstored, no change
    token (every cycle loads), nothing to interrupt, no budget, no counters."""

    unstored_import_fields: frozenset[str] = frozenset()

    async def change_token(self, psa_resource: str, kinds: frozenset[Kind], window: Window) -> object:
        return None

    def interrupt_waits(self, reason: str) -> None:
        return None

    def budget_status(self) -> dict[str, object] | None:
        return None

    def request_counts(self) -> dict[tuple[str, str], int]:
        return {}

    def throttle_waits(self) -> dict[str, int]:
        return {}

    async def probe_changes(self, cursor: object | None) -> PsaChanges | None:
        return None

    async def wait_for_change(self) -> None:
        await trio.sleep_forever()


# --- state --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FolderState:
    sync_state: str | None = None
    # the mirror of the folder as of ``sync_state``: item id -> item (kept by the runner so that a
    # cycle with no changes needs one SyncFolderItems call and no listing)
    items: dict[str, ExchangeItem] = field(default_factory=dict)
    server_identity: str | None = None  # server/vdir/domain/version the state belongs to


@dataclass(slots=True)
class UserState:
    mailbox: str
    mappings: dict[str, Mapping] = field(default_factory=dict)  # by psa_key
    folders: dict[FolderKind, FolderState] = field(default_factory=dict)
    held_back_deletes: list[str] = field(default_factory=list)  # psa_keys / item ids
    # the store's count of commits and resets of this user as of the load: the same generation
    # means the same state (a runner may keep a state in memory and check only this number)
    generation: int = 0


@dataclass(slots=True)
class StateBatch:
    """What one applied batch changes; committed in one transaction."""

    upsert_mappings: list[Mapping] = field(default_factory=list)
    delete_mappings: list[str] = field(default_factory=list)  # psa_keys
    mirror_upserts: dict[FolderKind, list[ExchangeItem]] = field(default_factory=dict)
    mirror_deletes: dict[FolderKind, list[str]] = field(default_factory=dict)
    sync_states: dict[FolderKind, str | None] = field(default_factory=dict)
    journal: list[JournalEntry] = field(default_factory=list)
    held_back_deletes: list[str] | None = None  # None: unchanged
    server_identity: str | None = None  # set on every folder touched when not None


@dataclass(frozen=True, slots=True)
class Lease:
    """A live lease: the node syncing the user and when the lease runs out if it is not renewed."""

    node: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class UserRecord:
    """Per-user outcome kept across restarts (status, users table)."""

    mailbox: str
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_result: str | None = None
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    known: bool = False  # a confirmation mail has been sent for this user


class StateStore(Protocol):
    async def load_user(self, mailbox: str) -> UserState: ...

    async def commit(self, mailbox: str, batch: StateBatch) -> int:
        """Apply ``batch`` atomically: all of it or none of it; returns the user's new generation."""
        ...

    async def generation(self, mailbox: str) -> int:
        """The user's generation now (see ``UserState.generation``): one cheap read."""
        ...

    async def reset_user(self, mailbox: str, *, keep_mappings: bool) -> None:
        """Forget sync states and mirrors (full resync); mappings stay unless told otherwise.
        Bumps the generation."""
        ...

    async def record_outcome(self, mailbox: str, at: datetime, outcome: CycleOutcome) -> None: ...

    async def mark_known(self, mailbox: str) -> bool:
        """Mark the user as confirmed; True only for the call that changed it (of several nodes
        starting together, exactly one sends the confirmation mail)."""
        ...

    async def user_records(self) -> dict[str, UserRecord]: ...

    async def history(
        self, mailbox: str | None, since: datetime | None, limit: int = 1000
    ) -> list[JournalEntry]: ...

    async def prune_history(self, before: datetime) -> int:
        """Delete the journal entries older than ``before`` (``state.history_days``); how many."""
        ...

    async def try_lease(self, mailbox: str, node: str, ttl_s: float) -> bool:
        """Take or renew this mailbox's lease; SQLite (one node) always grants it."""
        ...

    async def release_lease(self, mailbox: str, node: str) -> None: ...

    async def lease_holders(self) -> dict[str, Lease]:
        """The live (unexpired) leases by mailbox; empty where leases are not kept (SQLite)."""
        ...

    async def aclose(self) -> None: ...


# --- mail ---------------------------------------------------------------------------------------


class Mailer(Protocol):
    async def send(self, to: Sequence[str], subject: str, body: str) -> None:
        """Send one mail; raises ``MailError`` on failure (callers log it, never die of it)."""
        ...


__all__ = [
    "ChangePage",
    "CheckResult",
    "ExchangeAccount",
    "ExchangeAccountBase",
    "ExchangeMailbox",
    "FolderState",
    "ItemError",
    "ItemUpdate",
    "Lease",
    "Mailer",
    "NewItem",
    "PsaConnector",
    "PsaConnectorBase",
    "PsaLoad",
    "PsaResource",
    "PsaWrite",
    "StateBatch",
    "StateStore",
    "UserRecord",
    "UserState",
]
