"""Issue #14 for the Graph adapter: every request has a total deadline (``server.request_deadline_s``)
and an answer size cap (``server.max_answer_mb``), as EWS requests have (exchanged/exchange/limits.py).
httpx's read timeout bounds each wait for bytes, not the answer: a server trickling a byte every few
seconds, or sending a huge answer, would otherwise hold the cycle (and the memory) without bound.

Unit tests: httpx.MockTransport with a trickling/huge body on trio's autojump clock; one test against
the Graph test server over TLS with latency beyond a 1 s deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from exchanged import errors
from exchanged.exchange.account import AmbiguousWrite
from exchanged.graph import GraphAccount, GraphSettings
from exchanged.graph.client import GraphClient
from exchanged.model import FolderKind
from exchanged.testing.graph.fixtures import running_server, settings_for
from exchanged.testing.graph.server import GraphTestServer

from .fake import BASE, FakeTokens

ALICE = "alice@example.test"
MB = 1024 * 1024


def settings(**kw: object) -> GraphSettings:
    return GraphSettings(
        graph_url=BASE.removesuffix("/v1.0"),
        login_url="https://login.test",
        tenant_id="t",
        client_id="c",
        client_secret="s",
        **kw,  # type: ignore[arg-type]
    )


class Body(httpx.AsyncByteStream):
    """An answer body: ``chunks`` pieces of ``piece``, ``pause`` seconds apart, then ``tail``."""

    def __init__(self, piece: bytes, chunks: int, pause: float = 0.0, tail: bytes = b"{}") -> None:
        self.piece, self.chunks, self.pause, self.tail = piece, chunks, pause, tail
        self.sent = 0  # pieces handed out

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            if self.pause:
                await trio.sleep(self.pause)
            self.sent += 1
            yield self.piece
        yield self.tail


def client_for(
    body: Body, headers: dict[str, str] | None = None, **kw: object
) -> tuple[GraphClient, list[str]]:
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, headers=headers or {}, stream=body)

    client = GraphClient(settings(**kw), FakeTokens(), transport=httpx.MockTransport(handle))  # type: ignore[arg-type]
    return client, seen


async def test_a_trickled_read_ends_at_the_deadline_as_a_timeout_not_retried(
    autojump_clock: trio.abc.Clock,
) -> None:
    # a byte every 5 s for 1000 s: httpx's read timeout (60 s) never trips
    client, seen = client_for(Body(b" ", 200, pause=5.0), request_deadline_s=30.0)
    with pytest.raises(errors.ExchangeUnavailable) as caught:
        await client.call(ALICE, "read events", "GET", f"/users/{ALICE}/events")
    await client.aclose()
    err = caught.value
    assert err.cause == "timeout" and not err.ambiguous
    assert not isinstance(err, errors.Throttled)
    text = str(err)
    assert ALICE in text and "read events" in text
    assert "no complete answer within 30 s (server.request_deadline_s" in text
    assert seen == [f"GET /v1.0/users/{ALICE}/events"]  # not retried within the cycle


async def test_a_trickled_write_is_an_ambiguous_write(autojump_clock: trio.abc.Clock) -> None:
    client, seen = client_for(Body(b" ", 200, pause=5.0), request_deadline_s=30.0)
    with pytest.raises(AmbiguousWrite) as caught:
        await client.call(ALICE, "create appointments", "POST", "/$batch", body={"requests": []}, write=True)
    await client.aclose()
    err = caught.value.error
    assert isinstance(err, errors.ExchangeUnavailable)
    assert err.ambiguous and err.cause == "timeout"
    assert "server.request_deadline_s" in str(err) and ALICE in str(err)
    assert seen == ["POST /v1.0/$batch"]  # adopted by the caller before any retry, never re-sent here


async def test_a_declared_content_length_over_the_cap_is_refused_before_reading() -> None:
    body = Body(b"x" * MB, 3)
    client, _ = client_for(body, headers={"Content-Length": str(65 * MB)})
    with pytest.raises(errors.ExchangeError) as caught:
        await client.call(ALICE, "read contacts", "GET", f"/users/{ALICE}/contacts")
    await client.aclose()
    err = caught.value
    assert not isinstance(err, errors.ExchangeUnavailable)
    assert "larger than 64 MB (server.max_answer_mb" in str(err) and "declared 65 MB" in str(err)
    assert ALICE in str(err) and "read contacts" in str(err)
    assert err.hint and "server.max_answer_mb" in err.hint
    assert body.sent == 0  # not a byte of the body was read


async def test_an_answer_growing_past_the_cap_stops_being_read() -> None:
    body = Body(b"x" * (256 * 1024), 40)  # 10 MB, no Content-Length
    client, _ = client_for(body, max_answer_mb=1)
    with pytest.raises(errors.ExchangeError) as caught:
        await client.call(ALICE, "read events", "GET", f"/users/{ALICE}/events")
    await client.aclose()
    assert "larger than 1 MB (server.max_answer_mb" in str(caught.value)
    assert caught.value.hint and "server.max_answer_mb" in caught.value.hint
    assert body.sent <= 6  # stopped a chunk or so past the cap, not the 40 pieces


# --- against the Graph test server over TLS ---------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GraphTestServer]:
    with running_server(tmp_path / "graph") as srv:
        yield srv


@pytest.mark.e2e
async def test_a_slow_graph_server_ends_a_read_at_the_deadline(server: GraphTestServer) -> None:
    acc = GraphAccount(
        # the read timeout (60 s) alone would wait for the answer
        settings_for(server, request_deadline_s=1.0)
    )
    await acc.client.tokens.token()  # the token request (msal) is not what is measured here
    server.set_faults(latency_ms=2500)
    try:
        with pytest.raises(errors.ExchangeUnavailable) as caught:
            async for _page in acc.mailbox(ALICE).changes(FolderKind.CALENDAR, None):
                pass
    finally:
        server.set_faults(latency_ms=0)
        await acc.aclose()
    assert caught.value.cause == "timeout"
    assert "no complete answer within 1 s (server.request_deadline_s" in str(caught.value)
    assert ALICE in str(caught.value)
