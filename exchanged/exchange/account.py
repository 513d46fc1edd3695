"""The EWS connection of the configured sync account (``ports.ExchangeAccount``).

One exchangelib ``Configuration`` per set of credentials: the sync account (impersonating every
mailbox when ``credentials.use_for_all_users``), or one per user (per-user credentials). Each has
``retry_policy=FailFast()`` (exchangelib never sleeps; back-off is ours, in trio), the pinned
``Version`` when ``server.version`` is set, the configured auth type, and ``max_connections``
equal to the size of the ``trio.CapacityLimiter`` that every blocking call runs under.

``call()`` is the one door to exchangelib: it waits for the credentials' back-off gate, runs the
blocking function in a worker thread under the limiter, maps exceptions to typed errors naming the
mailbox, and retries what is safe to retry (see ``docs/EWS_ADAPTER.md``).
"""

from __future__ import annotations

import email.utils
import logging
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import trio
from exchangelib import DELEGATE, IMPERSONATION, Account, Configuration, Credentials, FailFast, Version
from exchangelib import version as ews_version
from exchangelib.errors import (
    ErrorServerBusy,
    EWSError,
    ResponseMessageError,
    SessionPoolMinSizeReached,
    UnauthorizedError,
)
from exchangelib.folders import Calendar, Contacts, Tasks
from exchangelib.properties import DistinguishedFolderId, Mailbox
from exchangelib.protocol import CachingProtocol, Protocol

from exchanged import errors
from exchanged.exchange import limits, tls
from exchanged.exchange.backoff import BackOffGate
from exchanged.exchange.convert import UTC_EWS
from exchanged.exchange.errmap import is_ambiguous, map_error
from exchanged.exchange.services import GetFolderHinted, ResolveNamesHinted
from exchanged.exchange.settings import ExchangeSettings, UserCredentials
from exchanged.model import ExchangeItem, ItemError
from exchanged.ports import CheckResult, ExchangeAccountBase, NewItem

log = logging.getLogger("exchanged.exchange")
T = TypeVar("T")

VERSIONS: dict[str, Any] = {
    "exchange2007": ews_version.EXCHANGE_2007, "exchange2007_sp1": ews_version.EXCHANGE_2007_SP1,
    "exchange2010": ews_version.EXCHANGE_2010, "exchange2010_sp1": ews_version.EXCHANGE_2010_SP1,
    "exchange2010_sp2": ews_version.EXCHANGE_2010_SP2, "exchange2013": ews_version.EXCHANGE_2013,
    "exchange2013_sp1": ews_version.EXCHANGE_2013_SP1, "exchange2015": ews_version.EXCHANGE_2015,
    "exchange2015_sp1": ews_version.EXCHANGE_2015_SP1, "exchange2016": ews_version.EXCHANGE_2016,
    "exchange2019": ews_version.EXCHANGE_2019,
}

# how often one call is tried when Exchange throttles / when the server cannot be reached: a
# refused connection, an unknown host or a dropped connection get one quick retry, a timeout none
# (it would only double the wait); the scheduler's next cycle is the retry after that
MAX_THROTTLED_ATTEMPTS = 6
MAX_UNAVAILABLE_ATTEMPTS = 2
QUICK_RETRY_S = 1.0
_NOT_RETRIED = frozenset({"timeout", "connect_timeout"})


def own_protocol(protocol: Protocol, timeouts: tuple[float, float] | None = None) -> Protocol:
    """Make an exchangelib ``Protocol`` follow our rules; every protocol we use goes through here.

    * ``RETRY_WAIT = 0``: exchangelib fills a missing BackOffMilliseconds (and an HTTP 503) with
      RETRY_WAIT (10 s) as if the server had said so; 0 keeps "no hint", so the gate backs off
      exponentially.
    * ``TIMEOUT``: requests' (connect, read) for every request (not for a streaming connection,
      whose reads wait for Exchange's keep-alives).
    * A fixed session pool. On ErrorServerBusy (and ErrorExceededConnectionCount) exchangelib shrinks
      the pool: ``decrease_poolsize()`` takes the pool's lock and then waits for a free session,
      and when every session is in use by other threads ``get_session()`` tries to grow the pool
      under the same non-reentrant lock: the thread deadlocks, holding the lock, and with it every
      thread of this protocol (seen as a ``sync --wait`` that never answered during a throttling
      storm). Throttling is the back-off gate's job and the limiter already bounds connections,
      so shrinking is refused: exchangelib then raises the server's error to ``call()``.
    """
    protocol.RETRY_WAIT = 0
    if timeouts is not None:
        protocol.TIMEOUT = timeouts

    def decrease_poolsize() -> None:
        raise SessionPoolMinSizeReached("exchanged keeps the session pool fixed (back-off is the gate's)")

    protocol.decrease_poolsize = decrease_poolsize  # type: ignore[method-assign]
    return protocol


