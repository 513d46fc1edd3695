"""Password sources, file permissions, systemd credentials, and secrets never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exchanged.config import load_config
from exchanged.errors import ConfigInvalid
from tests.config.helpers import BASE, base, load_ok, one, problems, write_config, write_password

SECRET = "Very-Secret-Value-42"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    pw = write_password(tmp_path, SECRET, mode)
    found = one(problems(tmp_path, BASE.format(pw=pw)), "credentials.password_file")
    assert found.line == 7
    assert f"chmod 600 {pw}" in found.message
    assert SECRET not in found.message


def test_password_file_600_and_400_accepted(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        pw = write_password(tmp_path, SECRET, mode)
        cfg = load_ok(tmp_path, BASE.format(pw=pw))
        assert cfg.credentials.password.get_secret_value() == SECRET
        pw.chmod(0o600)


def test_password_file_missing_or_empty(tmp_path: Path) -> None:
    found = one(problems(tmp_path, BASE.format(pw=tmp_path / "absent")), "credentials.password_file")
    assert "does not exist" in found.message
    pw = write_password(tmp_path, "")
    found = one(problems(tmp_path, BASE.format(pw=pw)), "credentials.password_file")
    assert "is empty" in found.message


def test_password_file_keeps_spaces_and_drops_only_the_newline(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("  spaced pass \r\n")
    pw.chmod(0o600)
    cfg = load_ok(tmp_path, BASE.format(pw=pw))
    assert cfg.credentials.password.get_secret_value() == "  spaced pass "


def test_exactly_one_source(tmp_path: Path) -> None:
    pw = write_password(tmp_path)
    both = BASE.format(pw=pw).replace("  username: svc\n", '  username: svc\n  password: "x"\n')
    found = one(problems(tmp_path, both), "credentials.password")
    assert "not both" in found.message


def test_no_source_without_credentials_directory(tmp_path: Path) -> None:
    text = BASE.replace("  password_file: {pw}\n", "")
    found = one(problems(tmp_path, text, credentials_dir=""), "credentials.password_file")
    assert "LoadCredential=sync-password" in found.message


def test_systemd_credential_is_used_when_no_key_is_given(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sync-password").write_text(SECRET)
    text = BASE.replace("  password_file: {pw}\n", "")
    cfg = load_config(write_config(tmp_path, text), credentials_dir=str(creds))
    assert cfg.credentials.password.get_secret_value() == SECRET


def test_secret_beside_the_config_outside_systemd(tmp_path: Path) -> None:
    """`exchanged check-config` run by root reads the file that LoadCredential= would pass."""
    text = BASE.replace("  password_file: {pw}\n", "")
    write_password(tmp_path, SECRET)  # tmp_path/sync-password, 0600
    cfg = load_config(write_config(tmp_path, text), credentials_dir="")
    assert cfg.credentials.password.get_secret_value() == SECRET
    (tmp_path / "sync-password").chmod(0o644)
    found = one(problems(tmp_path, text), "credentials.password_file")
    assert "chmod 600" in found.message


def test_credentials_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sync-password").write_text(SECRET + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_config(write_config(tmp_path, BASE.replace("  password_file: {pw}\n", "")))
    assert cfg.credentials.password.get_secret_value() == SECRET
    (creds / "sync-password").unlink()
    with pytest.raises(ConfigInvalid) as info:
        load_config(write_config(tmp_path, BASE.replace("  password_file: {pw}\n", "")))
    assert "LoadCredential" in info.value.problems[0].message
    assert str(creds) in info.value.problems[0].message


def test_unquoted_numeric_password_is_refused_without_echo(tmp_path: Path) -> None:
    text = BASE.replace("  password_file: {pw}\n", "  password: 0123456\n")
    found = one(problems(tmp_path, text), "credentials.password")
    assert "quoted" in found.message and "0123456" not in found.message and "42798" not in found.message


def test_wrong_type_password_is_not_echoed(tmp_path: Path) -> None:
    text = BASE.replace("  password_file: {pw}\n", f"  password: [{SECRET}]\n")
    found = problems(tmp_path, text)
    assert all(SECRET not in p.message for p in found)


def test_autotask_credentials_from_systemd(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "autotask-secret").write_text("AT-" + SECRET)
    (creds / "autotask-integration-code").write_text("CODE-" + SECRET)
    text = base(tmp_path, "psa:\n  connector: autotask\n  username: api@example.com\n")
    cfg = load_config(write_config(tmp_path, text), credentials_dir=str(creds))
    assert cfg.psa.connector == "autotask"
    assert cfg.psa.secret.get_secret_value() == "AT-" + SECRET
    assert cfg.psa.integration_code.get_secret_value() == "CODE-" + SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)


def test_autotask_secret_file_permissions(tmp_path: Path) -> None:
    secret = tmp_path / "at"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    text = base(tmp_path, f"psa:\n  connector: autotask\n  username: u\n  secret_file: {secret}\n"
                          "  integration_code: c\n")
    found = one(problems(tmp_path, text), "psa.secret_file")
    assert found.line == 16 and "chmod 600" in found.message


def test_secret_never_in_repr_str_dump_or_json(tmp_path: Path) -> None:
    pw = write_password(tmp_path, SECRET)
    cfg = load_ok(tmp_path, BASE.format(pw=pw))
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert SECRET not in cfg.model_dump_json()
    assert "**********" in repr(cfg.credentials)


def test_secret_never_in_errors(tmp_path: Path) -> None:
    text = BASE.replace("  password_file: {pw}\n", f'  password: "{SECRET}"\n') + "  - mailbox: broken\n"
    with pytest.raises(ConfigInvalid) as info:
        load_config(write_config(tmp_path, text), credentials_dir="")
    assert SECRET not in str(info.value)
    assert all(SECRET not in p.render() for p in info.value.problems)


def test_per_user_credentials(tmp_path: Path) -> None:
    text = base(tmp_path).replace("  username: svc\n", "  username: svc\n  use_for_all_users: false\n")
    found = one(problems(tmp_path, text), "users[0]")
    assert found.line == 12 and "password_file or password" in found.message
    own = tmp_path / "alice-pw"
    own.write_text(SECRET)
    own.chmod(0o600)
    ok = text.replace('    psa_resource: "1"\n', f'    psa_resource: "1"\n    password_file: {own}\n')
    cfg = load_ok(tmp_path, ok)
    user = cfg.users[0]
    assert user.password is not None and user.password.get_secret_value() == SECRET
    assert user.login == "alice@example.com"
    assert SECRET not in repr(cfg)


def test_account_name(tmp_path: Path) -> None:
    text = base(tmp_path).replace("  username: svc\n", "  username: svc\n  domain: CONTOSO\n")
    cfg = load_ok(tmp_path, text)
    assert cfg.credentials.account_name() == "CONTOSO\\svc"
    cfg = load_ok(tmp_path, base(tmp_path).replace("  username: svc\n", "  username: svc@contoso.com\n"))
    assert cfg.credentials.account_name() == "svc@contoso.com"


def test_unreadable_config_as_non_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file; permission refusal cannot be shown as root")
    path = write_config(tmp_path, base(tmp_path))
    path.chmod(0)
    with pytest.raises(ConfigInvalid) as info:
        load_config(path)
    assert "permission denied" in info.value.problems[0].message


def test_a_password_typed_into_password_file_is_never_echoed(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #14: a password typed into password_file was shown as a path in check-config, status,
    the error mail and the log."""
    from exchanged import cli

    typed = "Hunter2-typed-in-the-wrong-key"
    text = BASE.format(pw=typed)
    found = one(problems(tmp_path, text), "credentials.password_file")
    assert typed not in found.message and "not shown" in found.message
    config = write_config(tmp_path, text)
    rc = cli.main(["check-config", "--config", str(config)])
    out = capsys.readouterr()
    assert rc == 1 and "credentials.password_file" in out.out + out.err
    assert typed not in out.out + out.err


def test_a_database_password_in_the_config_is_a_warning_pointing_to_libpq(tmp_path: Path) -> None:
    """Issue #14: database passwords could only live in exchanged.yaml, readable by every
    exchangectl user, without a warning. libpq's .pgpass / PGPASSFILE / service files keep them out."""
    pw = write_password(tmp_path)
    text = BASE.format(pw=pw) + ("state:\n  url: postgresql://sync:Db-Secret-99@db.example.test/x\n"
                                 "psa:\n  connector: sql\n"
                                 "  url: postgresql://psa@db.example.test/p?sslpassword=Key-Pass-77\n")
    cfg = load_ok(tmp_path, text)
    warnings = [w for w in cfg.warnings if "the database password is in the config file" in w]
    assert len(warnings) == 2, cfg.warnings
    assert all("Db-Secret-99" not in w and "Key-Pass-77" not in w for w in cfg.warnings)
    clean = BASE.format(pw=pw) + "state:\n  url: postgresql://sync@db.example.test/x\n"
    assert not [w for w in load_ok(tmp_path, clean).warnings if "database password" in w]
