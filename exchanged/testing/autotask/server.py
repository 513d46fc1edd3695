"""HTTPS transport of the Autotask test server: TLS, authentication, limits, faults, routing.

One thread per connection (stdlib ThreadingHTTPServer). What it enforces, like the real API:

* the zone lookup ``GET /ATServicesRest/V1.0/ZoneInformation?user=`` without credentials;
* the headers ``ApiIntegrationCode``, ``UserName``, ``Secret`` on every other call: a wrong secret
  is a 401, an unknown user name or integration code a 500 (as observed on the real API);
* the thread limit: at most 3 requests in flight per (integration code, entity endpoint); a 4th
  is refused at once with 429 and the API's ``Itgenatr005`` "thread threshold" text;
* the hourly threshold: over ``threshold`` accepted requests in the last rolling hour, requests
  are refused with 429 until the hour rolls on; ``ThresholdInformation`` reports the usage;
* routes and verbs: root writes only where the entity allows them, child entities written through
  their parent URL, anything else 405 with the ``Message`` body IIS sends.

Test switches (no login): ``GET /__emulator/stats`` and ``POST /__emulator/faults``; in-process,
``server.move_zone(host)`` moves the database to another zone (the old one answers 401).
"""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..faults import FaultSwitches
from ..tls import server_tls
from .psa import AutotaskPsaData
from .schema import CHILD_ROUTES, ENTITIES, ENTITY_BY_LOWER
from .store import PAGE_SIZE, ApiError, Query, Store, api_500, not_allowed

log = logging.getLogger("exchanged.testing.autotask")

THREAD_LIMIT = 3
HOUR_S = 3600.0


@dataclass
class Faults(FaultSwitches):
    """Set through POST /__emulator/faults; ``*_next`` count down per API request.

    ``fail_next``: answer ``fail_status`` without doing anything; ``drop_next``: do the work,
    then close the connection without an answer (the lost reply); ``throttle_next``: refuse
    with the 429 the hourly threshold answers, without doing anything (the database's budget
    used up by other integrations); ``latency_ms``: delay every API request while it counts as
    in flight.
    """

    fail_next: int = 0
    drop_next: int = 0
    throttle_next: int = 0
    fail_status: int = 500
    latency_ms: int = 0


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_concurrent: int = 0
    thread_limit_rejections: int = 0
    threshold_rejections: int = 0
    auth_failures: int = 0
    failed: int = 0
    dropped: int = 0
    throttled: int = 0  # 429s from the throttle_next switch
    wrong_zone: int = 0  # 401s of the old zone after move_zone


