"""The daemon picks the Graph adapter from the config; switching EWS <-> Graph is a full resync."""

from __future__ import annotations

from pathlib import Path

from exchanged.config import server_identity
from exchanged.graph import GraphAccount, settings_from_config
from exchanged.openers import Openers
from tests.config.helpers import base, load_ok
from tests.config.test_graph_config import CLIENT, TENANT, graph


async def test_use_ms_graph_opens_the_graph_adapter_with_the_configs_values(tmp_path: Path) -> None:
    text = (
        graph(tmp_path).replace(
            "  use_ms_graph: true\n",
            "  use_ms_graph: true\n  graph_url: https://graph.example.test:8443\n"
            "  request_deadline_s: 45\n  max_answer_mb: 8\n",
        )
        + "sync:\n  category: PSA\n  past_days: 3\n"
    )
    cfg = load_ok(tmp_path, text)
    account = await Openers().exchange(cfg)
    try:
        assert isinstance(account, GraphAccount)
        s = account.settings
        assert (s.graph_url, s.login_url) == (
            "https://graph.example.test:8443",
            "https://login.microsoftonline.com",
        )
        assert (s.tenant_id, s.client_id, s.client_secret) == (TENANT, CLIENT, "0aB~s3cr3t.value")
        assert s.category == "PSA" and s.past_days == 3 and s.enabled_mailboxes == ("alice@example.com",)
        assert "s3cr3t" not in repr(s)
        assert (s.request_deadline_s, s.max_answer_mb) == (45.0, 8)  # the EWS keys bound Graph too
    finally:
        await account.aclose()
    assert settings_from_config(cfg) == s


async def test_ews_stays_ews_and_switching_means_a_full_resync(tmp_path: Path) -> None:
    ews = load_ok(tmp_path, base(tmp_path))
    account = await Openers().exchange(ews)
    try:
        assert not isinstance(account, GraphAccount)
    finally:
        await account.aclose()
    assert server_identity(ews) != server_identity(load_ok(tmp_path, graph(tmp_path)))


async def test_a_reload_that_changes_the_sync_window_reopens_the_graph_account(tmp_path: Path) -> None:
    from exchanged.openers import Adapters

    old = load_ok(tmp_path, graph(tmp_path) + "sync:\n  past_days: 7\n")
    new = load_ok(tmp_path, graph(tmp_path) + "sync:\n  past_days: 14\n")
    opened = await Openers().exchange(old)
    psa, state = object(), object()
    current = Adapters(opened, psa, state)  # type: ignore[arg-type]
    same = await Openers().reopen(current, old, old)
    assert same.account is opened
    moved = await Openers().reopen(current, old, new)
    try:
        assert moved.account is not opened and isinstance(moved.account, GraphAccount)
        assert moved.account.settings.past_days == 14
        assert moved.psa is psa and moved.state is state
    finally:
        await moved.account.aclose()
        await opened.aclose()
