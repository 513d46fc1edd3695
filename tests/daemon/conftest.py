from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exchanged.testing.smtp import SmtpSink
from tests.daemon.harness import DaemonEnv, NotifySocket


@pytest.fixture
def daemon_env(tmp_path: Path, smtp: SmtpSink) -> Iterator[DaemonEnv]:
    # short base path: Unix socket paths are limited to 107 bytes; smtp: tests/conftest.py
    notify = NotifySocket(tmp_path / "notify.sock")
    env = DaemonEnv(base=tmp_path, smtp=smtp, notify=notify)
    yield env
    env.kill()
    notify.close()
