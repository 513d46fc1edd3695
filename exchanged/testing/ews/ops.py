"""EWS operations: SOAP request in, SOAP response out, against the Store.

`Dispatcher.handle` never raises: malformed requests become the SOAP faults Exchange sends, and any
bug becomes ErrorInternalServerError with the traceback in the server's log only.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from . import items as it
from . import recurrence
from .restrict import apply_sort, matches
from .soap import (
    ACCEPTED_VERSIONS,
    MNS,
    SOAP_NS,
    EwsError,
    SoapFault,
    envelope,
    error,
    fault_envelope,
    local,
    m,
    parse_dt,
    response_root,
    serialize,
    sub,
    success,
    t,
)
from .store import PUBLIC, FolderRow, ItemRow, Store, id_kind

if TYPE_CHECKING:
    from .server import EwsTestServer

log = logging.getLogger("exchanged.testing.ews")
Element = Any

FIND_ITEM_CAP = 1000  # EWSFindCountLimit
SYNC_MAX = 512
CALENDAR_VIEW_MAX_DAYS = 2 * 365 + 1

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True)


@dataclass
class Ctx:
    user: str
    mailbox: str | None  # the mailbox the request acts on (impersonated or logged-in)
    impersonating: bool
    service_account: bool


class Dispatcher:
    def __init__(self, app: EwsTestServer) -> None:
        self.app = app
        self.store: Store = app.store
        self._subs: dict[str, dict[str, int]] = {}  # subscription id -> folder id -> delivered seq
        self._subs_lock = threading.Lock()

    @staticmethod
    def operation_name(body: bytes) -> str:
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError:
            return "Invalid"
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        if soap_body is None or not len(soap_body):
            return "Invalid"
        return local(soap_body[0].tag) or "Invalid"

    # -- entry point ----------------------------------------------------------------------------------
    def handle(self, user: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        op = "Invalid"
        try:
            root = self._parse(body)
            header = root.find(f"{{{SOAP_NS}}}Header")
            op_el = root.find(f"{{{SOAP_NS}}}Body")[0]
            op = local(op_el.tag)
            self.app.count_request(op)
            if etree.QName(op_el).namespace != MNS:
                raise SoapFault(
                    "ErrorSchemaValidation",
                    f"The element {op!r} is not in the EWS messages namespace.",
                    faultcode="a:ErrorSchemaValidation",
                )
            self._check_version(header)
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise SoapFault(
                    "ErrorInvalidRequest",
                    f"The request is invalid: operation {op} is not supported by this test server.",
                )
            ctx = self._context(user, header)
            if op == "GetStreamingEvents":
                self.wait_for_events(op_el)
            env, soap_body = envelope()
            with self.store.lock:
                self.store.begin()
                try:
                    handler(ctx, op_el, soap_body)
                except BaseException:
                    self.store.rollback()
                    raise
                self.store.commit()
            return 200, serialize(env)
        except SoapFault as fault:
            return 500, fault_envelope(fault)
        except (ValueError, OverflowError) as exc:
            # A value of the wrong type (a number, date or enum that does not parse): Exchange's
            # schema validation refuses the whole request before doing anything.
            log.info("EWS %s refused: a value does not parse: %s", op, exc, exc_info=True)
            return 500, fault_envelope(
                SoapFault(
                    "ErrorSchemaValidation",
                    f"The request failed schema validation: {exc}",
                    faultcode="a:ErrorSchemaValidation",
                )
            )
        except Exception:
            log.exception("EWS %s failed inside the test server", op)
            return 500, fault_envelope(
                SoapFault(
                    "ErrorInternalServerError",
                    "An internal server error occurred. The operation failed.",
                    faultcode="a:ErrorInternalServerError",
                )
            )

    def _parse(self, body: bytes) -> Element:
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise SoapFault(
                "ErrorSchemaValidation",
                f"The request failed schema validation: {exc}",
                faultcode="a:ErrorSchemaValidation",
            ) from exc
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        if root.tag != f"{{{SOAP_NS}}}Envelope" or soap_body is None or not len(soap_body):
            raise SoapFault(
                "ErrorSchemaValidation",
                "The request failed schema validation: no SOAP Envelope/Body.",
                faultcode="a:ErrorSchemaValidation",
            )
        return root

    def _check_version(self, header: Element | None) -> None:
        version_el = None if header is None else header.find(t("RequestServerVersion"))
        if version_el is None:
            return  # Exchange assumes Exchange2007 (well, the oldest) when the header is missing
        version = version_el.get("Version", "")
        if version not in ACCEPTED_VERSIONS:
            raise SoapFault(
                "ErrorInvalidServerVersion",
                "The specified server version is invalid.",
                faultcode="a:ErrorInvalidServerVersion",
            )

    def _context(self, user: str, header: Element | None) -> Ctx:
        service = self.app.is_service_account(user)
        target = None if service else user
        impersonating = False
        imp = None if header is None else header.find(t("ExchangeImpersonation"))
        if imp is not None:
            sid = imp.find(t("ConnectingSID"))
            address = None
            if sid is not None:
                for name in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
                    value = sid.findtext(t(name))
                    if value:
                        address = value.strip().lower()
                        break
            if not address:
                raise SoapFault("ErrorInvalidRequest", "ExchangeImpersonation needs a ConnectingSID address.")
            if not self.store.has_mailbox(address):
                raise SoapFault(
                    "ErrorNonExistentMailbox",
                    f"The SMTP address {address} has no mailbox associated with it.",
                    faultcode="a:ErrorNonExistentMailbox",
                )
            if not service and address != user:
                raise SoapFault(
                    "ErrorImpersonateUserDenied",
                    f"The account {user} does not have permission to impersonate the requested user.",
                    faultcode="a:ErrorImpersonateUserDenied",
                )
            target, impersonating = address, True
        return Ctx(user=user, mailbox=target, impersonating=impersonating, service_account=service)

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
        raise SoapFault(
            "ErrorSchemaValidation",
            f"The request failed schema validation: unexpected {kind}.",
            faultcode="a:ErrorSchemaValidation",
        )

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

    # -- ConvertId --------------------------------------------------------------------------------------
    def op_ConvertId(self, ctx: Ctx, op: Element, body: Element) -> None:
        dest = op.get("DestinationFormat", "EwsId")
        container = response_root(body, "ConvertId")
        source = op.find(m("SourceIds"))
        for alt in [] if source is None else list(source):
            ident = alt.get("Id", "")
            if id_kind(ident) is None:
                error(container, "ConvertId", EwsError("ErrorInvalidIdMalformed", "Id is malformed."))
                continue
            msg = success(container, "ConvertId")
            out = sub(msg, m("AlternateId"))
            out.set("{http://www.w3.org/2001/XMLSchema-instance}type", "t:AlternateIdType")
            out.set("Format", dest)
            out.set("Id", ident)
            out.set("Mailbox", alt.get("Mailbox", ""))

    # -- folders ----------------------------------------------------------------------------------------
    def op_GetFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "GetFolder")
        ids = op.find(m("FolderIds"))
        for ref in [] if ids is None else list(ids):
            try:
                folder = self.folder(ctx, ref)
            except EwsError as exc:
                error(container, "GetFolder", exc)
                continue
            msg = success(container, "GetFolder")
            self.folder_xml(sub(msg, m("Folders")), folder)

    def op_FindFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "FindFolder")
        traversal = op.get("Traversal", "Shallow")
        view = op.find(m("IndexedPageFolderView"))
        parents = op.find(m("ParentFolderIds"))
        for ref in [] if parents is None else list(parents):
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
                found = [f for f in found if matches(restriction[0], self.folder_xml(etree.Element("x"), f))]
            offset, page, last = _page(found, view)
            msg = success(container, "FindFolder")
            root = sub(
                msg,
                m("RootFolder"),
                IndexedPagingOffset=str(offset + len(page)),
                TotalItemsInView=str(len(found)),
                IncludesLastItemInRange=_bool(last),
            )
            folders = sub(root, t("Folders"))
            for f in page:
                self.folder_xml(folders, f)

    def op_CreateFolder(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "CreateFolder")
        parent_ref = op.find(m("ParentFolderId"))
        try:
            if parent_ref is None or not len(parent_ref):
                raise SoapFault(
                    "ErrorSchemaValidation",
                    "CreateFolder needs a ParentFolderId.",
                    faultcode="a:ErrorSchemaValidation",
                )
            parent = self.folder(ctx, parent_ref[0])
        except EwsError as exc:
            for _ in op.find(m("Folders")) if op.find(m("Folders")) is not None else [None]:
                error(container, "CreateFolder", exc)
            return
        for spec in list(op.find(m("Folders")) if op.find(m("Folders")) is not None else []):
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
        for ref in list(op.find(m("FolderIds")) if op.find(m("FolderIds")) is not None else []):
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
        for ref in list(op.find(m("FolderIds")) if op.find(m("FolderIds")) is not None else []):
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

    # -- items ------------------------------------------------------------------------------------------
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

    def op_CreateItem(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "CreateItem")
        mode = op.get("SendMeetingInvitations", "SendToAllAndSaveCopy")
        folder_ref = op.find(m("SavedItemFolderId"))
        new_items = op.find(m("Items"))
        specs = [] if new_items is None else [c for c in new_items if isinstance(c.tag, str)]
        for spec in specs:
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
        ids = op.find(m("ItemIds"))
        for ref in [] if ids is None else [c for c in ids if isinstance(c.tag, str)]:
            try:
                full = self._resolve_for_read(ctx, ref)
            except EwsError as exc:
                error(container, "GetItem", exc)
                continue
            msg = success(container, "GetItem")
            sub(msg, m("Items")).append(it.shaped(full, shape))

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
        changes = op.find(m("ItemChanges"))
        for change in [] if changes is None else [c for c in changes if isinstance(c.tag, str)]:
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
        ids = op.find(m("ItemIds"))
        for ref in [] if ids is None else [c for c in ids if isinstance(c.tag, str)]:
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
        ids = op.find(m("ItemIds"))
        for ref in [] if ids is None else [c for c in ids if isinstance(c.tag, str)]:
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
        parents = op.find(m("ParentFolderIds"))
        for ref in [] if parents is None else list(parents):
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
                    offset, fulls, last = _page(fulls, page_view)
            except EwsError as exc:
                error(container, "FindItem", exc)
                continue
            msg = success(container, "FindItem")
            attrs = {"TotalItemsInView": str(total), "IncludesLastItemInRange": _bool(last)}
            if offset is not None:
                attrs = {"IndexedPagingOffset": str(offset + len(fulls)), **attrs}
            root = sub(msg, m("RootFolder"), **attrs)
            out = sub(root, t("Items"))
            for f in fulls:
                out.append(it.shaped(f, shape, in_find=True))

    def _calendar_view(self, folder: FolderRow, view: Element) -> tuple[list[Element], int, bool]:
        start, end = parse_dt(view.get("StartDate")), parse_dt(view.get("EndDate"))
        if start is None or end is None:
            raise SoapFault(
                "ErrorSchemaValidation",
                "CalendarView needs StartDate and EndDate.",
                faultcode="a:ErrorSchemaValidation",
            )
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

    # -- sync -----------------------------------------------------------------------------------------
    def op_SyncFolderItems(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "SyncFolderItems")
        shape = op.find(m("ItemShape"))
        try:
            ref = op.find(m("SyncFolderId"))
            if ref is None or not len(ref):
                raise SoapFault(
                    "ErrorSchemaValidation",
                    "SyncFolderItems needs a SyncFolderId.",
                    faultcode="a:ErrorSchemaValidation",
                )
            folder = self.folder(ctx, ref[0])
            if folder.mailbox == PUBLIC:
                raise EwsError(
                    "ErrorSyncFolderNotFound", "SyncFolderItems is not supported on public folders."
                )
            max_changes = _int(op.findtext(m("MaxChangesReturned")), "MaxChangesReturned")
            if not 1 <= max_changes <= SYNC_MAX:
                raise SoapFault(
                    "ErrorSchemaValidation",
                    f"The request failed schema validation: "
                    f"MaxChangesReturned must be between 1 and {SYNC_MAX}.",
                    faultcode="a:ErrorSchemaValidation",
                )
            since = _decode_state(op.findtext(m("SyncState")), "items", folder, self.store)
            ignore = (
                {i.get("Id") for i in op.find(m("Ignore"))} if op.find(m("Ignore")) is not None else set()
            )
        except EwsError as exc:
            # Exchange still writes an empty SyncState and the "last" flag into sync errors.
            msg = error(container, "SyncFolderItems", exc)
            sub(msg, m("SyncState"), "")
            sub(msg, m("IncludesLastItemInRange"), "true")
            return
        changes = [c for c in self.store.item_changes(folder.id, since) if c[2] not in ignore]
        page = changes[:max_changes]
        last = len(page) == len(changes)
        new_seq = self.store.current_seq(folder.mailbox) if last else page[-1][1]
        msg = success(container, "SyncFolderItems")
        sub(msg, m("SyncState"), _encode_state("items", folder.id, new_seq))
        sub(msg, m("IncludesLastItemInRange"), _bool(last))
        out = sub(msg, m("Changes"))
        for kind, _seq, item_id, row in page:
            change = sub(out, t(kind))
            if row is None:
                sub(change, t("ItemId"), Id=item_id)
            else:
                change.append(it.shaped(self.full(row), shape, in_find=True))

    def op_SyncFolderHierarchy(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "SyncFolderHierarchy")
        try:
            ref = op.find(m("SyncFolderId"))
            if ref is not None and len(ref):
                root = self.folder(ctx, ref[0])
            else:
                root = self.folder(ctx, etree.Element(t("DistinguishedFolderId"), Id="root"))
            since = _decode_state(op.findtext(m("SyncState")), "folders", root, self.store)
        except EwsError as exc:
            msg = error(container, "SyncFolderHierarchy", exc)
            sub(msg, m("SyncState"), "")
            sub(msg, m("IncludesLastFolderInRange"), "true")
            return
        changes = self.store.folder_changes(root.mailbox, root.id, since)
        msg = success(container, "SyncFolderHierarchy")
        sub(msg, m("SyncState"), _encode_state("folders", root.id, self.store.current_seq(root.mailbox)))
        sub(msg, m("IncludesLastFolderInRange"), "true")
        out = sub(msg, m("Changes"))
        for kind, _seq, folder in changes:
            change = sub(out, t(kind))
            if kind == "Delete":
                sub(change, t("FolderId"), Id=folder.id, ChangeKey=folder.change_key)
            else:
                self.folder_xml(change, folder)

    # -- ResolveNames ---------------------------------------------------------------------------------
    def op_ResolveNames(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "ResolveNames")
        entry = (op.findtext(m("UnresolvedEntry")) or "").strip().lower().removeprefix("smtp:")
        hits = [
            a for a in self.store.mailboxes() if entry and (a.startswith(entry) or a.split("@")[0] == entry)
        ]
        if not hits:
            error(
                container, "ResolveNames", EwsError("ErrorNameResolutionNoResults", "No results were found.")
            )
            return
        code_class = "Success" if len(hits) == 1 else "Warning"
        msg = sub(container, m("ResolveNamesResponseMessage"), ResponseClass=code_class)
        if code_class == "Warning":
            sub(msg, m("MessageText"), "Multiple results were found.")
        sub(msg, m("ResponseCode"), "NoError" if len(hits) == 1 else "ErrorNameResolutionMultipleResults")
        if code_class == "Warning":
            sub(msg, m("DescriptiveLinkKey"), "0")
        rset = sub(msg, m("ResolutionSet"), TotalItemsInView=str(len(hits)), IncludesLastItemInRange="true")
        for address in hits:
            res = sub(rset, t("Resolution"))
            mb = sub(res, t("Mailbox"))
            sub(mb, t("Name"), address.split("@", 1)[0])
            sub(mb, t("EmailAddress"), address)
            sub(mb, t("RoutingType"), "SMTP")
            sub(mb, t("MailboxType"), "Mailbox")

    # -- notifications ----------------------------------------------------------------------------------
    def op_Subscribe(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "Subscribe")
        req = next((c for c in op if isinstance(c.tag, str)), None)
        try:
            if req is None:
                raise SoapFault(
                    "ErrorSchemaValidation",
                    "Subscribe needs a subscription request.",
                    faultcode="a:ErrorSchemaValidation",
                )
            folders = [
                self.folder(ctx, r)
                for r in (req.find(t("FolderIds")) if req.find(t("FolderIds")) is not None else [])
            ]
        except EwsError as exc:
            error(container, "Subscribe", exc)
            return
        payload = {"n": uuid.uuid4().hex, "s": {f.id: self.store.current_seq(f.mailbox) for f in folders}}
        sub_id = base64.b64encode(json.dumps(payload).encode()).decode()
        self._subscription(sub_id)
        msg = success(container, "Subscribe")
        sub(msg, m("SubscriptionId"), sub_id)
        if local(req.tag) != "StreamingSubscriptionRequest":
            sub(msg, m("Watermark"), "AQAAAA==")

    def op_Unsubscribe(self, ctx: Ctx, op: Element, body: Element) -> None:
        sid = (op.findtext(m("SubscriptionId")) or "").strip()
        with self._subs_lock:
            self._subs.pop(sid, None)
        success(response_root(body, "Unsubscribe"), "Unsubscribe")

    def op_GetStreamingEvents(self, ctx: Ctx, op: Element, body: Element) -> None:
        """Events since the last delivery, one Notification per subscription, then the connection closes.

        Exchange holds the connection open for ConnectionTimeout minutes and streams events; this
        server waits (outside the store lock, see `handle`) until there is something to report or
        `streaming_wait` seconds have passed, answers once and closes.
        """
        container = response_root(body, "GetStreamingEvents")
        ids = op.find(m("SubscriptionIds"))
        sub_ids = [] if ids is None else [(e.text or "").strip() for e in ids]
        for sid in sub_ids:
            if self._subscription(sid) is None:
                error(
                    container,
                    "GetStreamingEvents",
                    EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found."),
                )
                return
        msg = success(container, "GetStreamingEvents")
        notifications = sub(msg, m("Notifications"))
        for sid in sub_ids:
            events = self._take_events(sid)
            if not events:
                continue
            note = sub(notifications, m("Notification"))
            sub(note, t("SubscriptionId"), sid)
            for name, item_id, folder in events:
                ev = sub(note, t(name))
                sub(ev, t("TimeStamp"), _now())
                sub(ev, t("ItemId"), Id=item_id)
                sub(ev, t("ParentFolderId"), Id=folder.id, ChangeKey=folder.change_key)
        sub(msg, m("ConnectionStatus"), "Closed")

    def _subscription(self, sid: str) -> dict[str, int] | None:
        with self._subs_lock:
            if sid in self._subs:
                return self._subs[sid]
        try:
            payload = json.loads(base64.b64decode(sid, validate=True))
            seqs = {str(k): int(v) for k, v in payload["s"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            return None
        with self._subs_lock:
            return self._subs.setdefault(sid, seqs)

    def _pending_events(self, sid: str) -> bool:
        seqs = self._subscription(sid) or {}
        return any(self.store.item_changes(fid, seq) for fid, seq in list(seqs.items()))

    def _take_events(self, sid: str) -> list[tuple[str, str, FolderRow]]:
        seqs = self._subscription(sid) or {}
        out: list[tuple[str, str, FolderRow]] = []
        for fid, seq in list(seqs.items()):
            folder = self.store.folder(fid)
            if folder is None:
                continue
            for kind, _seq, item_id, _row in self.store.item_changes(fid, seq):
                name = {"Create": "CreatedEvent", "Update": "ModifiedEvent", "Delete": "DeletedEvent"}[kind]
                out.append((name, item_id, folder))
            with self._subs_lock:
                seqs[fid] = self.store.current_seq(folder.mailbox)
        return out

    def wait_for_events(self, op: Element) -> None:
        """Block (without the store lock) until a subscription has events or the wait is over."""
        ids = op.find(m("SubscriptionIds"))
        sub_ids = [] if ids is None else [(e.text or "").strip() for e in ids]
        if not sub_ids or any(self._subscription(s) is None for s in sub_ids):
            return  # answered at once with ErrorSubscriptionNotFound
        timeout_min = _int(op.findtext(m("ConnectionTimeout")) or "1", "ConnectionTimeout")
        deadline = time.monotonic() + min(timeout_min * 60, self.app.streaming_wait)
        while time.monotonic() < deadline:
            with self.store.lock:
                if any(self._pending_events(s) for s in sub_ids):
                    return
            time.sleep(0.05)


def _now() -> str:
    from .soap import fmt_dt
    from .store import utcnow

    return fmt_dt(utcnow())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _int(text: str | None, name: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise SoapFault(
            "ErrorSchemaValidation",
            f"The request failed schema validation: {name} must be an integer.",
            faultcode="a:ErrorSchemaValidation",
        ) from None


def _page(found: list[Any], view: Element | None) -> tuple[int, list[Any], bool]:
    """Offset, page and IncludesLastItemInRange for an Indexed page view (capped at 1000 like Exchange)."""
    if view is None:
        page = found[:FIND_ITEM_CAP]
        return 0, page, len(page) == len(found)
    offset = _int(view.get("Offset", "0"), "Offset")
    max_entries = min(
        _int(view.get("MaxEntriesReturned", str(FIND_ITEM_CAP)), "MaxEntriesReturned"), FIND_ITEM_CAP
    )
    if view.get("BasePoint", "Beginning") == "End":
        end = max(len(found) - offset, 0)
        start = max(end - max_entries, 0)
        return offset, found[start:end], start == 0
    page = found[offset : offset + max_entries]
    return offset, page, offset + len(page) >= len(found)


def _encode_state(kind: str, folder_id: str, seq: int) -> str:
    return base64.b64encode(json.dumps({"v": 1, "k": kind, "f": folder_id, "s": seq}).encode()).decode()


def _decode_state(text: str | None, kind: str, folder: FolderRow, store: Store) -> int:
    if not text or not text.strip():
        return 0
    invalid = EwsError(
        "ErrorInvalidSyncStateData", "Synchronization state data is corrupt or otherwise invalid."
    )
    try:
        data = json.loads(base64.b64decode(text.strip(), validate=True))
    except (ValueError, binascii.Error):
        raise invalid from None
    if not isinstance(data, dict) or data.get("k") != kind or data.get("f") != folder.id:
        raise invalid
    seq = data.get("s")
    if not isinstance(seq, int) or seq < 0 or seq > store.current_seq(folder.mailbox):
        raise invalid
    return seq


def clone(elem: Element) -> Element:
    return copy.deepcopy(elem)
