"""SOAP envelope, namespaces and response building the way Exchange 2016 writes them.

Exchange answers with `s:` (SOAP 1.1 envelope), `m:` (messages) and `t:` (types) prefixes, a
`h:ServerVersionInfo` header, and date-times without fractional seconds. Clients such as exchangelib
drop values they cannot parse, so every helper here writes exactly that form. grommunio's style
(nine fractional digits) is ``grommunio_datetimes``, applied to whole responses when the server is
started with ``datetime_style="grommunio"`` (``--datetime-style grommunio``).
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from typing import Any

from lxml import etree

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"  # fault details live here
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"s": SOAP_NS, "m": MNS, "t": TNS}

# Exchange 2016 CU23 reports this build; "V2017_07_11" is the schema version string it sends.
SERVER_BUILD = (15, 1, 2507, 6)
SERVER_SCHEMA_VERSION = "V2017_07_11"
# RequestServerVersion values an Exchange 2016 server accepts.
ACCEPTED_VERSIONS = frozenset(
    {
        "Exchange2007",
        "Exchange2007_SP1",
        "Exchange2010",
        "Exchange2010_SP1",
        "Exchange2010_SP2",
        "Exchange2013",
        "Exchange2013_SP1",
        "Exchange2015",
        "Exchange2016",
    }
)

Element = Any  # lxml element; lxml's stubs are not installed


def m(tag: str) -> str:
    return f"{{{MNS}}}{tag}"


def t(tag: str) -> str:
    return f"{{{TNS}}}{tag}"


def local(tag: object) -> str:
    """Local name of an element tag ('{ns}Name' -> 'Name'); comments and PIs give ''."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def ns_of(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def sub(parent: Element, tag: str, text: str | None = None, **attrs: str) -> Element:
    el = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def fmt_dt(value: dt.datetime) -> str:
    """Exchange's form: UTC, no fractional seconds, trailing Z."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


DATETIME_STYLES = ("exchange", "grommunio")
_XS_DATETIME = re.compile(rb"<t:(\w+)>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)Z</t:\1>")
_SERVER_STAMPS = {b"LastModifiedTime", b"DateTimeCreated", b"DateTimeReceived", b"DateTimeSent",
                  b"CompleteDate"}


def grommunio_datetimes(payload: bytes) -> bytes:
    """A response as grommunio writes it: every date-time with nine fractional digits, those the
    server stamps itself (modified, created, completed) with a non-zero fraction (stable per value,
    so that one value always reads the same), those a client wrote with ``.000000000``."""

    def fraction(match: re.Match[bytes]) -> bytes:
        tag, value = match.group(1), match.group(2)
        digits = (b"%07d00" % (zlib.crc32(value) % 10_000_000)) if tag in _SERVER_STAMPS else b"0" * 9
        return b"<t:%s>%s.%sZ</t:%s>" % (tag, value, digits, tag)

    return _XS_DATETIME.sub(fraction, payload)


def parse_dt(text: str | None) -> dt.datetime | None:
    """Parse an xs:dateTime as clients send it (Z, offsets, fractions); naive values are taken as UTC."""
    if not text:
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = dt.datetime.combine(dt.date.fromisoformat(value[:10]), dt.time())
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def envelope() -> tuple[Element, Element]:
    """A response envelope with the version header; returns (envelope, body)."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS})
    header = sub(env, f"{{{SOAP_NS}}}Header")
    major, minor, major_build, minor_build = SERVER_BUILD
    etree.SubElement(
        header,
        t("ServerVersionInfo"),
        {
            "MajorVersion": str(major),
            "MinorVersion": str(minor),
            "MajorBuildNumber": str(major_build),
            "MinorBuildNumber": str(minor_build),
            "Version": SERVER_SCHEMA_VERSION,
        },
        nsmap={"h": TNS, "xsd": "http://www.w3.org/2001/XMLSchema", "xsi": XSI_NS},
    )
    body = etree.SubElement(
        env,
        f"{{{SOAP_NS}}}Body",
        nsmap={"xsi": XSI_NS, "xsd": "http://www.w3.org/2001/XMLSchema"},
    )
    return env, body


