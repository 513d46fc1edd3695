"""Token endpoint, MSAL against the test server, bearer tokens and application permissions."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from exchanged.testing.graph import DEFAULT_PERMISSIONS, Client, GraphTestServer

from .conftest import CLIENT_ID, SECRET, TENANT, Graph, http_client, msal_app, start_graph

SCOPE = ["https://graph.microsoft.com/.default"]


def make_cert(tmp_path: Path, name: str) -> tuple[bytes, str, Path]:
    """A self-signed RSA certificate: (key PEM, SHA-1 thumbprint hex, cert PEM path)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_pem, cert.fingerprint(hashes.SHA1()).hex(), path


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_msal_client_secret_gets_a_jwt_with_the_granted_roles(server: GraphTestServer) -> None:
    result = msal_app(server, instance_discovery=False).acquire_token_for_client(scopes=SCOPE)
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3599
    token_claims = claims(result["access_token"])
    assert token_claims["aud"] == "https://graph.microsoft.com"
    assert token_claims["appid"] == CLIENT_ID
    assert sorted(token_claims["roles"]) == sorted(DEFAULT_PERMISSIONS)
    assert token_claims["exp"] > token_claims["iat"]
    # MSAL caches the token: a second call does not reach the token endpoint
    app = msal_app(server, instance_discovery=False)
    app.acquire_token_for_client(scopes=SCOPE)
    app.acquire_token_for_client(scopes=SCOPE)
    assert server.stats()["tokens_issued"] == 2


def test_msal_authority_validation_through_instance_discovery(server: GraphTestServer) -> None:
    """MSAL's default authority check asks an instance discovery endpoint; ours answers it."""
    app = msal_app(server, instance_discovery=f"{server.login_url}/common/discovery/instance")
    result = app.acquire_token_for_client(scopes=SCOPE)
    assert "access_token" in result, result
    assert server.stats()["requests"]["GET /common/discovery/instance"] == 1


def test_wrong_secret_gets_the_aadsts_error_body(server: GraphTestServer) -> None:
    with http_client(server.ca_file) as http:
        r = http.post(
            f"{server.login_url}/{TENANT}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": "wrong",
                "scope": SCOPE[0],
            },
        )
    assert r.status_code == 401
    body = r.json()
    assert body["error"] == "invalid_client"
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert body["error_codes"] == [7000215]
    assert {"timestamp", "trace_id", "correlation_id"} <= body.keys()
    # and MSAL hands the same body to its caller
    result = msal_app(server, secret="wrong", instance_discovery=False).acquire_token_for_client(scopes=SCOPE)
    assert result["error"] == "invalid_client" and 7000215 in result["error_codes"]


def test_unknown_client_tenant_and_scope(server: GraphTestServer) -> None:
    with http_client(server.ca_file) as http:
        form = {
            "grant_type": "client_credentials",
            "client_id": "nobody",
            "client_secret": "x",
            "scope": SCOPE[0],
        }
        r = http.post(f"{server.login_url}/{TENANT}/oauth2/v2.0/token", data=form)
        assert r.status_code == 400 and r.json()["error_codes"] == [700016]
        r = http.post(f"{server.login_url}/other.example/oauth2/v2.0/token", data=form)
        assert r.status_code == 400 and r.json()["error_codes"] == [90002]
        form.update(
            client_id=CLIENT_ID, client_secret=SECRET, scope="https://graph.microsoft.com/Calendars.Read"
        )
        r = http.post(f"{server.login_url}/{TENANT}/oauth2/v2.0/token", data=form)
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
        # the token endpoint lives on the login host only, Graph on its own
        form["scope"] = SCOPE[0]
        r = http.post(f"{server.url}/{TENANT}/oauth2/v2.0/token", data=form)
        assert r.status_code == 400 and r.json()["error"]["code"] == "BadRequest"


def test_client_assertion_signed_with_a_registered_certificate(tmp_path: Path) -> None:
    key_pem, thumbprint, cert_path = make_cert(tmp_path, "registered")
    other_key, other_thumb, _ = make_cert(tmp_path, "unregistered")
    from exchanged.testing.graph import load_certificate

    client = Client("cert-app", certificates=[load_certificate(cert_path)])
    srv = start_graph(tmp_path / "state", clients=[client])
    try:
        ok = msal_app(
            srv,
            client_id="cert-app",
            client_credential={"private_key": key_pem.decode(), "thumbprint": thumbprint},
            instance_discovery=False,
        ).acquire_token_for_client(scopes=SCOPE)
        assert "access_token" in ok, ok
        with http_client(srv.ca_file) as http:
            r = Graph(srv, http, ok["access_token"]).get("/users/alice@example.test/mailboxSettings/timeZone")
            assert r.status_code == 200, r.text
        bad = msal_app(
            srv,
            client_id="cert-app",
            client_credential={"private_key": other_key.decode(), "thumbprint": other_thumb},
            instance_discovery=False,
        ).acquire_token_for_client(scopes=SCOPE)
        assert bad["error"] == "invalid_client" and bad["error_codes"] == [700027], bad
        # the registered thumbprint with another key: the signature does not verify
        forged = msal_app(
            srv,
            client_id="cert-app",
            client_credential={"private_key": other_key.decode(), "thumbprint": thumbprint},
            instance_discovery=False,
        ).acquire_token_for_client(scopes=SCOPE)
        assert forged["error_codes"] == [700027] and "signature is invalid" in forged["error_description"]
    finally:
        srv.stop()


