"""The configuration: YAML -> frozen, validated objects; every problem with its key path and line.

Theory of operation
-------------------
1. ``_parse_yaml`` composes the YAML node tree once and constructs the document from it, so that
   every key path can be mapped back to the line it was written on (``_LineMap``). Duplicate keys
   (which PyYAML would silently collapse) are problems too.
2. pydantic validates the structure and the rules that concern one section (types, ranges, a DNS
   name for the server, secrets read from files). Its errors are translated into
   ``errors.ConfigProblem`` with our path syntax (``users[2].mailbox``) and a "did you mean" for
   unknown keys.
3. Rules that cross sections (Graph vs. local basic auth, per-user narrowing, duplicate mailboxes,
   ...) run on the raw document, defensively, so that they are reported even when step 2 failed
   somewhere else: the operator sees *all* problems at once.
4. ``load_config`` raises ``errors.ConfigInvalid`` with every problem, or returns a ``Config``.

Secrets (Exchange password, Autotask secret and integration code) are ``pydantic.SecretStr``: their
repr is ``**********`` and no error message ever quotes a secret's value.
"""

from __future__ import annotations

import difflib
import email.utils
import grp
import ipaddress
import json
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from exchanged.errors import ConfigInvalid, ConfigProblem
from exchanged.logs import register_secret

CREDENTIAL_PASSWORD = "sync-password"
CREDENTIAL_GRAPH_SECRET = "graph-client-secret"  # systemd credential names (LoadCredential=NAME:FILE)
CREDENTIAL_GRAPH_CERTIFICATE = "graph-certificate"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
DEFAULT_LOGIN_URL = "https://login.microsoftonline.com"
CREDENTIAL_AUTOTASK_SECRET = "autotask-secret"
CREDENTIAL_AUTOTASK_CODE = "autotask-integration-code"
MAX_PASSWORD_CHARS = 128  # the vendor's limit ("maximal 128 Ziffern")

ExchangeVersion = Literal[
    "Exchange2007",
    "Exchange2007_SP1",
    "Exchange2010",
    "Exchange2010_SP1",
    "Exchange2010_SP2",
    "Exchange2013",
    "Exchange2013_SP1",
    "Exchange2015",
    "Exchange2015_SP1",
    "Exchange2016",
    "Exchange2019",
]
ImportMode = Literal["all_details", "no_details", "none"]
# how much of an Exchange appointment is imported; a user may only move down this ladder
IMPORT_LADDER: dict[str, int] = {"none": 0, "no_details": 1, "all_details": 2}
ShowAs = Literal["free", "tentative", "oof", "working_elsewhere"]
DB_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")


# --- rule helpers -------------------------------------------------------------------------------


