"""Shared ground of the EWS operations: request context, folder/item resolution, paging helpers."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from . import items as it
from . import mapi
from .soap import (
    Element,
    EwsError,
    fmt_dt,
    local,
    m,
    schema_fault,
    sub,
    t,
)
from .store import PUBLIC, FolderRow, ItemRow, Store, id_kind

if TYPE_CHECKING:
    from .server import EwsTestServer
    from .streaming import Streams

FIND_ITEM_CAP = 1000  # EWSFindCountLimit
SYNC_MAX = 512
CALENDAR_VIEW_MAX_DAYS = 2 * 365 + 1


@dataclass
class Ctx:
    user: str
    mailbox: str | None  # the mailbox the request acts on (impersonated or logged-in)
    impersonating: bool
    service_account: bool
    anchor: str | None = None  # X-AnchorMailbox
    affinity: bool = False  # X-PreferServerAffinity: true


class OpsBase:
    """What every operation family uses; the Dispatcher combines the families."""

    app: EwsTestServer
    store: Store
    streams: Streams

    # -- folder resolution ----------------------------------------------------------------------------
    def _accessible(self, ctx: Ctx, mailbox: str) -> bool:
        if mailbox == PUBLIC or mailbox == ctx.mailbox:
            return True
        return ctx.service_account and not ctx.impersonating

    def folder(self, ctx: Ctx, ref: Element) -> FolderRow:
        kind = local(ref.tag)
        if kind == "DistinguishedFolderId":
            mailbox = ctx.mailbox
            mb = ref.find(t("Mailbox"))
            if mb is not None and mb.findtext(t("EmailAddress")):
                mailbox = (mb.findtext(t("EmailAddress")) or "").strip().lower()
                if not self.store.has_mailbox(mailbox):
                    raise EwsError(
                        "ErrorNonExistentMailbox", f"No mailbox with such guid or SMTP address {mailbox}."
                    )
                if not self._accessible(ctx, mailbox):
                    raise EwsError(
                        "ErrorAccessDenied",
                        f"Access is denied. Check credentials and try again "
                        f"({ctx.user} has no access to {mailbox}).",
                    )
            name = ref.get("Id", "")
            if mailbox is None and name != "publicfoldersroot":
                raise EwsError(
                    "ErrorMissingEmailAddress",
                    "When making a request as an account that does not "
                    "have a mailbox, you must specify the mailbox primary SMTP address for any "
                    "distinguished folder Ids.",
                )
            folder = self.store.distinguished(mailbox or "", name)
            if folder is None:
                raise EwsError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
            return folder
        if kind == "FolderId":
            fid = ref.get("Id", "")
            if id_kind(fid) != b"F":
                if id_kind(fid) is None:
                    raise EwsError("ErrorInvalidIdMalformed", "Id is malformed.")
                raise EwsError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
            folder = self.store.folder(fid)
            if folder is None:
                raise EwsError("ErrorFolderNotFound", "The specified folder could not be found in the store.")
            if not self._accessible(ctx, folder.mailbox):
                raise EwsError("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
            return folder
        raise schema_fault(f"The request failed schema validation: unexpected {kind}.")

    def folder_xml(self, parent: Element, folder: FolderRow, shape: Element | None = None) -> Element:
        """The folder as a FolderShape asks (None: Default). IdOnly is the FolderId only;
        Default/AllProperties the usual fields; AdditionalProperties add fields and the
        t:ExtendedProperty values of MAPI tags (`folder_full` is everything, as restrictions see it)."""
        full = self.folder_full(folder)
        base = "Default" if shape is None else (shape.findtext(t("BaseShape")) or "IdOnly").strip()
        props = None if shape is None else shape.find(t("AdditionalProperties"))
        additional = [] if props is None else [p for p in props if isinstance(p.tag, str)]
        el = sub(parent, full.tag)
        for c in full:
            name = local(c.tag)
            wanted = name == "FolderId" or (base != "IdOnly" and name != "ExtendedProperty")
            if not wanted:
                wanted = any(it.select_one(c, p) for p in additional)
            if wanted:
                el.append(copy.deepcopy(c))
        return el

    def folder_full(self, folder: FolderRow) -> Element:
        el = etree.Element(t(folder.element))
        sub(el, t("FolderId"), Id=folder.id, ChangeKey=folder.change_key)
        if folder.parent_id:
            p = self.store.folder(folder.parent_id)
            if p is not None:
                sub(el, t("ParentFolderId"), Id=p.id, ChangeKey=p.change_key)
        if folder.folder_class:
            sub(el, t("FolderClass"), folder.folder_class)
        sub(el, t("DisplayName"), folder.display_name)
        count = self.store.item_count(folder.id)
        children = self.store.children(folder.id)
        sub(el, t("TotalCount"), str(count))
        sub(el, t("ChildFolderCount"), str(len(children)))
        created, changed = self.store.folder_times(folder.id)
        props: mapi.Props = {
            (mapi.PR_DISPLAY_NAME, "String"): folder.display_name,
            (mapi.PR_CONTENT_COUNT, "Integer"): str(count),
            (mapi.PR_CONTENT_UNREAD, "Integer"): "0",
            (mapi.PR_SUBFOLDERS, "Boolean"): xml_bool(bool(children)),
            (mapi.PR_FOLDER_TYPE, "Integer"): "1",
            (mapi.PR_ATTR_HIDDEN, "Boolean"): "false",
            (mapi.PR_CREATION_TIME, "SystemTime"): fmt_dt(created),
            (mapi.PR_LAST_MODIFICATION_TIME, "SystemTime"): fmt_dt(changed),
            (mapi.PR_LOCAL_COMMIT_TIME_MAX, "SystemTime"): fmt_dt(changed),
            (mapi.PR_CHANGE_NUMBER, "Long"): str(self.store.folder_change_number(folder)),
        }
        if folder.folder_class:
            props[(mapi.PR_CONTAINER_CLASS, "String")] = folder.folder_class
        for prop in mapi.elements(mapi.tagged(props)):
            el.append(prop)
        rights = sub(el, t("EffectiveRights"))
        for name, value in (
            ("CreateAssociated", "true"),
            ("CreateContents", "true"),
            ("CreateHierarchy", "true"),
            ("Delete", "true"),
            ("Modify", "true"),
            ("Read", "true"),
            ("ViewPrivateItems", "true"),
        ):
            sub(rights, t(name), value)
        if folder.element == "Folder" and folder.folder_class == "IPF.Note":
            sub(el, t("UnreadCount"), "0")
        return el

    def item(self, ctx: Ctx, ref: Element) -> ItemRow:
        ident = ref.get("Id", "") if local(ref.tag) == "ItemId" else ref.get("RecurringMasterId", "")
        kind = id_kind(ident)
        if kind is None:
            raise EwsError("ErrorInvalidIdMalformed", "Id is malformed.")
        if kind != b"I":
            raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")
        row = self.store.item(ident)
        if row is None or not self._accessible(ctx, row.mailbox):
            raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")
        return row

    def full(self, row: ItemRow) -> Element:
        """The item with every field, and the MAPI properties Exchange derives from them (readable,
        restrictable and sortable by tag); a property the client wrote itself wins."""
        full = it.full_view(row, self.store.folder(row.folder_id))
        written = full.findall(t("ExtendedProperty"))
        for prop in mapi.item_properties(full, row.item_type, row.created_seq):
            if not any(it.ext_matches(w.find(t("ExtendedFieldURI")), prop.find(t("ExtendedFieldURI")))
                       for w in written):
                full.append(prop)
        it.order_children(full)
        return full


def now_text() -> str:
    from .soap import fmt_dt
    from .store import utcnow

    return fmt_dt(utcnow())


def xml_bool(value: bool) -> str:
    return "true" if value else "false"


def children(parent: Element, name: str) -> list[Element]:
    """The elements inside parent's <m:name>; none when it is missing."""
    found = parent.find(m(name))
    return [] if found is None else [c for c in found if isinstance(c.tag, str)]


def parse_int(text: str | None, name: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise schema_fault(f"The request failed schema validation: {name} must be an integer.") from None


def page_of(found: list[Any], view: Element | None) -> tuple[int, list[Any], bool]:
    """Offset, page and IncludesLastItemInRange for an Indexed page view (capped at 1000 like Exchange)."""
    if view is None:
        page = found[:FIND_ITEM_CAP]
        return 0, page, len(page) == len(found)
    offset = parse_int(view.get("Offset", "0"), "Offset")
    max_entries = min(
        parse_int(view.get("MaxEntriesReturned", str(FIND_ITEM_CAP)), "MaxEntriesReturned"), FIND_ITEM_CAP
    )
    if view.get("BasePoint", "Beginning") == "End":
        end = max(len(found) - offset, 0)
        start = max(end - max_entries, 0)
        return offset, found[start:end], start == 0
    page = found[offset : offset + max_entries]
    return offset, page, offset + len(page) >= len(found)
