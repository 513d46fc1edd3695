"""What the EWS and Graph test servers share as HTTPS servers: one thread per connection with the
TLS handshake in that thread, start/stop in a background thread, and the `python -m` main loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

log = logging.getLogger("exchanged.testing")


class TlsThreadingServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections do their TLS handshake in their own thread, so a
    slow or failing client (e.g. one that does not trust our CA) never blocks accept()."""

    daemon_threads = True
    allow_reuse_address = True
    app: Any  # the ServedOverTls that runs this server (handlers reach it as self.server.app)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.app.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", client_address, exc)
            return
        self.app.track(tls, True)
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            self.app.track(tls, False)
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address)


class ServedOverTls:
    """Lifecycle of a test server: ``start``/``stop`` (also as a context manager), the port, and
    the open connections that ``stop`` shuts down. Subclasses set ``ssl_context``, ``_host``,
    ``_port``, ``handler_class`` and ``thread_name``, call ``_init_served()``, and may override
    ``_stopping`` and ``_stopped`` to end and close what they own."""

    ssl_context: ssl.SSLContext
    handler_class: type[BaseHTTPRequestHandler]
    thread_name = "test-server"
    _host: str
    _port: int

    def _init_served(self) -> None:
        self._httpd: TlsThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()

    def start(self) -> Self:
        httpd = TlsThreadingServer((self._host, self._port), self.handler_class)
        httpd.app = self
        self._httpd = httpd
        self._port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
        self._httpd = None
        self._stopped()

    def _stopping(self) -> None:
        """Called first by ``stop`` (end long-lived answers here)."""

    def _stopped(self) -> None:
        """Called once the server no longer serves (close stores here)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def track(self, conn: Any, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    @property
    def port(self) -> int:
        return self._port


def serve_until_signalled(server: ServedOverTls, announce: dict[str, str]) -> int:
    """`python -m` main loop: print ``announce`` as one JSON line (the server accepts connections
    by then), serve until SIGTERM or SIGINT, stop."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps(announce), flush=True)
    stop.wait()
    server.stop()
    return 0
