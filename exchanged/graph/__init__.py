"""The Graph adapter: ``ports.ExchangeAccount`` / ``ports.ExchangeMailbox`` over Microsoft Graph v1.0.

Chosen by ``server.use_ms_graph: true`` (Exchange Online, where EWS is blocked since 1 October
2026). Public API, parallel to ``exchanged.exchange``:

* ``open_account(cfg) -> GraphAccount`` (no network): close with ``await account.aclose()``.
* ``await acheck_connect(cfg)``: a token, the granted permissions, each enabled mailbox and its
  time zone; ``check_connect(cfg)`` runs it from synchronous code.

See docs/GRAPH.md (app registration, requests per operation, what rests on documentation only).
"""

from __future__ import annotations

from typing import Any

import trio

from exchanged import errors
from exchanged.exchange.limits import DEFAULT_DEADLINE_S, DEFAULT_MAX_ANSWER_MB
from exchanged.exchange.settings import _get
from exchanged.graph.client import GraphClient, GraphSettings, TokenSource
from exchanged.graph.mailbox import GraphAccount, GraphMailbox
from exchanged.ports import CheckResult


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def settings_from_config(cfg: Any) -> GraphSettings:
    """The adapter's settings from the daemon's config object (SPEC 3 key names)."""
    server = _get(cfg, "server")
    creds = _get(cfg, "credentials")
    sync = _get(cfg, "sync")
    enabled_users = getattr(cfg, "enabled_users", None)
    users = list(enabled_users()) if callable(enabled_users) else list(_get(cfg, "users", []) or [])
    tenant, client = _get(creds, "tenant_id"), _get(creds, "client_id")
    if not tenant or not client:
        raise errors.AuthFailed(
            "Graph needs credentials.tenant_id and credentials.client_id",
            hint="see docs/GRAPH.md: register an app in Entra ID",
        )
    return GraphSettings(
        graph_url=str(_get(server, "graph_url", None) or "https://graph.microsoft.com").rstrip("/"),
        login_url=str(_get(server, "login_url", None) or "https://login.microsoftonline.com").rstrip("/"),
        tenant_id=str(tenant),
        client_id=str(client),
        client_secret=_secret(_get(creds, "client_secret")),
        certificate_pem=_secret(_get(creds, "certificate")),
        ca_bundle=_get(server, "ca_bundle"),
        enabled_mailboxes=tuple(str(_get(u, "mailbox")) for u in users if _get(u, "mailbox")),
        category=str(_get(sync, "category", "") or ""),
        task_list_name=str(_get(sync, "task_list_name", None) or "PSA"),
        past_days=int(_get(sync, "past_days", 7) or 7),
        recurring_future_days=int(_get(sync, "recurring_future_days", 30) or 30),
        connect_timeout_s=float(_get(server, "connect_timeout_s", None) or 10.0),
        read_timeout_s=float(_get(server, "read_timeout_s", None) or 60.0),
        request_deadline_s=float(_get(server, "request_deadline_s", None) or DEFAULT_DEADLINE_S),
        max_answer_mb=int(_get(server, "max_answer_mb", None) or DEFAULT_MAX_ANSWER_MB),
    )


def _settings(cfg: Any) -> GraphSettings:
    return cfg if isinstance(cfg, GraphSettings) else settings_from_config(cfg)


def open_account(cfg: Any, **kw: Any) -> GraphAccount:
    return GraphAccount(_settings(cfg), **kw)


async def acheck_connect(cfg: Any, mailboxes: list[str] | None = None, **kw: Any) -> list[CheckResult]:
    try:
        settings = _settings(cfg)
        account = GraphAccount(settings, **kw)
    except errors.ExchangedError as exc:
        return [CheckResult("config", False, errors.present(exc).line())]
    try:
        return await account.check(list(settings.enabled_mailboxes if mailboxes is None else mailboxes))
    finally:
        await account.aclose()


def check_connect(cfg: Any, mailboxes: list[str] | None = None) -> list[CheckResult]:
    """Synchronous wrapper of ``acheck_connect`` for the CLI (runs trio)."""
    return trio.run(acheck_connect, cfg, mailboxes)


__all__ = [
    "GraphAccount",
    "GraphClient",
    "GraphMailbox",
    "GraphSettings",
    "TokenSource",
    "acheck_connect",
    "check_connect",
    "open_account",
    "settings_from_config",
]
