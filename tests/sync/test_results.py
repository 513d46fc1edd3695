"""What a write's result means (exchanged/sync/results.py): tables of (action, result) -> effect.

Each row names the case; the runner only carries these effects out (tests/sync for the whole)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchanged.engine.actions import (
    ExchangeCreate,
    ExchangeDelete,
    ExchangeUpdate,
    PsaCreate,
    PsaDelete,
    PsaUpdate,
    action_fields,
)
from exchanged.model import (
    Appointment,
    ExchangeItem,
    FolderKind,
    ItemError,
    Kind,
    Mapping,
    PsaRecord,
    payload_hash,
    unconfirmed_hash,
)
from exchanged.sync import results
from exchanged.sync.results import Effect, Journal

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
CAL = FolderKind.CALENDAR
APPT = Appointment("Visit", T0, T0 + timedelta(hours=1))
MOVED = Appointment("Visit", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1))
PLANNED = Mapping(Kind.APPOINTMENT, "appointment:1", CAL, "", "", "psa-h", "")
IMPORTED = Mapping(Kind.IMPORTED, "", CAL, "item-9", "ck-9", "", "ex-h", exchange_key="uid-9")
ITEM = ExchangeItem(CAL, "item-1", "ck-1", APPT, psa_key="appointment:1")
NOT_FOUND = ItemError("appointment:1", "ErrorItemNotFound", "gone")
REFUSED = ItemError("appointment:1", "ErrorAccessDenied", "no")
ROW = PsaRecord(Kind.IMPORTED, "imported:5", MOVED)
ROW_UPDATED = PsaRecord(Kind.APPOINTMENT, "appointment:1", MOVED)

psa_create = PsaCreate("uid-9", MOVED, "new in Exchange", IMPORTED)
psa_create_replacing = PsaCreate("uid-9", MOVED, "deleted in the PSA, kept in Exchange", IMPORTED,
                                 replaces="imported:4")
psa_update = PsaUpdate(Kind.APPOINTMENT, "appointment:1", MOVED, ("start", "end"), "moved in Outlook",
                       PLANNED, exchange_key="uid-1")
psa_update_out = PsaUpdate(Kind.APPOINTMENT, "appointment:1", MOVED, ("start", "end"), "moved to the past",
                           PLANNED, leaves_window=True)
psa_delete = PsaDelete(Kind.IMPORTED, "imported:5", "deleted in Exchange", forget="imported:5",
                       subject="Dentist")

MAPPINGS = {"appointment:1": PLANNED, "imported:5": IMPORTED}
PSA_DELETED = Journal("psa", "delete", Kind.IMPORTED, "imported:5", "item-9", (), "deleted in Exchange",
                      "Dentist")


@pytest.mark.parametrize(("case", "action", "result", "mappings", "want"), [
    ("create: the row is kept with the PSA's key and hash", psa_create, ROW, MAPPINGS,
     Effect(keep=Mapping(Kind.IMPORTED, "imported:5", CAL, "item-9", "ck-9", payload_hash(MOVED), "ex-h",
                         exchange_key="uid-9"),
            psa_hash=("imported:5", payload_hash(MOVED)), count="imported",
            journal=Journal("psa", "create", Kind.IMPORTED, "imported:5", "item-9",
                            action_fields(psa_create), "new in Exchange", MOVED.subject))),
    ("create replacing a user-deleted row drops the old mapping", psa_create_replacing, ROW, MAPPINGS,
     None),
    ("update: kept with the new PSA hash", psa_update, ROW_UPDATED, MAPPINGS,
     Effect(keep=Mapping(Kind.APPOINTMENT, "appointment:1", CAL, "", "", payload_hash(MOVED), ""),
            psa_hash=("appointment:1", payload_hash(MOVED)), count="updated",
            journal=Journal("psa", "update", Kind.APPOINTMENT, "appointment:1", "", ("start", "end"),
                            "moved in Outlook", MOVED.subject))),
    ("update out of the window: the mapping is dropped", psa_update_out, ROW_UPDATED, MAPPINGS, None),
    ("update out of the window of a pair not mapped: nothing to drop", psa_update_out, ROW_UPDATED, {},
     None),
    ("update refused: an item error under its key", psa_update, REFUSED, MAPPINGS,
     Effect(error=REFUSED, error_key="appointment:1")),
    ("update answered without the row: no_result", psa_update, None, MAPPINGS, None),
    ("delete done: forget, journal with the item id", psa_delete, None, MAPPINGS,
     Effect(drop=("imported:5",), count="deleted",
            journal=PSA_DELETED)),
    ("delete of a row already gone is done", psa_delete, ItemError("imported:5", "not_found", "x"), MAPPINGS,
     Effect(drop=("imported:5",), count="deleted",
            journal=PSA_DELETED)),
    ("delete refused: an item error", psa_delete, ItemError("imported:5", "locked", "x"), MAPPINGS,
     Effect(error=ItemError("imported:5", "locked", "x"), error_key="imported:5")),
])
def test_psa_results(case: str, action: PsaCreate | PsaUpdate | PsaDelete, result: object,
                     mappings: dict[str, Mapping], want: Effect | None) -> None:
    got = results.psa_result(action, result, mappings)  # type: ignore[arg-type]
    if want is not None:
        assert got == want, case
    elif case.startswith("create replacing"):
        assert got.keep is not None and got.keep.psa_key == "imported:5" and got.drop == ("imported:4",)
    elif case.startswith("update out of the window of a pair not mapped"):
        assert got.keep is None and got.drop == () and got.count == "updated"
    elif case.startswith("update out of the window"):
        assert got.keep is None and got.drop == ("appointment:1",) and got.count == "updated"
    else:
        assert got.error is not None and got.error.code == "no_result" and got.error_key == "appointment:1"


ex_create = ExchangeCreate(Kind.APPOINTMENT, "appointment:1", CAL, APPT, "new in the PSA", PLANNED)
ex_update = ExchangeUpdate(Kind.APPOINTMENT, "appointment:1", CAL, "item-1", "ck-0", APPT, ("subject",),
                           "changed in the PSA", PLANNED)
ex_delete = ExchangeDelete(Kind.APPOINTMENT, "appointment:1", CAL, "item-1", "deleted in the PSA",
                           forget="appointment:1", subject="Visit")


@pytest.mark.parametrize(("case", "got", "want"), [
    ("create: kept with the hash of what was sent, the PSA hash the cycle wrote",
     results.created(ex_create, ITEM, {"appointment:1": "psa-new"}),
     Effect(keep=Mapping(Kind.APPOINTMENT, "appointment:1", CAL, "item-1", "ck-1", "psa-new",
                         unconfirmed_hash(APPT)),
            wrote=ITEM, count="exported",
            journal=Journal("exchange", "create", Kind.APPOINTMENT, "appointment:1", "item-1",
                            action_fields(ex_create), "new in the PSA", "Visit"))),
    ("create refused", results.created(ex_create, REFUSED, {}),
     Effect(error=REFUSED, error_key="appointment:1")),
    ("update: kept with the item's hash as returned",
     results.updated(ex_update, ITEM, {}),
     Effect(keep=Mapping(Kind.APPOINTMENT, "appointment:1", CAL, "item-1", "ck-1", "psa-h",
                         payload_hash(APPT)),
            wrote=ITEM, count="updated",
            journal=Journal("exchange", "update", Kind.APPOINTMENT, "appointment:1", "item-1", ("subject",),
                            "changed in the PSA", "Visit"))),
    ("update refused", results.updated(ex_update, REFUSED, {}),
     Effect(error=REFUSED, error_key="appointment:1")),
    ("delete: forget, mirror the delete at once", results.deleted(ex_delete, None),
     Effect(drop=("appointment:1",), mirror_delete="item-1", count="deleted",
            journal=Journal("exchange", "delete", Kind.APPOINTMENT, "appointment:1", "item-1", (),
                            "deleted in the PSA", "Visit"))),
    ("delete of an item already gone is done", results.deleted(ex_delete, NOT_FOUND),
     Effect(drop=("appointment:1",), mirror_delete="item-1", count="deleted",
            journal=Journal("exchange", "delete", Kind.APPOINTMENT, "appointment:1", "item-1", (),
                            "deleted in the PSA", "Visit"))),
    ("delete refused", results.deleted(ex_delete, REFUSED), Effect(error=REFUSED, error_key="appointment:1")),
])
def test_exchange_results(case: str, got: Effect, want: Effect) -> None:
    assert got == want, case


@pytest.mark.parametrize(("case", "found", "fixed"), [
    ("found as planned: adopted, nothing to overwrite", ITEM, False),
    ("found with other values: adopted and overwritten from the PSA",
     ExchangeItem(CAL, "item-1", "ck-1", MOVED, psa_key="appointment:1"), True),
])
def test_an_item_found_by_its_key_is_adopted(case: str, found: ExchangeItem, fixed: bool) -> None:
    effect, fix = results.adopted(ex_create, found, CAL, {})
    assert effect.keep is not None and effect.keep.item_id == "item-1" and effect.count == "adopted", case
    assert effect.journal is not None and effect.journal.action == "adopt" and effect.wrote is None
    assert (fix is not None) is fixed, case
    if fix is not None:
        assert fix.item_id == "item-1" and fix.payload == APPT and "start" in fix.fields
        assert fix.mapping.exchange_hash == payload_hash(APPT)
