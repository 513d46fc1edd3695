"""A fake ControlHandler and small socket helpers shared by the control tests."""

from __future__ import annotations

import json
from typing import Any

import trio

from exchanged import errors
from exchanged.control.protocol import LineFramer, encode_message, make_request

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "protocol": 1,
    "pid": 4242,
    "started_at": "2026-11-29T04:00:00+00:00",
    "state": "running",
    "config": {
        "path": "/etc/exchanged/exchanged.yaml",
        "generation": 3,
        "profile_name": "Contoso on-prem",
        "loaded_at": "2026-11-29T04:10:00+00:00",
        "last_reload": {"at": "2026-11-29T04:10:00+00:00", "result": "applied", "errors": []},
    },
    "exchange": {
        "server": "mail.contoso.com",
        "version": "Exchange2016",
        "reachable": True,
        "last_error": None,
    },
    "running": 1,
    "users": [
        {
            "mailbox": "jdoe@contoso.com",
            "psa_resource": "29682885",
            "enabled": True,
            "state": "syncing",
            "last_attempt": "2026-11-29T04:15:00+00:00",
            "last_success": "2026-11-29T04:15:00+00:00",
            "last_result": "ok",
            "last_error": None,
            "next_run": "2026-11-29T04:30:00+00:00",
            "progress": {"done": 12, "total": 40},
            "counts": {"exported": 3, "imported": 1, "updated": 2, "deleted": 0},
        },
        {
            "mailbox": "asmith@contoso.com",
            "psa_resource": "29682886",
            "enabled": True,
            "state": "error",
            "last_attempt": "2026-11-29T04:16:00+00:00",
            "last_success": None,
            "last_result": "error",
            "last_error": "asmith@contoso.com: impersonation denied",
            "next_run": "2026-11-29T04:31:00+00:00",
        },
    ],
}

PLAN: dict[str, Any] = {  # the shape the daemon's runner produces
    "mailbox": "jdoe@contoso.com",
    "psa_resource": "29682885",
    "window": {
        "now": "2026-11-29T04:00:00+00:00",
        "past_start": "2026-11-22T04:00:00+00:00",
        "recurring_end": "2026-12-29T04:00:00+00:00",
    },
    "kinds": ["appointment", "todo"],
    "summary": {
        "exchange": {"create": 1, "update": 1, "delete": 0},
        "psa": {"create": 0, "update": 0, "delete": 1},
    },
    "actions": [
        {
            "side": "psa",
            "action": "delete",
            "kind": "imported",
            "key": "UID-7",
            "item_id": None,
            "fields": [],
            "reason": "deleted in Exchange",
        },
        {
            "side": "exchange",
            "action": "update",
            "kind": "todo",
            "key": "todo:9",
            "item_id": "AAM=",
            "fields": ["due"],
            "reason": "changed in PSA",
        },
        {
            "side": "exchange",
            "action": "create",
            "kind": "appointment",
            "key": "appointment:42",
            "item_id": None,
            "fields": ["subject", "start", "end"],
            "reason": "new in PSA",
        },
    ],
    "held_back": [
        {
            "side": "exchange",
            "action": "delete",
            "kind": "contact",
            "key": "contact:5",
            "item_id": "AAX=",
            "fields": [],
            "reason": "gone from PSA",
        },
    ],
    "findings": [
        {"code": "deletes_held_back", "kind": None, "message": "30 deletions exceed the limit of 25"}
    ],
}

HISTORY: list[dict[str, Any]] = [
    {
        "at": "2026-11-29T04:15:01+00:00",
        "mailbox": "jdoe@contoso.com",
        "side": "exchange",
        "action": "create",
        "kind": "appointment",
        "key": "appointment:42",
        "fields": [],
        "reason": "new in PSA",
    },
    {
        "at": "2026-11-29T04:15:02+00:00",
        "mailbox": "jdoe@contoso.com",
        "side": "psa",
        "action": "update",
        "kind": "appointment",
        "key": "appointment:41",
        "fields": ["start", "end"],
        "reason": "moved in Exchange",
        "subject": "Visit Contoso",
    },
]


class UnknownMailbox(errors.ControlError):
    reason = "unknown_mailbox"
    hint = "list the configured users with `exchangectl users`"


