"""Change tracking (delta) over one folder, shared by calendarView, contacts and To Do tasks."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

from ..ews.soap import fmt_dt, parse_dt
from ..ews.store import FolderRow, ItemRow
from . import convert as cv
from .base import DEFAULT_PAGE, MAX_PAGE, Ctx, OpsBase, Response
from .convert import GraphError


class DeltaOps(OpsBase):
    def _delta(
        self,
        ctx: Ctx,
        folder: FolderRow,
        collection: str,
        render: Callable[[ItemRow, tuple[dt.datetime, dt.datetime]], list[tuple[str, dict[str, Any]]]],
        *,
        window_required: bool = False,
        default_page: int = DEFAULT_PAGE,
    ) -> Response:
        """Change tracking over one folder: the first round lists everything, pages follow
        @odata.nextLink ($skiptoken), the last page carries @odata.deltaLink ($deltatoken), which
        lists what changed since (``@removed`` for what left). Tokens live in the store, so they
        survive restarts and a page can be fetched again (a client whose reply was lost retries)."""
        size = self._page_size_delta(ctx, default_page)
        skiptoken, deltatoken = ctx.req.query.get("$skiptoken"), ctx.req.query.get("$deltatoken")
        if skiptoken:
            state = self._load_state(ctx, skiptoken, "skip", collection)
            snapshot = self._load_state(ctx, state["snapshot"], "snapshot", collection)
            return self._delta_page(
                ctx, snapshot["entries"], snapshot["final"], size, state["offset"], state["snapshot"]
            )
        if deltatoken:
            state = self._load_state(ctx, deltatoken, "delta", collection)
            window = _window_of(state)
            seen: dict[str, list[str]] = state["seen"]
            entries: list[dict[str, Any]] = []
            for kind, _seq, item_id, row in self.store.item_changes(folder.id, int(state["seq"])):
                old = seen.pop(item_id, [cv.to_graph_id(item_id)] if kind == "Delete" else [])
                new = render(row, window) if row is not None else []
                new_ids = [gid for gid, _ in new]
                entries.extend(_removed(gid, collection) for gid in old if gid not in new_ids)
                entries.extend(e for _, e in new)
                if new_ids:
                    seen[item_id] = new_ids
            final = {**state, "seq": self.store.current_seq(folder.mailbox), "seen": seen}
            return self._delta_page(ctx, entries, final, size)
        if window_required:
            window = self._window(ctx)
        else:
            window = (dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC))
        seen = {}
        entries = []
        for row in self.store.items_in(folder.id):
            new = render(row, window)
            if new:
                seen[row.id] = [gid for gid, _ in new]
                entries.extend(e for _, e in new)
        final = {
            "kind": "delta",
            "collection": collection,
            "path": ctx.req.path,
            "seq": self.store.current_seq(folder.mailbox),
            "window": [fmt_dt(window[0]), fmt_dt(window[1])] if window_required else None,
            "seen": seen,
        }
        return self._delta_page(ctx, entries, final, size)

    def _page_size_delta(self, ctx: Ctx, default: int) -> int:
        if ctx.req.prefer.maxpagesize:
            return min(ctx.req.prefer.maxpagesize, MAX_PAGE)
        return default

    def _delta_page(
        self,
        ctx: Ctx,
        entries: list[dict[str, Any]],
        final: dict[str, Any],
        size: int,
        offset: int = 0,
        snapshot: str | None = None,
    ) -> Response:
        """The page at ``offset`` of a round's entries. A round longer than a page is stored once
        (a snapshot); each nextLink names the snapshot and the next offset."""
        base = f"{self.app.url}/v1.0{final['path']}"
        page = entries[offset : offset + size]
        kind = {"calendarView": "events", "contacts": "contacts", "tasks": "tasks"}[
            final["collection"].split(":")[0]
        ]
        body: dict[str, Any] = {"@odata.context": self._context_url(ctx, f"{kind}(delta)"), "value": page}
        if offset + size < len(entries):
            if snapshot is None:
                snapshot = self._save_state(
                    ctx,
                    {
                        "kind": "snapshot",
                        "collection": final["collection"],
                        "entries": entries,
                        "final": final,
                    },
                )
            token = self._save_state(
                ctx,
                {
                    "kind": "skip",
                    "collection": final["collection"],
                    "snapshot": snapshot,
                    "offset": offset + size,
                },
            )
            body["@odata.nextLink"] = f"{base}?$skiptoken={token}"
        else:
            token = self._save_state(ctx, final)
            body["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        headers = {}
        if ctx.req.prefer.maxpagesize:
            headers["Preference-Applied"] = f"odata.maxpagesize={size}"
        return self._json(200, body, ctx, headers)

    def _save_state(self, ctx: Ctx, state: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(24)
        self.store.save_delta_state(token, ctx.mailbox, json.dumps(state))
        return token

    def _load_state(self, ctx: Ctx, token: str, kind: str, collection: str) -> dict[str, Any]:
        found = None if self.app.take_expired_token() else self.store.delta_state(token)
        if found is None:
            raise GraphError(
                410,
                "SyncStateNotFound",
                "The sync state cannot be found: the token is unknown or has expired. Start a new round "
                "of change tracking without a token.",
            )
        mailbox, data = found
        state = json.loads(data)
        if mailbox != ctx.mailbox or state.get("kind") != kind or state.get("collection") != collection:
            raise GraphError(
                400, "SyncStateInvalid", "The sync state belongs to another collection or mailbox."
            )
        return dict(state)


_ODATA_TYPES = {"calendarView": "event", "contacts": "contact", "tasks": "todoTask"}


def _removed(graph_id: str, collection: str) -> dict[str, Any]:
    kind = _ODATA_TYPES.get(collection.split(":", 1)[0], "event")
    return {"@odata.type": f"#microsoft.graph.{kind}", "id": graph_id, "@removed": {"reason": "deleted"}}


def _window_of(state: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    window = state.get("window")
    if not window:
        return dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)
    start, end = parse_dt(window[0]), parse_dt(window[1])
    assert start is not None and end is not None
    return start, end
