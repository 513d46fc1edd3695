"""sd_notify for ``Type=notify``: READY/RELOADING/STOPPING/STATUS and the watchdog.

The sd_notify protocol by hand: one datagram to the socket ``NOTIFY_SOCKET`` names (a path, or
``@name`` in the abstract namespace), so the tests read the messages from their own socket.
Without ``NOTIFY_SOCKET`` (run by hand) every call is a cheap no-op.

A send never freezes the daemon. libsystemd's ``sd_notify`` (through python-systemd, which holds
the GIL meanwhile) blocks while the manager's queue is full, and that stopped every thread of the
daemon when the reader fell behind (seen in the tests: a notify socket nobody read held 10
datagrams, then the next STATUS= froze the process). Here STATUS= and WATCHDOG=1 are sent without
waiting and dropped when the queue is full (the next one carries the news); READY, RELOADING and
STOPPING wait at most ``STATE_SEND_TIMEOUT_S`` in this thread only (a socket send releases the
GIL), since systemd acts on them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import trio

STATE_SEND_TIMEOUT_S = 2.0


def notify(message: str, *, wait_s: float = 0.0) -> bool:
    """Send one notification; False when not under a notify socket or when it could not be sent
    (socket gone, or its queue still full after ``wait_s`` seconds)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            if wait_s > 0:
                sock.settimeout(wait_s)
                sock.sendto(message.encode(), address)
            else:
                sock.sendto(message.encode(), socket.MSG_DONTWAIT, address)
    except OSError:  # gone, refused, or full (BlockingIOError, TimeoutError): never fatal
        return False
    return True


def _status_line(text: str) -> str:
    # STATUS= is one line; a newline would start a new (bogus) assignment
    return "STATUS=" + " ".join(text.split())


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\n{_status_line(status)}" if status else ""), wait_s=STATE_SEND_TIMEOUT_S)


def reloading(status: str | None = None) -> bool:
    # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    return notify(msg + (f"\n{_status_line(status)}" if status else ""), wait_s=STATE_SEND_TIMEOUT_S)


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\n{_status_line(status)}" if status else ""), wait_s=STATE_SEND_TIMEOUT_S)


def status(text: str) -> bool:
    return notify(_status_line(text))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is asked for."""
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # the watchdog is meant for another process (e.g. our parent)
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def serve_watchdog(healthy: Callable[[], bool] | None = None, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping WATCHDOG=1 from the trio loop itself, so a stuck loop stops pinging and gets restarted;
    and only while ``healthy()`` says the daemon is not stuck otherwise (a cycle that its timeout
    could not end), so that systemd restarts it rather than feed a process that no longer syncs."""
    interval = watchdog_interval_s()
    task_status.started()
    if interval is None:
        await trio.sleep_forever()
        return  # not reached (sleep_forever only ends by cancellation); narrows interval
    while True:
        if healthy is None or healthy():
            watchdog()
        await trio.sleep(interval)