class FakeHandler:
    """Records every call; answers with canned data; can be told to fail or to block."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_with: BaseException | None = None
        self.status_result: Any = STATUS
        self.reload_result: dict[str, Any] = {"result": "applied", "generation": 4, "errors": []}
        self.release = trio.Event()
        self.block_status = False
        self.outcome: dict[str, Any] = {
            "result": "ok",
            "error": None,
            "item_errors": [],
            "held_back_deletes": 0,
            "counts": {"exported": 2, "imported": 0, "updated": 1, "deleted": 0},
        }

    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))
        if self.fail_with is not None:
            raise self.fail_with

    async def status(self) -> Any:
        self._record("status")
        if self.block_status:
            await self.release.wait()
        return self.status_result

    async def resources(self) -> list[dict[str, Any]]:
        self._record("resources")
        return [{"psa_resource": "1", "name": "Alice Archer", "email": "alice@example.test", "active": True,
                 "in_psa": True, "mailbox": "alice@example.test", "enabled": True, "last_attempt": None,
                 "last_success": None}]

    async def users(self) -> list[dict[str, Any]]:
        self._record("users")
        return [
            {
                k: u.get(k)
                for k in (
                    "mailbox",
                    "psa_resource",
                    "enabled",
                    "state",
                    "last_attempt",
                    "last_result",
                    "last_error",
                    "next_run",
                )
            }
            for u in STATUS["users"]
        ]

    async def sync(
        self, mailboxes: list[str] | None, full: bool, wait: bool, allow_deletes: bool
    ) -> dict[str, Any]:
        self._record("sync", mailboxes=mailboxes, full=full, wait=wait, allow_deletes=allow_deletes)
        for mailbox in mailboxes or []:
            if mailbox not in {u["mailbox"] for u in STATUS["users"]}:
                raise UnknownMailbox(f"{mailbox} is not a configured user", mailbox=mailbox)
        names = mailboxes or [u["mailbox"] for u in STATUS["users"]]
        result: dict[str, Any] = {
            "started": names,
            "queued_behind_running": names[:1],
            "full": full,
            "allow_deletes": allow_deletes,
        }
        if wait:
            result["results"] = {m: dict(self.outcome) for m in names}
            result["ok"] = self.outcome["result"] != "error"
        return result

    async def plan(self, mailbox: str) -> dict[str, Any]:
        self._record("plan", mailbox=mailbox)
        return PLAN

    async def history(self, mailbox: str | None, since: str | None,
                      limit: int | None = None) -> list[dict[str, Any]]:
        self._record("history", mailbox=mailbox, since=since, limit=limit)
        return HISTORY[-limit:] if limit else HISTORY

    async def reload(self, wait: bool) -> dict[str, Any]:
        self._record("reload", wait=wait)
        return self.reload_result

    async def pause(self, mailboxes: list[str] | None) -> dict[str, Any]:
        self._record("pause", mailboxes=mailboxes)
        return {"paused": mailboxes or [u["mailbox"] for u in STATUS["users"]], "global": mailboxes is None}

    async def resume(self, mailboxes: list[str] | None) -> dict[str, Any]:
        self._record("resume", mailboxes=mailboxes)
        return {"resumed": mailboxes or [u["mailbox"] for u in STATUS["users"]], "global": mailboxes is None}

    async def metrics(self) -> dict[str, Any]:
        self._record("metrics")
        return {"content_type": "text/plain; version=0.0.4; charset=utf-8",
                "text": "# HELP exchanged_config_generation x\n# TYPE exchanged_config_generation gauge\n"
                        "exchanged_config_generation 3.0\n"}


def request_line(method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> bytes:
    return encode_message(make_request(request_id, method, params))


class LineClient:
    """A test client over any trio stream: send raw bytes, read answer lines as JSON."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.framer = LineFramer(64 * 1024 * 1024)
        self.lines: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> Any:
        """The next answer line, decoded; None at EOF."""
        while not self.lines:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.lines.extend(self.framer.feed(data))
        return json.loads(self.lines.pop(0))

    async def call(self, method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> Any:
        await self.send(request_line(method, params, request_id))
        return await self.receive()


async def open_client(path: str) -> LineClient:
    return LineClient(await trio.open_unix_socket(path))
