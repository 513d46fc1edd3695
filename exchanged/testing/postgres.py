"""A throw-away PostgreSQL server for the tests and the benchmarks.

``throwaway_postgres()`` starts one from Debian's ``postgresql`` binaries on a free loopback port
(as the ``postgres`` user when run as root, since initdb refuses root), yields its URL and stops
and removes it on exit. Tuned for tests (no fsync); never for data anyone keeps. When it cannot
start, it raises ``PostgresUnavailable`` with the reason, so that a test can be skipped saying it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(Exception):
    """No PostgreSQL could be started here; the message says why and what to install or set."""


def free_port() -> int:
    """A loopback port nothing listens on now (for a server to take, or a client to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A running server's URL (``postgresql://postgres@127.0.0.1:PORT/postgres``, trust auth)."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        raise PostgresUnavailable("no PostgreSQL binaries: install the postgresql package")
    bindir = os.path.dirname(initdbs[-1])
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="exchanged-pg-"))
    started = False
    try:
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run initdb as") from None
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
            os.chmod(tmp, 0o700)
            as_user = ["runuser", "-u", "postgres", "--"]
        data = tmp / "data"
        init = subprocess.run([*as_user, f"{bindir}/initdb", "-D", str(data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"],
                              capture_output=True, text=True, check=False)
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.strip()[:300]}")
        log = tmp / "server.log"
        for attempt in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off")
            start = subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(data), "-o", opts, "-w",
                                    "-l", str(log), "start"], capture_output=True, text=True, check=False)
            if start.returncode == 0:
                break
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            if attempt == 2 or "could not bind" not in tail:
                raise PostgresUnavailable(f"pg_ctl start failed: {start.stderr.strip()[:300]} {tail}")
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", str(tmp / "data"), "-m", "immediate",
                            "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