class AmbiguousWrite(Exception):
    """A write whose answer was lost: it may or may not have been carried out."""

    def __init__(self, error: errors.ExchangedError) -> None:
        super().__init__(str(error))
        self.error = error


async def adopt_then_create(
    where: str, chunk: Sequence[NewItem], results: list[ExchangeItem | ItemError | None], *,
    find: Callable[[list[str]], Awaitable[MappingOf[str, ExchangeItem]]],
    create_once: Callable[[list[NewItem]], Awaitable[Sequence[ExchangeItem | ItemError]]],
    logger: logging.Logger,
) -> list[ExchangeItem | ItemError]:
    """A create whose answer was lost (``AmbiguousWrite``), for every Exchange adapter: adopt what
    the server did create (``find``: by PSA key), create the rest once (``create_once``: a second
    lost answer raises instead of adopting again). ``results``: the chunk's results so far, None
    for the items that were sent; ``where``: "mailbox: folder: request" for the log."""
    pending = [n for n, r in enumerate(results) if r is None]
    adopted = await find([chunk[n].psa_key for n in pending])
    logger.warning("%s answer lost; %d of %d items were created, creating the rest",
                   where, len(adopted), len(pending))
    rest = [n for n in pending if chunk[n].psa_key not in adopted]
    for n in pending:
        if chunk[n].psa_key in adopted:
            results[n] = adopted[chunk[n].psa_key]
    if rest:
        again = await create_once([chunk[n] for n in rest])
        for n, r in zip(rest, again, strict=True):
            results[n] = r
    return [r if r is not None else ItemError(chunk[n].psa_key, "no_answer", "no result", retryable=True)
            for n, r in enumerate(results)]


class StrictFailFast(FailFast):
    """exchangelib's FailFast, but a 401 is a login failure even when the server also closes the
    connection (exchangelib checks "Connection: close" first and would call it throttling)."""

    def raise_response_errors(self, response: Any) -> None:
        if response.status_code == 401:
            locked = b"locked out" in (response.content or b"")
            raise UnauthorizedError("The referenced account is currently locked out" if locked
                                    else f"Invalid credentials for {response.url}")
        if response.status_code == 429 or (response.status_code == 503
                                           and response.headers.get("Retry-After")):
            # throttling by HTTP status (a proxy or load balancer in front of Exchange): the wait
            # it asks for is the back-off hint (exchangelib calls 429 an unknown failure)
            raise ErrorServerBusy(f"HTTP {response.status_code} (Too Many Requests)"
                                  if response.status_code == 429 else "HTTP 503 with Retry-After",
                                  back_off=retry_after_s(response.headers.get("Retry-After")))
        super().raise_response_errors(response)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent/odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def pinned_version(name: str | None) -> Version | None:
    if not name:
        return None
    key = name.strip().lower().replace(" ", "").replace("-", "_")
    build = VERSIONS.get(key)
    if build is None:
        raise errors.ExchangeError(
            f"server.version {name!r} is not a known Exchange version",
            hint=f"use one of {', '.join(sorted(VERSIONS))} (case-insensitive), or leave it out")
    return Version(build=build)


@dataclass(slots=True)
class Session:
    """One set of credentials: its exchangelib configuration and its back-off gate."""

    config: Configuration
    access_type: str
    gate: BackOffGate
    login: str


