"""Our compact description of the Microsoft Graph v1.0 types the test server serves
(graph-v1.0-subset.json), its check against Microsoft's CSDL, and JSON Schema made from it.

The compact file names, per type, each property the server writes and its CSDL type
("Edm.String", "graph.dateTimeTimeZone", "Collection(graph.attendee)"; a trailing "!" is
Nullable="false"), and the members of each enum. Microsoft's metadata is not committed (the
repository microsoftgraph/msgraph-metadata is fetched on demand); when it is at hand, the cross-check
test proves every name and type here against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lxml import etree

SUBSET = Path(__file__).with_name("graph-v1.0-subset.json")
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
CSDL_PLACES = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "graph" / "v1.0-Prod.csdl",
    Path("/work/graph-openapi/v1.0-Prod.csdl"),
)


def load_subset() -> dict[str, Any]:
    return dict(json.loads(SUBSET.read_text()))


def find_csdl() -> Path | None:
    return next((p for p in CSDL_PLACES if p.exists()), None)


def load_csdl(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """{type: {property: "Type" or "Type!"}} (base types' properties included) and {enum: members}."""
    root = etree.parse(str(path)).getroot()
    schema = next(s for s in root.iter(f"{EDM}Schema") if s.get("Namespace") == "microsoft.graph")
    own: dict[str, dict[str, str]] = {}
    bases: dict[str, str | None] = {}
    enums: dict[str, list[str]] = {}
    for node in schema:
        tag = node.tag.replace(EDM, "")
        if tag == "EnumType":
            enums[node.get("Name")] = [m.get("Name") for m in node.findall(f"{EDM}Member")]
        elif tag in ("EntityType", "ComplexType"):
            props = {}
            for prop in node:
                if prop.tag in (f"{EDM}Property", f"{EDM}NavigationProperty"):
                    props[prop.get("Name")] = prop.get("Type") + (
                        "!" if prop.get("Nullable") == "false" else ""
                    )
            own[node.get("Name")] = props
            base = node.get("BaseType")
            bases[node.get("Name")] = base.removeprefix("graph.") if base else None
    types: dict[str, dict[str, str]] = {}
    for name in own:
        merged: dict[str, str] = {}
        chain: str | None = name
        while chain is not None:
            merged = {**own.get(chain, {}), **merged}
            chain = bases.get(chain)
        types[name] = merged
    return types, enums


# -- JSON Schema ---------------------------------------------------------------------------------------
_PATTERNS = {
    "Edm.DateTimeOffset": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})$",
    "Edm.Date": r"^\d{4}-\d{2}-\d{2}$",
    "Edm.TimeOfDay": r"^\d{2}:\d{2}:\d{2}(\.\d{1,7})?$",
}
_EDM = {
    "Edm.String": "string",
    "Edm.Boolean": "boolean",
    "Edm.Int32": "integer",
    "Edm.Int64": "integer",
    "Edm.Double": "number",
    "Edm.Guid": "string",
}


def _one(type_name: str, subset: dict[str, Any]) -> dict[str, Any]:
    if type_name in _PATTERNS:
        return {"type": "string", "pattern": _PATTERNS[type_name]}
    if type_name in _EDM:
        return {"type": _EDM[type_name]}
    name = type_name.removeprefix("graph.")
    if name not in subset["types"] and name not in subset["enums"]:
        raise KeyError(f"type {type_name} is used but not described in {SUBSET.name}")
    return {"$ref": f"#/$defs/{name}"}


def property_schema(declared: str, subset: dict[str, Any]) -> dict[str, Any]:
    nullable = not declared.endswith("!")
    type_name = declared.rstrip("!")
    if type_name.startswith("Collection("):
        return {"type": "array", "items": _one(type_name[len("Collection(") : -1], subset)}
    schema = _one(type_name, subset)
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def json_schema(subset: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema (2020-12) with one $def per type and enum; objects allow no other property
    than those described, and OData annotations (@odata.etag, @removed, ...)."""
    defs: dict[str, Any] = {}
    for name, props in subset["types"].items():
        defs[name] = {
            "type": "object",
            "properties": {p: property_schema(t, subset) for p, t in props.items()},
            "patternProperties": {"^@": {}},
            "additionalProperties": False,
        }
    for name, members in subset["enums"].items():
        defs[name] = {"enum": members}
    defs["odataError"] = {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "innerError": {"type": "object"},
                },
                "additionalProperties": False,
            }
        },
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": defs}
