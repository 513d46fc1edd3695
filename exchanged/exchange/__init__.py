"""The Exchange adapter: ``ports.ExchangeAccount`` / ``ports.ExchangeMailbox`` over exchangelib.

Public API:

* ``open_account(cfg) -> EwsAccount`` (sync, no network): the account for the daemon's config
  object (or an ``ExchangeSettings``). Close it with ``await account.aclose()``.
* ``await acheck_connect(cfg) -> list[CheckResult]``: login, EWS access, and impersonation (or
  per-user login) of every enabled user. For use inside trio.
* ``check_connect(cfg) -> list[CheckResult]``: the same from synchronous code (``exchanged
  check-config --connect``); it runs its own ``trio.run`` and must not be called from inside trio.
  Configuration problems the adapter itself finds (unreadable ca_bundle, unknown server.version,
  unreadable password file) come back as failed ``CheckResult`` entries, never as tracebacks.

See docs/EWS_ADAPTER.md for requests per operation, retries, back-off, TLS and identity.
"""

from __future__ import annotations

from typing import Any

import trio

from exchanged import errors
from exchanged.exchange.account import EwsAccount
from exchanged.exchange.mailbox import EwsMailbox, EwsPublicContacts
from exchanged.exchange.settings import ExchangeSettings, settings_from_config
from exchanged.ports import CheckResult


def _settings(cfg: Any) -> ExchangeSettings:
    return cfg if isinstance(cfg, ExchangeSettings) else settings_from_config(cfg)


def open_account(cfg: Any) -> EwsAccount:
    """The ``ports.ExchangeAccount`` for ``cfg``. Makes no request and does not fail for what only
    a connection would tell: an unusable ``server.ca_bundle`` makes every call raise ``TlsError``
    (so the daemon starts and reports it), a missing per-user password raises ``AuthFailed`` for
    that user's calls only."""
    return EwsAccount(_settings(cfg))


async def acheck_connect(cfg: Any, mailboxes: list[str] | None = None) -> list[CheckResult]:
    try:
        settings = _settings(cfg)
        account = EwsAccount(settings)
    except errors.ExchangedError as exc:
        return [CheckResult("config", False, errors.present(exc).line())]
    if account.setup_error is not None:
        await account.aclose()
        return [CheckResult("config", False, errors.present(account.setup_error).line())]
    try:
        return await account.check(list(settings.enabled_mailboxes if mailboxes is None else mailboxes))
    finally:
        await account.aclose()


def check_connect(cfg: Any, mailboxes: list[str] | None = None) -> list[CheckResult]:
    """Synchronous wrapper of ``acheck_connect`` for the CLI (runs trio)."""
    return trio.run(acheck_connect, cfg, mailboxes)


__all__ = [
    "EwsAccount",
    "EwsMailbox",
    "EwsPublicContacts",
    "ExchangeSettings",
    "acheck_connect",
    "check_connect",
    "open_account",
    "settings_from_config",
]
