"""Lost replies: the EWS server carries out a CreateItem, UpdateItem or DeleteItem batch and closes
the connection without answering (``drop_next`` aimed with ``only_ops``). Through the real adapter
and runner: nothing twice, nothing lost, the next cycles converge and then write nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests.reliability.harness import ts
from tests.reliability.inproc import Stack, open_stack

pytestmark = pytest.mark.reliability


async def _converges(stack: Stack) -> None:
    for _ in range(2):  # the cycle that repairs, and one more
        outcome = await stack.cycle()
        assert outcome.result in ("ok", "partial"), outcome
    assert await stack.duplicates() == []
    assert await stack.plan_writes() == []
    before = stack.ews_writes()
    quiet = await stack.cycle()
    assert quiet.result == "ok", quiet
    c = quiet.counts
    assert (c.exported, c.imported, c.updated, c.deleted) == (0, 0, 0, 0)
    assert stack.ews_writes() == before


async def _keys(stack: Stack) -> set[str]:
    return {i.psa_key for i in await stack.exchange_items() if i.psa_key}


@pytest.mark.parametrize("drops", [1, 2])
async def test_create_reply_lost(tmp_path: Path, drops: int) -> None:
    async with open_stack(tmp_path) as stack:
        stack.server.set_faults(drop_next=drops, only_ops="CreateItem")
        first = await stack.cycle()
        assert stack.server.stats()["dropped"] == drops
        # the adapter adopts what the lost batch created before it creates the rest
        assert first.result in ("ok", "partial"), first
        assert await stack.duplicates() == []
        stack.server.set_faults(drop_next=0, only_ops="")
        await _converges(stack)
        want = {f"appointment:{i}" for i in (300, 301, 302)} | {"service_call:400", "service_call:403",
                                                                 "todo:500", "todo:502"}
        assert want <= await _keys(stack)


async def test_update_reply_lost(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as stack:
        assert (await stack.cycle()).result == "ok"
        stack.psa_rows("UPDATE appointments SET title = 'Quarterly review (moved)' WHERE id = 300")
        stack.psa_rows("UPDATE todos SET description = 'Call Ann today' WHERE id = 500")
        stack.server.set_faults(drop_next=1, only_ops="UpdateItem")
        await stack.cycle()
        assert stack.server.stats()["dropped"] == 1
        stack.server.set_faults(drop_next=0, only_ops="")
        await _converges(stack)
        subjects = {i.psa_key: getattr(i.payload, "subject", None) for i in await stack.exchange_items()}
        assert subjects["appointment:300"] == "Quarterly review (moved)"


async def test_delete_reply_lost(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as stack:
        assert (await stack.cycle()).result == "ok"
        stack.psa_rows("DELETE FROM appointments WHERE id IN (301, 302)")
        stack.server.set_faults(drop_next=1, only_ops="DeleteItem")
        await stack.cycle()
        assert stack.server.stats()["dropped"] == 1
        stack.server.set_faults(drop_next=0, only_ops="")
        await _converges(stack)
        keys = await _keys(stack)
        assert "appointment:301" not in keys and "appointment:302" not in keys
        assert "appointment:300" in keys


async def test_import_then_create_reply_lost_both_sides(tmp_path: Path) -> None:
    """A user's Outlook appointment comes in while a PSA create's answer is lost in the same cycle."""
    from tests.reliability.harness import outlook_edits

    now = datetime.now(UTC).replace(microsecond=0)
    async with open_stack(tmp_path, now=now) as stack:
        assert (await stack.cycle()).result == "ok"
        start = now.replace(minute=0, second=0) + timedelta(days=2, hours=3)
        stack.psa_rows("INSERT INTO appointments (id, resource_id, title, description, start_time, "
                       "end_time, origin, show_as, is_private) "
                       "VALUES (990, 1, 'Lost reply', '', ?, ?, 'psa', 'busy', 0)",
                       (ts(start), ts(start + timedelta(hours=1))))
        await trio.to_thread.run_sync(lambda: outlook_edits(
            stack.server, create=[("Dentist", start + timedelta(hours=2), start + timedelta(hours=3))]))
        stack.server.set_faults(drop_next=1, only_ops="CreateItem")
        await stack.cycle()
        stack.server.set_faults(drop_next=0, only_ops="")
        await _converges(stack)
        assert "appointment:990" in await _keys(stack)
        assert stack.psa_rows("SELECT COUNT(*) FROM appointments WHERE title = 'Dentist'") == [(1,)]
