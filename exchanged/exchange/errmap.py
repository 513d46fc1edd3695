"""exchangelib / requests exceptions -> the typed errors of ``exchanged.errors``.

Every error names the mailbox and the operation. Texts from exchangelib are shortened and never
contain credentials (exchangelib puts URLs, not passwords, into its messages).
"""

from __future__ import annotations

import re

import requests.exceptions
from exchangelib import errors as ews

from exchanged import errors
from exchanged.exchange import tls
from exchanged.exchange.limits import AnswerTooLarge, RequestDeadline
from exchanged.exchange.services import IncompleteAnswer

_MAX_TEXT = 300
TOO_LARGE_HINT = ("raise server.max_answer_mb if answers this large are expected (very large item "
                  "bodies); otherwise find what between here and Exchange inflates the answers")

# connection failures after which the server may have carried the request out (lost reply)
_AMBIGUOUS_MARKERS = ("RemoteDisconnected", "Connection aborted", "ConnectionResetError",
                      "Connection reset", "ChunkedEncodingError", "IncompleteRead", "Read timed out",
                      "ProtocolError", "BrokenPipe", "closed connection")
_REFUSED_MARKERS = ("Connection refused", "ConnectionRefusedError", "Errno 111")
_DNS_MARKERS = ("Name or service not known", "NameResolutionError", "Failed to resolve",
                "nodename nor servname", "Temporary failure in name resolution", "getaddrinfo")
# not "Timeout" alone: exchangelib wraps every connection error in ErrorTimeoutExpired
_TIMEOUT_MARKERS = ("timed out", "ReadTimeout", "ConnectTimeout", "TimeoutError")


