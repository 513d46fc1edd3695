"""Control protocol: limits, error codes, the method table, framing and JSON encoding.

Standard library only: ``exchangectl`` imports this module and must start fast, and the server
and the client must agree byte for byte. docs/PROTOCOL.md is the prose version of this file.

Theory of operation
-------------------
One JSON-RPC 2.0 object per line, UTF-8, ``\\n``-terminated. A request line may hold at most
``MAX_LINE_BYTES`` bytes (the newline excluded); the server answers a longer one with a
``line_too_long`` error and closes the connection, because it cannot know where the next request
would start. Everything else that is wrong with a line (bad UTF-8, bad JSON, too deep, not a
request) is answered with an error and the connection stays usable. Requests on one connection are
answered in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from pathlib import PurePath
from typing import Any, NoReturn

from exchanged import PROTOCOL_VERSION as PROTOCOL_VERSION  # re-exported for the client

MAX_LINE_BYTES = 1024 * 1024  # one request line, newline excluded (SPEC section 5)
MAX_DEPTH = 32  # nesting of arrays/objects in a request; real requests need 3
CLIENT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # what exchangectl accepts for one answer line
MAX_MAILBOX_CHARS = 320  # longest e-mail address RFC 3696 allows
MAX_MAILBOXES = 10_000

# --- JSON-RPC error codes (https://www.jsonrpc.org/specification#error_object) -----------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_REFUSED = -32000  # transport refusals: permission_denied, too_many_connections, idle_timeout
HANDLER_ERROR = -32001  # the daemon refused or failed: data.reason is the ExchangedError's reason

# --- stable data.reason strings of the protocol itself -----------------------------------------
R_PARSE_ERROR = "parse_error"
R_INVALID_REQUEST = "invalid_request"
R_METHOD_NOT_FOUND = "method_not_found"
R_INVALID_PARAMS = "invalid_params"
R_LINE_TOO_LONG = "line_too_long"
R_NESTING_TOO_DEEP = "nesting_too_deep"
R_PERMISSION_DENIED = "permission_denied"
R_TOO_MANY_CONNECTIONS = "too_many_connections"
R_IDLE_TIMEOUT = "idle_timeout"
R_INTERNAL_ERROR = "internal_error"


class ProtocolError(Exception):
    """A request the protocol layer refuses; becomes one JSON-RPC error object."""

    def __init__(self, code: int, reason: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.data = data

    def response(self, request_id: RequestId = None) -> dict[str, Any]:
        return error_response(request_id, self.code, self.message, self.reason, **self.data)


class LineTooLong(ProtocolError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            INVALID_REQUEST,
            R_LINE_TOO_LONG,
            f"request line longer than {limit} bytes; the connection is closed",
            limit=limit,
        )


RequestId = str | int | None


# --- the method table --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Param:
    """One by-name parameter: its JSON type and what omitting it means."""

    type: str  # "bool" | "str" | "mailboxes" (non-empty list of mailbox strings) | "since"
    required: bool = False
    default: object = None
    help: str = ""


MAX_HISTORY = 100_000  # history entries one answer may carry

METHODS: dict[str, dict[str, Param]] = {
    "version": {},
    "status": {},
    "users": {},
    "resources": {},
    "sync": {
        "mailboxes": Param("mailboxes", help="mailboxes to sync; omitted: every enabled user"),
        "full": Param("bool", default=False, help="resync everything, not only the changes"),
        "wait": Param("bool", default=False, help="answer when the cycles have finished"),
        "allow_deletes": Param("bool", default=False, help="release deletions held back by the guard"),
    },
    "plan": {"mailbox": Param("str", required=True, help="the mailbox to plan (dry run)")},
    "history": {
        "mailbox": Param("str", help="only this mailbox; omitted: all"),
        "since": Param("since", help="ISO 8601 datetime; naive means UTC"),
        "limit": Param("count", help=f"at most this many of the newest entries (1..{MAX_HISTORY}; "
                                     "default 1000)"),
    },
    "reload": {"wait": Param("bool", default=False, help="answer when a deferred reload is applied")},
    "pause": {"mailboxes": Param("mailboxes", help="omitted: pause all scheduling")},
    "resume": {"mailboxes": Param("mailboxes", help="omitted: resume all scheduling")},
    "metrics": {},
}


def validate_params(method: str, params: object) -> dict[str, Any]:
    """Check ``params`` against ``METHODS[method]``; return the keyword arguments for the handler.

    Raises ProtocolError(invalid_params) naming the offending parameter.
    """
    spec = METHODS[method]
    if params is None:
        params = {}
    if isinstance(params, list) and not params:
        params = {}  # some JSON-RPC clients send [] for "no params"
    if not isinstance(params, dict):
        raise _bad_param(method, None, f"params of {method!r} must be an object (by-name parameters)")
    unknown = sorted(set(params) - set(spec))
    if unknown:
        known = ", ".join(sorted(spec)) or "none"
        raise _bad_param(
            method, unknown[0], f"unknown parameter {unknown[0]!r} for {method!r} (known: {known})"
        )
    out: dict[str, Any] = {}
    for name, param in spec.items():
        if name not in params:
            if param.required:
                raise _bad_param(method, name, f"{method!r} needs the parameter {name!r}")
            out[name] = param.default
            continue
        out[name] = _check_value(method, name, param, params[name])
    return out


def _check_value(method: str, name: str, param: Param, value: object) -> object:
    where = f"{method}.{name}"
    if param.type == "bool":
        if not isinstance(value, bool):
            raise _bad_param(method, name, f"{where} must be true or false, not {_json_type(value)}")
        return value
    if value is None and not param.required:
        return None
    if param.type == "str":
        return _check_mailbox(method, name, where, value)
    if param.type == "mailboxes":
        if not isinstance(value, list):
            raise _bad_param(method, name, f"{where} must be a list of mailboxes, not {_json_type(value)}")
        if not value:
            raise _bad_param(method, name, f"{where} is empty; omit it to mean every mailbox")
        if len(value) > MAX_MAILBOXES:
            raise _bad_param(method, name, f"{where} lists more than {MAX_MAILBOXES} mailboxes")
        checked = [_check_mailbox(method, name, f"{where}[{i}]", v) for i, v in enumerate(value)]
        return list(dict.fromkeys(checked))  # duplicates would queue a user twice
    if param.type == "since":
        if not isinstance(value, str):
            raise _bad_param(
                method, name, f"{where} must be an ISO 8601 datetime string, not {_json_type(value)}"
            )
        try:
            return normalize_since(value)
        except ValueError as exc:
            raise _bad_param(method, name, f"{where}: {exc}") from None
    if param.type == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_param(method, name, f"{where} must be a whole number, not {_json_type(value)}")
        if not 1 <= value <= MAX_HISTORY:
            raise _bad_param(method, name, f"{where} must be between 1 and {MAX_HISTORY} (got {value})")
        return value
    raise AssertionError(f"unknown parameter type {param.type!r}")  # a bug in METHODS


def _check_mailbox(method: str, name: str, where: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad_param(method, name, f"{where} must be a string, not {_json_type(value)}")
    text = value.strip()
    if not text:
        raise _bad_param(method, name, f"{where} is empty")
    if len(text) > MAX_MAILBOX_CHARS or any(ord(c) < 32 for c in text):
        raise _bad_param(method, name, f"{where} is not a mailbox address")
    return text


def _bad_param(method: str, name: str | None, message: str) -> ProtocolError:
    data: dict[str, Any] = {"method": method}
    if name is not None:
        data["param"] = name
    return ProtocolError(INVALID_PARAMS, R_INVALID_PARAMS, message, **data)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# --- times -------------------------------------------------------------------------------------
_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def normalize_since(text: str) -> str:
    """An ISO 8601 datetime as canonical UTC text (``2026-11-29T04:00:00+00:00``); naive = UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 datetime (e.g. 2026-11-29T04:00:00+00:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _utc(when)


def _utc(when: datetime) -> str:
    """``when`` in UTC; a time whose UTC form falls outside years 1..9999 (0001-01-01T00:00+05:00)
    is the earliest or latest time there is, not an OverflowError."""
    try:
        return when.astimezone(UTC).isoformat()
    except OverflowError:
        edge = datetime.min if when.year == 1 else datetime.max
        return edge.replace(tzinfo=UTC).isoformat()


def parse_since(text: str, now: datetime) -> str:
    """The client's ``--since``: ``30m``, ``2h``, ``3d``, ``1w`` before ``now``, or an ISO datetime.

    A naive ISO datetime typed by a person means local time (unlike the wire, where naive is UTC).
    Returns canonical UTC text for the ``since`` parameter; raises ValueError with a usable message.
    """
    match = _RELATIVE.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        try:
            return _utc(now - timedelta(seconds=amount * _UNIT_SECONDS[unit]))
        except OverflowError:  # further back than year 1: everything
            return datetime.min.replace(tzinfo=UTC).isoformat()
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: use an ISO datetime (2026-11-29 or 2026-11-29T04:00) "
            "or a relative time such as 30m, 2h, 3d, 1w"
        ) from None
    if when.tzinfo is None:
        try:
            when = when.astimezone()  # local time of this machine
        except OverflowError:
            when = when.replace(tzinfo=UTC)
    return _utc(when)


