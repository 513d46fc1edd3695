"""An Autotask REST API test server (SPEC section 8): ``AutotaskServer``, ``Store``."""

from .server import AutotaskServer, Faults
from .store import Store

__all__ = ["AutotaskServer", "Faults", "Store"]
