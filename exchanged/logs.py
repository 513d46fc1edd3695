"""structlog set-up: journald (structured fields), one JSON line per event, or console.

``configure_logging(format, level)`` is called once by the daemon (and again on reload when
``logging.format`` changes). Every event goes through ``redact_secrets`` last, a line of defence
behind the rule that adapters never put a secret into a message: any registered secret
(``register_secret``) is replaced by ``********`` wherever it occurs in the event.

Journal fields are the event's keys upper-cased (``mailbox`` -> ``MAILBOX``, ``cycle_id`` ->
``CYCLE_ID``), the message is ``MESSAGE`` and the level is the syslog ``PRIORITY``, so
``journalctl -u exchanged MAILBOX=jdoe@contoso.com`` shows one user's story.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from datetime import date, datetime
from typing import Any

import structlog

from exchanged import journal

FORMATS = ("journal", "json", "console")
REDACTED = "********"
_MIN_SECRET_LEN = 3  # shorter strings would mangle every line; such a "secret" protects nothing anyway

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}

_secrets: set[str] = set()


def register_secret(secret: str | None) -> None:
    """Never let ``secret`` reach a log line (passwords, API secrets read from the config)."""
    if secret and len(secret) >= _MIN_SECRET_LEN:
        _secrets.add(secret)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return _scrub(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    for key in list(event):
        event[key] = _scrub(event[key])
    return event


_FIELD_BAD = re.compile(r"[^A-Z0-9_]")


def journal_field(key: str) -> str:
    """A journald field name: upper-case letters, digits, underscores; not starting with '_'."""
    name = _FIELD_BAD.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    return name


def _plain(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


class JournalRenderer:
    """Final processor: sends the event to journald and drops it from structlog's own output."""

    def __init__(self, identifier: str = "exchanged", socket_path: str = journal.JOURNAL_SOCKET) -> None:
        self.identifier = identifier
        self.socket_path = socket_path

    def fields(self, event: MutableMapping[str, Any]) -> dict[str, str]:
        event = dict(event)
        level = str(event.pop("level", "info"))
        message = _plain(event.pop("event", ""))
        event.pop("timestamp", None)  # journald stamps every entry itself
        out = {"MESSAGE": message, "PRIORITY": str(_PRIORITY.get(level, 6)),
               "SYSLOG_IDENTIFIER": self.identifier}
        for key, value in event.items():
            if value is None:
                continue
            name = journal_field(key)
            if name in ("MESSAGE", "PRIORITY"):
                name = "F_" + name
            out[name] = _plain(value)
        # fields alone are invisible in a plain `journalctl`; repeat the important ones in the text
        extras = [f"{k}={_plain(v)}" for k, v in event.items() if v is not None and k != "exception"]
        if extras:
            out["MESSAGE"] = message + " " + " ".join(extras)
        if "exception" in event:
            out["MESSAGE"] += "\n" + _plain(event["exception"])
        return out

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
        journal.send(self.fields(event), socket_path=self.socket_path)
        raise structlog.DropEvent


def _renderer(format: str) -> Any:
    if format == "journal":
        return JournalRenderer()
    if format == "json":
        return structlog.processors.JSONRenderer(default=str)
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())


def configure_logging(format: str = "console", level: str = "info") -> None:
    """Configure structlog (and route the standard library's warnings through it)."""
    if format not in FORMATS:
        raise ValueError(f"logging.format must be one of {', '.join(FORMATS)}, not {format!r}")
    numeric = _LEVELS.get(level.lower(), 20)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if format != "journal":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors += [
        structlog.processors.format_exc_info,
        redact_secrets,  # after exceptions are rendered to text, before anything leaves the process
        _renderer(format),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(max(numeric, logging.WARNING))


class _ToStructlog(logging.Handler):
    """Third-party libraries log through ``logging``; their warnings join our stream (redacted)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            method = {logging.DEBUG: log.debug, logging.INFO: log.info, logging.WARNING: log.warning}.get(
                record.levelno, log.error
            )
            method(record.getMessage(), logger=record.name)
        except Exception:
            self.handleError(record)


def configure_from_config(cfg: Any) -> None:
    """``configure_logging`` for the config's ``logging:`` section (``cfg.logging.format``/``level``).

    ``journal`` where there is no journald (a container, a test) keeps the structure as JSON on
    stderr, and run by hand in a terminal shows the operator readable lines."""
    import os

    fmt = cfg.logging.format
    if fmt == "journal":
        under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
        if not os.path.exists("/run/systemd/journal/socket"):
            fmt = "json"  # no journald here (a container, a test): keep the structure on stderr
        elif not under_systemd and sys.stderr.isatty():
            fmt = "console"  # run by hand in a terminal: show the operator what happens
    configure_logging(fmt, cfg.logging.level)


def _route_stdlib(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(level)


def get_logger(name: str = "exchanged") -> Any:
    return structlog.get_logger(name)
