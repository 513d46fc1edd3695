"""The Autotask REST client: zone discovery, credentials, TLS, budget, thread limit, back-off.

Every request goes through ``AutotaskApi.request``:

1. the zone is resolved once through ``ZoneInformation`` (no credentials) and cached; a 401
   drops the cache, resolves again and retries once (databases move between zones);
2. one token of the hourly ``RequestBudget`` is taken (waiting if it is used up);
3. the blocking HTTP call runs in a worker thread under a ``CapacityLimiter(3)``: the API's
   thread limit is 3 requests in flight per integration code and endpoint, and one limiter for
   all endpoints keeps us under it without tracking endpoints;
4. 429s (hourly threshold) and thread-limit refusals (``Itgenatr005`` / "thread threshold", with
   whatever status) are retried after an exponential back-off with jitter, never at once; reads
   are also retried on 5xx and on connection failures; writes are not (a write the server may
   have carried out is not repeated blindly), their failures become per-row errors upstream.
   When the retries run out, ``PsaUnavailable`` (or ``PsaAuthFailed``) is raised.
5. every answer is bounded (issue #14): the whole answer must arrive within
   ``psa.request_deadline_s`` of sending (the per-read ``timeout_s`` alone never ends a server
   trickling a byte every 30 s): ``exchange.limits.Deadline``'s alarm thread shuts the request's
   socket down at the deadline, whatever it is waiting for (headers or body); and the answer is
   read in chunks up to ``psa.max_answer_mb`` (a larger declared Content-Length is refused before
   reading). Both fail the request at once with ``AutotaskUnavailable`` naming the operation and
   the setting; they are not retried (the same server would answer the same way).

Waits for the budget and back-offs end at once after ``interrupt_waits(reason)`` (the daemon is
stopping): the request fails with ``PsaBudgetExhausted`` / ``PsaUnavailable`` naming the reason.

Credentials travel only in the headers ``ApiIntegrationCode``, ``UserName``, ``Secret`` and only to
the origin of the resolved zone; no message built here contains them.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from exchanged import errors
from exchanged.exchange.limits import DEFAULT_DEADLINE_S, DEFAULT_MAX_ANSWER_MB, Deadline, Limits

from .budget import RequestBudget

log = structlog.get_logger("exchanged.psa.autotask")

PAGE_SIZE = 500
THREAD_LIMIT = 3
IN_CHUNK = 200  # values per `in` condition: well under the 500-condition limit and URL sizes
READ_CHUNK = 64 * 1024


class _Bounded(Exception):
    """An answer past ``psa.request_deadline_s`` or ``psa.max_answer_mb`` (worker thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _connection_class(base: type[http.client.HTTPConnection], deadline: Deadline) -> Any:
    """``base`` whose socket is handed to ``deadline`` as soon as it is connected."""

    class _Conn(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            super().connect()
            deadline.sock = self.sock
            if deadline.fired.is_set():  # the deadline passed while connecting
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return _Conn


class _HttpsHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, deadline: Deadline) -> None:
        super().__init__(context=context)
        self._deadline_conn = _connection_class(http.client.HTTPSConnection, deadline)
        self._ctx = context

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._deadline_conn, req, context=self._ctx)


class _HttpHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._deadline_conn = _connection_class(http.client.HTTPConnection, deadline)

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._deadline_conn, req)


def _read_capped(resp: Any, max_bytes: int, deadline: Deadline) -> bytes:
    """The body in chunks; stops (``_Bounded``) past ``max_bytes`` or once the deadline fired."""
    declared = resp.headers.get("Content-Length") if resp.headers is not None else None
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _Bounded(
            f"the answer is larger than {max_bytes / (1024 * 1024):g} MB (psa.max_answer_mb; it "
            f"declared {int(declared) / (1024 * 1024):.0f} MB); not read"
        )
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = resp.read1(READ_CHUNK) if hasattr(resp, "read1") else resp.read(READ_CHUNK)
        if deadline.fired.is_set():
            break
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise _Bounded(
                f"the answer is larger than {max_bytes / (1024 * 1024):g} MB (psa.max_answer_mb; it "
                "went on past the cap); not read"
            )
        chunks.append(chunk)
    return b"".join(chunks)


