"""Helpers for tests: a started server, and exchangelib pointed at it with TLS verification."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from .server import DEFAULT_PASSWORD, EwsTestServer

MAILBOXES = ["alice@example.test", "bob@example.test"]
SERVICE_ACCOUNT = ("svc@example.test", "SECRET-svc")


def start_server(
    state_dir: str | os.PathLike[str],
    mailboxes: list[str] | None = None,
    service_accounts: dict[str, str] | None = None,
) -> EwsTestServer:
    """A started server (caller stops it); defaults: alice, bob, and svc@example.test:SECRET-svc."""
    server = EwsTestServer(
        state_dir,
        mailboxes or list(MAILBOXES),
        service_accounts if service_accounts is not None else dict([SERVICE_ACCOUNT]),
        password=DEFAULT_PASSWORD,
    )
    return server.start()


@contextmanager
def running_server(state_dir: str | os.PathLike[str], **kwargs: Any) -> Iterator[EwsTestServer]:
    server = start_server(state_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def open_ews_server(state_dir: str | os.PathLike[str], **kwargs: Any) -> AsyncIterator[EwsTestServer]:
    """For trio tests: start and stop the (threaded) server without blocking the event loop."""
    import trio

    server = await trio.to_thread.run_sync(lambda: start_server(state_dir, **kwargs))
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.stop)


def trust_ca(ca_file: str) -> None:
    """Make exchangelib verify TLS against `ca_file` (process-wide; see README.md next to this file)."""
    from exchangelib.protocol import BaseProtocol

    from ..tls import ca_adapter_class

    BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(ca_file)
