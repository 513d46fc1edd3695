"""An EWS server that the real exchangelib client talks to as to Exchange 2016 on-premises.

Used by the exchange adapter's tests, the end-to-end sync tests and `exchanged demo`.
See docs/TEST_SERVER.md and the README.md next to this file.
"""

from ..tls import ca_adapter_class
from .server import DEFAULT_PASSWORD, EWS_PATH, EwsTestServer

__all__ = ["DEFAULT_PASSWORD", "EWS_PATH", "EwsTestServer", "ca_adapter_class"]