def response_root(body: Element, operation: str) -> Element:
    """`m:<Op>Response` with its `m:ResponseMessages` container."""
    root = etree.SubElement(body, m(f"{operation}Response"), nsmap={"m": MNS, "t": TNS})
    return sub(root, m("ResponseMessages"))


def success(container: Element, operation: str, response_class: str = "Success") -> Element:
    msg = sub(container, m(f"{operation}ResponseMessage"), ResponseClass=response_class)
    sub(msg, m("ResponseCode"), "NoError")
    return msg


class EwsError(Exception):
    """An error Exchange reports inside a response message (ResponseClass="Error")."""

    def __init__(self, code: str, text: str, *, field_uri: str | None = None) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        self.field_uri = field_uri


class SoapFault(Exception):
    """An error Exchange reports as a SOAP fault (whole request refused, HTTP 500)."""

    def __init__(
        self,
        code: str,
        text: str,
        *,
        faultcode: str = "a:ErrorInvalidRequest",
        values: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text
        self.faultcode = faultcode
        self.values = values or {}


def schema_fault(text: str) -> SoapFault:
    """The fault Exchange answers a request that fails schema validation."""
    return SoapFault("ErrorSchemaValidation", text, faultcode="a:ErrorSchemaValidation")


def error(container: Element, operation: str, err: EwsError) -> Element:
    msg = sub(container, m(f"{operation}ResponseMessage"), ResponseClass="Error")
    sub(msg, m("MessageText"), err.text)
    sub(msg, m("ResponseCode"), err.code)
    sub(msg, m("DescriptiveLinkKey"), "0")
    if err.field_uri:
        xml = sub(msg, m("MessageXml"))
        sub(xml, t("FieldURI"), FieldURI=err.field_uri)
    return msg


def fault_envelope(fault: SoapFault) -> bytes:
    """A SOAP fault as Exchange sends it; `t:MessageXml` carries pairs such as BackOffMilliseconds."""
    env = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS})
    body = sub(env, f"{{{SOAP_NS}}}Body")
    f = sub(body, f"{{{SOAP_NS}}}Fault")
    code = etree.SubElement(
        f, "faultcode", nsmap={"a": "http://schemas.microsoft.com/exchange/services/2006/types"}
    )
    code.text = fault.faultcode
    etree.SubElement(
        f, "faultstring", {"{http://www.w3.org/XML/1998/namespace}lang": "en-US"}
    ).text = fault.text
    detail = etree.SubElement(f, "detail")
    etree.SubElement(detail, f"{{{ENS}}}ResponseCode", nsmap={"e": ENS}).text = fault.code
    etree.SubElement(detail, f"{{{ENS}}}Message", nsmap={"e": ENS}).text = fault.text
    if fault.values:
        xml = etree.SubElement(detail, t("MessageXml"), nsmap={"t": TNS})
        for name, value in fault.values.items():
            sub(xml, t("Value"), value, Name=name)
    return serialize(env)


def serialize(env: Element) -> bytes:
    return bytes(etree.tostring(env, xml_declaration=True, encoding="utf-8"))


def server_busy_message(operation: str, back_off_ms: int) -> bytes:
    """HTTP-200 throttling: ErrorServerBusy inside the operation's response message."""
    env, body = envelope()
    container = response_root(body, operation)
    msg = sub(container, m(f"{operation}ResponseMessage"), ResponseClass="Error")
    sub(msg, m("MessageText"), "The server cannot service this request right now. Try again later.")
    sub(msg, m("ResponseCode"), "ErrorServerBusy")
    sub(msg, m("DescriptiveLinkKey"), "0")
    xml = sub(msg, m("MessageXml"))
    sub(xml, t("Value"), str(back_off_ms), Name="BackOffMilliseconds")
    return serialize(env)
