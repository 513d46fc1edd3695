"""TLS trust for the EWS connection: always verified, system CAs + certifi + ``server.ca_bundle``.

exchangelib talks HTTP through ``requests``; each of its sessions mounts an adapter built from
``BaseProtocol.HTTP_ADAPTER_CLS``. We install ``TrustStoreAdapter`` there once. It hands urllib3 an
``ssl.SSLContext`` per endpoint (host:port) that trusts the system store, certifi's bundle and the
configured extra CA file, so an internal PKI works without touching ``REQUESTS_CA_BUNDLE`` or any
other process-wide setting. Endpoints nobody registered get system + certifi trust: verification
is never switched off.

``describe_tls_failure`` turns OpenSSL's verify errors into a sentence an operator can act on.
"""

from __future__ import annotations

import re
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests.adapters
import urllib3.connectionpool
from exchangelib.protocol import BaseProtocol

from exchanged import errors
from exchanged.exchange import limits

_lock = threading.Lock()
_contexts: dict[str, ssl.SSLContext] = {}
_default_context: ssl.SSLContext | None = None


def _endpoint_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def build_ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context: system store + certifi + ``ca_bundle`` (a PEM file)."""
    ctx = ssl.create_default_context()  # CERT_REQUIRED, check_hostname, the system's CA store
    ctx.load_verify_locations(cafile=certifi.where())
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=ca_bundle)
        except FileNotFoundError:
            raise errors.TlsError(
                f"server.ca_bundle {ca_bundle}: file not found",
                hint="set server.ca_bundle to the PEM file of the CA that issued the Exchange certificate",
            ) from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise errors.TlsError(
                f"server.ca_bundle {ca_bundle}: not a readable PEM certificate file ({exc})",
                hint="server.ca_bundle must be a PEM file with one or more CA certificates",
            ) from None
    return ctx


def register_endpoint(service_endpoint: str, ca_bundle: str | None) -> None:
    """Use a context trusting ``ca_bundle`` for every connection to this endpoint's host:port."""
    ctx = build_ssl_context(ca_bundle)
    with _lock:
        _contexts[_endpoint_key(service_endpoint)] = ctx
    install()


def context_for(url: str) -> ssl.SSLContext:
    global _default_context
    with _lock:
        ctx = _contexts.get(_endpoint_key(url))
        if ctx is None:
            if _default_context is None:
                _default_context = build_ssl_context(None)
            ctx = _default_context
        return ctx


class _TrackedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    """Tells ``limits.track`` which connection a request goes out on (for its deadline)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        limits.track(conn)
        return conn


class _TrackedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        limits.track(conn)
        return conn


class TrustStoreAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose TLS trust comes from ``context_for(url)``; never unverified. Every
    answer is read within the endpoint's deadline and size cap (``limits.read_bounded``)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}

    def send(self, request: Any, stream: bool = False, **kwargs: Any) -> Any:  # type: ignore[override]
        started = time.monotonic()
        bounds = limits.limits_for(request.url)
        deadline = None if stream else limits.Deadline(bounds, started)
        limits.arm(deadline)
        try:
            response = super().send(request, stream=True, **kwargs)
        except Exception:
            if deadline is not None:
                deadline.cancel()
                if deadline.fired.is_set():  # the status line or the headers trickled past it
                    raise deadline.error() from None
            raise
        finally:
            limits.arm(None)
        if deadline is None or response.status_code == 401:
            # a streaming caller (GetStreamingEvents) reads the answer itself; the NTLM handshake
            # (requests_ntlm, a response hook) needs the 401's socket unread for channel binding
            if deadline is not None:
                deadline.cancel()
            return response
        return limits.read_bounded(response, bounds, started, deadline)

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params.get("scheme") == "https":
            pool_kwargs["ssl_context"] = context_for(request.url)
            pool_kwargs["cert_reqs"] = "CERT_REQUIRED"
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, True, cert)
        if url.lower().startswith("https"):
            # our SSLContext carries the trust; a ca_certs path here would only re-load certifi into it
            conn.ca_certs = None
            conn.ca_cert_dir = None


def install() -> None:
    """Make every exchangelib session use ``TrustStoreAdapter`` (idempotent)."""
    if BaseProtocol.HTTP_ADAPTER_CLS is not TrustStoreAdapter:
        BaseProtocol.HTTP_ADAPTER_CLS = TrustStoreAdapter


# --- operator-readable failures ---------------------------------------------------------------------


def _verify_error(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        stack.extend([e.__cause__, e.__context__])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return None


def describe_tls_failure(exc: BaseException, host: str) -> tuple[str, str]:
    """(message, hint) for a failed TLS handshake with ``host``."""
    verr = _verify_error(exc)
    text = (verr.verify_message if verr is not None and verr.verify_message else "") or str(exc)
    low = text.lower()
    if "expired" in low:
        return (f"the certificate of {host} has expired",
                "renew the Exchange server certificate")
    if "not yet valid" in low:
        return (f"the certificate of {host} is not valid yet (check this host's clock)",
                "check the system time of this host and of the Exchange server")
    if "hostname mismatch" in low or "ip address mismatch" in low or "doesn't match" in low:
        return (f"the certificate of {host} is issued for another host name",
                "set server.address to a name the certificate is issued for")
    if ("unable to get local issuer" in low or "self signed" in low or "self-signed" in low
            or "unable to verify" in low or "certificate verify failed" in low):
        return (f"certificate not trusted: {host} presented a certificate issued by a CA this host "
                "does not trust",
                "add the issuing CA (PEM) to server.ca_bundle, or install it in the system trust store")
    if ("wrong_version_number" in low or "wrong version number" in low or "unknown protocol" in low
            or "record layer failure" in low or "http_request" in low or "packet length too long" in low):
        return (f"{host} does not speak TLS (a plain HTTP port where HTTPS is expected?)",
                "set server.port to the HTTPS port of EWS (normally 443); plain HTTP needs "
                "server.allow_plaintext: true")
    if "handshake operation timed out" in low:
        return (f"{host} accepted the connection but did not complete the TLS handshake",
                "check that server.port is the HTTPS port of EWS and that nothing in between holds "
                "the connection")
    return (f"TLS handshake with {host} failed: {_ssl_reason(text)}",
            "check that server.port speaks HTTPS and that the certificate is valid")


def _ssl_reason(text: str) -> str:
    """OpenSSL's reason out of urllib3's wrapping (``[SSL: X] reason (_ssl.c:N)``), else the text."""
    match = re.search(r"\[SSL: ?([A-Z0-9_]*)\] ?([^()'\"]*)", text)
    if match:
        return f"{match.group(2).strip() or match.group(1)} ({match.group(1)})" if match.group(1) \
            else match.group(2).strip()
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def is_tls_failure(exc: BaseException) -> bool:
    if _verify_error(exc) is not None:
        return True
    text = str(exc)
    return "SSLError" in text or "CERTIFICATE_VERIFY_FAILED" in text or "SSL:" in text
