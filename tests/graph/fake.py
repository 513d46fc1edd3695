"""A small in-test Graph (httpx.MockTransport) for the adapter's fast unit tests.

Only what the adapter sends (/work/notes/graph-contract.md), kept simple: one store per mailbox,
delta as "everything changed since sequence number N", $batch dispatched to the same handlers.
The real test server (exchanged.testing.graph) is what the end-to-end tests use."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

BASE = "https://graph.test/v1.0"


@dataclass
class Box:
    tz: str = "W. Europe Standard Time"
    items: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # collection -> id -> doc
    seq: dict[str, int] = field(default_factory=dict)  # id -> sequence number of its last change
    removed: dict[str, tuple[int, str]] = field(default_factory=dict)  # id -> (seq, collection)
    lists: dict[str, str] = field(default_factory=dict)  # list id -> name


class FakeGraph:
    def __init__(self, mailboxes: tuple[str, ...] = ("alice@example.test",)) -> None:
        self.boxes = {m: Box() for m in mailboxes}
        self._ids = itertools.count(1)
        self._seq = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self.throttle: list[tuple[str, float]] = []  # (pattern, retry_after): next matching request
        self.drop_next: str | None = None  # pattern: do it, then lose the answer (whole request)
        self.forbidden: set[str] = set()  # collections answered 403

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- plumbing -------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1.0")
        query = request.url.query.decode()
        body = json.loads(request.content) if request.content else None
        if path == "/$batch":
            self.stats["POST /$batch"] += 1
            for pattern, after in list(self.throttle):
                if pattern == "/$batch":
                    self.throttle.remove((pattern, after))
                    return httpx.Response(
                        429, headers={"Retry-After": str(after)}, json={"error": {"code": "TooManyRequests"}}
                    )
            responses = []
            for part in body["requests"]:
                status, doc, headers = self.one(part["method"], part["url"], part.get("body"), batch=True)
                responses.append({"id": part["id"], "status": status, "headers": headers, "body": doc})
            responses.reverse()  # any order
            if self.drop_next == "/$batch":
                self.drop_next = None
                raise httpx.ReadError("connection reset after the batch was done")
            return httpx.Response(200, json={"responses": responses})
        status, doc, headers = self.one(
            request.method, f"{path}?{query}" if query else path, body, batch=False
        )
        if self.drop_next and re.search(self.drop_next, path):
            self.drop_next = None
            raise httpx.ReadError("connection reset")
        return httpx.Response(status, json=doc if doc is not None else None, headers=headers)

    def one(self, method: str, url: str, body: Any, *, batch: bool) -> tuple[int, Any, dict[str, str]]:
        if url.startswith(BASE):
            url = url[len(BASE) :]
        parts = urlsplit(url)
        path = unquote(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        pattern = re.sub(r"/users/[^/]+", "/users/{u}", path)
        pattern = re.sub(r"/(events|contacts|tasks|lists)/[^/]+", r"/\1/{id}", pattern)
        self.stats[("batch " if batch else "") + f"{method} {pattern}"] += 1
        for pat, after in list(self.throttle):
            if pat != "/$batch" and re.search(pat, path):
                self.throttle.remove((pat, after))
                return (
                    429,
                    {"error": {"code": "TooManyRequests", "message": "slow down"}},
                    {"Retry-After": str(after)},
                )
        m = re.match(r"/users/([^/]+)(/.*)$", path)
        if not m or m.group(1) not in self.boxes:
            return 404, {"error": {"code": "ErrorInvalidUser", "message": "no such mailbox"}}, {}
        box, rest = self.boxes[m.group(1)], m.group(2)
        coll = rest.split("/")[1]
        if coll in self.forbidden:
            return 403, {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}, {}
        if rest == "/mailboxSettings/timeZone":
            return 200, {"value": box.tz}, {}
        if rest == "/todo/lists" and method == "GET":
            return 200, {"value": [{"id": i, "displayName": n} for i, n in box.lists.items()]}, {}
        if rest == "/todo/lists" and method == "POST":
            lid = f"L{next(self._ids)}"
            box.lists[lid] = body["displayName"]
            return 201, {"id": lid, "displayName": body["displayName"]}, {}
        if rest == "/calendarView/delta" or rest.endswith("/delta"):
            collection = "events" if rest == "/calendarView/delta" else rest[: -len("/delta")]
            return self.delta(box, m.group(1), collection, query)
        if rest == "/calendarView":
            return 200, {"value": self.listing(box, "/events", {})}, {}
        mm = re.match(r"^(/events|/contacts|/todo/lists/[^/]+/tasks)(?:/([^/]+))?$", rest)
        if not mm:
            return 400, {"error": {"code": "BadRequest", "message": f"unknown path {rest}"}}, {}
        collection, item_id = mm.group(1), mm.group(2)
        items = box.items.setdefault(collection, {})
        if item_id is None and method == "GET":
            return 200, {"value": self.listing(box, collection, query)}, {}
        if item_id is None and method == "POST":
            item_id = f"ID{next(self._ids)}"
            doc = {
                **body,
                "id": item_id,
                "changeKey": f"CK{next(self._seq)}",
                "createdDateTime": "2026-12-01T00:00:00Z",
                "type": "singleInstance",
            }
            items[item_id] = doc
            box.seq[item_id] = next(self._seq)
            return 201, self.render(doc, expand=False), {}
        if item_id not in items:
            return (
                404,
                {"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found"}},
                {},
            )
        doc = items[item_id]
        if method == "GET":
            return 200, self.render(doc, expand="$expand" in query or "expand" in query), {}
        if method == "PATCH":
            props = {p["id"].lower(): p for p in doc.get("singleValueExtendedProperties", [])}
            for p in body.pop("singleValueExtendedProperties", []):
                props[p["id"].lower()] = p
            doc.update(body)
            doc["singleValueExtendedProperties"] = list(props.values())
            doc["changeKey"] = f"CK{next(self._seq)}"
            box.seq[item_id] = next(self._seq)
            return 200, self.render(doc, expand=False), {}
        if method == "DELETE":
            del items[item_id]
            box.seq.pop(item_id, None)
            box.removed[item_id] = (next(self._seq), collection)
            return 204, None, {}
        return 405, {"error": {"code": "MethodNotAllowed"}}, {}

    @staticmethod
    def render(doc: dict[str, Any], *, expand: bool) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k not in ("singleValueExtendedProperties", "linkedResources")}
        if expand:
            if "singleValueExtendedProperties" in doc:
                out["singleValueExtendedProperties"] = doc["singleValueExtendedProperties"]
            if "linkedResources" in doc:
                out["linkedResources"] = doc["linkedResources"]
        return out

    def listing(self, box: Box, collection: str, query: dict[str, str]) -> list[dict[str, Any]]:
        docs = list(box.items.get(collection, {}).values())
        flt = query.get("$filter", "")
        m = re.search(r"ep/id eq '([^']+)' and ep/value (eq '((?:[^']|'')*)'|ne null)", flt)
        if m:
            want = m.group(3).replace("''", "'") if m.group(3) is not None else None
            docs = [
                d
                for d in docs
                if any(
                    p["id"].lower() == m.group(1).lower() and (want is None or p["value"] == want)
                    for p in d.get("singleValueExtendedProperties", [])
                )
            ]
        return [self.render(d, expand="$expand" in query) for d in docs]

    def delta(
        self, box: Box, name: str, collection: str, query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        if "$deltatoken" in query:
            try:
                since = int(query["$deltatoken"])
            except ValueError:
                return 410, {"error": {"code": "SyncStateNotFound", "message": "unknown delta token"}}, {}
        else:
            since = 0
        skip = int(query.get("$skiptoken", "0"))
        items = box.items.get("/events" if collection == "events" else collection, {})
        coll = "/events" if collection == "events" else collection
        changed = sorted((box.seq[i], i) for i in items if box.seq.get(i, 0) > since)
        gone = sorted((s, i) for i, (s, c) in box.removed.items() if c == coll and s > since)
        rows: list[dict[str, Any]] = [self.render(items[i], expand=False) for _, i in changed]
        rows += [{"id": i, "@removed": {"reason": "deleted"}} for _, i in gone]
        page = rows[skip : skip + 500]
        base = (
            f"{BASE}/users/{name}/{'calendarView' if collection == 'events' else collection.strip('/')}/delta"
        )
        if skip + 500 < len(rows):
            return (
                200,
                {"value": page, "@odata.nextLink": f"{base}?$deltatoken={since}&$skiptoken={skip + 500}"},
                {},
            )
        top = max([since, *[s for s, _ in changed], *[s for s, _ in gone]])
        return 200, {"value": page, "@odata.deltaLink": f"{base}?$deltatoken={top}"}, {}


class FakeTokens:
    """Stands in for msal: a JWT-shaped token with the granted roles."""

    def __init__(
        self,
        roles: tuple[str, ...] = (
            "Calendars.ReadWrite",
            "Contacts.ReadWrite",
            "Tasks.ReadWrite.All",
            "MailboxSettings.Read",
        ),
    ) -> None:
        import base64

        claims = base64.urlsafe_b64encode(json.dumps({"roles": list(roles)}).encode()).decode().rstrip("=")
        self.value = f"eyJhbGciOiJub25lIn0.{claims}.sig"
        self.acquired = 0

    async def token(self) -> str:
        self.acquired += 1
        return self.value

    def invalidate(self) -> None:
        pass
