"""The pure engine: rules, guards and the window, without any port."""

from __future__ import annotations

import ast
import pathlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

import exchanged.engine as engine_pkg
from exchanged.engine import (
    Adopt,
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    UserSettings,
    describe,
    enabled_kinds,
    plan,
    stable_until,
    window,
)
from exchanged.model import (
    Appointment,
    Contact,
    ExchangeItem,
    FolderKind,
    ImportMode,
    Kind,
    Mapping,
    PsaRecord,
    ShowAs,
    Task,
    all_fields,
    occurrence_key,
    payload_hash,
    unconfirmed_hash,
    unreadable_payload,
)

NOW = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)
S = UserSettings()
W = window(NOW, S)


def appt(subject: str = "a", hours: float = 1, **kw: object) -> Appointment:
    start = NOW + timedelta(hours=hours)
    return Appointment(subject, start, start + timedelta(hours=1), **kw)  # type: ignore[arg-type]


def synced(kind: Kind, n: int, payload: object, folder: FolderKind = FolderKind.CALENDAR
           ) -> tuple[PsaRecord, ExchangeItem, Mapping]:
    key = f"{kind.value}:{n}"
    rec = PsaRecord(kind, key, payload)  # type: ignore[arg-type]
    item = ExchangeItem(folder, f"id{n}", f"ck{n}", payload, psa_key=key,  # type: ignore[arg-type]
                        categories=(S.category,))
    m = Mapping(kind, key, folder, item.item_id, item.change_key, payload_hash(payload),  # type: ignore[arg-type]
                payload_hash(payload))  # type: ignore[arg-type]
    return rec, item, m


