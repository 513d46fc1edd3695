"""sd_notify for ``Type=notify``: READY/RELOADING/STOPPING/STATUS and the watchdog.

A thin wrapper over ``systemd.daemon.notify`` (libsystemd's ``sd_notify``), which sends to whatever
datagram socket ``NOTIFY_SOCKET`` names, so the tests read the messages from their own socket.
Without ``NOTIFY_SOCKET`` (run by hand) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import time

import trio


def notify(message: str) -> bool:
    """Send one notification; False when not under a notify socket or when sending failed."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    from systemd import daemon  # imported late: it is C code that only matters under systemd

    try:
        return bool(daemon.notify(message))
    except OSError:
        return False  # a vanished notify socket must never take the daemon down


def _status_line(text: str) -> str:
    # STATUS= is one line; a newline would start a new (bogus) assignment
    return "STATUS=" + " ".join(text.split())


def ready(status: str | None = None) -> bool:
    return notify("READY=1" + (f"\n{_status_line(status)}" if status else ""))


def reloading(status: str | None = None) -> bool:
    # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = f"RELOADING=1\nMONOTONIC_USEC={usec}"
    return notify(msg + (f"\n{_status_line(status)}" if status else ""))


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\n{_status_line(status)}" if status else ""))


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


async def serve_watchdog(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ping WATCHDOG=1 from the trio loop itself, so a stuck loop stops pinging and gets restarted."""
    interval = watchdog_interval_s()
    task_status.started()
    if interval is None:
        await trio.sleep_forever()
    while True:
        watchdog()
        await trio.sleep(interval)  # type: ignore[arg-type]
