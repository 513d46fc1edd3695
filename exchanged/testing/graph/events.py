"""Events: the calendar, events, occurrences, calendarView and its delta."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ..ews import items as it
from ..ews import recurrence
from ..ews.soap import EwsError, parse_dt, t
from ..ews.store import ItemRow
from . import convert as cv
from . import event_json as ej
from .base import Ctx, Response, not_found
from .convert import GraphError
from .delta import DeltaOps
from .query import Expand, parse_expand


class EventOps(DeltaOps):
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
        entry = ej.event_json(
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
        "iCalUId": lambda e: ej.ical_uid(it.child_text(e, "UID") or ""),
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
        elem, _changed = ej.event_xml(self._body(ctx), None, self.time_zone(ctx.mailbox))
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
            elem, changed = ej.event_xml(body, stored, self.time_zone(ctx.mailbox))
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
        updated, _ = ej.event_xml(body, current, self.time_zone(ctx.mailbox))
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
