"""The sync runner: one cycle of one user (or of the public contacts folder) through the ports.

A cycle reads the Exchange changes into the folder mirrors (checkpointed per page), loads the PSA
view, asks the engine for a plan, and carries it out in batches, committing the state of each
applied batch (mappings, mirror, journal) in one transaction.

Crash safety, step by step (the full argument is in docs/SYNC_RULES.md):

* Exchange creates: ``find_by_psa_keys`` first adopts items that already carry the key; an item
  created whose reply or state write was lost carries its PSA key, so the next cycle sees it in
  the mirror (or through ``find_by_psa_keys``) and adopts it: never a duplicate.
* PSA creates (imports): the row carries the Exchange key and ``load`` returns it, so the next cycle
  adopts it; should two rows ever exist, the engine removes the extra one.
* Updates are idempotent; deletes of what is gone count as done.
* The mirror and the sync state are committed together per page: a crash between pages resumes
  from the last page; a full resync first empties the mirror, so no stale item survives it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import structlog
import trio

from exchanged import engine, errors
from exchanged.engine import (
    Adopt,
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    Forget,
    Plan,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    UserSettings,
    UserSpec,
)
from exchanged.engine.actions import action_key
from exchanged.model import (
    FOLDER_OF_KIND,
    CycleOutcome,
    ExchangeItem,
    FolderKind,
    ItemError,
    JournalEntry,
    Kind,
    Mapping,
    PsaRecord,
    Window,
    split_psa_key,
)
from exchanged.ports import (
    ExchangeAccount,
    ExchangeMailbox,
    FolderState,
    ItemUpdate,
    NewItem,
    PsaConnector,
    PsaLoad,
    StateBatch,
    StateStore,
    UserState,
)
from exchanged.sync import results
from exchanged.sync.quiet import EXPANSION_MAX_AGE, Expansion, QuietCache, QuietMemo

log = structlog.get_logger("exchanged.sync")

PUBLIC_FOLDER_USER = "public-folder"  # the state/status name of the public contacts cycle
BATCH = 100  # items per bulk EWS call and per PSA apply; one state transaction each
MAX_THROTTLE_RETRIES = 6
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 120.0

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Target:
    """What one cycle syncs: a mailbox (or the public folder) and where its PSA rows come from."""

    name: str  # state and journal name: the mailbox address, or "public-folder"
    mailbox: Callable[[], ExchangeMailbox]
    kinds: frozenset[Kind]
    load: Callable[[Window], Awaitable[PsaLoad]]
    settings: UserSettings
    resource: str | None = None  # psa_resource for imported creates
    # the PSA connector's change token for this load, when it has one (see quiet.QuietMemo)
    token: Callable[[Window], Awaitable[object]] | None = None
    exchange_unchanged: bool = False  # vouched by the caller: a quiet cycle reads no folder


class _NeedFullState(Exception):
    """A quiet-state sync met something that needs the whole stored state (see SyncRunner._read)."""


@dataclass(slots=True)
class _View:
    """Everything a plan is made from, read without writing anything."""

    state: UserState
    window: Window
    items: list[ExchangeItem]
    records: Sequence[PsaRecord]
    suspect: frozenset[FolderKind]
    token: object = None  # the PSA change token (None: the connector has none)
    occurrences: list[ExchangeItem] = field(default_factory=list)
    load_errors: list[ItemError] = field(default_factory=list)  # PSA rows the connector skipped
    quiet: bool = False  # nothing changed since the last cycle that had nothing to do: no plan needed


@dataclass(slots=True)
class _Apply:
    """The bookkeeping of carrying out one plan."""

    target: _Target
    mailbox: ExchangeMailbox
    cycle_id: str
    mappings: dict[str, Mapping]
    total: int
    progress: Callable[[int, int], None] | None
    outcome: CycleOutcome = field(default_factory=lambda: CycleOutcome("ok"))
    failed: set[str] = field(default_factory=set)  # keys whose write failed: later steps skip them
    psa_hashes: dict[str, str] = field(default_factory=dict)  # psa_key -> hash the PSA returned
    keyed_items: dict[FolderKind, int] = field(default_factory=dict)  # mirror items with a PSA key
    done: int = 0

    def step(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    def item_error(self, err: ItemError, key: str) -> None:
        self.failed.add(key)
        self.outcome.item_errors.append(err if err.key else replace(err, key=key))


class SyncRunner:
    """Runs cycles; one instance serves every user of one config generation."""

    def __init__(self, account: ExchangeAccount, psa: PsaConnector, state: StateStore, *,
                 now: Callable[[], datetime] = utcnow, server_identity: str = "",
                 rng: random.Random | None = None) -> None:
        self.account = account
        self.psa = psa
        self.state = state
        self.now = now
        self.server_identity = server_identity
        self._rng = rng or random.Random()
        # what makes a quiet cycle quiet, per mailbox, in memory only (exchanged/sync/quiet.py)
        self._cache = QuietCache()

    # -- entry points ------------------------------------------------------------------------------

    async def run_cycle(self, user: UserSpec, *, full: bool = False, allow_deletes: bool = False,
                        progress: Callable[[int, int], None] | None = None,
                        cycle_id: str = "", exchange_unchanged: bool = False) -> CycleOutcome:
        """``exchange_unchanged``: the caller vouches that nothing changed in the mailbox since this
        runner's last cycle of it (a streaming subscription live all along and silent): a quiet
        cycle then skips SyncFolderItems and looks at the PSA only (see docs/SYNC_RULES.md)."""
        target = self._user_target(user)
        target.exchange_unchanged = exchange_unchanged
        return await self._run(target, full=full, allow_deletes=allow_deletes,
                               progress=progress, cycle_id=cycle_id)

    async def run_public_contacts(self, settings: UserSettings, *, full: bool = False,
                                  allow_deletes: bool = False,
                                  progress: Callable[[int, int], None] | None = None,
                                  cycle_id: str = "") -> CycleOutcome:
        """The cycle of the public folder of all PSA contacts (state name ``public-folder``)."""
        return await self._run(self._public_target(settings), full=full, allow_deletes=allow_deletes,
                               progress=progress, cycle_id=cycle_id)

    async def plan(self, user: UserSpec) -> dict[str, object]:
        """Dry run: what the next cycle would do, and why. Writes nothing anywhere (not even a
        sync state); raises the typed error when a side cannot be read."""
        return await self._dry_run(self._user_target(user), psa_resource=user.psa_resource)

    async def plan_public_contacts(self, settings: UserSettings) -> dict[str, object]:
        return await self._dry_run(self._public_target(settings), psa_resource=None)

    # -- targets -----------------------------------------------------------------------------------

    def _user_target(self, user: UserSpec) -> _Target:
        kinds = engine.enabled_kinds(user.settings)

        async def load(win: Window) -> PsaLoad:
            return await self.psa.load(user.psa_resource, kinds, win)

        async def token(win: Window) -> object:
            return await self.psa.change_token(user.psa_resource, kinds, win)

        return _Target(user.mailbox, lambda: self.account.mailbox(user.mailbox, time_zone=user.time_zone),
                       kinds, load,
                       user.settings, user.psa_resource, token)

    def _public_target(self, settings: UserSettings) -> _Target:
        async def load(win: Window) -> PsaLoad:
            return await self.psa.all_contacts()

        return _Target(PUBLIC_FOLDER_USER, self.account.public_contacts,
                       frozenset({Kind.PUBLIC_CONTACT}), load, settings)

    # -- one cycle ---------------------------------------------------------------------------------

    async def _run(self, target: _Target, *, full: bool, allow_deletes: bool,
                   progress: Callable[[int, int], None] | None, cycle_id: str) -> CycleOutcome:
        try:
            outcome = await self._cycle(target, full=full, allow_deletes=allow_deletes,
                                        progress=progress, cycle_id=cycle_id)
        except Exception as exc:  # every failure of a cycle is reported, never raised to the daemon
            shown = errors.present(_named(exc, target.name))
            outcome = CycleOutcome("error", error=shown.line(), reason=shown.reason)
            if not isinstance(exc, errors.ExchangedError):  # a bug: its traceback goes to the log
                log.error("cycle crashed: internal error", mailbox=target.name, cycle_id=cycle_id,
                          error=shown.message, exc_info=exc)
        try:
            await self.state.record_outcome(target.name, self.now(), outcome)
        except Exception as exc:
            if outcome.result != "error":
                shown = errors.present(_named(exc, target.name))
                outcome = replace(outcome, result="error", error=shown.line(), reason=shown.reason)
        return outcome

    async def _cycle(self, target: _Target, *, full: bool, allow_deletes: bool,
                     progress: Callable[[int, int], None] | None, cycle_id: str) -> CycleOutcome:
        mailbox = target.mailbox()
        memo = self._cache.memos.pop(target.name, None)  # any failure below leaves none behind
        self._cache.generations.pop(target.name, None)  # from here: this cycle's own commits only
        view = await self._read(target, mailbox, full=full, commit=True, memo=memo)
        if view.quiet:
            assert memo is not None  # a sync state the server renewed without changes was committed
            memo.folders = _sync_states(view.state)
            memo.generation = self._cache.generations.get(target.name, memo.generation)
            self._cache.memos[target.name] = memo
            return CycleOutcome("ok")
        the_plan = engine.plan(target.settings, view.window, view.records, view.items, view.state.mappings,
                               allow_deletes=allow_deletes, full=full, kinds=target.kinds,
                               suspect_folders=view.suspect,
                               unstored_import_fields=self._unstored_import_fields())
        run = _Apply(target, mailbox, cycle_id, dict(view.state.mappings), len(the_plan.writes), progress,
                     keyed_items={f: sum(1 for i in fs.items.values() if i.psa_key)
                                  for f, fs in view.state.folders.items()})
        await self._apply(run, the_plan)
        await self._record_held_back(target, view.state, the_plan, run)
        outcome = run.outcome
        outcome.item_errors.extend(view.load_errors)
        self._remember_quiet(target, view, the_plan, outcome, full=full)
        if the_plan.held_back:
            outcome.result = "held_back"
            outcome.held_back_deletes = len(the_plan.held_back)
            shown = errors.present(_held_back_error(target.name, the_plan))
            outcome.error, outcome.reason = shown.line(), shown.reason
        elif outcome.item_errors:
            outcome.result = "partial"
            first = outcome.item_errors[0]
            more = f" (+{len(outcome.item_errors) - 1} more)" if len(outcome.item_errors) > 1 else ""
            outcome.error = (f"{target.name}: {len(outcome.item_errors)} item(s) skipped, first {first.key}: "
                             f"{first.code}: {first.message}{more}; they are retried next cycle")
        return outcome

    def _remember_quiet(self, target: _Target, view: _View, the_plan: Plan, outcome: CycleOutcome, *,
                        full: bool) -> None:
        """Keep what this cycle was made from if it had nothing at all to do (see quiet.QuietMemo)."""
        generation = self._cache.generations.get(target.name, view.state.generation)
        if (full or view.token is None or the_plan.actions or the_plan.held_back or the_plan.findings
                or outcome.item_errors):
            return
        self._cache.remember(target.name, QuietMemo(
            _sync_states(view.state), generation, view.token, view.occurrences, target.settings, target.kinds,
            engine.stable_until(view.window, view.records, view.items)))

    async def _commit(self, name: str, batch: StateBatch) -> None:
        self._cache.generations[name] = await self.state.commit(name, batch)

    def _unstored_import_fields(self) -> frozenset[str]:
        """Appointment fields the PSA connector cannot keep on imported rows (see ports.py)."""
        return self.psa.unstored_import_fields

    async def _dry_run(self, target: _Target, *, psa_resource: str | None) -> dict[str, object]:
        view = await self._read(target, target.mailbox(), full=False, commit=False)
        the_plan = engine.plan(target.settings, view.window, view.records, view.items, view.state.mappings,
                               kinds=target.kinds, suspect_folders=view.suspect,
                               unstored_import_fields=self._unstored_import_fields())
        doc = the_plan.as_dict()
        summary: dict[str, dict[str, int]] = {}
        for a in the_plan.writes:
            side = summary.setdefault(a.side, {"create": 0, "update": 0, "delete": 0})
            side[a.verb] += 1
        return {
            "mailbox": target.name,
            "psa_resource": psa_resource,
            "window": {"now": view.window.now.isoformat(), "past_start": view.window.past_start.isoformat(),
                       "recurring_end": view.window.recurring_end.isoformat()},
            "kinds": sorted(k.value for k in target.kinds),
            "summary": summary,
            **doc,
        }

    # -- reading: Exchange changes, recurring expansion, PSA rows -----------------------------------

    async def _read(self, target: _Target, mailbox: ExchangeMailbox, *, full: bool, commit: bool,
                    memo: QuietMemo | None = None) -> _View:
        """Exchange changes into the mirror, the recurring expansion, then the PSA: unless ``memo``
        (the last quiet cycle) shows nothing changed, which the view then says (``quiet``)."""
        win = engine.window(self.now(), target.settings)
        folders = sorted({FOLDER_OF_KIND[k] for k in target.kinds})
        changed: set[FolderKind] = set()
        if memo is not None and not full and await self._memo_holds(target, memo):
            # the state as the memo left it, without mappings and mirror: the sync pages found are
            # committed as they come, so on any change the state is loaded afterwards, complete
            light = UserState(target.name, folders={f: FolderState(ss, {}, ident)
                                                    for f, (ss, ident) in memo.folders.items()})
            try:
                for folder in folders:
                    if target.exchange_unchanged and memo.folders.get(folder, (None, None))[0] is not None:
                        continue  # vouched for (a silent subscription): the memo's sync state holds
                    fs = light.folders.setdefault(folder, FolderState())
                    known = self._cache.written_in(target.name, folder, commit)
                    if await self._sync_folder(target.name, mailbox, fs, folder, restart=False, commit=commit,
                                               light=True, known=known):
                        changed.add(folder)
            except _NeedFullState:
                changed = set()  # start over below from the stored state (nothing of it was committed)
            else:
                occurrences = self._cache.fresh_expansion(
                    target.name, target.kinds, light.folders.get(FolderKind.CALENDAR), win, memo)
                token = None
                if not changed and occurrences is not None:
                    token = await self._token(target, win)
                    before_until = memo.until is None or win.now < memo.until
                    if token is not None and token == memo.token and before_until:
                        return _View(light, win, [], [], frozenset(), token, occurrences, quiet=True)
                return await self._read_rest(target, mailbox, await self.state.load_user(target.name), win,
                                             changed, frozenset(), token=token)
        state = await self.state.load_user(target.name)
        suspect: set[FolderKind] = set()
        wrote = bool(self._cache.written.get(target.name))  # writes of ours the next sync must see
        for folder in folders:
            fs = state.folders.setdefault(folder, FolderState())
            identity_changed = bool(self.server_identity) and fs.server_identity not in (
                None, self.server_identity)
            if identity_changed:
                suspect.add(folder)
            if target.exchange_unchanged and not full and not identity_changed and fs.sync_state is not None \
                    and not wrote:
                continue  # vouched for (a silent subscription), and no write of ours waits to be seen
            known = self._cache.written_in(target.name, folder, commit)
            if await self._sync_folder(target.name, mailbox, fs, folder, restart=full or identity_changed,
                                       commit=commit, known=known):
                changed.add(folder)
        return await self._read_rest(target, mailbox, state, win, changed, frozenset(suspect))

    async def _token(self, target: _Target, win: Window) -> object:
        """The PSA connector's change token for this user's load, or None when it has none."""
        token_of = target.token
        return await self._retry(lambda: token_of(win)) if token_of is not None else None

    async def _memo_holds(self, target: _Target, memo: QuietMemo) -> bool:
        """The memo still describes the stored state and this user's settings."""
        if not memo.matches(target.settings, target.kinds, self.server_identity):
            return False
        return await self.state.generation(target.name) == memo.generation

    async def _read_rest(self, target: _Target, mailbox: ExchangeMailbox, state: UserState, win: Window,
                         changed: set[FolderKind], suspect: frozenset[FolderKind], *,
                         token: object = None) -> _View:
        """The view from a state whose folders are synced: expansion, PSA change token (unless
        read already) and rows."""
        items: list[ExchangeItem] = []
        for folder in sorted({FOLDER_OF_KIND[k] for k in target.kinds}):
            items.extend(state.folders.setdefault(folder, FolderState()).items.values())
        occurrences: list[ExchangeItem] = []
        if Kind.IMPORTED in target.kinds:
            occurrences = await self._occurrences(target.name, mailbox, state.folders[FolderKind.CALENDAR],
                                                  win, FolderKind.CALENDAR in changed)
            items.extend(occurrences)
        if token is None:
            token = await self._token(target, win)
        loaded = await self._retry(lambda: target.load(win))
        records = loaded.records
        # the rows the connector skipped in this very load (ItemErrors of the cycle's outcome)
        load_errors = [e for e in loaded.skipped if _kind_of_key(e.key) in target.kinds]
        if not records and target.resource is not None:
            await self._check_resource(target)
        return _View(state, win, items, records, suspect, token, occurrences, load_errors)

    async def _check_resource(self, target: _Target) -> None:
        """An empty PSA answer is cheap to explain: a resource that does not exist (a typo in
        ``users[].psa_resource``) is an error, not a user with nothing to sync."""
        assert target.resource is not None
        resource = await self._retry(lambda: self.psa.resource(target.resource or ""))
        if resource is None:
            raise errors.PsaError(
                f"{target.name}: PSA resource {target.resource!r} does not exist",
                hint="check users[].psa_resource of this mailbox against the PSA's resources",
                mailbox=target.name)

    async def _sync_folder(self, name: str, mailbox: ExchangeMailbox, fs: FolderState, folder: FolderKind,
                           *, restart: bool, commit: bool, light: bool = False,
                           known: dict[str, ExchangeItem] | None = None) -> bool:
        """Bring ``fs`` (mirror + sync state) up to date; True when anything changed. ``known``:
        items this runner wrote since the last sync (see ``ExchangeMailbox.changes``)."""
        if restart and (fs.items or fs.sync_state is not None):
            await self._reset_mirror(name, fs, folder, commit)
        changed = False
        attempt = 0
        invalid_seen = False
        while True:
            try:
                async for page in mailbox.changes(folder, fs.sync_state, known=known):
                    if page.upserted or page.deleted:
                        changed = True
                    if not page.upserted and not page.deleted and page.sync_state == fs.sync_state:
                        continue  # nothing new: a noop cycle writes nothing
                    for item_id in page.deleted:
                        fs.items.pop(item_id, None)
                    for item in page.upserted:
                        fs.items[item.item_id] = item
                    fs.sync_state = page.sync_state
                    if commit:
                        await self._commit(name, StateBatch(
                            mirror_upserts={folder: list(page.upserted)},
                            mirror_deletes={folder: list(page.deleted)},
                            sync_states={folder: page.sync_state},
                            server_identity=self.server_identity or None))
                if self.server_identity and fs.server_identity != self.server_identity:
                    fs.server_identity = self.server_identity
                    if commit:
                        await self._commit(name, StateBatch(sync_states={folder: fs.sync_state},
                                                                 server_identity=self.server_identity))
                return changed
            except errors.SyncStateInvalid:
                if light:  # starting the folder over needs its mirror: see _read
                    raise _NeedFullState from None
                if invalid_seen or fs.sync_state is None:
                    raise
                invalid_seen = True  # the server forgot us: start the folder over (never deletions)
                await self._reset_mirror(name, fs, folder, commit)
                changed = True
            except errors.Throttled as exc:  # resume from the last committed page after the back-off
                attempt += 1
                if attempt > MAX_THROTTLE_RETRIES:
                    raise
                await trio.sleep(self._delay(exc, attempt))

    async def _reset_mirror(self, name: str, fs: FolderState, folder: FolderKind, commit: bool) -> None:
        if commit:
            await self._commit(name, StateBatch(mirror_deletes={folder: list(fs.items)},
                                                     sync_states={folder: None}))
        fs.items.clear()
        fs.sync_state = None

    async def _occurrences(self, name: str, mailbox: ExchangeMailbox, fs: FolderState, win: Window,
                           calendar_changed: bool) -> list[ExchangeItem]:
        """Occurrences of the recurring series in the mirror, for this window.

        The mirror holds masters only; ``calendar_view`` expands them. The expansion reaches
        ``EXPANSION_MAX_AGE`` beyond the window's end and is kept that long, so the window may move
        without missing an occurrence (the engine drops what lies outside the current window); it is
        asked again only when the calendar changed or the expansion is that old. A noop cycle
        therefore costs one SyncFolderItems per folder and no CalendarView.
        """
        masters = {i.uid for i in fs.items.values() if i.is_recurring_master and i.uid}
        if not masters:
            self._cache.expansions.pop(name, None)
            return []
        cached = self._cache.expansions.get(name)
        if cached is not None and not calendar_changed and cached.holds(fs.sync_state, win):
            return cached.items
        start, end = win.past_start, win.recurring_end + EXPANSION_MAX_AGE
        view = await self._retry(lambda: mailbox.calendar_view(start, end))
        occurrences = [i for i in view
                       if i.uid in masters and i.psa_key is None and i.item_id not in fs.items]
        self._cache.expansions[name] = Expansion(fs.sync_state, win.now, (start, end), occurrences)
        return occurrences

    # -- applying a plan ---------------------------------------------------------------------------

    async def _apply(self, run: _Apply, the_plan: Plan) -> None:
        state_only = [a for a in the_plan.actions if isinstance(a, Adopt | Forget)]
        if state_only:
            batch = StateBatch()
            for a in state_only:
                if isinstance(a, Adopt):
                    self._keep(run, batch, a.mapping)
                    if a.refresh:
                        continue
                    side = "psa" if a.kind is Kind.IMPORTED else "exchange"
                    run.outcome.adopted += 1
                    batch.journal.append(self._journal(run, side, "adopt", a.kind, a.psa_key,
                                                       a.mapping.item_id, (), a.reason))
                else:
                    self._drop(run, batch, a.psa_key)
            await self._commit(run.target.name, batch)
        psa_writes = [a for a in the_plan.actions if isinstance(a, PsaCreate | PsaUpdate | PsaDelete)]
        for chunk in _chunks(psa_writes, BATCH):
            await self._apply_psa(run, chunk)
        folders = sorted({a.folder for a in the_plan.actions
                          if isinstance(a, ExchangeCreate | ExchangeUpdate | ExchangeDelete)})
        for folder in folders:
            mine = [a for a in the_plan.actions
                    if isinstance(a, ExchangeCreate | ExchangeUpdate | ExchangeDelete) and a.folder is folder]
            creates = [a for a in mine if isinstance(a, ExchangeCreate)]
            if creates:
                # adoption first, once for the folder: an item created by a cycle whose reply or state
                # write was lost, or that appeared since this cycle's sync; with the mirror's count
                # the adapter may list the folder's keyed items instead of searching key by key
                keys = [a.psa_key for a in creates]
                hint = run.keyed_items.get(folder)
                existing = await self._retry(
                    partial(run.mailbox.find_by_psa_keys, folder, keys, folder_hint=hint))
                for some in _chunks(creates, BATCH):
                    await self._apply_creates(run, folder, some, existing)
            for updates in _chunks([a for a in mine if isinstance(a, ExchangeUpdate)
                                    and a.psa_key not in run.failed], BATCH):
                await self._apply_updates(run, folder, updates)
            for deletes in _chunks([a for a in mine if isinstance(a, ExchangeDelete)], BATCH):
                await self._apply_deletes(run, folder, deletes)

    async def _apply_psa(self, run: _Apply, chunk: Sequence[PsaCreate | PsaUpdate | PsaDelete]) -> None:
        writes = [results.psa_write(a, run.target.resource) for a in chunk]
        answers = _aligned(await self._retry(lambda: self.psa.apply(writes)), len(chunk), "PSA apply")
        batch = StateBatch()
        for action, result in zip(chunk, answers, strict=True):
            self._take(run, batch, results.psa_result(action, result, run.mappings))
        await self._commit(run.target.name, batch)
        run.step(len(chunk))

    async def _apply_creates(self, run: _Apply, folder: FolderKind, creates: Sequence[ExchangeCreate],
                             existing: dict[str, ExchangeItem]) -> None:
        retried = False

        async def create() -> Sequence[ExchangeItem | ItemError]:
            nonlocal retried
            if retried:  # a refused (throttled) call may have created part of the batch: adopt that
                existing.update(await run.mailbox.find_by_psa_keys(
                    folder, [a.psa_key for a in creates if a.psa_key not in existing]))
            retried = True
            new = [NewItem(a.kind, a.psa_key, a.payload, _categories(run.target.settings), a.reminder,
                           replaces=a.replaces)
                   for a in creates if a.psa_key not in existing]
            return await run.mailbox.create(folder, new) if new else []

        created = await self._retry(create)
        created = _aligned(created, sum(1 for a in creates if a.psa_key not in existing), "CreateItem")
        batch = StateBatch()
        answers = iter(created)
        fixes: list[ExchangeUpdate] = []
        for action in creates:
            found = existing.get(action.psa_key)
            if found is not None:
                effect, fix = results.adopted(action, found, folder, run.psa_hashes)
                if fix is not None:  # other values: overwritten below
                    fixes.append(fix)
            else:
                effect = results.created(action, next(answers), run.psa_hashes)
            self._take(run, batch, effect, folder)
        await self._commit(run.target.name, batch)
        run.step(len(creates))
        if fixes:
            run.total += len(fixes)
            await self._apply_updates(run, folder, fixes)

    async def _apply_updates(self, run: _Apply, folder: FolderKind,
                             updates: Sequence[ExchangeUpdate]) -> None:
        requests = [ItemUpdate(a.item_id, a.change_key, a.payload, a.fields, a.categories, a.reminder)
                    for a in updates]
        answers = _aligned(await self._retry(lambda: run.mailbox.update(folder, requests)), len(updates),
                           "UpdateItem")
        batch = StateBatch()
        for action, result in zip(updates, answers, strict=True):
            self._take(run, batch, results.updated(action, result, run.psa_hashes), folder)
        await self._commit(run.target.name, batch)
        run.step(len(updates))

    async def _apply_deletes(self, run: _Apply, folder: FolderKind,
                             deletes: Sequence[ExchangeDelete]) -> None:
        ids = [a.item_id for a in deletes]
        answers = _aligned(await self._retry(lambda: run.mailbox.delete(folder, ids)), len(deletes),
                           "DeleteItem")
        batch = StateBatch()
        for action, result in zip(deletes, answers, strict=True):
            self._take(run, batch, results.deleted(action, result), folder)
        await self._commit(run.target.name, batch)
        run.step(len(deletes))

    async def _record_held_back(self, target: _Target, state: UserState, the_plan: Plan, run: _Apply) -> None:
        held = [action_key(a) for a in the_plan.held_back]
        if held != list(state.held_back_deletes):
            await self._commit(target.name, StateBatch(held_back_deletes=held))
            state.held_back_deletes = held

    def _wrote(self, run: _Apply, folder: FolderKind, item: ExchangeItem) -> None:
        self._cache.written.setdefault(run.target.name, {}).setdefault(folder, {})[item.item_id] = item

    # -- small helpers -----------------------------------------------------------------------------

    def _take(self, run: _Apply, batch: StateBatch, effect: results.Effect,
              folder: FolderKind | None = None) -> None:
        """Carry out what one write's result means (``results``) in the cycle and its state batch."""
        if effect.error is not None:
            run.item_error(effect.error, effect.error_key)
            return
        if effect.psa_hash is not None:
            run.psa_hashes[effect.psa_hash[0]] = effect.psa_hash[1]
        if effect.keep is not None:
            self._keep(run, batch, effect.keep)
        for psa_key in effect.drop:
            self._drop(run, batch, psa_key)
        if effect.wrote is not None and folder is not None:
            self._wrote(run, folder, effect.wrote)
        if effect.mirror_delete is not None and folder is not None:
            batch.mirror_deletes.setdefault(folder, []).append(effect.mirror_delete)
        counts = run.outcome.counts
        if effect.count == "adopted":
            run.outcome.adopted += 1
        elif effect.count == "exported":
            counts.exported += 1
        elif effect.count == "imported":
            counts.imported += 1
        elif effect.count == "updated":
            counts.updated += 1
        elif effect.count == "deleted":
            counts.deleted += 1
        if effect.journal is not None:
            j = effect.journal
            batch.journal.append(self._journal(run, j.side, j.action, j.kind, j.key, j.item_id, j.fields,
                                               j.reason, j.subject))

    @staticmethod
    def _keep(run: _Apply, batch: StateBatch, mapping: Mapping) -> None:
        run.mappings[mapping.psa_key] = mapping
        batch.delete_mappings = [k for k in batch.delete_mappings if k != mapping.psa_key]
        batch.upsert_mappings = [m for m in batch.upsert_mappings if m.psa_key != mapping.psa_key]
        batch.upsert_mappings.append(mapping)

    @staticmethod
    def _drop(run: _Apply, batch: StateBatch, psa_key: str) -> None:
        run.mappings.pop(psa_key, None)
        batch.upsert_mappings = [m for m in batch.upsert_mappings if m.psa_key != psa_key]
        batch.delete_mappings.append(psa_key)

    def _journal(self, run: _Apply, side: str, action: str, kind: Kind, key: str, item_id: str | None,
                 fields: tuple[str, ...], reason: str, subject: str = "") -> JournalEntry:
        if action in ("create", "update", "delete"):  # a write, not an adoption (metrics)
            slot = (str(kind.value), side)
            run.outcome.written[slot] = run.outcome.written.get(slot, 0) + 1
        return JournalEntry(self.now(), run.target.name, side, action, kind, key, item_id or None,
                            tuple(fields), reason, run.cycle_id, subject[:200])

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``; on ``Throttled`` back off (the server's hint, else exponential with
        jitter) and try again, at most ``MAX_THROTTLE_RETRIES`` times."""
        attempt = 0
        while True:
            try:
                return await call()
            except errors.Throttled as exc:
                attempt += 1
                if attempt > MAX_THROTTLE_RETRIES:
                    raise
                await trio.sleep(self._delay(exc, attempt))

    def _delay(self, exc: errors.Throttled, attempt: int) -> float:
        if exc.back_off_s is not None and exc.back_off_s >= 0:
            return min(exc.back_off_s, BACKOFF_CAP_S)
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter": never zero


R = TypeVar("R")


def _aligned(results: Sequence[R], n: int, call: str) -> list[R | ItemError]:
    """One result per item, whatever the adapter answered: a missing answer is an item error (the
    item is retried next cycle), never a crash of the cycle."""
    out: list[R | ItemError] = list(results[:n])
    missing = ItemError("", "no_result", f"{call} gave no result for this item", retryable=True)
    out += [missing] * (n - len(out))
    return out


def _sync_states(state: UserState) -> dict[FolderKind, tuple[str | None, str | None]]:
    return {f: (fs.sync_state, fs.server_identity) for f, fs in state.folders.items()}


def _kind_of_key(key: str) -> Kind | None:
    try:
        return split_psa_key(key)[0]
    except ValueError:
        return None


def _categories(settings: UserSettings) -> tuple[str, ...]:
    return (settings.category,) if settings.category else ()


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _held_back_error(name: str, the_plan: Plan) -> errors.ExchangedError:
    """The guard's finding as a typed error, so status and mail say what to do about it."""
    message = "; ".join(f.message for f in the_plan.findings) or "deletions held back"
    message = f"{len(the_plan.held_back)} deletion(s) held back: {message}"
    codes = {f.code for f in the_plan.findings}
    if codes == {"side_looks_empty"}:
        return errors.SideLooksEmpty(
            f"{message}; if the deletions are right, release them with "
            f"`exchangectl sync {name} --allow-deletes`", mailbox=name)
    return errors.DeletesHeldBack(message, mailbox=name)


def _named(exc: BaseException, name: str) -> BaseException:
    """Make sure the presented message names the mailbox."""
    if isinstance(exc, errors.ExchangedError) and exc.mailbox is None:
        exc.mailbox = name
    return exc