# --- framing -----------------------------------------------------------------------------------
class LineFramer:
    """Splits a byte stream into lines, refusing to buffer more than ``limit`` bytes of one line.

    ``feed()`` returns the complete lines (without ``\\n``); the partial rest stays buffered. The
    newline search covers only newly arrived bytes, so a slow 1 MiB line costs O(n), not O(n^2).
    """

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        lines: list[bytes] = []
        start = len(self._buffer)
        self._buffer += data
        while True:
            newline = self._buffer.find(b"\n", start)
            if newline < 0:
                break
            if newline > self.limit:
                raise LineTooLong(self.limit)
            lines.append(bytes(self._buffer[:newline]))
            del self._buffer[: newline + 1]
            start = 0
        if len(self._buffer) > self.limit:
            raise LineTooLong(self.limit)
        return lines

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line buffered so far."""
        return len(self._buffer)


def encode_message(message: Mapping[str, Any]) -> bytes:
    """One protocol message as a line: compact UTF-8 JSON and ``\\n``.

    Raises TypeError/ValueError when the message holds something JSON cannot carry (the server
    turns that into an ``internal_error`` answer).
    """
    text = json.dumps(
        message, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
    )
    return text.encode("utf-8") + b"\n"


def _json_default(value: object) -> object:
    # The daemon may hand over datetimes and enums; the wire carries ISO text and plain values.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def decode_line(line: bytes) -> object:
    """Bytes of one line -> a JSON value, or ProtocolError (parse_error / nesting_too_deep)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            PARSE_ERROR, R_PARSE_ERROR, f"request is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError and the NaN refusal
        raise ProtocolError(PARSE_ERROR, R_PARSE_ERROR, f"request is not valid JSON: {exc}") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise _too_deep()
    return value


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep() -> ProtocolError:
    return ProtocolError(
        INVALID_REQUEST, R_NESTING_TOO_DEEP, f"request nested deeper than {MAX_DEPTH} levels", limit=MAX_DEPTH
    )


