"""The Graph adapter (exchanged/graph) against this server, for what only a faithful server shows:
Graph answers bodies as HTML unless asked for text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchanged import errors
from exchanged.graph import GraphAccount, GraphSettings
from exchanged.model import Appointment, FolderKind, Kind
from exchanged.ports import NewItem
from exchanged.testing.graph import Client
from exchanged.testing.graph.fixtures import CLIENT_ID, SECRET, TENANT, open_graph_server

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


async def test_a_multi_line_body_reads_back_as_written(tmp_path: Path) -> None:
    async with open_graph_server(tmp_path / "state") as server:
        settings = GraphSettings(
            graph_url=server.url,
            login_url=server.login_url,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=SECRET,
            ca_bundle=server.ca_file,
        )
        account = GraphAccount(settings, now=lambda: T0)
        try:
            mailbox = account.mailbox("alice@example.test", time_zone="UTC")
            body = "Printer <on> fire\n\n  - call Bob & Alice\nthen report"
            start = T0 + timedelta(days=1)
            payload = Appointment(
                subject="Visit", start=start, end=start + timedelta(hours=1), body=body, location="HQ"
            )
            new = NewItem(Kind.APPOINTMENT, "appointment:1", payload)
            [created] = await mailbox.create(FolderKind.CALENDAR, [new])
            assert not hasattr(created, "code"), created
            pages = [page async for page in mailbox.changes(FolderKind.CALENDAR, None)]
            [item] = [i for page in pages for i in page.upserted]
            assert item.psa_key == "appointment:1"
            assert item.payload.body == body  # type: ignore[union-attr]
        finally:
            await account.aclose()


@pytest.mark.parametrize(
    ("secret", "code", "hint"),
    [
        ("wrong", "AADSTS7000215", "secret is wrong or expired"),
        ("old", "AADSTS7000222", "secret is wrong or expired"),
    ],
)
async def test_a_refused_secret_is_named_with_what_to_do(
    tmp_path: Path, secret: str, code: str, hint: str
) -> None:
    clients = [Client(CLIENT_ID, secrets=[SECRET], expired_secrets=["old"])]
    async with open_graph_server(tmp_path / "state", clients=clients) as server:
        settings = GraphSettings(
            graph_url=server.url,
            login_url=server.login_url,
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=secret,
            ca_bundle=server.ca_file,
        )
        account = GraphAccount(settings, now=lambda: T0)
        try:
            with pytest.raises(errors.AuthFailed) as refused:
                await account.mailbox("alice@example.test").zone()
            assert code in str(refused.value) and "Trace ID" not in str(refused.value)
            assert hint in (refused.value.hint or "")
        finally:
            await account.aclose()