def test_engine_imports_only_stdlib_and_model() -> None:
    allowed_ours = {"exchanged.model"}
    for path in pathlib.Path(engine_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                name = node.module or ""
            elif isinstance(node, ast.Import):
                name = node.names[0].name
            else:
                continue
            root = name.split(".")[0]
            assert root in {"__future__", "re", "collections", "dataclasses", "datetime", "typing"} \
                or name in allowed_ours, f"{path.name} imports {name}"


def test_window_and_kinds() -> None:
    w = window(NOW, replace(S, past_days=3, recurring_future_days=5))
    assert w.past_start == NOW - timedelta(days=3) and w.recurring_end == NOW + timedelta(days=5)
    assert enabled_kinds(S) == {Kind.APPOINTMENT, Kind.SERVICE_CALL, Kind.TODO, Kind.CONTACT, Kind.IMPORTED}
    narrowed = replace(S, todos=False, import_appointments=ImportMode.NONE)
    assert enabled_kinds(narrowed) == {Kind.APPOINTMENT, Kind.SERVICE_CALL, Kind.CONTACT}


def test_settings_from_config_object() -> None:
    from exchanged.config import SyncConfig

    s = UserSettings.from_config(SyncConfig())
    assert s == UserSettings()
    s = UserSettings.from_config(SyncConfig(skip_show_as=("free",), import_appointments="no_details"))
    assert s.skip_show_as == {ShowAs.FREE} and s.import_appointments is ImportMode.NO_DETAILS


payloads = st.one_of(
    st.builds(appt, st.sampled_from("abc"), st.integers(-100, 2000)),
    st.builds(Task, st.sampled_from("abc"), due=st.just(NOW)),
    st.builds(Contact, st.sampled_from("abc"), st.sampled_from("xyz")),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(payloads, max_size=12))
def test_a_synced_world_plans_nothing(items: list[object]) -> None:
    recs, xs, maps = [], [], {}
    for n, p in enumerate(items):
        kind, folder = ((Kind.APPOINTMENT, FolderKind.CALENDAR) if isinstance(p, Appointment)
                        else (Kind.TODO, FolderKind.TASKS) if isinstance(p, Task)
                        else (Kind.CONTACT, FolderKind.CONTACTS))
        r, x, m = synced(kind, n, p, folder)
        if not isinstance(p, Appointment) or W.in_scope(p.start, p.end):
            recs.append(r)
        xs.append(x)
        maps[m.psa_key] = m
    out = plan(S, W, recs, xs, maps)
    # only pairs that left the window are forgotten (the PSA no longer returns them)
    assert all(a.verb == "forget" for a in out.actions), out.actions
    assert out.held_back == [] and out.findings == []


def test_exchange_edit_of_start_flows_back_both_changed_psa_wins() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    later = NOW + timedelta(hours=5)
    theirs = replace(x.payload, start=later, end=later + timedelta(hours=1), subject="theirs")
    moved = replace(x, payload=theirs)
    out = plan(S, W, [r], [moved], {m.psa_key: m})
    [back, over] = out.actions
    assert isinstance(back, PsaUpdate) and back.fields == ("start", "end")
    assert isinstance(over, ExchangeUpdate) and over.fields == ("subject",)
    psa_edit = replace(r, payload=replace(r.payload, body="new"))
    out = plan(S, W, [psa_edit], [moved], {m.psa_key: m})
    [only] = out.actions
    assert isinstance(only, ExchangeUpdate) and set(only.fields) == {"start", "end", "subject", "body"}
    assert only.reason == "changed on both sides: the PSA wins"


def test_an_unconfirmed_create_is_confirmed_or_compared_with_what_was_sent() -> None:
    """A create is not re-read: its mapping holds the hash of what was sent. Seen again unchanged
    with the create's change key, the mapping is confirmed, state only. A start that differs under
    the create's change key is the server's doing, not a user's: the PSA's value is written again,
    nothing flows back. Under a new change key it is a user's edit of what was sent: it flows back."""
    r, x, m = synced(Kind.APPOINTMENT, 1, appt(body="text"))
    sent = replace(m, exchange_hash=unconfirmed_hash(r.payload))
    [confirm] = plan(S, W, [r], [x], {sent.psa_key: sent}).actions
    assert isinstance(confirm, Adopt) and confirm.refresh and confirm.mapping == m
    assert plan(S, W, [r], [x], {m.psa_key: confirm.mapping}).actions == []
    later = NOW + timedelta(hours=5)
    moved = replace(x.payload, start=later, end=later + timedelta(hours=1))
    [rewrite] = plan(S, W, [r], [replace(x, payload=moved)], {sent.psa_key: sent}).actions
    assert isinstance(rewrite, ExchangeUpdate) and rewrite.fields == ("start", "end")
    edited = replace(x, change_key="ck-edited", payload=moved)
    [back] = plan(S, W, [r], [edited], {sent.psa_key: sent}).actions
    assert isinstance(back, PsaUpdate) and back.fields == ("start", "end")
    assert back.mapping.exchange_hash == payload_hash(moved)


def test_impossible_flow_back_is_not_written() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    bad = replace(x, payload=replace(x.payload, start=NOW + timedelta(hours=9)))  # end before start
    [a] = plan(S, W, [r], [bad], {m.psa_key: m}).actions
    assert isinstance(a, ExchangeUpdate) and a.fields == ("start",)


def test_new_and_missing_and_adopted() -> None:
    r1, x1, m1 = synced(Kind.APPOINTMENT, 1, appt("one"))
    r2, x2, _ = synced(Kind.APPOINTMENT, 2, appt("two"))
    r3, _, _ = synced(Kind.APPOINTMENT, 3, appt("three"))
    out = plan(S, W, [r1, r2, r3], [x1, x2], {m1.psa_key: m1})
    kinds = sorted(type(a).__name__ for a in out.actions)
    assert kinds == ["Adopt", "ExchangeCreate"]
    adopt = next(a for a in out.actions if isinstance(a, Adopt))
    assert adopt.mapping.item_id == x2.item_id
    out = plan(S, W, [r1], [x1, x2], {m1.psa_key: m1})  # row two gone from the PSA
    [d] = out.actions
    assert isinstance(d, ExchangeDelete) and d.item_id == x2.item_id and d.forget is None


def test_duplicate_exchange_items_are_removed_even_when_the_psa_looks_empty() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    dup = replace(x, item_id="other")
    out = plan(S, W, [r], [x, dup], {m.psa_key: m})
    [d] = out.actions
    assert isinstance(d, ExchangeDelete) and d.item_id == "other"


def test_empty_psa_guard_and_max_deletes() -> None:
    pairs = [synced(Kind.APPOINTMENT, n, appt(hours=n)) for n in range(4)]
    maps = {m.psa_key: m for _, _, m in pairs}
    xs = [x for _, x, _ in pairs]
    out = plan(S, W, [], xs, maps)
    assert out.actions == [] and len(out.held_back) == 4
    assert [f.code for f in out.findings] == ["side_looks_empty"]
    assert len(plan(S, W, [], xs, maps, allow_deletes=True).actions) == 4
    few = replace(S, max_deletes_per_cycle=1)
    out = plan(few, W, [pairs[0][0], pairs[1][0]], xs, maps)
    assert out.actions == [] and len(out.held_back) == 2
    assert [f.code for f in out.findings] == ["deletes_held_back"]
    assert len(plan(few, W, [pairs[0][0], pairs[1][0]], xs, maps, allow_deletes=True).actions) == 2


def test_import_rules() -> None:
    foreign = ExchangeItem(FolderKind.CALENDAR, "f1", "c", appt("Dentist", body="x", is_private=True),
                           uid="U1", exchange_key="U1")
    [create] = plan(S, W, [], [foreign], {}).actions
    assert isinstance(create, PsaCreate) and create.payload.subject == "Private appointment"
    assert create.payload.body == ""
    nod = replace(S, import_appointments=ImportMode.NO_DETAILS)
    public = replace(foreign, payload=appt("Board", body="agenda"))
    [create] = plan(nod, W, [], [public], {}).actions
    assert isinstance(create, PsaCreate) and create.payload == replace(appt("Busy"))
    free = replace(public, payload=appt("Lunch", show_as=ShowAs.FREE))
    assert plan(replace(S, import_free_time=False), W, [], [free], {}).actions == []
    assert plan(replace(S, import_appointments=ImportMode.NONE), W, [], [public], {}).actions == []


def test_imported_row_follows_exchange_and_is_deleted_with_it() -> None:
    item = ExchangeItem(FolderKind.CALENDAR, "f1", "c", appt("Dentist"), uid="U1", exchange_key="U1")
    row = PsaRecord(Kind.IMPORTED, "imported:1", appt("edited in PSA"), exchange_key="U1")
    m = Mapping(Kind.IMPORTED, "imported:1", FolderKind.CALENDAR, "f1", "c", payload_hash(appt("Dentist")),
                payload_hash(appt("Dentist")), "U1")
    [upd] = plan(S, W, [row], [item], {m.psa_key: m}).actions
    assert isinstance(upd, PsaUpdate) and upd.fields == ("subject",)
    assert upd.reason == "edited in the PSA; Exchange owns it: overwritten"
    other = ExchangeItem(FolderKind.CALENDAR, "f2", "c", appt("other"), uid="U2", exchange_key="U2")
    row2 = PsaRecord(Kind.IMPORTED, "imported:2", appt("other"), exchange_key="U2")
    m2 = replace(m, psa_key="imported:2", item_id="f2", exchange_key="U2",
                 psa_hash=payload_hash(appt("other")), exchange_hash=payload_hash(appt("other")))
    out = plan(S, W, [row, row2], [other], {m.psa_key: m, m2.psa_key: m2})
    [d] = out.actions
    assert isinstance(d, PsaDelete) and d.psa_key == "imported:1" and d.reason == "deleted in Exchange"


def test_fields_the_psa_cannot_store_never_look_changed() -> None:
    """The sql schema has no location column: an import with a location must settle, not loop."""
    in_exchange = appt("Review", location="Room 2")
    item = ExchangeItem(FolderKind.CALENDAR, "f1", "c", in_exchange, uid="U1", exchange_key="U1")
    stored = appt("Review")  # what the PSA reads back: no location
    row = PsaRecord(Kind.IMPORTED, "imported:1", stored, exchange_key="U1")
    m = Mapping(Kind.IMPORTED, "imported:1", FolderKind.CALENDAR, "f1", "c", payload_hash(stored),
                payload_hash(in_exchange), "U1")
    mappings = {m.psa_key: m}
    assert plan(S, W, [row], [item], mappings, unstored_import_fields=frozenset({"location"})).actions == []
    # a connector that can keep the location is asked to
    [upd] = plan(S, W, [row], [item], mappings).actions
    assert isinstance(upd, PsaUpdate) and upd.fields == ("location",)
    # and a first import asks the PSA only for what it can keep
    [create] = plan(S, W, [], [item], {}, unstored_import_fields=frozenset({"location"})).actions
    assert isinstance(create, PsaCreate) and create.payload.location == ""


def test_duplicate_imported_rows_keep_the_mapped_one() -> None:
    item = ExchangeItem(FolderKind.CALENDAR, "f1", "c", appt("Dentist"), uid="U1", exchange_key="U1")
    rows = [PsaRecord(Kind.IMPORTED, f"imported:{n}", appt("Dentist"), exchange_key="U1") for n in (1, 2)]
    m = Mapping(Kind.IMPORTED, "imported:2", FolderKind.CALENDAR, "f1", "c", payload_hash(appt("Dentist")),
                payload_hash(appt("Dentist")), "U1")
    [d] = plan(S, W, rows, [item], {m.psa_key: m}).actions
    assert isinstance(d, PsaDelete) and d.psa_key == "imported:1"


def test_occurrences_only_up_to_recurring_end_singles_always() -> None:
    far = NOW + timedelta(days=S.recurring_future_days + 2)
    occ = ExchangeItem(FolderKind.CALENDAR, "o1", "c", Appointment("s", far, far + timedelta(hours=1)),
                       uid="U", exchange_key=occurrence_key("U", far))
    single = ExchangeItem(FolderKind.CALENDAR, "s1", "c", Appointment("s", far, far + timedelta(hours=1)),
                          uid="V", exchange_key="V")
    out = plan(S, W, [], [occ, single], {})
    assert [a.exchange_key for a in out.actions if isinstance(a, PsaCreate)] == ["V"]


def test_out_of_window_is_forgotten_not_deleted() -> None:
    _, x, m = synced(Kind.APPOINTMENT, 1, appt(hours=-24 * 10))
    [a] = plan(S, W, [], [x], {m.psa_key: m}).actions
    assert a.verb == "forget"


def test_create_carries_reason_and_kind() -> None:
    r, _, _ = synced(Kind.SERVICE_CALL, 7, appt())
    [c] = plan(S, W, [r], [], {}).actions
    assert isinstance(c, ExchangeCreate) and c.reason == "new in the PSA" and c.folder is FolderKind.CALENDAR


# -- an item of ours that Exchange returns unreadable (docs/SYNC_RULES.md "Unreadable items") -------

def broken(item: ExchangeItem) -> ExchangeItem:
    """``item`` as the adapter reads it when it lacks a Start: flagged, with a placeholder payload."""
    return replace(item, payload=unreadable_payload(item.folder, "a"), unreadable=True)


def test_an_unreadable_item_of_ours_is_repaired_in_place_never_created_again() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt("visit", location="Room 1"))
    for mappings in ({m.psa_key: m}, {}):  # mapped, or found by its key only (a lost state)
        [upd] = plan(S, W, [r], [broken(x)], mappings).actions
        assert isinstance(upd, ExchangeUpdate) and upd.item_id == x.item_id
        assert upd.fields == all_fields(r.payload) and upd.payload == r.payload  # every field
        assert upd.reason.startswith("unreadable in Exchange")
        assert upd.mapping.item_id == x.item_id
        assert upd.mapping.psa_hash == upd.mapping.exchange_hash == payload_hash(r.payload)
        assert upd.categories is None  # the item kept its category
    # once repaired, the pair is in sync
    assert plan(S, W, [r], [x], {m.psa_key: upd.mapping}).actions == []
    # a to-do and a contact the same way
    for kind, payload, folder in ((Kind.TODO, Task("call", due=NOW), FolderKind.TASKS),
                                  (Kind.CONTACT, Contact("Ann", "Smith"), FolderKind.CONTACTS)):
        r, x, m = synced(kind, 2, payload, folder)
        [upd] = plan(S, W, [r], [broken(x)], {m.psa_key: m}).actions
        assert isinstance(upd, ExchangeUpdate) and upd.fields == all_fields(payload)


