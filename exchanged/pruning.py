"""Journal pruning: ``exchangectl history`` entries older than ``state.history_days`` go.

The daemon runs ``HistoryPruner.serve`` beside its cycles: one round at the start and one every
``PRUNE_EVERY_S``. A failing round is logged and tried again at the next one (the journal only
grows meanwhile); nothing else depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
import trio

from exchanged.errors import present
from exchanged.status import now

if TYPE_CHECKING:
    from exchanged.ports import StateStore

log = structlog.get_logger("exchanged.daemon")

PRUNE_EVERY_S = 6 * 3600.0  # the journal is pruned (state.history_days) at start and this often


class HistoryPruner:
    """Prunes the state store the daemon has now (``state``) by the days it is configured with now
    (``days``): both change with a reload."""

    def __init__(self, state: Callable[[], StateStore | None], days: Callable[[], int]) -> None:
        self._state = state
        self._days = days

    async def serve(self) -> None:
        while True:
            await self.prune()
            await trio.sleep(PRUNE_EVERY_S)

    async def prune(self) -> int:
        state = self._state()
        if state is None:
            return 0
        days = self._days()
        try:
            pruned = await state.prune_history(now() - timedelta(days=days))
        except Exception as exc:  # the next round tries again; the journal only grows meanwhile
            log.warning("cannot prune the history", error=present(exc).line())
            return 0
        if pruned:
            log.info("history pruned", entries=pruned, older_than_days=days)
        return pruned


__all__ = ["PRUNE_EVERY_S", "HistoryPruner"]