def _depth_exceeds(value: object, limit: int) -> bool:
    # Iterative on purpose: this runs on hostile input.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# --- message constructors ----------------------------------------------------------------------
def make_request(
    request_id: RequestId, method: str, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params:
        message["params"] = dict(params)
    return message


def success_response(request_id: RequestId, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(
    request_id: RequestId, code: int, message: str, reason: str, **data: Any
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": code, "message": message, "data": {"reason": reason, **data}},
    }


def protocol_major(value: object) -> int | None:
    """The major version of a ``protocol`` field (an int, or text such as ``"1.2"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        if head.isdigit():
            return int(head)
    return None


# --- the status document (SPEC section 5) --------------------------------------------------------
# The daemon builds these and sends ``to_json()``; exchangectl reads them back with ``from_json``,
# which takes any JSON value (another version's daemon, a hostile peer) and keeps what has the
# right type: a missing or mistyped field is None (or empty), never an exception.


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _obj(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _strs(value: object) -> list[str]:
    return [v if isinstance(v, str) else json.dumps(v) for v in value] if isinstance(value, list) else []


def _counts(value: object) -> dict[str, int]:
    return {k: n for k, v in _obj(value).items() if (n := _int(v)) is not None}


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int

    @classmethod
    def from_json(cls, value: object) -> Progress | None:
        data = _obj(value)
        total = _int(data.get("total"))
        return cls(_int(data.get("done")) or 0, total) if total is not None else None


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """Another node holding a user's lease (PostgreSQL state)."""

    node: str
    expires_at: str | None

    @classmethod
    def from_json(cls, value: object) -> LeaseHolder | None:
        data = _obj(value)
        node = _str(data.get("node"))
        return cls(node, _str(data.get("expires_at"))) if node else None


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """``config.last_reload`` (and the ``reload`` answer without its ``generation``)."""

    at: str | None
    result: str  # applied | deferred | rejected | unchanged (an identical file: nothing to do)
    errors: list[str]
    # applied only:
    added: list[str] | None = None
    removed: list[str] | None = None
    changed: list[str] | None = None
    resync_all: bool | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"at": self.at, "result": self.result, "errors": list(self.errors)}
        if self.result == "applied":
            out.update(added=self.added or [], removed=self.removed or [], changed=self.changed or [],
                       resync_all=bool(self.resync_all))
        return out

    @classmethod
    def from_json(cls, value: object) -> ReloadRecord | None:
        data = _obj(value)
        if not data:
            return None
        lists = {k: _strs(data[k]) if k in data else None for k in ("added", "removed", "changed")}
        return cls(_str(data.get("at")), _str(data.get("result")) or "", _strs(data.get("errors")),
                   resync_all=_bool(data.get("resync_all")), **lists)


@dataclass(frozen=True, slots=True)
class ConfigStatus:
    path: str | None
    generation: int | None
    profile_name: str | None
    loaded_at: str | None
    last_reload: ReloadRecord | None
    warnings: list[str]

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "generation": self.generation, "profile_name": self.profile_name,
                "loaded_at": self.loaded_at,
                "last_reload": self.last_reload.to_json() if self.last_reload else None,
                "warnings": list(self.warnings)}

    @classmethod
    def from_json(cls, value: object) -> ConfigStatus:
        data = _obj(value)
        return cls(_str(data.get("path")), _int(data.get("generation")), _str(data.get("profile_name")),
                   _str(data.get("loaded_at")), ReloadRecord.from_json(data.get("last_reload")),
                   _strs(data.get("warnings")))


