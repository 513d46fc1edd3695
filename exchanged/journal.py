"""journald's native protocol by hand: one entry is one datagram to ``/run/systemd/journal/socket``.

This replaces python-systemd's ``journal.send``, which is a C extension built from source (PyPI
has no wheel): it needed a compiler, the Python headers, libsystemd-dev and pkg-config on every
host that installs exchanged, and a fresh Debian 12 has none of them. The protocol is small and
documented (systemd's "Native Journal Protocol"):

- a field whose value has no newline is ``KEY=value\\n``;
- any other value is ``KEY\\n``, its length as a little-endian 64-bit integer, the bytes, ``\\n``;
- an entry larger than one datagram may carry (``EMSGSIZE``/``ENOBUFS``) goes into a sealed memfd
  whose descriptor is sent instead (``SCM_RIGHTS``), as libsystemd does.

Like libsystemd's ``sd_journal_send`` a send blocks while journald's queue is full; an ``OSError``
(no journald) reaches the caller.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def encode(fields: Mapping[str, str]) -> bytes:
    """One journal entry in the native format (field names must already be valid journal names)."""
    parts: list[bytes] = []
    for key, value in fields.items():
        name = key.encode("ascii")
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            parts.append(name + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name + b"=" + data + b"\n")
    return b"".join(parts)


def send(fields: Mapping[str, str], *, socket_path: str = JOURNAL_SOCKET) -> None:
    """Send one entry to journald (``socket_path`` is for the tests, which read it themselves)."""
    payload = encode(fields)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(payload, socket_path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
        _send_as_memfd(sock, payload, socket_path)


def _send_as_memfd(sock: socket.socket, payload: bytes, socket_path: str) -> None:
    fd = os.memfd_create("exchanged-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald accepts only a sealed memfd
        sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, socket_path)
    finally:
        os.close(fd)
