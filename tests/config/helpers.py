"""Shared helpers for the config tests: write YAML, load it, collect problems."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from exchanged.config import Config, load_config
from exchanged.errors import ConfigInvalid, ConfigProblem

# line numbers matter in these tests: keep this document's shape stable
BASE = """\
profile_name: Test
server:
  address: mail.example.com
sync_interval_minutes: 15
credentials:
  username: svc
  password_file: {pw}
control:
  group: null
users:
  - mailbox: alice@example.com
    psa_resource: "1"
"""


def write_password(tmp_path: Path, value: str = "s3cret-Pa55", mode: int = 0o600) -> Path:
    path = tmp_path / "sync-password"
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def write_config(tmp_path: Path, text: str, name: str = "exchanged.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def base(tmp_path: Path, extra: str = "") -> str:
    pw = write_password(tmp_path)
    return BASE.format(pw=pw) + textwrap.dedent(extra)


def load_ok(tmp_path: Path, text: str) -> Config:
    return load_config(write_config(tmp_path, text), credentials_dir="")


def problems(tmp_path: Path, text: str, credentials_dir: str | None = "") -> list[ConfigProblem]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigInvalid) as info:
        load_config(path, credentials_dir=credentials_dir)
    assert info.value.path == str(path)
    return info.value.problems


def one(found: list[ConfigProblem], path: str) -> ConfigProblem:
    matching = [p for p in found if p.path == path]
    assert len(matching) == 1, f"expected one problem at {path}, got {[p.render() for p in found]}"
    return matching[0]