def _rule(message: str, key: str | None = None) -> PydanticCustomError:
    """A rule violation; ``key`` names the sub-key (of the validated model) it is about."""
    return PydanticCustomError("exchanged_rule", "{msg}", {"msg": message, "key": key or ""})


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def dns_name_problem(value: str) -> str | None:
    """Why ``value`` is not a DNS host name, or None. IP literals are refused (vendor rule)."""
    text = value.strip()
    if not text:
        return "must not be empty"
    if "://" in text:
        return "give the host name only, without a scheme (https is implied; see server.allow_plaintext)"
    bare = text.strip("[]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return f"{text!r} is an IP address; use the server's DNS name (the vendor forbids IP addresses here)"
    if "/" in text:
        return "give the host name only, without a path (see server.virtual_directory)"
    if ":" in text:
        return "give the host name only, without a port (see server.port)"
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253:
        return "is longer than 253 characters, not a DNS name"
    labels = name.split(".")
    if labels[-1].isdigit():
        return f"{text!r} looks like an IP address; use the server's DNS name"
    try:
        ascii_labels = [lbl.encode("idna").decode("ascii") if not lbl.isascii() else lbl for lbl in labels]
    except UnicodeError:
        return f"{text!r} is not a valid DNS name"
    if not all(_LABEL.match(lbl) for lbl in ascii_labels):
        return f"{text!r} is not a valid DNS name (letters, digits, '-' and '.' only)"
    return None


_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+$")


def address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable mail address, or None."""
    if address.count("@") != 1:
        return f"{address!r} is not a mail address (expected name@domain)"
    local, domain = address.rsplit("@", 1)
    if not domain:
        return f"{address!r} has no domain after '@'"
    if not local or len(local) > 64 or not _LOCAL_PART.match(local) or ".." in local \
            or local.startswith(".") or local.endswith("."):
        return f"{address!r}: the part before '@' is not valid"
    if domain != "localhost" and "." not in domain:
        return f"{address!r}: the domain {domain!r} has no dot"
    problem = dns_name_problem(domain)
    if problem is not None:
        return f"{address!r}: the domain is not valid: {problem}"
    return None


def parse_recipients(text: str) -> tuple[list[str], list[str]]:
    """Split a ';'-separated list (as the vendor's form has it) into (addresses, problems)."""
    addresses: list[str] = []
    problems: list[str] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        _name, addr = email.utils.parseaddr(part)
        addr = addr or part
        problem = address_problem(addr)
        if problem is None:
            addresses.append(addr)
        else:
            problems.append(problem)
    return addresses, problems


def _read_secret_file(path: Path, label: str, check_mode: bool) -> str:
    """Read one secret from ``path``; refuse group/other-readable files (``check_mode``)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{label} file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{label} file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{label} file {path} is not a regular file")
    if check_mode and st.st_mode & 0o077:
        raise ValueError(
            f"{label} file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{label} file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{label} file {path} cannot be read: {exc.strerror}") from None
    # only the line end an editor adds is dropped: spaces may be part of a password
    value = text.rstrip("\r\n")
    if not value:
        raise ValueError(f"{label} file {path} is empty")
    return value


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def _credentials_dir(info: ValidationInfo) -> str | None:
    ctx = info.context or {}
    if "credentials_dir" in ctx:
        value: str | None = ctx["credentials_dir"]
        return value
    return os.environ.get("CREDENTIALS_DIRECTORY") or None


def _resolve_secret(
    info: ValidationInfo,
    *,
    label: str,
    inline: SecretStr | None,
    file: str | None,
    inline_key: str,
    file_key: str,
    credential: str | None,
    max_chars: int | None = None,
) -> SecretStr:
    """Exactly one source: ``file``, ``inline``, or (neither set) the systemd credential."""
    if inline is not None and file is not None:
        raise _rule(f"give either {inline_key} or {file_key}, not both", inline_key)
    if file is not None:
        path = Path(file)
        if not path.is_absolute():
            path = _base_dir(info) / path
        if not file.startswith("/") and not path.exists():
            # a relative name that is no file may be the password itself, typed into the wrong key:
            # never echoed (check-config, status, mail, log)
            register_secret(file)
            raise _rule(f"{label} file: the value of {file_key} is not an absolute path and no such file "
                        f"exists next to the config (not shown, in case it is the password itself); "
                        f"{file_key} takes the path of a file holding the {label}", file_key)
        try:
            value = _read_secret_file(path, label, check_mode=True)
        except ValueError as exc:
            raise _rule(str(exc), file_key) from None
        key = file_key
    elif inline is not None:
        value = inline.get_secret_value()
        key = inline_key
        if not value:
            raise _rule(f"{label} is empty", key)
    elif credential is None:
        raise _rule(f"no {label}: set {file_key} or {inline_key}", file_key)
    else:
        value = _credential(info, label, credential, inline_key, file_key)
        key = file_key
    if max_chars is not None and len(value) > max_chars:
        raise _rule(f"{label} is longer than {max_chars} characters (the vendor's limit)", key)
    return SecretStr(value)


def _credential(info: ValidationInfo, label: str, credential: str, inline_key: str, file_key: str) -> str:
    """The secret when no key names it: the systemd credential, else the file of that name next to
    the config (so that `exchanged check-config` run by root reads what LoadCredential= would pass)."""
    cred_dir = _credentials_dir(info)
    if cred_dir:
        try:
            # systemd creates credential files 0400 for the service user in a private directory
            return _read_secret_file(Path(cred_dir) / credential, f"{label} (systemd credential)", False)
        except ValueError as exc:
            raise _rule(f"{exc}; set {file_key} or {inline_key}, or fix LoadCredential", file_key) from None
    beside = _base_dir(info) / credential
    if beside.exists():
        try:
            return _read_secret_file(beside, label, check_mode=True)
        except ValueError as exc:
            raise _rule(str(exc), file_key) from None
    raise _rule(f"no {label}: set {file_key} or {inline_key}, or provide the systemd credential "
                f"(LoadCredential={credential}:FILE) or the file {beside}", file_key)


def _secret_not_number(value: Any) -> Any:
    # YAML turns unquoted digits into numbers (0123 even into octal 83): never guess a password
    if value is not None and not isinstance(value, str | SecretStr):
        raise _rule("must be a quoted string in the YAML file")
    return value


def _none_is_empty(value: Any) -> Any:
    # `sync:` with every child commented out is YAML null: treat it as "all defaults"
    return {} if value is None else value


def _db_url(value: str, what: str) -> str:
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme not in DB_SCHEMES:
        raise _rule("must be a database URL starting with sqlite:/// or postgresql:// "
                    "(as SQLAlchemy writes them)")
    if scheme == "sqlite" and not value.lower().startswith("sqlite:///"):
        raise _rule("a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
    return value


# --- the models ---------------------------------------------------------------------------------


# numbers and switches exactly as YAML writes them: "7" or "yes" (quoted) are mistakes, not values
SInt = Annotated[int, Strict()]
SBool = Annotated[bool, Strict()]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ServerConfig(_Model):
    address: str
    hosted_by_third_party: SBool = False
    virtual_directory: str = ""
    version: ExchangeVersion | None = None
    port: SInt = Field(default=443, ge=1, le=65535)
    use_ms_graph: SBool = False
    graph_url: str = DEFAULT_GRAPH_URL  # national clouds and the test server; Graph only
    login_url: str = DEFAULT_LOGIN_URL  # the Entra ID authority host; Graph only
    ca_bundle: str | None = None
    allow_plaintext: SBool = False
    # seconds to wait for the TCP (and TLS) connection, and for each answer of the server
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    read_timeout_s: float = Field(default=60.0, gt=0, le=900)
    request_deadline_s: float = Field(default=300.0, gt=0, le=3600)
    max_answer_mb: int = Field(default=64, ge=1, le=1024)

    @field_validator("graph_url", "login_url")
    @classmethod
    def _https_base(cls, value: str) -> str:
        return _https_base_url(value)

    @field_validator("address")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        problem = dns_name_problem(value)
        if problem is not None:
            raise _rule(problem)
        return value.strip().rstrip(".").lower()

    @field_validator("virtual_directory")
    @classmethod
    def _vdir(cls, value: str) -> str:
        if "://" in value:
            raise _rule("give a path such as EWS/Exchange.asmx, not a URL "
                        "(leave empty as the vendor advises)")
        if any(c.isspace() for c in value) or "?" in value or "#" in value or ".." in value.split("/"):
            raise _rule("must be a plain path such as EWS/Exchange.asmx (leave empty as the vendor advises)")
        return value.strip("/")

    @field_validator("ca_bundle")
    @classmethod
    def _ca_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _existing_file(value, info, "CA bundle")

    @model_validator(mode="after")
    def _plaintext(self) -> ServerConfig:
        if not self.allow_plaintext and self.port == 80:
            raise _rule("port 80 is plain HTTP: set server.allow_plaintext: true to allow it "
                        "(passwords then cross the network unencrypted)", "port")
        return self


def _https_base_url(value: str) -> str:
    """An https URL of a host (and optional port and path prefix), without a trailing slash."""
    from urllib.parse import urlsplit

    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise _rule(f"is not a URL: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise _rule("must be an https:// URL such as https://graph.microsoft.com "
                    "(tokens and mail data never cross the network unencrypted)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _rule("must be a plain https://host[:port][/path] URL, without query, fragment or user")
    return text.rstrip("/")


def _existing_file(value: str | None, info: ValidationInfo, what: str) -> str | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = _base_dir(info) / path
    if not path.is_file():
        raise _rule(f"{what} {path} does not exist or is not a file")
    return str(path)


class CredentialsConfig(_Model):
    """EWS: ``username`` and a password. Graph (``server.use_ms_graph``): the app registration's
    ``tenant_id`` and ``client_id`` and either a certificate or a client secret. With
    ``local_setup_basic_auth: false`` these are Graph credentials and no password is asked for (the
    rules across sections tie that to ``server.use_ms_graph``)."""

    local_setup_basic_auth: SBool = True
    auth_type: Literal["basic", "ntlm"] = "basic"
    username: str = ""
    password_file: str | None = None
    # the YAML key `password` is one source; after validation it holds the resolved secret
    password: SecretStr = Field(default=None, validate_default=False)  # type: ignore[assignment]
    domain: str | None = None
    use_for_all_users: SBool = True
    # Graph (an Entra ID app registration, client-credentials flow)
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret_file: str | None = None
    certificate_file: str | None = None  # PEM: the private key and its certificate

    _check_password = field_validator("password", mode="before")(_secret_not_number)
    # resolved secrets of the Graph app (never in a dump, a repr or a log line)
    _client_secret: SecretStr | None = PrivateAttr(default=None)
    _certificate: SecretStr | None = PrivateAttr(default=None)

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _guid_or_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not text or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", text):
            raise _rule("must be the GUID shown in the app registration's overview "
                        "(Directory (tenant) ID / Application (client) ID), or the tenant's domain")
        return text

    @property
    def is_graph(self) -> bool:
        return not self.local_setup_basic_auth

    @property
    def client_secret(self) -> SecretStr | None:
        return self._client_secret

    @property
    def certificate(self) -> SecretStr | None:
        return self._certificate

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> CredentialsConfig:
        if self.is_graph:
            self._resolve_graph(info)
            if self.password is None and self.password_file is None:
                return self
        elif not self.username.strip():
            raise _rule("is required: the sync account's login name (DOMAIN\\user or user@domain)",
                        "username")
        secret = _resolve_secret(
            info, label="password", inline=self.password, file=self.password_file,
            inline_key="password", file_key="password_file", credential=CREDENTIAL_PASSWORD,
            max_chars=MAX_PASSWORD_CHARS,
        )
        object.__setattr__(self, "password", secret)  # frozen from here on; resolved once
        return self

    def _resolve_graph(self, info: ValidationInfo) -> None:
        """Exactly one of certificate_file / client_secret_file, or else the systemd credential
        graph-certificate (preferred) or graph-client-secret."""
        if self.certificate_file is not None and self.client_secret_file is not None:
            raise _rule("give either certificate_file or client_secret_file, not both "
                        "(the certificate is preferred)", "certificate_file")
        if self.certificate_file is not None:
            self._certificate = _resolve_secret(
                info, label="certificate", inline=None, file=self.certificate_file,
                inline_key="certificate_file", file_key="certificate_file", credential=None)
        elif self.client_secret_file is not None:
            self._client_secret = _resolve_secret(
                info, label="client secret", inline=None, file=self.client_secret_file,
                inline_key="client_secret_file", file_key="client_secret_file", credential=None)
        else:
            try:
                self._certificate = SecretStr(_credential(
                    info, "certificate", CREDENTIAL_GRAPH_CERTIFICATE, "client_secret_file",
                    "certificate_file"))
            except PydanticCustomError:
                try:
                    self._client_secret = SecretStr(_credential(
                        info, "client secret", CREDENTIAL_GRAPH_SECRET, "client_secret_file",
                        "certificate_file"))
                except PydanticCustomError:
                    raise _rule(
                        "no certificate or client secret for the Graph app: set certificate_file "
                        "(preferred) or client_secret_file, or provide the systemd credential "
                        f"{CREDENTIAL_GRAPH_CERTIFICATE} or {CREDENTIAL_GRAPH_SECRET} (LoadCredential=)",
                        "certificate_file") from None
        if self._certificate is not None:
            problem = pem_problem(self._certificate.get_secret_value())
            if problem is not None:
                raise _rule(problem, "certificate_file")

    def account_name(self) -> str:
        """The login name: DOMAIN\\user unless the user name already carries a domain."""
        if self.domain and "\\" not in self.username and "@" not in self.username:
            return f"{self.domain}\\{self.username}"
        return self.username


def time_zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this host knows, or None."""
    import zoneinfo

    if name.startswith(("/", ".")) or ".." in name or name in ("localtime", "posixrules"):
        return f"{name!r} is not an IANA time zone name (such as Europe/Berlin or America/New_York)"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else ""
        return (f"{name!r} is not an IANA time zone name{also}; use one such as Europe/Berlin or "
                "America/New_York (Windows names such as 'W. Europe Standard Time' are not accepted here)")
    return None


def pem_problem(text: str) -> str | None:
    """Why ``text`` is not a PEM file with one private key and a certificate, or None."""
    if "-----BEGIN CERTIFICATE-----" not in text:
        return ("the certificate file holds no certificate (-----BEGIN CERTIFICATE-----): "
                "give one PEM file with the private key and the certificate")
    if not re.search(r"-----BEGIN (RSA |EC |ENCRYPTED )?PRIVATE KEY-----", text):
        return ("the certificate file holds no private key (-----BEGIN PRIVATE KEY-----): "
                "give one PEM file with the private key and the certificate")
    if "ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return "the private key is encrypted: give it unencrypted, readable only by the daemon (chmod 600)"
    return None


class SmtpConfig(_Model):
    host: str = "localhost"
    port: SInt = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    from_: str = Field(default="exchanged@localhost", alias="from")
    ca_file: str | None = None  # extra CA for starttls/tls (internal PKI); TLS is always verified
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # SMTP authentication (AUTH after STARTTLS/TLS): the user name, and its password from a file
    username: str | None = None
    password_file: str | None = None
    password: SecretStr | None = None

    _check_password = field_validator("password", mode="before")(_secret_not_number)

    @model_validator(mode="after")
    def _auth(self, info: ValidationInfo) -> SmtpConfig:
        if self.username is None:
            if self.password_file is not None or self.password is not None:
                raise _rule("a password without notifications.smtp.username: set the user name too",
                            "username")
            return self
        if not self.username.strip():
            raise _rule("is empty", "username")
        secret = _resolve_secret(info, label="SMTP password", inline=self.password, file=self.password_file,
                                 inline_key="password", file_key="password_file", credential=None)
        object.__setattr__(self, "password", secret)  # frozen from here on; resolved once
        return self

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        _name, addr = email.utils.parseaddr(value)
        problem = address_problem(addr or value)
        if problem is not None:
            raise _rule(problem)
        return addr

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _existing_file(value, info, "CA file")

    @property
    def sender(self) -> str:
        return self.from_


class NotificationsConfig(_Model):
    email: str = ""
    smtp: SmtpConfig = SmtpConfig()
    repeat_after_minutes: SInt = Field(default=240, ge=1)

    _smtp_none = field_validator("smtp", mode="before")(_none_is_empty)

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, list):  # a YAML list is an obvious intent: accept it
            if not all(isinstance(v, str) for v in value):
                raise _rule("must be addresses separated by ';'")
            value = "; ".join(value)
        if isinstance(value, str):
            _addresses, problems = parse_recipients(value)
            if problems:
                raise _rule("; ".join(problems))
        return value

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(parse_recipients(self.email)[0])


_NARROWABLE_BOOLS = (
    "appointments_export", "contacts_owned", "service_calls_export", "todos", "import_free_time",
)


REMINDER_MAX_MINUTES = 20160  # two weeks, Outlook's longest reminder


class ReminderMinutesConfig(_Model):
    """``sync.reminder_minutes``: minutes before the start at which Outlook reminds (null: none).
    Defaults as Outlook's own: 15 for calendar items, none for tasks (docs/CONFIG.md)."""

    appointments: SInt | None = Field(default=15, ge=0, le=REMINDER_MAX_MINUTES)
    service_calls: SInt | None = Field(default=15, ge=0, le=REMINDER_MAX_MINUTES)
    todos: SInt | None = Field(default=None, ge=0, le=REMINDER_MAX_MINUTES)


class SyncConfig(_Model):
    appointments_export: SBool = True
    contacts_owned: SBool = True
    service_calls_export: SBool = True
    todos: SBool = True
    public_folder_all_contacts: SBool = False
    import_appointments: ImportMode = "all_details"
    import_free_time: SBool = True
    past_days: SInt = Field(default=7, ge=1, le=30)
    recurring_future_days: SInt = Field(default=30, ge=1, le=30)
    category: str = Field(default="PSA", min_length=1)
    max_concurrent_users: SInt = Field(default=8, ge=1)
    cycle_timeout_minutes: SInt = Field(default=60, ge=1, le=1440)
    psa_poll_seconds: SInt = Field(default=30, ge=5, le=3600)  # the PSA change probe (push.py)
    max_deletes_per_cycle: SInt = Field(default=25, ge=0)
    skip_show_as: tuple[ShowAs, ...] = ()
    skip_private: SBool = False
    skip_all_day: SBool = False
    skip_categories: tuple[str, ...] = ()
    reminder_minutes: ReminderMinutesConfig = ReminderMinutesConfig()


class UserSettingsConfig(_Model):
    """Per-user narrowing of the global ``sync`` section (None: as globally)."""

    appointments_export: SBool | None = None
    contacts_owned: SBool | None = None
    service_calls_export: SBool | None = None
    todos: SBool | None = None
    import_appointments: ImportMode | None = None
    import_free_time: SBool | None = None
    # only the kinds given change (another number, or null: no reminder for this user)
    reminder_minutes: ReminderMinutesConfig | None = None


class UserConfig(_Model):
    mailbox: str
    psa_resource: str = Field(min_length=1)
    enabled: SBool = True
    settings: UserSettingsConfig = UserSettingsConfig()
    # the zone of the mailbox's days (IANA); None: the zone the mailbox has in Exchange
    time_zone: str | None = None
    # only with credentials.use_for_all_users: false (each user logs in as itself)
    username: str | None = None
    password_file: str | None = None
    password: SecretStr | None = None

    _settings_none = field_validator("settings", mode="before")(_none_is_empty)

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        problem = time_zone_problem(value.strip())
        if problem is not None:
            raise _rule(problem)
        return value.strip()
    _check_password = field_validator("password", mode="before")(_secret_not_number)

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        problem = address_problem(value.strip())
        if problem is not None:
            raise _rule(problem)
        return value.strip().lower()  # Exchange addresses are case-insensitive: one spelling

    @field_validator("psa_resource", mode="before")
    @classmethod
    def _resource(cls, value: Any) -> Any:
        # "29682885" and 29682885 mean the same resource id
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> UserConfig:
        if self.password is None and self.password_file is None:
            return self
        secret = _resolve_secret(
            info, label=f"password of {self.mailbox}", inline=self.password, file=self.password_file,
            inline_key="password", file_key="password_file", credential=None,
            max_chars=MAX_PASSWORD_CHARS,
        )
        object.__setattr__(self, "password", secret)
        return self

    @property
    def login(self) -> str:
        return self.username or self.mailbox


class SqlPsaConfig(_Model):
    connector: Literal["sql"] = "sql"
    url: str = "sqlite:////var/lib/exchanged/psa.db"
    # PostgreSQL LISTEN on this channel: the PSA's triggers NOTIFY it (psa/listen.py, docs/OPERATIONS.md)
    listen_channel: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _db_url(value, "psa.url")

    @field_validator("listen_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        from exchanged.psa.listen import CHANNEL_RE

        if value is not None and not CHANNEL_RE.match(value):
            raise _rule(f"{value!r} is not a channel name: lower-case letters, digits and _, "
                        "starting with a letter or _, at most 63 (e.g. exchanged_psa)")
        return value

    @model_validator(mode="after")
    def _channel_needs_postgres(self) -> SqlPsaConfig:
        if self.listen_channel is not None and self.url.split(":", 1)[0].lower().startswith("postgres"):
            return self
        if self.listen_channel is not None:
            raise _rule("LISTEN/NOTIFY needs a PostgreSQL psa.url; remove listen_channel for SQLite "
                        "(its changes are probed every sync.psa_poll_seconds)", "listen_channel")
        return self


class AutotaskPsaConfig(_Model):
    connector: Literal["autotask"]
    username: str = Field(min_length=1)
    secret_file: str | None = None
    secret: SecretStr = Field(default=None, validate_default=False)  # type: ignore[assignment]
    integration_code_file: str | None = None
    integration_code: SecretStr = Field(default=None, validate_default=False)  # type: ignore[assignment]
    zone_lookup_url: str = "https://webservices.autotask.net/ATServicesRest/"
    requests_per_hour: SInt = Field(default=3000, ge=1, le=10000)
    ca_bundle: str | None = None
    request_deadline_s: float = Field(default=300.0, gt=0, le=3600)
    max_answer_mb: int = Field(default=64, ge=1, le=1024)

    _check_secret = field_validator("secret", "integration_code", mode="before")(_secret_not_number)

    @field_validator("zone_lookup_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.lower().startswith("https://") or len(value) <= len("https://"):
            raise _rule("must be an https:// URL (the API key and secret travel with every request)")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _existing_file(value, info, "CA bundle")

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> AutotaskPsaConfig:
        secret = _resolve_secret(
            info, label="Autotask secret", inline=self.secret, file=self.secret_file,
            inline_key="secret", file_key="secret_file", credential=CREDENTIAL_AUTOTASK_SECRET,
        )
        code = _resolve_secret(
            info, label="Autotask integration code", inline=self.integration_code,
            file=self.integration_code_file, inline_key="integration_code",
            file_key="integration_code_file", credential=CREDENTIAL_AUTOTASK_CODE,
        )
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "integration_code", code)
        return self


PsaConfig = Annotated[Union[SqlPsaConfig, AutotaskPsaConfig], Field(discriminator="connector")]  # noqa: UP007


class StateConfig(_Model):
    url: str = "sqlite:////var/lib/exchanged/state.db"
    history_days: SInt = Field(default=90, ge=1, le=3650)  # the journal keeps this many days

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _db_url(value, "state.url")


class ControlConfig(_Model):
    socket: str = "/run/exchanged/control.sock"
    group: str | None = "exchanged"

    @field_validator("socket")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise _rule("must be an absolute path such as /run/exchanged/control.sock")
        if len(value.encode()) > 107:
            raise _rule("is longer than a Unix socket path may be (107 bytes)")
        return value


class MetricsConfig(_Model):
    textfile: str | None = None  # written atomically after each cycle (node_exporter's textfile collector)

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/"):
            raise _rule("must be an absolute path such as /var/lib/node_exporter/textfile/exchanged.prom")
        if not value.endswith(".prom"):
            raise _rule("must end in .prom (node_exporter's textfile collector reads only those)")
        if not Path(value).parent.is_dir():
            raise _rule(f"the directory {Path(value).parent} does not exist")
        return value


class LoggingConfig(_Model):
    format: Literal["journal", "json", "console"] = "journal"
    level: Literal["debug", "info", "warning", "error"] = "info"


class UsersFromPsaConfig(_Model):
    """``users_from_psa``: make every active PSA resource whose email is a mailbox a user."""

    enabled: Literal["all_active", "none"] = "none"
    exclude: tuple[str, ...] = ()  # PSA resource ids or email addresses left out


class Config(_Model):
    enabled: SBool = True
    profile_name: str = Field(min_length=1)
    server: ServerConfig
    sync_interval_minutes: SInt = Field(ge=10)
    credentials: CredentialsConfig
    notifications: NotificationsConfig = NotificationsConfig()
    sync: SyncConfig = SyncConfig()
    users: tuple[UserConfig, ...] = ()
    users_from_psa: UsersFromPsaConfig = UsersFromPsaConfig()
    psa: PsaConfig = SqlPsaConfig()
    state: StateConfig = StateConfig()
    control: ControlConfig = ControlConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()

    _warnings: tuple[str, ...] = PrivateAttr(default=())
    _source_path: str = PrivateAttr(default="")

    _sections_none = field_validator(
        "notifications", "sync", "state", "control", "logging", "metrics", "users_from_psa", mode="before"
    )(_none_is_empty)

    @field_validator("psa", mode="before")
    @classmethod
    def _psa_default_connector(cls, value: Any) -> Any:
        # the embedded SQL connector is the default, as in the SPEC
        value = _none_is_empty(value)
        if isinstance(value, dict) and "connector" not in value:
            return {"connector": "sql", **value}
        return value

    @field_validator("users", mode="before")
    @classmethod
    def _users_none(cls, value: Any) -> Any:
        return () if value is None else value

    @property
    def warnings(self) -> tuple[str, ...]:
        return self._warnings

    @property
    def source_path(self) -> str:
        return self._source_path

    def effective_sync(self, user: UserConfig) -> SyncConfig:
        """The global ``sync`` section narrowed by ``user.settings``."""
        overrides = {k: v for k, v in user.settings.model_dump().items()
                     if v is not None and k != "reminder_minutes"}
        own = user.settings.reminder_minutes
        if own is not None:
            overrides["reminder_minutes"] = self.sync.reminder_minutes.model_copy(
                update={k: getattr(own, k) for k in own.model_fields_set})
        return self.sync.model_copy(update=overrides)

    def enabled_users(self) -> tuple[UserConfig, ...]:
        """Users to sync; none at all while the integration is switched off (``enabled: false``)."""
        if not self.enabled:
            return ()
        return tuple(u for u in self.users if u.enabled)

    def user(self, mailbox: str) -> UserConfig | None:
        wanted = mailbox.lower()
        return next((u for u in self.users if u.mailbox == wanted), None)


# --- public helpers -----------------------------------------------------------------------------


def server_identity(cfg: Config) -> str:
    """What the sync states and item ids belong to; a change means every user resyncs fully
    (mappings kept: items are adopted by their PSA key). Graph's delta links belong to the Graph
    endpoint and tenant, so switching between EWS and Graph is such a change."""
    if cfg.server.use_ms_graph:
        graph = ["graph", cfg.server.graph_url.lower(), (cfg.credentials.tenant_id or "").lower()]
        return json.dumps(graph, separators=(",", ":"))
    parts = [
        cfg.server.address.lower(),
        cfg.server.virtual_directory.strip("/").lower(),
        cfg.server.version or "",
        (cfg.credentials.domain or "").lower(),
    ]
    return json.dumps(parts, separators=(",", ":"))


def ews_url(cfg: Config) -> str:
    """The EWS endpoint: https unless ``server.allow_plaintext`` (then http) is set."""
    scheme = "http" if cfg.server.allow_plaintext else "https"
    default_port = 80 if scheme == "http" else 443
    port = "" if cfg.server.port == default_port else f":{cfg.server.port}"
    vdir = cfg.server.virtual_directory.strip("/")
    if not vdir:
        path = "EWS/Exchange.asmx"
    elif vdir.lower().endswith(".asmx"):
        path = vdir
    else:  # a directory, as the vendor's field name says
        path = f"{vdir}/Exchange.asmx"
    return f"{scheme}://{cfg.server.address}{port}/{path}"


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]  # user entry or its effective sync settings differ
    newly_enabled: frozenset[str]  # enabled now, not enabled (or absent) before
    resync_all: bool  # server identity changed: every user resyncs fully

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.newly_enabled or self.resync_all)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    old_users = {u.mailbox: u for u in old.users}
    new_users = {u.mailbox: u for u in new.users}
    changed = {
        m for m in old_users.keys() & new_users.keys()
        if old_users[m] != new_users[m]
        or old.effective_sync(old_users[m]) != new.effective_sync(new_users[m])
    }
    old_enabled = {u.mailbox for u in old.enabled_users()}
    new_enabled = {u.mailbox for u in new.enabled_users()}
    return ConfigDiff(
        added=frozenset(new_users.keys() - old_users.keys()),
        removed=frozenset(old_users.keys() - new_users.keys()),
        changed=frozenset(changed),
        newly_enabled=frozenset(new_enabled - old_enabled),
        resync_all=server_identity(old) != server_identity(new),
    )


