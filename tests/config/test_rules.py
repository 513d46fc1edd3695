"""Every config rule: the problem names the key path and the YAML line it was written on."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from exchanged.config import (
    Config,
    diff_configs,
    ews_url,
    load_config,
    parse_config,
    server_identity,
)
from exchanged.errors import ConfigInvalid
from tests.config.helpers import BASE, base, load_ok, one, problems, write_config, write_password

ADDR = "  address: mail.example.com\n"
EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "exchanged.example.yaml"


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path))
    assert cfg.profile_name == "Test"
    assert cfg.server.port == 443 and cfg.server.virtual_directory == ""
    assert cfg.sync.past_days == 7 and cfg.sync.recurring_future_days == 30
    assert cfg.sync.import_appointments == "all_details"
    assert cfg.sync.max_concurrent_users == 8 and cfg.sync.max_deletes_per_cycle == 25
    assert cfg.notifications.repeat_after_minutes == 240
    assert cfg.psa.connector == "sql" and cfg.psa.url == "sqlite:////var/lib/exchanged/psa.db"
    assert cfg.state.url == "sqlite:////var/lib/exchanged/state.db"
    assert cfg.control.socket == "/run/exchanged/control.sock"
    assert cfg.logging.format == "journal"
    assert cfg.credentials.password.get_secret_value() == "s3cret-Pa55"
    assert cfg.warnings == ()
    assert cfg.source_path.endswith("exchanged.yaml")
    assert [u.mailbox for u in cfg.enabled_users()] == ["alice@example.com"]


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path))
    with pytest.raises(ValidationError):
        cfg.sync_interval_minutes = 20  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.server.address = "other.example.com"  # type: ignore[misc]


def test_example_file_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    # as shipped, the password is the systemd credential, or `sync-password` beside the file
    write_password(tmp_path)
    text = EXAMPLE.read_text()
    cfg = parse_config(text, str(tmp_path / "exchanged.yaml"), credentials_dir="")
    assert cfg.credentials.password.get_secret_value() == "s3cret-Pa55"
    assert cfg.profile_name == "Contoso on-prem"
    assert len(cfg.users) == 2 and len(cfg.enabled_users()) == 1
    assert cfg.notifications.recipients == ("ops@contoso.com", "lead@contoso.com")
    # every key of every model appears in the example (commented-out autotask keys included)
    from exchanged.config import AutotaskPsaConfig, UserConfig, UserSettingsConfig, _keys_of

    for model in (Config, type(cfg.server), type(cfg.credentials), type(cfg.notifications),
                  type(cfg.notifications.smtp), type(cfg.sync), UserConfig, UserSettingsConfig,
                  AutotaskPsaConfig, type(cfg.state), type(cfg.control), type(cfg.logging)):
        for key in _keys_of(model):
            if model is UserSettingsConfig:
                continue  # narrowing keys are the sync keys, shown once
            assert f"{key}:" in text, f"{model.__name__}.{key} is not documented in the example"


@pytest.mark.parametrize(
    ("extra", "path", "line", "fragment"),
    [
        ("sync:\n  past_days: 0\n", "sync.past_days", 14, ">= 1"),
        ("sync:\n  past_days: 31\n", "sync.past_days", 14, "<= 30"),
        ("sync:\n  past_days: '7'\n", "sync.past_days", 14, "whole number (got '7')"),
        ("sync:\n  todos: 'yes'\n", "sync.todos", 14, "true or false"),
        ("sync:\n  max_deletes_per_cycle: true\n", "sync.max_deletes_per_cycle", 14, "whole number"),
        ("sync:\n  recurring_future_days: 0\n", "sync.recurring_future_days", 14, ">= 1"),
        ("sync:\n  recurring_future_days: 45\n", "sync.recurring_future_days", 14, "<= 30"),
        ("sync:\n  max_concurrent_users: 0\n", "sync.max_concurrent_users", 14, ">= 1"),
        ("sync:\n  max_deletes_per_cycle: -1\n", "sync.max_deletes_per_cycle", 14, ">= 0"),
        ("sync:\n  import_appointments: some\n", "sync.import_appointments", 14, "all_details"),
        ("sync:\n  skip_show_as: [busy]\n", "sync.skip_show_as[0]", 14, "working_elsewhere"),
        ("notifications:\n  smtp:\n    security: ssl\n", "notifications.smtp.security", 15, "starttls"),
        ("notifications:\n  smtp:\n    from: nobody\n", "notifications.smtp.from", 15, "not a mail address"),
        ("notifications:\n  repeat_after_minutes: 0\n", "notifications.repeat_after_minutes", 14, ">= 1"),
        ("psa:\n  connector: salesforce\n", "psa.connector", 14, "'sql' or 'autotask'"),
        ("psa:\n  url: mysql://x/y\n", "psa.url", 14, "sqlite:///"),
        ("psa:\n  url: postgresql://psa@db/psa\n  listen_channel: PSA-changes\n", "psa.listen_channel", 15,
         "not a channel name"),
        ("psa:\n  url: sqlite:////var/lib/x.db\n  listen_channel: exchanged_psa\n", "psa.listen_channel", 15,
         "needs a PostgreSQL psa.url"),
        ("state:\n  url: /var/lib/x.db\n", "state.url", 14, "database URL"),
        ("logging:\n  format: xml\n", "logging.format", 14, "journal"),
    ],
)
def test_range_and_choice_rules(tmp_path: Path, extra: str, path: str, line: int, fragment: str) -> None:
    text = base(tmp_path, extra)
    found = one(problems(tmp_path, text), path)
    assert found.line == line
    assert fragment in found.message


def test_control_socket_absolute(tmp_path: Path) -> None:
    text = base(tmp_path).replace("  group: null\n", "  group: null\n  socket: relative.sock\n")
    found = one(problems(tmp_path, text), "control.socket")
    assert found.line == 10 and "absolute" in found.message


def test_interval_at_least_10(tmp_path: Path) -> None:
    text = base(tmp_path).replace("sync_interval_minutes: 15", "sync_interval_minutes: 9")
    found = one(problems(tmp_path, text), "sync_interval_minutes")
    assert found.line == 4 and ">= 10" in found.message
    text = base(tmp_path).replace("sync_interval_minutes: 15", "sync_interval_minutes: 10")
    assert load_ok(tmp_path, text).sync_interval_minutes == 10


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("10.1.2.3", "IP address"),
        ("'[2001:db8::1]'", "IP address"),
        ("'2001:db8::1'", "IP address"),
        ("https://mail.example.com", "without a scheme"),
        ("mail.example.com/EWS", "without a path"),
        ("mail.example.com:443", "without a port"),
        ("'-bad-.example.com'", "not a valid DNS name"),
        ("'mail example.com'", "not a valid DNS name"),
        ("1.2.3.999", "looks like an IP address"),
        ("''", "must not be empty"),
    ],
)
def test_server_address_must_be_a_dns_name(tmp_path: Path, address: str, fragment: str) -> None:
    text = base(tmp_path).replace("address: mail.example.com", f"address: {address}")
    found = one(problems(tmp_path, text), "server.address")
    assert found.line == 3
    assert fragment in found.message


def test_server_address_accepts_dns_names(tmp_path: Path) -> None:
    for name in ("localhost", "Mail.Example.COM.", "exchange01", "xn--mnchen-3ya.example"):
        text = base(tmp_path).replace("address: mail.example.com", f"address: {name}")
        assert load_ok(tmp_path, text).server.address == name.lower().rstrip(".")


def test_password_at_most_128_characters(tmp_path: Path) -> None:
    pw = write_password(tmp_path, "x" * 129)
    text = BASE.format(pw=pw)
    found = one(problems(tmp_path, text), "credentials.password_file")
    assert found.line == 7 and "128" in found.message
    write_password(tmp_path, "x" * 128)
    assert len(load_ok(tmp_path, text).credentials.password.get_secret_value()) == 128


def test_inline_password_length(tmp_path: Path) -> None:
    text = BASE.replace("password_file: {pw}", 'password: "' + "y" * 129 + '"')
    found = one(problems(tmp_path, text), "credentials.password")
    assert found.line == 7 and "128" in found.message
    assert "yyyy" not in found.message


def test_graph_with_local_basic_auth_is_an_error(tmp_path: Path) -> None:
    text = base(tmp_path).replace("  address: mail.example.com\n",
                                  "  address: mail.example.com\n  use_ms_graph: true\n")
    found = one(problems(tmp_path, text), "server.use_ms_graph")
    assert found.line == 4 and "local_setup_basic_auth" in found.message
    # with modern auth it needs the app registration (tests/config/test_graph_config.py)
    ok = text.replace("  username: svc\n", "  username: svc\n  local_setup_basic_auth: false\n"
                      "  tenant_id: contoso.onmicrosoft.com\n  client_id: 1234abcd\n")
    (tmp_path / "graph-client-secret").write_text("app-secret\n")
    (tmp_path / "graph-client-secret").chmod(0o600)
    assert load_ok(tmp_path, ok).server.use_ms_graph is True


def test_public_folder_requires_ews(tmp_path: Path) -> None:
    text = base(tmp_path, "sync:\n  public_folder_all_contacts: true\n")
    text = text.replace(ADDR, ADDR + "  use_ms_graph: true\n")
    text = text.replace("  username: svc\n", "  username: svc\n  local_setup_basic_auth: false\n")
    found = one(problems(tmp_path, text), "sync.public_folder_all_contacts")
    assert found.line == 16 and "EWS" in found.message
    # with EWS it is allowed, but warned about (every Exchange user can read the folder)
    cfg = load_ok(tmp_path, base(tmp_path, "sync:\n  public_folder_all_contacts: true\n"))
    assert any("public_folder_all_contacts" in w for w in cfg.warnings)


def test_notification_addresses_each_validated(tmp_path: Path) -> None:
    text = base(tmp_path, 'notifications:\n  email: "ops@example.com; not-an-address; x@y@z"\n')
    found = one(problems(tmp_path, text), "notifications.email")
    assert found.line == 14
    assert "not-an-address" in found.message and "x@y@z" in found.message
    assert "ops@example.com" not in found.message
    cfg = load_ok(tmp_path, base(tmp_path, 'notifications:\n  email: "a@example.com;b@example.com ; "\n'))
    assert cfg.notifications.recipients == ("a@example.com", "b@example.com")


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    text = base(tmp_path, "sync:\n  past_dayz: 3\nsyncc_interval: 1\n")
    found = problems(tmp_path, text)
    assert "did you mean 'past_days'?" in one(found, "sync.past_dayz").message
    assert one(found, "sync.past_dayz").line == 14
    assert "did you mean 'sync_interval_minutes'?" in one(found, "syncc_interval").message
    assert one(found, "syncc_interval").line == 15


def test_misplaced_key_names_its_section(tmp_path: Path) -> None:
    text = base(tmp_path).replace("  username: svc\n", "  username: svc\n  use_ms_graph: false\n")
    found = one(problems(tmp_path, text), "credentials.use_ms_graph")
    assert found.line == 7 and "belongs under server" in found.message


def test_per_user_settings_may_only_narrow(tmp_path: Path) -> None:
    text = base(tmp_path, """\
        sync:
          todos: false
          import_appointments: no_details
        """).replace('    psa_resource: "1"\n', '    psa_resource: "1"\n    settings:\n'
                     "      todos: true\n      import_appointments: all_details\n"
                     "      appointments_export: false\n")
    found = problems(tmp_path, text)
    todos = one(found, "users[0].settings.todos")
    assert todos.line == 14 and "sync.todos" in todos.message
    mode = one(found, "users[0].settings.import_appointments")
    assert mode.line == 15 and "all_details > no_details > none" in mode.message
    assert len(found) == 2


def test_effective_sync_narrows(tmp_path: Path) -> None:
    text = base(tmp_path).replace('    psa_resource: "1"\n', '    psa_resource: "1"\n    settings:\n'
                                  "      appointments_export: false\n      import_appointments: none\n")
    cfg = load_ok(tmp_path, text)
    eff = cfg.effective_sync(cfg.users[0])
    assert eff.appointments_export is False and eff.import_appointments == "none"
    assert eff.todos is True and cfg.sync.appointments_export is True


def test_unknown_per_user_setting(tmp_path: Path) -> None:
    text = base(tmp_path).replace('    psa_resource: "1"\n',
                                  '    psa_resource: "1"\n    settings: {past_days: 3}\n')
    found = one(problems(tmp_path, text), "users[0].settings.past_days")
    assert found.line == 13 and "unknown key" in found.message


def test_duplicate_mailboxes_refused_case_insensitive(tmp_path: Path) -> None:
    text = base(tmp_path) + '  - mailbox: Alice@Example.com\n    psa_resource: "2"\n'
    found = one(problems(tmp_path, text), "users[1].mailbox")
    assert found.line == 13 and "listed twice" in found.message


def test_free_time_without_import_is_a_warning(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path, "sync:\n  import_appointments: none\n  import_free_time: true\n"))
    assert any("sync.import_free_time" in w and "ignored" in w and "line 15" in w for w in cfg.warnings)


def test_plaintext(tmp_path: Path) -> None:
    text = base(tmp_path).replace(ADDR, ADDR + "  port: 80\n")
    found = one(problems(tmp_path, text), "server.port")
    assert found.line == 4 and "allow_plaintext" in found.message
    cfg = load_ok(tmp_path, text.replace("  port: 80\n", "  port: 80\n  allow_plaintext: true\n"))
    assert ews_url(cfg) == "http://mail.example.com/EWS/Exchange.asmx"
    assert any("allow_plaintext" in w for w in cfg.warnings)


def test_ews_url(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path))
    assert ews_url(cfg) == "https://mail.example.com/EWS/Exchange.asmx"
    text = base(tmp_path).replace(ADDR, ADDR + "  port: 8443\n  virtual_directory: /custom/EWS/\n")
    assert ews_url(load_ok(tmp_path, text)) == "https://mail.example.com:8443/custom/EWS/Exchange.asmx"
    bad = text.replace("/custom/EWS/", "https://x/EWS")
    assert "not a URL" in one(problems(tmp_path, bad), "server.virtual_directory").message


def test_all_problems_at_once(tmp_path: Path) -> None:
    text = """\
        profile_name: ""
        server:
          address: 192.168.1.10
          use_ms_graph: true
        sync_interval_minutes: 5
        credentials:
          username: svc
          password: "pw"
        notifications:
          email: "nobody"
        sync:
          past_days: 99
          colour: blue
        users:
          - mailbox: a@example.com
            psa_resource: "1"
          - mailbox: A@example.com
            psa_resource: "2"
        """
    found = problems(tmp_path, text)
    got = {(p.path, p.line) for p in found}
    assert got >= {
        ("profile_name", 1),
        ("server.address", 3),
        ("server.use_ms_graph", 4),
        ("sync_interval_minutes", 5),
        ("notifications.email", 10),
        ("sync.past_days", 12),
        ("sync.colour", 13),
        ("users[1].mailbox", 17),
    }
    # sorted by line, so the operator reads them top to bottom
    assert [p.line or 0 for p in found] == sorted(p.line or 0 for p in found)


def test_missing_required_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, "enabled: true\n")
    assert {p.path for p in found} >= {"profile_name", "server", "sync_interval_minutes", "credentials"}
    assert all("required" in p.message for p in found)


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    text = base(tmp_path).replace("sync_interval_minutes: 15\n",
                                  "sync_interval_minutes: 15\nsync_interval_minutes: 30\n")
    found = one(problems(tmp_path, text), "sync_interval_minutes")
    assert found.line == 5 and "first on line 4" in found.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("profile_name: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        ("", "is empty"),
        ("x: 2001-02-30\n", "cannot be read"),
    ],
)
def test_broken_files(tmp_path: Path, content: str, fragment: str) -> None:
    found = problems(tmp_path, content)
    assert len(found) == 1 and fragment in found[0].message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path / "nope.yaml")
    assert "file not found" in info.value.problems[0].message
    with pytest.raises(ConfigInvalid) as info:
        load_config(tmp_path)
    assert "directory" in info.value.problems[0].message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigInvalid) as info:
        load_config(binary)
    assert "UTF-8" in info.value.problems[0].message


def test_psa_resource_number_is_text(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path).replace('psa_resource: "1"', "psa_resource: 29682885"))
    assert cfg.users[0].psa_resource == "29682885"


def test_disabled_integration_syncs_nobody(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, "enabled: false\n" + base(tmp_path))
    assert cfg.enabled_users() == ()
    assert any("switched off" in w for w in cfg.warnings)


def test_server_identity_and_diff(tmp_path: Path) -> None:
    bob = '  - mailbox: bob@example.com\n    psa_resource: "2"\n    enabled: false\n'
    old = load_ok(tmp_path, base(tmp_path) + bob)
    same = load_ok(tmp_path, base(tmp_path) + bob)
    nothing = diff_configs(old, same)
    assert nothing.empty and server_identity(old) == server_identity(same)

    new_text = base(tmp_path, """\
          - mailbox: Bob@example.com
            psa_resource: "2"
          - mailbox: carol@example.com
            psa_resource: "3"
        sync:
          todos: false
        """)
    new = load_ok(tmp_path, new_text)
    diff = diff_configs(old, new)
    assert diff.added == {"carol@example.com"}
    assert diff.removed == frozenset()
    assert diff.newly_enabled == {"bob@example.com", "carol@example.com"}
    # alice's own entry is unchanged but her effective settings changed (sync.todos)
    assert diff.changed == {"alice@example.com", "bob@example.com"}
    assert not diff.resync_all

    gone = diff_configs(new, old)
    assert gone.removed == {"carol@example.com"} and gone.newly_enabled == frozenset()


@pytest.mark.parametrize(
    ("replace", "by"),
    [
        ("  address: mail.example.com\n", "  address: mail2.example.com\n"),
        ("  address: mail.example.com\n", "  address: mail.example.com\n  virtual_directory: other/EWS\n"),
        ("  address: mail.example.com\n", "  address: mail.example.com\n  version: Exchange2013\n"),
        ("  username: svc\n", "  username: svc\n  domain: OTHER\n"),
    ],
)
def test_server_identity_change_means_resync_all(tmp_path: Path, replace: str, by: str) -> None:
    old = load_ok(tmp_path, base(tmp_path))
    new = load_ok(tmp_path, base(tmp_path).replace(replace, by))
    assert server_identity(old) != server_identity(new)
    assert diff_configs(old, new).resync_all


def test_port_change_is_not_a_server_identity_change(tmp_path: Path) -> None:
    old = load_ok(tmp_path, base(tmp_path))
    new = load_ok(tmp_path, base(tmp_path).replace("  address: mail.example.com\n",
                                                   "  address: mail.example.com\n  port: 8443\n"))
    assert not diff_configs(old, new).resync_all


def test_relative_files_are_relative_to_the_config(tmp_path: Path) -> None:
    write_password(tmp_path)
    text = BASE.format(pw="sync-password")
    path = write_config(tmp_path, text)
    cfg = load_config(path, credentials_dir="")
    assert cfg.credentials.password.get_secret_value() == "s3cret-Pa55"


def test_autotask_psa(tmp_path: Path) -> None:
    secret = tmp_path / "at-secret"
    secret.write_text("AT-SECRET\n")
    secret.chmod(0o600)
    text = base(tmp_path, f"""\
        psa:
          connector: autotask
          username: api@example.com
          secret_file: {secret}
          integration_code: "CODE123"
        """)
    cfg = load_ok(tmp_path, text)
    assert cfg.psa.connector == "autotask"
    assert cfg.psa.secret.get_secret_value() == "AT-SECRET"
    assert cfg.psa.integration_code.get_secret_value() == "CODE123"
    assert cfg.psa.requests_per_hour == 3000
    assert cfg.psa.zone_lookup_url.startswith("https://")
    bad = text.replace("  username: api@example.com\n", "  username: api@example.com\n"
                       "  zone_lookup_url: http://x.example/\n  requests_per_hour: 20000\n")
    found = problems(tmp_path, bad)
    assert one(found, "psa.zone_lookup_url").line == 16
    assert one(found, "psa.requests_per_hour").line == 17


def test_check_problem_render(tmp_path: Path) -> None:
    text = base(tmp_path).replace("sync_interval_minutes: 15", "sync_interval_minutes: 1")
    with pytest.raises(ConfigInvalid) as info:
        load_config(write_config(tmp_path, text), credentials_dir="")
    assert "line 4: sync_interval_minutes: must be >= 10" in str(info.value)


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path, "sync:\nnotifications:\nlogging:\npsa:\n"))
    assert cfg.sync.past_days == 7 and cfg.psa.connector == "sql"


def test_user_time_zone_is_an_iana_name(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path).replace('psa_resource: "1"\n',
                                                  'psa_resource: "1"\n    time_zone: " Europe/Berlin "\n'))
    assert cfg.users[0].time_zone == "Europe/Berlin"
    assert load_ok(tmp_path, base(tmp_path)).users[0].time_zone is None  # the mailbox's own
    for bad, says in (("W. Europe Standard Time", "Windows names"), ("Europe/Berln", "Europe/Berlin"),
                      ("localtime", "IANA"), ("../etc/passwd", "IANA")):
        text = base(tmp_path).replace('psa_resource: "1"\n', f'psa_resource: "1"\n    time_zone: "{bad}"\n')
        problem = one(problems(tmp_path, text), "users[0].time_zone")
        assert says in problem.message and problem.line == 13, problem.render()


def test_reminder_minutes_defaults_and_per_user_kinds(tmp_path: Path) -> None:
    cfg = load_ok(tmp_path, base(tmp_path))
    r = cfg.sync.reminder_minutes
    assert (r.appointments, r.service_calls, r.todos) == (15, 15, None)  # Outlook's defaults
    text = base(tmp_path, "sync:\n  reminder_minutes:\n    appointments: 30\n    todos: 60\n").replace(
        'psa_resource: "1"\n', 'psa_resource: "1"\n    settings:\n      reminder_minutes:\n'
                               '        appointments: null\n')
    cfg = load_ok(tmp_path, text)
    mine = cfg.effective_sync(cfg.users[0]).reminder_minutes
    assert (mine.appointments, mine.service_calls, mine.todos) == (None, 15, 60)  # only the kind given
    bad = base(tmp_path, "sync:\n  reminder_minutes:\n    todos: -5\n")
    assert ">= 0" in one(problems(tmp_path, bad), "sync.reminder_minutes.todos").message
