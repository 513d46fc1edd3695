"""Bounds on every answer read from Exchange: a total deadline and a size cap (issue #14).

requests' ``timeout=(connect, read)`` (``server.connect_timeout_s`` / ``server.read_timeout_s``)
bounds each wait for bytes, not the request: a server that sends a byte every 30 s never ends a
GetItem, and one that sends 1.5 GB makes the daemon hold 1.5 GB (and lxml several times that).
``TrustStoreAdapter.send`` (``exchanged/exchange/tls.py``) streams every answer through
``read_bounded``:

* ``server.request_deadline_s``: the whole answer must have arrived this long after the request
  was sent; a timer (``Deadline``) shuts the connection's socket down at the deadline, so a
  trickle (of the headers or of the body) ends there whatever the read timeout is.
  ``RequestDeadline``: "no complete answer within N s", a lost reply (reads are
  not retried within the cycle, writes are adopted).
* ``server.max_answer_mb``: a larger answer (declared Content-Length or bytes read, after
  decompression) is dropped when it passes the cap. ``AnswerTooLarge``: an error naming the
  operation (``map_error`` adds mailbox and operation), not retried: the same request would get
  the same answer.

Limits are registered per endpoint (host:port), like the TLS trust.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests.exceptions
import urllib3.exceptions
from exchangelib.errors import TransportError

DEFAULT_DEADLINE_S = 300.0
DEFAULT_MAX_ANSWER_MB = 64
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_ANSWER_MB * 1024 * 1024


class RequestDeadline(TransportError):
    """The answer was not complete within ``server.request_deadline_s``."""

    def __init__(self, deadline_s: float, received: int) -> None:
        super().__init__(f"no complete answer within {deadline_s:g} s (server.request_deadline_s; "
                         f"{received} bytes had arrived)")
        self.deadline_s = deadline_s


class AnswerTooLarge(TransportError):
    """The answer is larger than ``server.max_answer_mb``."""

    def __init__(self, max_bytes: int, size: int | None) -> None:
        mb = max_bytes / (1024 * 1024)
        seen = f"it declared {size / (1024 * 1024):.0f} MB" if size else "it went on past the cap"
        super().__init__(f"the answer is larger than {mb:g} MB (server.max_answer_mb; {seen}); not read")
        self.max_bytes = max_bytes


_lock = threading.Lock()
_limits: dict[str, Limits] = {}


def _endpoint_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def register(service_endpoint: str, limits: Limits) -> None:
    with _lock:
        _limits[_endpoint_key(service_endpoint)] = limits


def limits_for(url: str) -> Limits:
    with _lock:
        return _limits.get(_endpoint_key(url), Limits())


def _socket_of(raw: Any) -> socket.socket | None:
    conn = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if isinstance(sock, socket.socket):
        return sock
    fp = getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None)
    sock = getattr(fp, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class _Alarms:
    """One daemon thread for every request's deadline (a heap of due times), instead of a
    ``threading.Timer`` thread per request."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def add(self, when: float, deadline: Deadline) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (when, self._seq, deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="exchanged-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)  # ended in time: nothing to do
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, deadline = self._heap[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            deadline.fire()


_alarms = _Alarms()


class Deadline:
    """A timer that, at ``started + limits.deadline_s``, shuts down the socket of the request's
    connection: whatever the request is waiting for then (the status line, headers trickling in,
    the body) ends at once. The connection is the one the pool hands out in this thread
    (``track``), or the answer's own."""

    def __init__(self, limits: Limits, started: float) -> None:
        self.limits = limits
        self.fired = threading.Event()
        self.conn: Any = None
        self.sock: socket.socket | None = None
        self.cancelled = False
        _alarms.add(started + limits.deadline_s, self)

    def fire(self) -> None:
        if self.cancelled:
            return
        self.fired.set()
        sock = self.sock or getattr(self.conn, "sock", None)
        if isinstance(sock, socket.socket):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self.cancelled = True
        self.conn = self.sock = None  # the heap keeps the entry until its time: not the connection

    def error(self, received: int = 0) -> RequestDeadline:
        return RequestDeadline(self.limits.deadline_s, received)


_local = threading.local()


def arm(deadline: Deadline | None) -> None:
    """The deadline of the request this thread sends next (None: none)."""
    _local.deadline = deadline


def track(conn: Any) -> None:
    """Called by the connection pool with the connection it hands out in this thread."""
    deadline = getattr(_local, "deadline", None)
    if deadline is not None:
        deadline.conn = conn


def read_bounded(response: Any, limits: Limits, started: float, deadline: Deadline | None = None) -> Any:
    """Read ``response`` (a requests Response sent with ``stream=True``) into ``response.content``
    within the limits; ``started`` is ``time.monotonic()`` when the request was sent; ``deadline``
    the request's own (armed before it was sent), else one is started here."""
    raw = response.raw
    own = deadline is None
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        response.close()
        if deadline is not None:
            deadline.cancel()
        raise AnswerTooLarge(limits.max_bytes, int(declared))
    if deadline is None:
        deadline = Deadline(limits, started)
    deadline.sock = _socket_of(raw) or deadline.sock
    fired = deadline.fired
    if own and started + limits.deadline_s <= time.monotonic():
        fired.set()
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in raw.stream(_CHUNK, decode_content=True):
            total += len(chunk)
            if total > limits.max_bytes:
                response.close()
                raise AnswerTooLarge(limits.max_bytes, None)
            chunks.append(chunk)
            if fired.is_set():
                break
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        if fired.is_set():
            response.close()
            raise deadline.error(total) from None
        # what requests' Response.content would have raised
        if isinstance(exc, urllib3.exceptions.ProtocolError):
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        if isinstance(exc, urllib3.exceptions.DecodeError):
            raise requests.exceptions.ContentDecodingError(exc) from exc
        raise requests.exceptions.ConnectionError(exc) from exc
    finally:
        deadline.cancel()
    if fired.is_set():
        response.close()
        raise deadline.error(total)
    response._content = b"".join(chunks)
    response._content_consumed = True
    return response