# --- YAML with lines ----------------------------------------------------------------------------

PathT = tuple[str | int, ...]


def render_path(path: PathT) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _LineMap:
    """Key path -> 1-based line of the key (mappings) or item (sequences)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.lines: dict[PathT, int] = {}
        self.duplicates: list[tuple[PathT, int, int]] = []  # path, line, first line
        self._seen: set[int] = set()
        if root is not None:
            self.lines[()] = root.start_mark.line + 1
            self._walk(root, ())

    def _walk(self, node: yaml.Node, path: PathT) -> None:
        # each node is walked once: an alias (even a recursive one, or a "billion laughs" of
        # aliases of aliases) keeps the line of the place that refers to it, not of its insides
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            firsts: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                child = (*path, key)
                if key in firsts:
                    self.duplicates.append((child, line, firsts[key]))
                else:
                    firsts[key] = line
                    self.lines[child] = line
                self._walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.lines[child] = item.start_mark.line + 1
                self._walk(item, child)

    def line(self, path: PathT) -> int | None:
        """The line of ``path``, or of its nearest ancestor that is written in the file."""
        for cut in range(len(path), -1, -1):
            found = self.lines.get(path[:cut])
            if found is not None:
                return found
        return None


def _parse_yaml(text: str) -> tuple[Any, _LineMap]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, _LineMap(node)


def _yaml_problem(exc: yaml.YAMLError) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    message = f"not valid YAML: {what}" + (f" ({context})" if context else "")
    return ConfigProblem("", line, message)


# --- pydantic errors -> problems ----------------------------------------------------------------

_SECRET_KEYS = frozenset({"password", "secret", "integration_code"})


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated to the interesting type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1:
                annotation = args[0]
            else:
                return annotation
        else:
            return annotation


def _model_at(loc: tuple[Any, ...]) -> tuple[PathT, type[BaseModel] | None]:
    """Our path for a pydantic ``loc`` (union tags dropped) and the model class found there."""
    current: Any = Config
    path: list[str | int] = []
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if origin in (Union, types.UnionType):
            members = {
                typing.get_args(m.model_fields["connector"].annotation)[0]: m
                for m in typing.get_args(current)
                if isinstance(m, type) and issubclass(m, BaseModel) and "connector" in m.model_fields
            }
            if part in members:  # the discriminator's tag, not a key of the file
                current = members[part]
                continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            part = str(part)  # a mapping key, even when YAML made it a number
            path.append(part)
            field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
            current = field.annotation if field is not None else None
        elif origin in (tuple, list) and isinstance(part, int):
            path.append(part)
            current = typing.get_args(current)[0]
        else:
            path.append(part)
            current = None
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return tuple(path), model


def _keys_of(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


_SECTIONS: dict[str, type[BaseModel]] = {}


def _section_of(word: str, here: PathT) -> str | None:
    """The section a misplaced key belongs to (``use_ms_graph`` under credentials -> server)."""
    if not _SECTIONS:
        _SECTIONS.update({
            "(top level)": Config, "server": ServerConfig, "credentials": CredentialsConfig,
            "notifications": NotificationsConfig, "notifications.smtp": SmtpConfig, "sync": SyncConfig,
            "users[]": UserConfig, "users[].settings": UserSettingsConfig, "psa": AutotaskPsaConfig,
            "state": StateConfig, "control": ControlConfig, "logging": LoggingConfig,
            "metrics": MetricsConfig,
        })
    for name, model in _SECTIONS.items():
        if word in _keys_of(model) and name.replace("[]", "") != render_path(here):
            return name
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(choices)}"


def _message(err: Any, path: PathT) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    secret = any(isinstance(p, str) and p in _SECRET_KEYS for p in path)
    got = "" if secret else _shown(err.get("input"))
    if kind == "missing":
        return "required key is missing"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
        bound = next(iter(ctx.values()))
        return f"must be {sign[kind]} {bound}{got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx.get("tag")
        return "must be 'sql' or 'autotask'" + (_shown(tag) if tag is not None else "")
    if kind == "invalid_key":
        return "keys must be text"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys{got}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind == "string_type":
        return f"must be text{got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "recursion_loop":
        return "refers to itself (a recursive YAML alias)"
    return str(err.get("msg", kind))


def _shown(value: Any) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return f" (got {text[:60]})"
    return f" (got a {type(value).__name__})"


def _problems_from(exc: ValidationError, lines: _LineMap) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        ctx = err.get("ctx") or {}
        if err["type"] == "extra_forbidden":
            path, _ = _model_at(loc)
            _, parent = _model_at(loc[:-1])
            word = str(loc[-1])
            home = _section_of(word, path[:-1])
            if home:
                message = f"unknown key {word!r} here; it belongs under {home}"
            else:
                message = f"unknown key {word!r}{_did_you_mean(word, _keys_of(parent))}"
        else:
            if err["type"] == "exchanged_rule" and ctx.get("key"):
                loc = (*loc, ctx["key"])
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc = (*loc, "connector")
            path, _ = _model_at(loc)
            message = str(ctx["msg"]) if err["type"] == "exchanged_rule" else _message(err, path)
        problems.append(ConfigProblem(render_path(path), lines.line(path), message))
    return problems


# --- rules across sections ----------------------------------------------------------------------


class _Raw:
    """Defensive access to the raw document: a value only when it has the expected type."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, path: PathT, kind: type | tuple[type, ...], default: Any = None) -> Any:
        node: Any = self.data
        for part in path:
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    return default
            elif not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        if kind is int and isinstance(node, bool):
            return default
        return node if isinstance(node, kind) else default

    def has(self, path: PathT) -> bool:
        return self.get(path, object, _MISSING) is not _MISSING


