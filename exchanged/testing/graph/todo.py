"""Microsoft To Do: task lists (task folders), tasks (EWS Task items), linkedResources, delta."""

from __future__ import annotations

from typing import Any

from ..ews import items as it
from ..ews.store import FolderRow, ItemRow, id_kind
from . import convert as cv
from . import task_json as tj
from .base import TODO_DEFAULT_PAGE, Ctx, Response
from .convert import GraphError
from .delta import DeltaOps
from .query import Expand, parse_expand


class TodoOps(DeltaOps):
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
        return tj.task_list_json(folder, folder.distinguished == "tasks")

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
            tj.task_json(row.id, full, row.change_key, with_linked=with_linked), ctx.req.query.get("$select")
        )

    def list_tasks(self, ctx: Ctx) -> Response:
        folder = self._task_list(ctx)
        expands = parse_expand(ctx.req.query.get("$expand"), {"linkedResources"})
        keep = self._filter(
            ctx,
            {
                "title": lambda e: it.child_text(e, "Subject"),
                "status": lambda e: cv.reverse(cv.TASK_STATUS).get(
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
        elem, _ = tj.task_xml(self._body(ctx), None)
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
        elem, changed = tj.task_xml(body, cv.row_elem(row))
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
            entry = tj.task_json(row.id, self._full(row), row.change_key)
            return [(entry["id"], entry)]

        return self._delta(ctx, folder, f"tasks:{folder.id}", render, default_page=TODO_DEFAULT_PAGE)

    # -- linked resources ------------------------------------------------------------------------------
    def _linked_node(self, elem: Any, res_id: str) -> Any:
        for node in tj.linked_resources(elem):
            if node.get("Id") == res_id:
                return node
        raise GraphError(404, "ErrorItemNotFound", "The specified linked resource was not found.")

    def list_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        entries = [tj.linked_json(n) for n in tj.linked_resources(cv.row_elem(row))]
        return self._collection(ctx, entries, "linkedResources", TODO_DEFAULT_PAGE)

    def get_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        return self._json(200, tj.linked_json(self._linked_node(cv.row_elem(row), ctx.params["res"])), ctx)

    def create_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        node = tj.add_linked_resource(elem, self._body(ctx))
        self.store.update_item(row, cv.stored_xml(elem))
        return self._json(201, tj.linked_json(node), ctx)

    def patch_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        node = self._linked_node(elem, ctx.params["res"])
        tj.update_linked_resource(node, self._body(ctx))
        self.store.update_item(row, cv.stored_xml(elem))
        return self._json(200, tj.linked_json(node), ctx)

    def delete_linked(self, ctx: Ctx) -> Response:
        row = self._task_row(ctx, self._task_list(ctx))
        elem = cv.row_elem(row)
        elem.remove(self._linked_node(elem, ctx.params["res"]))
        self.store.update_item(row, cv.stored_xml(elem))
        return Response(204)
