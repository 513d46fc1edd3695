"""Leases: which node syncs a user (PostgreSQL state: several nodes share the users).

A cycle runs only under this node's lease on its user (:func:`run_leased`): taken before the
cycle, renewed every third of its TTL while it runs, released after it (shielded). A lost lease
(another node took the user over, or renewing failed for two thirds of the TTL) cancels the
cycle before the lease can run out under writes. The node's name (:func:`node_identity`) survives
a restart under systemd, so a restarted daemon takes its own leases back at once.
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
import trio

from exchanged.errors import present
from exchanged.model import CycleOutcome

if TYPE_CHECKING:
    from exchanged.ports import StateStore

log = structlog.get_logger("exchanged.daemon")

LEASE_TTL_S = 300.0  # a dead node's users are taken over after this; renewed every third of it
LEASE_TTL_ENV = "EXCHANGED_LEASE_TTL_S"  # overrides LEASE_TTL_S (faster takeover; the multi-node test)
MIN_LEASE_TTL_S = 3.0
RELEASE_TIMEOUT_S = 1.0  # releasing the lease after a cycle may take at most this long


class LeaseUnavailable(Exception):
    """The state store could not be asked for the lease (``cause``): no lease, no cycle."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


NODE_ID_FILE = "node-id"


def node_identity() -> tuple[str, int | None]:
    """This process's lease owner name, and the descriptor that keeps it ours.

    Under systemd (``StateDirectory=``, so ``$STATE_DIRECTORY`` is set) the name is kept in
    ``node-id`` there and locked (flock) while the daemon runs: a daemon restarted after a crash
    is the same node and renews the leases it held at once, instead of every one of its users
    being skipped until the dead process's leases expire (5 minutes). A second daemon finding the
    file locked (two units sharing a state directory) takes a name of its own for this process.
    Without a state directory the name is per process, as before.
    """
    host = socket.gethostname()
    base = os.environ.get("STATE_DIRECTORY", "").split(":")[0].strip()
    if base:
        fd = -1
        try:
            fd = os.open(os.path.join(base, NODE_ID_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            token = os.read(fd, 200).decode("ascii", "replace").strip()
            if not token.isalnum():
                token = uuid.uuid4().hex[:12]
                os.ftruncate(fd, 0)
                os.pwrite(fd, (token + "\n").encode(), 0)
                os.fsync(fd)
            return f"{host}:{token}", fd
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            log.info("node id is per process", state_directory=base, reason=str(exc))
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}", None


def lease_ttl_s() -> float:
    """``LEASE_TTL_S``, or ``EXCHANGED_LEASE_TTL_S`` (seconds, at least ``MIN_LEASE_TTL_S``)."""
    raw = os.environ.get(LEASE_TTL_ENV, "").strip()
    if not raw:
        return LEASE_TTL_S
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return max(MIN_LEASE_TTL_S, value)
    except ValueError:
        log.warning("not a number of seconds: the default lease TTL applies", variable=LEASE_TTL_ENV,
                    value=raw, default_s=LEASE_TTL_S)
        return LEASE_TTL_S


async def run_leased(state: StateStore, mailbox: str, node: str, ttl_s: float,
                     cycle: Callable[[], Awaitable[CycleOutcome]]) -> CycleOutcome:
    """``cycle()`` under ``node``'s lease on ``mailbox``; "skipped" when another node holds it.

    Raises :class:`LeaseUnavailable` when the state store fails to answer for the lease."""
    try:
        granted = await state.try_lease(mailbox, node, ttl_s)
    except Exception as exc:  # no lease, no cycle: another node may be syncing this user
        raise LeaseUnavailable(exc) from exc
    if not granted:
        log.info("cycle skipped: another node holds this user's lease", mailbox=mailbox, this_node=node)
        return CycleOutcome(result="skipped", error="another exchanged node is syncing this user")
    lost: str | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def renew() -> None:
                nonlocal lost
                renewed = trio.current_time()
                while True:
                    await trio.sleep(ttl_s / 3)
                    try:
                        if not await state.try_lease(mailbox, node, ttl_s):
                            lost = "another exchanged node took over this user mid-cycle"
                        renewed = trio.current_time()
                    except Exception as exc:  # a hiccup: the TTL leaves room for one more try
                        log.warning("cannot renew the lease", mailbox=mailbox, error=present(exc).line())
                        if trio.current_time() - renewed >= ttl_s * 2 / 3:
                            # stop before the lease can run out under a cycle that still writes
                            lost = (f"the lease could not be renewed ({present(exc).line()}); "
                                    "stopped before another node could take this user over")
                    if lost is not None:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(renew)
            outcome = await cycle()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT_S):
            try:
                await state.release_lease(mailbox, node)
            except Exception as exc:
                log.warning("cannot release the lease", mailbox=mailbox, error=present(exc).line())
    if lost is not None:
        log.error("cycle stopped: lease lost", mailbox=mailbox, error=lost)
        return CycleOutcome(result="error", reason="lease_lost", error=f"{mailbox}: {lost}")
    return outcome


__all__ = ["LEASE_TTL_ENV", "LEASE_TTL_S", "MIN_LEASE_TTL_S", "NODE_ID_FILE", "LeaseUnavailable",
           "lease_ttl_s", "node_identity", "run_leased"]
