"""Each rule of SPEC section 4, through the runner over the memory fakes."""

from __future__ import annotations

from datetime import timedelta

from exchanged.model import (
    Contact,
    FolderKind,
    ImportMode,
    Kind,
    ShowAs,
    Task,
)

from .world import MAILBOX, NOW, RESOURCE, World, appt


async def test_psa_appointment_is_exported_once_with_key_and_category() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("Kick-off", location="Room 1"), [RESOURCE])
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 1
    item = w.item_of(key)
    assert item.payload.subject == "Kick-off" and item.categories == ("PSA",)
    await w.assert_converged()


async def test_noop_cycle_costs_one_sync_call_per_folder_and_writes_nothing() -> None:
    w = World()
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle()
    await w.cycle()  # sees the echo of its own writes
    w.exchange.requests.clear()
    commits = w.state.commits
    out = await w.cycle()
    assert out.result == "ok"
    assert dict(w.exchange.requests) == {"SyncFolderItems": 3}  # calendar, tasks, contacts
    assert w.state.commits == commits


async def test_psa_edit_updates_only_changed_fields_in_place() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle()
    first = w.item_of(key)
    w.psa.edit(key, subject="renamed")
    await w.cycle()
    item = w.item_of(key)
    assert item.item_id == first.item_id and item.payload.subject == "renamed"
    [entry] = [e for e in w.state.journal if e.action == "update"]
    assert entry.fields == ("subject",) and entry.reason == "changed in the PSA"
    await w.assert_converged()


async def test_exchange_edit_start_end_flows_back_other_fields_overwritten() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    new_start = NOW + timedelta(days=1)
    w.mb.user_edit(FolderKind.CALENDAR, item.item_id, start=new_start, end=new_start + timedelta(hours=2),
                   subject="my own title")
    await w.cycle()
    rec = w.psa.rows[key].record
    assert rec.payload.start == new_start and rec.payload.subject == "a"
    item = w.item_of(key)
    assert item.payload.subject == "a" and item.payload.start == new_start
    await w.assert_converged()


async def test_both_sides_changed_psa_wins() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    w.mb.user_edit(FolderKind.CALENDAR, item.item_id, start=NOW + timedelta(days=2),
                   end=NOW + timedelta(days=2, hours=1))
    w.psa.edit(key, subject="psa title")
    await w.cycle()
    assert w.psa.rows[key].record.payload.start == appt("a").start
    assert w.item_of(key).payload == w.psa.rows[key].record.payload
    await w.assert_converged()


