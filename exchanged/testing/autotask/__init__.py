"""An Autotask REST API test server (SPEC section 8): ``AutotaskServer``, ``Store``."""

from .psa import AutotaskPsaData
from .server import AutotaskServer, Faults
from .store import Store

__all__ = ["AutotaskPsaData", "AutotaskServer", "Faults", "Store"]
