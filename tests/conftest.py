"""Project-wide fixtures: a real PostgreSQL for the tests marked ``postgres``; an SMTP sink.

``pg_server`` (session): ``EXCHANGED_TEST_PG_URL`` when set; otherwise a throw-away server
(``exchanged.testing.postgres``, Debian's ``postgresql`` binaries on a free loopback port), stopped
at the end of the session; otherwise the tests that need it are skipped with the reason (under CI,
``CI=true``, they fail instead: .ci/run installs PostgreSQL).

``pg_url`` (per test): a fresh schema in that server, named in the URL's ``search_path``, so every
test starts empty without the cost of a CREATE DATABASE; ``fresh_schema(server)`` is the same as a
context manager, for other scopes (a module sharing one schema).

``smtp`` (per test): the shipped SMTP sink (``exchanged.testing.smtp.SmtpSink``), started.

After every test, exchangelib's process-wide protocol cache is emptied (``_forget_exchangelib_protocols``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from exchanged.testing.smtp import SmtpSink

PG_ENV = "EXCHANGED_TEST_PG_URL"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL URL for the whole session (see the module docstring)."""
    given = os.environ.get(PG_ENV)
    if given:
        yield given
        return
    from exchanged.testing.postgres import PostgresUnavailable, throwaway_postgres

    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_postgres())
        except PostgresUnavailable as e:
            if os.environ.get("CI") == "true":  # .ci/run installs it: a skip would hide lost coverage
                pytest.fail(f"PostgreSQL cannot start in CI: {e}")
            pytest.skip(f"{e}; or set {PG_ENV}")
        yield url


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


@pytest.fixture(autouse=True)
def _forget_exchangelib_protocols() -> Iterator[None]:
    """exchangelib caches one Protocol (with its pooled sessions) per endpoint URL and credentials
    for the whole process; test servers listen on random ports with a CA each, so a later server
    on a port an earlier one had would get the earlier server's sessions. Forgotten after each test
    (not closed: a thread a test left behind may still hold a session)."""
    yield
    from exchangelib.protocol import CachingProtocol

    with CachingProtocol._protocol_cache_lock:
        CachingProtocol._protocol_cache.clear()
