"""The quiet-cycle cache: what lets a cycle with nothing to do stop after the reads that show it.

Per mailbox, in memory only (a restart, or another node, reads everything once):

* ``memos``: what the last cycle that found nothing to do was made from (:class:`QuietMemo`);
* ``generations``: the state generation this runner's own commits produced;
* ``expansions``: the last expansion of the recurring series (:class:`Expansion`), so a noop
  cycle costs no CalendarView;
* ``written``: per folder, the items this runner wrote since the folder's last sync (created: as
  sent; updated: as read back); the next sync takes those still under the change key of that write
  without a GetItem.

The runner (sync/runner.py) does the reads and decides with these; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from exchanged.engine import UserSettings
from exchanged.model import ExchangeItem, FolderKind, Kind, Window
from exchanged.ports import FolderState

EXPANSION_MAX_AGE = timedelta(hours=6)  # re-expand recurring series at least this often


@dataclass(slots=True)
class Expansion:
    sync_state: str | None
    at: datetime
    window: tuple[datetime, datetime]
    items: list[ExchangeItem]

    def holds(self, sync_state: str | None, win: Window) -> bool:
        """Still the expansion of this calendar state, covering this window, and young enough."""
        return (self.sync_state == sync_state and self.window[0] <= win.past_start
                and win.recurring_end <= self.window[1] and win.now - self.at < EXPANSION_MAX_AGE)


@dataclass(slots=True)
class QuietMemo:
    """What the last cycle of a mailbox that found nothing to do was made from. While none of it
    changes, the next plan would be empty too, so a cycle may stop after the reads that show it:
    one SyncFolderItems per folder with no changes, the same state generation, the same recurring
    expansion, the same PSA change token, and a clock before ``until`` (``engine.stable_until``).

    Only the folders' sync states are kept, not the mappings and mirror: a node holds next to
    nothing per user between cycles, and a cycle that finds a change loads the state then."""

    folders: dict[FolderKind, tuple[str | None, str | None]]  # sync state, server identity
    generation: int
    token: object  # the PSA connector's change_token, read before the records were
    occurrences: list[ExchangeItem]
    settings: UserSettings
    kinds: frozenset[Kind]
    until: datetime | None

    def matches(self, settings: UserSettings, kinds: frozenset[Kind], server_identity: str) -> bool:
        """Made for these settings and kinds, from folders of this server (the generation is the
        runner's to compare: it is a read)."""
        if self.settings != settings or self.kinds != kinds:
            return False
        return not (server_identity and any(ident not in (None, server_identity)
                                            for _, ident in self.folders.values()))


@dataclass(slots=True)
class QuietCache:
    memos: dict[str, QuietMemo] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    expansions: dict[str, Expansion] = field(default_factory=dict)
    written: dict[str, dict[FolderKind, dict[str, ExchangeItem]]] = field(default_factory=dict)

    def remember(self, name: str, memo: QuietMemo) -> None:
        self.memos[name] = memo

    def written_in(self, name: str, folder: FolderKind, commit: bool) -> dict[str, ExchangeItem] | None:
        """What this runner wrote in the folder since its last sync (a dry run leaves it)."""
        mine = self.written.get(name)
        if mine is None:
            return None
        if not commit:
            return mine.get(folder)
        known = mine.pop(folder, None)
        if not mine:
            del self.written[name]
        return known

    def fresh_expansion(self, name: str, kinds: frozenset[Kind], calendar: FolderState | None,
                        win: Window, memo: QuietMemo) -> list[ExchangeItem] | None:
        """The occurrences of the last quiet cycle if its expansion still holds for this window
        (the calendar did not change), else None."""
        if Kind.IMPORTED not in kinds:
            return memo.occurrences
        cached = self.expansions.get(name)
        if cached is None:
            return memo.occurrences if not memo.occurrences else None  # no series then, none now
        if (cached.items is memo.occurrences and calendar is not None
                and cached.holds(calendar.sync_state, win)):
            return cached.items
        return None


__all__ = ["EXPANSION_MAX_AGE", "Expansion", "QuietCache", "QuietMemo"]
