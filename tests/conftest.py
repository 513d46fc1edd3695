"""Project-wide fixtures: a real PostgreSQL for the tests marked ``postgres``; an SMTP sink.

``pg_server`` (session): ``EXCHANGED_TEST_PG_URL`` when set; otherwise a throw-away server started
from Debian's ``postgresql`` binaries on a free loopback port (as the ``postgres`` user when the
tests run as root, since initdb refuses root), stopped at the end of the session; otherwise the
tests that need it are skipped with the reason.

``pg_url`` (per test): a fresh schema in that server, named in the URL's ``search_path``, so every
test starts empty without the cost of a CREATE DATABASE; ``fresh_schema(server)`` is the same as a
context manager, for other scopes (a module sharing one schema).

``smtp`` (per test): the shipped SMTP sink (``exchanged.testing.smtp.SmtpSink``), started.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from exchanged.testing.smtp import SmtpSink

PG_ENV = "EXCHANGED_TEST_PG_URL"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_local_postgres() -> tuple[str, Path, list[str], str]:
    """Start a throw-away server; returns (url, temp dir, command prefix to run as its owner, bin dir)."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.skip(f"no PostgreSQL: set {PG_ENV} or install the postgresql package")
    bindir = os.path.dirname(initdbs[-1])
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="exchanged-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip(f"running as root and there is no 'postgres' user to run initdb as; set {PG_ENV}")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(tmp, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = tmp / "data"
    port = _free_port()
    init = subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
                          capture_output=True, text=True, check=False)
    if init.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[:300]}")
    opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off")
    start = subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-w",
                            "-l", str(tmp / "server.log"), "start"], capture_output=True, text=True,
                           check=False)
    if start.returncode != 0:
        log = (tmp / "server.log").read_text(errors="replace")[-500:] if (tmp / "server.log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {start.stderr.strip()[:300]} {log}")
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", tmp, as_user, bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL URL for the whole session (see the module docstring)."""
    given = os.environ.get(PG_ENV)
    if given:
        yield given
        return
    url, tmp, as_user, bindir = _start_local_postgres()
    try:
        yield url
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(tmp / "data"), "-m", "immediate", "-w",
                        "stop"], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-c search_path={schema}')}"


@contextmanager
def fresh_schema(server: str) -> Iterator[str]:
    """A URL on ``server`` whose search path is a new, empty schema; the schema is dropped on exit."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _with_search_path(server, schema)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL whose search path is a fresh, empty schema (dropped after the test)."""
    with fresh_schema(pg_server) as url:
        yield url


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    """The shipped SMTP sink on loopback (a free port), stopped after the test."""
    from exchanged.testing.smtp import SmtpSink

    with SmtpSink() as sink:
        yield sink
