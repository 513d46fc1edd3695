"""TLS failures through the real adapter stack (exchangelib, requests, our trust store adapter)
against a loopback TLS listener with trustme certificates: each one in words an operator can act on."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from exchanged import errors
from exchanged.exchange import ExchangeSettings, open_account
from exchanged.model import FolderKind

ALICE = "alice@example.test"


@contextlib.contextmanager
def tls_listener(leaf: trustme.LeafCert, *, reply: bytes = b"") -> Iterator[int]:
    """Accepts connections, attempts the TLS handshake with ``leaf``, then sends ``reply``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ssl.SSLError):
                tls = ctx.wrap_socket(conn, server_side=True)
                if reply:
                    _read_request(tls)
                    tls.sendall(reply)
                tls.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        sock.close()
        thread.join(timeout=5)


def _read_request(tls: ssl.SSLSocket) -> None:
    """The whole request, headers and body: answering and closing with part of it unread makes the
    kernel reset the connection, and the client then sees a dropped connection instead of the
    answer (the flake of test_trusted_through_the_bundle_only under load, when the body came in a
    later segment than the headers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(body) < length:
        chunk = tls.recv(65536)
        if not chunk:
            return
        body += chunk


async def tls_error(port: int, ca_bundle: str | None) -> errors.TlsError:
    acc = open_account(ExchangeSettings(address="localhost", port=port, ca_bundle=ca_bundle,
                                        username="svc", password="pw", version="Exchange2016"))
    try:
        with pytest.raises(errors.TlsError) as info:
            await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
    finally:
        await acc.aclose()
    return info.value


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_untrusted_issuer(tmp_path: Path) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    with tls_listener(ca.issue_cert("localhost")) as port:
        err = await tls_error(port, ca_file(other_ca, tmp_path))
    shown = errors.present(err)
    assert shown.message.startswith(f"{ALICE}: FindItem by PSA key calendar: certificate not trusted")
    assert "server.ca_bundle" in shown.hint


async def test_trusted_through_the_bundle_only(tmp_path: Path) -> None:
    """The same listener passes the TLS check once its CA is in server.ca_bundle: what fails then
    is the login (the listener answers 401), no TLS error any more."""
    ca = trustme.CA()
    unauthorized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with tls_listener(ca.issue_cert("localhost"), reply=unauthorized) as port:
        acc = open_account(ExchangeSettings(address="localhost", port=port, ca_bundle=ca_file(ca, tmp_path),
                                            username="svc", password="pw", version="Exchange2016"))
        try:
            with pytest.raises(errors.AuthFailed):
                await acc.mailbox(ALICE).find_by_psa_keys(FolderKind.CALENDAR, ["x"])
        finally:
            await acc.aclose()


async def test_expired_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    past = datetime.now(UTC) - timedelta(days=30)
    leaf = ca.issue_cert("localhost", not_before=past - timedelta(days=365), not_after=past)
    with tls_listener(leaf) as port:
        err = await tls_error(port, ca_file(ca, tmp_path))
    assert "has expired" in err.message and "renew" in err.hint


async def test_wrong_host_name(tmp_path: Path) -> None:
    ca = trustme.CA()
    with tls_listener(ca.issue_cert("mail.other.test")) as port:
        err = await tls_error(port, ca_file(ca, tmp_path))
    assert "issued for another host name" in err.message and "server.address" in err.hint
