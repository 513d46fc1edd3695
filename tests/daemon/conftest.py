from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.harness import DaemonEnv, NotifySocket, SmtpSink


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    yield sink
    sink.stop()


@pytest.fixture
def daemon_env(tmp_path: Path, smtp: SmtpSink) -> Iterator[DaemonEnv]:
    # short base path: Unix socket paths are limited to 107 bytes
    notify = NotifySocket(tmp_path / "notify.sock")
    env = DaemonEnv(base=tmp_path, smtp=smtp, notify=notify)
    yield env
    env.kill()
    notify.close()
