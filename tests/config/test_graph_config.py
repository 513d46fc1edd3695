"""Graph keys (issue 15): each rule names the key and line; secrets resolved, never shown."""

from __future__ import annotations

from pathlib import Path

import trustme

from exchanged.config import load_config
from tests.config.helpers import load_ok, one, problems, write_config

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

GRAPH = """\
profile_name: Test
server:
  address: outlook.office365.com
  use_ms_graph: true
sync_interval_minutes: 15
credentials:
  local_setup_basic_auth: false
  tenant_id: {tenant}
  client_id: {client}
{secret}control:
  group: null
users:
  - mailbox: alice@example.com
    psa_resource: "1"
"""


def secret_file(tmp_path: Path, value: str = "0aB~s3cr3t.value", mode: int = 0o600) -> Path:
    path = tmp_path / "graph-secret"
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def cert_file(tmp_path: Path, mode: int = 0o600) -> Path:
    ca = trustme.CA()
    cert = ca.issue_cert("exchanged-app")
    path = tmp_path / "app.pem"
    path.write_bytes(cert.private_key_pem.bytes() + cert.cert_chain_pems[0].bytes())
    path.chmod(mode)
    return path


def graph(tmp_path: Path, secret: str | None = None, tenant: str = TENANT, client: str = CLIENT) -> str:
    if secret is None:
        secret = f"  client_secret_file: {secret_file(tmp_path)}\n"
    return GRAPH.format(tenant=tenant, client=client, secret=secret)


def test_graph_with_a_client_secret_loads_without_username_or_password(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, graph(tmp_path))
    assert cfg.server.use_ms_graph and cfg.credentials.is_graph
    assert cfg.server.graph_url == "https://graph.microsoft.com"
    assert cfg.server.login_url == "https://login.microsoftonline.com"
    assert cfg.credentials.tenant_id == TENANT and cfg.credentials.client_id == CLIENT
    assert cfg.credentials.client_secret is not None
    assert cfg.credentials.client_secret.get_secret_value() == "0aB~s3cr3t.value"
    assert cfg.credentials.certificate is None
    # never in a repr, a dump or a warning
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in str(cfg.model_dump())
    assert cfg.warnings == ()


def test_graph_with_a_certificate(tmp_path: Path) -> None:
    pem = cert_file(tmp_path)
    cfg = load_ok(tmp_path, graph(tmp_path, f"  certificate_file: {pem}\n"))
    assert cfg.credentials.certificate is not None and cfg.credentials.client_secret is None
    assert "BEGIN CERTIFICATE" in cfg.credentials.certificate.get_secret_value()
    assert "PRIVATE KEY" not in repr(cfg)


def test_certificate_file_without_a_key_or_readable_by_others(tmp_path: Path) -> None:
    pem = cert_file(tmp_path)
    only_cert = tmp_path / "cert-only.pem"
    only_cert.write_text(pem.read_text()[pem.read_text().index("-----BEGIN CERTIFICATE"):])
    only_cert.chmod(0o600)
    found = one(problems(tmp_path, graph(tmp_path, f"  certificate_file: {only_cert}\n")),
                "credentials.certificate_file")
    assert "no private key" in found.message and found.line == 10
    pem.chmod(0o644)
    found = one(problems(tmp_path, graph(tmp_path, f"  certificate_file: {pem}\n")),
                "credentials.certificate_file")
    assert "chmod 600" in found.message


def test_both_secret_kinds_is_an_error(tmp_path: Path) -> None:
    text = graph(tmp_path, f"  certificate_file: {cert_file(tmp_path)}\n"
                           f"  client_secret_file: {secret_file(tmp_path)}\n")
    assert "not both" in one(problems(tmp_path, text), "credentials.certificate_file").message


