"""GetFolder, FindFolder, CreateFolder, DeleteFolder, EmptyFolder."""

from __future__ import annotations

from .base import Ctx, OpsBase, children, page_of, xml_bool
from .restrict import matches
from .soap import Element, EwsError, error, local, m, response_root, schema_fault, sub, success, t
from .store import PUBLIC, FolderRow


class FolderOps(OpsBase):
    # -- folders ----------------------------------------------------------------------------------------
    def op_GetFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "GetFolder")
        for ref in children(op, "FolderIds"):
            try:
                folder = self.folder(ctx, ref)
            except EwsError as exc:
                error(container, "GetFolder", exc)
                continue
            msg = success(container, "GetFolder")
            self.folder_xml(sub(msg, m("Folders")), folder, op.find(m("FolderShape")))

    def op_FindFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "FindFolder")
        traversal = op.get("Traversal", "Shallow")
        view = op.find(m("IndexedPageFolderView"))
        for ref in children(op, "ParentFolderIds"):
            try:
                parent = self.folder(ctx, ref)
                if traversal == "Deep" and parent.mailbox == PUBLIC:
                    raise EwsError(
                        "ErrorInvalidOperation", "Deep traversal is not allowed for public folders."
                    )
            except EwsError as exc:
                error(container, "FindFolder", exc)
                continue
            found = (
                self.store.descendants(parent.id) if traversal == "Deep" else self.store.children(parent.id)
            )
            restriction = op.find(m("Restriction"))
            if restriction is not None and len(restriction):
                found = [f for f in found if matches(restriction[0], self.folder_full(f))]
            offset, page, last = page_of(found, view)
            msg = success(container, "FindFolder")
            root = sub(
                msg,
                m("RootFolder"),
                IndexedPagingOffset=str(offset + len(page)),
                TotalItemsInView=str(len(found)),
                IncludesLastItemInRange=xml_bool(last),
            )
            folders = sub(root, t("Folders"))
            for f in page:
                self.folder_xml(folders, f, op.find(m("FolderShape")))

    def op_CreateFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "CreateFolder")
        parent_ref = op.find(m("ParentFolderId"))
        try:
            if parent_ref is None or not len(parent_ref):
                raise schema_fault("CreateFolder needs a ParentFolderId.")
            parent = self.folder(ctx, parent_ref[0])
        except EwsError as exc:
            for _ in children(op, "Folders") if op.find(m("Folders")) is not None else [None]:
                error(container, "CreateFolder", exc)
            return
        for spec in children(op, "Folders"):
            try:
                folder = self._create_folder(parent, spec)
            except EwsError as exc:
                error(container, "CreateFolder", exc)
                continue
            msg = success(container, "CreateFolder")
            out = sub(sub(msg, m("Folders")), t(folder.element))
            sub(out, t("FolderId"), Id=folder.id, ChangeKey=folder.change_key)

    def _create_folder(self, parent: FolderRow, spec: Element) -> FolderRow:
        element = local(spec.tag)
        if element not in ("Folder", "CalendarFolder", "ContactsFolder", "TasksFolder", "SearchFolder"):
            raise EwsError("ErrorInvalidRequest", f"Cannot create a folder of type {element}.")
        name = (spec.findtext(t("DisplayName")) or "").strip()
        if not name:
            raise EwsError("ErrorInvalidRequest", "A folder needs a DisplayName.")
        if any(c.display_name.lower() == name.lower() for c in self.store.children(parent.id)):
            raise EwsError("ErrorFolderExists", "A folder with the specified name already exists.")
        default_class = {
            "CalendarFolder": "IPF.Appointment",
            "ContactsFolder": "IPF.Contact",
            "TasksFolder": "IPF.Task",
        }.get(element, "IPF.Note")
        folder_class = spec.findtext(t("FolderClass")) or default_class
        return self.store.add_folder(parent.mailbox, parent.id, None, element, folder_class, name)

    def op_DeleteFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "DeleteFolder")
        for ref in children(op, "FolderIds"):
            try:
                folder = self.folder(ctx, ref)
                if folder.distinguished:
                    raise EwsError(
                        "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted."
                    )
                self.store.delete_folder(folder)
            except EwsError as exc:
                error(container, "DeleteFolder", exc)
                continue
            success(container, "DeleteFolder")

    def op_EmptyFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "EmptyFolder")
        for ref in children(op, "FolderIds"):
            try:
                folder = self.folder(ctx, ref)
                for item in self.store.items_in(folder.id):
                    self.store.delete_item(item)
                if op.get("DeleteSubFolders") == "true":
                    for c in self.store.children(folder.id):
                        self.store.delete_folder(c)
            except EwsError as exc:
                error(container, "EmptyFolder", exc)
                continue
            success(container, "EmptyFolder")
