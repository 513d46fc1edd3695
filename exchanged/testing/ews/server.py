"""HTTPS transport of the EWS test server: TLS, authentication, test switches, dispatch.

One thread per connection (stdlib ThreadingHTTPServer) with HTTP/1.1 keep-alive, because NTLM
authenticates a connection rather than a request, exactly as IIS in front of Exchange does. The
store is guarded by one lock for a whole operation, so concurrent clients see serialised writes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from ..faults import FaultSwitches
from ..httpd import ServedOverTls, TlsThreadingServer
from ..tls import server_tls
from . import ntlm
from .ops import Dispatcher
from .soap import DATETIME_STYLES, SoapFault, fault_envelope, grommunio_datetimes, server_busy_message
from .store import Store
from .streaming import StreamingLimits

log = logging.getLogger("exchanged.testing.ews")

EWS_PATH = "/EWS/Exchange.asmx"
THROTTLE_STYLES = ("fault", "message")
REQUEST_LOG_MAX = 10_000
DEFAULT_PASSWORD = "SECRET"
SERVICE_PAGE = (
    b"<html><head><title>Service</title></head><body><h1>Service</h1>"
    b"<p>You have created a service.</p></body></html>"
)


@dataclass
class Faults(FaultSwitches):
    """Test switches set through POST /__emulator/faults; each *_next counts down per EWS request."""

    throttle_next: int = 0
    back_off_ms: int = 1000
    fail_next: int = 0
    fail_status: int = 503
    drop_next: int = 0
    latency_ms: int = 0
    # "fault": HTTP 500 SOAP fault (Exchange's usual way); "message": HTTP 200 with ErrorServerBusy
    # inside the operation's response message (seen from real servers too).
    throttle_style: str = "fault"
    # "": the *_next switches hit any request; "CreateItem,DeleteItem": only these operations
    only_ops: str = ""
    # 1: offer and accept Basic only, as some servers do (NTLM is refused with a Basic challenge)
    basic_only: int = 0
    # 1: offer Negotiate first too, as IIS with Windows authentication does (SPNEGO with NTLM inside;
    # no Kerberos). Negotiate is accepted either way.
    offer_negotiate: int = 0

    def check(self, key: str, value: Any) -> None:
        if key == "throttle_style":
            if value not in THROTTLE_STYLES:
                raise ValueError(
                    f"fault switch 'throttle_style' must be one of {THROTTLE_STYLES}, got {value!r}"
                )
        elif key == "only_ops":
            if not isinstance(value, str):
                raise ValueError(f"fault switch 'only_ops' must be a string of operations, got {value!r}")
        else:
            super().check(key, value)


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    auth_failures: int = 0
    active: int = 0
    max_concurrent: int = 0
    throttled: int = 0
    failed: int = 0
    dropped: int = 0
    # arrival time (time.time()), operation and fault of the latest requests: back-off checks
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_MAX))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.app.idle_timeout)  # IIS closes idle connections too

    server: TlsThreadingServer

    ntlm_ctx: Any = None
    auth_scheme: str = "NTLM"  # of the handshake under way: the challenge answers in kind
    connection_user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing ---------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str, headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    # -- routes -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._read_body()
        if self.path == "/__emulator/stats":
            self._send_json(200, self.server.app.stats())
        elif self.path.split("?", 1)[0].lower() == EWS_PATH.lower():
            # IIS in front of Exchange: the challenge first, then the service's page (clients such
            # as DavMail probe the URL this way before they serve anything).
            if self._authenticate() is not None:
                self._send(200, SERVICE_PAGE, "text/html; charset=utf-8")
        else:
            self._send(404, b"Not found", "text/plain")

    def do_POST(self) -> None:
        body = self._read_body()
        app = self.server.app
        if self.path == "/__emulator/faults":
            try:
                values = json.loads(body or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("expected a JSON object")
                app.set_faults(**values)
            except (ValueError, TypeError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, {"faults": app.faults_snapshot()})
            return
        if self.path.split("?", 1)[0].lower() != EWS_PATH.lower():
            self._send(404, b"Not found", "text/plain")
            return
        user = self._authenticate()
        if user is None:
            return
        self._serve_ews(user, body)

    # -- authentication ---------------------------------------------------------------------------
    def _challenge(self, extra: str | None = None) -> None:
        headers = [("WWW-Authenticate", extra)] if extra else [("WWW-Authenticate", "NTLM")]
        if not extra and self.server.app.offer_negotiate():
            headers.insert(0, ("WWW-Authenticate", "Negotiate"))
        if self.server.app.basic_only():
            headers = []
        headers.append(("WWW-Authenticate", 'Basic realm="localhost"'))
        self._send(
            401, b"401 - Unauthorized: Access is denied due to invalid credentials.", "text/html", headers
        )

    def _authenticate(self) -> str | None:
        """The authenticated user, or None after a 401 has been sent."""
        app = self.server.app
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                user, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if app.check_password(user, password):
                return app.canonical_user(user)
            app.count_auth_failure()
            self._challenge()
            return None
        if scheme in ("ntlm", "negotiate"):
            if app.basic_only():
                app.count_auth_failure()
                self._challenge()
                return None
            return self._ntlm_step(token.strip(), scheme)
        if self.connection_user:
            return self.connection_user  # NTLM authenticates the connection, not the request
        self._challenge()
        return None

    def _ntlm_step(self, token: str, scheme: str = "ntlm") -> str | None:
        app = self.server.app
        try:
            raw = base64.b64decode(token, validate=True)
        except (ValueError, binascii.Error):
            raw = b""
        # A new handshake: an NTLM Negotiate message, or a SPNEGO NegTokenInit (ASN.1 [APPLICATION 0])
        if raw[8:12] == b"\x01\x00\x00\x00" or raw[:1] == b"\x60" or self.ntlm_ctx is None:
            spnego_wrapped = scheme == "negotiate" and raw[:1] == b"\x60"
            self.ntlm_ctx = ntlm.ServerContext(app.ntlm_user_file, "negotiate" if spnego_wrapped else "ntlm")
            self.auth_scheme = "Negotiate" if scheme == "negotiate" else "NTLM"
            self.connection_user = None
        try:
            reply, user = self.ntlm_ctx.step(raw)
        except ntlm.NtlmError as exc:
            log.info("NTLM authentication failed: %s", exc)
            self.ntlm_ctx = None
            app.count_auth_failure()
            self._challenge()
            return None
        if user is None:
            self._challenge(f"{self.auth_scheme} " + base64.b64encode(reply).decode())
            return None
        self.ntlm_ctx = None
        canonical = app.canonical_user(user)
        if not canonical:
            app.count_auth_failure()
            self._challenge()
            return None
        self.connection_user = canonical
        return self.connection_user

    # -- EWS --------------------------------------------------------------------------------------
    def _serve_ews(self, user: str, body: bytes) -> None:
        app = self.server.app
        if Dispatcher.operation_name(body) == "GetStreamingEvents":
            self._serve_ews_counted(user, body)  # a hanging connection is not a request in flight
            return
        app.request_started()
        try:
            self._serve_ews_counted(user, body)
        finally:
            app.request_finished()

    def _serve_ews_counted(self, user: str, body: bytes) -> None:
        app = self.server.app
        action = app.take_fault(Dispatcher.operation_name(body))
        if action.latency_ms:
            time.sleep(action.latency_ms / 1000)
        if action.kind == "throttle":
            operation = Dispatcher.operation_name(body)
            app.count_request(operation)
            if action.style == "message":
                self._send(200, server_busy_message(operation, action.back_off_ms), "text/xml; charset=utf-8")
                return
            fault = SoapFault(
                "ErrorServerBusy",
                "The server cannot service this request right now. Try again later.",
                faultcode="a:ErrorServerBusy",
                values={"BackOffMilliseconds": str(action.back_off_ms)},
            )
            self._send(500, fault_envelope(fault), "text/xml; charset=utf-8")
            return
        if action.kind == "fail":
            app.count_request(Dispatcher.operation_name(body))
            self._send(action.status, b"Service Unavailable", "text/html")
            return
        if Dispatcher.operation_name(body) == "GetStreamingEvents" and action.kind == "none":
            self._serve_stream(user, body)
            return
        status, payload = app.dispatcher.handle(user, body, dict(self.headers.items()))
        if action.kind == "drop":
            # The request was carried out; the client never hears about it.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if app.datetime_style == "grommunio":
            payload = grommunio_datetimes(payload)
        self._send(status, payload, "text/xml; charset=utf-8")


    def _serve_stream(self, user: str, body: bytes) -> None:
        """A hanging GetStreamingEvents: chunked transfer encoding, one chunk per envelope."""

        def start() -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()

        def write(doc: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(doc), doc))
            self.wfile.flush()

        def gone() -> bool:
            """The client closed its end (it sends nothing else on a streaming connection)."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and not self.connection.recv(1)
            except (OSError, ValueError):
                return True

        answer = self.server.app.dispatcher.stream(user, body, dict(self.headers.items()), start, write,
                                                   gone)
        if isinstance(answer, tuple):
            self._send(answer[0], answer[1], "text/xml; charset=utf-8")
            return
        if answer in ("dropped", "client"):
            self.close_connection = True
            if answer == "dropped":  # cut, as a failing front end does: no last chunk
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass


