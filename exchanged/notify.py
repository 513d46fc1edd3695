"""Error, "resolved" and confirmation mails: the SMTP mailer and the notification policy.

Theory of operation
-------------------
The daemon reports every error occurrence with ``Notifier.error(key, presented, mailbox)``; ``key``
names the *distinct* error (``"auth_failed:alice@contoso.com"``, ``"config"``). The policy:

* the first occurrence of a key is mailed at once; further occurrences are counted and mailed again
  only when ``repeat_after_minutes`` have passed since the last mail of that key ("still failing");
* a *shared* cause (``shared=True``: Exchange unreachable, TLS, the sync account's login, the PSA,
  the state database; see ``cause_key``) is one key for every mailbox it hits. Its first mail
  waits ``group_window_s`` (15 s) so that the mailboxes failing together are named in one mail
  (the first 20, then a count); mailboxes hit later join the key silently and are named in the
  "still failing" and RESOLVED mails. ``resolved(key, mailbox)`` takes one mailbox off; the RESOLVED
  mail goes when the last one has cleared;
* ``resolved(key)`` closes the key; if it had been mailed, a RESOLVED mail says so;
* ``confirm_user(mailbox, summary)`` mails a newly enabled user what is synced and how to change it.

Time for the de-duplication comes from ``trio.current_time()`` (MockClock in tests); the times shown
in mails come from the wall clock, in UTC. The calls never block and never raise: they put the mail
on a bounded channel, and ``serve()`` (started in the daemon's nursery) sends them one by one through
the ``ports.Mailer``. A cycle never waits on SMTP. A mail that cannot be sent is logged
(``exchanged.notify``) and the key is re-armed, so that its next occurrence tries again; a full queue
drops the mail with a log line. Nothing here is ever fatal, and no mail ever carries a secret: the
texts are built from ``errors.Presented``, which never holds one.
"""

from __future__ import annotations

import email.policy
import email.utils
import math
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio

from exchanged.errors import MailError, Presented
from exchanged.ports import Mailer

if TYPE_CHECKING:
    from exchanged.config import Config

log = structlog.get_logger("exchanged.notify")

Security = Literal["none", "starttls", "tls"]
MAX_SUBJECT = 180


# --- the SMTP mailer ----------------------------------------------------------------------------