class AutotaskServer:
    """The test server, in-process (tests) or behind ``python -m exchanged.testing.autotask``.

    ``missing_item``: how a GET of a missing id answers: ``"null"`` (200 ``{"item": null}``) or
    ``"404"``; the real API has been seen doing both. ``appointments_of_others``: False models an
    API user without the system setting that allows managing other resources' appointments.
    """

    def __init__(
        self,
        *,
        api_user: tuple[str, str, str] = ("api@example.test", "SECRET", "CODE"),
        state_dir: Path | None = None,
        seed: dict[str, Any] | None = None,
        threshold: int = 10_000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.username, self.secret, self.integration_code = api_user
        self._own_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="autotask-")) if state_dir is None else state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(None if self._own_dir else self.state_dir / "store.json")
        if not self.store.load() and seed:
            self.store.load_seed(seed)
            self.store.save()
        self.threshold = threshold
        self.faults = Faults()
        self.stats_data = Stats()
        self.missing_item = "null"
        self.appointments_of_others = True
        self.zone_host: str | None = None  # None: every host name is the zone; see move_zone
        self._lock = threading.Lock()
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._accepted: deque[float] = deque()
        self._host, self._port = host, port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._psa: AutotaskPsaData | None = None
        self.ca_file, self._ssl_context = server_tls(self.state_dir, "exchanged Autotask test server")

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> AutotaskServer:
        httpd = _QuietServer((self._host, self._port), _make_handler(self))
        httpd.daemon_threads = True
        httpd.socket = self._ssl_context.wrap_socket(
            httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="autotask-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> AutotaskServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def url(self) -> str:
        """The zone lookup URL, and the zone's REST root until ``move_zone``."""
        return f"{self.origin}/ATServicesRest/"

    @property
    def zone_url(self) -> str:
        """The REST root ZoneInformation answers."""
        if self.zone_host is None:
            return self.url
        return f"https://{self.zone_host}:{self.port}/ATServicesRest/"

    def move_zone(self, host: str) -> None:
        """The database moves to the zone at ``host`` (``localhost`` or ``127.0.0.1``: both are in
        the certificate). ZoneInformation answers the new zone from now on; API calls sent to any
        other host name are refused with 401, as the real API refuses a moved database's calls."""
        self.zone_host = host

    # -- accounting -----------------------------------------------------------------------------

    def _used(self, now: float) -> int:
        while self._accepted and self._accepted[0] <= now - HOUR_S:
            self._accepted.popleft()
        return len(self._accepted)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            s = self.stats_data
            return {
                "requests": dict(s.requests),
                "max_concurrent": s.max_concurrent,
                "thread_limit_rejections": s.thread_limit_rejections,
                "threshold": {"limit": self.threshold, "used": self._used(time.monotonic())},
                "threshold_rejections": s.threshold_rejections,
                "auth_failures": s.auth_failures,
                "failed": s.failed,
                "dropped": s.dropped,
                "throttled": s.throttled,
                "wrong_zone": s.wrong_zone,
            }

    def reset_stats(self) -> None:
        with self._lock:
            in_flight = self.stats_data.in_flight
            self.stats_data = Stats(in_flight=in_flight)

    @property
    def psa(self) -> AutotaskPsaData:
        """Model-level helpers (``add``, ``edit``, ``remove``, ``assign``) like ``MemoryPsa``'s."""
        if self._psa is None:
            self._psa = AutotaskPsaData(self.store)
        return self._psa

    def api_resource_id(self) -> int | None:
        """The Resource that is the API user (by userName or email), if seeded."""
        for row in self.store.rows("Resources"):
            if self.username.lower() in (
                str(row.get("userName") or "").lower(),
                str(row.get("email") or "").lower(),
            ):
                return int(row["id"])
        return None


# --- the HTTP layer -------------------------------------------------------------------------------


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a cancelled test, a TLS mismatch) is not news."""
        log.debug("autotask test server: connection from %s ended badly", client_address, exc_info=True)


class _Drop(Exception):
    """The work is done; the answer is lost (the connection closes)."""


class _Reply(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body


def _make_handler(server: AutotaskServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        srv = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    srv: AutotaskServer
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLError, OSError):
            self.close_connection = True
            raise

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: Any) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _Reply(500, {"errors": ["The request body is not valid JSON"]}) from None

    def _handle(self, method: str) -> None:
        try:
            parts = urllib.parse.urlsplit(self.path)
            params = urllib.parse.parse_qs(parts.query)
            body = self._body()
            segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
            status, answer = self._route(method, segments, params, body)
        except _Drop:
            self.close_connection = True
            return
        except _Reply as reply:
            status, answer = reply.status, reply.body
        except ApiError as exc:
            status, answer = exc.status, exc.body
        except Exception as exc:  # a bug in the test server must still answer like the API
            log.exception("autotask test server: internal error")
            status, answer = 500, {"errors": [f"An unexpected error has occurred: {type(exc).__name__}"]}
        self._send(status, answer)

    def _route(
        self, method: str, segs: list[str], params: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        low = [s.lower() for s in segs]
        if low[:1] == ["__emulator"]:
            return self._emulator(method, low[1:], body)
        if low[:1] != ["atservicesrest"]:
            raise _Reply(404, None)
        rest, low = segs[1:], low[1:]
        if low == ["versioninformation"]:
            return 200, {"apiVersions": ["V1.0"]}
        if low[:1] != ["v1.0"] or len(low) < 2:
            raise _Reply(404, None)
        rest, low = rest[1:], low[1:]
        if low == ["zoneinformation"]:
            return self._zone(method, params)
        endpoint = self._endpoint(low)
        self._check_zone()
        self._authenticate()
        return self._limited(endpoint, lambda: self._api(method, rest, low, params, body))

    def _emulator(self, method: str, low: list[str], body: Any) -> tuple[int, Any]:
        if low == ["stats"] and method == "GET":
            return 200, self.srv.stats()
        if low == ["faults"] and method == "POST":
            try:
                with self.srv._lock:
                    self.srv.faults.update(body or {})
            except ValueError as exc:
                return 400, {"errors": [str(exc)]}
            return 200, {"faults": vars(self.srv.faults)}
        raise _Reply(404, None)

    def _zone(self, method: str, params: dict[str, list[str]]) -> tuple[int, Any]:
        with self.srv._lock:
            self.srv.stats_data.requests[f"{method} ZoneInformation"] += 1
        if method != "GET":
            raise not_allowed(method)
        user = (params.get("user") or [""])[0]
        if user.lower() != self.srv.username.lower():
            raise api_500("Zone information could not be determined for the user")
        zone = self.srv.zone_url
        return 200, {"zoneName": "Test Zone", "url": zone, "webUrl": zone.split("/ATServicesRest/")[0] + "/",
                     "ci": 1}

    def _check_zone(self) -> None:
        """After ``move_zone``: every call sent to the old zone is a 401."""
        srv = self.srv
        if srv.zone_host is None:
            return
        host = urllib.parse.urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        if host.lower() != srv.zone_host.lower():
            with srv._lock:
                srv.stats_data.wrong_zone += 1
            raise _Reply(401, {"errors": ["Unauthorized: this database is not served by this zone"]})

    def _endpoint(self, low: list[str]) -> str:
        """The entity a request is counted against (the thread limit is per object endpoint)."""
        if low[0] == "thresholdinformation":
            return "ThresholdInformation"
        if len(low) >= 3 and (low[0], low[2]) in CHILD_ROUTES:
            return CHILD_ROUTES[(low[0], low[2])]
        name = ENTITY_BY_LOWER.get(low[0])
        if name is None:
            raise _Reply(404, None)
        return name

    def _authenticate(self) -> None:
        h = self.headers
        srv = self.srv
        user, secret, code = h.get("UserName"), h.get("Secret"), h.get("ApiIntegrationCode")
        problem: tuple[int, str] | None = None
        if not user or user.lower() != srv.username.lower():
            problem = (500, "Unable to authenticate: user name not found")
        elif not code or code != srv.integration_code:
            problem = (
                500,
                "Unable to authenticate: the API integration code (tracking identifier) is not valid",
            )
        elif secret != srv.secret:
            problem = (401, "Unauthorized")
        if problem is not None:
            with srv._lock:
                srv.stats_data.auth_failures += 1
            raise _Reply(problem[0], {"errors": [problem[1]]})

    def _limited(self, endpoint: str, work: Any) -> tuple[int, Any]:
        srv = self.srv
        key = (srv.integration_code, endpoint)
        with srv._lock:
            srv.stats_data.requests[f"{self.command} {endpoint}"] += 1
            now = time.monotonic()
            if srv.faults.throttle_next > 0:
                srv.faults.throttle_next -= 1
                srv.stats_data.throttled += 1
                raise _Reply(429, {"errors": [f"API request threshold of {srv.threshold} requests per hour "
                                              "exceeded for this database (injected)"]})
            if srv._used(now) >= srv.threshold:
                srv.stats_data.threshold_rejections += 1
                raise _Reply(
                    429,
                    {
                        "errors": [
                            f"API request threshold of {srv.threshold} requests per hour exceeded for this "
                            "database; requests are refused until the usage drops"
                        ]
                    },
                )
            if srv._in_flight[key] >= THREAD_LIMIT:
                srv.stats_data.thread_limit_rejections += 1
                raise _Reply(
                    429,
                    {
                        "errors": [
                            f"Itgenatr005: thread threshold of {THREAD_LIMIT} concurrent requests "
                            f"exceeded for the {endpoint} endpoint of this integration"
                        ]
                    },
                )
            srv._accepted.append(now)
            srv._in_flight[key] += 1
            srv.stats_data.in_flight += 1
            srv.stats_data.max_concurrent = max(srv.stats_data.max_concurrent, srv.stats_data.in_flight)
            latency = srv.faults.latency_ms
            fail = srv.faults.fail_next > 0
            if fail:
                srv.faults.fail_next -= 1
                srv.stats_data.failed += 1
            drop = not fail and srv.faults.drop_next > 0
            if drop:
                srv.faults.drop_next -= 1
                srv.stats_data.dropped += 1
        try:
            if latency:
                time.sleep(latency / 1000)
            if fail:
                status = srv.faults.fail_status
                raise _Reply(status, {"errors": [f"An unexpected error has occurred (injected {status})"]})
            with srv.store.lock:
                result: tuple[int, Any] = work()
            if drop:
                raise _Drop()
            return result
        finally:
            with srv._lock:
                srv._in_flight[key] -= 1
                srv.stats_data.in_flight -= 1

    # -- the API --------------------------------------------------------------------------------

    def _api(
        self, method: str, segs: list[str], low: list[str], params: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        store = self.srv.store
        if low == ["thresholdinformation"]:
            if method != "GET":
                raise not_allowed(method)
            with self.srv._lock:
                used = self.srv._used(time.monotonic())
            return 200, {
                "externalRequestThreshold": self.srv.threshold,
                "requestThresholdTimeframe": 60,
                "currentTimeframeRequestCount": used,
            }
        if len(low) >= 3 and (low[0], low[2]) in CHILD_ROUTES:
            return self._child(method, low, body)
        entity = ENTITY_BY_LOWER[low[0]]
        spec = ENTITIES[entity]
        tail = low[1:]
        if tail and tail[0] == "query":
            return self._query(method, entity, tail[1:], params, body)
        if tail and tail[0] == "entityinformation":
            return self._info(method, entity, tail[1:])
        if not tail:
            if method == "GET" or method not in spec.root_verbs:
                raise not_allowed(method)
            return self._write(method, entity, body, parent=None)
        if len(tail) == 1:
            record_id = self._id(tail[0])
            if method == "GET":
                return self._get(entity, record_id)
            if method == "DELETE" and "DELETE" in spec.root_verbs:
                self._check_appointment(entity, store.get(entity, record_id))
                return 200, {"itemId": store.delete(entity, record_id, parent=None)}
            raise not_allowed(method)
        raise _Reply(404, None)

    @staticmethod
    def _id(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise _Reply(404, None) from None

    def _get(self, entity: str, record_id: int) -> tuple[int, Any]:
        item = self.srv.store.get(entity, record_id)
        if item is None and self.srv.missing_item == "404":
            raise _Reply(404, None)
        return 200, {"item": item}

    def _query(
        self, method: str, entity: str, tail: list[str], params: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        if method not in ("GET", "POST"):
            raise not_allowed(method)
        spec = ENTITIES[entity]
        after_id: int | None = None
        if tail == ["next"]:
            search = self._search(params)
            paging = json.loads((params.get("paging") or ["{}"])[0])
            next_ids = paging.get("nextIds") or []
            after_id = int(next_ids[-1]) if next_ids else None
        elif tail in ([], ["count"]):
            search = self._search(params) if method == "GET" else body
        else:
            raise _Reply(404, None)
        query = Query(spec, search)
        if tail == ["count"]:
            return 200, {"queryCount": self.srv.store.count(entity, query)}
        items, more = self.srv.store.query(entity, query, after_id)
        next_url = None
        if more:
            paging_doc = {
                "pageSize": query.max_records,
                "previousIds": [items[0]["id"]],
                "nextIds": [items[-1]["id"]],
            }
            next_url = (
                f"{self.srv.url}V1.0/{entity}/query/next?paging="
                f"{urllib.parse.quote(json.dumps(paging_doc))}"
                f"&search={urllib.parse.quote(json.dumps(search))}"
            )
        prev_url = None
        if after_id is not None:
            prev_url = f"{self.srv.url}V1.0/{entity}/query?search={urllib.parse.quote(json.dumps(search))}"
        return 200, {
            "items": items,
            "pageDetails": {
                "count": len(items),
                "requestCount": query.max_records or PAGE_SIZE,
                "prevPageUrl": prev_url,
                "nextPageUrl": next_url,
            },
        }

    @staticmethod
    def _search(params: dict[str, list[str]]) -> Any:
        raw = (params.get("search") or [""])[0]
        if not raw:
            raise api_500("A search parameter with the query is required")
        try:
            return json.loads(raw)
        except ValueError:
            raise api_500("The search parameter is not valid JSON") from None

    def _info(self, method: str, entity: str, tail: list[str]) -> tuple[int, Any]:
        if method != "GET":
            raise not_allowed(method)
        spec = ENTITIES[entity]
        if tail == []:
            verbs = spec.root_verbs | (spec.child.verbs if spec.child else frozenset())
            return 200, {
                "info": {
                    "name": entity,
                    "canCreate": "POST" in verbs,
                    "canDelete": "DELETE" in verbs,
                    "canQuery": True,
                    "canUpdate": bool(verbs & {"PATCH", "PUT"}),
                    "hasUserDefinedFields": False,
                    "supportsWebhookCallouts": entity in ("Companies", "Contacts"),
                }
            }
        if tail == ["fields"]:
            return 200, {
                "fields": [
                    {
                        "name": name,
                        "dataType": {
                            "str": "string",
                            "int": "integer",
                            "datetime": "datetime",
                            "bool": "boolean",
                            "float": "double",
                        }[kind],
                        "length": spec.lengths.get(name, 0),
                        "isRequired": name in spec.required,
                        "isReadOnly": name in spec.read_only,
                        "isQueryable": True,
                        "isReference": name.endswith("ID") and name != "id",
                        "isPickList": False,
                    }
                    for name, kind in spec.fields.items()
                ]
            }
        raise _Reply(404, None)

    def _child(self, method: str, low: list[str], body: Any) -> tuple[int, Any]:
        store = self.srv.store
        entity = CHILD_ROUTES[(low[0], low[2])]
        spec = ENTITIES[entity]
        assert spec.child is not None
        parent_entity = spec.child.parent
        parent_id = self._id(low[1])
        parent = (spec.child.parent_field, parent_id)
        if store.get(parent_entity, parent_id) is None:
            raise api_500(
                f"No matching records found. The specified {parent_entity} id [{parent_id}] was not found"
            )
        if len(low) == 3:
            if method == "GET":
                items = store.children(entity, spec.child.parent_field, parent_id)
                return 200, {
                    "items": items,
                    "pageDetails": {
                        "count": len(items),
                        "requestCount": PAGE_SIZE,
                        "prevPageUrl": None,
                        "nextPageUrl": None,
                    },
                }
            if method not in spec.child.verbs or method == "DELETE":
                raise not_allowed(method)
            return self._write(method, entity, body, parent=parent)
        if len(low) == 4:
            record_id = self._id(low[3])
            if method == "GET":
                item = store.get(entity, record_id)
                if item is not None and item.get(spec.child.parent_field) != parent_id:
                    item = None
                if item is None and self.srv.missing_item == "404":
                    raise _Reply(404, None)
                return 200, {"item": item}
            if method == "DELETE" and "DELETE" in spec.child.verbs:
                return 200, {"itemId": store.delete(entity, record_id, parent=parent)}
            raise not_allowed(method)
        raise _Reply(404, None)

    def _write(
        self, method: str, entity: str, body: Any, *, parent: tuple[str, int] | None
    ) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise api_500("The request body must be a JSON object")
        store = self.srv.store
        if method == "POST":
            self._check_appointment(entity, body)
            return 200, {
                "itemId": store.create(entity, body, parent=parent, creator=self.srv.api_resource_id())
            }
        if entity == "Appointments":
            record_id = body.get("id") if isinstance(body.get("id"), int) else None
            self._check_appointment(entity, store.get(entity, record_id) if record_id else None)
            self._check_appointment(entity, body)
        return 200, {"itemId": store.update(entity, body, replace=method == "PUT", parent=parent)}

    def _check_appointment(self, entity: str, record: dict[str, Any] | None) -> None:
        """Without the system setting, an API user manages only its own resource's appointments."""
        if entity != "Appointments" or record is None or self.srv.appointments_of_others:
            return
        resource = next((v for k, v in record.items() if k.lower() == "resourceid"), None)
        if resource is not None and resource != self.srv.api_resource_id():
            raise ApiError(
                403,
                "The logged in Resource does not have the adequate permissions to "
                "manage appointments of other resources",
            )
