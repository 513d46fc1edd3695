"""Shared ground of the Graph resources: requests, answers, the per-request context and the
helpers every resource family uses (item lookup, paging, $select/$expand/$filter, etags)."""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ews import items as it
from ..ews.soap import parse_dt
from ..ews.store import FolderRow, ItemRow, Store, id_kind
from . import convert as cv
from .auth import Grant
from .convert import GraphError
from .query import Expand, Prefer, parse_filter

if TYPE_CHECKING:
    from .server import GraphTestServer

DEFAULT_PAGE = 10  # Outlook collections without $top / odata.maxpagesize
TODO_DEFAULT_PAGE = 100
MAX_PAGE = 1000
CALENDAR_VIEW_MAX_DAYS = 5 * 365  # Graph refuses wider windows (ErrorInvalidParameter)
JSON_TYPE = (
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
)

# permission family -> (any of these reads, any of these writes)
PERMISSIONS = {
    "calendar": (("Calendars.Read", "Calendars.ReadWrite"), ("Calendars.ReadWrite",)),
    "contacts": (("Contacts.Read", "Contacts.ReadWrite"), ("Contacts.ReadWrite",)),
    "tasks": (("Tasks.Read.All", "Tasks.ReadWrite.All"), ("Tasks.ReadWrite.All",)),
    "mailboxSettings": (
        ("MailboxSettings.Read", "MailboxSettings.ReadWrite"),
        ("MailboxSettings.ReadWrite",),
    ),
    "user": (
        ("User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"),
        ("User.ReadWrite.All", "Directory.ReadWrite.All"),
    ),
}


@dataclass
class Request:
    method: str
    path: str  # below /v1.0, e.g. "/users/alice@example.test/events"
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    grant: Grant
    prefer: Prefer = field(default_factory=Prefer)


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str  # "/users/{user}/events/{id}"
    handler: str
    family: str
    regex: re.Pattern[str]


def not_found() -> GraphError:
    return GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def user_id(address: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, address.lower()))


@dataclass
class Ctx:
    req: Request
    mailbox: str
    params: dict[str, str]
    route: Route


