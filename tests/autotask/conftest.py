"""Fixtures: the Autotask test server in-process (real HTTPS on loopback) and connectors to it."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exchanged.model import Window
from exchanged.psa.autotask import AutotaskConnector, open_autotask
from exchanged.testing.autotask import AutotaskServer

USER, SECRET, CODE = "api@example.test", "S3cr3t-value", "INTEGRATION-CODE-1"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = Window(now=NOW, past_start=NOW - timedelta(days=7), recurring_end=NOW + timedelta(days=30))


def t(days: float = 0, hours: float = 0) -> str:
    return (NOW + timedelta(days=days, hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PsaCfg:
    """Duck-typed stand-in for config.AutotaskPsaConfig."""

    username: str
    secret: str
    integration_code: str
    zone_lookup_url: str
    requests_per_hour: int = 3000
    ca_bundle: str | None = None
    connector: str = "autotask"
    secret_file: str | None = None
    integration_code_file: str | None = None


def base_seed() -> dict[str, list[dict[str, Any]]]:
    return {
        "Resources": [
            {
                "id": 29682885,
                "email": "jdoe@example.test",
                "firstName": "Jane",
                "lastName": "Doe",
                "isActive": True,
                "userName": "jdoe",
            },
            {
                "id": 29682886,
                "email": "bob@example.test",
                "firstName": "Bob",
                "lastName": "Roe",
                "isActive": True,
                "userName": "bob",
            },
            {
                "id": 29682887,
                "email": "gone@example.test",
                "firstName": "Old",
                "lastName": "Timer",
                "isActive": False,
                "userName": "old",
            },
            {
                "id": 29682800,
                "email": USER,
                "firstName": "API",
                "lastName": "User",
                "isActive": True,
                "userName": USER,
            },
        ],
        "Companies": [
            {"id": 1, "companyName": "Contoso", "companyType": 1, "ownerResourceID": 29682885, "phone": "1"},
            {"id": 2, "companyName": "Fabrikam", "companyType": 1, "ownerResourceID": 29682886, "phone": "2"},
        ],
    }


def api_call(
    server: AutotaskServer,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: tuple[str, str, str] | None = (USER, SECRET, CODE),
) -> tuple[int, Any]:
    """A raw HTTPS call to the test server (for the server's own contract tests)."""
    url = path if "://" in path else server.url + path
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("UserName", auth[0])
        req.add_header("Secret", auth[1])
        req.add_header("ApiIntegrationCode", auth[2])
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


@pytest.fixture
def server() -> Iterator[AutotaskServer]:
    with AutotaskServer(api_user=(USER, SECRET, CODE), seed=base_seed()) as srv:
        yield srv


def make_connector(server: AutotaskServer, **kw: Any) -> AutotaskConnector:
    per_hour = kw.pop("requests_per_hour", 3000)
    cfg = PsaCfg(
        username=USER,
        secret=SECRET,
        integration_code=CODE,
        zone_lookup_url=server.url,
        ca_bundle=str(server.ca_file),
        requests_per_hour=per_hour,
    )
    kw.setdefault("retry_base_s", 0.01)
    kw.setdefault("retry_cap_s", 0.05)
    return open_autotask(cfg, **kw)


@pytest.fixture
def connector(server: AutotaskServer) -> AutotaskConnector:
    return make_connector(server)