_MISSING = object()


def _default(model: type[BaseModel], key: str) -> Any:
    return model.model_fields[key].default


def _cross_rules(raw: _Raw, lines: _LineMap) -> tuple[list[ConfigProblem], list[str]]:
    problems: list[ConfigProblem] = []
    warnings: list[str] = []

    def problem(path: PathT, message: str) -> None:
        problems.append(ConfigProblem(render_path(path), lines.line(path), message))

    def warn(path: PathT, message: str) -> None:
        line = lines.line(path)
        where = f"line {line}: " if line else ""
        warnings.append(f"{where}{render_path(path)}: {message}")

    graph = raw.get(("server", "use_ms_graph"), bool, False)
    basic = raw.get(("credentials", "local_setup_basic_auth"), bool,
                    _default(CredentialsConfig, "local_setup_basic_auth"))
    if graph and basic:
        problem(("server", "use_ms_graph"),
                "cannot be used together with credentials.local_setup_basic_auth: true "
                "(the vendor hides MS Graph when local basic auth is chosen); switch one off")
    if graph and not basic:
        for key in ("tenant_id", "client_id"):
            if not raw.get(("credentials", key), str):
                problem(("credentials", key),
                        f"is required with server.use_ms_graph: true: the app registration's "
                        f"{'Directory (tenant) ID' if key == 'tenant_id' else 'Application (client) ID'} "
                        "(see docs/GRAPH.md)")
    if not graph and basic is False:
        problem(("credentials", "local_setup_basic_auth"),
                "false means Exchange Online, and EWS in Exchange Online is blocked by Microsoft "
                "since 1 October 2026: set server.use_ms_graph: true with credentials.tenant_id, "
                "client_id and certificate_file (docs/GRAPH.md); for an on-premises Exchange set "
                "local_setup_basic_auth: true")
    if not graph:
        for key in ("tenant_id", "client_id", "client_secret_file", "certificate_file"):
            if raw.has(("credentials", key)):
                warn(("credentials", key), "ignored: only used with server.use_ms_graph: true")
    elif any(raw.has(("credentials", k)) for k in ("username", "password", "password_file")):
        warn(("credentials",), "username and password are ignored with server.use_ms_graph: true "
             "(the app registration's credentials are used)")
    if raw.get(("server", "hosted_by_third_party"), bool, False):
        warn(("server", "hosted_by_third_party"),
             "changes nothing in how exchanged connects: it talks EWS to server.address (or Graph "
             "with use_ms_graph) exactly as configured. A hoster must allow EWS and, with "
             "credentials.use_for_all_users: true, grant the sync account impersonation; if it "
             "does not, set use_for_all_users: false (each user logs in as itself)")
    if graph and raw.get(("sync", "public_folder_all_contacts"), bool, False):
        problem(("sync", "public_folder_all_contacts"),
                "needs EWS: it cannot be used with server.use_ms_graph: true")
    if raw.get(("sync", "public_folder_all_contacts"), bool, False):
        warn(("sync", "public_folder_all_contacts"),
             "every Exchange user can read (and download) all PSA contacts in that public folder")
    if raw.get(("server", "allow_plaintext"), bool, False):
        warn(("server", "allow_plaintext"),
             "EWS over plain http: the password crosses the network unencrypted")
    if raw.get(("enabled",), bool, True) is False:
        warn(("enabled",), "the integration is switched off: no user is synced")
    if raw.has(("notifications", "smtp", "username")) and raw.get(
            ("notifications", "smtp", "security"), str, "none") == "none":
        warn(("notifications", "smtp", "username"),
             "SMTP login with security: none: the password crosses the network unencrypted "
             "(use starttls or tls)")
    if raw.has(("credentials", "password")) and raw.get(("credentials", "password"), str) is not None:
        warn(("credentials", "password"),
             "the password is in the config file; prefer password_file (chmod 600) or LoadCredential")
    from exchanged.db import url_has_secret

    for section in ("state", "psa"):
        url = raw.get((section, "url"), str) if raw.has((section, "url")) else None
        if isinstance(url, str) and url_has_secret(url):
            warn((section, "url"),
                 "the database password is in the config file, which every exchangectl user "
                 "(control.group) may read: drop it from the URL and give it to libpq instead "
                 "(~/.pgpass of the daemon's user, or PGPASSFILE / PGSERVICEFILE, e.g. a systemd "
                 "credential: docs/CONFIG.md \"Database passwords\")")
    group = raw.get(("control", "group"), str) if raw.has(("control", "group")) \
        else _default(ControlConfig, "group")
    if isinstance(group, str) and group:
        try:
            grp.getgrnam(group)
        except KeyError:
            warn(("control", "group"), f"group {group!r} does not exist on this host; "
                 "only root and the daemon's user can use exchangectl until it does")

    import_mode = raw.get(("sync", "import_appointments"), str, _default(SyncConfig, "import_appointments"))
    if import_mode == "none" and raw.get(("sync", "import_free_time"), bool) is True:
        warn(("sync", "import_free_time"), "ignored because sync.import_appointments is none")

    per_user_creds = raw.get(("credentials", "use_for_all_users"), bool, True) is False
    if per_user_creds and raw.get(("users_from_psa", "enabled"), str, "none") == "all_active":
        problem(("users_from_psa", "enabled"),
                "all_active needs credentials.use_for_all_users: true (a user from the PSA has no "
                "password of its own): grant the sync account impersonation, or list the users")
    users = raw.get(("users",), list, [])
    seen: dict[str, int] = {}
    for index, entry in enumerate(users):
        if not isinstance(entry, dict):
            continue
        mailbox = entry.get("mailbox")
        if isinstance(mailbox, str):
            key = mailbox.strip().lower()
            if key in seen:
                problem(("users", index, "mailbox"),
                        f"{key} is listed twice (first as users[{seen[key]}]); list each mailbox once")
            else:
                seen[key] = index
        has_own_password = "password" in entry or "password_file" in entry
        if per_user_creds and not has_own_password and entry.get("enabled", True) is not False:
            problem(("users", index),
                    "credentials.use_for_all_users is false: give this user a password_file or password")
        if not per_user_creds and has_own_password:
            warn(("users", index), "own password ignored: credentials.use_for_all_users is true "
                 "(the sync account impersonates every user)")
        settings = entry.get("settings")
        if isinstance(settings, dict):
            _narrowing(raw, index, settings, problem, warn, import_mode)
    return problems, warnings


