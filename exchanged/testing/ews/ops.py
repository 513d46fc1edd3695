"""EWS operations: SOAP request in, SOAP response out, against the Store.

`Dispatcher.handle` never raises: malformed requests become the SOAP faults Exchange sends, and any
bug becomes ErrorInternalServerError with the traceback in the server's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

from .base import Ctx, parse_int
from .folder_ops import FolderOps
from .item_ops import ItemOps
from .soap import (
    ACCEPTED_VERSIONS,
    MNS,
    SOAP_NS,
    Element,
    EwsError,
    SoapFault,
    envelope,
    error,
    fault_envelope,
    local,
    m,
    response_root,
    schema_fault,
    serialize,
    sub,
    success,
    t,
)
from .store import Store, id_kind
from .streaming import Streams, error_answer
from .sync_ops import SyncOps

if TYPE_CHECKING:
    from .server import EwsTestServer

log = logging.getLogger("exchanged.testing.ews")

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_blank_text=True)


class Dispatcher(FolderOps, ItemOps, SyncOps):
    def __init__(self, app: EwsTestServer) -> None:
        self.app = app
        self.store: Store = app.store
        self.streams = Streams(self.store, app.streaming)

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
                raise schema_fault(f"The element {op!r} is not in the EWS messages namespace.")
            self._check_version(header)
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise SoapFault(
                    "ErrorInvalidRequest",
                    f"The request is invalid: operation {op} is not supported by this test server.",
                )
            ctx = self._context(user, header, headers)
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
            return 500, fault_envelope(schema_fault(f"The request failed schema validation: {exc}"))
        except Exception:
            log.exception("EWS %s failed inside the test server", op)
            return 500, fault_envelope(
                SoapFault(
                    "ErrorInternalServerError",
                    "An internal server error occurred. The operation failed.",
                    faultcode="a:ErrorInternalServerError",
                )
            )

    def stream(self, user: str, body: bytes, headers: dict[str, str],
               start: Callable[[], None], write: Callable[[bytes], None],
               gone: Callable[[], bool]) -> tuple[int, bytes] | str:
        """GetStreamingEvents: an answer to send at once (a fault, a refused connection), or how
        the stream served through ``start`` (headers) and ``write`` (one envelope) ended."""
        try:
            root = self._parse(body)
            header = root.find(f"{{{SOAP_NS}}}Header")
            op_el = root.find(f"{{{SOAP_NS}}}Body")[0]
            self.app.count_request("GetStreamingEvents")
            self._check_version(header)
            ctx = self._context(user, header, headers)
            ids = op_el.find(m("SubscriptionIds"))
            sids = [] if ids is None else [(e.text or "").strip() for e in ids]
            timeout_min = parse_int(op_el.findtext(m("ConnectionTimeout")) or "", "ConnectionTimeout")
        except SoapFault as fault:
            return 500, fault_envelope(fault)
        except ValueError as exc:
            return 500, fault_envelope(schema_fault(f"The request failed schema validation: {exc}"))
        opened = self.streams.open(ctx.user, sids, timeout_min, ctx.anchor, ctx.affinity)
        if isinstance(opened, EwsError):
            return 200, error_answer(opened)
        record, generation = opened
        ended = "client"
        try:
            start()
            ended = self.streams.serve(record, generation, timeout_min, write, gone)
        except OSError:
            ended = "client"
        finally:
            self.streams.close(record, ended)
        return ended

    def _parse(self, body: bytes) -> Element:
        try:
            root = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise schema_fault(f"The request failed schema validation: {exc}") from exc
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        if root.tag != f"{{{SOAP_NS}}}Envelope" or soap_body is None or not len(soap_body):
            raise schema_fault("The request failed schema validation: no SOAP Envelope/Body.")
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

    def _context(self, user: str, header: Element | None, headers: dict[str, str] | None = None) -> Ctx:
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
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        anchor = (lowered.get("x-anchormailbox") or "").strip().lower() or None
        affinity = (lowered.get("x-preferserveraffinity") or "").strip().lower() == "true"
        return Ctx(user=user, mailbox=target, impersonating=impersonating, service_account=service,
                   anchor=anchor, affinity=affinity)

    # -- ConvertId --------------------------------------------------------------------------------------
    def op_ConvertId(self, ctx: Ctx, op: Element, body: Element) -> None:
        dest = op.get("DestinationFormat", "EwsId")
        container = response_root(body, "ConvertId")
        source = op.find(m("SourceIds"))
        for alt in [] if source is None else list(source):
            ident = alt.get("Id", "")
            kind = id_kind(ident)
            if kind is None:
                error(container, "ConvertId", EwsError("ErrorInvalidIdMalformed", "Id is malformed."))
                continue
            # Exchange answers with the primary SMTP address of the mailbox that holds the id, whatever
            # Mailbox the client sent (clients learn their own address this way).
            owner = self._id_owner(ident, kind)
            if owner is None:
                error(container, "ConvertId", EwsError(
                    "ErrorItemNotFound", "The specified object was not found in the store."))
                continue
            if dest not in ("EwsId", "EwsLegacyId"):
                error(container, "ConvertId", EwsError(
                    "ErrorInvalidRequest",
                    f"DestinationFormat {dest} is not supported by this test server (EwsId only)."))
                continue
            msg = success(container, "ConvertId")
            out = sub(msg, m("AlternateId"))
            out.set("{http://www.w3.org/2001/XMLSchema-instance}type", "t:AlternateIdType")
            out.set("Format", dest)
            out.set("Id", ident)
            out.set("Mailbox", owner)

    def _id_owner(self, ident: str, kind: bytes) -> str | None:
        """The primary SMTP address of the mailbox holding a folder, item or occurrence id."""
        from .recurrence import parse_occurrence_id

        if kind == b"F":
            folder = self.store.folder(ident)
            return None if folder is None else folder.mailbox
        row = self.store.item(parse_occurrence_id(ident)[0] if kind == b"O" else ident)
        return None if row is None else row.mailbox

    # -- GetUserConfiguration -------------------------------------------------------------------------
    def op_GetUserConfiguration(self, ctx: Ctx, op: Element, body: Element) -> None:
        """The mailbox's ``OWA.UserOptions`` in its root folder, as Exchange keeps them: a dictionary
        whose ``timezone`` entry is the Windows name of the zone the user chose (``--mailbox-timezone``).
        A mailbox without one, or any other configuration, is ErrorItemNotFound, as on Exchange."""
        container = response_root(body, "GetUserConfiguration")
        name_el = op.find(m("UserConfigurationName"))
        if name_el is None or not len(name_el):
            raise schema_fault("GetUserConfiguration needs a UserConfigurationName with a folder.")
        wanted = (op.findtext(m("UserConfigurationProperties")) or "All").split()
        try:
            folder = self.folder(ctx, name_el[0])
            zone = self.app.mailbox_timezone(folder.mailbox)
            if name_el.get("Name") != "OWA.UserOptions" or folder.distinguished != "root" or zone is None:
                raise EwsError("ErrorItemNotFound", "The specified object was not found in the store.")
        except EwsError as exc:
            error(container, "GetUserConfiguration", exc)
            return
        msg = success(container, "GetUserConfiguration")
        conf = sub(msg, m("UserConfiguration"))
        out_name = sub(conf, t("UserConfigurationName"), Name="OWA.UserOptions")
        sub(out_name, t("FolderId"), Id=folder.id, ChangeKey=folder.change_key)
        if {"Id", "All"} & set(wanted):
            sub(conf, t("ItemId"), Id=f"{folder.id}-owa-options", ChangeKey=folder.change_key)
        if {"Dictionary", "All"} & set(wanted):
            entry = sub(sub(conf, t("Dictionary")), t("DictionaryEntry"))
            for part, value in (("DictionaryKey", "timezone"), ("DictionaryValue", zone)):
                typed = sub(entry, t(part))
                sub(typed, t("Type"), "String")
                sub(typed, t("Value"), value)

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
