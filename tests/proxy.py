"""A hostile TLS proxy between exchangelib (or the daemon) and the EWS test server.

It speaks TLS with the test server's own certificate (so a client that trusts the server's
``ca.pem`` trusts the proxy) and forwards each HTTP/1.1 request to the server over a second TLS
connection. Answers pass unchanged unless a rule for the request's operation (the SOAP body's
element: ``GetItem``, ``SyncFolderItems``, ...) says otherwise:

* ``truncate``: the answer cut after the ``after``-th occurrence of ``marker`` (default: after
  the first ``</m:GetItemResponseMessage>``), with a Content-Length that matches the cut body and
  the connection kept: a lying server (or middle box), not a dropped connection;
* ``corrupt``: ``find`` replaced by ``replace`` in the answer (malformed XML), framing consistent;
* ``cut``: headers with the full length, part of the body, then the connection closes;
* ``trickle``: the whole answer, one chunk of ``chunk`` bytes every ``interval`` seconds
  (``head=True``: the status line and headers too);
* ``stall``: the request is read and never answered (until the proxy stops);
* ``inflate``: ``size`` bytes of XML comment streamed inside the envelope (never held in memory);
* ``status``: an HTTP ``code`` with ``headers`` (e.g. 429 with Retry-After) and no SOAP body.

``rule(op, action, times=1, **options)``: the next ``times`` requests of ``op`` get it
(``times=None``: every one). ``seen`` counts requests per operation, ``applied`` the rules used.
Threads only (no trio), so the same proxy serves an in-process adapter and a daemon process.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_OP_RE = re.compile(rb"<(?:\w+:)?Body[^>]*>\s*<(?:\w+:)?(\w+)")


@dataclass
class Rule:
    op: str
    action: str
    times: int | None
    options: dict[str, Any] = field(default_factory=dict)


class HostileProxy:
    def __init__(self, upstream_port: int, ca_file: str, server_context: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self._client_ctx = ssl.create_default_context(cafile=str(ca_file))
        self._server_ctx = server_context
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.seen: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    # -- control ----------------------------------------------------------------------------------

    def rule(self, op: str, action: str, times: int | None = 1, **options: Any) -> None:
        with self._lock:
            self._rules.append(Rule(op, action, times, options))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def start(self) -> HostileProxy:
        t = threading.Thread(target=self._accept, name="hostile-proxy", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> HostileProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plumbing ---------------------------------------------------------------------------------

    def _take(self, op: str) -> Rule | None:
        with self._lock:
            self.seen[op] += 1
            for r in self._rules:
                if r.op == op:
                    if r.times is not None:
                        r.times -= 1
                        if r.times <= 0:
                            self._rules.remove(r)
                    self.applied[f"{op} {r.action}"] += 1
                    return r
        return None

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self._server_ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self._lock:
            self._conns.add(conn)
        upstream: http.client.HTTPSConnection | None = None
        try:
            rfile = conn.makefile("rb")
            while not self._stop.is_set():
                request = _read_request(rfile)
                if request is None:
                    return
                method, path, headers, body = request
                match = _OP_RE.search(body)
                op = match.group(1).decode() if match else method
                rule = self._take(op)
                if rule is not None and rule.action == "stall":
                    self._stop.wait()
                    return
                if rule is not None and rule.action == "status":
                    _write_head(conn, rule.options.get("code", 429), rule.options.get("headers", {}), 0)
                    continue
                if upstream is None:
                    upstream = http.client.HTTPSConnection("localhost", self.upstream_port,
                                                           context=self._client_ctx, timeout=60)
                upstream.request(method, path, body=body, headers=headers)
                resp = upstream.getresponse()
                payload = resp.read()
                out_headers = {k: v for k, v in resp.getheaders()
                               if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                if not self._answer(conn, rule, resp.status, out_headers, payload):
                    return
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                conn.close()

    def _answer(self, conn: ssl.SSLSocket, rule: Rule | None, status: int, headers: dict[str, str],
                payload: bytes) -> bool:
        """Write the (possibly mangled) answer; False when the connection is to be closed."""
        action = rule.action if rule else None
        opts = rule.options if rule else {}
        if action == "truncate":
            marker = opts.get("marker", b"</m:GetItemResponseMessage>")
            at = -1
            for _ in range(opts.get("after", 1)):
                at = payload.find(marker, at + 1)
                assert at >= 0, f"marker {marker!r} not in the answer"
            payload = payload[:at + len(marker)]
        elif action == "corrupt":
            assert opts["find"] in payload, f"{opts['find']!r} not in the answer"
            payload = payload.replace(opts["find"], opts["replace"], 1)
        elif action == "cut":
            _write_head(conn, status, headers, len(payload))
            conn.sendall(payload[:len(payload) // 2])
            return False
        elif action == "trickle":
            chunk, interval = opts.get("chunk", 1), opts.get("interval", 1.0)
            if opts.get("head"):  # the status line and the headers trickle too
                payload = _head(status, headers, len(payload)) + payload
            else:
                _write_head(conn, status, headers, len(payload))
            for i in range(0, len(payload), chunk):
                if self._stop.wait(interval):
                    return False
                conn.sendall(payload[i:i + chunk])
            return True
        elif action == "inflate":
            size = int(opts["size"])
            at = payload.rfind(b"</s:Envelope>")
            head, tail = payload[:at] + b"<!--", b"-->" + payload[at:]
            _write_head(conn, status, headers, len(head) + size + len(tail))
            conn.sendall(head)
            block = b"x" * (1 << 16)
            sent = 0
            while sent < size:
                if self._stop.is_set():
                    return False
                piece = block[:size - sent]
                conn.sendall(piece)
                sent += len(piece)
            conn.sendall(tail)
            return True
        _write_head(conn, status, headers, len(payload))
        conn.sendall(payload)
        return True


def _read_request(rfile: Any) -> tuple[str, str, dict[str, str], bytes] | None:
    line = rfile.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = rfile.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    length = int(headers.get("Content-Length") or headers.get("content-length") or 0)
    body = rfile.read(length) if length else b""
    headers = {k: v for k, v in headers.items() if k.lower() not in ("connection", "host")}
    return method, path, headers, body


def _head(status: int, headers: dict[str, str], length: int) -> bytes:
    reason = http.client.responses.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _write_head(conn: ssl.SSLSocket, status: int, headers: dict[str, str], length: int) -> None:
    conn.sendall(_head(status, headers, length))


def proxy_for(server: Any) -> HostileProxy:
    """A started proxy in front of an ``EwsTestServer`` (caller stops it)."""
    return HostileProxy(server.port, server.ca_file, server.ssl_context).start()
