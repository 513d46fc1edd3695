"""``exchanged check-config [--connect] [--json]``: the config checked like ``sshd -t``.

A second composition root beside the daemon: it loads the config (``exchanged.config``, which
imports no adapter), checks the files as the service user reads them, and with ``--connect``
opens what the daemon would open (Exchange or Graph, the PSA, the SMTP server, the state
database), closes it again and reports each check on one line (or one JSON document).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from exchanged.config import (
    Config,
    ConfigInvalid,
    ConfigProblem,
    SqlPsaConfig,
    load_config,
    render_problem,
)


def cli_check_config(args: Any) -> int:
    """``exchanged check-config``: exit 0 valid, 1 invalid (every problem with path and line)."""
    source = str(args.config)
    as_json = bool(getattr(args, "json", False))
    try:
        cfg = load_config(source)
    except ConfigInvalid as exc:
        if as_json:
            _print_json(source, False, exc.problems, [], None)
        else:
            for problem in exc.problems:
                print(render_problem(source, problem), file=sys.stderr)
            print(f"INVALID: {source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    from exchanged.service_access import check_access

    # root reads everything: check the files as the service user reads them (exit 1 if it cannot)
    access = check_access(cfg, source)
    checks: list[dict[str, Any]] | None = None
    status = 1 if access.problems else 0
    if getattr(args, "connect", False):
        checks, connect_status = _connect(cfg)
        status = max(status, connect_status)
    if as_json:
        _print_json(source, True, [], list(cfg.warnings), checks, cfg, access.as_dict())
    else:
        for warning in cfg.warnings:
            print(f"warning: {source}: {warning}")
        users = len(cfg.users)
        enabled = len(cfg.enabled_users())
        tail = f", {len(cfg.warnings)} warning(s)" if cfg.warnings else ""
        print(f"OK: {source}: {users} users ({enabled} enabled){tail}")
        for denied in access.problems:
            print(f"access: {denied['key']}: {denied['message']}")
        verdict = f"FAILED, {len(access.problems)} problem(s)" if access.problems else "OK"
        print(f"access {verdict}: {access.note}")
        for check in checks or []:
            print(f"{check['result']:<8} {check['subject']}: {check['message']}")
        if checks is not None:
            tally = {r: sum(c["result"] == r for c in checks) for r in ("ok", "warning", "failed")}
            verdict = "FAILED" if status else "OK"
            print(f"connect {verdict}: {tally['ok']} ok, {tally['warning']} warning(s), "
                  f"{tally['failed']} failed")
    return status


def _connect(cfg: Config) -> tuple[list[dict[str, Any]], int]:
    # the adapters log as they work; those lines go to stderr, stdout is the report (one JSON
    # document with --json)
    from exchanged.logs import configure_logging

    configure_logging("console", level="warning")
    if cfg.server.use_ms_graph:
        from exchanged.graph import check_connect
    else:
        from exchanged.exchange import check_connect

    try:
        outcome: list[Any] = check_connect(cfg)
    except Exception as exc:  # the adapter's own failure must not become a traceback here
        from exchanged.errors import present

        shown = present(exc)
        return [{"subject": "connect", "result": "failed", "message": shown.line()}], 1
    outcome = list(outcome) + _connect_psa(cfg) + _connect_smtp(cfg) + _connect_state(cfg)
    rows: list[dict[str, Any]] = []
    failed = False
    for result in outcome:
        label = "failed" if not result.ok else ("warning" if result.warning else "ok")
        failed = failed or not result.ok
        rows.append({"subject": result.subject, "result": label, "message": result.message})
    return rows, 1 if failed else 0


def _connect_smtp(cfg: Config) -> list[Any]:
    """Connect to the SMTP server, STARTTLS/TLS, log in; no mail is sent."""
    from exchanged.errors import MailError
    from exchanged.notify import SmtpMailer
    from exchanged.ports import CheckResult

    if not cfg.notifications.recipients:
        return [CheckResult("smtp", True, "not checked: notifications.email is empty (no mails are sent)",
                            warning=True)]
    mailer = SmtpMailer.from_config(cfg.notifications.smtp)
    try:
        done = mailer.probe()
    except MailError as exc:
        return [CheckResult("smtp", False, f"{exc.message} ({exc.hint})" if exc.hint else exc.message)]
    return [CheckResult("smtp", True, f"{mailer.where}: {done}; no mail sent")]


def _connect_state(cfg: Config) -> list[Any]:
    """Open the state database as the daemon would (its schema brought up to date), then close it;
    a SQLite file that does not exist yet is not created here."""
    import trio

    from exchanged.db import SQLITE, UrlError, parse_url
    from exchanged.errors import present
    from exchanged.ports import CheckResult
    from exchanged.state import mask_url, open_state_store

    try:
        parsed = parse_url(cfg.state.url)
    except UrlError as exc:
        return [CheckResult("state", False, f"state.url: {exc}")]
    if parsed.dialect == SQLITE and not parsed.is_memory and not Path(parsed.target).exists():
        folder = Path(parsed.target).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            return [CheckResult("state", False, f"{parsed.target} does not exist and {folder} is not a "
                                "writable directory for this user: the daemon could not create it")]
        return [CheckResult("state", True, f"{parsed.target} does not exist yet: the daemon creates it "
                            "at its first start", warning=True)]

    async def open_and_close() -> None:
        store = await open_state_store(cfg.state.url)
        await store.aclose()

    try:
        trio.run(open_and_close)
    except Exception as exc:
        return [CheckResult("state", False, present(exc).line())]
    return [CheckResult("state", True, f"{mask_url(cfg.state.url)}: opened")]


def _connect_psa(cfg: Config) -> list[Any]:
    """The PSA part of --connect: for Autotask, login, zone, resources and appointment rights;
    for sql, that the database opens and its existing tables fit."""
    import trio

    from exchanged.errors import present
    from exchanged.ports import CheckResult

    if isinstance(cfg.psa, SqlPsaConfig):
        from exchanged.psa.sql import open_sql_connector

        url, channel = cfg.psa.url, cfg.psa.listen_channel

        async def check_sql() -> list[CheckResult]:
            psa = open_sql_connector(url, listen_channel=channel)
            listen: CheckResult | None = None
            try:
                schema = await psa.open()
                if psa.listener is not None:
                    listen = await psa.listener.check()
            finally:
                await psa.aclose()
            text = f" (text ids in {', '.join(sorted(schema.text_ids))})" if schema.text_ids else ""
            results = [CheckResult("psa", True, f"{psa.db.url.shown}: the tables fit{text}")]
            if listen is not None:
                results.append(listen)
            return results

        try:
            return trio.run(check_sql)
        except Exception as exc:
            return [CheckResult("psa", False, present(exc).line())]
    if cfg.psa.connector != "autotask":
        return []
    from exchanged.psa.autotask import check

    resources = [user.psa_resource for user in cfg.enabled_users()]
    try:
        return list(trio.run(check, cfg.psa, resources))
    except Exception as exc:  # the connector's own failure must not become a traceback here
        return [CheckResult("autotask", False, present(exc).line())]


def _print_json(
    source: str,
    valid: bool,
    problems: list[ConfigProblem],
    warnings: list[str],
    checks: list[dict[str, Any]] | None,
    cfg: Config | None = None,
    access: dict[str, Any] | None = None,
) -> None:
    doc: dict[str, Any] = {
        "valid": valid,
        "path": source,
        "errors": [{"path": p.path, "line": p.line, "message": p.message} for p in problems],
        "warnings": warnings,
    }
    if cfg is not None:
        doc["users"] = len(cfg.users)
        doc["enabled_users"] = len(cfg.enabled_users())
    if access is not None:  # who the files were checked as, and what that user cannot read
        doc["access"] = access
    if checks is not None:  # the file is valid either way; the exit code says whether connecting worked
        doc["connect"] = checks
        doc["connect_ok"] = all(c["result"] != "failed" for c in checks)
    print(json.dumps(doc, indent=2))


__all__ = ["cli_check_config"]
