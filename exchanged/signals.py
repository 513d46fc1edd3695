"""Signals that arrive before the daemon's trio signal receiver is open: remembered, not fatal.

systemd may stop a unit at any moment, also in the first second after its start. Until
``Daemon.run`` opens trio's signal receiver, SIGTERM/SIGINT/SIGHUP would take their default action
(killed, no STOPPING=1, nothing flushed) or, ignored, be lost. ``remember_early()`` is called first
thing by ``exchanged run`` (before the heavy imports) and installs a handler that only notes the
signal; ``Daemon.run`` takes the notes once its receiver is open and stops cleanly (a SIGHUP
before the start is moot: the config was just read). When the receiver closes it restores this
handler, so a signal in the last moments of a stop is noted and ignored, never fatal.
"""

from __future__ import annotations

import signal
from types import FrameType

CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_pending: list[int] = []


def _remember(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def remember_early() -> None:
    """Note SIGTERM/SIGINT/SIGHUP instead of dying of them (idempotent)."""
    for signum in CAUGHT:
        signal.signal(signum, _remember)


def take_pending() -> list[int]:
    """The signals noted so far, oldest first; forgets them."""
    taken = list(_pending)
    _pending.clear()
    return taken


__all__ = ["CAUGHT", "remember_early", "take_pending"]