class SmtpMailer:
    """``ports.Mailer`` over SMTP; blocking smtplib runs in a worker thread."""

    def __init__(
        self,
        host: str,
        port: int,
        security: Security = "none",
        sender: str = "exchanged@localhost",
        ca_file: str | None = None,
        timeout: float = 30.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"security must be none, starttls or tls, not {security!r}")
        self.host = host
        self.port = port
        self.security = security
        self.sender = sender
        self.ca_file = ca_file
        self.timeout = timeout
        self.username = username
        self._password = password or ""

    @classmethod
    def from_config(cls, smtp: Any) -> SmtpMailer:
        """From ``config.SmtpConfig`` (``notifications.smtp``)."""
        secret = getattr(smtp, "password", None)
        getter = getattr(secret, "get_secret_value", None)
        password = getter() if callable(getter) else secret
        return cls(smtp.host, smtp.port, smtp.security, smtp.sender, smtp.ca_file, smtp.timeout_seconds,
                   username=getattr(smtp, "username", None), password=password)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port} ({self.security})"

    def build(self, to: Sequence[str], subject: str, body: str) -> EmailMessage:
        # long lines instead of folding: Python folds some subjects right after "Subject:", which
        # clients then show with a leading blank; 998 is RFC 5322's hard limit, subjects stay < 200
        msg = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = one_line(subject)
        msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
        domain = self.sender.rsplit("@", 1)[-1] or "localhost"
        msg["Message-ID"] = email.utils.make_msgid("exchanged", domain=domain)  # no DNS lookup
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a daemon
        msg.set_content(body)
        return msg

    async def send(self, to: Sequence[str], subject: str, body: str) -> None:
        recipients = [r for r in to if r]
        if not recipients:
            raise MailError("mail has no recipients (notifications.email is empty)")
        msg = self.build(recipients, subject, body)
        # abandon_on_cancel: shutting down never waits for a hanging SMTP server (timeout bounds it)
        refused = await trio.to_thread.run_sync(self._deliver, msg, recipients, abandon_on_cancel=True)
        if refused:
            log.warning("SMTP server refused some recipients; the others got the mail",
                        refused=sorted(refused), smtp=self.where, subject=msg["Subject"])

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()  # the system CAs, hostname check, TLS >= 1.2
        if self.ca_file:
            context.load_verify_locations(self.ca_file)  # plus the internal CA
        return context

    def _connect(self) -> smtplib.SMTP:
        """Connected, TLS as configured, logged in when a user name is set."""
        if self.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                    context=self._tls_context())
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                client.ehlo()
                client.starttls(context=self._tls_context())
                client.ehlo()
            if self.username:
                client.login(self.username, self._password)
        except BaseException:
            client.close()
            raise
        return client

    def probe(self) -> str:
        """Connect, TLS, login, QUIT: no mail is sent (``check-config --connect``); blocking. The
        step reached, as a sentence; a failure raises ``MailError`` as a delivery would."""
        def run(client: smtplib.SMTP) -> str:
            steps = ["connected", {"tls": "TLS", "starttls": "STARTTLS"}.get(self.security, "")]
            if self.username:
                steps.append(f"logged in as {self.username}")
            return ", ".join(s for s in steps if s)

        return self._with_client(run)

    def _deliver(self, msg: EmailMessage, to: list[str]) -> dict[str, Any]:
        """Blocking delivery; every failure becomes one ``MailError`` naming server and cause."""
        return self._with_client(
            lambda client: dict(client.send_message(msg, from_addr=self.sender, to_addrs=to)))

    def _with_client(self, use: Callable[[smtplib.SMTP], Any]) -> Any:
        where = self.where
        try:
            with self._connect() as client:
                return use(client)
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(
                f"SMTP server {where} refused the login of {self.username}: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                hint="check notifications.smtp.username and the password in "
                "notifications.smtp.password_file",
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise MailError(
                f"TLS certificate of SMTP server {where} not trusted: {exc.verify_message}",
                hint="add the issuing CA as notifications.smtp.ca_file, or fix the server certificate",
            ) from None
        except ssl.SSLError as exc:
            raise MailError(
                f"TLS with SMTP server {where} failed: {exc.reason or exc}",
                hint="check notifications.smtp.security: tls is TLS from the first byte (port 465), "
                "starttls upgrades a plain connection (port 25/587)",
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            if "AUTH" in str(exc):
                raise MailError(
                    f"SMTP server {where} does not offer a login (SMTP AUTH)",
                    hint="many servers offer AUTH only after TLS: set notifications.smtp.security to "
                    "starttls or tls, or remove notifications.smtp.username",
                ) from None
            raise MailError(
                f"SMTP server {where} does not offer STARTTLS",
                hint="enable STARTTLS on the server, or set notifications.smtp.security to tls or none",
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(
                f"{rcpt} ({code} {_text(text)})" for rcpt, (code, text) in exc.recipients.items()
            )
            raise MailError(
                f"SMTP server {where} refused every recipient: {refused}",
                hint="check notifications.email and that the server relays for this host",
            ) from None
        except smtplib.SMTPSenderRefused as exc:
            raise MailError(
                f"SMTP server {where} refused the sender {exc.sender}: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}",
                hint="check notifications.smtp.from and that the server accepts mail from this host",
            ) from None
        except smtplib.SMTPResponseException as exc:
            raise MailError(f"SMTP server {where} answered {exc.smtp_code} {_text(exc.smtp_error)}") from None
        except smtplib.SMTPServerDisconnected:
            raise MailError(
                f"SMTP server {where} closed the connection",
                hint="check notifications.smtp.port and .security "
                "(a TLS port spoken to in plain, or the reverse)",
            ) from None
        except smtplib.SMTPException as exc:
            raise MailError(f"SMTP with {where} failed: {exc}") from None
        except TimeoutError:
            raise MailError(
                f"no answer from SMTP server {where} within {self.timeout:g} s",
                hint="check notifications.smtp.host/port/security, and a firewall between",
            ) from None
        except socket.gaierror as exc:
            raise MailError(f"cannot resolve SMTP server name {self.host!r}: {exc.strerror}",
                            hint="check notifications.smtp.host and DNS") from None
        except OSError as exc:
            raise MailError(f"cannot connect to SMTP server {where}: {exc.strerror or exc}") from None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def one_line(text: str, limit: int = MAX_SUBJECT) -> str:
    """A header-safe single line (no CR/LF injection), shortened with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- the policy ---------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return "less than a minute"
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes)
    return " ".join(parts)


def error_key(presented: Presented, mailbox: str | None) -> str:
    """The usual key of a distinct error: its reason, for one mailbox or for the whole daemon."""
    return f"{presented.reason}:{mailbox or '*'}"


# causes that every mailbox reached through the same server, account or database shares
SHARED_REASONS = frozenset({"exchange_unreachable", "tls_untrusted", "throttled", "psa_unreachable",
                            "psa_auth_failed", "psa_budget", "state_error"})
GROUP_WINDOW_S = 15.0  # a shared cause's first mail waits this long for the other mailboxes
MAX_NAMED = 20  # mailboxes named in one mail; the rest are counted


def cause_key(reason: str, mailbox: str, *, sync_account_login: bool) -> tuple[str, bool]:
    """(mail key, shared) of a failed cycle of ``mailbox``: a cause shared by many mailboxes is one
    key (``cause:REASON``); ``auth_failed`` is shared when every mailbox logs in with the sync
    account (``credentials.use_for_all_users``), per mailbox otherwise."""
    if reason in SHARED_REASONS or (reason == "auth_failed" and sync_account_login):
        return f"cause:{reason}", True
    return f"user:{mailbox}:{reason}", False


def named(mailboxes: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``a, b, c`` -- the first ``limit``, then ``and N more``."""
    shown = ", ".join(mailboxes[:limit])
    more = len(mailboxes) - limit
    return f"{shown} and {more} more" if more > 0 else shown


@dataclass(slots=True)
class _OpenError:
    key: str
    presented: Presented
    mailbox: str | None
    first_seen: datetime  # wall clock, shown in mails
    last_seen: datetime
    count: int = 1
    last_mailed: float | None = None  # trio time of the last mail queued for this key
    mailed: bool = False  # somebody was (or is being) told: a RESOLVED mail is owed
    shared: bool = False  # one cause of many mailboxes (see cause_key)
    mailboxes: dict[str, None] = field(default_factory=dict)  # shared: the mailboxes hit, in order
    hit: dict[str, None] = field(default_factory=dict)  # shared: every mailbox it ever hit (RESOLVED)
    due: float | None = None  # shared: trio time at which its grouped first mail goes


@dataclass(frozen=True, slots=True)
class _Outgoing:
    kind: Literal["error", "resolved", "confirmation"]
    to: tuple[str, ...]
    subject: str
    body: str
    key: str | None = None
    mailbox: str | None = None  # for the log's MAILBOX field


@dataclass(frozen=True, slots=True)
class NotifierStatistics:
    open_errors: int
    queued: int
    sent: int
    failed: int
    dropped: int


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0  # queued or being sent


@dataclass(slots=True)
class _Settings:
    mailer: Mailer | None
    recipients: tuple[str, ...]
    profile_name: str
    repeat_after_minutes: float
    extra: dict[str, Any] = field(default_factory=dict)


class Notifier:
    def __init__(
        self,
        mailer: Mailer | None,
        recipients: Sequence[str],
        profile_name: str,
        repeat_after_minutes: float = 240,
        *,
        queue_size: int = 64,
        hostname: str | None = None,
        wall_clock: Callable[[], datetime] = _utcnow,
        group_window_s: float = GROUP_WINDOW_S,
    ) -> None:
        self._settings = _Settings(mailer, tuple(recipients), profile_name, repeat_after_minutes)
        self._open: dict[str, _OpenError] = {}
        self._outbox, self._inbox = trio.open_memory_channel[_Outgoing](queue_size)
        self._counters = _Counters()
        self._idle = trio.Event()
        self._idle.set()
        self._hostname = hostname or socket.gethostname()
        self._wall = wall_clock
        self.group_window_s = group_window_s
        self._wake = trio.Event()  # a shared cause's grouped mail got a due time

    # --- configuration ----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> Notifier:
        notifications = cfg.notifications
        return cls(SmtpMailer.from_config(notifications.smtp), notifications.recipients, cfg.profile_name,
                   notifications.repeat_after_minutes, **kwargs)

    def reconfigure(self, cfg: Config) -> None:
        """Apply a reloaded config; open errors and their de-duplication survive."""
        notifications = cfg.notifications
        self.configure(mailer=SmtpMailer.from_config(notifications.smtp), recipients=notifications.recipients,
                       profile_name=cfg.profile_name, repeat_after_minutes=notifications.repeat_after_minutes)

    def configure(self, *, mailer: Mailer | None, recipients: Sequence[str], profile_name: str,
                  repeat_after_minutes: float) -> None:
        self._settings = _Settings(mailer, tuple(recipients), profile_name, repeat_after_minutes)

    # --- the policy -------------------------------------------------------------------------------

    def error(self, key: str, presented: Presented, mailbox: str | None = None, *,
              shared: bool = False) -> bool:
        """One occurrence of the distinct error ``key``; True when a mail was queued (or, for a
        shared cause, is on its way) for it."""
        now = trio.current_time()
        wall = self._wall()
        entry = self._open.get(key)
        if entry is None:
            entry = self._open[key] = _OpenError(key, presented, None if shared else mailbox,
                                                 first_seen=wall, last_seen=wall, shared=shared)
        else:
            entry.count += 1
            entry.last_seen = wall
            entry.presented = presented  # the latest wording is the most useful
            if not entry.shared:
                entry.mailbox = mailbox or entry.mailbox
        if entry.shared and mailbox:
            entry.mailboxes.setdefault(mailbox, None)
            entry.hit.setdefault(mailbox, None)
        if entry.due is not None:
            return True  # the grouped first mail has not gone yet: it will name this mailbox too
        repeat_s = self._settings.repeat_after_minutes * 60
        if entry.last_mailed is not None and now - entry.last_mailed < repeat_s:
            return False
        if not self._settings.recipients:
            log.debug("error not mailed: notifications.email is empty", key=key, mailbox=mailbox)
            return False
        if entry.shared and not entry.mailed:
            entry.due = now + self.group_window_s
            self._wake.set()
            return True
        return self._mail_error(entry, now)

    def _mail_error(self, entry: _OpenError, now: float) -> bool:
        subject, body = self._error_text(entry, repeat=entry.mailed)
        if not self._queue(_Outgoing("error", self._settings.recipients, subject, body, entry.key,
                                     entry.mailbox)):
            return False
        entry.last_mailed = now
        entry.mailed = True
        return True

    def _release_due(self, *, everything: bool = False) -> None:
        """Queue the grouped first mails of shared causes whose window has passed."""
        now = trio.current_time()
        for entry in list(self._open.values()):
            if entry.due is not None and (everything or entry.due <= now):
                entry.due = None
                if self._settings.recipients:
                    self._mail_error(entry, now)

    def resolved(self, key: str, mailbox: str | None = None) -> bool:
        """The error ``key`` has cleared (for ``mailbox`` only, when it is a shared cause that other
        mailboxes still have); True when a RESOLVED mail was queued."""
        entry = self._open.get(key)
        if entry is None:
            return False
        if entry.shared and mailbox is not None:
            entry.mailboxes.pop(mailbox, None)
            if entry.mailboxes:
                return False
        del self._open[key]
        if entry.due is not None or not entry.mailed or not self._settings.recipients:
            return False  # nobody was told (a grouped mail not yet gone is simply dropped)
        subject, body = self._resolved_text(entry)
        return self._queue(
            _Outgoing("resolved", self._settings.recipients, subject, body, key, entry.mailbox)
        )

    def resolved_prefix(self, prefix: str) -> int:
        """Close every open key starting with ``prefix`` (``config``: any rejected reload)."""
        return sum(self.resolved(k) for k in [k for k in self._open if k.startswith(prefix)])

    def resolved_mailbox(self, mailbox: str) -> int:
        """Close every open error of ``mailbox`` (its cycle succeeded, or it left the config), and
        take it off the shared causes; the number of RESOLVED mails."""
        keys = [k for k, e in self._open.items() if e.mailbox == mailbox or mailbox in e.mailboxes]
        return sum(self.resolved(k, mailbox) for k in keys)

    def forget_mailbox(self, mailbox: str) -> None:
        """``mailbox`` left the config: its own errors are dropped and it leaves the shared causes,
        without mails (nothing cleared; a cause nobody is left to observe is dropped too)."""
        for key, entry in list(self._open.items()):
            if entry.mailbox == mailbox:
                del self._open[key]
            elif entry.shared and mailbox in entry.mailboxes:
                entry.mailboxes.pop(mailbox)
                entry.hit.pop(mailbox, None)
                if not entry.mailboxes:
                    del self._open[key]

    def confirm_user(self, mailbox: str, settings_summary: str) -> bool:
        """Tell a newly enabled user what is synced and how to change it (the vendor's confirmation)."""
        subject, body = self._confirmation_text(mailbox, settings_summary)
        return self._queue(_Outgoing("confirmation", (mailbox,), subject, body, mailbox=mailbox))

    def open_errors(self) -> dict[str, int]:
        """Open error keys and how often each occurred (for status and tests)."""
        return {k: e.count for k, e in self._open.items()}

    def statistics(self) -> NotifierStatistics:
        c = self._counters
        return NotifierStatistics(len(self._open), c.pending, c.sent, c.failed, c.dropped)

    # --- the sender -------------------------------------------------------------------------------

    def _queue(self, item: _Outgoing) -> bool:
        try:
            self._outbox.send_nowait(item)
        except trio.WouldBlock:
            self._counters.dropped += 1
            log.warning("mail queue full: mail dropped", kind=item.kind, subject=item.subject)
            return False
        self._counters.pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued mails one by one, for ever (until cancelled)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_grouping)
            task_status.started()
            async for item in self._inbox:
                try:
                    await self._send_one(item)
                finally:
                    self._counters.pending -= 1
                    if self._counters.pending == 0:
                        self._idle.set()

    async def _serve_grouping(self) -> None:
        while True:
            self._wake = trio.Event()
            due = [e.due for e in self._open.values() if e.due is not None]
            with trio.move_on_at(min(due) if due else math.inf):
                await self._wake.wait()
            self._release_due()

    serve_notifier = serve

    async def _send_one(self, item: _Outgoing) -> None:
        mailer = self._settings.mailer  # the current one: a reload applies to queued mails too
        if mailer is None:
            log.info("mail not sent: no mailer configured", kind=item.kind, subject=item.subject)
            return
        try:
            await mailer.send(item.to, item.subject, item.body)
        except MailError as exc:
            self._counters.failed += 1
            log.warning("mail not sent", kind=item.kind, subject=item.subject, to=list(item.to),
                        mailbox=item.mailbox, error=exc.message, hint=exc.hint)
            self._rearm(item)
        except Exception as exc:  # a bug in a mailer must not end the notifier
            self._counters.failed += 1
            log.error("mail not sent: internal error", kind=item.kind, subject=item.subject,
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            self._rearm(item)
        else:
            self._counters.sent += 1
            log.info("mail sent", kind=item.kind, subject=item.subject, to=list(item.to),
                     mailbox=item.mailbox)

    def _rearm(self, item: _Outgoing) -> None:
        # nobody was told: the next occurrence of this error tries again, and no RESOLVED is owed
        if item.kind == "error" and item.key is not None:
            entry = self._open.get(item.key)
            if entry is not None:
                entry.last_mailed = None
                entry.mailed = False

    async def flush(self) -> None:
        """Send the grouped mails now, then wait until every queued mail has been sent or given
        up (tests, shutdown)."""
        self._release_due(everything=True)
        while self._counters.pending:
            await self._idle.wait()

    # --- the texts --------------------------------------------------------------------------------

    def _prefix(self) -> str:
        return f"[exchanged {self._settings.profile_name}]"

    @staticmethod
    def _what(entry: _OpenError) -> str:
        first = entry.presented.message.strip().splitlines()[0] if entry.presented.message.strip() else ""
        for mailbox in [entry.mailbox, *entry.hit]:
            if mailbox and first.startswith(f"{mailbox}: "):
                first = first[len(mailbox) + 2:]
                break
        return first or entry.presented.reason

    @staticmethod
    def _who(entry: _OpenError) -> str:
        if entry.shared:
            n = len(entry.mailboxes or entry.hit)
            return f" ({n} mailbox{'es' if n != 1 else ''})" if n else ""
        return f" {entry.mailbox}" if entry.mailbox else ""

    @staticmethod
    def _mailbox_line(entry: _OpenError) -> str:
        if entry.shared and (entry.mailboxes or entry.hit):
            boxes = list(entry.mailboxes or entry.hit)
            return (f"{len(boxes)} mailbox{'es' if len(boxes) != 1 else ''}, one cause: "
                    f"{named(boxes)}")
        return entry.mailbox or "not one mailbox: the daemon as a whole"

    def _error_text(self, entry: _OpenError, *, repeat: bool) -> tuple[str, str]:
        who = self._who(entry)
        still = " (still failing)" if repeat else ""
        subject = one_line(f"{self._prefix()} ERROR{who}: {self._what(entry)}{still}")
        journal = f'journalctl -u exchanged --since "{entry.first_seen.astimezone(UTC):%Y-%m-%d %H:%M:%S}"'
        if entry.mailbox:
            journal += f" MAILBOX={entry.mailbox}"
        times = "once" if entry.count == 1 else f"{entry.count} times"
        repeat_min = self._settings.repeat_after_minutes
        body = "\n".join([
            f"exchanged (profile \"{self._settings.profile_name}\" on host {self._hostname}) "
            "reports an error.",
            "",
            "What failed:",
            *(f"  {line}" for line in entry.presented.message.strip().splitlines()),
            "",
            f"Mailbox:        {self._mailbox_line(entry)}",
            f"Failing since:  {_stamp(entry.first_seen)}",
            f"Occurred:       {times} (last at {_stamp(entry.last_seen)})",
            f"Reason code:    {entry.presented.reason}",
            "",
            "What to check:",
            f"  {entry.presented.hint or 'the log has the details (below)'}",
            "",
            "How to see more:",
            "  exchangectl status",
            f"  {journal}",
            "",
            f"While this error lasts it is mailed again at most every {repeat_min:g} minutes;",
            "a RESOLVED mail follows when it clears.",
            "",
        ])
        return subject, body

    def _resolved_text(self, entry: _OpenError) -> tuple[str, str]:
        who = self._who(entry)
        subject = one_line(f"{self._prefix()} RESOLVED{who}: {self._what(entry)}")
        now = self._wall()
        lasted = _duration((now - entry.first_seen).total_seconds())
        times = "once" if entry.count == 1 else f"{entry.count} times"
        body = "\n".join([
            f"exchanged (profile \"{self._settings.profile_name}\" on host {self._hostname}): "
            "an error reported earlier has cleared.",
            "",
            "The error was:",
            *(f"  {line}" for line in entry.presented.message.strip().splitlines()),
            "",
            f"Mailbox:        {self._mailbox_line(entry)}",
            f"Failing from:   {_stamp(entry.first_seen)}",
            f"Cleared at:     {_stamp(now)} (after {lasted}; it occurred {times})",
            f"Reason code:    {entry.presented.reason}",
            "",
            "Nothing needs to be done; the sync catches up by itself. `exchangectl status` shows the state.",
            "",
        ])
        return subject, body

    def _confirmation_text(self, mailbox: str, summary: str) -> tuple[str, str]:
        subject = one_line(f"{self._prefix()} Your mailbox {mailbox} is now synced with the PSA")
        contact = ", ".join(self._settings.recipients) or "your administrator"
        body = "\n".join([
            "Hello,",
            "",
            f"your mailbox {mailbox} has been enabled for the synchronisation between the PSA and",
            f"Microsoft Exchange (profile \"{self._settings.profile_name}\"). It runs by itself at regular",
            "intervals; you need not do anything.",
            "",
            "What is synced for you:",
            summary.rstrip(),
            "",
            "Good to know:",
            "- Items the sync creates never send meeting invitations and carry no attendees.",
            "- An item it created that you delete in Exchange is created again from the PSA; change or",
            "  delete it in the PSA instead.",
            "",
            "To change what is synced for you (for example to stop copying your Exchange appointments",
            "into the PSA), ask your administrator to adjust your entry (users[].settings) in the",
            "exchanged configuration. Your settings can switch parts off, not switch on what is off",
            "for everyone.",
            "",
            f"Questions, or did you not expect this mail? Contact {contact}.",
            "",
        ])
        return subject, body


async def serve_notifier(
    notifier: Notifier, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The notifier's sender as a ``serve_*`` task for the daemon's nursery."""
    await notifier.serve(task_status=task_status)


__all__ = ["Notifier", "NotifierStatistics", "SmtpMailer", "cause_key", "error_key", "named", "one_line",
           "serve_notifier"]
