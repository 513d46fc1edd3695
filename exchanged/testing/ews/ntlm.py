"""Server side of NTLM, delegated to pyspnego's acceptor.

pyspnego's NTLM acceptor reads its accounts from the file named by the environment variable
NTLM_USER_FILE (lines `DOMAIN:USER:PASSWORD`), both when the context is created and when the
Authenticate message is checked. Several servers may run in one test process with different
accounts, so the variable is set only for the duration of each step, under one process-wide lock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import spnego
import spnego.exceptions

_ENV_LOCK = threading.Lock()


class NtlmError(Exception):
    pass


def write_user_file(path: Path, users: dict[str, str]) -> Path:
    """Write the account table in pyspnego's format.

    Each account logs in as `user@domain` (empty NTLM domain) or as `DOMAIN\\user`, where DOMAIN is
    the first label of the address's domain in capitals (svc@example.test -> EXAMPLE\\svc).
    """
    lines = []
    for user, password in sorted(users.items()):
        if ":" in user or ":" in password:
            raise ValueError(f"NTLM account {user!r}: ':' cannot be used in user names or passwords")
        lines.append(f":{user}:{password}")
        local, _, domain = user.partition("@")
        if domain:
            lines.append(f"{domain.split('.')[0].upper()}:{local}:{password}")
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


class _EnvSwap:
    def __init__(self, user_file: str) -> None:
        self._user_file = user_file
        self._old: str | None = None

    def __enter__(self) -> None:
        _ENV_LOCK.acquire()
        self._old = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = self._user_file

    def __exit__(self, *exc: object) -> None:
        if self._old is None:
            os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self._old
        _ENV_LOCK.release()


class ServerContext:
    """One NTLM handshake on one connection: Negotiate -> Challenge, Authenticate -> user."""

    def __init__(self, user_file: str, protocol: str = "ntlm") -> None:
        """``protocol`` "negotiate": SPNEGO-wrapped tokens too (HTTP Negotiate; NTLM only, no
        Kerberos: there is no KDC)."""
        self._user_file = user_file
        with _EnvSwap(user_file):
            self._ctx: Any = spnego.server(protocol=protocol)

    def step(self, token: bytes) -> tuple[bytes, str | None]:
        """(reply token, authenticated user or None while the handshake continues)."""
        if not token:
            raise NtlmError("empty NTLM token")
        try:
            with _EnvSwap(self._user_file):
                reply = self._ctx.step(token)
        except (spnego.exceptions.SpnegoError, ValueError, KeyError, IndexError) as exc:
            raise NtlmError(str(exc)) from exc
        if self._ctx.complete:
            return reply or b"", str(self._ctx.client_principal or "")
        return reply or b"", None