# the newest client per (API user, integration code) and the trio run it lives in
_SHARED: dict[tuple[str, str], tuple[trio.lowlevel.TrioToken, AutotaskApi]] = {}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any  # parsed JSON, or None

    def error_text(self) -> str:
        """The API's error messages, joined (``{"errors": [...]}`` or IIS's ``{"Message": ...}``)."""
        body = self.body
        if isinstance(body, dict):
            errs = body.get("errors")
            if isinstance(errs, list) and errs:
                return "; ".join(str(e) for e in errs)[:500]
            if body.get("Message"):
                return str(body["Message"])[:500]
        return f"HTTP {self.status}"

    @property
    def thread_limited(self) -> bool:
        text = self.error_text().lower()
        return "itgenatr005" in text or "thread threshold" in text


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    secret: str = field(repr=False)  # never in a repr, log line or traceback
    integration_code: str = field(repr=False)


def _secret_value(value: Any) -> str | None:
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    text = getter() if callable(getter) else value
    return str(text).strip() or None


def _read_secret(cfg: Any, inline: str, file_key: str, credential: str, label: str) -> str:
    """A secret from the config object (resolved SecretStr), its file, or a systemd credential."""
    value = _secret_value(getattr(cfg, inline, None))
    if value:
        return value
    path = getattr(cfg, file_key, None)
    if not path and os.environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / credential
        path = str(candidate) if candidate.exists() else None
    if path:
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise errors.PsaAuthFailed(
                f"cannot read the Autotask {label} from {path}: {exc.strerror or exc}"
            ) from None
        if value:
            return value
    raise errors.PsaAuthFailed(f"no Autotask {label} configured (psa.{inline} or psa.{file_key})")


