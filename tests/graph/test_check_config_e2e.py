"""`exchanged check-config --connect` over Graph, end to end: the CLI, msal against the Graph test
server's token endpoint over TLS (a client secret, and a certificate's signed assertion), every
permission and mailbox checked, a withheld permission named."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from exchanged.testing.graph.auth import Client
from exchanged.testing.graph.server import GraphTestServer

pytestmark = pytest.mark.e2e

ALICE = "alice@example.test"
TENANT = "contoso.example"


def app_certificate(path: Path) -> x509.Certificate:
    """A self-signed RSA certificate with its key in one PEM file, as docs/GRAPH.md makes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exchanged test app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    path.chmod(0o600)
    return cert


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[tuple[GraphTestServer, Path]]:
    pem = tmp_path / "app.pem"
    cert = app_certificate(pem)
    clients = [
        Client("app-secret", ["s3cret~value"]),
        Client("app-cert", certificates=[cert]),
        Client("app-partial", ["s3cret~value"]),
    ]
    clients[2].permissions.discard("Calendars.ReadWrite")
    server = GraphTestServer(
        tmp_path / "graph", [ALICE], TENANT, clients, time_zones={ALICE: "W. Europe Standard Time"}
    )
    server.start()
    try:
        yield server, pem
    finally:
        server.stop()


def check(tmp_path: Path, server: GraphTestServer, client: str, secret: dict[str, str]) -> tuple[int, Any]:
    cfg = {
        "profile_name": "graph e2e",
        "sync_interval_minutes": 15,
        "server": {
            "address": "outlook.office365.com",
            "use_ms_graph": True,
            "graph_url": server.url,
            "login_url": server.login_url,
            "ca_bundle": server.ca_file,
        },
        "credentials": {"local_setup_basic_auth": False, "tenant_id": TENANT, "client_id": client, **secret},
        "control": {"group": None},
        "users": [{"mailbox": ALICE, "psa_resource": "1"}],
        "psa": {"connector": "sql", "url": f"sqlite:///{tmp_path / 'psa.db'}"},
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
    }
    if not (tmp_path / "psa.db").exists():
        from exchanged.psa.sample import seed_sample

        seed_sample(f"sqlite:///{tmp_path / 'psa.db'}", dt.datetime.now(dt.UTC))
    path = tmp_path / f"{client}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "exchanged", "check-config", "--connect", "--json", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout)


def rows(doc: Any) -> dict[str, dict[str, str]]:
    return {c["subject"]: c for c in doc["connect"]}


def test_client_secret_every_permission_and_the_mailbox_time_zone(
    tmp_path: Path, graph: tuple[GraphTestServer, Path]
) -> None:
    server, _ = graph
    secret = tmp_path / "secret"
    secret.write_text("s3cret~value\n")
    secret.chmod(0o600)
    code, doc = check(tmp_path, server, "app-secret", {"client_secret_file": str(secret)})
    found = rows(doc)
    assert code == 0, [c for c in doc["connect"] if c["result"] != "ok"]
    assert found["login"]["result"] == "ok"
    for role in ("Calendars.ReadWrite", "Contacts.ReadWrite", "Tasks.ReadWrite.All", "MailboxSettings.Read"):
        assert found[role]["result"] == "ok", found
    assert "W. Europe Standard Time" in found[ALICE]["message"]
    assert "s3cret" not in json.dumps(doc)


def test_certificate_assertion_signs_in(tmp_path: Path, graph: tuple[GraphTestServer, Path]) -> None:
    server, pem = graph
    code, doc = check(tmp_path, server, "app-cert", {"certificate_file": str(pem)})
    assert code == 0, [c for c in doc["connect"] if c["result"] != "ok"]
    assert rows(doc)["login"]["result"] == "ok"
    assert server.stats()["tokens_issued"] >= 1


def test_a_withheld_permission_is_named_and_a_wrong_secret_said_so(
    tmp_path: Path, graph: tuple[GraphTestServer, Path]
) -> None:
    server, _ = graph
    secret = tmp_path / "secret"
    secret.write_text("s3cret~value\n")
    secret.chmod(0o600)
    code, doc = check(tmp_path, server, "app-partial", {"client_secret_file": str(secret)})
    found = rows(doc)
    assert code == 1
    assert found["Calendars.ReadWrite"]["result"] == "failed"
    assert found["Calendars.ReadWrite"]["message"].startswith(
        "Calendars.ReadWrite is not granted (admin consent)"
    )
    assert (
        found[ALICE]["result"] == "failed" and "Calendars.ReadWrite is not granted" in found[ALICE]["message"]
    )
    secret.write_text("Zq9-not-the-secret\n")
    code, doc = check(tmp_path, server, "app-secret", {"client_secret_file": str(secret)})
    login = rows(doc)["login"]
    assert code == 1 and login["result"] == "failed"
    assert "AADSTS7000215" in login["message"] and "client_secret_file" in login["message"]
    assert "Zq9-not-the-secret" not in json.dumps(doc)
