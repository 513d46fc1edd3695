"""SyncFolderItems / SyncFolderHierarchy contract: exact change sets, paging, invalid states."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from exchangelib import CalendarItem, EWSDateTime, EWSTimeZone
from exchangelib.errors import ErrorInvalidSyncStateData
from exchangelib.folders import Calendar
from exchangelib.services import SyncFolderItems

UTC = EWSTimeZone("UTC")
T0 = EWSDateTime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _events(account, folder, n: int, prefix: str = "ev") -> list[CalendarItem]:
    items = [
        CalendarItem(
            account=account,
            folder=folder,
            subject=f"{prefix} {i:03}",
            start=T0 + dt.timedelta(hours=i),
            end=T0 + dt.timedelta(hours=i + 1),
        )
        for i in range(n)
    ]
    return list(account.bulk_create(folder=folder, items=items, send_meeting_invitations="SendToNone"))


def _sync(folder, state: str | None = None, **kw) -> tuple[list[tuple[str, Any]], str]:
    changes = list(folder.sync_items(sync_state=state, **kw))
    return changes, folder.item_sync_state


def test_sync_returns_exactly_the_changes_made(account, calendar) -> None:
    created = _events(account, calendar, 5)
    changes, state = _sync(calendar)
    assert sorted(c for c, _ in changes) == ["create"] * 5
    assert {i.id for _, i in changes} == {i.id for i in created}

    changes, state2 = _sync(calendar, state)
    assert changes == []

    first = calendar.get(id=created[0].id)
    first.subject = "changed"
    first.save(update_fields=["subject"], send_meeting_invitations="SendToNone")
    gone_id = created[1].id
    calendar.get(id=gone_id).delete(send_meeting_cancellations="SendToNone")
    new = _events(account, calendar, 1, prefix="new")[0]
    changes, _ = _sync(calendar, state2)
    summary = sorted((c, i.id) for c, i in changes)
    assert summary == sorted([("update", created[0].id), ("delete", gone_id), ("create", new.id)])
    updated = next(i for c, i in changes if c == "update")
    assert updated.changekey == first.changekey

    # An old state replays from where it was: still valid, same answer.
    again, _ = _sync(calendar, state2)
    assert sorted((c, i.id) for c, i in again) == summary


def test_sync_pages_up_to_512_changes(account, calendar) -> None:
    _events(account, calendar, 600)
    svc = SyncFolderItems(account=account)
    pages = []
    state = None
    while True:
        changes = list(
            svc.call(
                folder=calendar,
                shape="IdOnly",
                additional_fields=None,
                sync_state=state,
                ignore=None,
                max_changes_returned=512,
                sync_scope=None,
            )
        )
        pages.append(len(changes))
        state = svc.sync_state
        if svc.includes_last_item_in_range:
            break
    assert pages == [512, 88]


def test_invalid_sync_state_is_refused(account, calendar) -> None:
    with pytest.raises(ErrorInvalidSyncStateData):
        _sync(calendar, "bm90IGEgc3luYyBzdGF0ZQ==")


def test_sync_state_of_another_folder_is_refused(account, calendar) -> None:
    _, state = _sync(calendar)
    other = Calendar(parent=account.calendar, name=f"{calendar.name}-other")
    other.save()
    try:
        with pytest.raises(ErrorInvalidSyncStateData):
            _sync(other, state)
    finally:
        other.delete()


def test_sync_hierarchy_reports_new_and_deleted_folders(account, calendar) -> None:
    changes = list(calendar.sync_hierarchy())
    state = calendar.folder_sync_state
    assert changes == []
    child = Calendar(parent=calendar, name="child")
    child.save()
    changes = list(calendar.sync_hierarchy(sync_state=state))
    assert [(c, f.name) for c, f in changes] == [("create", "child")]
    state = calendar.folder_sync_state
    child.delete()
    changes = list(calendar.sync_hierarchy(sync_state=state))
    assert [c for c, _ in changes] == ["delete"]