@dataclass
class _FaultAction:
    kind: str = "none"
    status: int = 200
    back_off_ms: int = 0
    latency_ms: int = 0
    style: str = "fault"


class EwsTestServer(ServedOverTls):
    """An Exchange 2016 look-alike for exchangelib, in-process (start/stop) or via `python -m`."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        mailboxes: list[str],
        service_accounts: dict[str, str] | None = None,
        port: int = 0,
        password: str = DEFAULT_PASSWORD,
        host: str = "127.0.0.1",
        streaming: StreamingLimits | None = None,
        idle_timeout: float = 120.0,
        datetime_style: str = "exchange",
        mailbox_timezones: dict[str, str] | None = None,
    ) -> None:
        if datetime_style not in DATETIME_STYLES:
            raise ValueError(f"datetime_style must be one of {DATETIME_STYLES}, got {datetime_style!r}")
        # "grommunio": date-times with nine fractional digits, as grommunio's EWS writes them
        self.datetime_style = datetime_style
        self.streaming = streaming or StreamingLimits()  # GetStreamingEvents: see streaming.py
        self.idle_timeout = idle_timeout  # seconds before an idle keep-alive connection is closed
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._mailboxes = [m.lower() for m in mailboxes]
        self._service_accounts = {k.lower(): v for k, v in (service_accounts or {}).items()}
        self._password = password
        self._host = host
        self._port = port
        self._ca_file, self.ssl_context = server_tls(self.state_dir, "exchanged EWS test server")
        self.store = Store(str(self.state_dir / "ews.sqlite3"), self._mailboxes)
        for address, zone in (mailbox_timezones or {}).items():  # kept in the store (shared with Graph)
            self.set_mailbox_timezone(address, zone)
        self.ntlm_user_file = str(
            ntlm.write_user_file(self.state_dir / "ntlm-users", self._ntlm_user_table())
        )
        self.dispatcher = Dispatcher(self)
        self._faults = Faults()
        self._stats = Stats()
        self._lock = threading.Lock()
        self._init_served()

    handler_class = _Handler
    thread_name = "ews-test-server"

    def _stopping(self) -> None:
        self.drop_streams()

    def _stopped(self) -> None:
        self.store.close()

    # -- public properties ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://localhost:{self._port}{EWS_PATH}"

    @property
    def ca_file(self) -> str:
        return str(self._ca_file)

    @property
    def mailboxes(self) -> list[str]:
        return list(self._mailboxes)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._stats.requests),
                "auth_failures": self._stats.auth_failures,
                "throttled": self._stats.throttled,
                "failed": self._stats.failed,
                "dropped": self._stats.dropped,
                "max_concurrent": self._stats.max_concurrent,
                "in_flight": self._stats.active,  # requests being answered right now
                "log": list(self._stats.log),
            } | {"streaming": self.streaming_stats()}

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = Stats(active=self._stats.active)  # requests in flight still finish

    def invitations(self) -> list[dict[str, str]]:
        """Meeting invitations/cancellations clients asked to send (recorded, never sent)."""
        with self.store.lock:
            return self.store.invitations()

    def mailbox_timezone(self, mailbox: str) -> str | None:
        """The Windows name of the zone in the mailbox's OWA.UserOptions, or None. Kept in the store
        as the mailbox setting ``timeZone`` the Graph test server shares (mailboxSettings): an IANA
        name set there is answered here with its Windows name, as Exchange keeps it."""
        from exchangelib.winzone import IANA_TO_MS_TIMEZONE_MAP

        with self.store.lock:
            zone = self.store.mailbox_setting(mailbox, "timeZone")
        if zone and zone in IANA_TO_MS_TIMEZONE_MAP:
            return str(IANA_TO_MS_TIMEZONE_MAP[zone][0])
        return zone

    def set_mailbox_timezone(self, mailbox: str, zone: str | None) -> None:
        """The zone the user chose in OWA (a Windows name such as ``W. Europe Standard Time``);
        None: the mailbox has no OWA.UserOptions (GetUserConfiguration answers ErrorItemNotFound)."""
        with self.store.lock:
            if zone is None:
                self.store.clear_mailbox_setting(mailbox, "timeZone")
            else:
                self.store.set_mailbox_setting(mailbox, "timeZone", zone)

    def set_faults(self, **values: Any) -> None:
        """The switches of ``Faults``; also two actions done at once: ``drop_streams: 1`` cuts every
        open streaming connection, ``expire_subscriptions: 1`` forgets every subscription."""
        actions = {k: values.pop(k) for k in ("drop_streams", "expire_subscriptions") if k in values}
        for key, value in actions.items():
            if value not in (0, 1) or isinstance(value, bool):
                raise ValueError(f"fault switch {key!r} takes 1 (do it now) or 0, got {value!r}")
        with self._lock:
            self._faults.update(values)
        if actions.get("drop_streams"):
            self.drop_streams()
        if actions.get("expire_subscriptions"):
            self.expire_subscriptions()

    def drop_streams(self) -> None:
        """Cut every open GetStreamingEvents connection, without its last envelope."""
        self.dispatcher.streams.drop_streams()

    def expire_subscriptions(self) -> None:
        """Every subscription expires now (later requests: ErrorSubscriptionNotFound)."""
        self.dispatcher.streams.expire_subscriptions()

    def streaming_stats(self) -> dict[str, Any]:
        streams = self.dispatcher.streams
        return {
            "subscriptions": len(streams.subscriptions()),
            "open_connections": streams.open_connections(),
            "connections": [
                {"login": r.login, "anchor": r.anchor, "affinity": r.affinity,
                 "subscriptions": len(r.subscriptions), "ended": r.ended or None}
                for r in list(streams.history)
            ],
        }

    def faults_snapshot(self) -> dict[str, int | str]:
        with self._lock:
            return dict(vars(self._faults))

    # -- used by the handler ----------------------------------------------------------------------
    def canonical_user(self, name: str) -> str:
        """The account's address for a login name: the address itself or NETBIOS\\local
        (NETBIOS = first label of the address's domain, as in EXAMPLE\\svc); '' if unknown."""
        name = name.lower()
        for address in [*self._service_accounts, *self._mailboxes]:
            local, _, domain = address.partition("@")
            if name == address or (domain and name == f"{domain.split('.')[0]}\\{local}"):
                return address
        return ""

    def check_password(self, user: str, password: str) -> bool:
        user = self.canonical_user(user)
        if user in self._service_accounts:
            return self._service_accounts[user] == password
        return bool(user) and user in self._mailboxes and password == self._password

    def is_service_account(self, user: str) -> bool:
        return user.lower() in self._service_accounts

    def offer_negotiate(self) -> bool:
        with self._lock:
            return bool(self._faults.offer_negotiate)

    def basic_only(self) -> bool:
        """The ``basic_only`` switch: Basic is offered and accepted, NTLM is not."""
        with self._lock:
            return bool(self._faults.basic_only)

    def count_auth_failure(self) -> None:
        with self._lock:
            self._stats.auth_failures += 1

    def request_started(self) -> None:
        with self._lock:
            self._stats.active += 1
            self._stats.max_concurrent = max(self._stats.max_concurrent, self._stats.active)

    def request_finished(self) -> None:
        with self._lock:
            self._stats.active -= 1

    def count_request(self, operation: str) -> None:
        with self._lock:
            self._stats.requests[operation] += 1

    def take_fault(self, operation: str = "") -> _FaultAction:
        with self._lock:
            f = self._faults
            action = _FaultAction(latency_ms=f.latency_ms)
            targeted = not f.only_ops or operation in f.only_ops.split(",")
            if not targeted:
                pass
            elif f.throttle_next > 0:
                f.throttle_next -= 1
                self._stats.throttled += 1
                action.kind, action.back_off_ms, action.style = "throttle", f.back_off_ms, f.throttle_style
            elif f.fail_next > 0:
                f.fail_next -= 1
                self._stats.failed += 1
                action.kind, action.status = "fail", f.fail_status
            elif f.drop_next > 0:
                f.drop_next -= 1
                self._stats.dropped += 1
                action.kind = "drop"
            self._stats.log.append({"t": time.time(), "op": operation, "fault": action.kind})
            return action

    def _ntlm_user_table(self) -> dict[str, str]:
        users = {m: self._password for m in self._mailboxes}
        users.update(self._service_accounts)
        return users