@dataclass(slots=True)
class ExchangeStatus:
    """What the daemon knows of the Exchange server (updated by checks and cycles)."""

    server: str | None
    version: str | None
    reachable: bool | None = None  # the server answered; None: not known yet
    # the sync account's login: "ok" / "refused" / "not checked" (an unreachable server cannot tell)
    login: str | None = "not checked"
    last_error: str | None = None
    checked_at: str | None = None
    warnings: list[str] = field(default_factory=list)
    back_off_until: str | None = None  # the server asked the daemon to wait until then (throttling)
    back_off_by_server: bool | None = None  # only with back_off_until

    def update(self, **changes: object) -> None:
        """Set these fields (a name that is no field raises AttributeError)."""
        for name, value in changes.items():
            setattr(self, name, value)

    def note_failure(self, reason: str, line: str, *, sync_account_login: bool) -> None:
        """What a failure (an error's ``reason`` and line) says of the server: unreachable, or
        reachable with the login refused (the sync account's, when it logs in for every user)."""
        if reason in ("exchange_unreachable", "tls_untrusted"):
            self.update(reachable=False, login="not checked", last_error=line)
        elif reason == "auth_failed":
            self.update(reachable=True, last_error=line)
            if sync_account_login:
                self.update(login="refused")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "server": self.server, "version": self.version, "reachable": self.reachable,
            "login": self.login, "last_error": self.last_error, "checked_at": self.checked_at,
            "warnings": list(self.warnings), "back_off_until": self.back_off_until}
        if self.back_off_by_server is not None:
            out["back_off_by_server"] = self.back_off_by_server
        return out

    @classmethod
    def from_json(cls, value: object) -> ExchangeStatus:
        data = _obj(value)
        return cls(_str(data.get("server")), _str(data.get("version")), _bool(data.get("reachable")),
                   _str(data.get("login")), _str(data.get("last_error")), _str(data.get("checked_at")),
                   _strs(data.get("warnings")), _str(data.get("back_off_until")),
                   _bool(data.get("back_off_by_server")))


@dataclass(frozen=True, slots=True)
class PsaStatus:
    connector: str | None
    budget: dict[str, object] | None = None  # the connector's request budget, where it has one (Autotask)
    budget_error: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"connector": self.connector}
        if self.budget is not None:
            out["budget"] = self.budget
        if self.budget_error is not None:
            out["budget_error"] = self.budget_error
        return out

    @classmethod
    def from_json(cls, value: object) -> PsaStatus:
        data = _obj(value)
        budget = data.get("budget")
        return cls(_str(data.get("connector")), budget if isinstance(budget, dict) else None,
                   _str(data.get("budget_error")))