def _short(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= _MAX_TEXT else s[: _MAX_TEXT - 3] + "..."


def is_ambiguous(exc: BaseException) -> bool:
    """True when a write may have been carried out although no answer came back."""
    if isinstance(exc, errors.Throttled | errors.ExchangeUnavailable):
        return exc.ambiguous
    text = f"{type(exc).__name__} {exc}"
    return any(m in text for m in _AMBIGUOUS_MARKERS)


def _unavailable(mailbox: str, op: str, host: str, text: str, *, ambiguous: bool,
                 timeouts: tuple[float, float] | None = None) -> errors.ExchangeError:
    """``ExchangeUnavailable`` with ``cause`` one of refused / dns / connect_timeout / timeout /
    dropped / other (``EwsAccount.call`` retries by cause)."""
    connect_s, read_s = timeouts or (None, None)
    if any(m in text for m in _REFUSED_MARKERS):
        cause, what = "refused", f"connection to {host} refused"
    elif any(m in text for m in _DNS_MARKERS):
        cause, what = "dns", f"cannot resolve the host name {host.rsplit(':', 1)[0]}"
    elif "ConnectTimeout" in text or "connect timeout" in text.lower():
        cause = "connect_timeout"
        within = f" within {connect_s:g} s (server.connect_timeout_s)" if connect_s else " in time"
        what = f"no connection to {host}{within}"
    elif any(m in text for m in _TIMEOUT_MARKERS):
        # a read timeout: the server took the request (or the handshake) and did not answer
        cause = "timeout"
        said = re.search(r"read timeout=([0-9.]+)", text)
        waited = float(said.group(1)) if said else read_s
        if waited is not None and connect_s is not None and waited == connect_s != read_s:
            within = f" within {waited:g} s (the TLS handshake; server.connect_timeout_s)"
        elif waited is not None:
            within = f" within {waited:g} s (server.read_timeout_s)"
        else:
            within = " in time"
        what = f"no answer from {host}{within}"
    elif ambiguous:
        cause, what = "dropped", f"the connection to {host} was closed before the answer came"
    else:
        cause, what = "other", f"cannot reach {host}: {_short(text)}"
    err = errors.ExchangeUnavailable(f"{mailbox}: {op}: {what}", mailbox=mailbox)
    err.ambiguous = ambiguous
    err.cause = cause
    return err


def map_error(exc: BaseException, *, mailbox: str, op: str, host: str,
              login: str = "", auth_type: str = "",
              timeouts: tuple[float, float] | None = None) -> errors.ExchangedError:
    """The typed error for ``exc``, naming ``mailbox`` and ``op``; ``timeouts`` (connect, read)
    are named when a timeout is the cause."""
    if isinstance(exc, errors.ExchangedError):
        if not exc.mailbox:
            exc.mailbox = mailbox
        return exc
    text = f"{type(exc).__name__}({exc})"
    where = f"{mailbox}: {op}"

    if isinstance(exc, IncompleteAnswer):  # like a lost reply: a read is tried again, a write adopted
        lost = errors.ExchangeUnavailable(f"{where}: incomplete answer from {host}: {_short(exc)}",
                                          mailbox=mailbox)
        lost.ambiguous = True
        lost.cause = "dropped"
        return lost
    if isinstance(exc, RequestDeadline):  # a trickle or a stall: a lost reply, not retried in the cycle
        late = errors.ExchangeUnavailable(f"{where}: {host}: {exc}", mailbox=mailbox)
        late.ambiguous = True
        late.cause = "timeout"
        return late
    if isinstance(exc, AnswerTooLarge):
        return errors.ExchangeError(
            f"{where}: {host}: {exc}",
            hint=TOO_LARGE_HINT,
            mailbox=mailbox)
    if isinstance(exc, requests.exceptions.SSLError) or (
            isinstance(exc, ews.TransportError) and not isinstance(exc, ews.ResponseMessageError)
            and tls.is_tls_failure(exc)):
        message, hint = tls.describe_tls_failure(exc, host)
        return errors.TlsError(f"{where}: {message}", hint=hint, mailbox=mailbox)
    if isinstance(exc, ews.UnauthorizedError) or (
            isinstance(exc, ews.CASError) and "401" in str(exc)):
        locked = "locked out" in str(exc)
        what = "is locked out" if locked else "was refused (wrong user name or password?)"
        who = f"the login of {login}" if login else "the login"
        return errors.AuthFailed(f"{where}: {who} ({auth_type or 'auth'}) {what}", mailbox=mailbox)
    if isinstance(exc, ews.ErrorImpersonateUserDenied | ews.ErrorImpersonationDenied
                  | ews.ErrorImpersonationFailed):
        return errors.ImpersonationDenied(
            f"{where}: the sync account may not impersonate {mailbox} ({_short(exc)})", mailbox=mailbox)
    if isinstance(exc, ews.ErrorNonExistentMailbox):
        return errors.MailboxNotFound(f"{where}: Exchange has no mailbox {mailbox}", mailbox=mailbox)
    if isinstance(exc, ews.ErrorInvalidSyncStateData):
        return errors.SyncStateInvalid(f"{where}: the server refused the stored sync state", mailbox=mailbox)
    if isinstance(exc, ews.ErrorServerBusy) and "Reraised from ErrorTimeoutExpired" in str(exc):
        # exchangelib re-raises a connection failure (refused, DNS, timeout: its ErrorTimeoutExpired)
        # as ErrorServerBusy once its session pool holds two sessions: unreachable, not throttling
        return _unavailable(mailbox, op, host, text, ambiguous=is_ambiguous(exc), timeouts=timeouts)
    if isinstance(exc, ews.ErrorServerBusy):
        ambiguous = "closed connection" in str(exc)
        err = errors.Throttled(f"{where}: Exchange is busy (ErrorServerBusy: {_short(exc)})",
                               back_off_s=(exc.back_off or None) if not ambiguous else None, mailbox=mailbox)
        err.ambiguous = ambiguous
        return err
    if isinstance(exc, ews.ErrorInternalServerTransientError | ews.ErrorTooManyObjectsOpened
                  | ews.ErrorExceededConnectionCount | ews.ErrorMailboxStoreUnavailable
                  | ews.ErrorMailboxMoveInProgress | ews.ErrorConnectionFailed
                  | ews.ErrorConnectionFailedTransientError):
        err = errors.Throttled(f"{where}: Exchange is temporarily unable to answer ({_short(exc)})",
                               back_off_s=None, mailbox=mailbox)
        err.ambiguous = False
        return err
    if isinstance(exc, ews.ErrorTimeoutExpired | requests.exceptions.ConnectionError
                  | requests.exceptions.Timeout | ConnectionError | TimeoutError):
        return _unavailable(mailbox, op, host, text, ambiguous=is_ambiguous(exc), timeouts=timeouts)
    if isinstance(exc, ews.RedirectError):
        return errors.ExchangeError(
            f"{where}: {host} redirects EWS requests to {_short(exc.url)}",
            hint="check server.address and server.virtual_directory (the EWS URL of the server)",
            mailbox=mailbox)
    if isinstance(exc, ews.ErrorInvalidServerVersion | ews.ErrorInvalidSchemaVersionForMailboxVersion
                  | ews.ErrorIncorrectSchemaVersion):
        return errors.ExchangeError(f"{where}: the server rejects the EWS version ({_short(exc)})",
                                    hint="remove or correct server.version", mailbox=mailbox)
    if isinstance(exc, ews.ErrorAccessDenied):
        return errors.ExchangeError(f"{where}: access denied ({_short(exc)})",
                                    hint="check the rights of the sync account on this mailbox",
                                    mailbox=mailbox)
    if isinstance(exc, ews.ErrorFolderNotFound):
        return errors.ExchangeError(f"{where}: folder not found ({_short(exc)})", mailbox=mailbox)
    if isinstance(exc, ews.MalformedResponseError | ews.SOAPError):
        return errors.ExchangeError(
            f"{where}: unexpected answer from {host}: {_short(exc)}",
            hint="check server.address/virtual_directory point at an Exchange EWS endpoint", mailbox=mailbox)
    if isinstance(exc, ews.TransportError):
        return _unavailable(mailbox, op, host, text, ambiguous=is_ambiguous(exc), timeouts=timeouts)
    if isinstance(exc, ews.EWSError):
        return errors.ExchangeError(f"{where}: {type(exc).__name__}: {_short(exc)}", mailbox=mailbox)
    return errors.ExchangeError(f"{where}: {text if len(text) < _MAX_TEXT else _short(text)}",
                                hint="unexpected failure in the EWS client; the log has the details",
                                mailbox=mailbox)


def item_error_code(exc: BaseException) -> str:
    return type(exc).__name__
