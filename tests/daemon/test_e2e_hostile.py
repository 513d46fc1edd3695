"""The real daemon process behind ``tests.proxy.HostileProxy`` (issue #14): the EWS test server's
answers cut short after a state loss, and trickled; the sql PSA, the SQLite state, the SMTP sink.
No duplicate, and `sync --wait` answers (with the error) instead of hanging."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from exchanged.exchange import EwsAccount, ExchangeSettings
from exchanged.model import FolderKind
from tests.daemon.ews_daemon import PASSWORD, SVC, ews_daemon
from tests.proxy import proxy_for

pytestmark = pytest.mark.e2e

ALICE = "alice@example.test"


def keyed_items(ews: Any) -> Counter[tuple[str, str]]:
    """(folder, PSA key) -> how many items carry it in alice's mailbox (EWS, not through the proxy)."""

    async def read() -> Counter[tuple[str, str]]:
        acc = EwsAccount(ExchangeSettings(address="localhost", port=ews.port, ca_bundle=ews.ca_file,
                                          username=SVC, password=PASSWORD, version="Exchange2016",
                                          enabled_mailboxes=(ALICE,)))
        try:
            found: Counter[tuple[str, str]] = Counter()
            for folder in (FolderKind.CALENDAR, FolderKind.TASKS, FolderKind.CONTACTS):
                async for page in acc.mailbox(ALICE).changes(folder, None):
                    found.update((folder.value, i.psa_key) for i in page.upserted if i.psa_key)
            return found
        finally:
            await acc.aclose()

    return trio.run(read)


def test_cut_getitem_answers_after_a_state_loss_duplicate_nothing(tmp_path: Path) -> None:
    """The daemon-process version of tests/reliability/test_hostile_server.py's repro. Note: with
    the fix reverted this daemon run did not produce the duplicates the in-process stack does (its
    first cycle after the loss reads differently); it guards the end-to-end path, the in-process
    test is the one that fails before the fix."""
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path, now, [ALICE], [{"mailbox": ALICE, "psa_resource": "1"}]) as (env, ews):
        proxy = proxy_for(ews)
        try:
            env.extra["server"]["port"] = proxy.port
            env.write_config(sync_interval_minutes=60)
            env.start_ready()
            first = env.rpc("sync", wait=True)
            assert first["ok"], first
            before = keyed_items(ews)
            assert before and max(before.values()) == 1
            assert env.stop() == 0
            (tmp_path / "state.db").unlink()  # the state is lost; the daemon adopts by PSA key
            proxy.rule("GetItem", "truncate", times=6)
            mark = len(env.notify.poll())
            env.start()
            env.notify.wait_for("READY=1", mark)
            env.rpc("sync", wait=True)  # whatever it says: no duplicate
            assert proxy.applied["GetItem truncate"] >= 1
            proxy.clear()
            again = env.rpc("sync", wait=True)
            assert again["ok"], again
            assert keyed_items(ews) == before  # the report: 11 items became 14
        finally:
            proxy.stop()


def test_a_trickling_server_ends_the_request_and_sync_wait_answers(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with ews_daemon(tmp_path, now, [ALICE], [{"mailbox": ALICE, "psa_resource": "1"}]) as (env, ews):
        proxy = proxy_for(ews)
        try:
            env.extra["server"].update(port=proxy.port, request_deadline_s=3, read_timeout_s=60)
            env.write_config(sync_interval_minutes=60)
            env.start_ready()
            proxy.rule("SyncFolderItems", "trickle", times=None, chunk=1, interval=1.0, head=True)
            answer = env.rpc("sync", wait=True)  # the harness's hang guard bounds it; never asserted
            result = answer["results"][ALICE]
            assert result["result"] == "error", answer
            assert "no complete answer within 3 s (server.request_deadline_s" in result["error"], result
            proxy.clear()
            assert env.rpc("sync", wait=True)["ok"]
        finally:
            proxy.stop()
