"""CreateItem, GetItem, UpdateItem, DeleteItem, MoveItem, FindItem (with CalendarView)."""

from __future__ import annotations

import datetime as dt

from lxml import etree

from . import items as it
from . import mapi, mime, recurrence
from .base import CALENDAR_VIEW_MAX_DAYS, Ctx, OpsBase, children, page_of, xml_bool
from .restrict import apply_sort, matches
from .soap import (
    Element,
    EwsError,
    error,
    local,
    m,
    parse_dt,
    response_root,
    schema_fault,
    sub,
    success,
    t,
)
from .store import FolderRow, ItemRow


class ItemOps(OpsBase):
    def op_CreateItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "CreateItem")
        mode = op.get("SendMeetingInvitations", "SendToAllAndSaveCopy")
        folder_ref = op.find(m("SavedItemFolderId"))
        for spec in children(op, "Items"):
            kind = local(spec.tag)
            try:
                if kind not in it.ITEM_TYPES:
                    raise EwsError(
                        "ErrorInvalidItemForOperationCreateItem",
                        f"Items of type {kind} cannot be created by this test server.",
                    )
                if folder_ref is not None and len(folder_ref):
                    folder = self.folder(ctx, folder_ref[0])
                else:
                    default = etree.Element(t("DistinguishedFolderId"), Id=it.DEFAULT_FOLDER[kind])
                    folder = self.folder(ctx, default)
                elem = it.strip_namespace_noise(spec)
                mime.apply_mime(elem, kind, overwrite=False)
                mapi.absorb_written(elem, kind)
                it.normalise(elem, folder.mailbox or ctx.mailbox or "")
                row = self.store.add_item(folder.mailbox, folder.id, kind, etree.tostring(elem).decode())
            except EwsError as exc:
                error(container, "CreateItem", exc)
                continue
            if kind == "CalendarItem" and mode not in ("SendToNone",):
                self.store.record_invitation(row.mailbox, row.id, "CreateItem", mode)
            msg = success(container, "CreateItem")
            out = sub(sub(msg, m("Items")), t(kind))
            sub(out, t("ItemId"), Id=row.id, ChangeKey=row.change_key)

    def op_GetItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "GetItem")
        shape = op.find(m("ItemShape"))
        for ref in children(op, "ItemIds"):
            try:
                full = self._resolve_for_read(ctx, ref)
            except EwsError as exc:
                error(container, "GetItem", exc)
                continue
            try:
                answer = it.shaped(full, shape)
                if mime.wants_mime(shape):
                    answer.insert(0, mime.mime_content(full))
            except EwsError as exc:
                error(container, "GetItem", exc)
                continue
            msg = success(container, "GetItem")
            sub(msg, m("Items")).append(answer)

    def _resolve_for_read(self, ctx: Ctx, ref: Element) -> Element:
        kind = local(ref.tag)
        if kind == "OccurrenceItemId":
            master = self.item(ctx, ref)
            index = int(ref.get("InstanceIndex", "0"))
            return recurrence.occurrence_by_index(self.full(master), master, index)
        ident = ref.get("Id", "")
        if recurrence.is_occurrence_id(ident):
            master_id, original = recurrence.parse_occurrence_id(ident)
            master = self.item(ctx, etree.Element(t("ItemId"), Id=master_id))
            return recurrence.occurrence_at(self.full(master), master, original)
        if kind == "RecurringMasterItemId" and recurrence.is_occurrence_id(ref.get("OccurrenceId", "")):
            master_id, _ = recurrence.parse_occurrence_id(ref.get("OccurrenceId", ""))
            return self.full(self.item(ctx, etree.Element(t("ItemId"), Id=master_id)))
        if kind == "RecurringMasterItemId":
            return self.full(self.item(ctx, etree.Element(t("ItemId"), Id=ref.get("OccurrenceId", ""))))
        return self.full(self.item(ctx, ref))

    def op_UpdateItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "UpdateItem")
        resolution = op.get("ConflictResolution", "AutoResolve")
        mode = op.get("SendMeetingInvitationsOrCancellations", "SendToAllAndSaveCopy")
        for change in children(op, "ItemChanges"):
            try:
                row, answer_id = self._update_one(ctx, change, resolution)
            except EwsError as exc:
                error(container, "UpdateItem", exc)
                continue
            if row.item_type == "CalendarItem" and mode != "SendToNone":
                self.store.record_invitation(row.mailbox, row.id, "UpdateItem", mode)
            msg = success(container, "UpdateItem")
            out = sub(sub(msg, m("Items")), t(row.item_type))
            sub(out, t("ItemId"), Id=answer_id, ChangeKey=row.change_key)
            sub(sub(msg, m("ConflictResults")), t("Count"), "0")

    def _update_one(self, ctx: Ctx, change: Element, resolution: str) -> tuple[ItemRow, str]:
        """The updated row and the id to answer with (an occurrence answers with its own id)."""
        ref = next(
            (c for c in change if local(c.tag) in ("ItemId", "OccurrenceItemId", "RecurringMasterItemId")),
            None,
        )
        if ref is None:
            raise EwsError("ErrorInvalidRequest", "An ItemChange needs an ItemId.")
        ident = ref.get("Id", "")
        if local(ref.tag) == "ItemId" and recurrence.is_occurrence_id(ident):
            master_id, original = recurrence.parse_occurrence_id(ident)
            master = self.item(ctx, etree.Element(t("ItemId"), Id=master_id))
            updates = change.find(t("Updates"))
            xml = recurrence.modify_occurrence(master, original, [] if updates is None else list(updates))
            return self.store.update_item(master, xml), ident
        row = self.item(ctx, ref)
        change_key = ref.get("ChangeKey")
        if local(ref.tag) == "ItemId":
            if not change_key and resolution == "NeverOverwrite":
                raise EwsError(
                    "ErrorChangeKeyRequiredForWriteOperations",
                    "When making a request that requires a ChangeKey, you must supply one.",
                )
            if change_key and change_key != row.change_key and resolution == "NeverOverwrite":
                raise EwsError(
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key passed "
                    "in the request does not match the current change key for the item.",
                )
        elem = etree.fromstring(row.xml)
        updates = change.find(t("Updates"))
        changed: set[str] = set()
        for upd in [] if updates is None else [u for u in updates if isinstance(u.tag, str)]:
            path = next(
                (c for c in upd if local(c.tag) in ("FieldURI", "IndexedFieldURI", "ExtendedFieldURI")), None
            )
            if path is None:
                raise EwsError("ErrorInvalidRequest", f"{local(upd.tag)} needs a property path.")
            if local(path.tag) == "FieldURI":
                changed.add(it.field_name(path.get("FieldURI", "")))
            source = next(
                (
                    c
                    for c in upd
                    if local(c.tag) in it.ITEM_TYPES
                    or local(c.tag) in ("Item", "CalendarItem", "Task", "Contact", "Message")
                ),
                None,
            )
            action = local(upd.tag)
            if action == "DeleteItemField":
                it.apply_delete(elem, path)
            elif source is None:
                raise EwsError("ErrorInvalidRequest", f"{action} needs an item element carrying the value.")
            elif action == "SetItemField":
                it.apply_set(elem, path, source)
            elif action == "AppendToItemField":
                it.apply_append(elem, path, source)
            else:
                raise EwsError("ErrorInvalidRequest", f"Unknown update {action}.")
        mime.apply_mime(elem, row.item_type, overwrite=True)
        mapi.absorb_written(elem, row.item_type)
        if row.item_type == "Task":
            count = elem.find(t("ChangeCount"))
            next_count = int(count.text or "1") + 1 if count is not None else 2
            it.set_child(elem, "ChangeCount", str(next_count))
        it.normalise(elem, row.mailbox, changed)
        return self.store.update_item(row, etree.tostring(elem).decode()), row.id

    def op_DeleteItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "DeleteItem")
        delete_type = op.get("DeleteType", "MoveToDeletedItems")
        mode = op.get("SendMeetingCancellations", "SendToAllAndSaveCopy")
        for ref in children(op, "ItemIds"):
            try:
                ident = ref.get("Id", "")
                if local(ref.tag) == "ItemId" and recurrence.is_occurrence_id(ident):
                    master_id, original = recurrence.parse_occurrence_id(ident)
                    master = self.item(ctx, etree.Element(t("ItemId"), Id=master_id))
                    self.store.update_item(master, recurrence.delete_occurrence(master, original))
                    success(container, "DeleteItem")
                    continue
                row = self.item(ctx, ref)
                if row.item_type == "CalendarItem" and mode != "SendToNone":
                    self.store.record_invitation(row.mailbox, row.id, "DeleteItem", mode)
                deleted = self.store.distinguished(row.mailbox, "deleteditems") if row.mailbox else None
                if (
                    delete_type == "MoveToDeletedItems"
                    and deleted is not None
                    and deleted.id != row.folder_id
                ):
                    self.store.move_item(row, deleted.id)
                else:
                    self.store.delete_item(row)
            except EwsError as exc:
                error(container, "DeleteItem", exc)
                continue
            success(container, "DeleteItem")

    def op_MoveItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "MoveItem")
        target_ref = op.find(m("ToFolderId"))
        for ref in children(op, "ItemIds"):
            try:
                if target_ref is None or not len(target_ref):
                    raise EwsError("ErrorInvalidRequest", "MoveItem needs a ToFolderId.")
                target = self.folder(ctx, target_ref[0])
                row = self.store.move_item(self.item(ctx, ref), target.id)
            except EwsError as exc:
                error(container, "MoveItem", exc)
                continue
            msg = success(container, "MoveItem")
            out = sub(sub(msg, m("Items")), t(row.item_type))
            sub(out, t("ItemId"), Id=row.id, ChangeKey=row.change_key)

    # -- FindItem -------------------------------------------------------------------------------------
    def op_FindItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "FindItem")
        shape = op.find(m("ItemShape"))
        restriction = op.find(m("Restriction"))
        sort_order = op.find(m("SortOrder"))
        calendar_view = op.find(m("CalendarView"))
        page_view = op.find(m("IndexedPageItemView"))
        for ref in children(op, "ParentFolderIds"):
            try:
                it.check_find_shape(shape)
                folder = self.folder(ctx, ref)
                if calendar_view is not None:
                    fulls, total, last = self._calendar_view(folder, calendar_view)
                    offset = None
                else:
                    fulls = [self.full(r) for r in self.store.items_in(folder.id)]
                    if restriction is not None and len(restriction):
                        fulls = [f for f in fulls if matches(restriction[0], f)]
                    fulls = apply_sort(fulls, sort_order)
                    total = len(fulls)
                    offset, fulls, last = page_of(fulls, page_view)
            except EwsError as exc:
                error(container, "FindItem", exc)
                continue
            msg = success(container, "FindItem")
            attrs = {"TotalItemsInView": str(total), "IncludesLastItemInRange": xml_bool(last)}
            if offset is not None:
                attrs = {"IndexedPagingOffset": str(offset + len(fulls)), **attrs}
            root = sub(msg, m("RootFolder"), **attrs)
            out = sub(root, t("Items"))
            for f in fulls:
                out.append(it.shaped(f, shape, in_find=True))

    def _calendar_view(self, folder: FolderRow, view: Element) -> tuple[list[Element], int, bool]:
        start, end = parse_dt(view.get("StartDate")), parse_dt(view.get("EndDate"))
        if start is None or end is None:
            raise schema_fault("CalendarView needs StartDate and EndDate.")
        if end < start:
            raise EwsError("ErrorCalendarEndDateIsEarlierThanStartDate", "EndDate is earlier than StartDate")
        if end - start > dt.timedelta(days=CALENDAR_VIEW_MAX_DAYS):
            raise EwsError(
                "ErrorCalendarViewRangeTooBig",
                "The time window specified is larger than the maximum allowed size of 2 years.",
            )
        found: list[Element] = []
        for row in self.store.items_in(folder.id):
            if row.item_type != "CalendarItem":
                continue
            full = self.full(row)
            found.extend(recurrence.in_range(full, row, start, end))
        found.sort(key=lambda f: parse_dt(f.findtext(t("Start"))) or start)
        total = len(found)
        max_entries = view.get("MaxEntriesReturned")
        if max_entries is not None and int(max_entries) < total:
            return found[: int(max_entries)], total, False
        return found, total, True
