"""OData query options the Graph test server understands: $filter on extended properties (and a
few plain fields), $expand with a nested $filter, $select, and the Prefer header.

Graph accepts on Outlook items, for extended properties, exactly the documented forms:
``singleValueExtendedProperties/Any(ep: ep/id eq 'String {GUID} Name X' and ep/value eq 'v')``
(``ne`` and ``null`` allowed for the value), combined with ``and`` / ``or`` / parentheses, and
``$expand=singleValueExtendedProperties($filter=id eq '...' or id eq '...')``. Anything else is a
400 with the message Graph gives for an unsupported filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .convert import GraphError, extended_properties, parse_property_id

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[():,])|(?P<word>[A-Za-z_$@][\w/.$@-]*)|(?P<num>-?\d+))"
)

Item = Any  # the stored item element a predicate looks at
Predicate = Callable[[Item], bool]


def _invalid(text: str, why: str) -> GraphError:
    return GraphError(400, "BadRequest", f"Invalid filter clause: {why} (in '{text}').")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _invalid(text, f"unexpected character at position {pos}")
        pos = m.end()
        for kind in ("str", "punct", "word", "num"):
            if m.group(kind) is not None:
                value = m.group(kind)
                if kind == "str":
                    value = value[1:-1].replace("''", "'")
                out.append((kind, value))
                break
    return out


class _Parser:
    def __init__(self, text: str, fields: dict[str, Callable[[Item], str | None]]) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0
        self.fields = fields
        self.saw_id = False

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (kind and tok[0] != kind) or (value and tok[1].lower() != value.lower()):
            raise _invalid(self.text, f"expected {value or kind}")
        self.pos += 1
        return tok[1]

    def at_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "word" and tok[1].lower() in words

    def parse(self) -> Predicate:
        pred = self.expr(inner_var=None)
        if self.peek() is not None:
            raise _invalid(self.text, f"unexpected '{self.peek()[1]}'")  # type: ignore[index]
        return pred

    def expr(self, inner_var: str | None) -> Predicate:
        left = self.conj(inner_var)
        while self.at_word("or"):
            self.take()
            right = self.conj(inner_var)
            left = _or(left, right)
        return left

    def conj(self, inner_var: str | None) -> Predicate:
        left = self.term(inner_var)
        while self.at_word("and"):
            self.take()
            right = self.term(inner_var)
            left = _and(left, right)
        return left

    def term(self, inner_var: str | None) -> Predicate:
        tok = self.peek()
        if tok == ("punct", "("):
            self.take()
            inner = self.expr(inner_var)
            self.take("punct", ")")
            return inner
        if tok is None or tok[0] != "word":
            raise _invalid(self.text, "expected a property")
        name = self.take("word")
        if inner_var is None and name.lower() == "singlevalueextendedproperties/any":
            self.take("punct", "(")
            var = self.take("word")
            self.take("punct", ":")
            self.saw_id = False
            inner = self.expr(inner_var=var)
            self.take("punct", ")")
            if not self.saw_id:
                raise _invalid(
                    self.text, "an extended property filter must name the property: ep/id eq '...'"
                )
            return _any_extended(inner)
        op = self.take("word").lower()
        if op not in ("eq", "ne"):
            raise _invalid(self.text, f"operator '{op}' is not supported here")
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1] == "null":
            self.take()
            value: str | None = None
        else:
            value = self.take("str")
        if inner_var is not None:
            prefix = inner_var + "/"
            if not name.startswith(prefix) or name[len(prefix) :] not in ("id", "value"):
                raise _invalid(self.text, f"'{name}' is not {prefix}id or {prefix}value")
            if name[len(prefix) :] == "id":
                self.saw_id = True
            return _ext_condition(name[len(prefix) :], op, value, self.text)
        getter = self.fields.get(name)
        if getter is None:
            raise _invalid(self.text, f"filtering on '{name}' is not supported by this test server")
        return _field_condition(getter, op, value)


def _and(a: Predicate, b: Predicate) -> Predicate:
    return lambda x: a(x) and b(x)


def _or(a: Predicate, b: Predicate) -> Predicate:
    return lambda x: a(x) or b(x)


@dataclass(frozen=True)
class _Prop:
    key: tuple[str, ...]
    value: str


def _ext_condition(part: str, op: str, value: str | None, text: str) -> Predicate:
    if part == "id":
        if op != "eq" or value is None:
            raise _invalid(text, "the property id must be compared with eq")
        key = parse_property_id(value)
        return lambda p: p.key == key
    if op == "eq":
        return lambda p: value is not None and p.value == value
    return lambda p: p.value != value if value is not None else True


def _any_extended(inner: Predicate) -> Predicate:
    def pred(elem: Item) -> bool:
        return any(inner(_Prop(key, value)) for key, value in extended_properties(elem))

    return pred


def _field_condition(getter: Callable[[Item], str | None], op: str, value: str | None) -> Predicate:
    if op == "eq":
        return lambda x: getter(x) == value
    return lambda x: getter(x) != value


def parse_filter(text: str, fields: dict[str, Callable[[Item], str | None]]) -> Predicate:
    """A predicate over stored item elements for a $filter; GraphError 400 when unsupported."""
    return _Parser(text, fields).parse()


# -- $expand ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expand:
    name: str
    ids: list[tuple[str, ...]] | None  # for singleValueExtendedProperties: the $filter's ids, None = all


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, False
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quote:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


_ID_EQ = re.compile(r"^\s*id\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def parse_expand(text: str | None, allowed: set[str]) -> list[Expand]:
    if not text:
        return []
    out = []
    for part in split_top(text):
        m = re.match(r"^(\w+)\s*(?:\((.*)\))?$", part, re.DOTALL)
        if not m or m.group(1) not in allowed:
            raise GraphError(
                400,
                "BadRequest",
                f"Parsing OData Select and Expand failed: Could not find a property named "
                f"'{part.split('(')[0]}' that can be expanded here.",
            )
        name, options = m.group(1), m.group(2)
        ids: list[tuple[str, ...]] | None = None
        if options:
            opt = re.match(r"^\s*\$filter\s*=\s*(.*)$", options, re.DOTALL)
            if not opt:
                raise GraphError(400, "BadRequest", f"Only $filter is supported inside $expand ({part}).")
            ids = []
            for clause in re.split(r"\s+or\s+", opt.group(1).strip(), flags=re.IGNORECASE):
                cm = _ID_EQ.match(clause.strip().strip("()"))
                if not cm:
                    raise GraphError(
                        400,
                        "BadRequest",
                        f"Invalid filter clause in $expand: expected id eq '...' ({clause}).",
                    )
                ids.append(parse_property_id(cm.group(1).replace("''", "'")))
        out.append(Expand(name, ids))
    return out


# -- Prefer -------------------------------------------------------------------------------------------------
@dataclass
class Prefer:
    timezone: str | None = None
    maxpagesize: int | None = None
    body_content_type: str | None = None
    return_minimal: bool = False


def parse_prefer(values: list[str]) -> Prefer:
    out = Prefer()
    for header in values:
        for part in split_top(header):
            name, _, value = part.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "outlook.timezone":
                out.timezone = value
            elif name == "odata.maxpagesize":
                try:
                    out.maxpagesize = max(int(value), 1)
                except ValueError:
                    pass
            elif name == "outlook.body-content-type":
                out.body_content_type = value.lower()
            elif name == "return" and value.lower() == "minimal":
                out.return_minimal = True
    return out
