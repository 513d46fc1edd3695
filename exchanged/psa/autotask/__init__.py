"""The ``autotask`` PSA connector (SPEC sections 1 and 3; docs/AUTOTASK.md).

``open_autotask(psa_cfg)`` builds an ``AutotaskConnector`` (``ports.PsaConnector`` plus
``budget_status()`` and ``check()``); ``check(psa_cfg, psa_resources)`` is the
``check-config --connect`` part.
"""

from .api import AutotaskApi, Credentials, credentials_from
from .budget import RequestBudget
from .connector import AutotaskConnector, check, open_autotask

__all__ = [
    "AutotaskApi",
    "AutotaskConnector",
    "Credentials",
    "RequestBudget",
    "check",
    "credentials_from",
    "open_autotask",
]
