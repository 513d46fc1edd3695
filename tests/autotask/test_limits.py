"""The Autotask client's total deadline and answer size cap (issue #14), against a tiny local
HTTP server that trickles, stalls or inflates its answers."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from exchanged import errors
from exchanged.exchange.limits import Limits
from exchanged.psa.autotask.api import AutotaskApi, Credentials

HANG_GUARD_S = 30  # without the fix these requests never end (a trickle) or read everything


class _Hostile(http.server.ThreadingHTTPServer):
    daemon_threads = True
    mode = "ok"
    sent = 0  # body bytes written by the inflating handler


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Hostile

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        srv = self.server
        try:
            if srv.mode == "trickle_headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.wfile.flush()
                for _ in range(200):
                    self.wfile.write(b"X")  # one byte of a header line every 0.2 s
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            if srv.mode == "trickle_body":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
                return
            if srv.mode == "declared_huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(65 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b'{"url": "')
                self.wfile.flush()
                time.sleep(HANG_GUARD_S)
                return
            if srv.mode == "inflate":  # no Content-Length: 64 KB chunks until the client goes
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b" " * 65536
                for _ in range(2000):  # 125 MB at most
                    self.wfile.write(chunk)
                    srv.sent += len(chunk)
                return
            body = b'{"externalRequestThreshold": 10000, "currentTimeframeRequestCount": 1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client hung up: what the limits are for

    do_GET = _answer
    do_POST = _answer


@pytest.fixture
def hostile() -> Iterator[_Hostile]:
    srv = _Hostile(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _api(srv: _Hostile, **kw: Any) -> AutotaskApi:
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    api = AutotaskApi(
        Credentials("api@example.com", "s3cret", "CODE"),
        zone_lookup_url=base,
        retry_base_s=0.01,
        retry_cap_s=0.02,
        **kw,
    )
    api.zone_url = base  # the zone is this server (the zone lookup insists on https)
    return api


@pytest.mark.parametrize("mode", ["trickle_headers", "trickle_body"])
async def test_a_trickling_answer_ends_at_the_request_deadline(hostile: _Hostile, mode: str) -> None:
    hostile.mode = mode
    api = _api(hostile, request_deadline_s=1.0, timeout_s=60.0)
    with trio.fail_after(HANG_GUARD_S), pytest.raises(errors.AutotaskUnavailable) as err:
        await api.threshold()
    shown = errors.present(err.value)
    text = f"{shown.reason} {shown.message} {shown.hint}"
    assert "ThresholdInformation" in text
    assert "psa.request_deadline_s" in text and shown.reason == "psa_unreachable"
    assert "no complete answer within 1 s" in text
    assert api.backoffs == 0  # not retried: the same server would trickle again


async def test_a_declared_answer_over_the_cap_is_refused_before_reading(hostile: _Hostile) -> None:
    hostile.mode = "declared_huge"
    api = _api(hostile, max_answer_mb=64)
    with trio.fail_after(HANG_GUARD_S), pytest.raises(errors.AutotaskUnavailable) as err:
        await api.request("GET", "V1.0/ThresholdInformation", what="ThresholdInformation")
    shown = errors.present(err.value)
    text = f"{shown.reason} {shown.message} {shown.hint}"
    assert "ThresholdInformation" in text and "psa.max_answer_mb" in text
    assert "declared 65 MB" in text


async def test_an_undeclared_answer_stops_past_the_cap(hostile: _Hostile) -> None:
    hostile.mode = "inflate"
    api = _api(hostile, max_answer_mb=1)
    with trio.fail_after(HANG_GUARD_S), pytest.raises(errors.AutotaskUnavailable) as err:
        await api.query("Tickets", [{"op": "exist", "field": "id"}], ["title"])
    shown = errors.present(err.value)
    text = f"{shown.reason} {shown.message} {shown.hint}"
    assert "query Tickets" in text and "psa.max_answer_mb" in text
    assert "larger than 1 MB" in text
    assert api.backoffs == 0
    await trio.sleep(0.5)
    assert hostile.sent < 20 * 1024 * 1024  # the client hung up soon after the cap, not at 125 MB


async def test_an_ordinary_answer_is_read_whole(hostile: _Hostile) -> None:
    api = _api(hostile, request_deadline_s=5.0, max_answer_mb=1)
    info = await api.threshold()
    assert info["limit"] == 10000 and info["used"] == 1


def test_the_config_keys_reach_the_client(tmp_path: Any) -> None:
    from exchanged.psa.autotask.connector import open_autotask

    from .conftest import PsaCfg

    cfg = PsaCfg("api@example.com", "s3cret", "CODE", "https://zone.example/")
    object.__setattr__(cfg, "request_deadline_s", 7.0)
    object.__setattr__(cfg, "max_answer_mb", 3)
    api = open_autotask(cfg).api
    assert api.limits.deadline_s == 7.0
    assert api.limits.max_bytes == 3 * 1024 * 1024


async def test_the_deadline_holds_over_tls_against_the_autotask_test_server(server: Any) -> None:
    from .conftest import make_connector

    api = make_connector(server).api
    api.limits = Limits(deadline_s=1.0, max_bytes=api.limits.max_bytes)
    await api.zone()  # resolved before the server slows down
    server.faults.latency_ms = 2500  # longer than the deadline, shorter than the per-read timeout
    try:
        with trio.fail_after(HANG_GUARD_S), pytest.raises(errors.AutotaskUnavailable) as err:
            await api.threshold()
    finally:
        server.faults.latency_ms = 0
    shown = errors.present(err.value)
    assert shown.reason == "psa_unreachable"
    assert "ThresholdInformation" in shown.message and "https://" in shown.message
    assert "no complete answer within 1 s (psa.request_deadline_s" in shown.message
