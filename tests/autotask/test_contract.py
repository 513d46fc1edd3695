"""The PsaConnector contract, run against the in-memory PSA and the autotask connector alike.

Until the shared suite (tests/contract/test_psa_contract.py) lands, this file holds the
expectations the runner relies on, phrased once and run on both implementations: what ``load``
returns for a resource and a window, that imported rows round-trip with their Exchange key, that
PSA-owned rows change only in the fields that flow back, that only imported rows are deleted, and
that an unreachable PSA raises instead of looking empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from exchanged import errors
from exchanged.model import Appointment, Contact, ItemError, Kind, PsaRecord, Task
from exchanged.ports import PsaConnector, PsaWrite
from exchanged.testing.autotask import AutotaskServer
from exchanged.testing.memory import MemoryPsa

from .conftest import CODE, NOW, SECRET, USER, WINDOW, base_seed, make_connector

JANE, BOB = "29682885", "29682886"


@dataclass
class Harness:
    psa: PsaConnector
    add_appointment: Callable[[str, Appointment], str]
    add_todo: Callable[[str, Task], str]
    go_away: Callable[[], None]
    add_contact: Callable[[str, Contact], str] | None = None
    add_service_call: Callable[[Sequence[str], datetime, datetime], str] | None = None


def _memory() -> Harness:
    psa = MemoryPsa()
    for rid in (JANE, BOB):
        psa.add_resource(rid, f"{rid}@example.test")

    def go_away() -> None:
        psa.unavailable = True

    return Harness(
        psa, lambda r, p: psa.add(Kind.APPOINTMENT, p, [r]), lambda r, p: psa.add(Kind.TODO, p, [r]), go_away
    )


def _autotask(server: AutotaskServer) -> Harness:
    """The autotask connector over the test server, rows put in through the model-level helpers
    (also used by tests/contract/test_psa_contract.py)."""
    data = server.psa
    for rid in (JANE, BOB):  # the contract's resources: <id>@example.test
        data.add_resource(rid, f"{rid}@example.test", f"Resource {rid}")

    def service_call(resources: Sequence[str], start: datetime, end: datetime) -> str:
        return data.add(Kind.SERVICE_CALL, Appointment("Service call", start, end), resources)

    return Harness(
        make_connector(server, max_attempts=2),
        lambda r, p: data.add(Kind.APPOINTMENT, p, [r]),
        lambda r, t: data.add(Kind.TODO, t, [r]),
        server.stop,
        lambda r, c: data.add(Kind.CONTACT, c, [r]),
        service_call,
    )


@pytest.fixture(params=["memory", "autotask"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        yield _memory()
        return
    with AutotaskServer(api_user=(USER, SECRET, CODE), seed=base_seed()) as server:
        yield _autotask(server)


def appt(days: float, subject: str = "Visit", body: str = "") -> Appointment:
    start = NOW + timedelta(days=days)
    return Appointment(subject=subject, start=start, end=start + timedelta(hours=1), body=body)


def keys(records: Any) -> set[str]:
    return {r.psa_key for r in records}


async def test_load_returns_the_resources_rows_in_the_window(harness: Harness) -> None:
    mine = harness.add_appointment(JANE, appt(1, body="notes"))
    future = harness.add_appointment(JANE, appt(200))
    harness.add_appointment(JANE, appt(-10))  # ended before the window
    harness.add_appointment(BOB, appt(1))
    records = await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)
    assert keys(records) == {mine, future}
    assert {r.psa_key: r.payload for r in records}[mine] == appt(1, body="notes")
    assert await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW) == []


async def test_imported_rows_round_trip_with_their_exchange_key(harness: Harness) -> None:
    payload = appt(2, subject="Lunch", body="with Bob")
    [created] = await harness.psa.apply(
        [PsaWrite("create", Kind.IMPORTED, None, payload, exchange_key="UID-9", resource=JANE)]
    )
    assert isinstance(created, PsaRecord)
    assert (created.kind, created.payload, created.exchange_key) == (Kind.IMPORTED, payload, "UID-9")
    assert list(await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)) == [created]
    changed = replace(
        payload,
        subject="Lunch moved",
        start=payload.start + timedelta(hours=1),
        end=payload.end + timedelta(hours=1),
    )
    [updated] = await harness.psa.apply(
        [
            PsaWrite(
                "update",
                Kind.IMPORTED,
                created.psa_key,
                changed,
                fields=("subject", "start", "end"),
                exchange_key="UID-9",
            )
        ]
    )
    assert isinstance(updated, PsaRecord) and updated.payload == changed
    assert list(await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)) == [updated]
    assert list(await harness.psa.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])) == [None]
    assert await harness.psa.load(JANE, frozenset({Kind.IMPORTED}), WINDOW) == []
    [again] = await harness.psa.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])
    assert again is None  # deleting what is gone is done


async def test_psa_owned_rows_change_only_in_the_named_fields(harness: Harness) -> None:
    key = harness.add_appointment(JANE, appt(1, subject="Visit"))
    moved = replace(appt(1, subject="renamed in Outlook"), start=appt(3).start, end=appt(3).end)
    [rec] = await harness.psa.apply(
        [PsaWrite("update", Kind.APPOINTMENT, key, moved, fields=("start", "end"))]
    )
    assert isinstance(rec, PsaRecord) and rec.payload == replace(moved, subject="Visit")
    todo = harness.add_todo(JANE, Task("Call", body="Call", start=appt(1).start, due=appt(1).end))
    done = Task("Call", body="Call", start=appt(1).start, due=appt(1).end, completed=NOW)
    [t] = await harness.psa.apply([PsaWrite("update", Kind.TODO, todo, done, fields=("completed",))])
    assert isinstance(t, PsaRecord) and t.payload.completed == NOW  # type: ignore[union-attr]
    loaded = {r.psa_key: r for r in await harness.psa.load(JANE, frozenset({Kind.TODO}), WINDOW)}
    assert loaded[todo].payload.completed == NOW  # type: ignore[union-attr]
    [refused] = await harness.psa.apply([PsaWrite("delete", Kind.APPOINTMENT, key, None)])
    assert isinstance(refused, ItemError)
    assert key in keys(await harness.psa.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW))


async def test_an_unreachable_psa_raises_and_never_looks_empty(harness: Harness) -> None:
    harness.add_appointment(JANE, appt(1))
    harness.go_away()
    with pytest.raises(errors.PsaUnavailable):
        await harness.psa.load(JANE, frozenset(Kind) - {Kind.PUBLIC_CONTACT}, WINDOW)
    with pytest.raises(errors.PsaUnavailable):
        await harness.psa.all_contacts()