async def test_todo_start_due_completion_flow_back() -> None:
    w = World()
    key = w.psa.add(Kind.TODO, Task("call back", due=NOW + timedelta(days=1)), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    done = NOW + timedelta(hours=3)
    w.mb.user_edit(FolderKind.TASKS, item.item_id, completed=done, due=NOW + timedelta(days=3), body="x")
    await w.cycle()
    p = w.psa.rows[key].record.payload
    assert p.completed == done and p.due == NOW + timedelta(days=3) and p.body == ""
    await w.assert_converged()


async def test_service_call_edit_overwritten_delete_recreated() -> None:
    w = World()
    key = w.psa.add(Kind.SERVICE_CALL, appt("fix printer"), [RESOURCE, "other"])
    await w.cycle()
    item = w.item_of(key)
    w.mb.user_edit(FolderKind.CALENDAR, item.item_id, start=NOW + timedelta(days=1),
                   end=NOW + timedelta(days=1, hours=1))
    await w.cycle()
    assert w.item_of(key).payload == w.psa.rows[key].record.payload  # no flow-back for service calls
    w.mb.user_delete(FolderKind.CALENDAR, w.item_of(key).item_id)
    out = await w.cycle()
    assert out.counts.exported == 1
    assert w.item_of(key).payload.subject == "fix printer"
    await w.assert_converged()


async def test_service_call_goes_to_every_assigned_resource() -> None:
    w = World()
    w.psa.add_resource("2", "bob@example.test", "Bob")
    key = w.psa.add(Kind.SERVICE_CALL, appt("call"), [RESOURCE, "2"])
    await w.cycle()
    from exchanged.engine import UserSpec
    await w.runner.run_cycle(UserSpec("bob@example.test", "2", w.settings))
    bob = w.exchange.mailbox("bob@example.test")
    assert len(bob.by_psa_key(FolderKind.CALENDAR, key)) == 1
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1


async def test_owned_contact_exported_and_edit_overwritten() -> None:
    w = World()
    key = w.psa.add(Kind.CONTACT, Contact("Ada", "Lovelace", company="Contoso"), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    w.mb.user_edit(FolderKind.CONTACTS, item.item_id, company="Other")
    await w.cycle()
    assert w.item_of(key).payload.company == "Contoso"
    await w.assert_converged()


async def test_psa_row_deleted_deletes_exchange_item() -> None:
    w = World()
    keep = w.psa.add(Kind.APPOINTMENT, appt("keep"), [RESOURCE])
    gone = w.psa.add(Kind.APPOINTMENT, appt("gone"), [RESOURCE])
    await w.cycle()
    w.psa.remove(gone)
    out = await w.cycle()
    assert out.counts.deleted == 1
    assert w.mb.by_psa_key(FolderKind.CALENDAR, gone) == []
    assert w.item_of(keep)
    assert gone not in w.state.mappings(MAILBOX)
    await w.assert_converged()


async def test_leaving_the_window_is_not_a_deletion() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("soon", hours=1), [RESOURCE])
    await w.cycle()
    w.now = NOW + timedelta(days=9)  # the appointment ended more than past_days ago
    out = await w.cycle()
    assert out.counts.deleted == 0
    assert len(w.mb.by_psa_key(FolderKind.CALENDAR, key)) == 1
    assert key not in w.state.mappings(MAILBOX)
    await w.assert_converged()


async def test_far_future_single_items_are_in_scope() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("next year", hours=24 * 300), [RESOURCE])
    await w.cycle()
    assert w.item_of(key)


async def test_import_all_details_private_and_free_filter() -> None:
    w = World()
    w.mb.user_add(FolderKind.CALENDAR, appt("Dentist", location="Town"))
    w.mb.user_add(FolderKind.CALENDAR, appt("Secret", hours=3, is_private=True, body="b"))
    w.mb.user_add(FolderKind.CALENDAR, appt("Lunch", hours=5, show_as=ShowAs.FREE))
    w.configure(import_free_time=False)
    out = await w.cycle()
    assert out.counts.imported == 2
    subjects = sorted(r.payload.subject for r in w.imported_rows())
    assert subjects == ["Dentist", "Private appointment"]
    private = next(r for r in w.imported_rows() if r.payload.is_private)
    assert private.payload.body == "" and private.payload.location == ""
    await w.assert_converged()


async def test_import_no_details_and_none() -> None:
    w = World()
    w.configure(import_appointments=ImportMode.NO_DETAILS)
    w.mb.user_add(FolderKind.CALENDAR, appt("Board meeting", body="agenda", location="HQ"))
    await w.cycle()
    [row] = w.imported_rows()
    assert row.payload.subject == "Busy" and row.payload.body == "" and row.payload.location == ""
    assert row.payload.start == appt("x").start
    w2 = World()
    w2.configure(import_appointments=ImportMode.NONE)
    w2.mb.user_add(FolderKind.CALENDAR, appt("Board meeting"))
    await w2.cycle()
    assert w2.imported_rows() == []


async def test_skip_filters() -> None:
    w = World()
    w.configure(skip_show_as=frozenset({ShowAs.TENTATIVE}), skip_all_day=True,
                skip_categories=frozenset({"Personal"}), skip_private=True)
    w.mb.user_add(FolderKind.CALENDAR, appt("tentative", show_as=ShowAs.TENTATIVE))
    w.mb.user_add(FolderKind.CALENDAR, appt("holiday", is_all_day=True))
    w.mb.user_add(FolderKind.CALENDAR, appt("gym"), categories=("Personal",))
    w.mb.user_add(FolderKind.CALENDAR, appt("private", is_private=True))
    w.mb.user_add(FolderKind.CALENDAR, appt("kept"))
    await w.cycle()
    assert [r.payload.subject for r in w.imported_rows()] == ["kept"]
    await w.assert_converged()