@dataclass(frozen=True, slots=True)
class CycleStatus:
    """The cycle state of one user or of the public contacts folder."""

    state: str | None  # idle | syncing | paused | error | disabled | held_elsewhere
    last_attempt: str | None
    last_success: str | None
    last_result: str | None
    last_error: str | None
    next_run: str | None
    progress: Progress | None  # while syncing
    counts: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "last_attempt": self.last_attempt, "last_success": self.last_success,
                "last_result": self.last_result, "last_error": self.last_error, "next_run": self.next_run,
                "progress": ({"done": self.progress.done, "total": self.progress.total}
                             if self.progress else None),
                "counts": dict(self.counts)}

    @classmethod
    def from_json(cls, value: object) -> CycleStatus:
        data = _obj(value)
        return cls(_str(data.get("state")), _str(data.get("last_attempt")), _str(data.get("last_success")),
                   _str(data.get("last_result")), _str(data.get("last_error")), _str(data.get("next_run")),
                   Progress.from_json(data.get("progress")), _counts(data.get("counts")))


@dataclass(frozen=True, slots=True)
class PushStatus:
    """How Exchange changes reach the daemon for one mailbox (EWS streaming; docs/OPERATIONS.md)."""

    mode: str | None  # pushed | polled
    note: str | None  # why polled; None when pushed
    since: str | None  # the last change of mode (UTC)

    def to_json(self) -> dict[str, object]:
        return {"push": self.mode, "push_note": self.note, "push_since": self.since}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PushStatus | None:
        if "push" not in data:
            return None
        return cls(_str(data.get("push")), _str(data.get("push_note")), _str(data.get("push_since")))


@dataclass(frozen=True, slots=True)
class UserStatus:
    """One row of ``status.users`` (and of the ``users`` answer)."""

    mailbox: str | None
    psa_resource: str | None
    enabled: bool | None
    cycle: CycleStatus
    held_by: LeaseHolder | None = None
    push: PushStatus | None = None
    # where the user comes from: "config" (users: in the YAML) or "users_from_psa" (an active PSA
    # resource with a mailbox); None from a daemon that does not say
    source: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"mailbox": self.mailbox, "psa_resource": self.psa_resource, "enabled": self.enabled,
                "source": self.source,
                **self.cycle.to_json(),
                "held_by": ({"node": self.held_by.node, "expires_at": self.held_by.expires_at}
                            if self.held_by else None),
                **(self.push.to_json() if self.push is not None else {})}

    @classmethod
    def from_json(cls, value: object) -> UserStatus:
        data = _obj(value)
        resource = data.get("psa_resource")
        if _int(resource) is not None:
            resource = str(resource)
        return cls(_str(data.get("mailbox")), _str(resource), _bool(data.get("enabled")),
                   CycleStatus.from_json(data), LeaseHolder.from_json(data.get("held_by")),
                   PushStatus.from_json(data), _str(data.get("source")))


@dataclass(frozen=True, slots=True)
class StatusDocument:
    """The ``status`` answer: SPEC section 5's fields, and more."""

    version: str | None
    protocol: int | str | None
    pid: int | None
    started_at: str | None
    state: str | None  # running | paused | disabled | degraded
    ready: bool | None
    config: ConfigStatus
    exchange: ExchangeStatus
    psa: PsaStatus
    running: int | None  # cycles running now
    paused: bool | None
    interval_minutes: float | int | None
    max_concurrent_users: int | None
    users: list[UserStatus]
    public_folder: CycleStatus | None

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version, "protocol": self.protocol, "pid": self.pid,
            "started_at": self.started_at, "state": self.state, "ready": self.ready,
            "config": self.config.to_json(), "exchange": self.exchange.to_json(), "psa": self.psa.to_json(),
            "running": self.running, "paused": self.paused, "interval_minutes": self.interval_minutes,
            "max_concurrent_users": self.max_concurrent_users,
            "users": [u.to_json() for u in self.users],
            "public_folder": self.public_folder.to_json() if self.public_folder else None,
        }

    @classmethod
    def from_json(cls, value: object) -> StatusDocument:
        data = _obj(value)
        protocol = data.get("protocol")
        running = data.get("running")
        public = data.get("public_folder")
        users = data.get("users")
        return cls(
            _str(data.get("version")),
            _int(protocol) if _int(protocol) is not None else _str(protocol) or None,
            _int(data.get("pid")), _str(data.get("started_at")), _str(data.get("state")),
            _bool(data.get("ready")), ConfigStatus.from_json(data.get("config")),
            ExchangeStatus.from_json(data.get("exchange")), PsaStatus.from_json(data.get("psa")),
            len(running) if isinstance(running, list) else _int(running), _bool(data.get("paused")),
            _num(data.get("interval_minutes")), _int(data.get("max_concurrent_users")),
            [UserStatus.from_json(u) for u in users if isinstance(u, dict)]
            if isinstance(users, list) else [],
            CycleStatus.from_json(public) if isinstance(public, dict) else None,
        )


