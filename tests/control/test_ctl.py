"""exchangectl as a subprocess against a real socket served by a fake handler in the test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from exchanged import errors
from exchanged.control import serve_control
from exchanged.control.protocol import LineFramer, encode_message

from .fakes import HISTORY, PLAN, STATUS, FakeHandler

USER_COLUMNS = ["MAILBOX", "RESOURCE", "STATE", "LAST ATTEMPT", "RESULT", "NEXT RUN"]


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def path(sock_dir: Path, handler: FakeHandler, nursery: trio.Nursery) -> str:
    sock = str(sock_dir / "control.sock")
    await nursery.start(partial(serve_control, sock, None, handler))
    return sock


async def ctl(
    *argv: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "exchanged.ctl", *argv],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **(env or {})},
        )


def out(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def header_line(text: str, first_column: str) -> list[str]:
    """The first table header of the output that starts with ``first_column``."""
    line = next(line for line in text.splitlines() if line.startswith(first_column))
    return line.split("  ")


async def test_status_table(path: str) -> None:
    result = await ctl("--socket", path, "status", "--utc")
    assert result.returncode == 0, err(result)
    text = out(result)
    headers = [h.strip() for h in header_line(text, "MAILBOX") if h.strip()]
    assert headers == USER_COLUMNS
    assert "times in UTC" in text
    assert (
        "Contoso on-prem" in text
        and "generation 3" in text
        and "mail.contoso.com (Exchange2016), reachable" in text
    )
    row = next(line for line in text.splitlines() if line.startswith("jdoe@contoso.com"))
    assert row.split() == [
        "jdoe@contoso.com",
        "29682885",
        "syncing",
        "12/40",
        "2026-11-29",
        "04:15:00",
        "ok",
        "2026-11-29",
        "04:30:00",
    ]
    assert "asmith@contoso.com: last error: asmith@contoso.com: impersonation denied" in text
    # columns are aligned: every row starts its STATE column where the header does
    state_at = text.splitlines()[
        [line.startswith("MAILBOX") for line in text.splitlines()].index(True)
    ].index("STATE")
    assert row[state_at:].startswith("syncing") and row[state_at - 2 : state_at] == "  "


async def test_status_json_is_exactly_the_daemon_result(path: str) -> None:
    result = await ctl("--socket", path, "status", "--json")
    assert result.returncode == 0
    assert json.loads(out(result)) == json.loads(json.dumps(STATUS))


async def test_status_copes_with_a_minimal_answer(path: str, handler: FakeHandler) -> None:
    handler.status_result = {"state": "degraded", "users": [{"mailbox": "x@y"}]}
    result = await ctl("--socket", path, "status")
    assert result.returncode == 0, err(result)
    assert "degraded" in out(result) and "x@y" in out(result) and "not checked yet" in out(result)


async def test_socket_from_the_environment(path: str) -> None:
    result = await ctl("users", env={"EXCHANGED_SOCKET": path})
    assert result.returncode == 0, err(result)
    headers = [h.strip() for h in header_line(out(result), "MAILBOX") if h.strip()]
    assert headers == ["MAILBOX", "PSA RESOURCE", "ENABLED", "LAST ATTEMPT", "RESULT", "NEXT RUN"]


async def test_socket_option_after_the_command(path: str) -> None:
    result = await ctl("version", "--socket", path)
    assert result.returncode == 0, err(result)
    assert "protocol 1" in out(result)


async def test_plan_table(path: str, handler: FakeHandler) -> None:
    result = await ctl("--socket", path, "plan", "jdoe@contoso.com")
    assert result.returncode == 0, err(result)
    text = out(result)
    assert [h.strip() for h in header_line(text, "SIDE") if h.strip()] == [
        "SIDE",
        "ACTION",
        "KIND",
        "KEY",
        "SUBJECT / FIELDS",
        "REASON",
    ]
    assert "exchange: 1 create, 1 update, 0 delete; psa: 0 create, 0 update, 1 delete" in text
    assert "deleted in Exchange" in text and "subject,start,end" in text
    assert "finding: 30 deletions exceed the limit of 25 (deletes_held_back)" in text
    lines = text.splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("SIDE"))) + 1 :][:3]
    assert [r.split()[:2] for r in rows] == [
        ["exchange", "create"],
        ["exchange", "update"],
        ["psa", "delete"],
    ]
    held = lines.index(next(line for line in lines if line.startswith("held back (1;")))
    assert "exchangectl sync jdoe@contoso.com --allow-deletes" in lines[held]
    assert lines[held + 2].split()[:4] == ["exchange", "delete", "contact", "contact:5"]
    assert handler.calls == [("plan", {"mailbox": "jdoe@contoso.com"})]
    as_json = await ctl("--socket", path, "plan", "jdoe@contoso.com", "--json")
    assert json.loads(out(as_json)) == PLAN


async def test_history_since_relative(path: str, handler: FakeHandler) -> None:
    result = await ctl("--socket", path, "history", "jdoe@contoso.com", "--since", "2h")
    assert result.returncode == 0, err(result)
    [(name, params)] = handler.calls
    assert name == "history" and params["mailbox"] == "jdoe@contoso.com"
    assert params["since"].endswith("+00:00")  # sent as absolute UTC
    headers = [h.strip() for h in header_line(out(result), "TIME") if h.strip()]
    assert headers == ["TIME", "MAILBOX", "SIDE", "ACTION", "KIND", "KEY", "WHAT", "REASON"]
    assert '"Visit Contoso" start,end' in out(result)  # the subject, then the fields written
    as_json = await ctl("--socket", path, "history", "--json")
    assert json.loads(out(as_json)) == HISTORY
    limited = await ctl("--socket", path, "history", "--limit", "1", "--json")
    assert handler.calls[-1][1]["limit"] == 1 and json.loads(out(limited)) == HISTORY[-1:]
    refused = await ctl("--socket", path, "history", "--limit", "0")
    assert refused.returncode == 2


async def test_sync_passes_flags(path: str, handler: FakeHandler) -> None:
    result = await ctl("--socket", path, "sync", "jdoe@contoso.com", "--full", "--wait", "--allow-deletes")
    assert result.returncode == 0, err(result)
    assert handler.calls == [
        ("sync", {"mailboxes": ["jdoe@contoso.com"], "full": True, "wait": True, "allow_deletes": True})
    ]
    row = next(line for line in out(result).splitlines() if line.startswith("jdoe@contoso.com"))
    assert row.split() == ["jdoe@contoso.com", "ok", "2", "exported,", "1", "updated"]


async def test_sync_without_wait_says_started_or_queued(path: str) -> None:
    result = await ctl("--socket", path, "sync")
    assert result.returncode == 0, err(result)
    assert "sync requested for 2 mailbox(es)" in out(result)
    assert "queued behind the running cycle" in out(result) and "started" in out(result)


async def test_sync_wait_with_a_failed_cycle_exits_1(path: str, handler: FakeHandler) -> None:
    handler.outcome = {"result": "error", "error": "jdoe@contoso.com: Exchange unreachable", "counts": {}}
    result = await ctl("--socket", path, "sync", "jdoe@contoso.com", "--wait")
    assert result.returncode == 1
    assert "jdoe@contoso.com: Exchange unreachable" in out(result)


async def test_refused_sync_exits_1_with_message_and_reason(path: str) -> None:
    with capture_logs():
        result = await ctl("--socket", path, "sync", "nobody@contoso.com")
    assert result.returncode == 1
    assert "exchangectl: nobody@contoso.com is not a configured user (unknown_mailbox)" in err(result)
    assert out(result) == ""


async def test_refusal_with_json_is_still_one_document(path: str) -> None:
    with capture_logs():
        result = await ctl("--socket", path, "sync", "nobody@contoso.com", "--json")
    assert result.returncode == 1
    assert json.loads(out(result))["error"]["reason"] == "unknown_mailbox"


async def test_reload_outcomes(path: str, handler: FakeHandler) -> None:
    applied = await ctl("--socket", path, "reload")
    assert applied.returncode == 0 and "reload applied: config generation 4" in out(applied)
    handler.reload_result = {"result": "deferred", "generation": 3}
    assert (await ctl("--socket", path, "reload")).returncode == 0
    handler.reload_result = {"result": "rejected", "errors": ["line 3: sync_interval_minutes: must be >= 10"]}
    rejected = await ctl("--socket", path, "reload", "--wait")
    assert rejected.returncode == 1
    assert "sync_interval_minutes" in err(rejected)
    assert handler.calls[-1] == ("reload", {"wait": True})
    handler.fail_with = errors.ControlError("config invalid, old config kept")
    handler.fail_with.reason = "reload_rejected"
    with capture_logs():
        raised = await ctl("--socket", path, "reload")
    assert raised.returncode == 1 and "(reload_rejected)" in err(raised)


async def test_pause_and_resume(path: str, handler: FakeHandler) -> None:
    paused = await ctl("--socket", path, "pause")
    assert paused.returncode == 0 and "scheduling paused for every user" in out(paused)
    resumed = await ctl("--socket", path, "resume", "jdoe@contoso.com")
    assert resumed.returncode == 0 and "resumed: jdoe@contoso.com" in out(resumed)
    assert handler.calls == [("pause", {"mailboxes": None}), ("resume", {"mailboxes": ["jdoe@contoso.com"]})]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["plan"],
        ["history", "--since", "soon"],
        ["status", "--frobnicate"],
        ["sync", "--timeout", "x"],
    ],
)
async def test_usage_errors_exit_2(path: str, handler: FakeHandler, argv: list[str]) -> None:
    result = await ctl("--socket", path, *argv)
    assert result.returncode == 2
    assert "exchangectl" in err(result) and out(result) == ""
    assert handler.calls == []


async def test_daemon_not_running_exits_3(sock_dir: Path) -> None:
    missing = str(sock_dir / "nothing.sock")
    result = await ctl("--socket", missing, "status")
    assert result.returncode == 3
    assert missing in err(result) and "systemctl status exchanged" in err(result)
    from_env = await ctl("status", "--json", env={"EXCHANGED_SOCKET": missing})
    assert from_env.returncode == 3 and json.loads(out(from_env))["error"]["reason"] == "daemon_unreachable"


async def test_stale_socket_exits_3(sock_dir: Path) -> None:
    stale_path = str(sock_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(stale_path)
    stale.close()
    result = await ctl("--socket", stale_path, "status")
    assert result.returncode == 3 and "nothing answers on" in err(result)


async def test_daemon_that_does_not_answer_exits_3(path: str, handler: FakeHandler) -> None:
    handler.block_status = True
    result = await ctl("--socket", path, "--timeout", "0.5", "status")
    assert result.returncode == 3 and "did not answer" in err(result)
    handler.release.set()


async def test_refused_peer_exits_1(sock_dir: Path, nursery: trio.Nursery) -> None:
    sock = str(sock_dir / "refusing.sock")
    with capture_logs():
        await nursery.start(partial(serve_control, sock, None, FakeHandler(), peer_check=lambda peer: False))
        result = await ctl("--socket", sock, "status")
    assert result.returncode == 1
    assert "(permission_denied)" in err(result) and "may not use the exchanged control socket" in err(result)


async def test_other_protocol_major_is_refused(sock_dir: Path, nursery: trio.Nursery) -> None:
    sock_path = str(sock_dir / "future.sock")
    listen = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listen.bind(sock_path)
    listen.listen()

    async def future_daemon(stream: trio.SocketStream) -> None:
        framer = LineFramer()
        while not (lines := framer.feed(await stream.receive_some(65536))):
            pass
        request: dict[str, Any] = json.loads(lines[0])
        answer = {"version": "9.0.0", "protocol": 2, "methods": ["status", "version"]}
        await stream.send_all(encode_message({"jsonrpc": "2.0", "id": request["id"], "result": answer}))
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, future_daemon, [trio.SocketListener(listen)])
    result = await ctl("--socket", sock_path, "status")
    assert result.returncode == 1
    assert "speaks protocol 2" in err(result) and "(protocol_mismatch)" in err(result)


async def test_reload_applied_lists_the_changes(path: str, handler: FakeHandler) -> None:
    handler.reload_result = {
        "at": "2026-11-29T04:20:00+00:00",
        "result": "applied",
        "errors": [],
        "generation": 5,
        "added": ["new@contoso.com"],
        "removed": [],
        "changed": ["jdoe@contoso.com"],
        "resync_all": True,
    }
    result = await ctl("--socket", path, "reload")
    assert result.returncode == 0
    text = out(result)
    assert "reload applied: config generation 5" in text
    assert "added: new@contoso.com" in text and "changed: jdoe@contoso.com" in text
    assert "removed" not in text and "fully resynced" in text


async def test_status_shows_pushed_or_polled_and_why(path: str, handler: FakeHandler) -> None:
    """With EWS streaming the daemon says per mailbox how Exchange changes reach it; a mailbox
    polled because push failed gets its reason under the table."""
    handler.status_result = {"state": "running", "users": [
        {"mailbox": "a@x", "state": "idle", "push": "pushed", "push_note": None, "push_since": None},
        {"mailbox": "b@x", "state": "idle", "push": "polled", "push_since": None,
         "push_note": "polled: streaming notifications failed: the server refuses more streaming "
                      "connections for svc (ErrorExceededConnectionCount; ...)"},
    ]}
    result = await ctl("--socket", path, "status")
    assert result.returncode == 0, err(result)
    text = out(result)
    assert [h.strip() for h in header_line(text, "MAILBOX") if h.strip()][-1] == "CHANGES"
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("a@x", "b@x"))}
    assert rows["a@x"][-1] == "pushed" and rows["b@x"][-1] == "polled"
    assert "b@x: polled: streaming notifications failed" in text and "ErrorExceededConnectionCount" in text


async def test_users_added_from_the_psa_are_marked(path: str, handler: FakeHandler) -> None:
    """users_from_psa: status and users say which users the PSA gave; without any, no FROM column."""
    handler.status_result = {"state": "running", "users": [
        {"mailbox": "a@x", "psa_resource": "1", "state": "idle", "source": "config"},
        {"mailbox": "b@x", "psa_resource": "2", "state": "idle", "source": "users_from_psa"},
    ]}
    result = await ctl("--socket", path, "status")
    assert result.returncode == 0, err(result)
    text = out(result)
    assert [h.strip() for h in header_line(text, "MAILBOX") if h.strip()][-1] == "FROM"
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("a@x", "b@x"))}
    assert rows["a@x"][-1] == "config" and rows["b@x"][-1] == "PSA"

    handler.status_result = {"state": "running", "users": [
        {"mailbox": "a@x", "psa_resource": "1", "state": "idle", "source": "config"}]}
    assert "FROM" not in out(await ctl("--socket", path, "status"))