async def test_imported_psa_edit_overwritten_exchange_delete_deletes_row() -> None:
    w = World()
    item = w.mb.user_add(FolderKind.CALENDAR, appt("Dentist"))
    await w.cycle()
    [row] = w.imported_rows()
    w.psa.edit(row.psa_key, subject="changed in PSA")
    await w.cycle()
    assert w.psa.rows[row.psa_key].record.payload.subject == "Dentist"
    w.mb.user_edit(FolderKind.CALENDAR, item.item_id, subject="Dentist (moved)")
    await w.cycle()
    assert w.psa.rows[row.psa_key].record.payload.subject == "Dentist (moved)"
    w.mb.user_add(FolderKind.CALENDAR, appt("other"))  # keeps the calendar from looking empty
    w.mb.user_delete(FolderKind.CALENDAR, item.item_id)
    out = await w.cycle()
    assert out.counts.deleted == 1 and row.psa_key not in w.psa.rows
    await w.assert_converged()


async def test_imported_row_deleted_in_psa_is_recreated() -> None:
    w = World()
    w.mb.user_add(FolderKind.CALENDAR, appt("Dentist"))
    await w.cycle()
    [row] = w.imported_rows()
    w.psa.remove(row.psa_key)
    out = await w.cycle()
    assert out.counts.imported == 1
    await w.assert_converged()
    assert row.psa_key not in w.state.mappings(MAILBOX)


async def test_recurring_series_expanded_up_to_recurring_future_days_with_exceptions() -> None:
    w = World()
    w.configure(recurring_future_days=10)
    starts = [NOW + timedelta(days=d, hours=2) for d in range(-3, 20)]
    master = w.mb.user_add_series(appt("standup", length=0.25), starts, uid="SERIES1")
    w.mb.user_edit_occurrence(master.item_id, starts[5], subject="standup (moved)",
                              start=starts[5] + timedelta(hours=1), end=starts[5] + timedelta(hours=1.25))
    w.mb.user_delete_occurrence(master.item_id, starts[6])
    await w.cycle()
    rows = w.imported_rows()
    keys = sorted(r.exchange_key for r in rows)
    # 3 past (within 7 days) + today .. day 9 (10 days), minus the deleted one
    assert len(keys) == 3 + 10 - 1
    assert all(k.startswith("SERIES1@") for k in keys)
    moved = next(r for r in rows if r.payload.subject == "standup (moved)")
    assert moved.exchange_key == f"SERIES1@{starts[5].strftime('%Y-%m-%dT%H:%M:%SZ')}"
    await w.assert_converged()
    # the window moves on: tomorrow one more occurrence enters, nothing is deleted for leaving
    w.now = NOW + timedelta(days=1)
    out = await w.cycle()
    assert out.counts.imported == 1 and out.counts.deleted == 0
    await w.assert_converged()


async def test_per_user_narrowing_disables_kinds() -> None:
    w = World()
    w.configure(appointments_export=False, todos=False)
    w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    w.psa.add(Kind.TODO, Task("t"), [RESOURCE])
    out = await w.cycle()
    assert out.counts.exported == 0
    assert w.mb.items(FolderKind.TASKS) == []


async def test_public_contacts_cycle() -> None:
    w = World()
    w.psa.add(Kind.CONTACT, Contact("Ada", "Lovelace"), [RESOURCE])
    w.psa.add(Kind.CONTACT, Contact("Alan", "Turing"), ["someone-else"])
    out = await w.runner.run_public_contacts(w.settings)
    assert out.result == "ok" and out.counts.exported == 2
    pub = w.exchange.public_contacts()
    assert sorted(i.payload.surname for i in pub.items(FolderKind.PUBLIC_CONTACTS)) == ["Lovelace", "Turing"]
    before = w.writes()
    out = await w.runner.run_public_contacts(w.settings)
    assert out.result == "ok" and w.writes() == before
    plan = await w.runner.plan_public_contacts(w.settings)
    assert plan["actions"] == []