# --- the plan, history, sync and reload answers ---------------------------------------------------
# Read back by exchangectl like the status document: any JSON value in, typed fields out.


@dataclass(frozen=True, slots=True)
class ChangeLine:
    """One action of a ``plan`` answer, or one ``history`` entry (the journal adds at/mailbox)."""

    side: str | None  # exchange | psa
    action: str | None  # create | update | delete | adopt | forget
    kind: str | None
    key: str | None
    fields: list[str]
    reason: str | None
    subject: str | None = None
    item_id: str | None = None
    at: str | None = None  # history only
    mailbox: str | None = None  # history only
    cycle_id: str | None = None  # history only

    def to_json(self) -> dict[str, object]:
        return {"at": self.at, "mailbox": self.mailbox, "side": self.side, "action": self.action,
                "kind": self.kind, "key": self.key, "item_id": self.item_id, "fields": list(self.fields),
                "reason": self.reason, "cycle_id": self.cycle_id, "subject": self.subject}

    @classmethod
    def from_json(cls, value: object) -> ChangeLine:
        data = _obj(value)
        key = data.get("key")
        return cls(_str(data.get("side")), _str(data.get("action")), _str(data.get("kind")),
                   str(key) if _int(key) is not None else _str(key), _strs(data.get("fields")),
                   _str(data.get("reason")), _str(data.get("subject")), _str(data.get("item_id")),
                   _str(data.get("at")), _str(data.get("mailbox")), _str(data.get("cycle_id")))

    @classmethod
    def list_from_json(cls, value: object) -> list[ChangeLine]:
        return [cls.from_json(v) for v in value] if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class PlanFinding:
    code: str | None
    kind: str | None
    message: str | None

    @classmethod
    def from_json(cls, value: object) -> PlanFinding:
        data = _obj(value)
        return cls(_str(data.get("code")), _str(data.get("kind")), _str(data.get("message")))


@dataclass(frozen=True, slots=True)
class PlanWindow:
    past_start: str | None  # items ending after this are in the window
    recurring_end: str | None  # recurring series are expanded until this

    @classmethod
    def from_json(cls, value: object) -> PlanWindow | None:
        data = _obj(value)
        if not data:
            return None
        return cls(_str(data.get("past_start")), _str(data.get("recurring_end")))


@dataclass(frozen=True, slots=True)
class PlanAnswer:
    """The ``plan`` answer (a dry run of one mailbox's cycle)."""

    mailbox: str | None
    window: PlanWindow | None
    actions: list[ChangeLine]
    held_back: list[ChangeLine]  # deletions a guard keeps back
    findings: list[PlanFinding]

    @classmethod
    def from_json(cls, value: object) -> PlanAnswer:
        data = _obj(value)
        findings = data.get("findings")
        return cls(_str(data.get("mailbox")), PlanWindow.from_json(data.get("window")),
                   ChangeLine.list_from_json(data.get("actions")),
                   ChangeLine.list_from_json(data.get("held_back")),
                   [PlanFinding.from_json(f) for f in findings] if isinstance(findings, list) else [])


def history_from_json(value: object) -> list[ChangeLine]:
    """The ``history`` answer: a list of entries (older daemons: ``{"entries": [...]}``)."""
    return ChangeLine.list_from_json(value if isinstance(value, list) else _obj(value).get("entries"))