class EwsAccount(ExchangeAccountBase):
    """``ports.ExchangeAccount`` over exchangelib."""

    def __init__(self, settings: ExchangeSettings) -> None:
        self.settings = settings
        # a CA bundle that cannot be loaded fails every call (status, mail), not the daemon's start
        self.setup_error: errors.ExchangedError | None = None
        if settings.scheme == "https":
            try:
                tls.register_endpoint(settings.service_endpoint, settings.ca_bundle)
            except errors.TlsError as exc:
                self.setup_error = exc
        tls.install()
        limits.register(settings.service_endpoint, limits.Limits(
            deadline_s=float(settings.request_deadline_s),
            max_bytes=int(settings.max_answer_mb) * 1024 * 1024))
        self.limiter = trio.CapacityLimiter(settings.max_connections)
        self.tz = UTC_EWS  # each mailbox sets its own zone on its Account (EwsMailbox._use), never the host's
        self.version = pinned_version(settings.version)
        self.host = settings.service_endpoint.split("/")[2]
        self.timeouts = (float(settings.connect_timeout_s), float(settings.read_timeout_s))
        self._sessions: dict[str, Session] = {}
        self._accounts: dict[str, Account] = {}
        self._mailboxes: dict[str, Any] = {}
        self._protocols: dict[int, tuple[Any, Configuration]] = {}  # what aclose() closes
        self._public: Any = None
        self.closed = False
        self.requests: dict[str, int] = {}  # EWS operation -> requests sent (metrics)

    # -- sessions and exchangelib accounts ----------------------------------------------------------

    def _make_session(self, login: str, password: str, access_type: str) -> Session:
        credentials = Credentials(login, password)
        config = Configuration(
            credentials=credentials, service_endpoint=self.settings.service_endpoint,
            auth_type=self.settings.auth_type.upper() if self.settings.auth_type == "ntlm" else "basic",
            version=self.version, retry_policy=StrictFailFast(),
            max_connections=self.settings.max_connections)
        # a Protocol cached by an earlier generation of the config (same endpoint + credentials)
        # would carry the old version/pool size: start from a fresh one
        with CachingProtocol._protocol_cache_lock:
            CachingProtocol._protocol_cache.pop(CachingProtocol._cache_key(config), None)
        return Session(config=config, access_type=access_type, gate=BackOffGate(), login=login)

    def session_for(self, mailbox: str) -> Session:
        s = self.settings
        if s.use_for_all_users:
            key = "__sync__"
            if key not in self._sessions:
                self._sessions[key] = self._make_session(s.login_name, s.password, IMPERSONATION)
            return self._sessions[key]
        key = mailbox.lower()
        if key not in self._sessions:
            creds: UserCredentials | None = s.user_credentials.get(key)
            if creds is None:
                raise errors.AuthFailed(
                    f"{mailbox}: no credentials for this mailbox (credentials.use_for_all_users is false)",
                    hint=f"give the users[] entry of {mailbox} a password_file, or set "
                         "credentials.use_for_all_users: true and grant the sync account impersonation",
                    mailbox=mailbox)
            self._sessions[key] = self._make_session(creds.username, creds.password, DELEGATE)
        return self._sessions[key]

    def ews_account(self, mailbox: str) -> Account:
        key = mailbox.lower()
        acc = self._accounts.get(key)
        if acc is None:
            session = self.session_for(mailbox)
            try:
                acc = Account(primary_smtp_address=mailbox, config=session.config, autodiscover=False,
                              access_type=session.access_type, default_timezone=self.tz)
            except ValueError as exc:
                raise errors.MailboxNotFound(f"{mailbox}: not a mailbox address ({exc})",
                                             mailbox=mailbox) from None
            own_protocol(acc.protocol, self.timeouts)
            self._accounts[key] = acc
            self._protocols[id(acc.protocol)] = (acc.protocol, session.config)
        return acc

    def distinguished_folder(self, mailbox: str, cls: Any) -> Any:
        """A well-known folder addressed by DistinguishedFolderId: no request needed."""
        acc = self.ews_account(mailbox)
        from exchangelib.folders import Root

        root = Root(account=acc, _distinguished_id=DistinguishedFolderId(
            id=Root.DISTINGUISHED_FOLDER_ID, mailbox=Mailbox(email_address=mailbox)))
        return cls(root=root, _distinguished_id=DistinguishedFolderId(
            id=cls.DISTINGUISHED_FOLDER_ID, mailbox=Mailbox(email_address=mailbox)))

    # -- the one door to exchangelib -----------------------------------------------------------------

    async def call(self, mailbox: str, op: str, fn: Callable[[], T], *, write: bool = False) -> T:
        """Run ``fn`` (blocking, consumes its generators) in a worker thread, with back-off.

        Reads are retried on throttling and on connection failures. Writes are retried on
        throttling answers (the server refused the request: nothing was done); a write whose
        answer was lost raises ``AmbiguousWrite`` so that the caller adopts before trying again.
        """
        if self.closed:
            raise errors.ExchangeError(f"{mailbox}: {op}: the Exchange connection is closed",
                                       mailbox=mailbox)
        if self.setup_error is not None:
            err = self.setup_error
            raise type(err)(f"{mailbox}: {op}: {err.message}", hint=err.hint, mailbox=mailbox)
        session = self.session_for(mailbox)
        gate = session.gate
        throttled = unavailable = 0
        operation = op.split(" ", 1)[0]
        while True:
            await gate.wait_turn()
            self.requests[operation] = self.requests.get(operation, 0) + 1
            try:
                result = await trio.to_thread.run_sync(fn, limiter=self.limiter, abandon_on_cancel=True)
            except Exception as exc:
                err = map_error(exc, mailbox=mailbox, op=op, host=self.host, login=session.login,
                                auth_type=self.settings.auth_type, timeouts=self.timeouts)
                if write and is_ambiguous(err):
                    gate.throttled(None)
                    log.warning("%s: %s: answer lost (%s); adopting before any retry", mailbox, op, err)
                    raise AmbiguousWrite(err) from exc
                if isinstance(err, errors.Throttled):
                    throttled += 1
                    delay = gate.throttled(err.back_off_s)
                    log.warning("%s: %s throttled, backing off %.1f s (attempt %d)", mailbox, op, delay,
                                throttled)
                    if throttled < MAX_THROTTLED_ATTEMPTS:
                        continue
                    err.back_off_s = delay
                    raise err from exc
                # reads, and writes that never left (refused, DNS); lost answers were raised above
                if isinstance(err, errors.ExchangeUnavailable):
                    unavailable += 1
                    if (unavailable < MAX_UNAVAILABLE_ATTEMPTS
                            and err.cause not in _NOT_RETRIED):
                        log.warning("%s: %s failed (%s), retrying in %.1f s", mailbox, op, err,
                                    QUICK_RETRY_S)
                        await trio.sleep(QUICK_RETRY_S)
                        continue
                raise err from exc
            gate.succeeded()
            return result

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(service, operation) -> calls sent (retries included) since this account was opened."""
        return {("ews", op): n for op, n in self.requests.items()}

    def throttle_waits(self) -> dict[str, int]:
        return {"ews": sum(s.gate.waits for s in self._sessions.values())}

    def back_off_until(self) -> tuple[float, bool] | None:
        """(trio time, requested by the server) of the latest closed back-off gate, or None."""
        closed = [(until, s.gate.hinted) for s in self._sessions.values()
                  if (until := s.gate.closed_until()) is not None]
        return max(closed) if closed else None

    # -- ports.PushSource: streaming notifications (streaming.py) ------------------------------------

    async def watch(self, mailboxes: dict[str, frozenset[Any]], sink: Any, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from exchanged.exchange.streaming import EwsPush

        await EwsPush(self).watch(mailboxes, sink, task_status=task_status)

    # -- ports.ExchangeAccount ----------------------------------------------------------------------

    def mailbox(self, address: str, *, time_zone: str | None = None) -> Any:
        """The mailbox (kept for the account's life); ``time_zone``: the configured override."""
        from exchanged.exchange.mailbox import EwsMailbox

        key = address.lower()
        if key not in self._mailboxes:
            self._mailboxes[key] = EwsMailbox(self, address, time_zone)
        self._mailboxes[key].override = time_zone
        return self._mailboxes[key]

    def public_contacts(self) -> Any:
        from exchanged.exchange.mailbox import EwsPublicContacts

        if self._public is None:
            s = self.settings
            anchor = s.public_folder_mailbox or (s.enabled_mailboxes[0] if s.enabled_mailboxes else None)
            if not anchor:
                raise errors.ExchangeError(
                    "public contacts folder: no mailbox to reach the public folders through",
                    hint="enable at least one user in users[]; its mailbox opens the public folders")
            self._public = EwsPublicContacts(self, anchor, self.settings.public_folder_name)
        return self._public

    async def check(self, mailboxes: Sequence[str]) -> list[CheckResult]:
        s = self.settings
        results: list[CheckResult] = []
        if s.scheme == "http":
            results.append(CheckResult("ews", True, f"{s.service_endpoint}: plaintext HTTP "
                                       "(server.allow_plaintext): credentials travel unencrypted",
                                       warning=True))
        login_ok = True
        if s.use_for_all_users:
            login = await self._check_login()
            results.extend(login)
            login_ok = all(r.ok for r in login)
        if not mailboxes:
            results.append(CheckResult("users", True, "no enabled users to check", warning=True))
        for address in mailboxes:
            if not login_ok:
                results.append(CheckResult(address, False, "not checked: the login failed"))
                continue
            results.append(await self._check_mailbox(address))
        return results

    async def _check_login(self) -> list[CheckResult]:
        s = self.settings
        session = self.session_for(s.enabled_mailboxes[0] if s.enabled_mailboxes else "sync@account")
        probe = s.login_name.split("\\")[-1].split("@")[0] or "exchanged"

        protocol = own_protocol(Protocol(config=session.config), self.timeouts)
        self._protocols[id(protocol)] = (protocol, session.config)

        pinned = self.version

        def resolve() -> tuple[str, str | None]:
            v = protocol.version  # detects the version when server.version is not pinned
            try:
                list(ResolveNamesHinted(protocol=protocol).call(
                    unresolved_entries=[probe], parent_folders=None, return_full_contact_data=False,
                    search_scope=None, contact_data_shape=None))
            except ResponseMessageError as exc:
                # an EWS answer (no match, operation refused) proves login and EWS access; busy,
                # auth and connection failures do not
                mapped = map_error(exc, mailbox="sync account", op="login", host=self.host,
                                   timeouts=self.timeouts)
                if type(mapped) is not errors.ExchangeError:
                    raise
            v = protocol.config.version or v  # the server's own answer (ServerVersionInfo)
            shown = f"{v.fullname} (build {v.build})" if v is not None and v.build else "version unknown"
            mismatch = None
            if pinned is not None and v is not None and v.build and (
                    v.build.major_version, v.build.minor_version) != (
                    pinned.build.major_version, pinned.build.minor_version):
                mismatch = (f"server.version is {s.version} but the server reports {shown}; "
                            "remove server.version or set it to match")
            return shown, mismatch

        try:
            version, mismatch = await self.call("sync account", "login", resolve)
        except errors.AuthFailed as exc:
            return [CheckResult("login", False, _without_prefix(errors.present(exc).line(), "sync account"))]
        except errors.ExchangedError as exc:
            line = _without_prefix(errors.present(exc).line(), "sync account")
            return [CheckResult("login", False, "not checked: EWS is not reachable"),
                    CheckResult("ews", False, line)]
        out = [CheckResult("login", True, f"logged in as {session.login} ({s.auth_type})"),
               CheckResult("ews", True, f"EWS answers at {s.service_endpoint}: {version}")]
        if mismatch:
            out.append(CheckResult("version", True, mismatch, warning=True))
        return out

    async def _check_mailbox(self, address: str) -> CheckResult:
        how = "impersonation" if self.settings.use_for_all_users else "own credentials"
        try:
            folder = self.distinguished_folder(address, Calendar)

            def get_calendar() -> None:
                for res in GetFolderHinted(account=folder.account).call(
                        folders=[folder], additional_fields=[], shape="IdOnly"):
                    if isinstance(res, Exception):
                        raise res

            await self.call(address, "GetFolder calendar", get_calendar)
        except errors.ExchangedError as exc:
            return CheckResult(address, False, _without_prefix(errors.present(exc).line(), address))
        return CheckResult(address, True, f"calendar reachable ({how})")

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        protocols = list(self._protocols.values())
        self._protocols.clear()
        self._sessions.clear()
        self._accounts.clear()

        def close_all() -> None:
            for protocol, config in protocols:
                key = CachingProtocol._cache_key(config)
                with CachingProtocol._protocol_cache_lock:
                    cached = CachingProtocol._protocol_cache.get(key)
                    if cached is not None and cached[0] is protocol:  # not a newer account's pool
                        del CachingProtocol._protocol_cache[key]
                try:
                    protocol.close()
                except EWSError:
                    pass

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close_all)


def _without_prefix(message: str, subject: str) -> str:
    """Check results are shown as "subject: message": do not name the subject twice."""
    prefix = f"{subject}: "
    return message[len(prefix):] if message.startswith(prefix) else message


__all__ = ["AmbiguousWrite", "Contacts", "EwsAccount", "Session", "Tasks", "pinned_version"]
