"""Contacts in the mailbox's contacts folder (and its contactFolders form), with delta."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ews import items as it
from ..ews.store import FolderRow, ItemRow, id_kind
from . import contact_json as cj
from . import convert as cv
from .base import Ctx, Response
from .convert import GraphError
from .delta import DeltaOps
from .query import Expand, parse_expand


class ContactOps(DeltaOps):
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
        return self._shape(ctx, cj.contact_json(row.id, full, row.change_key, row.folder_id), full, expands)

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
        elem, _ = cj.contact_xml(self._body(ctx), None)
        it.normalise(elem, ctx.mailbox)
        row = self.store.add_item(ctx.mailbox, folder.id, "Contact", cv.stored_xml(elem))
        body = {"@odata.context": self._context_url(ctx, "contacts/$entity"), **self._contact(ctx, row, [])}
        return self._json(201, body, ctx)

    def patch_contact(self, ctx: Ctx) -> Response:
        folder = self._contact_folder(ctx) if "folder" in ctx.params else None
        row = self._row(ctx, ctx.params["id"], "Contact", {folder.id} if folder else None)
        self._check_etag(ctx, row)
        elem, changed = cj.contact_xml(self._body(ctx), cv.row_elem(row))
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
                cj.contact_json(row.id, self._full(row), row.change_key, row.folder_id), select
            )
            return [(entry["id"], entry)]

        return self._delta(ctx, folder, f"contacts:{folder.id}", render)
