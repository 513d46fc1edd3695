"""The Microsoft Graph v1.0 resources the test server serves, on the EWS test server's store.

Every request runs in one store transaction (``Store.lock`` + BEGIN IMMEDIATE), so it is
serialised with the EWS front end's operations, in this process and in another process serving
the same state dir. Paths, query options and JSON shapes follow Microsoft's documentation of
Graph v1.0; docs/TEST_SERVER.md ("Graph test server") lists what is served and the differences.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

from ..ews.soap import EwsError
from ..ews.store import Store
from . import convert as cv
from .auth import Grant
from .base import JSON_TYPE, PERMISSIONS, Ctx, Request, Response, Route, error_response, user_id
from .contacts import ContactOps
from .convert import GraphError
from .events import EventOps
from .query import parse_prefer
from .todo import TodoOps

if TYPE_CHECKING:
    from .server import GraphTestServer

log = logging.getLogger("exchanged.testing.graph")


__all__ = ["JSON_TYPE", "GraphApi", "Request", "Response", "error_response", "match_route", "path_pattern"]


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


class GraphApi(EventOps, ContactOps, TodoOps):
    """Every Graph resource the test server serves; ``handle`` answers one request."""

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