def test_secrets_from_systemd_credentials_certificate_first(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "graph-client-secret").write_text("from-systemd\n")
    path = write_config(tmp_path, graph(tmp_path, ""))
    cfg = load_config(path, credentials_dir=str(creds))
    assert cfg.credentials.client_secret is not None
    assert cfg.credentials.client_secret.get_secret_value() == "from-systemd"
    (creds / "graph-certificate").write_text(cert_file(tmp_path).read_text())
    cfg = load_config(path, credentials_dir=str(creds))
    assert cfg.credentials.certificate is not None and cfg.credentials.client_secret is None


def test_no_secret_at_all_names_every_way_to_give_one(tmp_path: Path) -> None:
    found = one(problems(tmp_path, graph(tmp_path, "")), "credentials.certificate_file")
    for word in ("certificate_file", "client_secret_file", "graph-certificate", "graph-client-secret"):
        assert word in found.message


def test_graph_needs_tenant_and_client(tmp_path: Path) -> None:
    text = graph(tmp_path).replace(f"  tenant_id: {TENANT}\n", "")
    found = one(problems(tmp_path, text), "credentials.tenant_id")
    assert "Directory (tenant) ID" in found.message
    text = graph(tmp_path).replace(f"  client_id: {CLIENT}\n", "")
    assert "Application (client) ID" in one(problems(tmp_path, text), "credentials.client_id").message
    bad = graph(tmp_path, tenant='"not a guid!"')
    assert "GUID" in one(problems(tmp_path, bad), "credentials.tenant_id").message


def test_graph_with_local_basic_auth_stays_an_error(tmp_path: Path) -> None:
    text = graph(tmp_path).replace("  local_setup_basic_auth: false\n", "  local_setup_basic_auth: true\n")
    found = one(problems(tmp_path, text), "server.use_ms_graph")
    assert found.line == 4 and "local_setup_basic_auth" in found.message


def test_graph_with_the_public_contacts_folder_stays_an_error(tmp_path: Path) -> None:
    text = graph(tmp_path) + "sync:\n  public_folder_all_contacts: true\n"
    found = one(problems(tmp_path, text), "sync.public_folder_all_contacts")
    assert "EWS" in found.message


def test_modern_auth_without_graph_says_ews_online_is_blocked_and_the_fix(tmp_path: Path) -> None:
    text = graph(tmp_path).replace("  use_ms_graph: true\n", "")
    found = one(problems(tmp_path, text), "credentials.local_setup_basic_auth")
    assert found.line == 6
    assert "blocked" in found.message and "1 October 2026" in found.message
    assert "server.use_ms_graph: true" in found.message and "docs/GRAPH.md" in found.message


def test_hosted_by_third_party_warns_what_it_changes(tmp_path: Path) -> None:
    text = graph(tmp_path).replace("  use_ms_graph: true\n",
                                   "  use_ms_graph: true\n  hosted_by_third_party: true\n")
    [warning] = load_ok(tmp_path, text).warnings
    assert warning.startswith("line 5: server.hosted_by_third_party: changes nothing")
    assert "use_for_all_users: false" in warning


def test_graph_urls_for_national_clouds_and_test_servers(tmp_path: Path) -> None:
    text = graph(tmp_path).replace("  use_ms_graph: true\n", "  use_ms_graph: true\n"
                                   "  graph_url: https://graph.microsoft.us/\n"
                                   "  login_url: https://127.0.0.1:8443/login\n")
    cfg = load_ok(tmp_path, text)
    assert cfg.server.graph_url == "https://graph.microsoft.us"
    assert cfg.server.login_url == "https://127.0.0.1:8443/login"
    bad = text.replace("https://graph.microsoft.us/", "http://graph.example.test")
    assert "https://" in one(problems(tmp_path, bad), "server.graph_url").message


def test_graph_keys_without_graph_are_ignored_with_a_warning(tmp_path: Path) -> None:
    from tests.config.helpers import base

    text = base(tmp_path).replace("  username: svc\n", f"  username: svc\n  client_id: {CLIENT}\n")
    text = text.replace("  username: svc\n", "  username: svc\n  local_setup_basic_auth: true\n")
    cfg = load_ok(tmp_path, text)
    assert any("credentials.client_id: ignored" in w for w in cfg.warnings)