def test_an_unreadable_item_without_its_psa_row_is_left_alone() -> None:
    """Deleted in the PSA, or moved out of the window? An unreadable item cannot tell: no delete."""
    _, x, m = synced(Kind.APPOINTMENT, 1, appt())
    keep = synced(Kind.APPOINTMENT, 2, appt("other"))  # so the PSA does not look empty
    [forget] = plan(S, W, [keep[0]], [broken(x), keep[1]], {m.psa_key: m, keep[2].psa_key: keep[2]}).actions
    assert forget.verb == "forget" and "left alone" in forget.reason
    assert plan(S, W, [keep[0]], [broken(x), keep[1]], {keep[2].psa_key: keep[2]}).actions == []
    assert plan(S, W, [], [broken(x)], {m.psa_key: m}, allow_deletes=True).actions[0].verb == "forget"


def test_an_unreadable_twin_of_a_readable_item_is_the_duplicate_removed() -> None:
    """What an earlier version left behind: the unreadable item and the one it exported again."""
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    old = broken(replace(x, item_id="old"))
    for mappings in ({m.psa_key: m}, {}):
        out = plan(S, W, [r], [old, x], mappings)
        deletes = [a for a in out.actions if isinstance(a, ExchangeDelete)]
        assert [d.item_id for d in deletes] == ["old"]
        assert not any(isinstance(a, ExchangeCreate | ExchangeUpdate) for a in out.actions)


