"""Tokens (msal) and requests (httpx on trio) for the Graph adapter, with throttling per mailbox.

* ``TokenSource``: msal's ``ConfidentialClientApplication`` (client credentials: a certificate's
  signed assertion, or a client secret). msal blocks, so each token request runs in a worker thread;
  the token is kept until five minutes before it expires (trio's clock), then renewed; a 401 from
  Graph renews it once.
* ``GraphClient``: one ``httpx.AsyncClient`` (runs natively on trio: no thread per request). Per
  mailbox a ``trio.CapacityLimiter(4)`` (Graph's limit of four concurrent requests per mailbox
  and app) and a ``BackOffGate`` (the EWS adapter's back-off rules: ``Retry-After`` when the server
  gives it, else exponential with jitter). 429 and 503 are retried after the wait (the server refused:
  nothing was done); a write whose answer was lost raises ``AmbiguousWrite`` so that the caller
  adopts before trying again. ``batch`` sends up to 20 requests in one ``$batch`` and retries only
  the parts answered 429/503.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import trio

from exchanged import errors
from exchanged.exchange.account import AmbiguousWrite
from exchanged.exchange.backoff import BackOffGate
from exchanged.exchange.errmap import TOO_LARGE_HINT
from exchanged.exchange.limits import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_ANSWER_MB,
    AnswerTooLarge,
    RequestDeadline,
)

log = logging.getLogger("exchanged.graph")

BATCH_MAX = 20  # Graph's limit of requests in one $batch
MAX_CONCURRENT_PER_MAILBOX = 4  # Graph: at most four concurrent requests per mailbox and app
MAX_THROTTLED_ATTEMPTS = 6
MAX_UNAVAILABLE_ATTEMPTS = 3
RENEW_BEFORE_S = 300.0
PREFER_UTC = 'outlook.timezone="UTC"'
# Graph answers an event's body as HTML unless asked for text; HTML made from our text body does
# not convert back to the same text, so every cycle would see a change that is not there.
PREFER_TEXT_BODY = 'outlook.body-content-type="text"'
CLOUD_GRAPH_HOSTS = (
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
)
# 404 codes that mean the mailbox (not an item) does not exist
MAILBOX_GONE = ("ErrorInvalidUser", "MailboxNotEnabledForRESTAPI")

PERMISSIONS = {
    "events": "Calendars.ReadWrite",
    "calendarView": "Calendars.ReadWrite",
    "contacts": "Contacts.ReadWrite",
    "todo": "Tasks.ReadWrite.All",
    "mailboxSettings": "MailboxSettings.Read",
}


def user_path(mailbox: str) -> str:
    return "/users/" + quote(mailbox, safe="@.")


def permission_for(url: str) -> str | None:
    """The application permission a Graph path needs (``/users/x/events/...`` -> Calendars.ReadWrite)."""
    parts = [p for p in url.split("?", 1)[0].split("/") if p]
    if len(parts) >= 3 and parts[0] == "users":
        return PERMISSIONS.get(parts[2])
    return None


@dataclass(frozen=True, slots=True)
class GraphSettings:
    graph_url: str
    login_url: str
    tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    certificate_pem: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    enabled_mailboxes: tuple[str, ...] = ()
    category: str = ""
    task_list_name: str = "PSA"
    past_days: int = 7
    recurring_future_days: int = 30
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # the whole answer within this (server.request_deadline_s), at most this large (server.max_answer_mb)
    request_deadline_s: float = DEFAULT_DEADLINE_S
    max_answer_mb: int = DEFAULT_MAX_ANSWER_MB

    @property
    def scope(self) -> str:
        """The token's scope: Graph's resource identifier in the cloud of ``graph_url`` (national
        clouds have their own); any other URL (a test server, a reverse proxy) is the global one."""
        from urllib.parse import urlsplit

        host = urlsplit(self.graph_url).hostname or ""
        if host in CLOUD_GRAPH_HOSTS:
            return f"https://{host}/.default"
        return "https://graph.microsoft.com/.default"

    @property
    def authority(self) -> str:
        return f"{self.login_url}/{self.tenant_id}"


def token_roles(token: str) -> list[str] | None:
    """The ``roles`` claim of an access token (a JWT; read, not verified: only to name what is
    missing in check-config), or None when the token is not a readable JWT."""
    try:
        payload = token.split(".")[1]
        doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    roles = doc.get("roles") if isinstance(doc, dict) else None
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


# --- tokens ---------------------------------------------------------------------------------------


class TokenSource:
    def __init__(self, settings: GraphSettings, *, app_factory: Callable[[], Any] | None = None) -> None:
        self._s = settings
        self._app: Any = None
        self._app_factory = app_factory or self._build_app
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self.acquired = 0  # how many tokens were fetched (tests, statistics)

    def _build_app(self) -> Any:
        import msal
        import requests

        class _Session(requests.Session):
            def __init__(self, verify: str | bool, timeout: tuple[float, float]) -> None:
                super().__init__()
                self.verify = verify
                self._timeout = timeout

            def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                kwargs.setdefault("timeout", self._timeout)
                # explicit, or requests takes REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE over server.ca_bundle
                kwargs.setdefault("verify", self.verify)
                return super().request(*args, **kwargs)

        from exchanged.exchange import limits, tls

        s = self._s
        credential: Any
        credential = _certificate_credential(s.certificate_pem) if s.certificate_pem else s.client_secret
        session = _Session(s.ca_bundle or True, (s.connect_timeout_s, s.read_timeout_s))
        # the sign-in server's answers are bounded like Exchange's: the whole answer within
        # request_deadline_s (a timer shuts the socket, which ends the worker thread's read) and at
        # most max_answer_mb; trust as for the EWS endpoint (system store + certifi + ca_bundle)
        tls.register_endpoint(s.login_url, s.ca_bundle)
        limits.register(s.login_url, limits.Limits(s.request_deadline_s, s.max_answer_mb * 1024 * 1024))
        bounded = tls.TrustStoreAdapter()
        session.mount("https://", bounded)
        session.mount("http://", bounded)
        return msal.ConfidentialClientApplication(
            s.client_id,
            client_credential=credential,
            authority=s.authority,
            http_client=session,
            instance_discovery=False,
            token_cache=msal.TokenCache(),
        )

    def invalidate(self) -> None:
        self._token = None

    async def token(self) -> str:
        async with self._lock:
            if self._token is not None and trio.current_time() < self._renew_at:
                return self._token
            result = await trio.to_thread.run_sync(
                self._acquire, limiter=self._limiter, abandon_on_cancel=True
            )
            token = result.get("access_token")
            if not isinstance(token, str):
                raise _token_error(result, self._s)
            expires_in = float(result.get("expires_in") or 3600)
            self._token = token
            self._renew_at = trio.current_time() + max(60.0, expires_in - RENEW_BEFORE_S)
            self.acquired += 1
            return token

    def _acquire(self) -> dict[str, Any]:
        try:
            if self._app is None:
                self._app = self._app_factory()
            result = self._app.acquire_token_for_client(scopes=[self._s.scope])
        except Exception as exc:  # msal raises ValueError (discovery), requests' errors, SSL errors
            return {"error": "exception", "exception": exc}
        return dict(result or {})


def _certificate_credential(pem: str) -> dict[str, str]:
    """msal's certificate credential from one PEM text: the key, the SHA-1 thumbprint (``x5t``)."""
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert_pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    key_pem = re.search(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", pem, re.S)
    if cert_pem is None or key_pem is None:
        raise ValueError("the certificate file needs the private key and the certificate (PEM)")
    cert = x509.load_pem_x509_certificate(cert_pem.group(0).encode())
    return {
        "private_key": key_pem.group(0) + "\n",
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex(),
        "public_certificate": cert_pem.group(0),
    }


def _token_error(result: Mapping[str, Any], s: GraphSettings) -> errors.ExchangedError:
    exc = result.get("exception")
    where = f"Entra ID ({s.login_url}, tenant {s.tenant_id})"
    if exc is not None:
        text = " ".join(str(exc).split())[:300]
        name = type(exc).__name__
        if "SSL" in name or ("ssl" in text.lower() and "certificate" in text.lower()):
            return errors.TlsError(f"{where}: the certificate of the sign-in server is not trusted: {text}")
        if isinstance(exc, ValueError):  # OIDC discovery refused: the tenant does not exist
            return errors.AuthFailed(
                f"{where}: the tenant is unknown: {text}",
                hint="check credentials.tenant_id (Directory (tenant) ID) and server.login_url",
            )
        return errors.ExchangeUnavailable(
            f"{where}: cannot get a token: {name}: {text}",
            hint="check that the sign-in host is reachable from this host (DNS, firewall, proxy)",
        )
    code = str(result.get("error") or "unknown_error")
    # the first line, without "Trace ID: ... Correlation ID: ... Timestamp: ..." (noise at 3 a.m.)
    desc = str(result.get("error_description") or "").split("\n")[0].split(" Trace ID:")[0].strip()
    message = f"{where} refused the app registration {s.client_id}: {code}: {desc}"[:500]
    if "AADSTS7000215" in desc or "AADSTS7000222" in desc:
        hint = (
            "the client secret is wrong or expired: put the secret's value (not its ID) in "
            "credentials.client_secret_file, or better use a certificate (docs/GRAPH.md)"
        )
    elif "AADSTS700027" in desc or "AADSTS700024" in desc:
        hint = (
            "the certificate is not the one uploaded to the app registration, or the clock is off: "
            "upload the certificate of credentials.certificate_file (docs/GRAPH.md)"
        )
    elif "AADSTS700016" in desc:
        hint = "no app registration with this client ID in the tenant: check credentials.client_id"
    elif "AADSTS90002" in desc or "AADSTS900023" in desc:
        hint = "the tenant does not exist: check credentials.tenant_id"
    else:
        hint = "check credentials.tenant_id, client_id and the certificate or secret (docs/GRAPH.md)"
    return errors.AuthFailed(message, hint=hint)


# --- requests -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    doc: dict[str, Any]
    headers: Mapping[str, str]

    @property
    def code(self) -> str:
        err = self.doc.get("error")
        return str(err.get("code") or "") if isinstance(err, Mapping) else ""

    @property
    def message(self) -> str:
        err = self.doc.get("error")
        text = str(err.get("message") or "") if isinstance(err, Mapping) else ""
        return " ".join(text.split())[:300]


@dataclass(slots=True)
class _Lane:
    limiter: trio.CapacityLimiter
    gate: BackOffGate


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


class GraphClient:
    def __init__(
        self,
        settings: GraphSettings,
        tokens: TokenSource,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._s = settings
        self.tokens = tokens
        verify: ssl.SSLContext | bool = True
        if transport is None:
            from exchanged.exchange.tls import build_ssl_context

            verify = build_ssl_context(settings.ca_bundle)
        self._http = httpx.AsyncClient(
            base_url=settings.graph_url + "/v1.0",
            verify=verify,
            transport=transport,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        self._lanes: dict[str, _Lane] = {}
        self.requests: Counter[str] = Counter()  # per mailbox: HTTP requests sent
        self.closed = False

    def lane(self, mailbox: str) -> _Lane:
        key = mailbox.lower()
        if key not in self._lanes:
            self._lanes[key] = _Lane(trio.CapacityLimiter(MAX_CONCURRENT_PER_MAILBOX), BackOffGate())
        return self._lanes[key]

    async def aclose(self) -> None:
        self.closed = True
        await self._http.aclose()

    async def _send(
        self, mailbox: str, method: str, url: str, body: Any, headers: Mapping[str, str]
    ) -> Answer:
        """One HTTP exchange, bounded like every EWS request (``exchanged/exchange/limits.py``): the
        whole answer within ``request_deadline_s`` (trio's clock: a server trickling a byte every few
        seconds never trips httpx's read timeout) and at most ``max_answer_mb``, refused from its
        Content-Length before reading, or when the bytes read pass the cap."""
        token = await self.tokens.token()
        lane = self.lane(mailbox)
        deadline_s = self._s.request_deadline_s
        max_bytes = self._s.max_answer_mb * 1024 * 1024
        received = 0
        async with lane.limiter:
            self.requests[mailbox.lower()] += 1
            content: bytes | None = None
            with trio.move_on_after(deadline_s):
                request_headers = {**headers, "Authorization": f"Bearer {token}"}
                async with self._http.stream(method, url, json=body, headers=request_headers) as response:
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise AnswerTooLarge(max_bytes, int(declared))
                    chunks: list[bytes] = []
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > max_bytes:
                            raise AnswerTooLarge(max_bytes, None)
                        chunks.append(chunk)
                    content = b"".join(chunks)
            if content is None:
                raise RequestDeadline(deadline_s, received)
        try:
            doc = json.loads(content) if content else {}
        except ValueError:
            doc = {"error": {"code": "not_json", "message": content.decode("utf-8", "replace")[:200]}}
        return Answer(response.status_code, doc if isinstance(doc, dict) else {}, response.headers)

    async def call(
        self,
        mailbox: str,
        op: str,
        method: str,
        url: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        write: bool = False,
        accept: Sequence[int] = (),
    ) -> Answer:
        """One request with back-off and retries; a 2xx answer or a status in ``accept`` is
        returned, anything else raised as a typed error naming the mailbox."""
        if self.closed:
            raise errors.ExchangeError(f"{mailbox}: {op}: the Graph connection is closed", mailbox=mailbox)
        lane = self.lane(mailbox)
        throttled = unavailable = renewed = 0
        while True:
            await lane.gate.wait_turn()
            try:
                answer = await self._send(mailbox, method, url, body, headers or {})
            except RequestDeadline as exc:
                # a trickle or a stall: a lost reply. A write may have been carried out (adopt before
                # any retry); a read is not retried within the cycle (it would wait as long again)
                late = errors.ExchangeUnavailable(
                    f"{mailbox}: {op}: Graph ({self._s.graph_url}): {exc}", mailbox=mailbox
                )
                late.cause = "timeout"
                if write:
                    late.ambiguous = True
                    lane.gate.throttled(None)
                    log.warning("%s: %s: %s; adopting before any retry", mailbox, op, exc)
                    raise AmbiguousWrite(late) from exc
                raise late from exc
            except AnswerTooLarge as exc:
                raise errors.ExchangeError(
                    f"{mailbox}: {op}: Graph ({self._s.graph_url}): {exc}",
                    hint=TOO_LARGE_HINT,
                    mailbox=mailbox,
                ) from exc
            except httpx.TransportError as exc:
                err = errors.ExchangeUnavailable(
                    f"{mailbox}: {op}: Graph ({self._s.graph_url}) did not "
                    f"answer: {type(exc).__name__}: {exc}"[:400],
                    mailbox=mailbox,
                )
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
                if write and sent:
                    lane.gate.throttled(None)
                    log.warning("%s: %s: answer lost (%s); adopting before any retry", mailbox, op, err)
                    raise AmbiguousWrite(err) from exc
                if _is_tls(exc):
                    raise errors.TlsError(
                        f"{mailbox}: {op}: the certificate of {self._s.graph_url} is not trusted: {exc}"[
                            :400
                        ],
                        mailbox=mailbox,
                    ) from exc
                unavailable += 1
                if unavailable < MAX_UNAVAILABLE_ATTEMPTS:
                    delay = lane.gate.throttled(None)
                    log.warning("%s: %s failed (%s), retrying in %.1f s", mailbox, op, err, delay)
                    continue
                raise err from exc
            if answer.status in (429, 503):
                throttled += 1
                delay = lane.gate.throttled(_retry_after(answer.headers))
                log.warning(
                    "%s: %s throttled (HTTP %d), backing off %.1f s (attempt %d)",
                    mailbox,
                    op,
                    answer.status,
                    delay,
                    throttled,
                )
                if throttled < MAX_THROTTLED_ATTEMPTS:
                    continue
                raise errors.Throttled(
                    f"{mailbox}: {op}: Graph keeps throttling (HTTP {answer.status})",
                    back_off_s=delay,
                    mailbox=mailbox,
                )
            if answer.status == 401 and renewed == 0:
                renewed += 1
                self.tokens.invalidate()
                continue
            lane.gate.succeeded()
            if 200 <= answer.status < 300 or answer.status in accept:
                return answer
            raise self.error(mailbox, op, url, answer)

    def error(self, mailbox: str, op: str, url: str, answer: Answer) -> errors.ExchangedError:
        detail = f"HTTP {answer.status} {answer.code}: {answer.message}".strip().rstrip(":")
        text = f"{mailbox}: {op}: {detail}"
        if answer.status == 401:
            return errors.AuthFailed(
                text,
                hint="Graph refused the app's token: check the app registration (docs/GRAPH.md)",
                mailbox=mailbox,
            )
        if answer.status == 403:
            perm = permission_for(url) or "the needed permission"
            return errors.ImpersonationDenied(
                f"{text} ({perm} not granted, or the mailbox is outside the app's scope)",
                hint=f"grant the app registration the application permission {perm} with admin consent, "
                "and check its Exchange Online RBAC scope (docs/GRAPH.md)",
                mailbox=mailbox,
            )
        if answer.status == 404 and answer.code in MAILBOX_GONE:
            return errors.MailboxNotFound(
                text,
                hint="check the mailbox address in users[]: it must be a mailbox in Exchange Online",
                mailbox=mailbox,
            )
        if answer.status == 410 or answer.code in (
            "SyncStateNotFound",
            "SyncStateInvalid",
            "syncStateNotFound",
            "InvalidDeltaToken",
        ):
            return errors.SyncStateInvalid(text, mailbox=mailbox)
        if answer.status >= 500:
            return errors.ExchangeUnavailable(
                text, hint="Graph failed on its side; the daemon tries again next cycle", mailbox=mailbox
            )
        return errors.ExchangeError(text, mailbox=mailbox)

    async def batch(
        self,
        mailbox: str,
        op: str,
        requests: Sequence[Mapping[str, Any]],
        *,
        write: bool = False,
        strict: bool = True,
    ) -> list[Answer]:
        """Up to 20 requests in one ``$batch``; answers in the order of ``requests``. Parts answered
        429/503 are sent again after the wait; if they still are, they come back as they are.
        ``strict``: a part refused for the whole mailbox (401, 403, no such mailbox) raises the typed
        error once for the call instead of coming back as one failure per item."""
        if len(requests) > BATCH_MAX:
            raise ValueError(f"at most {BATCH_MAX} requests per $batch")
        answers: dict[int, Answer] = {}
        pending = list(range(len(requests)))
        attempt = 0
        lane = self.lane(mailbox)
        while pending:
            # Exchange Online runs at most 4 requests per mailbox at once, $batch parts included
            # (more are refused with 429). The parts go as one chain (each dependsOn the one before:
            # the "serial" pattern among Graph's documented dependsOn patterns; parallel chains are
            # not among them), so none is refused for concurrency; a part whose predecessor failed
            # answers 424 and is sent again at once
            doc = {
                "requests": [
                    {
                        "id": str(n + 1),
                        **requests[n],
                        **({"dependsOn": [str(pending[k - 1] + 1)]} if k else {}),
                    }
                    for k, n in enumerate(pending)
                ]
            }
            reply = await self.call(mailbox, op, "POST", "/$batch", body=doc, write=write)
            parts = {str(p.get("id")): p for p in reply.doc.get("responses") or () if isinstance(p, Mapping)}
            retry: list[int] = []
            wait: float | None = None
            for n in pending:
                part = parts.get(str(n + 1))
                if part is None:
                    answers[n] = Answer(
                        599,
                        {"error": {"code": "no_answer", "message": "no answer to this part of the $batch"}},
                        {},
                    )
                    continue
                headers = part.get("headers") if isinstance(part.get("headers"), Mapping) else {}
                body = part.get("body")
                answer = Answer(
                    int(part.get("status") or 599),
                    body if isinstance(body, dict) else {},
                    {str(k): str(v) for k, v in (headers or {}).items()},
                )
                answers[n] = answer
                refused = answer.status in (401, 403) or answer.code in MAILBOX_GONE
                if strict and refused:
                    # the app may not touch this mailbox at all: one error for the call, not one per item
                    raise self.error(mailbox, op, str(requests[n].get("url", "")), answer)
                if answer.status in (429, 503):
                    retry.append(n)
                    hint = _retry_after(answer.headers)
                    wait = max(wait or 0.0, hint) if hint is not None else wait
                elif answer.status == 424:  # not carried out: its predecessor in the chain failed
                    retry.append(n)
            throttled = any(answers[n].status in (429, 503) for n in retry)
            attempt += throttled
            # a round with only 424s always progresses (the chain's head never waits on anything)
            stuck = len(retry) >= len(pending) and not throttled
            if not retry or attempt >= MAX_THROTTLED_ATTEMPTS or stuck:
                break
            pending = retry
            if not throttled:
                continue  # only parts behind a failure: send them again at once
            delay = lane.gate.throttled(wait)
            log.warning(
                "%s: %s: %d of %d requests throttled, backing off %.1f s",
                mailbox,
                op,
                len(retry),
                len(pending),
                delay,
            )
            await lane.gate.wait_turn()
        return [answers[n] for n in range(len(requests))]

    async def pages(
        self, mailbox: str, op: str, url: str, *, headers: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a listing, following ``@odata.nextLink``."""
        out: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            answer = await self.call(mailbox, op, "GET", self.relative(next_url), headers=headers)
            out.extend(v for v in answer.doc.get("value") or () if isinstance(v, dict))
            link = answer.doc.get("@odata.nextLink")
            next_url = link if isinstance(link, str) else None
        return out

    def relative(self, url: str) -> str:
        """A link the server handed out (absolute) as a path under the client's base URL."""
        base = self._s.graph_url + "/v1.0"
        if url.startswith(base):
            return url[len(base) :]
        return url


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


__all__ = [
    "BATCH_MAX",
    "Answer",
    "GraphClient",
    "GraphSettings",
    "TokenSource",
    "permission_for",
    "token_roles",
    "user_path",
]
