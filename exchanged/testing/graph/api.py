"""The Microsoft Graph v1.0 resources the test server serves, on the EWS test server's store.

Every request runs in one store transaction (``Store.lock`` + BEGIN IMMEDIATE), so it is
serialised with the EWS front end's operations, in this process and in another process serving
the same state dir. Paths, query options and JSON shapes follow Microsoft's documentation of
Graph v1.0; docs/TEST_SERVER.md ("Graph test server") lists what is served and the differences.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..ews import items as it
from ..ews import recurrence
from ..ews.soap import EwsError, fmt_dt, parse_dt, t
from ..ews.store import FolderRow, ItemRow, Store, id_kind
from . import convert as cv
from .auth import Grant
from .convert import GraphError
from .query import Expand, Prefer, parse_expand, parse_filter, parse_prefer

if TYPE_CHECKING:
    from .server import GraphTestServer

log = logging.getLogger("exchanged.testing.graph")

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


def _compile(pattern: str) -> re.Pattern[str]:
    parts = []
    for seg in pattern.strip("/").split("/"):
        if seg.startswith("{") and seg.endswith("}"):
            parts.append(f"(?P<{seg[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(seg))
    return re.compile("^/" + "/".join(parts) + "/?$", re.IGNORECASE)


_ROUTE_TABLE = [
    ("GET", "/users/{user}", "get_user", "user"),
    ("GET", "/users/{user}/mailboxSettings", "get_mailbox_settings", "mailboxSettings"),
    ("PATCH", "/users/{user}/mailboxSettings", "patch_mailbox_settings", "mailboxSettings"),
    ("GET", "/users/{user}/mailboxSettings/timeZone", "get_time_zone", "mailboxSettings"),
    ("GET", "/users/{user}/calendar", "get_calendar", "calendar"),
    ("GET", "/users/{user}/calendarView/delta", "calendar_delta", "calendar"),
    ("GET", "/users/{user}/calendar/calendarView/delta", "calendar_delta", "calendar"),
    ("GET", "/users/{user}/calendarView", "calendar_view", "calendar"),
    ("GET", "/users/{user}/calendar/calendarView", "calendar_view", "calendar"),
    ("GET", "/users/{user}/events", "list_events", "calendar"),
    ("GET", "/users/{user}/calendar/events", "list_events", "calendar"),
    ("POST", "/users/{user}/events", "create_event", "calendar"),
    ("POST", "/users/{user}/calendar/events", "create_event", "calendar"),
    ("GET", "/users/{user}/events/{id}/instances", "event_instances", "calendar"),
    ("GET", "/users/{user}/events/{id}", "get_event", "calendar"),
    ("GET", "/users/{user}/calendar/events/{id}", "get_event", "calendar"),
    ("PATCH", "/users/{user}/events/{id}", "patch_event", "calendar"),
    ("PATCH", "/users/{user}/calendar/events/{id}", "patch_event", "calendar"),
    ("DELETE", "/users/{user}/events/{id}", "delete_event", "calendar"),
    ("DELETE", "/users/{user}/calendar/events/{id}", "delete_event", "calendar"),
    ("GET", "/users/{user}/contacts/delta", "contacts_delta", "contacts"),
    ("GET", "/users/{user}/contactFolders/{folder}/contacts/delta", "contacts_delta", "contacts"),
    ("GET", "/users/{user}/contactFolders", "list_contact_folders", "contacts"),
    ("GET", "/users/{user}/contacts", "list_contacts", "contacts"),
    ("GET", "/users/{user}/contactFolders/{folder}/contacts", "list_contacts", "contacts"),
    ("POST", "/users/{user}/contacts", "create_contact", "contacts"),
    ("POST", "/users/{user}/contactFolders/{folder}/contacts", "create_contact", "contacts"),
    ("GET", "/users/{user}/contacts/{id}", "get_contact", "contacts"),
    ("GET", "/users/{user}/contactFolders/{folder}/contacts/{id}", "get_contact", "contacts"),
    ("PATCH", "/users/{user}/contacts/{id}", "patch_contact", "contacts"),
    ("PATCH", "/users/{user}/contactFolders/{folder}/contacts/{id}", "patch_contact", "contacts"),
    ("DELETE", "/users/{user}/contacts/{id}", "delete_contact", "contacts"),
    ("DELETE", "/users/{user}/contactFolders/{folder}/contacts/{id}", "delete_contact", "contacts"),
    ("GET", "/users/{user}/todo/lists", "list_task_lists", "tasks"),
    ("POST", "/users/{user}/todo/lists", "create_task_list", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}", "get_task_list", "tasks"),
    ("PATCH", "/users/{user}/todo/lists/{list}", "patch_task_list", "tasks"),
    ("DELETE", "/users/{user}/todo/lists/{list}", "delete_task_list", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}/tasks/delta", "tasks_delta", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}/tasks", "list_tasks", "tasks"),
    ("POST", "/users/{user}/todo/lists/{list}/tasks", "create_task", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}/tasks/{id}", "get_task", "tasks"),
    ("PATCH", "/users/{user}/todo/lists/{list}/tasks/{id}", "patch_task", "tasks"),
    ("DELETE", "/users/{user}/todo/lists/{list}/tasks/{id}", "delete_task", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}/tasks/{id}/linkedResources", "list_linked", "tasks"),
    ("POST", "/users/{user}/todo/lists/{list}/tasks/{id}/linkedResources", "create_linked", "tasks"),
    ("GET", "/users/{user}/todo/lists/{list}/tasks/{id}/linkedResources/{res}", "get_linked", "tasks"),
    ("PATCH", "/users/{user}/todo/lists/{list}/tasks/{id}/linkedResources/{res}", "patch_linked", "tasks"),
    ("DELETE", "/users/{user}/todo/lists/{list}/tasks/{id}/linkedResources/{res}", "delete_linked", "tasks"),
]
ROUTES = [Route(m, p, h, f, _compile(p)) for m, p, h, f in _ROUTE_TABLE]


def match_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """The route and its (URL-decoded) parameters; None when nothing matches the path."""
    for route in ROUTES:
        if route.method != method:
            continue
        m = route.regex.match(path)
        if m:
            return route, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
    return None


def path_pattern(method: str, path: str) -> str:
    """ "<METHOD> /v1.0<pattern>" for statistics and fault targeting."""
    found = match_route(method, path)
    return f"{method} /v1.0{found[0].pattern}" if found else f"{method} /v1.0(unknown)"


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


class GraphApi:
    def __init__(self, app: GraphTestServer) -> None:
        self.app = app
        self.store: Store = app.store

    # -- entry point ---------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        """One Graph request (not $batch) in one store transaction; never raises."""
        try:
            req.prefer = parse_prefer([v for k, v in req.headers.items() if k == "prefer"])
            found = match_route(req.method, req.path)
            if found is None:
                return self._unknown_path(req)
            route, params = found
            self._check_permission(req.grant, route)
            with self.store.lock:
                self.store.begin()
                try:
                    mailbox = self._mailbox(params["user"])
                    response: Response = getattr(self, route.handler)(Ctx(req, mailbox, params, route))
                except BaseException:
                    self.store.rollback()
                    raise
                self.store.commit()
            return response
        except GraphError as exc:
            return error_response(exc)
        except EwsError as exc:
            # The store's own rules (the EWS test server's item checks) refused the item.
            return error_response(GraphError(400, exc.code, exc.text))
        except (ValueError, OverflowError) as exc:
            # A value of the wrong type or out of range that no check above named: Graph refuses
            # the request (as its OData reader does) and the log says where.
            log.info(
                "Graph %s %s refused: a value does not parse: %s", req.method, req.path, exc, exc_info=True
            )
            return error_response(
                GraphError(400, "BadRequest", f"A value in the request is not valid: {exc}.")
            )
        except Exception:
            log.exception("Graph %s %s failed inside the test server", req.method, req.path)
            return error_response(
                GraphError(
                    500, "InternalServerError", "An internal server error occurred. The operation failed."
                )
            )

    def _unknown_path(self, req: Request) -> Response:
        segments = [s for s in req.path.split("/") if s]
        if segments[:1] == ["me"]:
            return error_response(
                GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            )
        known = {r.pattern for r in ROUTES if r.regex.match(req.path)}
        if known:
            return error_response(
                GraphError(
                    405, "Request_BadRequest", f"The {req.method} method is not allowed on {req.path}."
                )
            )
        last = segments[-1] if segments else ""
        return error_response(GraphError(400, "BadRequest", f"Resource not found for the segment '{last}'."))

    def _check_permission(self, grant: Grant, route: Route) -> None:
        reads, writes = PERMISSIONS[route.family]
        needed = reads if route.method == "GET" else writes
        if grant.roles.isdisjoint(needed):
            if route.family == "user":
                raise GraphError(
                    403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
                )
            raise GraphError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")

    def _mailbox(self, user: str) -> str:
        wanted = user.lower()
        for address in self.store.mailboxes():
            if wanted in (address, user_id(address)):
                return address
        raise GraphError(404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")

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

    # -- users and mailbox settings ------------------------------------------------------------------
    def get_user(self, ctx: Ctx) -> Response:
        local = ctx.mailbox.split("@", 1)[0]
        body: dict[str, Any] = {
            "@odata.context": f"{self.app.url}/v1.0/$metadata#users/$entity",
            "businessPhones": [],
            "displayName": local.capitalize(),
            "givenName": local.capitalize(),
            "jobTitle": None,
            "mail": ctx.mailbox,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US",
            "surname": None,
            "userPrincipalName": ctx.mailbox,
            "id": user_id(ctx.mailbox),
        }
        return self._json(200, self._select(body, ctx.req.query.get("$select")), ctx)

    def time_zone(self, mailbox: str) -> str:
        return self.store.mailbox_setting(mailbox, "timeZone") or self.app.default_time_zone

    def _settings(self, ctx: Ctx) -> dict[str, Any]:
        zone = self.time_zone(ctx.mailbox)
        return {
            "@odata.context": self._context_url(ctx, "mailboxSettings"),
            "archiveFolder": self._folder(ctx.mailbox, "msgfolderroot").id,
            "timeZone": zone,
            "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
            "dateFormat": "dd.MM.yyyy",
            "timeFormat": "HH:mm",
            "userPurpose": "user",
            "automaticRepliesSetting": {
                "status": "disabled",
                "externalAudience": "all",
                "internalReplyMessage": "",
                "externalReplyMessage": "",
                "scheduledStartDateTime": {"dateTime": "2026-01-01T00:00:00.0000000", "timeZone": "UTC"},
                "scheduledEndDateTime": {"dateTime": "2026-01-02T00:00:00.0000000", "timeZone": "UTC"},
            },
            "language": {"locale": "en-US", "displayName": "English (United States)"},
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": zone},
            },
        }

    def get_mailbox_settings(self, ctx: Ctx) -> Response:
        return self._json(200, self._select(self._settings(ctx), ctx.req.query.get("$select")), ctx)

    def get_time_zone(self, ctx: Ctx) -> Response:
        return self._json(
            200,
            {
                "@odata.context": self._context_url(ctx, "mailboxSettings/timeZone"),
                "value": self.time_zone(ctx.mailbox),
            },
            ctx,
        )

    def patch_mailbox_settings(self, ctx: Ctx) -> Response:
        body = self._body(ctx)
        if "timeZone" in body:
            zone = body["timeZone"]
            if not isinstance(zone, str) or cv.zone_for(zone) is None:
                raise GraphError(
                    400,
                    "ErrorInvalidArgument",
                    f"The time zone '{zone}' is not valid (a Windows or IANA time zone name is expected).",
                )
            self.store.set_mailbox_setting(ctx.mailbox, "timeZone", zone)
        return self._json(200, self._settings(ctx), ctx)

    # -- calendar --------------------------------------------------------------------------------------
    def get_calendar(self, ctx: Ctx) -> Response:
        folder = self._folder(ctx.mailbox, "calendar")
        body = {
            "@odata.context": self._context_url(ctx, "calendars/$entity"),
            "id": cv.to_graph_id(folder.id),
            "name": folder.display_name,
            "color": "auto",
            "hexColor": "",
            "isDefaultCalendar": True,
            "changeKey": folder.change_key,
            "canShare": True,
            "canViewPrivateItems": True,
            "canEdit": True,
            "allowedOnlineMeetingProviders": ["teamsForBusiness"],
            "defaultOnlineMeetingProvider": "teamsForBusiness",
            "isTallyingResponses": True,
            "isRemovable": False,
            "owner": {"name": ctx.mailbox.split("@")[0], "address": ctx.mailbox},
        }
        return self._json(200, body, ctx)

    def _event(
        self, ctx: Ctx, elem: Any, master_id: str, change_key: str, expands: list[Expand]
    ) -> dict[str, Any]:
        item_id = elem.find(t("ItemId")).get("Id")
        entry = cv.event_json(
            item_id,
            master_id,
            elem,
            change_key,
            self._zone_name(ctx),
            ctx.mailbox,
            ctx.req.prefer.body_content_type,
        )
        return self._shape(ctx, entry, elem, expands)

    _EVENT_FIELDS: dict[str, Callable[[Any], str | None]] = {
        "subject": lambda e: it.child_text(e, "Subject"),
        "iCalUId": lambda e: cv._ical_uid(it.child_text(e, "UID") or ""),
        "type": lambda e: {"Single": "singleInstance", "RecurringMaster": "seriesMaster"}.get(
            it.child_text(e, "CalendarItemType") or "", (it.child_text(e, "CalendarItemType") or "").lower()
        ),
    }

    def list_events(self, ctx: Ctx) -> Response:
        folder = self._folder(ctx.mailbox, "calendar")
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        keep = self._filter(ctx, self._EVENT_FIELDS)
        rows = [
            row
            for row in self.store.items_in(folder.id)
            if row.item_type == "CalendarItem"
            and keep(cv.row_elem(row))  # the stored XML has every filterable field
        ]

        def render(row: ItemRow) -> dict[str, Any]:
            full = recurrence.public_master(self._full(row))
            return self._event(ctx, full, row.id, row.change_key, expands)

        return self._collection(ctx, rows, "events", render=render)

    def _window(self, ctx: Ctx) -> tuple[dt.datetime, dt.datetime]:
        start_text, end_text = ctx.req.query.get("startDateTime"), ctx.req.query.get("endDateTime")
        if not start_text or not end_text:
            raise GraphError(
                400,
                "ErrorInvalidParameter",
                "This request requires a time window specified by the query string parameters "
                "StartDateTime and EndDateTime.",
            )
        start, end = _query_time(start_text, "startDateTime"), _query_time(end_text, "endDateTime")
        if end < start:
            raise GraphError(
                400, "ErrorInvalidParameter", "The value of EndDateTime is earlier than StartDateTime."
            )
        if end - start > dt.timedelta(days=CALENDAR_VIEW_MAX_DAYS):
            raise GraphError(400, "ErrorInvalidParameter", "The time window specified is too large.")
        return start, end

    def _instances(self, row: ItemRow, start: dt.datetime, end: dt.datetime) -> list[Any]:
        return list(recurrence.in_range(self._full(row), row, start, end))

    def calendar_view(self, ctx: Ctx) -> Response:
        start, end = self._window(ctx)
        folder = self._folder(ctx.mailbox, "calendar")
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        keep = self._filter(ctx, self._EVENT_FIELDS)
        found: list[tuple[dt.datetime, dict[str, Any]]] = []
        for row in self.store.items_in(folder.id):
            if row.item_type != "CalendarItem":
                continue
            for elem in self._instances(row, start, end):
                if keep(elem):
                    when = parse_dt(it.child_text(elem, "Start")) or start
                    found.append((when, self._event(ctx, elem, row.id, row.change_key, expands)))
        found.sort(key=lambda f: f[0])
        return self._collection(ctx, [e for _, e in found], "calendarView")

    def event_instances(self, ctx: Ctx) -> Response:
        start, end = self._window(ctx)
        row = self._row(ctx, ctx.params["id"], "CalendarItem")
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        full = self._full(row)
        if full.find(t("Recurrence")) is None:
            raise GraphError(400, "ErrorInvalidParameter", "The specified event is not a series master.")
        entries = [
            self._event(ctx, e, row.id, row.change_key, expands) for e in self._instances(row, start, end)
        ]
        return self._collection(ctx, entries, f"events('{ctx.params['id']}')/instances")

    def _event_target(self, ctx: Ctx) -> tuple[ItemRow, dt.datetime | None]:
        """The stored row an event id names and, for an occurrence id, its original start."""
        ews_id = cv.to_ews_id(ctx.params["id"])
        if recurrence.is_occurrence_id(ews_id):
            master_id, original = recurrence.parse_occurrence_id(ews_id)
            return self._row(ctx, cv.to_graph_id(master_id), "CalendarItem"), original
        return self._row(ctx, ctx.params["id"], "CalendarItem"), None

    def _event_elem(self, row: ItemRow, original: dt.datetime | None) -> Any:
        full = self._full(row)
        if original is None:
            return recurrence.public_master(full)
        try:
            return recurrence.occurrence_at(full, row, original)
        except EwsError:
            raise not_found() from None

    def get_event(self, ctx: Ctx) -> Response:
        row, original = self._event_target(ctx)
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        elem = self._event_elem(row, original)
        body = self._event(ctx, elem, row.id, row.change_key, expands)
        body = {"@odata.context": self._context_url(ctx, "events/$entity"), **body}
        return self._json(200, body, ctx)

    def create_event(self, ctx: Ctx) -> Response:
        folder = self._folder(ctx.mailbox, "calendar")
        elem, _changed = cv.event_xml(self._body(ctx), None, self.time_zone(ctx.mailbox))
        it.normalise(elem, ctx.mailbox)
        row = self.store.add_item(ctx.mailbox, folder.id, "CalendarItem", cv.stored_xml(elem))
        if any(
            it.child(elem, n) is not None for n in ("RequiredAttendees", "OptionalAttendees", "Resources")
        ):
            self.store.record_invitation(ctx.mailbox, row.id, "graph:POST event", "SendToAllAndSaveCopy")
        full = recurrence.public_master(self._full(row))
        body = {
            "@odata.context": self._context_url(ctx, "events/$entity"),
            **self._event(ctx, full, row.id, row.change_key, []),
        }
        return self._json(201, body, ctx)

    def patch_event(self, ctx: Ctx) -> Response:
        row, original = self._event_target(ctx)
        body = self._body(ctx)
        if original is not None:
            row = self._patch_occurrence(ctx, row, original, body)
        else:
            self._check_etag(ctx, row)
            stored = cv.row_elem(row)
            elem, changed = cv.event_xml(body, stored, self.time_zone(ctx.mailbox))
            it.normalise(elem, ctx.mailbox, changed)
            row = self.store.update_item(row, cv.stored_xml(elem))
            if body.get("attendees"):
                self.store.record_invitation(ctx.mailbox, row.id, "graph:PATCH event", "SendToAllAndSaveCopy")
        elem = self._event_elem(row, original)
        out = {
            "@odata.context": self._context_url(ctx, "events/$entity"),
            **self._event(ctx, elem, row.id, row.change_key, []),
        }
        return self._json(200, out, ctx)

    def _patch_occurrence(
        self, ctx: Ctx, row: ItemRow, original: dt.datetime, body: dict[str, Any]
    ) -> ItemRow:
        """An occurrence changed on its own: an exception of the series, kept as EWS keeps it."""
        from lxml import etree

        from ..ews.soap import TNS

        current = self._event_elem(row, original)
        updated, _ = cv.event_xml(body, current, self.time_zone(ctx.mailbox))
        updates = []
        for name, prefix in (
            ("Subject", "item"),
            ("Body", "item"),
            ("Start", "calendar"),
            ("End", "calendar"),
            ("Location", "calendar"),
            ("LegacyFreeBusyStatus", "calendar"),
            ("Sensitivity", "item"),
            ("Categories", "item"),
            ("IsAllDayEvent", "calendar"),
        ):
            new = updated.find(t(name))
            old = current.find(t(name))
            if (None if new is None else etree.tostring(new)) == (
                None if old is None else etree.tostring(old)
            ):
                continue
            if new is None:
                upd = etree.Element(t("DeleteItemField"), nsmap={"t": TNS})
                etree.SubElement(upd, t("FieldURI"), FieldURI=f"{prefix}:{name}")
            else:
                upd = etree.Element(t("SetItemField"), nsmap={"t": TNS})
                etree.SubElement(upd, t("FieldURI"), FieldURI=f"{prefix}:{name}")
                holder = etree.SubElement(upd, t("CalendarItem"))
                holder.append(new)
            updates.append(upd)
        try:
            xml = recurrence.modify_occurrence(row, original, updates)
        except EwsError:
            raise not_found() from None
        return self.store.update_item(row, xml)

    def delete_event(self, ctx: Ctx) -> Response:
        row, original = self._event_target(ctx)
        if original is not None:
            try:
                self.store.update_item(row, recurrence.delete_occurrence(row, original))
            except EwsError:
                raise not_found() from None
            return Response(204)
        self._check_etag(ctx, row)
        if it.child(cv.row_elem(row), "RequiredAttendees") is not None:
            self.store.record_invitation(ctx.mailbox, row.id, "graph:DELETE event", "SendToAllAndSaveCopy")
        self._move_to_deleted(row)
        return Response(204)

    def _move_to_deleted(self, row: ItemRow) -> None:
        deleted = self.store.distinguished(row.mailbox, "deleteditems")
        if deleted is not None and deleted.id != row.folder_id:
            self.store.move_item(row, deleted.id)
        else:
            self.store.delete_item(row)

    def calendar_delta(self, ctx: Ctx) -> Response:
        for option in ("$select", "$expand", "$filter", "$orderby", "$search", "$top"):
            if option in ctx.req.query:
                name = option[1:].capitalize()
                raise GraphError(
                    400,
                    "ErrorInvalidUrlQuery",
                    f"The query specified in the URI is not valid. Query option '{name}' is not allowed. "
                    "calendarView/delta takes startDateTime, endDateTime, $deltatoken and $skiptoken only.",
                )
        folder = self._folder(ctx.mailbox, "calendar")
        collection = f"calendarView:{folder.id}"

        def render(row: ItemRow, window: tuple[dt.datetime, dt.datetime]) -> list[tuple[str, dict[str, Any]]]:
            if row.item_type != "CalendarItem":
                return []
            out = []
            for elem in self._instances(row, *window):
                entry = self._event(ctx, elem, row.id, row.change_key, [])
                out.append((entry["id"], entry))
            return out

        return self._delta(ctx, folder, collection, render, window_required=True)

    # -- delta engine ----------------------------------------------------------------------------------
    def _delta(
        self,
        ctx: Ctx,
        folder: FolderRow,
        collection: str,
        render: Callable[[ItemRow, tuple[dt.datetime, dt.datetime]], list[tuple[str, dict[str, Any]]]],
        *,
        window_required: bool = False,
        default_page: int = DEFAULT_PAGE,
    ) -> Response:
        """Change tracking over one folder: the first round lists everything, pages follow
        @odata.nextLink ($skiptoken), the last page carries @odata.deltaLink ($deltatoken), which
        lists what changed since (``@removed`` for what left). Tokens live in the store, so they
        survive restarts and a page can be fetched again (a client whose reply was lost retries)."""
        size = self._page_size_delta(ctx, default_page)
        skiptoken, deltatoken = ctx.req.query.get("$skiptoken"), ctx.req.query.get("$deltatoken")
        if skiptoken:
            state = self._load_state(ctx, skiptoken, "skip", collection)
            snapshot = self._load_state(ctx, state["snapshot"], "snapshot", collection)
            return self._delta_page(
                ctx, snapshot["entries"], snapshot["final"], size, state["offset"], state["snapshot"]
            )
        if deltatoken:
            state = self._load_state(ctx, deltatoken, "delta", collection)
            window = _window_of(state)
            seen: dict[str, list[str]] = state["seen"]
            entries: list[dict[str, Any]] = []
            for kind, _seq, item_id, row in self.store.item_changes(folder.id, int(state["seq"])):
                old = seen.pop(item_id, [cv.to_graph_id(item_id)] if kind == "Delete" else [])
                new = render(row, window) if row is not None else []
                new_ids = [gid for gid, _ in new]
                entries.extend(_removed(gid, collection) for gid in old if gid not in new_ids)
                entries.extend(e for _, e in new)
                if new_ids:
                    seen[item_id] = new_ids
            final = {**state, "seq": self.store.current_seq(folder.mailbox), "seen": seen}
            return self._delta_page(ctx, entries, final, size)
        if window_required:
            window = self._window(ctx)
        else:
            window = (dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC))
        seen = {}
        entries = []
        for row in self.store.items_in(folder.id):
            new = render(row, window)
            if new:
                seen[row.id] = [gid for gid, _ in new]
                entries.extend(e for _, e in new)
        final = {
            "kind": "delta",
            "collection": collection,
            "path": ctx.req.path,
            "seq": self.store.current_seq(folder.mailbox),
            "window": [fmt_dt(window[0]), fmt_dt(window[1])] if window_required else None,
            "seen": seen,
        }
        return self._delta_page(ctx, entries, final, size)

    def _page_size_delta(self, ctx: Ctx, default: int) -> int:
        if ctx.req.prefer.maxpagesize:
            return min(ctx.req.prefer.maxpagesize, MAX_PAGE)
        return default

    def _delta_page(
        self,
        ctx: Ctx,
        entries: list[dict[str, Any]],
        final: dict[str, Any],
        size: int,
        offset: int = 0,
        snapshot: str | None = None,
    ) -> Response:
        """The page at ``offset`` of a round's entries. A round longer than a page is stored once
        (a snapshot); each nextLink names the snapshot and the next offset."""
        base = f"{self.app.url}/v1.0{final['path']}"
        page = entries[offset : offset + size]
        kind = {"calendarView": "events", "contacts": "contacts", "tasks": "tasks"}[
            final["collection"].split(":")[0]
        ]
        body: dict[str, Any] = {"@odata.context": self._context_url(ctx, f"{kind}(delta)"), "value": page}
        if offset + size < len(entries):
            if snapshot is None:
                snapshot = self._save_state(
                    ctx,
                    {
                        "kind": "snapshot",
                        "collection": final["collection"],
                        "entries": entries,
                        "final": final,
                    },
                )
            token = self._save_state(
                ctx,
                {
                    "kind": "skip",
                    "collection": final["collection"],
                    "snapshot": snapshot,
                    "offset": offset + size,
                },
            )
            body["@odata.nextLink"] = f"{base}?$skiptoken={token}"
        else:
            token = self._save_state(ctx, final)
            body["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        headers = {}
        if ctx.req.prefer.maxpagesize:
            headers["Preference-Applied"] = f"odata.maxpagesize={size}"
        return self._json(200, body, ctx, headers)

    def _save_state(self, ctx: Ctx, state: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(24)
        self.store.save_delta_state(token, ctx.mailbox, json.dumps(state))
        return token

    def _load_state(self, ctx: Ctx, token: str, kind: str, collection: str) -> dict[str, Any]:
        found = None if self.app.take_expired_token() else self.store.delta_state(token)
        if found is None:
            raise GraphError(
                410,
                "SyncStateNotFound",
                "The sync state cannot be found: the token is unknown or has expired. Start a new round "
                "of change tracking without a token.",
            )
        mailbox, data = found
        state = json.loads(data)
        if mailbox != ctx.mailbox or state.get("kind") != kind or state.get("collection") != collection:
            raise GraphError(
                400, "SyncStateInvalid", "The sync state belongs to another collection or mailbox."
            )
        return dict(state)

    # -- contacts ----------------------------------------------------------------------------------------
    def _contact_folder(self, ctx: Ctx) -> FolderRow:
        default = self._folder(ctx.mailbox, "contacts")
        wanted = ctx.params.get("folder")
        if wanted is None or cv.to_ews_id(wanted) == default.id or wanted.lower() == "contacts":
            return default
        folder = self.store.folder(cv.to_ews_id(wanted)) if id_kind(cv.to_ews_id(wanted)) == b"F" else None
        if folder is None or folder.mailbox != ctx.mailbox or folder.element != "ContactsFolder":
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return folder

    def _contact(self, ctx: Ctx, row: ItemRow, expands: list[Expand]) -> dict[str, Any]:
        full = self._full(row)
        return self._shape(ctx, cv.contact_json(row.id, full, row.change_key, row.folder_id), full, expands)

    _CONTACT_FIELDS: dict[str, Callable[[Any], str | None]] = {
        "displayName": lambda e: it.child_text(e, "DisplayName"),
        "givenName": lambda e: it.child_text(e, "GivenName"),
        "surname": lambda e: it.child_text(e, "Surname"),
        "companyName": lambda e: it.child_text(e, "CompanyName"),
    }

    def list_contact_folders(self, ctx: Ctx) -> Response:
        default = self._folder(ctx.mailbox, "contacts")
        entries = [
            {
                "id": cv.to_graph_id(f.id),
                "displayName": f.display_name,
                "parentFolderId": cv.to_graph_id(default.id),
            }
            for f in self.store.children(default.id)
            if f.element == "ContactsFolder"
        ]
        return self._collection(ctx, entries, "contactFolders")

    def list_contacts(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx)
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        keep = self._filter(ctx, self._CONTACT_FIELDS)
        rows = [
            row
            for row in self.store.items_in(folder.id)
            if row.item_type == "Contact" and keep(cv.row_elem(row))
        ]
        return self._collection(ctx, rows, "contacts", render=lambda row: self._contact(ctx, row, expands))

    def get_contact(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx) if "folder" in ctx.params else None
        row = self._row(ctx, ctx.params["id"], "Contact", {folder.id} if folder else None)
        expands = parse_expand(ctx.req.query.get("$expand"), {"singleValueExtendedProperties"})
        body = {
            "@odata.context": self._context_url(ctx, "contacts/$entity"),
            **self._contact(ctx, row, expands),
        }
        return self._json(200, body, ctx)

    def create_contact(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx)
        elem, _ = cv.contact_xml(self._body(ctx), None)
        it.normalise(elem, ctx.mailbox)
        row = self.store.add_item(ctx.mailbox, folder.id, "Contact", cv.stored_xml(elem))
        body = {"@odata.context": self._context_url(ctx, "contacts/$entity"), **self._contact(ctx, row, [])}
        return self._json(201, body, ctx)

    def patch_contact(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx) if "folder" in ctx.params else None
        row = self._row(ctx, ctx.params["id"], "Contact", {folder.id} if folder else None)
        self._check_etag(ctx, row)
        elem, changed = cv.contact_xml(self._body(ctx), cv.row_elem(row))
        if changed & {"GivenName", "Surname", "MiddleName"} and "DisplayName" not in changed:
            it.drop_child(elem, "DisplayName")  # derived again, as Outlook does
        it.normalise(elem, ctx.mailbox, changed)
        row = self.store.update_item(row, cv.stored_xml(elem))
        body = {"@odata.context": self._context_url(ctx, "contacts/$entity"), **self._contact(ctx, row, [])}
        return self._json(200, body, ctx)

    def delete_contact(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx) if "folder" in ctx.params else None
        row = self._row(ctx, ctx.params["id"], "Contact", {folder.id} if folder else None)
        self._check_etag(ctx, row)
        self._move_to_deleted(row)
        return Response(204)

    def contacts_delta(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx)
        select = ctx.req.query.get("$select")

        def render(row: ItemRow, _window: Any) -> list[tuple[str, dict[str, Any]]]:
            if row.item_type != "Contact":
                return []
            entry = self._select(
                cv.contact_json(row.id, self._full(row), row.change_key, row.folder_id), select
            )
            return [(entry["id"], entry)]

        return self._delta(ctx, folder, f"contacts:{folder.id}", render)

    # -- To Do ---------------------------------------------------------------------------------------------
    def _task_lists(self, mailbox: str) -> list[FolderRow]:
        default = self._folder(mailbox, "tasks")
        root = self._folder(mailbox, "msgfolderroot")
        others = [
            f for f in self.store.children(root.id) if f.element == "TasksFolder" and f.id != default.id
        ]
        return [default, *others]

    def _task_list(self, ctx: Ctx) -> FolderRow:
        ews_id = cv.to_ews_id(ctx.params["list"])
        if id_kind(ews_id) is None:
            raise GraphError(400, "invalidRequest", "Invalid list id.")
        for folder in self._task_lists(ctx.mailbox):
            if folder.id == ews_id:
                return folder
        raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    def _list_json(self, ctx: Ctx, folder: FolderRow) -> dict[str, Any]:
        return cv.task_list_json(folder, folder.distinguished == "tasks")

    def list_task_lists(self, ctx: Ctx) -> Response:
        entries = [self._list_json(ctx, f) for f in self._task_lists(ctx.mailbox)]
        return self._collection(ctx, entries, "todo/lists", TODO_DEFAULT_PAGE)

    def get_task_list(self, ctx: Ctx) -> Response:
        return self._json(200, self._list_json(ctx, self._task_list(ctx)), ctx)

    def create_task_list(self, ctx: Ctx) -> Response:
        body = self._body(ctx)
        name = body.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise GraphError(400, "invalidRequest", "A task list needs a displayName.")
        root = self._folder(ctx.mailbox, "msgfolderroot")
        folder = self.store.add_folder(ctx.mailbox, root.id, None, "TasksFolder", "IPF.Task", name)
        out = {"@odata.context": self._context_url(ctx, "todo/lists/$entity"), **self._list_json(ctx, folder)}
        return self._json(201, out, ctx)

    def patch_task_list(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)
        name = self._body(ctx).get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise GraphError(400, "invalidRequest", "displayName must be a non-empty string.")
        if folder.distinguished == "tasks":
            raise GraphError(400, "invalidRequest", "The default list cannot be renamed.")
        self.store.rename_folder(folder, name)
        return self._json(200, self._list_json(ctx, self.store.folder(folder.id) or folder), ctx)

    def delete_task_list(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)
        if folder.distinguished == "tasks":
            raise GraphError(400, "invalidRequest", "The default list cannot be deleted.")
        self.store.delete_folder(folder)
        return Response(204)

    def _task_row(self, ctx: Ctx, folder: FolderRow) -> ItemRow:
        return self._row(ctx, ctx.params["id"], "Task", {folder.id})

    def _task(self, ctx: Ctx, row: ItemRow, expands: list[Expand]) -> dict[str, Any]:
        full = self._full(row)
        with_linked = any(e.name == "linkedResources" for e in expands)
        return self._select(
            cv.task_json(row.id, full, row.change_key, with_linked=with_linked), ctx.req.query.get("$select")
        )

    def list_tasks(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)
        expands = parse_expand(ctx.req.query.get("$expand"), {"linkedResources"})
        keep = self._filter(
            ctx,
            {
                "title": lambda e: it.child_text(e, "Subject"),
                "status": lambda e: cv._reverse(cv._TASK_STATUS).get(
                    it.child_text(e, "Status") or "NotStarted"
                ),
            },
        )
        rows = [
            row
            for row in self.store.items_in(folder.id)
            if row.item_type == "Task" and keep(cv.row_elem(row))
        ]
        return self._collection(
            ctx,
            rows,
            f"todo/lists('{ctx.params['list']}')/tasks",
            TODO_DEFAULT_PAGE,
            render=lambda row: self._task(ctx, row, expands),
        )

    def get_task(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        expands = parse_expand(ctx.req.query.get("$expand"), {"linkedResources"})
        return self._json(200, self._task(ctx, row, expands), ctx)

    def create_task(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)
        elem, _ = cv.task_xml(self._body(ctx), None)
        it.normalise(elem, ctx.mailbox)
        row = self.store.add_item(ctx.mailbox, folder.id, "Task", cv.stored_xml(elem))
        return self._json(201, self._task(ctx, row, [Expand("linkedResources", None)]), ctx)

    def patch_task(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        self._check_etag(ctx, row)
        body = self._body(ctx)
        if "linkedResources" in body:
            raise GraphError(
                400,
                "invalidRequest",
                "linkedResources cannot be changed by PATCH on the task; use /linkedResources.",
            )
        elem, changed = cv.task_xml(body, cv.row_elem(row))
        count = it.child(elem, "ChangeCount")
        it.set_child(elem, "ChangeCount", str(int(count.text or "1") + 1 if count is not None else 2))
        it.normalise(elem, ctx.mailbox, changed)
        row = self.store.update_item(row, cv.stored_xml(elem))
        return self._json(200, self._task(ctx, row, []), ctx)

    def delete_task(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        self._check_etag(ctx, row)
        self._move_to_deleted(row)
        return Response(204)

    def tasks_delta(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)

        def render(row: ItemRow, _window: Any) -> list[tuple[str, dict[str, Any]]]:
            if row.item_type != "Task":
                return []
            entry = cv.task_json(row.id, self._full(row), row.change_key)
            return [(entry["id"], entry)]

        return self._delta(ctx, folder, f"tasks:{folder.id}", render, default_page=TODO_DEFAULT_PAGE)

    # -- linked resources ------------------------------------------------------------------------------
    def _linked_node(self, elem: Any, res_id: str) -> Any:
        for node in cv.linked_resources(elem):
            if node.get("Id") == res_id:
                return node
        raise GraphError(404, "ErrorItemNotFound", "The specified linked resource was not found.")

    def list_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        entries = [cv.linked_json(n) for n in cv.linked_resources(cv.row_elem(row))]
        return self._collection(ctx, entries, "linkedResources", TODO_DEFAULT_PAGE)

    def get_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        return self._json(200, cv.linked_json(self._linked_node(cv.row_elem(row), ctx.params["res"])), ctx)

    def create_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        node = cv.add_linked_resource(elem, self._body(ctx))
        self.store.update_item(row, cv.stored_xml(elem))
        return self._json(201, cv.linked_json(node), ctx)

    def patch_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        node = self._linked_node(elem, ctx.params["res"])
        cv.update_linked_resource(node, self._body(ctx))
        self.store.update_item(row, cv.stored_xml(elem))
        return self._json(200, cv.linked_json(node), ctx)

    def delete_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        elem.remove(self._linked_node(elem, ctx.params["res"]))
        self.store.update_item(row, cv.stored_xml(elem))
        return Response(204)


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


_ODATA_TYPES = {"calendarView": "event", "contacts": "contact", "tasks": "todoTask"}


def _removed(graph_id: str, collection: str) -> dict[str, Any]:
    kind = _ODATA_TYPES.get(collection.split(":", 1)[0], "event")
    return {"@odata.type": f"#microsoft.graph.{kind}", "id": graph_id, "@removed": {"reason": "deleted"}}


def _window_of(state: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    window = state.get("window")
    if not window:
        return dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)
    start, end = parse_dt(window[0]), parse_dt(window[1])
    assert start is not None and end is not None
    return start, end


def _query_time(text: str, name: str) -> dt.datetime:
    value = parse_dt(text)
    if value is None or not re.match(r"^\d{4}-\d{2}-\d{2}", text.strip()):
        raise GraphError(
            400,
            "ErrorInvalidParameter",
            f"The value '{text}' of parameter '{name}' is not a valid date-time.",
        )
    return value