@dataclass(frozen=True, slots=True)
class ItemErrorLine:
    """One item of a cycle that failed while the rest went on."""

    key: str | None
    code: str | None
    message: str | None

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "code": self.code, "message": self.message}

    @classmethod
    def from_json(cls, value: object) -> ItemErrorLine:
        data = _obj(value)
        return cls(_str(data.get("key")), _str(data.get("code")), _str(data.get("message")))


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """One mailbox's finished cycle in a ``sync --wait`` answer."""

    result: str | None  # ok | partial | held_back | error
    error: str | None
    counts: dict[str, int]
    held_back_deletes: int
    item_errors: list[ItemErrorLine] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"result": self.result, "error": self.error, "counts": dict(self.counts),
                "item_errors": [e.to_json() for e in self.item_errors],
                "held_back_deletes": self.held_back_deletes}

    @classmethod
    def from_json(cls, value: object) -> SyncOutcome | None:
        data = _obj(value)
        if not data:
            return None
        errors = data.get("item_errors")
        return cls(_str(data.get("result")), _str(data.get("error")), _counts(data.get("counts")),
                   _int(data.get("held_back_deletes")) or 0,
                   [ItemErrorLine.from_json(e) for e in errors] if isinstance(errors, list) else [])


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """The ``sync`` answer: what was started, and with ``wait`` each mailbox's outcome."""

    started: list[str]
    queued_behind_running: list[str]
    full: bool
    allow_deletes: bool
    results: dict[str, SyncOutcome | None] | None = None  # only with wait (None: not waited for)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"started": list(self.started),
                                  "queued_behind_running": list(self.queued_behind_running),
                                  "full": self.full, "allow_deletes": self.allow_deletes}
        if self.results is not None:
            out["results"] = {m: o.to_json() if o is not None else None for m, o in self.results.items()}
            out["ok"] = all(o is None or o.result != "error" for o in self.results.values())
        return out

    @classmethod
    def from_json(cls, value: object) -> SyncAnswer:
        data = _obj(value)
        results = data.get("results")
        return cls(_strs(data.get("started")), _strs(data.get("queued_behind_running")),
                   _bool(data.get("full")) is True, _bool(data.get("allow_deletes")) is True,
                   {k: SyncOutcome.from_json(v) for k, v in results.items()} if isinstance(results, dict)
                   else None)


@dataclass(frozen=True, slots=True)
class ReloadAnswer:
    """The ``reload`` answer: the reload record and the config generation now running."""

    record: ReloadRecord
    generation: int | None

    @classmethod
    def from_json(cls, value: object) -> ReloadAnswer:
        data = _obj(value)
        record = ReloadRecord.from_json(data) or ReloadRecord(None, "", [])
        if not record.resync_all and _bool(data.get("full_resync")):  # older daemons' name
            record = replace(record, resync_all=True)
        return cls(record, _int(data.get("generation")))


@dataclass(frozen=True, slots=True)
class ResourceRow:
    """One row of the ``resources`` answer: a PSA resource and the user configured for it."""

    psa_resource: str | None
    name: str | None
    email: str | None
    active: bool | None  # None: the PSA does not have it (in_psa false)
    in_psa: bool | None
    mailbox: str | None  # None: no user is configured for it
    enabled: bool | None
    last_attempt: str | None
    last_success: str | None
    source: str | None = None  # of the configured user: "config" or "users_from_psa"

    def to_json(self) -> dict[str, object]:
        return {"psa_resource": self.psa_resource, "name": self.name, "email": self.email,
                "active": self.active, "in_psa": self.in_psa, "mailbox": self.mailbox,
                "enabled": self.enabled, "last_attempt": self.last_attempt, "last_success": self.last_success,
                "source": self.source}

    @classmethod
    def from_json(cls, value: object) -> ResourceRow:
        data = _obj(value)
        resource = data.get("psa_resource")
        return cls(str(resource) if _int(resource) is not None else _str(resource), _str(data.get("name")),
                   _str(data.get("email")), _bool(data.get("active")), _bool(data.get("in_psa")),
                   _str(data.get("mailbox")), _bool(data.get("enabled")), _str(data.get("last_attempt")),
                   _str(data.get("last_success")), _str(data.get("source")))

    @classmethod
    def list_from_json(cls, value: object) -> list[ResourceRow]:
        return [cls.from_json(v) for v in value] if isinstance(value, list) else []
