"""logs.py (formats, journal fields, secret redaction) and sdnotify.py against a real datagram socket."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from exchanged import logs, sdnotify


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logs._secrets.clear()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logs._ToStructlog):
            root.removeHandler(handler)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_notify_messages(notify_socket: socket.socket) -> None:
    assert sdnotify.ready("3 users,\n1 syncing")
    assert sdnotify.reloading()
    assert sdnotify.stopping()
    assert sdnotify.status("idle")
    got = drain(notify_socket)
    assert got[0] == "READY=1\nSTATUS=3 users, 1 syncing"
    assert got[1].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(got[1].split("MONOTONIC_USEC=")[1]) > 0
    assert got[2] == "STOPPING=1"
    assert got[3] == "STATUS=idle"


def test_a_full_notify_queue_never_blocks_the_daemon(notify_socket: socket.socket,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A manager that stops reading: STATUS= is dropped at once, READY waits a bounded time (in
    this thread only), and both are sent again once the queue has room."""
    monkeypatch.setattr(sdnotify, "STATE_SEND_TIMEOUT_S", 0.05)
    sent = 0
    while sdnotify.status(f"line {sent}"):  # fills the queue (net.unix.max_dgram_qlen)
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert sent > 0
    assert sdnotify.status("one more") is False
    assert sdnotify.ready("up") is False
    got = drain(notify_socket)
    assert len(got) == sent and got[-1] == f"STATUS=line {sent - 1}"
    assert sdnotify.ready("up") is True
    assert drain(notify_socket) == ["READY=1\nSTATUS=up"]


def test_an_abstract_notify_socket_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"exchanged-test-{os.getpid()}"
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert drain(sock) == ["READY=1"]
    finally:
        sock.close()


def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert sdnotify.watchdog_interval_s() == 1.0
    with trio.move_on_after(3.5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sdnotify.serve_watchdog)
    assert drain(notify_socket) == ["WATCHDOG=1"] * 4


async def test_no_watchdog_when_not_asked(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sdnotify.serve_watchdog)
    assert drain(notify_socket) == []
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert sdnotify.watchdog_interval_s() is None


def test_json_lines_with_secrets_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secret("Sup3r-Secret")
    logs.configure_logging("json", "info")
    log = structlog.get_logger("t")
    log.info("login failed", mailbox="a@x.test", detail="password Sup3r-Secret refused",
             nested={"p": ["Sup3r-Secret"]})
    log.debug("not shown")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["event"] == "login failed" and doc["mailbox"] == "a@x.test" and doc["level"] == "info"
    assert doc["detail"] == "password ******** refused"
    assert doc["nested"] == {"p": ["********"]}
    assert "Sup3r-Secret" not in lines[0]


def test_secret_in_exception_text_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.register_secret("Hunter2-xyz")
    logs.configure_logging("json", "info")
    try:
        raise ValueError("bad password Hunter2-xyz")
    except ValueError:
        structlog.get_logger("t").exception("cycle crashed")
    err = capsys.readouterr().err
    assert "Hunter2-xyz" not in err and "bad password ********" in err


def test_journal_fields() -> None:
    fields = logs.JournalRenderer().fields(
        {"event": "cycle done", "level": "warning", "mailbox": "a@x.test", "cycle_id": "c1",
         "reason": "scheduled", "counts": {"exported": 2}, "timestamp": "t", "bad-key": 1, "none": None}
    )
    assert fields["PRIORITY"] == "4"
    assert fields["MAILBOX"] == "a@x.test" and fields["CYCLE_ID"] == "c1" and fields["REASON"] == "scheduled"
    assert fields["COUNTS"] == '{"exported": 2}'
    assert fields["BAD_KEY"] == "1"
    assert "NONE" not in fields and "TIMESTAMP" not in fields
    assert fields["MESSAGE"].startswith("cycle done mailbox=a@x.test")
    assert fields["SYSLOG_IDENTIFIER"] == "exchanged"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match=r"logging\.format"):
        logs.configure_logging("xml")