def test_unreadable_items_do_not_move_the_stable_horizon_nor_touch_imports() -> None:
    _, x, _ = synced(Kind.APPOINTMENT, 1, appt(hours=5))
    assert stable_until(W, [], [broken(x)]) is None
    foreign = ExchangeItem(FolderKind.CALENDAR, "f1", "c", appt("Dentist"), uid="U1", exchange_key="U1")
    row = PsaRecord(Kind.IMPORTED, "imported:1", appt("Dentist"), exchange_key="U1")
    m = Mapping(Kind.IMPORTED, "imported:1", FolderKind.CALENDAR, "f1", "c", payload_hash(appt("Dentist")),
                payload_hash(appt("Dentist")), "U1")
    # adapters skip foreign items they cannot read; should one come, its PSA row stays as it is
    assert plan(S, W, [row], [broken(foreign)], {m.psa_key: m}, allow_deletes=True).actions == []


# -- sync.category on every item the daemon owns ------------------------------------------------------

def test_a_missing_category_is_added_keeping_the_others_once() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    mine = replace(x, categories=("Red", "Customer"))
    [upd] = plan(S, W, [r], [mine], {m.psa_key: m}).actions
    assert isinstance(upd, ExchangeUpdate) and upd.fields == ()
    assert upd.categories == ("Red", "Customer", "PSA")
    assert upd.reason == "category 'PSA' missing: added"
    assert describe(upd)["fields"] == ["categories"]
    # once there: nothing
    assert plan(S, W, [r], [replace(mine, categories=upd.categories)], {m.psa_key: upd.mapping}).actions == []
    # no category configured: none is added
    assert plan(replace(S, category=""), W, [r], [mine], {m.psa_key: m}).actions == []


