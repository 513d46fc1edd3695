"""An SMTP sink on loopback for tests and `exchanged demo`: a real SMTP server (aiosmtpd) that keeps
every message it accepts.

    with SmtpSink() as sink:                     # plain SMTP on 127.0.0.1, a free port
        ...send to 127.0.0.1:sink.port...
        sink.wait_for(1, timeout=10)
        sink.messages[0]["Subject"]
        sink.snapshot()[0].rcpt_tos              # with the envelope: who it was delivered to

``security="starttls"`` offers (and requires) STARTTLS, ``security="tls"`` speaks TLS from the first
byte (SMTPS); both need ``tls_context`` (a server context, e.g. from a trustme CA).
``users={"name": "password"}`` offers SMTP AUTH (PLAIN/LOGIN; required, after TLS, when TLS is on);
``sink.logins`` lists the user names that logged in.

Standalone (demo): ``python -m exchanged.testing.smtp --port 8025 [--maildir DIR]`` prints one JSON
line ``{"host": ..., "port": ...}`` once it accepts connections, then one JSON line per message.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from exchanged.testing import testing_extra_missing

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
except ModuleNotFoundError as exc:
    raise testing_extra_missing(exc) from None


@dataclass(frozen=True, slots=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]  # the envelope recipients (what the server was asked to deliver to)
    message: EmailMessage


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        # SMTP carries CRLF; tests and the demo read the message as Python text
        parsed = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.sink._store(Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"


class _BoundController(Controller):
    """aiosmtpd's Controller on a socket bound beforehand: port 0 gives a free port, race-free."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)
        self._sock = sock

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpSink:
    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        security: str = "none",
        tls_context: ssl.SSLContext | None = None,
        on_message: Callable[[Received], None] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"security must be none, starttls or tls, not {security!r}")
        if security != "none" and tls_context is None:
            raise ValueError(f"security={security} needs a tls_context")
        self.host = host
        self.security = security
        self._requested_port = port
        self._tls_context = tls_context
        self._on_message = on_message
        self.users = dict(users or {})
        self.logins: list[str] = []
        self._lock = threading.Condition()
        self.received: list[Received] = []
        self._controller: _BoundController | None = None
        self.port = 0

    # --- the messages ---------------------------------------------------------------------------

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return [r.message for r in self.received]

    def snapshot(self) -> list[Received]:
        """What arrived so far, each message with its envelope (a copy, safe while more arrive)."""
        with self._lock:
            return list(self.received)

    def _store(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)
            self._lock.notify_all()
        if self._on_message is not None:
            self._on_message(item)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``n`` messages arrived; raises TimeoutError naming what did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    subjects = [str(r.message["Subject"]) for r in self.received]
                    raise TimeoutError(f"expected {n} message(s), got {len(subjects)}: {subjects}")
                self._lock.wait(left)
            return [r.message for r in self.received]

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        kwargs: dict[str, Any] = {"server_hostname": "localhost", "ready_timeout": 10.0}
        if self.security == "tls":
            kwargs["ssl_context"] = self._tls_context
        elif self.security == "starttls":
            kwargs["tls_context"] = self._tls_context
            kwargs["require_starttls"] = True
        if self.users:
            # in plain SMTP the login is offered, not required (aiosmtpd rightly warns about AUTH
            # required without TLS); with TLS it is required
            tls = self.security != "none"
            kwargs.update(auth_required=tls, auth_require_tls=tls, authenticator=self._authenticate)
        self._controller = _BoundController(_Handler(self), sock, **kwargs)
        self.port = sock.getsockname()[1]
        try:
            self._controller.start()
        except BaseException:
            sock.close()
            self._controller = None
            raise
        return self

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            name = data.login.decode("utf-8", "replace")
            if self.users.get(name) == data.password.decode("utf-8", "replace"):
                with self._lock:
                    self.logins.append(name)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()  # closes the server, its socket and its event loop
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- standalone ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exchanged.testing.smtp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025, help="0: any free port (printed)")
    parser.add_argument("--maildir", default=None, help="also write each message as DIR/NNNN.eml")
    args = parser.parse_args(argv)
    maildir = Path(args.maildir) if args.maildir else None
    if maildir is not None:
        maildir.mkdir(parents=True, exist_ok=True)
    counter = 0

    def show(item: Received) -> None:
        nonlocal counter
        counter += 1
        line: dict[str, Any] = {"from": item.mail_from, "to": list(item.rcpt_tos),
                                "subject": str(item.message["Subject"])}
        if maildir is not None:
            path = maildir / f"{counter:04d}.eml"
            path.write_bytes(item.message.as_bytes())
            line["file"] = str(path)
        print(json.dumps(line), flush=True)

    try:
        sink = SmtpSink(args.port, args.host, on_message=show).start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(json.dumps({"host": args.host, "port": sink.port}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