def _narrowing(
    raw: _Raw,
    index: int,
    settings: dict[str, Any],
    problem: Callable[[PathT, str], None],
    warn: Callable[[PathT, str], None],
    global_import: Any,
) -> None:
    """Per-user settings may switch things off, never on (the vendor greys those boxes out)."""
    base = ("users", index, "settings")
    for key in _NARROWABLE_BOOLS:
        wanted = settings.get(key)
        globally = raw.get(("sync", key), bool, _default(SyncConfig, key))
        if wanted is True and globally is False:
            problem((*base, key), f"cannot enable what sync.{key} switches off globally "
                    f"(sync.{key} is false); a user's settings may only narrow")
    wanted_mode = settings.get("import_appointments")
    if isinstance(wanted_mode, str) and wanted_mode in IMPORT_LADDER and global_import in IMPORT_LADDER \
            and IMPORT_LADDER[wanted_mode] > IMPORT_LADDER[global_import]:
        problem((*base, "import_appointments"),
                f"{wanted_mode} imports more than sync.import_appointments ({global_import}); "
                "a user's settings may only narrow (all_details > no_details > none)")
    effective_mode = wanted_mode if isinstance(wanted_mode, str) else global_import
    if effective_mode == "none" and settings.get("import_free_time") is True:
        warn((*base, "import_free_time"), "ignored because import_appointments is none for this user")


