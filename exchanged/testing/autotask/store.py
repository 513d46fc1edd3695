"""The data of the Autotask test server: entities, the query grammar, writes, persistence.

Pure Python and thread-safe through one lock held per operation by the HTTP layer. Records are
kept as the API returns them (camelCase field names, times as ISO strings with ``Z``), so a
``--seed`` file holds records exactly as a real ``query`` answers them.

Theory of the query grammar (reference section 3): a query is ``{"filter": [...],
"IncludeFields": [...], "MaxRecords": n}``; every top-level item is ANDed; an item is either a
condition ``{"op", "field", "value"}`` or a group ``{"op": "and"|"or", "items": [...]}``, nested
freely. Field names, operator names and body keys are case-insensitive. String comparisons are
case-insensitive (the API runs on SQL Server's default collation). An unknown field is a 500
naming the field and entity, as the API answers; an unknown operator is ignored (matches all),
as the API reportedly does.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .schema import BOOL, DT, ENTITIES, FLOAT, INT, STR, EntitySpec

PAGE_SIZE = 500


class ApiError(Exception):
    """An answer other than 200: the status and the JSON body the API sends."""

    def __init__(self, status: int, message: str, *, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else {"errors": [message]}


def api_500(message: str) -> ApiError:
    return ApiError(500, message)


def not_allowed(method: str) -> ApiError:
    msg = f"The requested resource does not support http method '{method}'."
    return ApiError(405, msg, body={"Message": msg})


# --- times --------------------------------------------------------------------------------------


def parse_time(value: Any, where: str) -> datetime:
    """The formats the API accepts: ``yyyy-mm-ddThh:mm:ss[.fff]`` with ``Z``, an offset, or none (UTC)."""
    if not isinstance(value, str):
        raise api_500(f"Invalid datetime value for {where}: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise api_500(f"Invalid datetime value for {where}: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(value: datetime) -> str:
    """As the API answers: UTC with ``Z`` and up to three fractional digits."""
    value = value.astimezone(UTC)
    base = value.strftime("%Y-%m-%dT%H:%M:%S")
    ms = value.microsecond // 1000
    return f"{base}.{ms:03d}Z".replace(".000Z", "Z") if ms else f"{base}Z"


def now_text() -> str:
    return format_time(datetime.now(UTC))


# --- values -------------------------------------------------------------------------------------


def coerce(spec: EntitySpec, name: str, value: Any) -> Any:
    """A written value as the store keeps it, or a 500 naming the field."""
    if value is None:
        return None
    kind = spec.fields[name]
    where = f"{spec.name}.{name}"
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise api_500(f"Invalid value for {where}: {value!r} is not an integer")
        try:
            return int(value)
        except ValueError:
            raise api_500(f"Invalid value for {where}: {value!r} is not an integer") from None
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise api_500(f"Invalid value for {where}: {value!r} is not a number")
        return float(value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise api_500(f"Invalid value for {where}: booleans must be true or false")
        return value
    if kind == DT:
        return format_time(parse_time(value, where))
    if not isinstance(value, str):
        raise api_500(f"Invalid value for {where}: {value!r} is not a string")
    limit = spec.lengths.get(name)
    if limit is not None and len(value) > limit:
        raise api_500(f"Value for {where} exceeds the maximum length of {limit}")
    return value


def _comparable(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == DT:
        return parse_time(value, "filter")
    if kind == STR:
        return str(value).lower()
    if kind in (INT, FLOAT):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return float(value) if not isinstance(value, bool) else value
    return value


def _compare(op: str, actual: Any, wanted: Any) -> bool:
    if op in ("exist", "notexist"):
        return (actual is not None and actual != "") == (op == "exist")
    if op in ("in", "notin"):
        values = wanted if isinstance(wanted, list) else [wanted]
        found = actual in values
        return found if op == "in" else not found
    if op == "noteq":
        return actual != wanted
    if actual is None or wanted is None:
        return op == "eq" and actual == wanted
    try:
        if op == "eq":
            return bool(actual == wanted)
        if op == "gt":
            return bool(actual > wanted)
        if op == "gte":
            return bool(actual >= wanted)
        if op == "lt":
            return bool(actual < wanted)
        if op == "lte":
            return bool(actual <= wanted)
    except TypeError:
        return False
    text, needle = str(actual), str(wanted)
    if op == "beginswith":
        return text.startswith(needle)
    if op == "endswith":
        return text.endswith(needle)
    if op == "contains":
        return needle in text
    return True  # an unknown operator is ignored by the API


def _key(d: dict[str, Any], name: str) -> Any:
    """A body key looked up case-insensitively ("filter" / "Filter", "MaxRecords" / "maxRecords")."""
    for k, v in d.items():
        if k.lower() == name.lower():
            return v
    return None


class Query:
    """A parsed query body: filter tree, IncludeFields, MaxRecords."""

    def __init__(self, spec: EntitySpec, body: Any) -> None:
        if not isinstance(body, dict):
            raise api_500("The query body must be a JSON object with a filter")
        self.spec = spec
        self.filter = _key(body, "filter") or []
        if not isinstance(self.filter, list):
            raise api_500("filter must be an array of conditions")
        include = _key(body, "IncludeFields") or []
        self.include: list[str] | None = [self._field(f) for f in include] if include else None
        max_records = _key(body, "MaxRecords")
        self.max_records = PAGE_SIZE if max_records in (None, 0) else int(max_records)
        if not 1 <= self.max_records <= PAGE_SIZE:
            raise api_500(f"MaxRecords must be between 1 and {PAGE_SIZE}")
        for item in self.filter:
            self._validate(item)

    def _field(self, name: Any) -> str:
        canonical = self.spec.canonical(str(name))
        if canonical is None:
            raise api_500(f"Unable to find {name} in the {self.spec.name} Entity")
        return canonical

    def _validate(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise api_500("each filter item must be an object")
        items = _key(item, "items")
        if items is not None:
            for sub in items:
                self._validate(sub)
            return
        if _key(item, "udf"):
            raise api_500(
                f"Unable to find user-defined field {_key(item, 'field')} in the {self.spec.name} Entity"
            )
        self._field(_key(item, "field"))

    def matches(self, record: dict[str, Any]) -> bool:
        return all(self._eval(item, record) for item in self.filter)

    def _eval(self, item: dict[str, Any], record: dict[str, Any]) -> bool:
        op = str(_key(item, "op") or "").lower()
        items = _key(item, "items")
        if items is not None:
            results = (self._eval(sub, record) for sub in items)
            return any(results) if op == "or" else all(results)
        name = self._field(_key(item, "field"))
        kind = self.spec.fields[name]
        actual = _comparable(kind, record.get(name))
        raw = _key(item, "value")
        wanted: Any
        if isinstance(raw, list):
            wanted = [_comparable(kind, v) for v in raw]
        elif op in ("beginswith", "endswith", "contains"):
            actual = None if actual is None else str(actual).lower()
            wanted = str(raw).lower()
        else:
            wanted = _comparable(kind, raw)
        return _compare(op, actual, wanted)

    def project(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.include is None:
            return dict(record)
        out = {"id": record["id"]}
        for name in self.include:
            out[name] = record.get(name)
        return out


# --- the store ----------------------------------------------------------------------------------


class Store:
    """Every entity's records by id; ``lock`` guards a whole operation."""

    def __init__(self, path: Path | None = None) -> None:
        self.lock = threading.RLock()
        self.path = path
        self.tables: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in ENTITIES}
        self.next_id = 1000

    # -- persistence --------------------------------------------------------------------------

    def load_seed(self, seed: dict[str, Any], where: str = "seed") -> None:
        for entity, rows in seed.items():
            name = self.entity_name(entity)
            if name is None:
                raise ValueError(f"{where}: unknown entity {entity!r}; known: {sorted(ENTITIES)}")
            if not isinstance(rows, list):
                raise ValueError(f"{where}: {entity} must be a list of records")
            for n, row in enumerate(rows):
                self.put(name, row, where=f"{where}: {entity}[{n}]")

    def put(self, entity: str, row: dict[str, Any], *, where: str = "put") -> dict[str, Any]:
        """Insert or replace a record as given (test set-up: no route or required-field rules)."""
        spec = ENTITIES[entity]
        record: dict[str, Any] = {name: None for name in spec.fields}
        for key, value in row.items():
            name = spec.canonical(key)
            if name is None:
                raise ValueError(f"{where}: unknown field {key!r} of {entity}")
            try:
                record[name] = coerce(spec, name, value)
            except ApiError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if record["id"] is None:
            record["id"] = self._new_id()
        self.next_id = max(self.next_id, record["id"] + 1)
        if spec.modified_field and record[spec.modified_field] is None:
            record[spec.modified_field] = now_text()
        self.tables[entity][record["id"]] = record
        return record

    def dump(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "tables": {name: list(rows.values()) for name, rows in self.tables.items()},
        }

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.dump()))
        os.replace(tmp, self.path)

    def load(self) -> bool:
        if self.path is None or not self.path.exists():
            return False
        doc = json.loads(self.path.read_text())
        self.next_id = int(doc["next_id"])
        for name, rows in doc["tables"].items():
            self.tables[name] = {int(r["id"]): r for r in rows}
        return True

    # -- reads ----------------------------------------------------------------------------------

    @staticmethod
    def entity_name(text: str) -> str | None:
        from .schema import ENTITY_BY_LOWER

        return ENTITY_BY_LOWER.get(text.lower())

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def query(
        self, entity: str, query: Query, after_id: int | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page in ascending id order after ``after_id``, and whether more rows follow."""
        found: list[dict[str, Any]] = []
        for record_id in sorted(self.tables[entity]):
            if after_id is not None and record_id <= after_id:
                continue
            record = self.tables[entity][record_id]
            if query.matches(record):
                found.append(record)
                if len(found) > query.max_records:
                    break
        more = len(found) > query.max_records
        return [query.project(r) for r in found[: query.max_records]], more

    def count(self, entity: str, query: Query) -> int:
        return sum(1 for r in self.tables[entity].values() if query.matches(r))

    def get(self, entity: str, record_id: int) -> dict[str, Any] | None:
        record = self.tables[entity].get(record_id)
        return dict(record) if record is not None else None

    def children(self, entity: str, parent_field: str, parent_id: int) -> list[dict[str, Any]]:
        return [dict(r) for _, r in sorted(self.tables[entity].items()) if r.get(parent_field) == parent_id]

    # -- writes ---------------------------------------------------------------------------------

    def _writable(self, spec: EntitySpec, body: dict[str, Any]) -> dict[str, Any]:
        """The body's fields by canonical name; read-only ones dropped, unknown ones refused."""
        out: dict[str, Any] = {}
        for key, value in body.items():
            if key.lower() == "userdefinedfields":
                continue
            name = spec.canonical(key)
            if name is None:
                raise api_500(f"Unable to find {key} in the {spec.name} Entity")
            if name in spec.read_only:
                continue
            out[name] = coerce(spec, name, value)
        return out

    def _check_required(self, spec: EntitySpec, record: dict[str, Any]) -> None:
        missing = sorted(n for n in spec.required if record.get(n) in (None, ""))
        if missing:
            raise api_500(f"{spec.name}: missing required field(s): {', '.join(missing)}")

    def _check_rules(self, spec: EntitySpec, record: dict[str, Any]) -> None:
        start, end = record.get("startDateTime"), record.get("endDateTime")
        if start and end and parse_time(end, "endDateTime") < parse_time(start, "startDateTime"):
            raise api_500(f"{spec.name}: endDateTime must not be before startDateTime")
        for name, kind in spec.fields.items():
            if name.endswith("ResourceID") or name == "resourceID":
                rid = record.get(name)
                if (
                    rid is not None
                    and kind == INT
                    and name not in spec.read_only
                    and rid not in self.tables["Resources"]
                ):
                    raise api_500(f"{spec.name}: {name} {rid} is not a valid Resource")

    def create(
        self, entity: str, body: dict[str, Any], *, parent: tuple[str, int] | None, creator: int | None
    ) -> int:
        spec = ENTITIES[entity]
        if _key(body, "id") not in (None, 0):
            raise api_500(f"{entity}: id must be absent or 0 on create")
        body = {k: v for k, v in body.items() if k.lower() != "id"}
        values = self._writable(spec, body)
        record: dict[str, Any] = {name: None for name in spec.fields}
        record.update(values)
        if parent is not None:
            parent_field, parent_id = parent
            if values.get(parent_field) not in (None, parent_id):
                raise api_500(f"{entity}: {parent_field} must match the parent in the URL")
            record[parent_field] = parent_id
        self._check_required(spec, record)
        self._check_rules(spec, record)
        record["id"] = self._new_id()
        stamp = now_text()
        if spec.created_field:
            record[spec.created_field] = stamp
        if spec.modified_field:
            record[spec.modified_field] = stamp
        if "creatorResourceID" in spec.fields:
            record["creatorResourceID"] = creator
        self.tables[entity][record["id"]] = record
        self.save()
        return int(record["id"])

    def update(
        self, entity: str, body: dict[str, Any], *, replace: bool, parent: tuple[str, int] | None
    ) -> int:
        spec = ENTITIES[entity]
        raw_id = _key(body, "id")
        if not isinstance(raw_id, int) or isinstance(raw_id, bool):
            raise api_500(f"{entity}: the body must carry the id of the record to update")
        current = self.tables[entity].get(raw_id)
        if current is None or (parent is not None and current.get(parent[0]) != parent[1]):
            raise api_500(f"No matching records found. The specified {entity} id [{raw_id}] was not found")
        values = self._writable(spec, {k: v for k, v in body.items() if k.lower() != "id"})
        if parent is not None and values.get(parent[0]) not in (None, parent[1]):
            raise api_500(f"{entity}: {parent[0]} must match the parent in the URL")
        record = dict(current)
        if replace:  # PUT: every writable field not sent becomes null
            for name in spec.fields:
                if name not in spec.read_only and name not in values:
                    record[name] = None
            if parent is not None:
                record[parent[0]] = parent[1]
        record.update(values)
        self._check_required(spec, record)
        self._check_rules(spec, record)
        if spec.modified_field:
            record[spec.modified_field] = now_text()
        self.tables[entity][raw_id] = record
        self.save()
        return raw_id

    def delete(self, entity: str, record_id: int, *, parent: tuple[str, int] | None) -> int:
        current = self.tables[entity].get(record_id)
        if current is None or (parent is not None and current.get(parent[0]) != parent[1]):
            raise api_500(f"No matching records found. The specified {entity} id [{record_id}] was not found")
        del self.tables[entity][record_id]
        self.save()
        return record_id

    # -- test helpers (what a user does in the Autotask web UI) ---------------------------------

    def edit(self, entity: str, record_id: int, **values: Any) -> dict[str, Any]:
        spec = ENTITIES[entity]
        record = self.tables[entity][record_id]
        for key, value in values.items():
            name = spec.canonical(key)
            if name is None:
                raise KeyError(f"unknown field {key!r} of {entity}")
            record[name] = coerce(spec, name, value)
        if spec.modified_field:
            record[spec.modified_field] = now_text()
        self.save()
        return dict(record)

    def remove(self, entity: str, record_id: int) -> None:
        del self.tables[entity][record_id]
        self.save()

    def rows(self, entity: str) -> list[dict[str, Any]]:
        return [dict(r) for _, r in sorted(self.tables[entity].items())]

    def add_many(self, entity: str, rows: Iterable[dict[str, Any]]) -> list[int]:
        ids = [int(self.put(entity, row)["id"]) for row in rows]
        self.save()
        return ids
