"""dispatch() and serve_stream() over a fake handler: no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from exchanged import PROTOCOL_VERSION, __version__, errors
from exchanged.control import dispatch, handle_line
from exchanged.control.protocol import MAX_LINE_BYTES, METHODS
from exchanged.control.server import ServerLimits, serve_stream

from .fakes import FakeHandler, LineClient, UnknownMailbox, request_line


def req(method: str, params: Any = None, request_id: Any = 1, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method, **extra}
    if params is not None:
        message["params"] = params
    return message


async def test_version_is_answered_by_the_control_layer() -> None:
    handler = FakeHandler()
    response = await dispatch(handler, req("version"))
    assert response == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"version": __version__, "protocol": PROTOCOL_VERSION, "methods": sorted(METHODS)},
    }
    assert handler.calls == []


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("status", None, ("status", {})),
        ("users", None, ("users", {})),
        ("sync", None, ("sync", {"mailboxes": None, "full": False, "wait": False, "allow_deletes": False})),
        (
            "sync",
            {"mailboxes": ["jdoe@contoso.com"], "full": True, "wait": True, "allow_deletes": True},
            ("sync", {"mailboxes": ["jdoe@contoso.com"], "full": True, "wait": True, "allow_deletes": True}),
        ),
        ("plan", {"mailbox": "jdoe@contoso.com"}, ("plan", {"mailbox": "jdoe@contoso.com"})),
        ("history", None, ("history", {"mailbox": None, "since": None, "limit": None})),
        (
            "history",
            {"mailbox": "a@b", "since": "2026-11-29T05:00:00+01:00", "limit": 5},
            ("history", {"mailbox": "a@b", "since": "2026-11-29T04:00:00+00:00", "limit": 5}),
        ),
        ("reload", {"wait": True}, ("reload", {"wait": True})),
        ("pause", None, ("pause", {"mailboxes": None})),
        ("resume", {"mailboxes": ["a@b"]}, ("resume", {"mailboxes": ["a@b"]})),
    ],
)
async def test_methods_reach_the_handler_with_validated_params(
    method: str, params: Any, expected: tuple[str, dict[str, Any]]
) -> None:
    handler = FakeHandler()
    response = await dispatch(handler, req(method, params, request_id="abc"))
    assert response is not None and "result" in response and response["id"] == "abc"
    assert handler.calls == [expected]


async def test_unknown_method() -> None:
    response = await dispatch(FakeHandler(), req("shutdown"))
    assert response is not None
    assert response["error"]["code"] == -32601
    assert response["error"]["data"]["reason"] == "method_not_found"
    assert "shutdown" in response["error"]["message"] and "status" in response["error"]["message"]


@pytest.mark.parametrize(
    "request_obj",
    [
        [req("status")],
        "status",
        42,
        {"id": 1, "method": "status"},
        {"jsonrpc": "1.0", "id": 1, "method": "status"},
        {"jsonrpc": "2.0", "id": True, "method": "status"},
        {"jsonrpc": "2.0", "id": [1], "method": "status"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "status", "parms": {}},
    ],
)
async def test_invalid_requests(request_obj: Any) -> None:
    handler = FakeHandler()
    response = await dispatch(handler, request_obj)
    assert response is not None
    assert response["error"]["code"] == -32600
    assert response["error"]["data"]["reason"] == "invalid_request"
    assert handler.calls == []


async def test_invalid_request_keeps_a_usable_id() -> None:
    response = await dispatch(FakeHandler(), {"jsonrpc": "1.0", "id": 7, "method": "status"})
    assert response is not None and response["id"] == 7


async def test_invalid_params_name_the_param_and_do_not_reach_the_handler() -> None:
    handler = FakeHandler()
    response = await dispatch(handler, req("sync", {"mailboxes": ["a@b"], "force": True}))
    assert response is not None
    assert response["error"]["code"] == -32602
    assert response["error"]["data"] == {
        "reason": "invalid_params",
        "method": "sync",
        "param": "force",
    }
    assert handler.calls == []


async def test_exchanged_error_keeps_its_reason_message_and_hint() -> None:
    handler = FakeHandler()
    response = await dispatch(handler, req("sync", {"mailboxes": ["nobody@contoso.com"]}))
    assert response is not None
    error = response["error"]
    assert error["code"] == -32001
    assert error["data"]["reason"] == "unknown_mailbox"
    assert error["data"]["hint"] == UnknownMailbox.hint
    assert error["data"]["mailbox"] == "nobody@contoso.com"
    assert error["message"] == "nobody@contoso.com is not a configured user"


async def test_error_message_comes_from_present_and_names_the_mailbox() -> None:
    handler = FakeHandler()
    handler.fail_with = errors.ImpersonationDenied("access denied", mailbox="jdoe@contoso.com")
    response = await dispatch(handler, req("plan", {"mailbox": "jdoe@contoso.com"}))
    assert response is not None
    assert response["error"]["message"] == "jdoe@contoso.com: access denied"
    assert response["error"]["data"]["reason"] == "impersonation_denied"


async def test_reason_of_an_error_inside_an_exception_group_is_kept() -> None:
    handler = FakeHandler()
    handler.fail_with = ExceptionGroup("nursery", [errors.ControlError("reload refused")])
    response = await dispatch(handler, req("reload"))
    assert response is not None and response["error"]["data"]["reason"] == "control_error"


async def test_unexpected_exception_is_internal_error_and_logged_with_traceback() -> None:
    handler = FakeHandler()
    handler.fail_with = KeyError("boom")
    with capture_logs() as logs:
        response = await dispatch(handler, req("status"))
    assert response is not None
    assert response["error"]["code"] == -32603
    assert response["error"]["data"]["reason"] == "internal_error"
    assert "KeyError" in response["error"]["message"]
    [entry] = [e for e in logs if e["log_level"] == "error"]
    assert entry["method"] == "status" and isinstance(entry["exc_info"], KeyError)


async def test_notification_is_executed_but_not_answered() -> None:
    handler = FakeHandler()
    assert await dispatch(handler, {"jsonrpc": "2.0", "method": "pause"}) is None
    assert handler.calls == [("pause", {"mailboxes": None})]


async def test_handle_line_turns_an_unserialisable_result_into_internal_error() -> None:
    handler = FakeHandler()
    handler.status_result = {"bad": object()}
    with capture_logs():
        answer = await handle_line(handler, request_line("status", request_id=9))
    assert answer is not None
    response = json.loads(answer)
    assert response["id"] == 9 and response["error"]["data"]["reason"] == "internal_error"


async def test_handle_line_answers_parse_errors_with_null_id() -> None:
    answer = await handle_line(FakeHandler(), b"\xff\xfe")
    assert answer is not None
    response = json.loads(answer)
    assert response["id"] is None and response["error"]["data"]["reason"] == "parse_error"


# --- serve_stream over memory streams --------------------------------------------------------------
@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


async def test_several_requests_on_one_connection_are_answered_in_order(handler: FakeHandler) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    client = LineClient(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_side, handler)
        # Three requests in one write, the middle one broken: three answers in order.
        await client.send(
            request_line("status", request_id=1) + b"garbage\n" + request_line("users", request_id=3)
        )
        with trio.fail_after(10):
            first, second, third = [await client.receive() for _ in range(3)]
        assert first["id"] == 1 and "result" in first
        assert second["id"] is None and second["error"]["data"]["reason"] == "parse_error"
        assert third["id"] == 3 and isinstance(third["result"], list)
        await client_side.aclose()
    assert [name for name, _ in handler.calls] == ["status", "users"]


async def test_blank_lines_are_ignored(handler: FakeHandler) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    client = LineClient(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_side, handler)
        await client.send(b"\n  \n" + request_line("version"))
        with trio.fail_after(10):
            assert (await client.receive())["result"]["protocol"] == PROTOCOL_VERSION
        await client_side.aclose()


async def test_line_too_long_answers_then_ends_the_connection(handler: FakeHandler) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    client = LineClient(client_side)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server_side, handler)
            chunk = b"x" * 65536
            sent = 0
            with trio.move_on_after(5):  # the server stops reading once it has answered
                while sent <= MAX_LINE_BYTES + len(chunk):
                    await client.send(chunk)
                    sent += len(chunk)
            answer = await client.receive()
            assert answer["error"]["data"]["reason"] == "line_too_long"
            assert answer["error"]["code"] == -32600
    assert handler.calls == []


async def test_silent_client_is_closed_after_the_idle_timeout(
    handler: FakeHandler, autojump_clock: trio.testing.MockClock
) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    client = LineClient(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_side, handler, ServerLimits(idle_timeout=60))
        await client.send(b'{"jsonrpc": "2.0", ')  # a trickle, never a full line
        answer = await client.receive()
        assert answer["error"]["data"]["reason"] == "idle_timeout"
    assert trio.current_time() >= 60


async def test_answered_requests_reset_the_idle_timeout(
    handler: FakeHandler, autojump_clock: trio.testing.MockClock
) -> None:
    client_side, server_side = trio.testing.memory_stream_pair()
    client = LineClient(client_side)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_side, handler, ServerLimits(idle_timeout=60))
        for i in range(3):
            await trio.sleep(50)
            assert (await client.call("version", request_id=i))["id"] == i
        await client_side.aclose()


async def test_client_that_does_not_read_is_dropped(
    handler: FakeHandler, autojump_clock: trio.testing.MockClock
) -> None:
    handler.status_result = {"blob": "x" * 200_000}
    client_side, server_side = trio.testing.lockstep_stream_pair()
    limits = ServerLimits(send_timeout=30)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_stream, server_side, handler, limits)
            await client_side.send_all(request_line("status"))
            # never read: the server gives up after send_timeout and serve_stream returns
    assert any("does not read" in e["event"] for e in logs)


def test_package_exports_are_the_functions_not_same_named_submodules() -> None:
    import types

    import exchanged.control as package
    import exchanged.control.protocol
    import exchanged.control.rpc
    import exchanged.control.server  # noqa: F401

    for name in package.__all__:
        assert not isinstance(getattr(package, name), types.ModuleType), name
    assert package.dispatch is dispatch
