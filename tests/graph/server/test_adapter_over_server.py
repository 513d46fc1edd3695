"""The Graph adapter (exchanged/graph) against this server, for what only a faithful server shows:
bodies answered as HTML unless text is asked for, Entra ID's refusals of a secret, the granted
roles in a real token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchanged import errors
from exchanged.graph import GraphAccount
from exchanged.model import Appointment, FolderKind, Kind
from exchanged.ports import CheckResult, NewItem
from exchanged.testing.graph import Client, GraphTestServer
from exchanged.testing.graph.fixtures import CLIENT_ID, SECRET, open_graph_server, settings_for

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


async def test_a_multi_line_body_reads_back_as_written(tmp_path: Path) -> None:
    async with open_graph_server(tmp_path / "state") as server:
        settings = settings_for(server)
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
        settings = settings_for(server, client_secret=secret)
        account = GraphAccount(settings, now=lambda: T0)
        try:
            with pytest.raises(errors.AuthFailed) as refused:
                await account.mailbox("alice@example.test").zone()
            assert code in str(refused.value) and "Trace ID" not in str(refused.value)
            assert hint in (refused.value.hint or "")
        finally:
            await account.aclose()


async def check(server: GraphTestServer) -> dict[str, CheckResult]:
    settings = settings_for(server)
    account = GraphAccount(settings, now=lambda: T0)
    try:
        return {r.subject: r for r in await account.check(["alice@example.test"])}
    finally:
        await account.aclose()


async def test_check_names_a_missing_permission_and_the_mailbox_time_zone(tmp_path: Path) -> None:
    client = Client(CLIENT_ID, secrets=[SECRET])
    client.permissions.discard("Calendars.ReadWrite")
    async with open_graph_server(tmp_path / "denied", clients=[client]) as server:
        results = await check(server)
    assert results["login"].ok
    calendars = results["Calendars.ReadWrite"]
    assert not calendars.ok and calendars.message.startswith(
        "Calendars.ReadWrite is not granted (admin consent)"
    )
    assert results["Contacts.ReadWrite"].ok and results["Tasks.ReadWrite.All"].ok
    assert not results["alice@example.test"].ok
    assert "Calendars.ReadWrite is not granted" in results["alice@example.test"].message

    async with open_graph_server(tmp_path / "granted") as server:
        server.set_time_zone("alice@example.test", "W. Europe Standard Time")
        results = await check(server)
    assert all(r.ok for r in results.values()), results
    assert "W. Europe Standard Time" in results["alice@example.test"].message
