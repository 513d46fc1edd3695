"""What the Exchange adapter needs from the configuration, as one frozen object.

The daemon's config objects (``exchanged.config``) are read here by attribute name only (the
YAML key names of SPEC section 3), so that the adapter does not depend on how the config module
builds them and tests can hand in a plain ``ExchangeSettings``.

Per-user credentials (``credentials.use_for_all_users: false``): each ``users[]`` entry needs its
own secret. The adapter reads ``users[].password_file`` (or ``users[].password``) and logs in as
``users[].username`` (default: the mailbox address). A user without one gets a clear ``AuthFailed``
naming the missing key, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exchanged import errors

DEFAULT_VDIR = "EWS/Exchange.asmx"
DEFAULT_PUBLIC_FOLDER = "PSA Contacts"


@dataclass(frozen=True, slots=True)
class UserCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ExchangeSettings:
    address: str
    port: int = 443
    virtual_directory: str = ""
    version: str | None = None  # "Exchange2016" etc.; None: detected
    ca_bundle: str | None = None
    allow_plaintext: bool = False
    auth_type: str = "basic"  # basic | ntlm
    username: str = ""
    password: str = field(default="", repr=False)
    domain: str | None = None
    use_for_all_users: bool = True
    # per-user credentials (use_for_all_users false): mailbox (lower case) -> credentials
    user_credentials: Mapping[str, UserCredentials] = field(default_factory=dict, repr=False)
    # mailboxes the config lists as enabled (check-config --connect checks each)
    enabled_mailboxes: tuple[str, ...] = ()
    category: str = ""
    max_connections: int = 4
    public_folder_name: str = DEFAULT_PUBLIC_FOLDER
    # the mailbox whose session reaches the public folders (default: first enabled user)
    public_folder_mailbox: str | None = None
    # seconds: for the connection (TCP + TLS handshake), and for each answer of the server
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # the whole answer of one request, however slowly it comes; and its largest size
    request_deadline_s: float = 300.0
    max_answer_mb: int = 64

    @property
    def scheme(self) -> str:
        return "http" if self.allow_plaintext else "https"

    @property
    def service_endpoint(self) -> str:
        """``https://address[:port]/<virtual_directory or EWS/Exchange.asmx>``."""
        vdir = (self.virtual_directory or DEFAULT_VDIR).strip("/")
        if not vdir.lower().endswith(".asmx"):  # a directory, as the vendor's field name says
            vdir = f"{vdir}/Exchange.asmx"
        default_port = 80 if self.scheme == "http" else 443
        host = self.address if self.port in (None, default_port) else f"{self.address}:{self.port}"
        return f"{self.scheme}://{host}/{vdir}"

    @property
    def login_name(self) -> str:
        """The user name as the auth type wants it: NTLM needs DOMAIN\\user."""
        return login_name(self.username, self.domain, self.auth_type)


def login_name(username: str, domain: str | None, auth_type: str) -> str:
    if auth_type == "ntlm" and "\\" not in username and "@" not in username and domain:
        return f"{domain}\\{username}"
    return username


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _secret(value: Any) -> str | None:
    """A str, or pydantic's SecretStr, or None."""
    if value is None:
        return None
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if callable(getter) else value)


def _read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise errors.AuthFailed(
            f"cannot read {what} {path}: {exc.strerror or exc}",
            hint=f"check that {path} exists and is readable by the daemon's user") from None


def _resolve_password(creds: Any, what: str) -> str:
    """The password from the config object: a resolved value, ``password``, or ``password_file``."""
    for name in ("resolved_password", "password"):
        value = _secret(_get(creds, name))
        if value:
            return value
    path = _get(creds, "password_file")
    if path:
        return _read_secret_file(str(path), f"the password file of {what}")
    # systemd LoadCredential=: $CREDENTIALS_DIRECTORY/sync-password
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and os.path.exists(os.path.join(cred_dir, "sync-password")):
        return _read_secret_file(os.path.join(cred_dir, "sync-password"), "the systemd credential")
    return ""


def _user_is_enabled(user: Any) -> bool:
    return bool(_get(user, "enabled", True))


def settings_from_config(cfg: Any) -> ExchangeSettings:
    """Build the adapter's settings from the daemon's config object (attribute names of SPEC 3)."""
    server = _get(cfg, "server")
    creds = _get(cfg, "credentials")
    sync = _get(cfg, "sync")
    users = list(_get(cfg, "users", []) or [])
    use_for_all = bool(_get(creds, "use_for_all_users", True))
    enabled_users = getattr(cfg, "enabled_users", None)
    chosen = list(enabled_users()) if callable(enabled_users) else [u for u in users if _user_is_enabled(u)]
    enabled = tuple(str(_get(u, "mailbox")) for u in chosen if _get(u, "mailbox"))
    auth_type = str(_get(creds, "auth_type", "basic") or "basic").lower()
    version = _get(server, "version")
    user_creds: dict[str, UserCredentials] = {}
    if not use_for_all:
        for u in users:
            mailbox = str(_get(u, "mailbox") or "")
            if not mailbox:
                continue
            pw = _secret(_get(u, "password"))
            pw_file = _get(u, "password_file")
            if not pw and pw_file:
                try:
                    pw = _read_secret_file(str(pw_file), f"the password file of {mailbox}")
                except errors.AuthFailed:
                    pw = None  # reported when the mailbox is used, naming the mailbox
            if pw:
                name = str(_get(u, "username") or mailbox)
                user_creds[mailbox.lower()] = UserCredentials(
                    login_name(name, _get(creds, "domain"), auth_type), pw)
    max_conn = _get(sync, "max_concurrent_users", None)
    return ExchangeSettings(
        address=str(_get(server, "address", "")),
        port=int(_get(server, "port", 443) or 443),
        virtual_directory=str(_get(server, "virtual_directory", "") or ""),
        version=str(version) if version else None,
        ca_bundle=str(_get(server, "ca_bundle")) if _get(server, "ca_bundle") else None,
        allow_plaintext=bool(_get(server, "allow_plaintext", False)),
        auth_type=auth_type,
        username=str(_get(creds, "username", "") or ""),
        password=_resolve_password(creds, "the sync account"),
        domain=_get(creds, "domain") or None,
        use_for_all_users=use_for_all,
        user_credentials=user_creds,
        enabled_mailboxes=enabled,
        category=str(_get(sync, "category", "") or ""),
        max_connections=max(1, min(int(max_conn), 27)) if max_conn else 4,
        public_folder_name=str(_get(sync, "public_folder_name", None) or DEFAULT_PUBLIC_FOLDER),
        public_folder_mailbox=enabled[0] if enabled else None,
        connect_timeout_s=float(_get(server, "connect_timeout_s", None) or 10.0),
        read_timeout_s=float(_get(server, "read_timeout_s", None) or 60.0),
        request_deadline_s=float(_get(server, "request_deadline_s", None) or 300.0),
        max_answer_mb=int(_get(server, "max_answer_mb", None) or 64),
    )