def test_a_renamed_category_is_added_to_every_owned_item_old_one_kept() -> None:
    renamed = replace(S, category="PSA-2")
    pairs = [synced(kind, n, payload, folder) for n, (kind, payload, folder) in enumerate((
        (Kind.APPOINTMENT, appt(), FolderKind.CALENDAR),
        (Kind.SERVICE_CALL, appt("call"), FolderKind.CALENDAR),
        (Kind.TODO, Task("t"), FolderKind.TASKS),
        (Kind.CONTACT, Contact("A", "B"), FolderKind.CONTACTS)))]
    out = plan(renamed, W, [r for r, _, _ in pairs], [x for _, x, _ in pairs],
               {m.psa_key: m for *_, m in pairs})
    assert len(out.actions) == 4
    assert all(isinstance(a, ExchangeUpdate) and a.categories == ("PSA", "PSA-2") and a.fields == ()
               for a in out.actions)
    # imported (Exchange-owned) items are not tagged
    foreign = ExchangeItem(FolderKind.CALENDAR, "f1", "c", appt("Dentist"), uid="U1", exchange_key="U1")
    assert not any(isinstance(a, ExchangeUpdate) for a in plan(renamed, W, [], [foreign], {}).actions)


def test_the_category_rides_along_with_a_content_update_and_an_adoption() -> None:
    r, x, m = synced(Kind.APPOINTMENT, 1, appt())
    bare = replace(x, categories=())
    edited = replace(r, payload=replace(r.payload, subject="renamed"))
    [upd] = plan(S, W, [edited], [bare], {m.psa_key: m}).actions
    assert isinstance(upd, ExchangeUpdate) and upd.fields == ("subject",) and upd.categories == ("PSA",)
    assert upd.reason == "changed in the PSA; category 'PSA' missing: added"
    [upd] = plan(S, W, [r], [bare], {}).actions  # found by its key, same values: adopted, and tagged
    assert isinstance(upd, ExchangeUpdate) and upd.fields == () and upd.categories == ("PSA",)
    assert upd.reason == "found in Exchange by its PSA key: adopted; category 'PSA' missing: added"
    [upd] = plan(S, W, [r], [broken(bare)], {m.psa_key: m}).actions  # and with a repair
    assert isinstance(upd, ExchangeUpdate) and upd.categories == ("PSA",)
