"""A Microsoft Graph v1.0 server (with the identity platform's token endpoint) on the EWS test
server's mailbox store: the Graph adapter's tests, the EWS -> Graph migration test, benchmarks.

See docs/TEST_SERVER.md ("Graph test server") and exchanged/testing/graph/__main__.py.
"""

from .auth import DEFAULT_PERMISSIONS, Client, load_certificate
from .server import GraphTestServer

__all__ = ["DEFAULT_PERMISSIONS", "Client", "GraphTestServer", "load_certificate"]