class OpsBase:
    """What every resource family uses; GraphApi combines the families."""

    app: GraphTestServer
    store: Store

    # -- helpers -----------------------------------------------------------------------------------
    def _json(self, status: int, body: Any, ctx: Ctx, extra: dict[str, str] | None = None) -> Response:
        headers = dict(extra or {})
        applied = []
        zone = ctx.req.prefer.timezone
        if zone and ctx.route.family == "calendar" and cv.zone_for(zone) is not None:
            applied.append(f'outlook.timezone="{zone}"')
        if ctx.req.prefer.body_content_type in ("text", "html") and ctx.route.family == "calendar":
            applied.append(f'outlook.body-content-type="{ctx.req.prefer.body_content_type}"')
        if applied:
            headers["Preference-Applied"] = ", ".join(
                [headers["Preference-Applied"], *applied] if "Preference-Applied" in headers else applied
            )
        return Response(status, body, headers)

    def _context_url(self, ctx: Ctx, suffix: str) -> str:
        return f"{self.app.url}/v1.0/$metadata#users('{urllib.parse.quote(ctx.mailbox)}')/{suffix}"

    def _zone_name(self, ctx: Ctx) -> str:
        name = ctx.req.prefer.timezone
        if name and cv.zone_for(name) is not None:
            return name
        return "UTC"

    def _folder(self, mailbox: str, name: str) -> FolderRow:
        folder = self.store.distinguished(mailbox, name)
        if folder is None:
            raise GraphError(
                404, "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        return folder

    def _row(self, ctx: Ctx, graph_id: str, item_type: str, folder_ids: set[str] | None = None) -> ItemRow:
        ews_id = cv.to_ews_id(graph_id)
        kind = id_kind(ews_id)
        if kind is None:
            raise GraphError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
        if kind != b"I":
            raise not_found()
        row = self.store.item(ews_id)
        if row is None or row.mailbox != ctx.mailbox or row.item_type != item_type:
            raise not_found()
        if folder_ids is not None and row.folder_id not in folder_ids:
            raise not_found()
        return row

    def _full(self, row: ItemRow) -> Any:
        return it.full_view(row, self.store.folder(row.folder_id))

    def _page_size(self, ctx: Ctx, default: int = DEFAULT_PAGE) -> int:
        top = ctx.req.query.get("$top")
        if top is not None:
            try:
                value = int(top)
            except ValueError:
                raise GraphError(400, "BadRequest", f"Invalid $top value '{top}'.") from None
            if value < 1:
                raise GraphError(400, "BadRequest", f"Invalid $top value '{top}'.")
            return min(value, MAX_PAGE)
        if ctx.req.prefer.maxpagesize:
            return min(ctx.req.prefer.maxpagesize, MAX_PAGE)
        return default

    def _collection(
        self,
        ctx: Ctx,
        entries: list[Any],
        context: str,
        default_page: int = DEFAULT_PAGE,
        render: Callable[[Any], dict[str, Any]] | None = None,
    ) -> Response:
        """A collection page with $skip paging (Outlook list semantics); ``render`` turns the
        page's entries (only those) into JSON."""
        try:
            skip = int(ctx.req.query.get("$skip", "0"))
        except ValueError:
            raise GraphError(400, "BadRequest", "Invalid $skip value.") from None
        size = self._page_size(ctx, default_page)
        page = entries[skip : skip + size]
        if render is not None:
            page = [render(e) for e in page]
        body: dict[str, Any] = {"@odata.context": self._context_url(ctx, context), "value": page}
        if skip + size < len(entries):
            query = dict(ctx.req.query)
            query["$skip"] = str(skip + size)
            body["@odata.nextLink"] = (
                f"{self.app.url}/v1.0{ctx.req.path}?" + urllib.parse.urlencode(query, safe="$'(),:{}@ /")
            ).replace(" ", "%20")
        return self._json(200, body, ctx)

    @staticmethod
    def _select(entry: dict[str, Any], select: str | None) -> dict[str, Any]:
        if not select:
            return entry
        wanted = {s.strip() for s in select.split(",") if s.strip()}
        return {k: v for k, v in entry.items() if k in wanted or k in ("id", "@odata.etag", "@removed")}

    def _shape(self, ctx: Ctx, entry: dict[str, Any], elem: Any, expands: list[Expand]) -> dict[str, Any]:
        entry = self._select(entry, ctx.req.query.get("$select"))
        for exp in expands:
            if exp.name == "singleValueExtendedProperties":
                entry["singleValueExtendedProperties"] = cv.extended_json(elem, exp.ids)
        return entry

    def _filter(self, ctx: Ctx, fields: dict[str, Callable[[Any], str | None]]) -> Callable[[Any], bool]:
        text = ctx.req.query.get("$filter")
        if not text:
            return lambda _elem: True
        return parse_filter(text, fields)

    def _check_etag(self, ctx: Ctx, row: ItemRow) -> None:
        wanted = ctx.req.headers.get("if-match")
        if wanted and wanted != "*" and wanted.strip() != cv.etag(row.change_key):
            raise GraphError(
                412,
                "ErrorIrresolvableConflict",
                "The send or update operation could not be performed because the change key passed in the "
                "request does not match the current change key for the item.",
            )

    def _body(self, ctx: Ctx) -> dict[str, Any]:
        if not isinstance(ctx.req.body, dict):
            raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
        return ctx.req.body

    def _window(self, ctx: Ctx) -> tuple[dt.datetime, dt.datetime]:
        start_text, end_text = ctx.req.query.get("startDateTime"), ctx.req.query.get("endDateTime")
        if not start_text or not end_text:
            raise GraphError(
                400,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters "
                "StartDateTime and EndDateTime.",
            )
        start, end = query_time(start_text, "startDateTime"), query_time(end_text, "endDateTime")
        if end < start:
            raise GraphError(
                400, "ErrorInvalidParameter", "The value of EndDateTime is earlier than StartDateTime."
            )
        if end - start > dt.timedelta(days=CALENDAR_VIEW_MAX_DAYS):
            raise GraphError(400, "ErrorInvalidParameter", "The time window specified is too large.")
        return start, end

    def time_zone(self, mailbox: str) -> str:
        return self.store.mailbox_setting(mailbox, "timeZone") or self.app.default_time_zone

    def _move_to_deleted(self, row: ItemRow) -> None:
        deleted = self.store.distinguished(row.mailbox, "deleteditems")
        if deleted is not None and deleted.id != row.folder_id:
            self.store.move_item(row, deleted.id)
        else:
            self.store.delete_item(row)


# -- module helpers ----------------------------------------------------------------------------------------
def error_response(exc: GraphError) -> Response:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    body = {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "innerError": {
                "date": now,
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }
    return Response(exc.status, body, dict(exc.headers))


def query_time(text: str, name: str) -> dt.datetime:
    value = parse_dt(text)
    if value is None or not re.match(r"^\d{4}-\d{2}-\d{2}", text.strip()):
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            f"The value '{text}' of parameter '{name}' is not a valid date-time.",
        )
    return value
