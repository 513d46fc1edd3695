"""TLS of the test servers (EWS and Autotask): their own CA, the server's certificate, the server-side
SSL context, and a requests adapter that makes exchangelib trust that CA.

The CA and the server's cert+key are created once under the server's state directory and kept there,
so a client configured with ``ca.pem`` keeps trusting the server across restarts. The certificate
names ``localhost``, ``127.0.0.1`` and ``::1``.
"""

from __future__ import annotations

import fcntl
import os
import ssl
from pathlib import Path
from typing import Any

import requests.adapters

from exchanged.testing import testing_extra_missing

try:
    import trustme
except ModuleNotFoundError as exc:
    raise testing_extra_missing(exc) from None


def load_or_create_tls(state_dir: Path, organization: str) -> tuple[Path, Path]:
    """``ca.pem`` and ``server.pem`` (cert chain and key) under state_dir, created on first use.

    ``organization`` names the CA (e.g. "exchanged EWS test server"); it only matters on creation.
    """
    ca_cert, ca_key, server_pem = state_dir / "ca.pem", state_dir / "ca.key", state_dir / "server.pem"
    # Two test servers (EWS and Graph) may start on one state dir at once: one creates, the other
    # waits and loads the same files.
    with open(state_dir / ".tls.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ca_cert.exists() and ca_key.exists() and server_pem.exists():
            return ca_cert, server_pem
        return _create_tls(ca_cert, ca_key, server_pem, organization)


def _create_tls(ca_cert: Path, ca_key: Path, server_pem: Path, organization: str) -> tuple[Path, Path]:
    ca = trustme.CA(organization_name=organization)
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(ca_cert))
    ca.private_key_pem.write_to_path(str(ca_key))
    os.chmod(ca_key, 0o600)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    os.chmod(server_pem, 0o600)
    return ca_cert, server_pem


def server_tls(state_dir: Path, organization: str) -> tuple[Path, ssl.SSLContext]:
    """The CA file clients trust and the server-side context (TLS 1.2 or later) of a test server."""
    ca_file, server_pem = load_or_create_tls(state_dir, organization)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(server_pem))
    return ca_file, context


def ca_adapter_class(ca_file: str) -> type[requests.adapters.HTTPAdapter]:
    """A requests HTTPAdapter that verifies the server against ``ca_file`` (for exchangelib).

    requests replaces ``verify=True`` by $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE when those are set, so
    the adapter substitutes the CA file for any verifying value; ``verify=False`` stays False.
    """

    class CaFileAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("verify", True) is not False:
                kwargs["verify"] = ca_file
            return super().send(request, *args, **kwargs)

    return CaFileAdapter
