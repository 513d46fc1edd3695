"""Shared ground of the EWS operations: request context, folder/item resolution, paging helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import items as it
from .soap import (
    Element,
    EwsError,
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

    def folder_xml(self, parent: Element, folder: FolderRow) -> Element:
        el = sub(parent, t(folder.element))
        sub(el, t("FolderId"), Id=folder.id, ChangeKey=folder.change_key)
        if folder.parent_id:
            p = self.store.folder(folder.parent_id)
            if p is not None:
                sub(el, t("ParentFolderId"), Id=p.id, ChangeKey=p.change_key)
        if folder.folder_class:
            sub(el, t("FolderClass"), folder.folder_class)
        sub(el, t("DisplayName"), folder.display_name)
        sub(el, t("TotalCount"), str(self.store.item_count(folder.id)))
        sub(el, t("ChildFolderCount"), str(len(self.store.children(folder.id))))
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
        return it.full_view(row, self.store.folder(row.folder_id))


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
