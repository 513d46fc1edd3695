"""exchangectl: inspect and steer a running exchanged through its control socket.

Synchronous and standard-library only (plus ``exchanged.control.protocol``), so that it starts
fast. Every call does the ``version`` handshake first and refuses a daemon that speaks another
protocol major version.

Exit codes: 0 ok; 1 refused or failed (the daemon's error is printed as
``exchangectl: <message> (<reason>)``); 2 usage; 3 daemon not running or not answering.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from exchanged import __version__
from exchanged.control.protocol import (
    CLIENT_MAX_RESPONSE_BYTES,
    PROTOCOL_VERSION,
    ChangeLine,
    LineFramer,
    PlanAnswer,
    ProtocolError,
    ReloadAnswer,
    ResourceRow,
    StatusDocument,
    SyncAnswer,
    UserStatus,
    decode_line,
    encode_message,
    history_from_json,
    make_request,
    parse_since,
    protocol_major,
)

DEFAULT_SOCKET = "/run/exchanged/control.sock"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CONNECT_TIMEOUT = 10.0
# Seconds to wait for an answer unless --timeout says otherwise; None: as long as it takes.
DEFAULT_TIMEOUTS: dict[str, float | None] = {
    "status": 30,
    "users": 30,
    "resources": 60,  # asks the PSA (Autotask: a query of every resource)
    "version": 30,
    "pause": 30,
    "resume": 30,
    "sync": 60,
    "reload": 60,
    "plan": 600,
    "history": 120,
}


# --- failures, each with its exit code -----------------------------------------------------------
class CtlFailure(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str, reason: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.hint = hint


class Unreachable(CtlFailure):
    exit_code = EXIT_UNREACHABLE


class RemoteError(CtlFailure):
    """The daemon answered with a JSON-RPC error."""


def default_socket() -> str:
    return os.environ.get("EXCHANGED_SOCKET") or DEFAULT_SOCKET


# --- the connection ------------------------------------------------------------------------------
class Connection:
    """One control connection: blocking socket, one request line out, one answer line in."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._framer = LineFramer(CLIENT_MAX_RESPONSE_BYTES)
        self._lines: list[bytes] = []
        self._next_id = 1

    def __enter__(self) -> Connection:
        self._sock = self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        hint = "is the daemon running? check `systemctl status exchanged`"
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise Unreachable(
                f"exchanged is not running: no control socket at {self.path}", "daemon_unreachable", hint
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise Unreachable(
                f"exchanged is not running: nothing answers on {self.path}", "daemon_unreachable", hint
            ) from None
        except PermissionError:
            sock.close()
            raise CtlFailure(
                f"permission denied on {self.path}",
                "permission_denied",
                "run as root or as a member of the socket's group (control.group)",
            ) from None
        except TimeoutError:
            sock.close()
            raise Unreachable(
                f"exchanged did not accept a connection on {self.path} within {CONNECT_TIMEOUT:g} s",
                "daemon_unreachable",
                hint,
            ) from None
        except OSError as exc:
            sock.close()
            raise Unreachable(
                f"cannot connect to {self.path}: {exc.strerror or exc}", "daemon_unreachable", hint
            ) from None
        sock.settimeout(self.timeout)
        return sock

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert self._sock is not None, "use Connection as a context manager"
        request_id = self._next_id
        self._next_id += 1
        try:
            self._sock.sendall(encode_message(make_request(request_id, method, params)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may have refused us with a line we can still read below
        except TimeoutError:
            raise self._no_answer() from None
        response = self._read_response()
        if not isinstance(response, dict):
            raise CtlFailure("the daemon sent an answer that is not a JSON-RPC object", "bad_answer")
        error = response.get("error")
        if error is not None:
            raise _remote_error(error)
        if response.get("id") != request_id or "result" not in response:
            raise CtlFailure("the daemon sent an answer that does not match the request", "bad_answer")
        return response["result"]

    def _no_answer(self) -> Unreachable:
        return Unreachable(
            f"exchanged did not answer on {self.path} within {self.timeout:g} s",
            "daemon_not_answering",
            "check `systemctl status exchanged`; use --timeout to wait longer",
        )

    def _read_response(self) -> object:
        assert self._sock is not None
        while not self._lines:
            try:
                data = self._sock.recv(256 * 1024)
            except TimeoutError:
                raise self._no_answer() from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise Unreachable(
                    f"exchanged closed the connection on {self.path} without answering",
                    "daemon_unreachable",
                    "check `systemctl status exchanged` and its log",
                )
            try:
                self._lines.extend(line for line in self._framer.feed(data) if line.strip())
            except ProtocolError:
                raise CtlFailure(
                    "the daemon's answer is larger than exchangectl accepts", "bad_answer"
                ) from None
        try:
            return decode_line(self._lines.pop(0))
        except ProtocolError as exc:
            raise CtlFailure(f"the daemon sent an unreadable answer: {exc.message}", "bad_answer") from None

    def handshake(self, method: str) -> dict[str, Any]:
        """Ask the daemon's version; refuse another protocol major or a method it lacks."""
        info = self.call("version")
        if not isinstance(info, dict):
            raise CtlFailure(
                "the daemon answered `version` with something that is not an object", "bad_answer"
            )
        major = protocol_major(info.get("protocol"))
        if major != PROTOCOL_VERSION:
            raise CtlFailure(
                f"exchangectl {__version__} speaks control protocol {PROTOCOL_VERSION}, but the daemon on "
                f"{self.path} (exchanged {info.get('version', '?')}) "
                f"speaks protocol {info.get('protocol')!r}",
                "protocol_mismatch",
                "use the exchangectl installed with that daemon",
            )
        methods = info.get("methods")
        if isinstance(methods, list) and method not in methods:
            raise CtlFailure(
                f"the daemon on {self.path} (exchanged {info.get('version', '?')}) does not offer {method!r}",
                "method_not_found",
                "upgrade the daemon",
            )
        return info


def _remote_error(error: object) -> RemoteError:
    if not isinstance(error, dict):
        return RemoteError("the daemon refused the request", "unknown")
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    assert isinstance(data, dict)
    return RemoteError(
        str(error.get("message") or "the daemon refused the request"),
        str(data.get("reason") or error.get("code") or "unknown"),
        str(data.get("hint") or ""),
    )


# --- command line --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"exchangectl: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # default=SUPPRESS so that the option works before and after the command
    common.add_argument(
        "--socket",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"control socket (default: $EXCHANGED_SOCKET or {DEFAULT_SOCKET})",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="how long to wait for the answer (0: no limit)",
    )
    common.add_argument(
        "--utc",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show times in UTC instead of local time",
    )
    json_opt = _Parser(add_help=False)
    json_opt.add_argument(
        "--json", action="store_true", help="print the daemon's answer as one JSON document"
    )

    parser = _Parser(
        prog="exchangectl",
        description="Inspect and steer a running exchanged through its control socket.",
        epilog="exit codes: 0 ok; 1 refused or failed; 2 usage; 3 daemon not running or not answering.\n"
        "docs/PROTOCOL.md describes the protocol behind every command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"exchangectl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    both = [common, json_opt]
    sub.add_parser("status", parents=both, help="daemon, config and per-user state")
    sync = sub.add_parser("sync", parents=both, help="start a cycle now (respects locks)")
    sync.add_argument("mailboxes", nargs="*", metavar="MAILBOX", help="default: every enabled user")
    sync.add_argument("--full", action="store_true", help="resync everything, not only changes")
    sync.add_argument("--wait", action="store_true", help="return when the cycles have finished")
    sync.add_argument("--allow-deletes", action="store_true", help="release deletions held back by the guard")
    reload = sub.add_parser("reload", parents=both, help="re-read the config (same as SIGHUP)")
    reload.add_argument("--wait", action="store_true", help="return when a deferred reload is applied")
    for name, what in (("pause", "stop"), ("resume", "restart")):
        cmd = sub.add_parser(name, parents=both, help=f"{what} scheduling (all, or the given mailboxes)")
        cmd.add_argument("mailboxes", nargs="*", metavar="MAILBOX")
    sub.add_parser("users", parents=both, help='the "resources" table')
    sub.add_parser("resources", parents=both,
                   help="every PSA resource: mailbox configured, enabled, last attempt and success")
    plan = sub.add_parser("plan", parents=both, help="dry run: what the next cycle would change, and why")
    plan.add_argument("mailbox", metavar="MAILBOX")
    history = sub.add_parser("history", parents=both, help="every change the daemon made")
    history.add_argument("mailbox", nargs="?", metavar="MAILBOX")
    history.add_argument("--since", metavar="WHEN", help="ISO datetime (local time) or 30m, 2h, 3d, 1w")
    history.add_argument("--limit", type=int, metavar="N",
                         help="at most the N newest entries (default 1000)")
    sub.add_parser("version", parents=both, help="versions of exchangectl, the daemon and the protocol")
    sub.add_parser("metrics", parents=both, help="the daemon's metrics in the Prometheus text format")
    check = sub.add_parser(
        "check", parents=[common],
        help="for monitoring (Nagios/Icinga plugin convention): exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
        description="One line 'EXCHANGED STATE - summary | perfdata'. WARNING: a user's (or the public "
        "contacts folder's) last cycle failed, deletions are held back, a reload was rejected, "
        "scheduling is paused, or the oldest "
        "last success is older than --warning-age; CRITICAL: the daemon does not answer, Exchange is "
        "unreachable or refuses the sync account's login, every user fails, or the oldest last "
        "success is older than --critical-age. Ages default to 3 and 6 sync intervals.")
    check.add_argument("--warning-age", type=float, metavar="MINUTES",
                       help="WARNING when a user's last success is older (default: 3 sync intervals)")
    check.add_argument("--critical-age", type=float, metavar="MINUTES",
                       help="CRITICAL when a user's last success is older (default: 6 sync intervals)")
    check.add_argument("--warning-failing", type=int, default=1, metavar="N",
                       help="WARNING when at least N users' last cycle failed (default 1)")
    check.add_argument("--critical-failing", type=int, default=0, metavar="N",
                       help="CRITICAL when at least N users' last cycle failed (default 0: when all do)")
    return parser


def request_params(args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    """The protocol parameters of a parsed command line (only what the user set)."""
    cmd = args.command
    params: dict[str, Any] = {}
    if cmd in ("sync", "pause", "resume") and args.mailboxes:
        params["mailboxes"] = list(args.mailboxes)
    if cmd == "sync":
        params.update({k: True for k in ("full", "wait", "allow_deletes") if getattr(args, k)})
    if cmd == "reload" and args.wait:
        params["wait"] = True
    if cmd == "plan":
        params["mailbox"] = args.mailbox
    if cmd == "history":
        if args.mailbox:
            params["mailbox"] = args.mailbox
        if args.since:
            params["since"] = parse_since(args.since, now)
        if args.limit is not None:
            if args.limit < 1:
                raise ValueError("--limit must be at least 1")
            params["limit"] = args.limit
    return params


def _timeout(args: argparse.Namespace) -> float | None:
    given = getattr(args, "timeout", None)
    if given is not None:
        return None if given <= 0 else given
    if getattr(args, "wait", False):
        return None
    return DEFAULT_TIMEOUTS.get(args.command, 30)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `exchangectl history | head`: the reader went away; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    now = datetime.now(UTC)
    try:
        params = request_params(args, now)
    except ValueError as exc:
        parser.error(str(exc))
    path = getattr(args, "socket", None) or default_socket()
    clock = Clock(utc=getattr(args, "utc", False))
    if args.command == "check":
        return run_check(args, path, now)
    try:
        with Connection(path, _timeout(args)) as conn:
            info = conn.handshake(args.command)
            result = info if args.command == "version" else conn.call(args.command, params)
    except CtlFailure as failure:
        return report_failure(failure, as_json=args.json)
    if args.json:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False, sort_keys=False)
        sys.stdout.write("\n")
    else:
        RENDERERS[args.command](result, sys.stdout, clock)
    return exit_code_of(args.command, result)


# --- check: the monitoring-plugins convention ------------------------------------------------------

CHECK_OK, CHECK_WARNING, CHECK_CRITICAL, CHECK_UNKNOWN = 0, 1, 2, 3
_CHECK_NAMES = {CHECK_OK: "OK", CHECK_WARNING: "WARNING", CHECK_CRITICAL: "CRITICAL",
                CHECK_UNKNOWN: "UNKNOWN"}


def run_check(args: argparse.Namespace, path: str, now: datetime) -> int:
    given = getattr(args, "timeout", None)
    try:
        with Connection(path, 10.0 if given is None else (None if given <= 0 else given)) as conn:
            conn.handshake("status")
            status = conn.call("status", {})
    except Unreachable as failure:
        return _check_line(CHECK_CRITICAL, f"exchanged does not answer: {failure.message}")
    except CtlFailure as failure:
        return _check_line(CHECK_UNKNOWN, f"{failure.message} ({failure.reason})")
    code, summary = evaluate_check(status, now, warning_age_min=args.warning_age,
                                   critical_age_min=args.critical_age,
                                   warning_failing=args.warning_failing,
                                   critical_failing=args.critical_failing)
    return _check_line(code, summary)


def _check_line(code: int, summary: str) -> int:
    print(f"EXCHANGED {_CHECK_NAMES[code]} - {summary}")
    return code


def evaluate_check(status: object, now: datetime, *, warning_age_min: float | None = None,
                   critical_age_min: float | None = None, warning_failing: int = 1,
                   critical_failing: int = 0) -> tuple[int, str]:
    """(exit code, "summary | perfdata") for one ``status`` answer; pure, for the tests."""
    if not isinstance(status, dict) or "state" not in status:
        return CHECK_UNKNOWN, "the daemon's status answer has no state"
    doc = StatusDocument.from_json(status)
    interval = doc.interval_minutes
    interval_min = float(interval) if interval is not None and interval > 0 else 15.0
    warn_s = 60 * (warning_age_min if warning_age_min is not None else 3 * interval_min)
    crit_s = 60 * (critical_age_min if critical_age_min is not None else 6 * interval_min)
    started = _parse_time(doc.started_at)
    users = [u for u in doc.users if u.enabled]
    failing = [u for u in users if u.cycle.last_result == "error" or u.cycle.state == "error"]
    held = [u for u in users if u.cycle.last_result == "held_back"]
    oldest_age, oldest_who = 0.0, ""
    for u in users:
        seen = _parse_time(u.cycle.last_success) or started  # never: since the daemon started
        if seen is not None and (now - seen).total_seconds() > oldest_age:
            oldest_age, oldest_who = (now - seen).total_seconds(), _text(u.mailbox)
    exchange, reload = doc.exchange, doc.config.last_reload
    code, problems = CHECK_OK, []

    def worse(level: int, text: str) -> None:
        nonlocal code
        code = max(code, level)
        problems.append(text)

    state = _text(doc.state)
    if state == "disabled":
        return CHECK_OK, (f"disabled (enabled: false in the config) | users={len(users)} "
                          f"generation={_text(doc.config.generation)}")
    if exchange.reachable is False:
        worse(CHECK_CRITICAL, f"Exchange {_text(exchange.server)} is not reachable")
    elif exchange.login == "refused":
        worse(CHECK_CRITICAL, "Exchange refuses the login of the sync account")
    if failing:
        all_fail = critical_failing <= 0 and len(failing) == len(users)
        level = (CHECK_CRITICAL if all_fail or (critical_failing > 0 and len(failing) >= critical_failing)
                 else CHECK_WARNING if len(failing) >= max(1, warning_failing) else CHECK_OK)
        names = ", ".join(_text(u.mailbox) for u in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        if level:
            worse(level, f"{len(failing)} of {len(users)} users failing ({names}{more})")
    if held:
        worse(CHECK_WARNING, f"deletions held back for {len(held)} user(s) (exchangectl plan)")
    public = doc.public_folder
    if public is not None and (public.last_result == "error" or public.state == "error"):
        worse(CHECK_WARNING, "the public contacts folder's last cycle failed")
    if oldest_age >= crit_s:
        worse(CHECK_CRITICAL, f"no successful cycle of {oldest_who} for {oldest_age / 60:.0f} min")
    elif oldest_age >= warn_s:
        worse(CHECK_WARNING, f"no successful cycle of {oldest_who} for {oldest_age / 60:.0f} min")
    if reload is not None and reload.result == "rejected":
        worse(CHECK_WARNING, "the last reload was rejected (the previous config runs)")
    if doc.paused:
        worse(CHECK_WARNING, "scheduling is paused")
    summary = "; ".join(problems) if problems else f"{len(users)} users syncing, {state}"
    perf = (f"users={len(users)} failing={len(failing)};{max(1, warning_failing)};"
            f"{critical_failing if critical_failing > 0 else len(users)};0;{len(users)} "
            f"oldest_success_age={oldest_age:.0f}s;{warn_s:.0f};{crit_s:.0f};0 "
            f"held_back={len(held)} running={_text(doc.running)}")
    return code, f"{summary} | {perf}"


def report_failure(failure: CtlFailure, *, as_json: bool) -> int:
    print(f"exchangectl: {failure.message} ({failure.reason})", file=sys.stderr)
    if failure.hint:
        print(f"exchangectl: hint: {failure.hint}", file=sys.stderr)
    if as_json:  # scripts always get exactly one document on stdout
        doc = {"error": {"reason": failure.reason, "message": failure.message, "hint": failure.hint}}
        json.dump(doc, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    return failure.exit_code


def exit_code_of(command: str, result: object) -> int:
    """Exit 1 when the daemon answered but the outcome is a refusal (SPEC section 2)."""
    if not isinstance(result, dict):
        return EXIT_OK
    if command == "reload" and result.get("result") == "rejected":
        return EXIT_FAILED
    if command == "sync" and result.get("ok") is False:  # --wait and a cycle ended in error
        return EXIT_FAILED
    return EXIT_OK


# --- rendering -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Clock:
    """Shows the daemon's ISO timestamps consistently in local time or UTC."""

    utc: bool = False

    def describe(self) -> str:
        if self.utc:
            return "times in UTC"
        local = datetime.now().astimezone()
        offset = local.strftime("%z")
        if offset == "+0000":
            return "times in local time (UTC)"
        return f"times in local time ({local.tzname()}, UTC{offset[:3]}:{offset[3:]})"

    def show(self, value: object) -> str:
        when = _parse_time(value)
        if when is None:
            return "-" if value in (None, "") else str(value)
        try:
            when = when.astimezone(UTC) if self.utc else when.astimezone()
        except (OverflowError, OSError, ValueError):  # e.g. year 1 shifted out of range
            return str(value)
        return when.strftime("%Y-%m-%d %H:%M:%S")


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)  # the wire's naive times are UTC
    return None


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "-"
    return " ".join(str(value).split())  # one line per cell, always


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """An aligned table; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        out.write("  ".join(cells).rstrip() + "\n")


def _block(pairs: Sequence[tuple[str, str]], out: TextIO) -> None:
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        out.write(f"{(key + ':').ljust(width)}  {value}\n")


def render_status(result: object, out: TextIO, clock: Clock) -> None:
    status = StatusDocument.from_json(result)
    config, exchange, reload = status.config, status.exchange, status.config.last_reload
    pairs = [
        ("daemon",
         f"exchanged {_text(status.version)} (protocol {_text(status.protocol)}), {clock.describe()}"),
        ("state", _text(status.state) + (" (scheduling paused)" if status.paused is True else "")),
        ("pid", f"{_text(status.pid)}, started {clock.show(status.started_at)}"),
        ("profile", _text(config.profile_name)),
        (
            "config",
            f"{_text(config.path)}, generation {_text(config.generation)}, "
            f"loaded {clock.show(config.loaded_at)}",
        ),
    ]
    if reload is not None:
        pairs.append(("last reload", f"{_text(reload.result)} at {clock.show(reload.at)}"))
        pairs.extend(("", f"  {_text(e)}") for e in reload.errors)
    reachable = exchange.reachable
    reach = "reachable" if reachable is True else "NOT reachable" if reachable is False else "not checked yet"
    if reachable is True and exchange.login == "refused":
        reach += ", but the login of the sync account is REFUSED"
    elif reachable is True and exchange.login == "ok":
        reach += ", login ok"
    version = f" ({exchange.version})" if exchange.version else ""
    pairs.append(("exchange", f"{_text(exchange.server)}{version}, {reach}"))
    if exchange.back_off_until:
        whose = "the server's back-off" if exchange.back_off_by_server else "a back-off after throttling"
        until = clock.show(exchange.back_off_until).rsplit(" ", 1)[-1]
        pairs.append(("waiting", f"waiting for {whose} until {until}"))
    if exchange.last_error:
        pairs.append(("last error", _text(exchange.last_error)))
    for warning in config.warnings:
        pairs.append(("config warning", _text(warning)))
    if status.running is not None:
        pairs.append(("running", f"{status.running} cycle(s)"))
    if status.interval_minutes is not None:
        limit = status.max_concurrent_users
        at_once = f", at most {limit} users at once" if limit is not None else ""
        pairs.append(("schedule", f"every {status.interval_minutes} min{at_once}"))
    _block(pairs, out)
    out.write("\n")
    if not status.users:
        out.write("no users configured\n")
        return
    rows = [
        [
            _text(u.mailbox),
            _text(u.psa_resource),
            _user_state(u),
            clock.show(u.cycle.last_attempt),
            _text(u.cycle.last_result),
            clock.show(u.cycle.next_run),
        ]
        for u in status.users
    ]
    headers = ["MAILBOX", "RESOURCE", "STATE", "LAST ATTEMPT", "RESULT", "NEXT RUN"]
    _source_column(headers, rows, [u.source for u in status.users])
    if any(u.push is not None for u in status.users):  # how Exchange changes reach the daemon
        headers.append("CHANGES")
        for row, u in zip(rows, status.users, strict=True):
            row.append(_text(u.push.mode if u.push else None))
    table(headers, rows, out)
    _error_lines(status.users, out)
    # why a mailbox is polled when push failed (not: starting, or Graph, which never pushes)
    failed = [u for u in status.users if u.push is not None and u.push.mode == "polled"
              and (u.push.note or "").startswith("polled:")]
    if failed:
        out.write("\n")
    for user in failed[:10]:
        out.write(f"{_text(user.mailbox)}: {_text(user.push.note if user.push else None)}\n")


def _user_state(user: UserStatus) -> str:
    state = _text(user.cycle.state)
    progress = user.cycle.progress
    if progress is not None and progress.total:
        state += f" {progress.done}/{progress.total}"
    if user.enabled is False and state != "disabled":
        state += " (disabled)"
    if user.held_by is not None:
        state += f" by {_text(user.held_by.node)}"
    return state


def _error_lines(users: Sequence[UserStatus], out: TextIO) -> None:
    failing = [u for u in users if u.cycle.last_error]
    if failing:
        out.write("\n")
    for user in failing:
        out.write(f"{_text(user.mailbox)}: last error: {_text(user.cycle.last_error)}\n")


def render_users(result: object, out: TextIO, clock: Clock) -> None:
    users = [UserStatus.from_json(u) for u in _list(result) if isinstance(u, dict)]
    if not users:
        out.write("no users configured\n")
        return
    out.write(f"{clock.describe()}\n")
    rows = [
        [
            _text(u.mailbox),
            _text(u.psa_resource),
            _text(u.enabled),
            clock.show(u.cycle.last_attempt),
            _text(u.cycle.last_result),
            clock.show(u.cycle.next_run),
        ]
        for u in users
    ]
    headers = ["MAILBOX", "PSA RESOURCE", "ENABLED", "LAST ATTEMPT", "RESULT", "NEXT RUN"]
    _source_column(headers, rows, [u.source for u in users])
    table(headers, rows, out)
    _error_lines(users, out)


def _source_column(headers: list[str], rows: list[list[str]], sources: Sequence[str | None]) -> None:
    """A FROM column (config / PSA) when ``users_from_psa`` added any of the users, else none."""
    if "users_from_psa" not in sources:
        return
    headers.append("FROM")
    for row, source in zip(rows, sources, strict=True):
        row.append("PSA" if source == "users_from_psa" else _text(source))


def render_resources(result: object, out: TextIO, clock: Clock) -> None:
    rows = ResourceRow.list_from_json(result)
    if not rows:
        out.write("the PSA has no resources\n")
        return
    out.write(f"{clock.describe()}\n")

    def yes(value: bool | None) -> str:
        return "-" if value is None else "yes" if value else "no"

    headers = ["ID", "NAME", "EMAIL", "ACTIVE", "MAILBOX", "ENABLED", "LAST ATTEMPT", "LAST SUCCESS"]
    cells = [[_text(r.psa_resource), _text(r.name), _text(r.email), yes(r.active),
              _text(r.mailbox) if r.mailbox else "-", yes(r.enabled),
              clock.show(r.last_attempt), clock.show(r.last_success)] for r in rows]
    _source_column(headers, cells, [r.source if r.mailbox else None for r in rows])
    table(headers, cells, out)
    missing = [r for r in rows if r.in_psa is False]
    for r in missing:
        out.write(f"note: {r.mailbox} is configured for PSA resource {r.psa_resource}, "
                  "which the PSA does not have\n")
    unsynced = sum(1 for r in rows if r.active and not r.enabled)
    if unsynced:
        out.write(f"{unsynced} active PSA resource(s) not synced: add them to users: in the config, or "
                  "set users_from_psa.enabled: all_active to sync every active resource with a mailbox\n")


_ACTION_ORDER = {"create": 0, "update": 1, "delete": 2, "adopt": 3, "forget": 4}
PLAN_COLUMNS = ["SIDE", "ACTION", "KIND", "KEY", "SUBJECT / FIELDS", "REASON"]


def _plan_rows(entries: Sequence[ChangeLine]) -> list[list[str]]:
    return [
        [_text(e.side), _text(e.action), _text(e.kind), _text(e.key), _subject_or_fields(e), _text(e.reason)]
        for e in entries
    ]


def _plan_summary(entries: Sequence[ChangeLine]) -> str:
    parts = []
    for side in ("exchange", "psa"):
        verbs = {"create": 0, "update": 0, "delete": 0}
        for e in entries:
            if e.side == side:
                verb = str(e.action)
                verbs[verb] = verbs.get(verb, 0) + 1
        parts.append(f"{side}: " + ", ".join(f"{n} {verb}" for verb, n in verbs.items()))
    return "; ".join(parts)


def render_plan(result: object, out: TextIO, clock: Clock) -> None:
    plan = PlanAnswer.from_json(result)
    mailbox = _text(plan.mailbox)
    entries = sorted(plan.actions, key=_plan_order)
    held = sorted(plan.held_back, key=_plan_order)
    out.write(f"plan for {mailbox} (dry run, nothing changed): {_plan_summary(entries)}\n")
    if plan.window is not None:
        out.write(
            f"window: items ending after {clock.show(plan.window.past_start)}, recurring series "
            f"until {clock.show(plan.window.recurring_end)} ({clock.describe()})\n"
        )
    for finding in plan.findings:
        out.write(f"finding: {_text(finding.message)} ({_text(finding.code)})\n")
    if entries:
        out.write("\n")
        table(PLAN_COLUMNS, _plan_rows(entries), out)
    else:
        out.write("nothing to do\n")
    if held:
        out.write(f"\nheld back ({len(held)}; review, then `exchangectl sync {mailbox} --allow-deletes`):\n")
        table(PLAN_COLUMNS, _plan_rows(held), out)


def _plan_order(entry: ChangeLine) -> tuple[str, int]:
    return str(entry.side), _ACTION_ORDER.get(str(entry.action), 9)


def _subject_or_fields(entry: ChangeLine) -> str:
    parts = [f'"{_text(entry.subject)}"'] if entry.subject else []
    if entry.fields:
        parts.append(_text(entry.fields))
    return " ".join(parts) or "-"


def render_history(result: object, out: TextIO, clock: Clock) -> None:
    entries = history_from_json(result)
    if not entries:
        out.write("no changes recorded\n")
        return
    out.write(f"{clock.describe()}\n")
    rows = [
        [
            clock.show(e.at),
            _text(e.mailbox),
            _text(e.side),
            _text(e.action),
            _text(e.kind),
            _text(e.key),
            _subject_or_fields(e),
            _text(e.reason),
        ]
        for e in entries
    ]
    table(["TIME", "MAILBOX", "SIDE", "ACTION", "KIND", "KEY", "WHAT", "REASON"], rows, out)


def render_sync(result: object, out: TextIO, clock: Clock) -> None:
    sync = SyncAnswer.from_json(result)
    started = [_text(m) for m in sync.started]
    queued = {_text(m) for m in sync.queued_behind_running}
    results = sync.results or {}
    if not started and not results:
        _render_generic(result, out, clock)
        return
    flags = [f for f, on in (("full", sync.full), ("allow_deletes", sync.allow_deletes)) if on]
    out.write(
        f"sync requested for {len(started)} mailbox(es)" + (f" ({', '.join(flags)})" if flags else "") + "\n"
    )
    rows = []
    for mailbox in started or sorted(results):
        outcome = results.get(mailbox)
        if outcome is not None:
            detail = ", ".join(f"{n} {k}" for k, n in outcome.counts.items() if n) or "no changes"
            if outcome.held_back_deletes:
                detail += f"; {outcome.held_back_deletes} deletion(s) held back"
            if outcome.error:
                detail = _text(outcome.error)
            rows.append([mailbox, _text(outcome.result), detail])
        else:
            rows.append([mailbox, "queued behind the running cycle" if mailbox in queued else "started", "-"])
    table(["MAILBOX", "RESULT", "DETAIL"], rows, out)


def render_reload(result: object, out: TextIO, clock: Clock) -> None:
    answer = ReloadAnswer.from_json(result)
    reload = answer.record
    outcome = _text(reload.result)
    line = f"reload {outcome}"
    if answer.generation is not None:
        line += f": config generation {answer.generation}"
    out.write(line + "\n")
    for key, names in (("added", reload.added), ("removed", reload.removed), ("changed", reload.changed)):
        if names:
            out.write(f"  {key}: {', '.join(_text(m) for m in names)}\n")
    if reload.resync_all:
        out.write("  every user will be fully resynced (server or domain changed)\n")
    for error in reload.errors:
        (sys.stderr if outcome == "rejected" else out).write(f"  {_text(error)}\n")
    if outcome == "deferred":
        out.write("  applied as soon as the running cycles end (`exchangectl status` shows it)\n")


def render_pause(result: object, out: TextIO, clock: Clock) -> None:
    state = _dict(result)
    for verb in ("paused", "resumed"):
        if verb in state:
            names = [_text(m) for m in _list(state.get(verb))]
            if state.get("global"):
                out.write(f"scheduling {verb} for every user\n")
            else:
                out.write(f"{verb}: {', '.join(names) if names else 'nothing'}\n")
            return
    _render_generic(result, out, clock)


def render_version(result: object, out: TextIO, clock: Clock) -> None:
    info = _dict(result)
    out.write(f"exchangectl {__version__}, protocol {PROTOCOL_VERSION}\n")
    out.write(f"exchanged   {_text(info.get('version'))}, protocol {_text(info.get('protocol'))}\n")


def _render_generic(result: object, out: TextIO, clock: Clock) -> None:
    if isinstance(result, dict) and result:
        _block([(str(k), _text(v)) for k, v in result.items()], out)
    elif result not in (None, {}, []):
        out.write(_text(result) + "\n")
    else:
        out.write("ok\n")


def render_metrics(result: object, out: TextIO, clock: Clock) -> None:
    text = _dict(result).get("text")
    out.write(text if isinstance(text, str) and text.endswith("\n") else f"{_text(text)}\n")


RENDERERS: dict[str, Callable[[object, TextIO, Clock], None]] = {
    "metrics": render_metrics,
    "status": render_status,
    "users": render_users,
    "resources": render_resources,
    "plan": render_plan,
    "history": render_history,
    "sync": render_sync,
    "reload": render_reload,
    "pause": render_pause,
    "resume": render_pause,
    "version": render_version,
}


if __name__ == "__main__":
    sys.exit(main())