async def test_series_expansion_is_reused_by_noop_cycles_and_renewed_when_old() -> None:
    w = World()
    starts = [NOW + timedelta(days=d) for d in range(5)]
    w.mb.user_add_series(appt("standup"), starts, uid="S")
    await w.cycle()
    await w.cycle()
    w.exchange.requests.clear()
    w.now = NOW + timedelta(hours=2)
    await w.cycle()
    assert dict(w.exchange.requests) == {"SyncFolderItems": 3}
    w.now = NOW + timedelta(hours=7)
    await w.cycle()
    assert w.exchange.requests["FindItem"] == 1
    await w.assert_converged()


async def test_exchange_move_into_the_past_flows_back_then_leaves_the_window() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    foreign = w.mb.user_add(FolderKind.CALENDAR, appt("x", hours=2))
    await w.cycle()
    past = NOW - timedelta(days=20)
    w.mb.user_edit(FolderKind.CALENDAR, w.item_of(key).item_id, start=past, end=past + timedelta(hours=1))
    w.mb.user_edit(FolderKind.CALENDAR, foreign.item_id, start=past, end=past + timedelta(hours=1))
    out = await w.cycle()
    assert out.counts.deleted == 0 and out.counts.updated == 2
    assert w.psa.rows[key].record.payload.start == past
    [row] = w.psa.records(Kind.IMPORTED)
    assert row.payload.start == past  # followed, not deleted
    assert w.state.mappings(MAILBOX) == {}
    await w.assert_converged()


async def test_unknown_psa_resource_is_a_clear_error() -> None:
    w = World()
    w.psa.resources.clear()
    out = await w.cycle()
    assert out.result == "error" and "PSA resource '29682885' does not exist" in (out.error or "")
    assert "users[].psa_resource" in (out.error or "")


async def test_a_renamed_category_is_added_to_every_owned_item_once() -> None:
    w = World()
    keys = [w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE]),
            w.psa.add(Kind.TODO, Task("t", due=NOW + timedelta(days=1)), [RESOURCE])]
    await w.cycle()
    await w.cycle()
    item = w.item_of(keys[0])
    w.mb.user_set_categories(FolderKind.CALENDAR, item.item_id, ("PSA", "Red"))  # a user's own category
    await w.cycle()
    w.configure(category="PSA-2")  # a reload that renames the category
    out = await w.cycle()
    assert out.result == "ok" and out.counts.updated == 2 and out.counts.exported == 0, out
    assert w.item_of(keys[0]).categories == ("PSA", "Red", "PSA-2")  # the old one is not removed
    assert w.item_of(keys[1]).categories == ("PSA", "PSA-2")
    assert {e.fields for e in w.state.journal if e.action == "update"} == {("categories",)}
    await w.assert_converged()  # and no write on the cycles after


async def test_a_category_removed_in_outlook_is_put_back() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("a"), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    w.mb.user_set_categories(FolderKind.CALENDAR, item.item_id, ("Blue",))
    out = await w.cycle()
    assert out.counts.updated == 1, out
    assert w.item_of(key).categories == ("Blue", "PSA") and w.item_of(key).item_id == item.item_id
    await w.assert_converged()


async def test_an_unreadable_item_of_ours_is_repaired_not_exported_again() -> None:
    w = World()
    key = w.psa.add(Kind.APPOINTMENT, appt("visit", location="Room 1"), [RESOURCE])
    await w.cycle()
    item = w.item_of(key)
    w.mb.user_break(FolderKind.CALENDAR, item.item_id)  # Exchange returns it without Start/End
    out = await w.cycle()
    assert out.result == "ok" and out.counts.exported == 0 and out.counts.updated == 1, out
    repaired = w.item_of(key)  # exactly one item with the key, the same one, readable again
    assert repaired.item_id == item.item_id and not repaired.unreadable
    [entry] = [e for e in w.state.journal if e.action == "update"]
    assert set(entry.fields) == {"subject", "start", "end", "body", "location", "is_all_day", "show_as",
                                 "is_private"}
    await w.assert_converged()
    # a row deleted in the PSA while its item is unreadable: the item is left alone, never deleted
    w.mb.user_break(FolderKind.CALENDAR, item.item_id)
    w.psa.remove(key)
    out = await w.cycle(allow_deletes=True)
    assert out.result == "ok" and out.counts.deleted == 0, out
    assert w.mb.by_psa_key(FolderKind.CALENDAR, key)[0].unreadable
