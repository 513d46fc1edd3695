"""Helpers for tests and benchmarks: a started Graph test server with one app registration."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from .auth import Client
from .server import GraphTestServer

if TYPE_CHECKING:
    from exchanged.graph.client import GraphSettings

TENANT = "contoso.example"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cret-value"
MAILBOXES = ["alice@example.test", "bob@example.test"]


def start_server(
    state_dir: str | os.PathLike[str],
    mailboxes: list[str] | None = None,
    clients: list[Client] | None = None,
    **kwargs: Any,
) -> GraphTestServer:
    """A started server (the caller stops it); defaults: tenant contoso.example, one app
    CLIENT_ID/SECRET with the default permissions, mailboxes alice and bob. ``kwargs`` go to
    GraphTestServer (``store=ews_server.store`` to share an EWS test server's mailboxes)."""
    return GraphTestServer(
        state_dir,
        mailboxes or list(MAILBOXES),
        kwargs.pop("tenant", TENANT),
        clients if clients is not None else [Client(CLIENT_ID, secrets=[SECRET])],
        **kwargs,
    ).start()


@contextmanager
def running_server(state_dir: str | os.PathLike[str], **kwargs: Any) -> Iterator[GraphTestServer]:
    server = start_server(state_dir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def open_graph_server(
    state_dir: str | os.PathLike[str], **kwargs: Any
) -> AsyncIterator[GraphTestServer]:
    """For trio tests: start and stop the (threaded) server without blocking the event loop."""
    import trio

    server = await trio.to_thread.run_sync(lambda: start_server(state_dir, **kwargs))
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.stop)


def settings_for(
    server: GraphTestServer,
    *,
    tenant_id: str = TENANT,
    client_id: str = CLIENT_ID,
    client_secret: str = SECRET,
    **kwargs: Any,
) -> GraphSettings:
    """The Graph adapter's settings for this server and app registration, trusting the server's CA;
    ``kwargs`` set the other fields (``enabled_mailboxes``, ``request_deadline_s``, ...)."""
    from exchanged.graph.client import GraphSettings

    return GraphSettings(
        graph_url=server.url,
        login_url=server.login_url,
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        ca_bundle=server.ca_file,
        **kwargs,
    )
