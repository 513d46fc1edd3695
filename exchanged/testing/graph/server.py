"""HTTPS transport of the Graph test server: TLS, the identity platform endpoints, Graph v1.0,
JSON batching, the test switches (/__emulator/stats, /__emulator/faults).

One process serves both hosts an app talks to: ``login_url`` (https://127.0.0.1:PORT, the
identity platform: tenant discovery and the token endpoint) and ``url`` (https://localhost:PORT,
Graph). They are told apart by the Host header, so a client that mixes them up gets the 404 it
would get from Microsoft. The TLS material (CA, certificate) is the EWS test server's, under the
same state dir, so one ``ca.pem`` serves both front ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from ..ews.store import Store
from ..faults import FaultSwitches
from ..httpd import ServedOverTls, TlsThreadingServer
from ..tls import server_tls
from .api import JSON_TYPE, GraphApi, Request, Response, error_response, match_route, path_pattern
from .auth import DEFAULT_TOKEN_LIFETIME, AadError, Authority, Client, TokenError
from .convert import GraphError

log = logging.getLogger("exchanged.testing.graph")

REQUEST_LOG_MAX = 10_000
BATCH_MAX = 20
MAILBOX_CONCURRENCY = 4  # Exchange Online: at most 4 concurrent requests per app and mailbox
GRAPH_HOST = "localhost"
LOGIN_HOST = "127.0.0.1"


@dataclass
class Faults(FaultSwitches):
    """Switches set through POST /__emulator/faults. The *_next switches count down per Graph
    request (the identity endpoints are never hit); ``batch_*_next`` per request inside $batch."""

    throttle_next: int = 0  # 429 ApplicationThrottled with Retry-After
    retry_after_s: int = 1
    fail_next: int = 0  # fail_status (503) with Retry-After
    fail_status: int = 503
    drop_next: int = 0  # carried out, then the connection closes without an answer
    latency_ms: int = 0
    batch_throttle_next: int = 0  # a request inside $batch answers 429 (the others run)
    batch_fail_next: int = 0  # a request inside $batch answers 503
    expire_tokens_next: int = 0  # a delta/skip token is answered 410 SyncStateNotFound
    token_fail_next: int = 0  # the token endpoint answers 503 temporarily_unavailable (AADSTS90033)
    mailbox_concurrency: int = MAILBOX_CONCURRENCY  # 0: no limit
    # >0: the parts of one $batch without dependsOn run at once, as on Graph, so those beyond this
    # many for one mailbox answer 429 ApplicationThrottled (what tenants see with batches of 20)
    batch_mailbox_concurrency: int = 0
    # "": the *_next switches hit any request; "POST /v1.0/$batch,GET /v1.0/users/{user}/events":
    # only requests of these patterns (as /__emulator/stats names them)
    only: str = ""

    def check(self, key: str, value: Any) -> None:
        if key == "only":
            if not isinstance(value, str):
                raise ValueError(f"fault switch 'only' must be a string of request patterns, got {value!r}")
        else:
            super().check(key, value)


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    batched: Counter[str] = field(default_factory=Counter)
    auth_failures: int = 0
    tokens_issued: int = 0
    active: int = 0
    max_concurrent: int = 0
    per_mailbox: Counter[str] = field(default_factory=Counter)
    max_concurrent_per_mailbox: int = 0
    throttled: int = 0
    failed: int = 0
    dropped: int = 0
    log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_MAX))


@dataclass
class _FaultAction:
    kind: str = "none"
    status: int = 200
    retry_after_s: int = 0
    latency_ms: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    server: TlsThreadingServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.app.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if body or status not in (204, 304):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def _graph_headers(self) -> dict[str, str]:
        request_id = str(uuid.uuid4())
        return {
            "request-id": request_id,
            "client-request-id": self.headers.get("client-request-id") or request_id,
            "x-ms-ags-diagnostic": '{"ServerInfo":{"DataCenter":"Test","Slice":"E","Ring":"0",'
            '"ScaleUnit":"000","RoleInstance":"exchanged-graph-test"}}',
            "OData-Version": "4.0",
            "Strict-Transport-Security": "max-age=31536000",
        }

    def _send_graph(self, response: Response) -> None:
        headers = {**self._graph_headers(), **response.headers}
        if response.status == 204 or response.body is None:
            self._send(response.status, b"", JSON_TYPE, headers)
        else:
            self._send(response.status, json.dumps(response.body).encode(), JSON_TYPE, headers)

    def _host(self) -> str:
        host = (self.headers.get("Host") or "").strip()
        if host.startswith("["):
            return host[1 : host.find("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    # -- routes --------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        body = self._read_body()
        app = self.server.app
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        if path.startswith("/__emulator/"):
            self._emulator(method, path, body)
            return
        if self._host() == LOGIN_HOST:
            self._login(method, path, parsed.query, body)
            return
        if not path.startswith("/v1.0/") and path != "/v1.0":
            app.count_request(f"{method} (unknown)")
            self._send_graph(
                error_response(
                    GraphError(400, "BadRequest", f"Invalid version: the path {path} is not under /v1.0.")
                )
            )
            return
        self._graph(method, path[len("/v1.0") :] or "/", parsed.query, body)

    # -- test switches ----------------------------------------------------------------------------------
    def _emulator(self, method: str, path: str, body: bytes) -> None:
        app = self.server.app
        if method == "GET" and path == "/__emulator/stats":
            self._send_json(200, app.stats())
        elif method == "POST" and path == "/__emulator/faults":
            try:
                values = json.loads(body or b"{}")
                if not isinstance(values, dict):
                    raise ValueError("expected a JSON object")
                app.set_faults(**values)
            except (ValueError, TypeError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, {"faults": app.faults_snapshot()})
        elif method == "POST" and path == "/__emulator/reset-stats":
            app.reset_stats()
            self._send_json(200, {})
        else:
            self._send(404, b"Not found", "text/plain")

    # -- identity platform --------------------------------------------------------------------------------
    def _login(self, method: str, path: str, query: str, body: bytes) -> None:
        app = self.server.app
        parts = [p for p in path.split("/") if p]
        login_url = app.login_url
        if method == "GET" and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            app.count_request("GET /{tenant}/v2.0/.well-known/openid-configuration")
            if not app.authority.knows_tenant(parts[0]):
                err = AadError(
                    400,
                    "invalid_tenant",
                    90002,
                    f"Tenant '{parts[0]}' not found. Check to make sure you have the correct tenant ID "
                    "and are signing into the correct cloud.",
                )
                self._send_json(err.status, err.body())
                return
            self._send_json(200, app.authority.openid_configuration(login_url, parts[0]))
        elif method == "GET" and parts == ["common", "discovery", "instance"]:
            app.count_request("GET /common/discovery/instance")
            q = urllib.parse.parse_qs(query)
            endpoint = (q.get("authorization_endpoint") or [""])[0]
            self._send_json(200, app.authority.instance_discovery(login_url, endpoint))
        elif method == "GET" and parts[1:] == ["discovery", "v2.0", "keys"]:
            self._send_json(200, {"keys": []})
        elif method == "POST" and parts[1:] == ["oauth2", "v2.0", "token"]:
            app.count_request("POST /{tenant}/oauth2/v2.0/token")
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
            token_endpoint = f"{login_url}/{parts[0]}/oauth2/v2.0/token"
            if app.take_token_fault():
                err = AadError(
                    503, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
                )
                self._send_json(
                    err.status, err.body(), {"Retry-After": str(app.faults_snapshot()["retry_after_s"])}
                )
                return
            try:
                answer = app.authority.token(parts[0], form, token_endpoint, time.time())
            except AadError as err:
                app.count_auth_failure()
                self._send_json(err.status, err.body(), {"Cache-Control": "no-store, no-cache"})
                return
            app.count_token()
            self._send_json(200, answer, {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})
        else:
            app.count_request(f"{method} (unknown login path)")
            self._send(404, b"Not found", "text/plain")

    # -- Graph ------------------------------------------------------------------------------------------
    def _graph(self, method: str, path: str, query: str, body: bytes) -> None:
        app = self.server.app
        pattern = (
            "POST /v1.0/$batch"
            if (method, path.rstrip("/")) == ("POST", "/$batch")
            else path_pattern(method, path)
        )
        app.count_request(pattern)
        app.request_started()
        mailboxes: list[str] = []
        try:
            action = app.take_fault(pattern)
            if action.kind == "throttle":
                self._send_graph(throttled(action.retry_after_s))
                return
            if action.kind == "fail":
                self._send_graph(unavailable(action.status, action.retry_after_s))
                return
            try:
                grant = app.authority.check(self.headers.get("Authorization"), time.time())
            except TokenError as exc:
                app.count_auth_failure()
                response = error_response(GraphError(401, "InvalidAuthenticationToken", str(exc)))
                response.headers["WWW-Authenticate"] = (
                    'Bearer realm="", '
                    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                    'client_id="00000003-0000-0000-c000-000000000000"'
                )
                self._send_graph(response)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            if pattern == "POST /v1.0/$batch":
                payload = _json_body(body)
                mailboxes = sorted({app.mailbox_key(m) for m in _batch_mailboxes(payload)})
                if not app.enter_mailboxes(mailboxes):
                    mailboxes = []
                    self._send_graph(concurrency_throttled())
                    return
                _sleep(action.latency_ms)
                response = app.batch(payload, grant, headers)
            else:
                found = match_route(method, path)
                mailboxes = [app.mailbox_key(found[1]["user"])] if found else []
                if not app.enter_mailboxes(mailboxes):
                    mailboxes = []
                    self._send_graph(concurrency_throttled())
                    return
                q = {k: v[0] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
                try:
                    parsed_body = _json_body(body) if body else None
                except GraphError as exc:
                    self._send_graph(error_response(exc))
                    return
                _sleep(action.latency_ms)
                response = app.api.handle(Request(method, path, q, headers, parsed_body, grant))
            if action.kind == "drop":
                # The request was carried out; the client never hears about it.
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send_graph(response)
        except GraphError as exc:
            self._send_graph(error_response(exc))
        finally:
            app.leave_mailboxes(mailboxes)
            app.request_finished()


def _sleep(latency_ms: int) -> None:
    """latency_ms: time the request spends "in the server" (counted against its mailbox)."""
    if latency_ms:
        time.sleep(latency_ms / 1000)


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise GraphError(400, "BadRequest", f"Unable to read JSON request payload: {exc}.") from None


def _batch_mailboxes(payload: Any) -> list[str]:
    out: set[str] = set()
    for req in payload.get("requests", []) if isinstance(payload, dict) else []:
        url = req.get("url") if isinstance(req, dict) else None
        if isinstance(url, str):
            parts = [p for p in urllib.parse.urlsplit(url).path.split("/") if p]
            if len(parts) >= 2 and parts[0].lower() == "users":
                out.add(urllib.parse.unquote(parts[1]).lower())
    return sorted(out)


def throttled(retry_after_s: int) -> Response:
    response = error_response(
        GraphError(429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
    )
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def concurrency_throttled() -> Response:
    return throttled(1)


def unavailable(status: int, retry_after_s: int) -> Response:
    code = "serviceNotAvailable" if status == 503 else "generalException"
    response = error_response(
        GraphError(status, code, "The service is temporarily unavailable. Please retry after some time.")
    )
    if status in (429, 503):
        response.headers["Retry-After"] = str(retry_after_s)
    return response


class GraphTestServer(ServedOverTls):
    """A Microsoft Graph (and identity platform) look-alike, in-process or via ``python -m``.

    ``store``: share an EwsTestServer's store object (one process, two front ends); otherwise
    the server opens ``state_dir/ews.sqlite3`` itself, which an EWS test server in another
    process may serve at the same time (see docs/TEST_SERVER.md).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        mailboxes: list[str],
        tenant: str,
        clients: list[Client],
        port: int = 0,
        host: str = "127.0.0.1",
        store: Store | None = None,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        time_zones: dict[str, str] | None = None,
        default_time_zone: str = "UTC",
        idle_timeout: float = 120.0,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.idle_timeout = idle_timeout
        self.default_time_zone = default_time_zone
        self._mailboxes = [m.lower() for m in mailboxes]
        self._host = host
        self._port = port
        self._ca_file, self.ssl_context = server_tls(self.state_dir, "exchanged EWS test server")
        self._own_store = store is None
        self.store = (
            store if store is not None else Store(str(self.state_dir / "ews.sqlite3"), self._mailboxes)
        )
        if store is not None:
            with store.lock:
                for address in self._mailboxes:
                    store.ensure_mailbox(address)
        with self.store.lock:
            for address, zone in (time_zones or {}).items():
                self.store.set_mailbox_setting(address, "timeZone", zone)
        self.authority = Authority(self.state_dir, tenant, clients, token_lifetime)
        self.api = GraphApi(self)
        self._faults = Faults()
        self._stats = Stats()
        self._lock = threading.Lock()
        self._init_served()
        self._rng = random.Random()

    handler_class = _Handler
    thread_name = "graph-test-server"

    def _stopped(self) -> None:
        if self._own_store:
            self.store.close()

    # -- public ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Graph's base URL (server.graph_url); requests go to {url}/v1.0/..."""
        return f"https://{GRAPH_HOST}:{self._port}"

    @property
    def login_url(self) -> str:
        """The identity platform's base URL (server.login_url); MSAL's authority is {login_url}/{tenant}."""
        return f"https://{LOGIN_HOST}:{self._port}"

    @property
    def ca_file(self) -> str:
        return str(self._ca_file)

    @property
    def tenant(self) -> str:
        return self.authority.tenant

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._stats.requests),
                "batched": dict(self._stats.batched),
                "auth_failures": self._stats.auth_failures,
                "tokens_issued": self._stats.tokens_issued,
                "throttled": self._stats.throttled,
                "failed": self._stats.failed,
                "dropped": self._stats.dropped,
                "max_concurrent": self._stats.max_concurrent,
                "max_concurrent_per_mailbox": self._stats.max_concurrent_per_mailbox,
                "log": list(self._stats.log),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = Stats(active=self._stats.active, per_mailbox=self._stats.per_mailbox)

    def set_faults(self, **values: Any) -> None:
        with self._lock:
            self._faults.update(values)

    def faults_snapshot(self) -> dict[str, int | str]:
        with self._lock:
            return dict(vars(self._faults))

    def invitations(self) -> list[dict[str, str]]:
        """Invitations a write would have sent (events with attendees), recorded, never sent."""
        with self.store.lock:
            return self.store.invitations()

    def set_time_zone(self, mailbox: str, zone: str) -> None:
        with self.store.lock:
            self.store.set_mailbox_setting(mailbox, "timeZone", zone)

    # -- used by the handler ----------------------------------------------------------------------------
    def count_request(self, pattern: str) -> None:
        with self._lock:
            self._stats.requests[pattern] += 1

    def count_auth_failure(self) -> None:
        with self._lock:
            self._stats.auth_failures += 1

    def count_token(self) -> None:
        with self._lock:
            self._stats.tokens_issued += 1

    def request_started(self) -> None:
        with self._lock:
            self._stats.active += 1
            self._stats.max_concurrent = max(self._stats.max_concurrent, self._stats.active)

    def request_finished(self) -> None:
        with self._lock:
            self._stats.active -= 1

    def mailbox_key(self, user: str) -> str:
        """The mailbox a /users/{user} segment names (address or user id), for per-mailbox limits."""
        from .base import user_id

        wanted = user.lower()
        return next((m for m in self._mailboxes if wanted == user_id(m)), wanted)

    def enter_mailboxes(self, mailboxes: list[str]) -> bool:
        """Count a request against each mailbox it touches; False (and counted as throttled) when
        one is at Exchange Online's limit of concurrent requests per app and mailbox."""
        with self._lock:
            limit = self._faults.mailbox_concurrency
            if limit and any(self._stats.per_mailbox[m] >= limit for m in mailboxes):
                self._stats.throttled += 1
                self._stats.log.append({"t": time.time(), "op": ",".join(mailboxes), "fault": "concurrency"})
                return False
            for m in mailboxes:
                self._stats.per_mailbox[m] += 1
                self._stats.max_concurrent_per_mailbox = max(
                    self._stats.max_concurrent_per_mailbox, self._stats.per_mailbox[m]
                )
            return True

    def leave_mailboxes(self, mailboxes: list[str]) -> None:
        with self._lock:
            for m in mailboxes:
                self._stats.per_mailbox[m] -= 1

    def _targeted(self, pattern: str) -> bool:
        only = [p.strip() for p in self._faults.only.split(",") if p.strip()]
        return not only or pattern in only

    def take_fault(self, pattern: str) -> _FaultAction:
        with self._lock:
            f = self._faults
            action = _FaultAction(latency_ms=f.latency_ms, retry_after_s=f.retry_after_s)
            if not self._targeted(pattern):
                pass
            elif f.throttle_next > 0:
                f.throttle_next -= 1
                self._stats.throttled += 1
                action.kind = "throttle"
            elif f.fail_next > 0:
                f.fail_next -= 1
                self._stats.failed += 1
                action.kind, action.status = "fail", f.fail_status
            elif f.drop_next > 0:
                f.drop_next -= 1
                self._stats.dropped += 1
                action.kind = "drop"
            self._stats.log.append({"t": time.time(), "op": pattern, "fault": action.kind})
            return action

    def take_batch_fault(self, pattern: str) -> _FaultAction:
        with self._lock:
            f = self._faults
            action = _FaultAction(retry_after_s=f.retry_after_s)
            self._stats.batched[pattern] += 1
            if not self._targeted(pattern):
                pass
            elif f.batch_throttle_next > 0:
                f.batch_throttle_next -= 1
                self._stats.throttled += 1
                action.kind = "throttle"
            elif f.batch_fail_next > 0:
                f.batch_fail_next -= 1
                self._stats.failed += 1
                action.kind, action.status = "fail", 503
            self._stats.log.append({"t": time.time(), "op": "batch: " + pattern, "fault": action.kind})
            return action

    def take_token_fault(self) -> bool:
        with self._lock:
            if self._faults.token_fail_next > 0:
                self._faults.token_fail_next -= 1
                self._stats.failed += 1
                return True
            return False

    def take_expired_token(self) -> bool:
        with self._lock:
            if self._faults.expire_tokens_next > 0:
                self._faults.expire_tokens_next -= 1
                return True
            return False

    # -- $batch ----------------------------------------------------------------------------------------
    def batch(self, payload: Any, grant: Any, headers: dict[str, str]) -> Response:
        """JSON batching: up to 20 requests, each answered on its own (any order), dependsOn
        honoured (a request whose dependency failed answers 424)."""
        if "application/json" not in headers.get("content-type", ""):
            raise GraphError(400, "BadRequest", "Content-Type must be application/json for $batch.")
        if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
            raise GraphError(400, "BadRequest", "Invalid batch payload format: 'requests' must be an array.")
        requests = payload["requests"]
        if len(requests) > BATCH_MAX:
            raise GraphError(
                400,
                "BadRequest",
                f"Invalid batch payload: the batch holds {len(requests)} requests, the limit is {BATCH_MAX}.",
            )
        ids: list[str] = []
        for req in requests:
            if (
                not isinstance(req, dict)
                or not isinstance(req.get("id"), str | int)
                or not req.get("method")
                or not isinstance(req.get("url"), str)
            ):
                raise GraphError(
                    400, "BadRequest", "Invalid batch payload format: each request needs id, method and url."
                )
            if str(req["id"]) in ids:
                raise GraphError(
                    400, "BadRequest", f"Invalid batch payload: the request id '{req['id']}' is used twice."
                )
            ids.append(str(req["id"]))
        for req in requests:
            for dep in _depends(req):
                if dep not in ids:
                    raise GraphError(
                        400, "BadRequest", f"Invalid batch payload: dependsOn names the unknown id '{dep}'."
                    )
        statuses: dict[str, int] = {}
        responses = []
        limit = self.faults_snapshot()["batch_mailbox_concurrency"]
        at_once: Counter[str] = Counter()
        for req in _ordered(requests):
            rid = str(req["id"])
            failed_deps = [d for d in _depends(req) if statuses.get(d, 500) >= 400]
            mailbox = next((self.mailbox_key(m) for m in _batch_mailboxes({"requests": [req]})), "")
            if mailbox and not _depends(req):
                at_once[mailbox] += 1
            if (
                isinstance(limit, int)
                and limit
                and mailbox
                and not _depends(req)
                and at_once[mailbox] > limit
            ):
                with self._lock:
                    self._stats.throttled += 1
                    self._stats.batched[path_pattern(str(req["method"]).upper(), _part_path(req))] += 1
                answer = throttled(self.faults_snapshot()["retry_after_s"])  # type: ignore[arg-type]
            elif failed_deps:
                answer = error_response(
                    GraphError(
                        424,
                        "FailedDependency",
                        f"The request depends on request(s) {failed_deps}, which failed.",
                    )
                )
            else:
                answer = self._batch_one(req, grant)
            statuses[rid] = answer.status
            item: dict[str, Any] = {
                "id": rid,
                "status": answer.status,
                "headers": {"Content-Type": JSON_TYPE, **answer.headers},
            }
            if answer.body is not None:
                item["body"] = answer.body
            responses.append(item)
        self._rng.shuffle(responses)  # Graph answers in any order
        return Response(200, {"responses": responses})

    def _batch_one(self, req: dict[str, Any], grant: Any) -> Response:
        method = str(req["method"]).upper()
        url = req["url"]
        if url.startswith(("http://", "https://")):
            return error_response(
                GraphError(400, "BadRequest", "Invalid request URL: batch URLs are relative to /v1.0.")
            )
        parsed = urllib.parse.urlsplit("/" + url.lstrip("/"))
        pattern = path_pattern(method, parsed.path)
        action = self.take_batch_fault(pattern)
        if action.kind == "throttle":
            return throttled(action.retry_after_s)
        if action.kind == "fail":
            return unavailable(action.status, action.retry_after_s)
        headers = {str(k).lower(): str(v) for k, v in (req.get("headers") or {}).items()}
        body = req.get("body")
        if body is not None and "content-type" not in headers:
            return error_response(
                GraphError(
                    400, "BadRequest", "Content-Type header must be specified for a request with a body."
                )
            )
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        return self.api.handle(Request(method, parsed.path, query, headers, body, grant))


def _part_path(req: dict[str, Any]) -> str:
    return urllib.parse.urlsplit("/" + str(req.get("url", "")).lstrip("/")).path


def _depends(req: dict[str, Any]) -> list[str]:
    deps = req.get("dependsOn") or []
    return [str(d) for d in deps] if isinstance(deps, list) else []


def _ordered(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests in an order where each comes after what it depends on (else as given)."""
    done: set[str] = set()
    out: list[dict[str, Any]] = []
    pending = list(requests)
    while pending:
        progressed = False
        for req in list(pending):
            if all(d in done for d in _depends(req)):
                out.append(req)
                done.add(str(req["id"]))
                pending.remove(req)
                progressed = True
        if not progressed:  # a cycle: Graph refuses these; answer them in order (their deps fail)
            out.extend(pending)
            break
    return out
