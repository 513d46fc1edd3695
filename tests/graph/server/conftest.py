"""The Graph test server over real TLS, driven with httpx and MSAL as the adapter drives it."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msal
import pytest
import requests

from exchanged.testing.graph import Client, GraphTestServer
from exchanged.testing.graph.fixtures import CLIENT_ID, MAILBOXES, SECRET, TENANT, start_server
from exchanged.testing.tls import ca_adapter_class

# re-exported for the test modules
__all__ = [
    "CLIENT_ID",
    "MAILBOXES",
    "SECRET",
    "TENANT",
    "Client",
    "Graph",
    "http_client",
    "msal_app",
    "start_graph",
]

PSA_KEY = "String {8f4b6d2e-3c1a-4e7b-9a5d-2f6c8b1e7d34} Name exchanged-psa-key"


def msal_session(ca_file: str) -> requests.Session:
    session = requests.Session()
    session.mount("https://", ca_adapter_class(ca_file)())
    return session


def msal_app(server: GraphTestServer, secret: str = SECRET, client_id: str = CLIENT_ID, **kwargs: Any) -> Any:
    """MSAL as the adapter configures it: no instance discovery at login.microsoftonline.com."""
    kwargs.setdefault("instance_discovery", False)
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=kwargs.pop("client_credential", secret),
        authority=f"{server.login_url}/{server.tenant}",
        http_client=msal_session(server.ca_file),
        **kwargs,
    )


@dataclass
class Graph:
    """An httpx client with a bearer token, for the Graph front end."""

    server: GraphTestServer
    http: httpx.Client
    token: str

    def __call__(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        url = path if path.startswith("https://") else f"{self.server.url}/v1.0{path}"
        return self.http.request(method, url, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self("DELETE", path, **kwargs)

    def all_pages(self, path: str, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
        """Every item of a delta round (following nextLinks) and the deltaLink."""
        items: list[dict[str, Any]] = []
        url = path
        while True:
            r = self.get(url, **kwargs)
            assert r.status_code == 200, r.text
            body = r.json()
            items.extend(body["value"])
            if "@odata.nextLink" in body:
                url = body["@odata.nextLink"]
                continue
            return items, body.get("@odata.deltaLink", "")


def start_graph(state_dir: Path, **kwargs: Any) -> GraphTestServer:
    return start_server(state_dir, **kwargs)


def http_client(ca_file: str) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=ca_file), timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GraphTestServer]:
    srv = start_graph(tmp_path / "state")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def graph(server: GraphTestServer) -> Iterator[Graph]:
    result = msal_app(server).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    with http_client(server.ca_file) as http:
        yield Graph(server, http, result["access_token"])
