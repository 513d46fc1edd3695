"""Signals that arrive before the daemon's trio signal receiver is open: remembered, not fatal.

systemd may stop a unit at any moment, also in the first second after its start. Until
``Daemon.run`` opens trio's signal receiver, SIGTERM/SIGINT/SIGHUP would take their default action
(killed, no STOPPING=1, nothing flushed) or, ignored, be lost. ``remember_early()`` is called first
thing by ``exchanged run`` (before the heavy imports) and installs a handler that only notes the
signal; ``Daemon.run`` takes the notes once its receiver is open and stops cleanly (a SIGHUP
before the start is moot: the config was just read). When the receiver closes it restores this
handler, and once ``trio.run`` has returned ``ignore_from_now()`` ignores them: a repeated SIGTERM
in the last moments of a stop is never fatal.
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


def ignore_from_now() -> None:
    """After the daemon's run: a repeated SIGTERM in the last moments of a clean stop is ignored.
    (Python's shutdown sets signals with a Python handler back to their default action, which
    would kill the process and turn exit 0 into "killed by SIGTERM"; an ignored one stays so.)"""
    for signum in CAUGHT:
        signal.signal(signum, signal.SIG_IGN)


def take_pending() -> list[int]:
    """The signals noted so far, oldest first; forgets them."""
    taken = list(_pending)
    _pending.clear()
    return taken


__all__ = ["CAUGHT", "ignore_from_now", "remember_early", "take_pending"]
