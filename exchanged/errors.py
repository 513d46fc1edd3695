"""Typed errors of the core, and the one place that turns them into words.

Every error the daemon can meet is one of these classes. Each carries a stable ``reason`` (used as
the control protocol's ``data.reason`` and as the de-duplication key of error mails), a message
for the operator (what happened, to which mailbox), and a ``hint`` (what to check). ``present()``
is the single presenter used by the log, the mails, the control protocol and the CLI exit codes.
Messages never contain secrets: adapters build them from names, never from credentials.
"""

from __future__ import annotations

from dataclasses import dataclass


class ExchangedError(Exception):
    reason: str = "error"
    hint: str = ""
    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None, mailbox: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        self.mailbox = mailbox


# --- configuration ------------------------------------------------------------------------------
class ConfigInvalid(ExchangedError):
    reason = "config_invalid"
    hint = "fix the listed keys and run `exchanged check-config`"

    def __init__(self, problems: list[ConfigProblem], path: str) -> None:
        self.problems = problems
        self.path = path
        lines = "; ".join(p.render() for p in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{path}: {len(problems)} problem(s): {lines}{more}")


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str  # dotted key path, e.g. "users[2].mailbox"
    line: int | None  # 1-based YAML line, None when unknown
    message: str

    def render(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<top>'}: {self.message}"


# --- Exchange -----------------------------------------------------------------------------------
class ExchangeError(ExchangedError):
    reason = "exchange_error"


class ExchangeUnavailable(ExchangeError):
    reason = "exchange_unreachable"
    hint = "check that the Exchange server is up and reachable from this host (DNS, firewall, port)"
    retryable = True
    ambiguous = False  # a write may have been carried out although no answer came (a lost reply)
    cause = ""  # refused / dns / connect_timeout / timeout / dropped / other (EWS: exchange/errmap.py)


class TlsError(ExchangeError):
    reason = "tls_untrusted"
    hint = "certificate not trusted: add the issuing CA to server.ca_bundle, or fix the server certificate"


class AuthFailed(ExchangeError):
    reason = "auth_failed"
    hint = "check credentials.username, the password and credentials.auth_type (basic/ntlm)"


class ImpersonationDenied(ExchangeError):
    reason = "impersonation_denied"
    hint = "grant the sync account the ApplicationImpersonation role for this mailbox"


class MailboxNotFound(ExchangeError):
    reason = "mailbox_not_found"
    hint = "check the mailbox address in users[]"


class Throttled(ExchangeError):
    reason = "throttled"
    hint = "Exchange is throttling the sync account; the daemon backs off by itself"
    retryable = True
    ambiguous = False  # the busy answer came on a closed connection: a write may have happened

    def __init__(self, message: str, *, back_off_s: float | None = None, mailbox: str | None = None) -> None:
        super().__init__(message, mailbox=mailbox)
        self.back_off_s = back_off_s


class SyncStateInvalid(ExchangeError):
    reason = "sync_state_invalid"
    hint = "the daemon starts that folder over with a full resync; nothing to do"


# --- PSA ----------------------------------------------------------------------------------------
class PsaError(ExchangedError):
    reason = "psa_error"


class PsaUnavailable(PsaError):
    reason = "psa_unreachable"
    hint = "check psa.url (or the Autotask zone and credentials) and that the PSA is up"
    retryable = True


class AutotaskUnavailable(PsaUnavailable):
    """The Autotask connector's: its hint names Autotask's keys, not ``psa.url`` (which it has not)."""

    hint = ("check psa.zone_lookup_url, psa.username and the Autotask secret and integration code, "
            "and that Autotask is reachable from this host")


class PsaBudgetExhausted(PsaError):
    reason = "psa_budget"
    hint = "the PSA's request budget is used up for now; cycles wait for it"
    retryable = True


class PsaAuthFailed(PsaError):
    reason = "psa_auth_failed"
    hint = ("check psa.username, the secret and the integration code (an API-only user with the "
            "'API User' security level)")


# --- state, mail, sync guards --------------------------------------------------------------------
class StateError(ExchangedError):
    reason = "state_error"
    hint = "check state.url; the state database may be unreachable or damaged"


class MailError(ExchangedError):
    reason = "mail_failed"
    hint = ("check notifications.smtp (host, port, security) and that the SMTP server accepts mail "
            "from this host")


class DeletesHeldBack(ExchangedError):
    reason = "deletes_held_back"
    hint = ("review with `exchangectl plan MAILBOX`, then release with "
            "`exchangectl sync MAILBOX --allow-deletes`")


class SideLooksEmpty(ExchangedError):
    reason = "side_looks_empty"
    hint = "a side that suddenly looks empty is never mirrored as deletions; check the PSA query and server"


# --- control ------------------------------------------------------------------------------------
class ControlError(ExchangedError):
    reason = "control_error"


@dataclass(frozen=True, slots=True)
class Presented:
    reason: str
    message: str
    hint: str

    def line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def present(exc: BaseException) -> Presented:
    """One presentation of any error for log line, status, mail and control-protocol error."""
    if isinstance(exc, ExchangedError):
        msg = exc.message
        if exc.mailbox and exc.mailbox not in msg:
            msg = f"{exc.mailbox}: {msg}"
        return Presented(exc.reason, msg, exc.hint)
    return Presented("internal_error", f"internal error: {type(exc).__name__}: {exc}",
                     "this is a bug in exchanged; the log has the traceback")
