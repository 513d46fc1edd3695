"""FindItem restrictions and sort orders, evaluated against an item's full view.

Values compare by the type both sides parse as (date-time, boolean, number, then text without
regard to case, as Exchange compares strings). A multi-valued property matches when any value does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from .items import values_at
from .soap import EwsError, local, parse_dt, t

Element = Any

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "IsEqualTo": lambda a, b: a == b,
    "IsNotEqualTo": lambda a, b: a != b,
    "IsGreaterThan": lambda a, b: a > b,
    "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
    "IsLessThan": lambda a, b: a < b,
    "IsLessThanOrEqualTo": lambda a, b: a <= b,
}


def _typed(a: str, b: str) -> tuple[Any, Any]:
    if len(a) >= 10 and len(b) >= 10 and a[4:5] == "-" and b[4:5] == "-":
        da, db = parse_dt(a), parse_dt(b)
        if da is not None and db is not None:
            return da, db
    if a.lower() in ("true", "false") and b.lower() in ("true", "false"):
        return a.lower() == "true", b.lower() == "true"
    try:
        return float(a), float(b)
    except ValueError:
        return a.lower(), b.lower()


def _constant(elem: Element) -> str:
    holder = elem.find(t("FieldURIOrConstant"))
    const = (holder if holder is not None else elem).find(t("Constant"))
    if const is None:
        raise EwsError("ErrorInvalidRestriction", f"{local(elem.tag)} needs a Constant to compare with.")
    return const.get("Value", "")


def _path(elem: Element) -> Element:
    for c in elem:
        if local(c.tag) in ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI"):
            return c
    raise EwsError("ErrorInvalidRestriction", f"{local(elem.tag)} needs a property path.")


def matches(cond: Element, full: Element) -> bool:
    name = local(cond.tag)
    if name == "And":
        return all(matches(c, full) for c in cond if isinstance(c.tag, str))
    if name == "Or":
        return any(matches(c, full) for c in cond if isinstance(c.tag, str))
    if name == "Not":
        inner = [c for c in cond if isinstance(c.tag, str)]
        return not matches(inner[0], full) if inner else True
    if name == "Exists":
        return bool(values_at(full, _path(cond)))
    if name in _COMPARE:
        constant = _constant(cond)
        values = values_at(full, _path(cond))
        if name == "IsNotEqualTo":
            return all(_COMPARE[name](*_typed(v, constant)) for v in values)
        return any(_COMPARE[name](*_typed(v, constant)) for v in values)
    if name == "Contains":
        return _contains(cond, full)
    if name == "Excludes":
        mask = int(cond.find(t("Bitmask")).get("Value", "0"), 0) if cond.find(t("Bitmask")) is not None else 0
        return all((int(v or 0) & mask) == 0 for v in values_at(full, _path(cond)))
    raise EwsError("ErrorInvalidRestriction", f"Restriction element {name} is not supported.")


def _contains(cond: Element, full: Element) -> bool:
    const = cond.find(t("Constant"))
    needle = const.get("Value", "") if const is not None else ""
    mode = cond.get("ContainmentMode", "Substring")
    comparison = cond.get("ContainmentComparison", "Exact")
    if comparison != "Exact":
        needle = needle.lower()
    for value in values_at(full, _path(cond)):
        hay = value if comparison == "Exact" else value.lower()
        if mode == "FullString" and hay == needle:
            return True
        if mode == "Prefixed" and hay.startswith(needle):
            return True
        if mode in ("Substring", "ExactPhrase") and needle in hay:
            return True
        if mode == "PrefixOnWords" and any(w.startswith(needle) for w in hay.split()):
            return True
    return False


_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)


def sort_key(order: Element) -> Callable[[Element], Any]:
    path = _path(order)

    def key(full: Element) -> Any:
        values = values_at(full, path)
        if not values:
            return (0, "")
        v = values[0]
        parsed = parse_dt(v) if len(v) >= 10 and v[4:5] == "-" else None
        if parsed is not None:
            return (1, parsed.timestamp())
        try:
            return (1, float(v))
        except ValueError:
            return (2, v.lower())

    return key


def apply_sort(fulls: list[Element], sort_order: Element | None) -> list[Element]:
    if sort_order is None:
        return fulls
    # FieldOrders come most significant first; stable sorts applied in reverse achieve that.
    for order in reversed([o for o in sort_order if local(o.tag) == "FieldOrder"]):
        fulls = sorted(fulls, key=sort_key(order), reverse=order.get("Order", "Ascending") == "Descending")
    return fulls