def credentials_from(cfg: Any) -> Credentials:
    username = str(getattr(cfg, "username", "") or "").strip()
    if not username:
        raise errors.PsaAuthFailed("psa.username is empty")
    return Credentials(
        username=username,
        secret=_read_secret(cfg, "secret", "secret_file", "autotask-secret", "secret"),
        integration_code=_read_secret(
            cfg, "integration_code", "integration_code_file", "autotask-integration-code", "integration code"
        ),
    )


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """System CAs plus the configured bundle; certificates and host names always verified."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        ctx.load_verify_locations(cafile=ca_bundle)
    return ctx


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


class AutotaskApi:
    def __init__(
        self,
        creds: Credentials,
        *,
        zone_lookup_url: str,
        ca_bundle: str | None = None,
        requests_per_hour: int = 3000,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 120.0,
        max_attempts: int = 6,
        timeout_s: float = 60.0,
        request_deadline_s: float = DEFAULT_DEADLINE_S,
        max_answer_mb: float = DEFAULT_MAX_ANSWER_MB,
    ) -> None:
        self.creds = creds
        self.zone_lookup_url = zone_lookup_url if zone_lookup_url.endswith("/") else zone_lookup_url + "/"
        self._tls = tls_context(ca_bundle)
        self.budget = RequestBudget(requests_per_hour)
        self.limiter = trio.CapacityLimiter(THREAD_LIMIT)
        # the limiter schedules; this semaphore is the hard guard: a request abandoned by a
        # cancelled task keeps its slot until its thread is really done with the socket
        self._wire_slots = threading.BoundedSemaphore(THREAD_LIMIT)
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.limits = Limits(deadline_s=request_deadline_s, max_bytes=int(max_answer_mb * 1024 * 1024))
        self.zone_url: str | None = None
        self._zone_lock = trio.Lock()
        self.backoffs = 0  # 429 / thread-limit / 5xx back-offs so far (status)
        self.requests: dict[str, int] = {}  # operation -> calls (metrics; retries inside not counted)
        self.database: dict[str, Any] | None = None  # last ThresholdInformation
        self._joined = False

    def _join_process_limits(self) -> None:
        """Share budget and thread limit with every client of the same API user and integration
        code in this trio run (a reload's new connector, a check-config run in the daemon): the
        limits are the database's, not one object's. Done on the first request, inside trio."""
        self._joined = True
        token = trio.lowlevel.current_trio_token()
        key = (self.creds.username.lower(), self.creds.integration_code)
        entry = _SHARED.get(key)
        if entry is not None and entry[0] is token and entry[1] is not self:
            self.share_limits(entry[1])
        _SHARED[key] = (token, self)

    def share_limits(self, older: AutotaskApi) -> None:
        """Take over the budget and thread limit of the client this one replaces (reload)."""
        limit = self.budget.limit
        self.budget = older.budget
        self.budget.limit = limit
        self.limiter = older.limiter
        self._wire_slots = older._wire_slots
        if older.creds == self.creds and older.zone_lookup_url == self.zone_lookup_url:
            self.zone_url = older.zone_url
            self.database = older.database

    # -- the wire (worker thread) ---------------------------------------------------------------

    def _send_blocking(self, method: str, url: str, body: Any, with_auth: bool) -> Response:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if with_auth:
            req.add_header("ApiIntegrationCode", self.creds.integration_code)
            req.add_header("UserName", self.creds.username)
            req.add_header("Secret", self.creds.secret)
        with self._wire_slots:
            deadline = Deadline(self.limits, time.monotonic())
            secure = url.lower().startswith("https:")
            handler = _HttpsHandler(self._tls, deadline) if secure else _HttpHandler(deadline)
            opener = urllib.request.build_opener(handler)
            received = 0
            try:
                try:
                    with opener.open(req, timeout=self.timeout_s) as resp:
                        raw = _read_capped(resp, self.limits.max_bytes, deadline)
                        status = resp.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                    raw = _read_capped(exc, self.limits.max_bytes, deadline) if exc.fp is not None else b""
                    exc.close()
                received = len(raw)
            except (OSError, http.client.HTTPException):
                if deadline.fired.is_set():
                    raise self._deadline_error(received) from None
                raise
            finally:
                deadline.cancel()
            if deadline.fired.is_set():
                raise self._deadline_error(received)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Response(status, parsed)

    def _deadline_error(self, received: int) -> _Bounded:
        return _Bounded(
            f"no complete answer within {self.limits.deadline_s:g} s (psa.request_deadline_s; "
            f"{received} bytes had arrived)"
        )

    async def _send(self, method: str, url: str, body: Any, *, with_auth: bool) -> Response:
        if not self._joined:
            self._join_process_limits()
        await self.budget.acquire()
        async with self.limiter:
            return await trio.to_thread.run_sync(
                self._send_blocking, method, url, body, with_auth, abandon_on_cancel=True
            )

    # -- zone -----------------------------------------------------------------------------------

    async def zone(self, *, stale: str | None = None) -> str:
        """The zone's REST root; ``stale``: the zone a request found moved (a 401): looked up again
        unless another request has done so meanwhile."""
        async with self._zone_lock:
            if self.zone_url is not None and self.zone_url != stale:
                return self.zone_url
            user = urllib.parse.quote(self.creds.username)
            url = f"{self.zone_lookup_url}V1.0/ZoneInformation?user={user}"
            # a 500 here is the API's answer for an unknown user: final, not retried
            resp = await self._attempts(
                "GET",
                url,
                None,
                with_auth=False,
                idempotent=True,
                what="the zone lookup (ZoneInformation)",
                final_500=True,
            )
            zone = resp.body.get("url") if isinstance(resp.body, dict) else None
            if resp.status != 200 or not isinstance(zone, str) or not zone.lower().startswith("https://"):
                if resp.status == 500:
                    raise errors.PsaAuthFailed(
                        f"Autotask zone lookup at {self.zone_lookup_url} does not know the API user "
                        f"{self.creds.username}: {resp.error_text()}"
                    )
                raise errors.AutotaskUnavailable(
                    f"Autotask zone lookup at {self.zone_lookup_url} failed: {resp.error_text()}"
                )
            self.zone_url = zone if zone.endswith("/") else zone + "/"
            log.info("Autotask zone resolved", zone=self.zone_url, user=self.creds.username)
            return self.zone_url

    # -- requests -------------------------------------------------------------------------------

    def _delay(self, attempt: int) -> float:
        """Exponential back-off with jitter: base * 2^attempt, between half and all of it."""
        full = min(self.retry_cap_s, self.retry_base_s * (2**attempt))
        return full * (0.5 + random.random() / 2)

    async def _attempts(
        self,
        method: str,
        url: str,
        body: Any,
        *,
        with_auth: bool,
        idempotent: bool,
        what: str,
        final_500: bool = False,
    ) -> Response:
        attempt = 0
        while True:
            try:
                resp = await self._send(method, url, body, with_auth=with_auth)
            except _Bounded as exc:
                hint = (
                    "a larger answer needs a larger psa.max_answer_mb; or the server is misbehaving"
                    if "max_answer_mb" in exc.text
                    else "Autotask (or a proxy in between) answers too slowly; check it, or raise "
                    "psa.request_deadline_s"
                )
                raise errors.AutotaskUnavailable(
                    f"Autotask {what} at {_origin(url)}: {exc.text}", hint=hint
                ) from None
            except (TimeoutError, urllib.error.URLError, OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise errors.AutotaskUnavailable(
                        f"Autotask TLS certificate of {_origin(url)} not trusted: {reason}",
                        hint="add the issuing CA to psa.ca_bundle",
                    ) from None
                if not idempotent or attempt + 1 >= self.max_attempts:
                    raise errors.AutotaskUnavailable(
                        f"Autotask unreachable at {_origin(url)} ({what}): {reason}"
                    ) from None
                last = f"unreachable: {reason}"
            else:
                limited = resp.status == 429 or resp.thread_limited
                transient = resp.status >= 500 and idempotent and not (final_500 and resp.status == 500)
                if not (limited or transient):
                    return resp
                if attempt + 1 >= self.max_attempts:
                    if limited:
                        raise errors.AutotaskUnavailable(
                            f"Autotask kept refusing requests ({what}): {resp.error_text()}",
                            hint="the database's hourly request threshold or the thread limit is "
                            "reached; lower psa.requests_per_hour or check other integrations",
                        )
                    if not idempotent:
                        return resp
                    raise errors.AutotaskUnavailable(
                        f"Autotask failed {what}: HTTP {resp.status}: {resp.error_text()}"
                    )
                last = f"HTTP {resp.status}: {resp.error_text()}"
            delay = self._delay(attempt)
            attempt += 1
            self.backoffs += 1
            log.warning(
                "Autotask request refused or failed; backing off before retrying",
                what=what,
                attempt=attempt,
                delay_s=round(delay, 2),
            )
            if not await self.budget.pause(trio.current_time() + delay):
                raise errors.AutotaskUnavailable(
                    f"the back-off before retrying Autotask {what} was interrupted "
                    f"({self.budget.interrupted}); last answer: {last}"
                )

    def interrupt_waits(self, reason: str) -> None:
        """End every wait for the hourly budget and every back-off now (see the module doc), of
        this client and of the clients it shares its limits with (a reload's older connector)."""
        self.budget.interrupt(reason)
        entry = _SHARED.get((self.creds.username.lower(), self.creds.integration_code))
        if entry is not None and entry[0] is trio.lowlevel.current_trio_token():
            entry[1].budget.interrupt(reason)

    async def request(
        self,
        method: str,
        path_or_url: str,
        body: Any = None,
        *,
        idempotent: bool | None = None,
        what: str = "",
    ) -> Response:
        """One API call; ``path_or_url`` is relative to the zone (``V1.0/...``) or absolute in it."""
        if idempotent is None:
            idempotent = method == "GET" or path_or_url.lower().split("?")[0].endswith(
                ("/query", "/query/next", "/query/count")
            )
        what = what or f"{method} {path_or_url.split('?')[0]}"
        operation = re.sub(r"[/ ]\d+(?=$|[/ ?])", "", what)  # one label per operation, not per row
        self.requests[operation] = self.requests.get(operation, 0) + 1
        relogged = False
        while True:
            zone = await self.zone()
            url = path_or_url if "://" in path_or_url else zone + path_or_url
            if _origin(url) != _origin(zone):  # credentials go to the zone only (a paging URL)
                raise errors.AutotaskUnavailable(f"Autotask answered a URL outside its zone: {_origin(url)}")
            resp = await self._attempts(method, url, body, with_auth=True, idempotent=idempotent, what=what)
            if resp.status != 401:
                return resp
            if relogged:
                raise errors.PsaAuthFailed(
                    f"Autotask refused the login of API user {self.creds.username} (HTTP 401)"
                )
            relogged = True
            log.warning(
                "Autotask answered 401; looking the zone up again and retrying once", user=self.creds.username
            )
            await self.zone(stale=zone)
            if path_or_url.startswith(zone):
                path_or_url = path_or_url[len(zone) :]

    # -- queries --------------------------------------------------------------------------------

    async def query(
        self, entity: str, filters: Sequence[dict[str, Any]], fields: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Every row matching ``filters`` with only ``fields`` (and id), following nextPageUrl."""
        body = {
            "filter": list(filters),
            "IncludeFields": ["id", *[f for f in fields if f != "id"]],
            "MaxRecords": PAGE_SIZE,
        }
        url: str | None = f"V1.0/{entity}/query"
        rows: list[dict[str, Any]] = []
        while url:
            resp = await self.request("POST", url, body, idempotent=True, what=f"query {entity}")
            if resp.status != 200 or not isinstance(resp.body, dict):
                raise errors.AutotaskUnavailable(
                    f"Autotask query of {entity} failed: HTTP {resp.status}: {resp.error_text()}"
                )
            items = resp.body.get("items")
            if not isinstance(items, list):
                raise errors.AutotaskUnavailable(f"Autotask query of {entity} answered without items")
            rows.extend(i for i in items if isinstance(i, dict))
            details = resp.body.get("pageDetails") or {}
            url = details.get("nextPageUrl") if isinstance(details, dict) else None
        return rows

    async def query_in(
        self,
        entity: str,
        field: str,
        values: Sequence[int],
        fields: Sequence[str],
        extra: Sequence[dict[str, Any]] = (),
    ) -> list[dict[str, Any]]:
        """Rows whose ``field`` is one of ``values``: batched ``in`` filters, never one call per row."""
        unique = sorted(set(values))
        rows: list[dict[str, Any]] = []
        for i in range(0, len(unique), IN_CHUNK):
            chunk = unique[i : i + IN_CHUNK]
            rows += await self.query(entity, [{"op": "in", "field": field, "value": chunk}, *extra], fields)
        return rows

    async def get(self, entity: str, record_id: int) -> dict[str, Any] | None:
        """One record by id; a missing one is None whether the API says 404 or ``{"item": null}``."""
        resp = await self.request("GET", f"V1.0/{entity}/{record_id}", what=f"get {entity} {record_id}")
        if resp.status == 404:
            return None
        if resp.status != 200 or not isinstance(resp.body, dict):
            raise errors.AutotaskUnavailable(
                f"Autotask read of {entity} {record_id} failed: HTTP {resp.status}: {resp.error_text()}"
            )
        item = resp.body.get("item")
        return item if isinstance(item, dict) else None

    async def threshold(self) -> dict[str, Any]:
        """The database's usage (``ThresholdInformation``); it counts against the threshold too."""
        resp = await self.request("GET", "V1.0/ThresholdInformation", what="ThresholdInformation")
        if resp.status != 200 or not isinstance(resp.body, dict):
            raise errors.AutotaskUnavailable(
                f"Autotask ThresholdInformation failed: HTTP {resp.status}: {resp.error_text()}"
            )
        b = resp.body
        self.database = {
            "limit": b.get("externalRequestThreshold"),
            "used": b.get("currentTimeframeRequestCount"),
            "timeframe_minutes": b.get("requestThresholdTimeframe"),
            "at": trio.current_time(),
        }
        return self.database
