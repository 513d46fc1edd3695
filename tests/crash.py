"""Crash-at-every-step harness (tests only): number every side effect of the daemon's adapters and
kill the process right after step k.

The test entry point (``python -m tests.daemon_entry --crash-after K --crash-log PATH``) opens the
daemon's adapters through openers that wrap each one (:func:`count_account`, :func:`count_psa`,
:func:`count_state`), at start and at every reload; the production daemon knows nothing of it:

* ``--crash-after k`` (k >= 1): after the k-th side effect has *completed*, the process
  ends with ``os._exit(137)`` at once: no cleanup, no flush, no reply processed, exactly like
  SIGKILL right after the write reached the server or the database. ``0``: count only.
* ``--crash-log path``: one line per step, ``k<TAB>what<TAB>detail``, written and
  fsynced before the crash, so the test knows what step k was.

A side effect is each Exchange write call (create, update, delete: one EWS request each, which the
tests check against the EWS server's request counts), each PSA ``apply`` (one transaction) and each
state-store write (commit, outcome, reset, known mark, lease).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

CRASH_EXIT = 137  # what a shell reports for SIGKILL

MAILBOX_WRITES = ("create", "update", "delete")
PSA_WRITES = ("apply",)
STATE_WRITES = ("commit", "record_outcome", "reset_user", "mark_known", "try_lease", "release_lease")


class StepCounter:
    def __init__(self, crash_after: int, log_path: str | None) -> None:
        self.crash_after = crash_after
        self.log_path = log_path
        self.steps = 0

    def done(self, what: str, detail: str) -> None:
        self.steps += 1
        if self.log_path:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{self.steps}\t{what}\t{detail}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.crash_after and self.steps >= self.crash_after:
            os._exit(CRASH_EXIT)


class _Counted:
    """Delegates everything to ``inner``; the named async methods count one step once they return."""

    def __init__(self, inner: Any, counter: StepCounter, side: str, methods: tuple[str, ...]) -> None:
        self._inner = inner
        self._counter = counter
        self._side = side
        self._methods = methods

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name not in self._methods:
            return value
        return self._counting(name, value)

    def _counting(self, name: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            result = await call(*args, **kwargs)
            self._counter.done(f"{self._side}.{name}", _detail(args))
            return result

        return counted


class _CountedAccount(_Counted):
    def mailbox(self, address: str, *, time_zone: str | None = None) -> Any:
        return _Counted(self._inner.mailbox(address, time_zone=time_zone), self._counter, "exchange",
                        MAILBOX_WRITES)

    def public_contacts(self) -> Any:
        return _Counted(self._inner.public_contacts(), self._counter, "exchange", MAILBOX_WRITES)


def _detail(args: tuple[Any, ...]) -> str:
    parts = []
    for a in args[:1]:
        parts.append(getattr(a, "value", None) or (a if isinstance(a, str) else type(a).__name__))
    return " ".join(str(p) for p in parts)


def count_account(account: Any, counter: StepCounter) -> Any:
    """``account`` with each Exchange write (create, update, delete) counted."""
    return _CountedAccount(account, counter, "exchange", ())


def count_psa(psa: Any, counter: StepCounter) -> Any:
    """``psa`` with each ``apply`` (one transaction) counted."""
    return _Counted(psa, counter, "psa", PSA_WRITES)


def count_state(state: Any, counter: StepCounter) -> Any:
    """``state`` with each state-store write counted."""
    return _Counted(state, counter, "state", STATE_WRITES)


def read_log(path: str | os.PathLike[str]) -> list[tuple[int, str, str]]:
    """The steps a run logged: ``[(k, what, detail), ...]``."""
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - tiny file, read once
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        k, what, detail = [*line.split("\t"), "", ""][:3]
        out.append((int(k), what, detail))
    return out


__all__ = ["CRASH_EXIT", "StepCounter", "count_account", "count_psa", "count_state", "read_log"]
