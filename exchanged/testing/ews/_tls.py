"""Moved to exchanged.testing.tls (shared with the Autotask test server); kept for old imports."""

from ..tls import ca_adapter_class

__all__ = ["ca_adapter_class"]
