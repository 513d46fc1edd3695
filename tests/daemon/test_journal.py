"""journald's native protocol, read back from a real datagram socket the way journald parses it."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from exchanged import journal, logs


def parse(payload: bytes) -> dict[str, str]:
    """The journal's reading of one entry (systemd's journald-native.c, in short)."""
    fields: dict[str, str] = {}
    rest = payload
    while rest:
        line, sep, after = rest.partition(b"\n")
        assert sep, f"unterminated field {rest[:40]!r}"
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            value = after[8 : 8 + size]
            assert after[8 + size : 9 + size] == b"\n"
            fields[line.decode()] = value.decode()
            rest = after[9 + size :]
    return fields


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "journal.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def receive(sock: socket.socket) -> dict[str, str]:
    data, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    if not ancdata:
        return parse(data)
    assert data == b""  # the entry is in the memfd, nothing in the datagram
    level, kind, raw = ancdata[0]
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = array.array("i", raw[:4])[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        # journald refuses a memfd the sender could still change
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        size = os.fstat(fd).st_size
        return parse(os.pread(fd, size, 0))
    finally:
        os.close(fd)


def test_plain_and_multiline_fields(journald: tuple[str, socket.socket]) -> None:
    path, sock = journald
    journal.send({"MESSAGE": "cycle failed\nTraceback: boom", "MAILBOX": "a@x.test", "EMPTY": ""},
                 socket_path=path)
    assert receive(sock) == {"MESSAGE": "cycle failed\nTraceback: boom", "MAILBOX": "a@x.test", "EMPTY": ""}


Journald = tuple[str, socket.socket]


def test_an_entry_larger_than_a_datagram_goes_through_a_sealed_memfd(journald: Journald) -> None:
    path, sock = journald
    big = "x" * (4 << 20)  # far above the socket's send buffer: EMSGSIZE on a plain send
    journal.send({"MESSAGE": big, "CYCLE_ID": "c1"}, socket_path=path)
    assert receive(sock) == {"MESSAGE": big, "CYCLE_ID": "c1"}


def test_no_journald_is_an_error_for_the_caller(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        journal.send({"MESSAGE": "x"}, socket_path=str(tmp_path / "absent.socket"))


def test_the_journal_renderer_sends_structured_fields(journald: tuple[str, socket.socket]) -> None:
    path, sock = journald
    renderer = logs.JournalRenderer(socket_path=path)
    structlog.configure(processors=[structlog.processors.add_log_level, renderer])
    try:
        structlog.get_logger().warning("cycle done", mailbox="a@x.test", cycle_id="c7")
    finally:
        structlog.reset_defaults()
    entry = receive(sock)
    assert entry["MAILBOX"] == "a@x.test" and entry["CYCLE_ID"] == "c7"
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "exchanged"
    assert entry["MESSAGE"].startswith("cycle done ")
