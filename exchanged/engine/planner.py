"""``plan()``: (settings, window, PSA view, Exchange view, mappings) -> the actions of one cycle.

Theory of operation
-------------------
A pair is one PSA row and one Exchange item, remembered by a ``Mapping`` that holds the content
hash of each side as of the last successful write. Comparing each side's current hash with the
mapping tells who changed since then:

================  =================  ===============================================================
PSA changed       Exchange changed   PSA-owned kinds
================  =================  ===============================================================
no                no                 nothing (a refreshed mapping at most)
yes               no                 update Exchange with the changed fields
no                yes                flow-back fields (appointment start/end, to-do start/due/
                                     completed) are written to the PSA; every other changed field
                                     is overwritten from the PSA
yes               yes                the PSA wins: Exchange is overwritten, nothing flows back
================  =================  ===============================================================

An item the daemon created but has no mapping for (a lost reply, a crash before the state write,
a lost state store) is found by its PSA key in the Exchange view and adopted, never re-created.
Imported appointments (Exchange owns) are matched by ``exchange_key``; the PSA row always becomes
what the import mode makes of the Exchange item, so PSA edits are overwritten.

Every Exchange item of a PSA-owned kind carries the configured ``sync.category``: where it is
missing (a new category name after a reload, or a user removed it) it is added to the item's other
categories, with the next update of the item or on its own; once there, nothing is written.
Reminders (``sync.reminder_minutes``) are set at create and follow the setting while the item has
the reminder the daemon last wrote; one the user changed is theirs (``rules.reminder_to_write``).

An item of a PSA-owned kind that carries our key but that the adapter could not read
(``ExchangeItem.unreadable``) is there, not gone: with its PSA row in view it is overwritten from
the PSA with every field (the repair), never created a second time; without one it is left alone
(whether the row was deleted or left the window cannot be told from an unreadable item).

Missing on one side: a row gone from the PSA deletes the Exchange item; an Exchange item of a
PSA-owned kind gone from Exchange is re-created; an imported appointment gone from Exchange
deletes its PSA row; an imported PSA row deleted in the PSA is re-created. Something that left
the window is never deleted: its mapping is forgotten (adoption finds the item if it comes back).

Guards, after the rules: a source side with no in-scope item of a kind while mappings of that
kind exist "looks empty", and none of that kind's deletes go ahead; deletes driven by a folder
whose server identity changed are held; more than ``max_deletes_per_cycle`` deletes hold back
all deletes. ``allow_deletes`` releases all three.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import datetime

from exchanged.model import (
    FOLDER_OF_KIND,
    PSA_OWNED,
    Appointment,
    ExchangeItem,
    FolderKind,
    Kind,
    Mapping,
    Payload,
    PsaRecord,
    Window,
    all_fields,
    changed_fields,
    exchange_baseline,
    payload_hash,
    split_psa_key,
)

from .actions import (
    Action,
    Adopt,
    Delete,
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    Finding,
    Forget,
    Plan,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    title,
)
from .rules import (
    FLOW_BACK,
    import_skip_reason,
    in_scope,
    is_occurrence_key,
    item_is_occurrence,
    merge_flow_back,
    reminder_for_create,
    reminder_to_write,
    render_import,
    scope_changes_at,
)
from .settings import UserSettings, enabled_kinds


def plan(
    settings: UserSettings,
    window: Window,
    psa_records: Iterable[PsaRecord],
    exchange_items: Iterable[ExchangeItem],
    mappings: MappingABC[str, Mapping],
    *,
    allow_deletes: bool = False,
    full: bool = False,
    kinds: frozenset[Kind] | None = None,
    suspect_folders: frozenset[FolderKind] = frozenset(),
    unstored_import_fields: frozenset[str] = frozenset(),
) -> Plan:
    """The plan of one cycle.

    ``exchange_items``: every item of the synced folders (recurring masters are ignored) plus the
    occurrences of recurring series in the window. ``kinds``: what to sync (default: what the
    settings enable). ``full``: compare contents even where the hashes say nothing changed.
    ``suspect_folders``: folders whose server identity changed (their deletions are held).
    ``unstored_import_fields``: Appointment fields the PSA connector cannot keep on an imported row
    (the sql schema has no location or all-day column); they are left at their defaults in what
    the PSA row should be, so a value the PSA cannot hold never looks like a change.
    """
    kinds = enabled_kinds(settings) if kinds is None else kinds
    p = _Planner(settings, window, full, unstored_import_fields)
    items = [i for i in exchange_items if not i.is_recurring_master]
    records = list(psa_records)
    for kind in sorted(kinds & PSA_OWNED):
        p.owned_kind(kind, [r for r in records if r.kind is kind],
                     [i for i in items if i.folder is FOLDER_OF_KIND[kind] and _key_kind(i) is kind],
                     {k: m for k, m in mappings.items() if m.kind is kind})
    if Kind.IMPORTED in kinds:
        p.imported([r for r in records if r.kind is Kind.IMPORTED],
                   [i for i in items if i.folder is FolderKind.CALENDAR and i.psa_key is None],
                   {k: m for k, m in mappings.items() if m.kind is Kind.IMPORTED})
    p.guard(allow_deletes, suspect_folders, settings.max_deletes_per_cycle)
    return p.result


def stable_until(window: Window, psa_records: Iterable[PsaRecord],
                 exchange_items: Iterable[ExchangeItem]) -> datetime | None:
    """Until when ``plan`` gives the same answer for the same records and items as time passes
    (None: for ever): the earliest moment any of them enters or leaves the sliding window. A
    runner that sees neither side change before then may skip planning (see sync/runner.py)."""
    moments = [scope_changes_at(window, r.payload, occurrence=bool(
        r.exchange_key and is_occurrence_key(r.exchange_key))) for r in psa_records]
    moments += [scope_changes_at(window, i.payload, occurrence=item_is_occurrence(i))
                for i in exchange_items if not i.is_recurring_master and not i.unreadable]
    return min((m for m in moments if m is not None), default=None)


def _key_kind(item: ExchangeItem) -> Kind | None:
    if item.psa_key is None:
        return None
    try:
        return split_psa_key(item.psa_key)[0]
    except ValueError:  # somebody else's value in our property: not ours to touch
        return None


@dataclass(slots=True)
class _Planner:
    settings: UserSettings
    window: Window
    full: bool
    unstored_import_fields: frozenset[str] = frozenset()
    result: Plan = field(default_factory=Plan)
    duplicates: set[int] = field(default_factory=set)  # id() of deletes of duplicates
    empty_sources: dict[Kind, str] = field(default_factory=dict)  # kind -> finding message
    outside: dict[str, ExchangeItem] = field(default_factory=dict)  # imports moved out of the window
    unreadable_imports: set[str] = field(default_factory=set)  # exchange keys of unreadable items

    def add(self, action: Action) -> None:
        self.result.actions.append(action)

    def render_import(self, item: ExchangeItem) -> Payload:
        """What the PSA row of an imported item should be, as far as the PSA can store it."""
        desired = render_import(item, self.settings)
        if self.unstored_import_fields and isinstance(desired, Appointment):
            defaults = {f.name: f.default for f in fields(Appointment)
                        if f.name in self.unstored_import_fields and f.default is not MISSING}
            desired = replace(desired, **defaults)
        return desired

    # -- PSA-owned kinds ----------------------------------------------------------------------

    def owned_kind(self, kind: Kind, records: Sequence[PsaRecord], items: Sequence[ExchangeItem],
                   mappings: dict[str, Mapping]) -> None:
        by_key = {r.psa_key: r for r in records}
        xs: dict[str, list[ExchangeItem]] = defaultdict(list)
        for item in items:
            assert item.psa_key is not None
            xs[item.psa_key].append(item)
        if not by_key and mappings:
            self.empty_sources[kind] = (
                f"the PSA returned no {kind.value} rows while {len(mappings)} are synced; "
                "not deleting them from Exchange")
        for key in sorted(set(by_key) | set(mappings) | set(xs)):
            self.owned_pair(kind, key, by_key.get(key), mappings.get(key), xs.get(key, []))

    def owned_pair(self, kind: Kind, key: str, record: PsaRecord | None, mapping: Mapping | None,
                   found: list[ExchangeItem]) -> None:
        folder = FOLDER_OF_KIND[kind]
        item = next((i for i in found if mapping is not None and i.item_id == mapping.item_id), None)
        if item is None and found:  # a readable one first: an unreadable twin is the one to remove
            item = next((i for i in found if not i.unreadable), found[0])
        for dup in found:
            if dup is not item:
                action = ExchangeDelete(kind, key, folder, dup.item_id,
                                        "a second Exchange item with the same PSA key: duplicate removed",
                                        subject=title(dup.payload))
                self.duplicates.add(id(action))
                self.add(action)
        if record is None:
            self.owned_missing_in_psa(kind, key, mapping, item)
            return
        desired = record.payload
        if item is None:
            reason = ("deleted in Exchange; the PSA owns it: re-created" if mapping is not None
                      else "new in the PSA")
            reminder = reminder_for_create(kind, desired, self.settings, self.window.now)
            replaces = mapping.item_id if mapping is not None and mapping.item_id else None
            self.add(ExchangeCreate(kind, key, folder, desired, reason,
                                    Mapping(kind, key, folder, "", "", payload_hash(desired), ""),
                                    reminder=reminder, replaces=replaces))
            return
        if item.unreadable:
            self.owned_unreadable(kind, key, record, item)
            return
        self.owned_both(kind, key, record, mapping, item)

    def owned_unreadable(self, kind: Kind, key: str, record: PsaRecord, item: ExchangeItem) -> None:
        """Our item, present but unreadable: every field is written from the PSA (the PSA owns it)."""
        desired = record.payload
        h = payload_hash(desired)
        self.add(ExchangeUpdate(kind, key, item.folder, item.item_id, item.change_key, desired,
                                all_fields(desired),
                                "unreadable in Exchange; the PSA owns it: every field written from the PSA",
                                Mapping(kind, key, item.folder, item.item_id, item.change_key, h, h),
                                categories=self.categories_to_write(item)))

    def categories_to_write(self, item: ExchangeItem) -> tuple[str, ...] | None:
        """The item's categories with the configured one added; None when it is there already (or
        none is configured). Other categories stay; a former ``sync.category`` is not removed."""
        category = self.settings.category
        if not category or category in item.categories:
            return None
        return (*item.categories, category)

    def owned_missing_in_psa(self, kind: Kind, key: str, mapping: Mapping | None,
                             item: ExchangeItem | None) -> None:
        if item is None:
            if mapping is not None:
                self.add(Forget(kind, key, "gone from both sides"))
            return
        if item.unreadable:  # deleted in the PSA, or left the window? An unreadable item cannot tell
            if mapping is not None:
                self.add(Forget(kind, key, "not in the PSA's view and unreadable in Exchange: left alone"))
            return
        if in_scope(self.window, item.payload):
            self.add(ExchangeDelete(kind, key, item.folder, item.item_id, "deleted in the PSA",
                                    forget=key if mapping is not None else None, subject=title(item.payload)))
        elif mapping is not None:
            self.add(Forget(kind, key, "left the sync window"))

    def owned_both(self, kind: Kind, key: str, record: PsaRecord, mapping: Mapping | None,
                   item: ExchangeItem) -> None:
        psa_h, ex_h = payload_hash(record.payload), payload_hash(item.payload)
        adopted = mapping is None or mapping.item_id != item.item_id
        ex_base = "" if mapping is None else exchange_baseline(
            mapping.exchange_hash, mapping.change_key, item.change_key, ex_h)
        if adopted:
            psa_changed, ex_changed = True, False  # no common past: the owner's values win
        else:
            assert mapping is not None
            psa_changed, ex_changed = psa_h != mapping.psa_hash, ex_h != ex_base
            if self.full and not psa_changed and not ex_changed and item.payload != record.payload:
                psa_changed = True
        merged = record.payload
        if ex_changed and not psa_changed:
            merged = merge_flow_back(kind, record.payload, item.payload)
        psa_fields = changed_fields(record.payload, merged) if merged is not record.payload else ()
        ex_fields = changed_fields(item.payload, merged)
        merged_h = psa_h if merged is record.payload else payload_hash(merged)  # no second hash
        base = Mapping(kind, key, item.folder, item.item_id, item.change_key, merged_h, ex_h)
        if psa_fields and not in_scope(self.window, merged):
            # moved out of the window in Exchange: the PSA follows, then the pair is out of scope
            self.add(PsaUpdate(kind, key, merged, psa_fields,
                               f"{_names(psa_fields)} changed in Exchange (now outside the sync window): "
                               "written back to the PSA", base, leaves_window=True))
            return
        if psa_fields:
            # if the Exchange overwrite that follows fails, the stale hash makes the next cycle look again
            stale = ex_base if mapping is not None and ex_fields else ex_h
            self.add(PsaUpdate(kind, key, merged, psa_fields,
                               f"{_names(psa_fields)} changed in Exchange: written back to the PSA",
                               replace(base, exchange_hash=stale)))
        categories = self.categories_to_write(item)
        reminder = reminder_to_write(kind, merged, item, self.settings, self.window.now)
        if ex_fields or categories is not None or reminder is not None:
            why = (self.owned_update_reason(kind, adopted, psa_changed, ex_changed, ex_fields) if ex_fields
                   else "found in Exchange by its PSA key: adopted" if adopted else "")
            if categories is not None:
                added = f"category {self.settings.category!r} missing: added"
                why = f"{why}; {added}" if why else added
            if reminder is not None:
                said = f"reminder set to {reminder!r} (sync.reminder_minutes)"
                why = f"{why}; {said}" if why else said
            self.add(ExchangeUpdate(kind, key, item.folder, item.item_id, item.change_key, merged, ex_fields,
                                    why, replace(base, exchange_hash=merged_h), categories=categories,
                                    reminder=reminder))
        elif not psa_fields and (
                mapping is None or (mapping.item_id, mapping.psa_hash, mapping.exchange_hash)
                != (item.item_id, psa_h, ex_h)):
            self.add(Adopt(base, "found in Exchange by its PSA key: adopted" if adopted
                           else "both sides agree: mapping refreshed", refresh=not adopted))

    def owned_update_reason(self, kind: Kind, adopted: bool, psa_changed: bool, ex_changed: bool,
                            ex_fields: tuple[str, ...]) -> str:
        if adopted:
            return "found in Exchange by its PSA key with other values: overwritten from the PSA"
        if psa_changed and ex_changed:
            return "changed on both sides: the PSA wins"
        if psa_changed:
            return "changed in the PSA"
        owned = [f for f in ex_fields if f not in FLOW_BACK.get(kind, ())]
        return f"{_names(tuple(owned) or ex_fields)} edited in Exchange; the PSA owns it: overwritten"

    # -- imported appointments (Exchange owns) ------------------------------------------------

    def imported(self, records: Sequence[PsaRecord], items: Sequence[ExchangeItem],
                 mappings: dict[str, Mapping]) -> None:
        view: dict[str, ExchangeItem] = {}
        skipped: dict[str, str] = {}
        outside: dict[str, ExchangeItem] = {}  # still there, but moved out of the window
        for item in items:
            key = item.exchange_key
            if key is None:
                continue
            if item.unreadable:  # adapters skip foreign items they cannot read; should one come: kept
                self.unreadable_imports.add(key)
                continue
            if not in_scope(self.window, item.payload, occurrence=item_is_occurrence(item)):
                outside[key] = item
                continue
            why = import_skip_reason(item, self.settings)
            if why is None:
                view[key] = item
            else:
                skipped[key] = why
        rows: dict[str, list[PsaRecord]] = defaultdict(list)
        for rec in records:
            if rec.exchange_key:
                rows[rec.exchange_key].append(rec)
        maps: dict[str, list[Mapping]] = defaultdict(list)
        for m in mappings.values():
            if m.exchange_key:
                maps[m.exchange_key].append(m)
        if not view and mappings:
            self.empty_sources[Kind.IMPORTED] = (
                f"the Exchange calendar shows no appointment to import while {len(mappings)} are "
                "imported; not deleting them from the PSA")
        self.outside = outside
        for key in sorted(set(view) | set(rows) | set(maps)):
            self.imported_pair(key, view.get(key), rows.get(key, []), maps.get(key, []), skipped.get(key))

    def imported_pair(self, key: str, item: ExchangeItem | None, rows: list[PsaRecord],
                      maps: list[Mapping], skipped: str | None) -> None:
        mapped = {m.psa_key: m for m in maps}
        row = next((r for r in rows if r.psa_key in mapped), rows[0] if rows else None)
        mapping = mapped.get(row.psa_key) if row is not None else (maps[0] if maps else None)
        for dup in rows:
            if dup is not row:
                action = PsaDelete(Kind.IMPORTED, dup.psa_key,
                                   "a second PSA row imported from the same Exchange appointment: "
                                   "duplicate removed", exchange_key=key,
                                   forget=dup.psa_key if dup.psa_key in mapped else None,
                                   subject=title(dup.payload))
                self.duplicates.add(id(action))
                self.add(action)
        for m in maps:
            if m is not mapping and m.psa_key not in {r.psa_key for r in rows}:
                self.add(Forget(Kind.IMPORTED, m.psa_key, "its PSA row is gone"))
        if item is None:
            self.imported_missing_in_exchange(key, row, mapping, skipped)
            return
        desired = self.render_import(item)
        base = Mapping(Kind.IMPORTED, row.psa_key if row else "", FolderKind.CALENDAR, item.item_id,
                       item.change_key, payload_hash(desired), payload_hash(item.payload), key)
        if row is None:
            reason = ("deleted in the PSA; Exchange owns it: re-created" if mapping is not None
                      else "new in Exchange")
            self.add(PsaCreate(key, desired, reason, base,
                               replaces=mapping.psa_key if mapping is not None else None))
            return
        fields = changed_fields(row.payload, desired)
        if fields:
            if mapping is not None and payload_hash(row.payload) != mapping.psa_hash and \
                    payload_hash(item.payload) == mapping.exchange_hash:
                reason = "edited in the PSA; Exchange owns it: overwritten"
            elif mapping is None:
                reason = "found in the PSA by its Exchange key with other values: overwritten"
            else:
                reason = "changed in Exchange"
            self.add(PsaUpdate(Kind.IMPORTED, row.psa_key, desired, fields, reason, base, exchange_key=key))
        elif mapping is None or (mapping.psa_hash, mapping.exchange_hash) != (
                base.psa_hash, base.exchange_hash):
            # (an occurrence's item id may change with every expansion: it does not matter here)
            self.add(Adopt(base, "found in the PSA by its Exchange key: adopted" if mapping is None
                           else "both sides agree: mapping refreshed", refresh=mapping is not None))

    def imported_missing_in_exchange(self, key: str, row: PsaRecord | None, mapping: Mapping | None,
                                     skipped: str | None) -> None:
        if key in self.unreadable_imports:
            return  # still in Exchange, only unreadable: the PSA row stays as it is
        if row is None:
            if mapping is not None:
                self.add(Forget(Kind.IMPORTED, mapping.psa_key, "gone from both sides"))
            return
        moved = self.outside.get(key)
        if moved is not None:  # leaving the window is never a deletion
            follows = import_skip_reason(moved, self.settings) is None
            desired = self.render_import(moved) if follows else row.payload
            fields = changed_fields(row.payload, desired)
            if fields:  # the row follows the appointment out of the window; then it is out of scope
                self.add(PsaUpdate(Kind.IMPORTED, row.psa_key, desired, fields,
                                   "moved out of the sync window in Exchange",
                                   Mapping(Kind.IMPORTED, row.psa_key, FolderKind.CALENDAR, moved.item_id,
                                           moved.change_key, payload_hash(desired),
                                           payload_hash(moved.payload), key),
                                   exchange_key=key, leaves_window=True))
            elif mapping is not None:
                self.add(Forget(Kind.IMPORTED, mapping.psa_key, "left the sync window"))
            return
        if in_scope(self.window, row.payload, occurrence=is_occurrence_key(key)):
            reason = f"not imported any more: {skipped}" if skipped else "deleted in Exchange"
            self.add(PsaDelete(Kind.IMPORTED, row.psa_key, reason, exchange_key=key,
                               forget=row.psa_key if mapping is not None else None,
                               subject=title(row.payload)))
        elif mapping is not None:
            self.add(Forget(Kind.IMPORTED, mapping.psa_key, "left the sync window"))

    # -- guards -------------------------------------------------------------------------------

    def guard(self, allow_deletes: bool, suspect: frozenset[FolderKind], max_deletes: int) -> None:
        if allow_deletes:
            return
        plan = self.result
        for kind, message in sorted(self.empty_sources.items()):
            held = self.hold(_of_kind(kind, self.duplicates))
            if held:
                plan.findings.append(Finding("side_looks_empty", kind, f"{message} ({held} held back)"))
        for folder in sorted(suspect):
            held = self.hold(_psa_deletes_from(folder))
            if held:
                plan.findings.append(Finding(
                    "side_looks_empty", None,
                    f"the server identity of the {folder.value} folder changed: {held} deletions held back"))
        deletes = [a for a in plan.actions if isinstance(a, ExchangeDelete | PsaDelete)]
        if len(deletes) > max_deletes:
            self.hold(lambda a: True)
            plan.findings.append(Finding(
                "deletes_held_back", None,
                f"{len(deletes)} deletions exceed max_deletes_per_cycle ({max_deletes}); all held back"))

    def hold(self, which: Callable[[Delete], bool]) -> int:
        """Move the deletes ``which`` selects from the actions to ``held_back``."""
        plan = self.result
        keep: list[Action] = []
        held: list[Delete] = []
        for a in plan.actions:
            if isinstance(a, ExchangeDelete | PsaDelete) and which(a):
                held.append(a)
            else:
                keep.append(a)
        plan.actions = keep
        plan.held_back.extend(held)
        return len(held)


def _of_kind(kind: Kind, duplicates: set[int]) -> Callable[[Delete], bool]:
    """Deletes of this kind, except removals of duplicates (those never empty a side)."""
    return lambda a: a.kind is kind and id(a) not in duplicates


def _psa_deletes_from(folder: FolderKind) -> Callable[[Delete], bool]:
    """PSA deletes driven by what this Exchange folder no longer shows."""
    return lambda a: isinstance(a, PsaDelete) and FOLDER_OF_KIND[a.kind] is folder


def _names(fields: tuple[str, ...]) -> str:
    return ", ".join(fields) if fields else "nothing"