def test_withheld_permission_is_absent_from_the_token_and_answered_403(tmp_path: Path) -> None:
    client = Client(CLIENT_ID, secrets=[SECRET])
    client.permissions.discard("Calendars.ReadWrite")
    srv = start_graph(tmp_path / "state", clients=[client])
    try:
        result = msal_app(srv, instance_discovery=False).acquire_token_for_client(scopes=SCOPE)
        assert "Calendars.ReadWrite" not in claims(result["access_token"])["roles"]
        with http_client(srv.ca_file) as http:
            graph = Graph(srv, http, result["access_token"])
            r = graph.get("/users/alice@example.test/events")
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "ErrorAccessDenied"
            assert r.json()["error"]["message"] == "Access is denied. Check credentials and try again."
            assert graph.get("/users/alice@example.test/contacts").status_code == 200
    finally:
        srv.stop()


def test_missing_bad_and_expired_tokens_get_401(tmp_path: Path) -> None:
    srv = start_graph(tmp_path / "state", token_lifetime=0)
    try:
        expired = msal_app(srv, instance_discovery=False).acquire_token_for_client(scopes=SCOPE)[
            "access_token"
        ]
        with http_client(srv.ca_file) as http:
            url = f"{srv.url}/v1.0/users/alice@example.test/events"
            for headers in (
                {},
                {"Authorization": "Bearer not.a.token"},
                {"Authorization": f"Bearer {expired}"},
            ):
                r = http.get(url, headers=headers)
                assert r.status_code == 401
                assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "expired" in r.json()["error"]["message"]
        assert srv.stats()["auth_failures"] == 3
    finally:
        srv.stop()


def test_app_only_token_cannot_use_me(graph: Graph) -> None:
    r = graph.get("/me/events")
    assert r.status_code == 400
    assert "delegated" in r.json()["error"]["message"]


def test_cli_prints_urls_and_serves(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exchanged.testing.graph",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "s"),
            "--tenant",
            TENANT,
            "--client",
            f"{CLIENT_ID}:{SECRET}",
            "--client",
            "app2:pw2",
            "--deny-permission",
            "app2:Tasks.ReadWrite.All",
            "--mailbox",
            "alice@example.test",
            "--mailbox-timezone",
            "alice@example.test=W. Europe Standard Time",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) == {"url", "login_url", "ca_file"}
        with httpx.Client(verify=__import__("ssl").create_default_context(cafile=info["ca_file"])) as http:
            form = {
                "grant_type": "client_credentials",
                "client_id": "app2",
                "client_secret": "pw2",
                "scope": SCOPE[0],
            }
            token = http.post(f"{info['login_url']}/{TENANT}/oauth2/v2.0/token", data=form).json()[
                "access_token"
            ]
            assert "Tasks.ReadWrite.All" not in claims(token)["roles"]
            auth = {"Authorization": f"Bearer {token}"}
            r = http.get(
                f"{info['url']}/v1.0/users/alice@example.test/mailboxSettings/timeZone", headers=auth
            )
            assert r.json()["value"] == "W. Europe Standard Time"
            assert (
                http.get(f"{info['url']}/v1.0/users/alice@example.test/todo/lists", headers=auth).status_code
                == 403
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_token_endpoint_outage(server: GraphTestServer) -> None:
    server.set_faults(token_fail_next=1, retry_after_s=4)
    with http_client(server.ca_file) as http:
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "scope": SCOPE[0],
        }
        r = http.post(f"{server.login_url}/{TENANT}/oauth2/v2.0/token", data=form)
        assert r.status_code == 503 and r.headers["Retry-After"] == "4"
        assert r.json()["error"] == "temporarily_unavailable" and r.json()["error_codes"] == [90033]
        assert http.post(f"{server.login_url}/{TENANT}/oauth2/v2.0/token", data=form).status_code == 200


def test_an_expired_secret_is_named_as_expired(tmp_path: Path) -> None:
    srv = start_graph(
        tmp_path / "state", clients=[Client(CLIENT_ID, secrets=[SECRET], expired_secrets=["old"])]
    )
    try:
        result = msal_app(srv, secret="old").acquire_token_for_client(scopes=SCOPE)
        assert result["error"] == "invalid_client" and result["error_codes"] == [7000222]
        assert (
            "client secret keys for app" in result["error_description"]
            and "expired" in result["error_description"]
        )
        assert "access_token" in msal_app(srv).acquire_token_for_client(scopes=SCOPE)
    finally:
        srv.stop()
