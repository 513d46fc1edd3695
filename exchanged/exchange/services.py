"""exchangelib services, hardened for a long-running sync.

* ``BackOffMilliseconds``: exchangelib reads it only from SOAP faults; an ``ErrorServerBusy`` in a
  response message (HTTP 200) loses it. ``_ThrottleHint`` reads it there too.
* One odd item never aborts a folder (exchangelib #877): GetItem/FindItem return an
  ``UnreadableItem`` exception object in place of an item they cannot parse, and SyncFolderItems
  reads nothing but the ItemId and ChangeKey of each change.
* Every answer is parsed strictly (``parse_answer``): exchangelib's parser recovers from a cut or
  corrupt document and hands back what it could read, so a GetItem answer cut after its first
  message would be a shorter list without an error. Here such an answer is ``IncompleteAnswer``,
  an error of the request (retried like a lost reply). A DOCTYPE (entity tricks) is refused too.
* Contact updates touch only the labels we manage (EmailAddress1, BusinessPhone, MobilePhone):
  exchangelib would delete every other phone number of the contact.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

import lxml.etree
from exchangelib import errors as ews_errors
from exchangelib.errors import ErrorServerBusy, MalformedResponseError, TransportError
from exchangelib.fields import FieldPath, IndexedField
from exchangelib.folders import BaseFolder
from exchangelib.services import (
    CreateFolder,
    CreateItem,
    DeleteItem,
    FindFolder,
    FindItem,
    GetFolder,
    GetItem,
    GetStreamingEvents,
    ResolveNames,
    SubscribeToStreaming,
    SyncFolderItems,
    UpdateItem,
)
from exchangelib.services.sync_folder_hierarchy import SyncFolder
from exchangelib.util import ENS, MNS, SOAPNS, TNS, sanitize_xml

log = logging.getLogger("exchanged.exchange")


class UnreadableItem(Exception):
    """An item in a response that could not be parsed; carries its id when it had one."""

    def __init__(self, item_id: str | None, change_key: str | None, tag: str, reason: str) -> None:
        super().__init__(f"{tag.rsplit('}', 1)[-1]} {item_id or '?'}: {reason}")
        self.item_id = item_id
        self.change_key = change_key
        self.tag = tag
        self.reason = reason


class IncompleteAnswer(TransportError):
    """An answer that is not one complete, well-formed document (cut short, corrupted, a DOCTYPE),
    or a bulk answer that does not answer every id asked, in order. Never trusted in part."""


_STRICT_PARSER = lxml.etree.XMLParser(resolve_entities=False, recover=False, huge_tree=True,
                                      no_network=True, load_dtd=False)


def parse_answer(data: bytes) -> Any:
    """The root element of a complete answer, or ``IncompleteAnswer``.

    Exchange writes control characters as character references that XML 1.0 forbids (``&#x1;``);
    those are replaced the way exchangelib does before a second strict try. Nothing else is
    forgiven: no recovery, no DOCTYPE."""
    error: Exception | None = None
    for attempt in (data, sanitize_xml(data)):
        try:
            root = lxml.etree.fromstring(attempt, parser=_STRICT_PARSER)
        except lxml.etree.XMLSyntaxError as exc:
            error = exc
            continue
        if root.getroottree().docinfo.doctype:
            raise IncompleteAnswer("the answer carries a DOCTYPE (refused)")
        return root
    where = f" ({' '.join(str(error).split())[:120]})" if error else ""
    raise IncompleteAnswer(f"the answer is cut short or not well-formed XML ({len(data)} bytes){where}")


def _item_id_of(elem: Any) -> tuple[str | None, str | None]:
    id_elem = elem.find(f"{{{TNS}}}ItemId")
    if id_elem is None:
        return None, None
    return id_elem.get("Id"), id_elem.get("ChangeKey")


def _back_off_ms(message: Any) -> float | None:
    msg_xml = message.find(f"{{{MNS}}}MessageXml")
    if msg_xml is None:
        return None
    for value in msg_xml.iter(f"{{{TNS}}}Value"):
        if value.get("Name") == "BackOffMilliseconds" and value.text:
            with suppress(ValueError):
                return int(value.text.strip()) / 1000.0
    return None


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


class _ThrottleHint:
    @classmethod
    def _get_soap_parts(cls, response: Any) -> tuple[Any, Any]:
        """exchangelib's, with ``parse_answer`` instead of its recovering parser."""
        data = response.content if isinstance(getattr(response, "content", None), bytes) else b"".join(
            response.iter_content())
        root = parse_answer(data)
        header = root.find(f"{{{SOAPNS}}}Header")
        body = root.find(f"{{{SOAPNS}}}Body")
        if body is None:
            raise MalformedResponseError("No Body element in SOAP response")
        return header, body

    @classmethod
    def _raise_soap_errors(cls, fault: Any) -> None:
        """Like exchangelib's, but also reads a fault detail written in another namespace than
        Exchange's errors namespace, and keeps BackOffMilliseconds."""
        detail = fault.find("detail")
        if detail is not None and detail.find(f"{{{ENS}}}ResponseCode") is None:
            code_elem = next((e for e in detail.iter() if _local(e.tag) == "ResponseCode"), None)
            if code_elem is not None and code_elem.text:
                code = code_elem.text.strip()
                msg_elem = next((e for e in detail.iter() if _local(e.tag) == "Message"), None)
                msg = (msg_elem.text or "").strip() if msg_elem is not None else code
                if code == "ErrorServerBusy":
                    back_off = None
                    for value in detail.iter(f"{{{TNS}}}Value"):
                        if value.get("Name") == "BackOffMilliseconds" and value.text:
                            with suppress(ValueError):
                                back_off = int(value.text.strip()) / 1000.0
                    raise ErrorServerBusy(msg, back_off=back_off)
                exc_cls = vars(ews_errors).get(code)
                if isinstance(exc_cls, type) and issubclass(exc_cls, ews_errors.ResponseMessageError):
                    raise exc_cls(msg)
        super()._raise_soap_errors(fault)  # type: ignore[misc]

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        try:
            return super()._get_element_container(message, name)  # type: ignore[misc]
        except ErrorServerBusy as exc:
            if exc.back_off is None:
                exc.back_off = _back_off_ms(message)
            raise


class _RobustItems:
    account: Any

    def _elem_to_obj(self, elem: Any) -> Any:
        try:
            return BaseFolder.item_model_from_tag(elem.tag).from_xml(elem=elem, account=self.account)
        except Exception as exc:  # any parse failure: skip this item, keep the rest
            item_id, change_key = _item_id_of(elem)
            return UnreadableItem(item_id, change_key, str(elem.tag), f"{type(exc).__name__}: {exc}")


class GetItemRobust(_ThrottleHint, _RobustItems, GetItem):
    pass


class FindItemRobust(_ThrottleHint, FindItem):
    def _elem_to_obj(self, elem: Any) -> Any:
        try:
            return super()._elem_to_obj(elem)
        except Exception as exc:
            item_id, change_key = _item_id_of(elem)
            return UnreadableItem(item_id, change_key, str(elem.tag), f"{type(exc).__name__}: {exc}")


class SyncFolderItemsIds(_ThrottleHint, SyncFolderItems):
    """SyncFolderItems that yields (change_type, item_id, change_key, tag) and parses nothing else."""

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        if message.find(f"{{{MNS}}}SyncState") is None or message.find(self.last_in_range_name) is None:
            # an error answer may lack SyncState: skip SyncFolder's parsing so the real error surfaces
            try:
                return super(SyncFolder, self)._get_element_container(message, name)
            except ErrorServerBusy as exc:
                if exc.back_off is None:
                    exc.back_off = _back_off_ms(message)
                raise
        return super()._get_element_container(message, name)

    def _elem_to_obj(self, elem: Any) -> Any:
        change_type = self.change_types_map.get(elem.tag)
        if change_type == self.DELETE:
            item_id, change_key = _item_id_of(elem)
            return change_type, item_id, change_key, ""
        if change_type in (self.CREATE, self.UPDATE) and len(elem):
            inner = elem[0]
            item_id, change_key = _item_id_of(inner)
            return change_type, item_id, change_key, str(inner.tag)
        return self.READ_FLAG_CHANGE, None, None, ""


class CreateItemHinted(_ThrottleHint, CreateItem):
    pass


class DeleteItemHinted(_ThrottleHint, DeleteItem):
    pass


class UpdateItemOnly(_ThrottleHint, UpdateItem):
    """UpdateItem that, for indexed fields, sets or deletes exactly the labels it is given."""

    def _get_value(self, target: Any, field: Any) -> Any:
        if isinstance(field, IndexedField):
            return getattr(target, field.name)
        return super()._get_value(target, field)

    def _set_field_elems(self, target_model: Any, field: Any, value: Any) -> Any:
        if not isinstance(field, IndexedField):
            yield from super()._set_field_elems(target_model, field, value)
            return
        subfields = field.value_cls.supported_fields(version=self.account.version)
        for v in value:
            for subfield in subfields:
                path = FieldPath(field=field, label=v.label, subfield=subfield)
                sub_value = getattr(v, subfield.name)
                if not sub_value:
                    yield self._delete_field_elem(field_path=path)
                else:
                    yield self._set_field_elem(
                        target_model=target_model, field_path=path,
                        value=field.value_cls(**{"label": v.label, subfield.name: sub_value}))

    def _update_elems(self, target: Any, fieldnames: Any) -> Any:
        # indexed fields with only "delete" entries must not be turned into one DeleteItemField for
        # the whole field (exchangelib's path for None/[]): route them through _set_field_elems
        indexed = [n for n in fieldnames
                   if isinstance(target.get_field_by_fieldname(n), IndexedField)]
        plain = [n for n in fieldnames if n not in indexed]
        if plain:
            yield from super()._update_elems(target=target, fieldnames=plain)
        for name in indexed:
            field = target.get_field_by_fieldname(name)
            yield from self._set_field_elems(target.__class__, field, getattr(target, name) or [])


class GetFolderHinted(_ThrottleHint, GetFolder):
    pass


class FindFolderHinted(_ThrottleHint, FindFolder):
    pass


class CreateFolderHinted(_ThrottleHint, CreateFolder):
    pass


class ResolveNamesHinted(_ThrottleHint, ResolveNames):
    pass


class SubscribeAnchored(_ThrottleHint, SubscribeToStreaming):
    """A streaming subscription made under a group's anchor mailbox (``X-AnchorMailbox``), so that
    Exchange keeps every subscription of one connection on the same mailbox server."""

    def __init__(self, *args: Any, anchor: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.anchor = anchor

    def _extra_headers(self) -> dict[str, str]:
        headers: dict[str, str] = super()._extra_headers()
        headers["X-AnchorMailbox"] = self.anchor
        return headers


class GetStreamingEventsOnce(GetStreamingEvents):
    """One hanging connection, its errors raised: exchangelib's retry loop would shrink the session
    pool on ErrorExceededConnectionCount and try again at once; the daemon backs off itself."""

    connected = False  # the server accepted the request and the stream began

    def _get_response(self, payload: Any, api_version: Any) -> Any:
        response = super()._get_response(payload=payload, api_version=api_version)
        self.connected = response.status_code == 200
        return response

    def _get_elements(self, payload: Any) -> Any:
        try:
            yield from self._response_generator(payload=payload)
        finally:
            self.stop_streaming()
