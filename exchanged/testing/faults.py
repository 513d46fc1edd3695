"""The fault switches of the test servers (POST /__emulator/faults on the EWS and Autotask servers)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class FaultSwitches:
    """Base of a test server's ``Faults`` dataclass; its fields are the switches.

    ``update`` checks every value before it sets any, so a refused update changes nothing. A switch
    is a non-negative integer unless the subclass's ``check`` allows something else.
    """

    def update(self, values: Any) -> None:
        if not isinstance(values, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault switch {key!r}; known: {sorted(known)}")
            self.check(key, value)
        for key, value in values.items():
            setattr(self, key, value)

    def check(self, key: str, value: Any) -> None:
        """Raise ValueError when ``value`` is not one ``key`` takes."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"fault switch {key!r} must be a non-negative integer, got {value!r}")
