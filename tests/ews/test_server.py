"""Public folders, name resolution, persistence across restarts and the command line."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from exchangelib import (
    IMPERSONATION,
    NTLM,
    Account,
    CalendarItem,
    Configuration,
    Contact,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
)
from exchangelib.errors import ErrorSyncFolderNotFound
from exchangelib.folders import Contacts

from exchanged.testing.ews import EwsTestServer
from exchanged.testing.ews.fixtures import SERVICE_ACCOUNT, running_server

from .conftest import EwsTarget

UTC = EWSTimeZone("UTC")
T0 = EWSDateTime(2026, 12, 7, 9, 0, tzinfo=UTC)


def test_public_folder_contacts(account, emulator: EwsTestServer) -> None:
    root = account.public_folders_root
    folder = Contacts(parent=root, name="Company contacts")
    folder.save()
    try:
        Contact(
            account=account, folder=folder, display_name="Front desk", given_name="Front", surname="Desk"
        ).save()
        assert [c.display_name for c in folder.all()] == ["Front desk"]
        assert "Company contacts" in [f.name for f in root.children]
        with pytest.raises(ErrorSyncFolderNotFound):
            list(folder.sync_items())
    finally:
        folder.delete()


def test_resolve_names(ews: EwsTarget, account, emulator: EwsTestServer) -> None:
    found = account.protocol.resolve_names(["bob@example.test"])
    assert [m.email_address for m in found] == ["bob@example.test"]


def _account(server: EwsTestServer) -> Account:
    config = Configuration(
        service_endpoint=server.url, credentials=Credentials(*SERVICE_ACCOUNT), auth_type=NTLM
    )
    return Account("alice@example.test", config=config, autodiscover=False, access_type=IMPERSONATION)


def test_restart_keeps_items_change_keys_and_sync_states(
    tmp_path: Path, ews: EwsTarget, restore_adapter: None
) -> None:
    if ews.server is None:
        pytest.skip("restarts the test server")
    state_dir = tmp_path / "ews"
    with running_server(state_dir) as server:
        from exchangelib.protocol import BaseProtocol

        from exchanged.testing.tls import ca_adapter_class

        BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
        account = _account(server)
        item = CalendarItem(
            account=account,
            folder=account.calendar,
            subject="durable",
            start=T0,
            end=T0 + dt.timedelta(hours=1),
        )
        item.save(send_meeting_invitations="SendToNone")
        list(account.calendar.sync_items())
        state = account.calendar.item_sync_state
        ca_pem = Path(server.ca_file).read_bytes()
    with running_server(state_dir) as server:
        assert Path(server.ca_file).read_bytes() == ca_pem
        BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
        account = _account(server)
        got = account.calendar.get(id=item.id)
        assert (got.subject, got.changekey) == ("durable", item.changekey)
        assert list(account.calendar.sync_items(sync_state=state)) == []


def test_command_line_prints_url_and_ca_then_serves(tmp_path: Path, emulator: EwsTestServer) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exchanged.testing.ews",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "cli"),
            "--mailbox",
            "alice@example.test",
            "--mailbox",
            "bob@example.test",
            "--service-account",
            "svc@example.test:SECRET",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("https://localhost:") and info["url"].endswith("/EWS/Exchange.asmx")
        base = info["url"].rsplit("/EWS/", 1)[0]
        r = requests.post(
            base + "/__emulator/faults",
            json={"throttle_next": 1, "back_off_ms": 250},
            verify=info["ca_file"],
            timeout=10,
        )
        assert r.status_code == 200
        stats = requests.get(base + "/__emulator/stats", verify=info["ca_file"], timeout=10).json()
        assert stats["requests"] == {}
        bad = requests.post(
            base + "/__emulator/faults", json={"throttle_next": -1}, verify=info["ca_file"], timeout=10
        )
        assert bad.status_code == 400 and "throttle_next" in bad.json()["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0


async def test_trio_fixture_serves_exchangelib_from_a_worker_thread(tmp_path: Path) -> None:
    import trio
    from exchangelib.protocol import BaseProtocol

    from exchanged.testing.ews import ca_adapter_class
    from exchanged.testing.ews.fixtures import open_ews_server

    saved = BaseProtocol.HTTP_ADAPTER_CLS
    async with open_ews_server(tmp_path / "trio") as server:
        BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
        try:
            name = await trio.to_thread.run_sync(lambda: _account(server).calendar.name)
        finally:
            BaseProtocol.HTTP_ADAPTER_CLS = saved
    assert name == "Calendar"


def test_command_line_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "exchanged.testing.ews",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path / "s"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot start on port {port}" in done.stderr and "Traceback" not in done.stderr
