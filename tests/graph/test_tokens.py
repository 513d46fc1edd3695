"""Tokens: cached, renewed five minutes before they expire (trio's clock), refusals named."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
import trustme

from exchanged import errors
from exchanged.graph.client import GraphSettings, TokenSource, _certificate_credential, token_roles

S = GraphSettings(
    graph_url="https://graph.test",
    login_url="https://login.test",
    tenant_id="contoso",
    client_id="app-1",
    client_secret="s",
)


class App:
    def __init__(self, *answers: dict[str, Any]) -> None:
        self.answers = list(answers)
        self.scopes: list[list[str]] = []

    def acquire_token_for_client(self, scopes: list[str]) -> dict[str, Any]:
        self.scopes.append(scopes)
        return self.answers.pop(0)


async def test_token_is_kept_until_five_minutes_before_expiry(autojump_clock: trio.abc.Clock) -> None:
    app = App({"access_token": "one", "expires_in": 3600}, {"access_token": "two", "expires_in": 3600})
    tokens = TokenSource(S, app_factory=lambda: app)
    assert await tokens.token() == "one"
    await trio.sleep(3200)
    assert await tokens.token() == "one" and tokens.acquired == 1
    await trio.sleep(100)  # 3300 s: inside the last five minutes
    assert await tokens.token() == "two" and tokens.acquired == 2
    assert app.scopes[0] == ["https://graph.microsoft.com/.default"]
    tokens.invalidate()  # a 401 from Graph
    app.answers.append({"access_token": "three", "expires_in": 3600})
    assert await tokens.token() == "three"


@pytest.mark.parametrize(
    ("desc", "hint"),
    [
        (
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent ...",
            "client_secret_file",
        ),
        ("AADSTS700016: Application with identifier 'app-1' was not found in the directory", "client_id"),
        ("AADSTS700027: Client assertion contains an invalid signature.", "certificate"),
    ],
)
async def test_refusals_name_the_app_and_the_fix(desc: str, hint: str) -> None:
    app = App({"error": "invalid_client", "error_description": desc + "\r\nTrace ID: 1"})
    with pytest.raises(errors.AuthFailed) as info:
        await TokenSource(S, app_factory=lambda: app).token()
    line = errors.present(info.value).line()
    assert "app-1" in line and "invalid_client" in line and desc.split(":")[0] in line and hint in line
    assert "Trace ID" not in line and "'s'" not in line


async def test_unreachable_sign_in_host_is_unavailable_not_auth() -> None:
    def boom() -> Any:
        raise ConnectionError("Name or service not known")

    with pytest.raises(errors.ExchangeUnavailable) as info:
        await TokenSource(S, app_factory=boom).token()
    assert "login.test" in str(info.value)


def test_certificate_credential_for_msal() -> None:
    cert = trustme.CA().issue_cert("exchanged-app")
    pem = cert.cert_chain_pems[0].bytes().decode() + cert.private_key_pem.bytes().decode()
    cred = _certificate_credential(pem)
    assert "PRIVATE KEY" in cred["private_key"] and "CERTIFICATE" not in cred["private_key"]
    assert len(cred["thumbprint"]) == 40 and cred["public_certificate"].startswith("-----BEGIN CERTIFICATE")


def test_token_roles() -> None:
    import base64
    import json

    claims = (
        base64.urlsafe_b64encode(json.dumps({"roles": ["Calendars.ReadWrite"]}).encode()).decode().rstrip("=")
    )
    assert token_roles(f"h.{claims}.s") == ["Calendars.ReadWrite"]
    assert token_roles("opaque") is None


# --- a sign-in server that trickles or floods: bounded like every other answer (issue #14) ---------


@pytest.mark.parametrize("answer", ["trickle", "flood"])
async def test_a_sign_in_server_that_trickles_or_floods_is_cut_at_the_limits(
        tmp_path: Any, answer: str) -> None:
    """msal's requests (OIDC discovery, the token) went out with connect/read timeouts only: a
    server sending a byte every 0.2 s held the token request, and every Graph request behind it,
    for as long as it liked, and a huge answer was read whole."""
    import ssl

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    async def serve(stream: trio.SocketStream) -> None:
        tls_stream = trio.SSLStream(stream, server_ctx, server_side=True)
        try:
            await tls_stream.receive_some(65536)  # the request (one read is enough here)
            if answer == "flood":
                await tls_stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                          b"Content-Length: 104857600\r\n\r\n" + b" " * 65536)
                await trio.sleep_forever()
            await tls_stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 100000\r\n\r\n")
            while True:
                await tls_stream.send_all(b" ")
                await trio.sleep(0.2)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        settings = GraphSettings(graph_url="https://graph.test", login_url=f"https://127.0.0.1:{port}",
                                 tenant_id="contoso", client_id="app-1", client_secret="s",
                                 ca_bundle=str(ca_file), request_deadline_s=1.0, max_answer_mb=1)
        with trio.fail_after(30):  # a hang guard: cut at 1 s, or never
            with pytest.raises(errors.ExchangeUnavailable) as info:
                await TokenSource(settings).token()
        nursery.cancel_scope.cancel()
    line = errors.present(info.value).line()
    assert f"127.0.0.1:{port}" in line, line
    if answer == "trickle":
        assert "no complete answer within 1 s (server.request_deadline_s" in line, line
    else:
        assert "server.max_answer_mb" in line, line
