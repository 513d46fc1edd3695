"""Dispatch: one JSON-RPC request object in, one response object out. No sockets here.

``ControlHandler`` is what the daemon implements (one async method per protocol method, except
``version``, which this module answers itself). Handler methods may raise any
``exchanged.errors.ExchangedError``: it becomes an error answer whose ``data.reason`` is the
error's ``reason`` and whose message comes from ``errors.present()``. Anything else is a bug: it
is logged with its traceback and answered as ``internal_error``; the connection and the daemon
go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from exchanged import PROTOCOL_VERSION, __version__, errors
from exchanged.control.protocol import (
    HANDLER_ERROR,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    METHODS,
    R_INTERNAL_ERROR,
    R_INVALID_REQUEST,
    R_METHOD_NOT_FOUND,
    ProtocolError,
    RequestId,
    decode_line,
    encode_message,
    error_response,
    success_response,
    validate_params,
)

log = structlog.get_logger("exchanged.control")

_REQUEST_MEMBERS = frozenset({"jsonrpc", "id", "method", "params"})


class ControlHandler(Protocol):
    """What the daemon offers over the control socket. Result shapes: docs/PROTOCOL.md.

    ``mailboxes=None`` means "every user" (sync: every enabled user; pause/resume: the global
    switch). Raise ``errors.ControlError`` (or any ExchangedError) to refuse, e.g. with
    ``reason = "unknown_mailbox"`` or ``"reload_rejected"``.
    """

    async def status(self) -> dict[str, object]: ...

    async def users(self) -> list[dict[str, object]]: ...

    async def resources(self) -> list[dict[str, object]]: ...

    async def sync(
        self, mailboxes: list[str] | None, full: bool, wait: bool, allow_deletes: bool
    ) -> dict[str, object]: ...

    async def plan(self, mailbox: str) -> dict[str, object]: ...

    async def history(self, mailbox: str | None, since: str | None,
                      limit: int | None = None) -> list[dict[str, object]]: ...

    async def reload(self, wait: bool) -> dict[str, object]: ...

    async def pause(self, mailboxes: list[str] | None) -> dict[str, object]: ...

    async def resume(self, mailboxes: list[str] | None) -> dict[str, object]: ...

    async def metrics(self) -> dict[str, object]: ...


def version_result() -> dict[str, object]:
    return {"version": __version__, "protocol": PROTOCOL_VERSION, "methods": sorted(METHODS)}


async def _call(handler: ControlHandler, method: str, p: Mapping[str, Any]) -> object:
    # An explicit table rather than getattr(): only protocol methods are reachable, and mypy
    # checks every call against ControlHandler.
    if method == "version":
        return version_result()
    if method == "status":
        return await handler.status()
    if method == "users":
        return await handler.users()
    if method == "resources":
        return await handler.resources()
    if method == "sync":
        return await handler.sync(p["mailboxes"], p["full"], p["wait"], p["allow_deletes"])
    if method == "plan":
        return await handler.plan(p["mailbox"])
    if method == "history":
        return await handler.history(p["mailbox"], p["since"], p["limit"])
    if method == "reload":
        return await handler.reload(p["wait"])
    if method == "pause":
        return await handler.pause(p["mailboxes"])
    if method == "resume":
        return await handler.resume(p["mailboxes"])
    if method == "metrics":
        return await handler.metrics()
    raise AssertionError(f"method {method!r} is in METHODS but has no dispatch entry")


def _parse_request(request: object) -> tuple[RequestId, bool, str, object]:
    """Validate the envelope; returns (id, is_notification, method, params) or ProtocolError."""
    if isinstance(request, list):
        raise ProtocolError(
            INVALID_REQUEST,
            R_INVALID_REQUEST,
            "batch requests are not supported; send one request object per line",
        )
    if not isinstance(request, dict):
        raise ProtocolError(INVALID_REQUEST, R_INVALID_REQUEST, "a request must be a JSON object")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int | None):
        raise ProtocolError(
            INVALID_REQUEST, R_INVALID_REQUEST, "request id must be a string, an integer or null"
        )
    if request.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, R_INVALID_REQUEST, 'request must carry "jsonrpc": "2.0"')
    extra = sorted(set(request) - _REQUEST_MEMBERS)
    if extra:
        raise ProtocolError(
            INVALID_REQUEST,
            R_INVALID_REQUEST,
            f"unknown request member {extra[0]!r} (allowed: id, jsonrpc, method, params)",
        )
    method = request.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, R_INVALID_REQUEST, "request must name a method (a string)")
    if method not in METHODS:
        raise ProtocolError(
            METHOD_NOT_FOUND,
            R_METHOD_NOT_FOUND,
            f"unknown method {method[:64]!r} (known: {', '.join(sorted(METHODS))})",
            method=method[:64],
        )
    return request_id, "id" not in request, method, request.get("params")


def _safe_id(request: object) -> RequestId:
    """The id to answer an invalid request with: its own when usable, else null (JSON-RPC 5)."""
    if isinstance(request, dict):
        rid = request.get("id")
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            return rid
    return None


def _leaf(exc: BaseException) -> BaseException:
    # A handler running its own nursery raises an ExceptionGroup around the real error.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def handler_error_response(request_id: RequestId, method: str, exc: Exception) -> dict[str, object]:
    """The answer for an exception a handler raised (ExchangedError or a bug)."""
    leaf = _leaf(exc)
    if isinstance(leaf, errors.ExchangedError):
        shown = errors.present(leaf)
        log.info(
            "control request refused",
            method=method,
            reason=shown.reason,
            error=shown.message,
            mailbox=leaf.mailbox,
        )
        data: dict[str, object] = {"hint": shown.hint} if shown.hint else {}
        if leaf.mailbox:
            data["mailbox"] = leaf.mailbox
        return error_response(request_id, HANDLER_ERROR, shown.message, shown.reason, **data)
    log.error("control request failed with an internal error", method=method, exc_info=exc)
    shown = errors.present(leaf)
    return error_response(request_id, INTERNAL_ERROR, shown.message, R_INTERNAL_ERROR, hint=shown.hint)


async def dispatch(handler: ControlHandler, request: object) -> dict[str, object] | None:
    """Answer one decoded request. Returns None for a valid notification (a request without id)."""
    try:
        request_id, notification, method, raw_params = _parse_request(request)
        params = validate_params(method, raw_params)
    except ProtocolError as exc:
        log.info("control request invalid", reason=exc.reason, error=exc.message)
        return exc.response(_safe_id(request))
    try:
        result = await _call(handler, method, params)
    except Exception as exc:
        response = handler_error_response(request_id, method, exc)
    else:
        response = success_response(request_id, result)
    return None if notification else response


async def handle_line(handler: ControlHandler, line: bytes) -> bytes | None:
    """One request line -> the encoded answer line (None for a notification)."""
    try:
        request = decode_line(line)
    except ProtocolError as exc:
        log.info("control request unreadable", reason=exc.reason, error=exc.message, length=len(line))
        return encode_message(exc.response(None))
    response = await dispatch(handler, request)
    if response is None:
        return None
    try:
        return encode_message(response)
    except (TypeError, ValueError) as exc:  # the handler returned something JSON cannot carry
        method = request.get("method", "?") if isinstance(request, dict) else "?"
        return encode_message(handler_error_response(_safe_id(response), str(method), exc))
