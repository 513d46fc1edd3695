"""The pure sync engine: settings, window, per-kind rules, and ``plan()``.

Imports only the standard library and ``exchanged.model``: no trio, exchangelib, SQL or logging.
The runner (``exchanged.sync``) carries plans out through the ports.
"""

from .actions import (
    Action,
    Adopt,
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    Finding,
    Forget,
    Plan,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    describe,
)
from .planner import plan, stable_until
from .rules import BUSY_SUBJECT, FLOW_BACK, PRIVATE_SUBJECT, import_skip_reason, in_scope, render_import
from .settings import ReminderMinutes, UserSettings, UserSpec, enabled_kinds, window

__all__ = [
    "BUSY_SUBJECT",
    "FLOW_BACK",
    "PRIVATE_SUBJECT",
    "Action",
    "Adopt",
    "ExchangeCreate",
    "ExchangeDelete",
    "ExchangeUpdate",
    "Finding",
    "Forget",
    "Plan",
    "PsaCreate",
    "PsaDelete",
    "PsaUpdate",
    "ReminderMinutes",
    "UserSettings",
    "UserSpec",
    "describe",
    "enabled_kinds",
    "import_skip_reason",
    "in_scope",
    "plan",
    "render_import",
    "stable_until",
    "window",
]
