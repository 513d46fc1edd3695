"""SyncFolderItems, SyncFolderHierarchy, Subscribe and Unsubscribe (GetStreamingEvents: streaming.py)."""

from __future__ import annotations

import base64
import binascii
import json

from lxml import etree

from . import items as it
from .base import SYNC_MAX, Ctx, OpsBase, parse_int, xml_bool
from .soap import Element, EwsError, error, local, m, response_root, schema_fault, sub, success, t
from .store import PUBLIC, FolderRow, Store


class SyncOps(OpsBase):
    # -- sync -----------------------------------------------------------------------------------------
    def op_SyncFolderItems(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "SyncFolderItems")
        shape = op.find(m("ItemShape"))
        try:
            ref = op.find(m("SyncFolderId"))
            if ref is None or not len(ref):
                raise schema_fault("SyncFolderItems needs a SyncFolderId.")
            folder = self.folder(ctx, ref[0])
            if folder.mailbox == PUBLIC:
                raise EwsError(
                    "ErrorSyncFolderNotFound", "SyncFolderItems is not supported on public folders."
                )
            max_changes = parse_int(op.findtext(m("MaxChangesReturned")), "MaxChangesReturned")
            if not 1 <= max_changes <= SYNC_MAX:
                raise schema_fault(
                    "The request failed schema validation: "
                    f"MaxChangesReturned must be between 1 and {SYNC_MAX}."
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
        sub(msg, m("IncludesLastItemInRange"), xml_bool(last))
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
                self.folder_xml(change, folder, op.find(m("FolderShape")))

    # -- notifications (the streaming itself: streaming.py) ------------------------------------------
    def op_Subscribe(self, ctx: Ctx, op: Element, body: Element) -> None:
        container = response_root(body, "Subscribe")
        req = next((c for c in op if isinstance(c.tag, str)), None)
        try:
            if req is None:
                raise schema_fault("Subscribe needs a subscription request.")
            folders = [
                self.folder(ctx, r)
                for r in (req.find(t("FolderIds")) if req.find(t("FolderIds")) is not None else [])
            ]
        except EwsError as exc:
            error(container, "Subscribe", exc)
            return
        sub_id = self.streams.subscribe(ctx.user, ctx.mailbox or ctx.user, folders, ctx.anchor)
        msg = success(container, "Subscribe")
        sub(msg, m("SubscriptionId"), sub_id)
        if local(req.tag) != "StreamingSubscriptionRequest":
            sub(msg, m("Watermark"), "AQAAAA==")

    def op_Unsubscribe(self, ctx: Ctx, op: Element, body: Element) -> None:
        sid = (op.findtext(m("SubscriptionId")) or "").strip()
        container = response_root(body, "Unsubscribe")
        if not self.streams.unsubscribe(sid):
            error(container, "Unsubscribe",
                  EwsError("ErrorSubscriptionNotFound", "The specified subscription was not found."))
            return
        success(container, "Unsubscribe")


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