# --- loading ------------------------------------------------------------------------------------


def _invalid(path: str, message: str, line: int | None = None) -> ConfigInvalid:
    return ConfigInvalid([ConfigProblem("", line, message)], path)


def load_config(path: str | os.PathLike[str], *, credentials_dir: str | None = None) -> Config:
    """Read and validate the file; raises ``ConfigInvalid`` listing every problem.

    ``credentials_dir`` overrides ``$CREDENTIALS_DIRECTORY`` (tests).
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _invalid(name, "file not found (give another with --config or EXCHANGED_CONFIG)") from None
    except IsADirectoryError:
        raise _invalid(name, "is a directory, not a config file") from None
    except PermissionError:
        raise _invalid(name, "permission denied: the daemon's user cannot read it") from None
    except UnicodeDecodeError:
        raise _invalid(name, "is not UTF-8 text") from None
    except OSError as exc:
        raise _invalid(name, f"cannot be read: {exc.strerror}") from None
    return parse_config(text, name, credentials_dir=credentials_dir)


def parse_config(text: str, name: str = "<config>", *, credentials_dir: str | None = None) -> Config:
    """Validate YAML ``text`` (named ``name`` in messages; relative files are relative to it)."""
    try:
        data, lines = _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigInvalid([_yaml_problem(exc)], name) from None
    except RecursionError:
        raise _invalid(name, "not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructor can fail on odd scalars (e.g. 2001-02-30) outside YAMLError
        raise _invalid(name, f"not valid YAML: a value cannot be read ({exc})") from None
    if data is None:
        raise _invalid(name, "is empty; expected a mapping of keys (see etc/exchanged.example.yaml)")
    if not isinstance(data, dict):
        raise _invalid(name, f"must be a mapping of keys at the top, not a {type(data).__name__}", 1)
    problems = [
        ConfigProblem(render_path(p), line, f"key written twice (first on line {first}); keep one")
        for p, line, first in lines.duplicates
    ]
    context: dict[str, Any] = {"base_dir": str(Path(name).resolve().parent)}
    if credentials_dir is not None:
        context["credentials_dir"] = credentials_dir
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(data, context=context)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, lines))
    except RecursionError:
        problems.append(ConfigProblem("", None, "nesting too deep (a recursive YAML alias?)"))
    cross, warnings = _cross_rules(_Raw(data), lines)
    problems.extend(cross)
    if problems or cfg is None:
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigInvalid(problems, name)
    cfg._warnings = tuple(warnings)
    cfg._source_path = name
    return cfg


# --- problems as lines ------------------------------------------------------------------------


def render_problem(source: str, problem: ConfigProblem) -> str:
    where = f"{source}:{problem.line}" if problem.line else source
    key = problem.path or "<top>"
    return f"{where}: {key}: {problem.message}"


def iter_problems(exc: ConfigInvalid) -> Iterator[str]:
    """Each problem as one ``path:line: key: message`` line (for the daemon's reload log/status)."""
    for problem in exc.problems:
        yield render_problem(exc.path, problem)


__all__ = [
    "AutotaskPsaConfig",
    "Config",
    "ConfigDiff",
    "ControlConfig",
    "CredentialsConfig",
    "LoggingConfig",
    "NotificationsConfig",
    "ServerConfig",
    "SmtpConfig",
    "SqlPsaConfig",
    "StateConfig",
    "SyncConfig",
    "UserConfig",
    "UserSettingsConfig",
    "diff_configs",
    "ews_url",
    "iter_problems",
    "load_config",
    "parse_config",
    "render_problem",
    "server_identity",
]
