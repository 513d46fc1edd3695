"""The autotask connector against the in-process Autotask test server (real HTTPS on loopback)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import trio

from exchanged import errors
from exchanged.model import Appointment, ItemError, Kind, PsaRecord, ShowAs, Task, make_psa_key
from exchanged.ports import PsaWrite
from exchanged.psa.autotask import AutotaskConnector, RequestBudget, open_autotask
from exchanged.psa.autotask.mapping import parse_time
from exchanged.testing.autotask import AutotaskServer

from .conftest import CODE, NOW, SECRET, USER, WINDOW, make_connector, t

pytestmark = pytest.mark.e2e

JANE, BOB, OLD = "29682885", "29682886", "29682887"
ALL = frozenset(Kind) - {Kind.PUBLIC_CONTACT}


def by_key(records: Sequence[PsaRecord]) -> dict[str, PsaRecord]:
    return {r.psa_key: r for r in records}


def seed_service_calls(server: AutotaskServer) -> dict[str, int]:
    s = server.store
    ids = {}
    ids["via_ticket"] = s.put(
        "ServiceCalls",
        {"companyID": 1, "description": "Fix printer", "startDateTime": t(1), "endDateTime": t(1, 2)},
    )["id"]
    ids["via_task"] = s.put(
        "ServiceCalls",
        {"companyID": 2, "description": "Install", "startDateTime": t(2), "endDateTime": t(2, 1)},
    )["id"]
    ids["bob_only"] = s.put("ServiceCalls", {"companyID": 1, "startDateTime": t(3), "endDateTime": t(3, 1)})[
        "id"
    ]
    ids["canceled"] = s.put(
        "ServiceCalls",
        {"companyID": 1, "startDateTime": t(1), "endDateTime": t(1, 1), "canceledDateTime": t(0)},
    )["id"]
    ids["old"] = s.put("ServiceCalls", {"companyID": 1, "startDateTime": t(-20), "endDateTime": t(-20, 1)})[
        "id"
    ]
    for call in ("via_ticket", "canceled", "old"):
        link = s.put("ServiceCallTickets", {"serviceCallID": ids[call], "ticketID": 77})["id"]
        s.put("ServiceCallTicketResources", {"serviceCallTicketID": link, "resourceID": int(JANE)})
    link = s.put("ServiceCallTasks", {"serviceCallID": ids["via_task"], "taskID": 88})["id"]
    s.put("ServiceCallTaskResources", {"serviceCallTaskID": link, "resourceID": int(JANE)})
    s.put("ServiceCallTaskResources", {"serviceCallTaskID": link, "resourceID": int(BOB)})
    link = s.put("ServiceCallTickets", {"serviceCallID": ids["bob_only"], "ticketID": 78})["id"]
    s.put("ServiceCallTicketResources", {"serviceCallTicketID": link, "resourceID": int(BOB)})
    return ids


async def test_resource_is_read_by_id_and_missing_is_none_both_ways(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    res = await connector.resource(JANE)
    assert res is not None and (res.email, res.name, res.is_active) == ("jdoe@example.test", "Jane Doe", True)
    old = await connector.resource(OLD)
    assert old is not None and not old.is_active
    assert await connector.resource("424242") is None
    server.missing_item = "404"
    assert await connector.resource("424242") is None
    assert await connector.resource("not-a-number") is None


async def test_appointments_in_the_window_of_the_resource(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    mine = s.put(
        "Appointments",
        {
            "resourceID": int(JANE),
            "title": "Dentist",
            "description": "bring card",
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    s.put(
        "Appointments",
        {"resourceID": int(JANE), "title": "long ago", "startDateTime": t(-9), "endDateTime": t(-8)},
    )
    s.put(
        "Appointments",
        {"resourceID": int(BOB), "title": "not mine", "startDateTime": t(1), "endDateTime": t(1, 1)},
    )
    far = s.put(
        "Appointments",
        {"resourceID": int(JANE), "title": "next year", "startDateTime": t(300), "endDateTime": t(300, 1)},
    )
    records = by_key((await connector.load(JANE, frozenset({Kind.APPOINTMENT}), WINDOW)).records)
    assert set(records) == {
        make_psa_key(Kind.APPOINTMENT, mine["id"]),
        make_psa_key(Kind.APPOINTMENT, far["id"]),
    }
    rec = records[make_psa_key(Kind.APPOINTMENT, mine["id"])]
    assert rec.payload == Appointment(
        subject="Dentist",
        start=NOW + timedelta(days=1),
        end=NOW + timedelta(days=1, hours=1),
        body="bring card",
    )
    assert rec.last_modified == parse_time(mine["updateDateTime"])
    assert rec.last_modified is not None and rec.last_modified.tzinfo is not None


async def test_service_calls_through_both_chains(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    ids = seed_service_calls(server)
    jane = by_key((await connector.load(JANE, frozenset({Kind.SERVICE_CALL}), WINDOW)).records)
    assert set(jane) == {
        make_psa_key(Kind.SERVICE_CALL, ids["via_ticket"]),
        make_psa_key(Kind.SERVICE_CALL, ids["via_task"]),
    }
    call = jane[make_psa_key(Kind.SERVICE_CALL, ids["via_ticket"])].payload
    assert isinstance(call, Appointment)
    assert (call.subject, call.body) == ("Service call: Contoso: Fix printer", "Fix printer")
    bob = by_key((await connector.load(BOB, frozenset({Kind.SERVICE_CALL}), WINDOW)).records)
    assert set(bob) == {
        make_psa_key(Kind.SERVICE_CALL, ids["via_task"]),
        make_psa_key(Kind.SERVICE_CALL, ids["bob_only"]),
    }


async def test_todos_with_company_and_completion(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    open_todo = s.put(
        "CompanyToDos",
        {
            "companyID": 1,
            "assignedToResourceID": int(JANE),
            "actionType": 1,
            "activityDescription": "Call Anna\nabout the renewal",
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    done = s.put(
        "CompanyToDos",
        {
            "companyID": 2,
            "assignedToResourceID": int(JANE),
            "actionType": 1,
            "startDateTime": t(-1),
            "endDateTime": t(-1, 1),
            "completedDate": t(-1),
        },
    )
    s.put(
        "CompanyToDos",
        {
            "companyID": 2,
            "assignedToResourceID": int(BOB),
            "actionType": 1,
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    records = by_key((await connector.load(JANE, frozenset({Kind.TODO}), WINDOW)).records)
    assert set(records) == {make_psa_key(Kind.TODO, open_todo["id"]), make_psa_key(Kind.TODO, done["id"])}
    task = records[make_psa_key(Kind.TODO, open_todo["id"])].payload
    assert task == Task(
        subject="Call Anna",
        body="Call Anna\nabout the renewal\n\nCompany: Contoso",
        start=NOW + timedelta(days=1),
        due=NOW + timedelta(days=1, hours=1),
        completed=None,
    )
    finished = records[make_psa_key(Kind.TODO, done["id"])].payload
    assert isinstance(finished, Task) and finished.completed == NOW - timedelta(days=1)
    assert finished.subject == "To-do"  # no action type name, no description


async def test_owned_contacts_by_account_manager_and_opportunity(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    s.put(
        "Companies",
        {"id": 3, "companyName": "Northwind", "companyType": 1, "ownerResourceID": int(BOB), "phone": "3"},
    )
    anna = s.put(
        "Contacts",
        {
            "companyID": 1,
            "firstName": "Anna",
            "lastName": "Smith",
            "isActive": 1,
            "emailAddress": "anna@contoso.test",
            "phone": "+1 555",
            "title": "CTO",
        },
    )
    s.put("Contacts", {"companyID": 1, "firstName": "Gone", "lastName": "Away", "isActive": 0})
    cleo = s.put("Contacts", {"companyID": 3, "firstName": "Cleo", "lastName": "Jones", "isActive": 1})
    s.put("Contacts", {"companyID": 3, "firstName": "Not", "lastName": "Mine", "isActive": 1})
    s.put(
        "Opportunities",
        {"companyID": 3, "contactID": cleo["id"], "ownerResourceID": int(JANE), "title": "Deal", "status": 1},
    )
    records = by_key((await connector.load(JANE, frozenset({Kind.CONTACT}), WINDOW)).records)
    assert set(records) == {make_psa_key(Kind.CONTACT, anna["id"]), make_psa_key(Kind.CONTACT, cleo["id"])}
    a = records[make_psa_key(Kind.CONTACT, anna["id"])].payload
    assert (a.company, a.email, a.business_phone, a.job_title) == (  # type: ignore[union-attr]
        "Contoso",
        "anna@contoso.test",
        "+1 555",
        "CTO",
    )
    assert records[make_psa_key(Kind.CONTACT, cleo["id"])].payload.company == "Northwind"  # type: ignore[union-attr]
    everyone = by_key((await connector.all_contacts()).records)
    assert len(everyone) == 3 and all(k.startswith("public_contact:") for k in everyone)


async def test_paging_over_500_rows_and_no_n_plus_one(server: AutotaskServer) -> None:
    async def cost(n: int) -> tuple[int, int]:
        server.store.tables["Appointments"].clear()
        for table in ("ServiceCalls", "ServiceCallTickets", "ServiceCallTicketResources", "CompanyToDos"):
            server.store.tables[table].clear()
        s = server.store
        for i in range(n):
            s.put(
                "Appointments",
                {"resourceID": int(JANE), "title": f"a{i}", "startDateTime": t(1), "endDateTime": t(1, 1)},
            )
            call = s.put(
                "ServiceCalls", {"companyID": 1 + i % 2, "startDateTime": t(1), "endDateTime": t(1, 1)}
            )
            link = s.put("ServiceCallTickets", {"serviceCallID": call["id"], "ticketID": i})
            s.put("ServiceCallTicketResources", {"serviceCallTicketID": link["id"], "resourceID": int(JANE)})
            s.put(
                "CompanyToDos",
                {
                    "companyID": 1 + i % 2,
                    "assignedToResourceID": int(JANE),
                    "actionType": 1,
                    "startDateTime": t(1),
                    "endDateTime": t(1, 1),
                },
            )
        connector = make_connector(server)
        server.reset_stats()
        records = (await connector.load(JANE, ALL, WINDOW)).records
        assert len(records) == 3 * n
        return sum(server.stats()["requests"].values()), server.stats()["requests"].get(
            "POST Appointments", 0
        )

    few, _ = await cost(5)
    more, _ = await cost(60)
    assert few == more  # rows grow, requests do not
    _many, appointment_pages = await cost(1100)
    assert appointment_pages == 3  # 1100 appointments: three 500-row pages, all followed


async def test_never_more_than_three_requests_in_flight(server: AutotaskServer) -> None:
    seed_service_calls(server)
    server.faults.latency_ms = 50
    connector = make_connector(server)
    async with trio.open_nursery() as nursery:
        for who in (JANE, BOB, OLD, JANE):
            nursery.start_soon(connector.load, who, ALL, WINDOW)
    stats = server.stats()
    assert stats["thread_limit_rejections"] == 0
    assert 1 <= stats["max_concurrent"] <= 3


async def test_budget_waits_for_the_rolling_hour(autojump_clock: trio.testing.MockClock) -> None:
    budget = RequestBudget(3)
    for _ in range(3):
        await budget.acquire()
    assert budget.status()["used"] == 3 and budget.status()["next_free_in_s"] == 3600.0
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(budget.acquire)
        await trio.sleep(1)
        assert budget.status()["waiting"] == 1
    assert trio.current_time() - start == pytest.approx(3600.0)
    assert budget.status() | {"next_free_in_s": None} == {
        "used": 1,
        "limit": 3,
        "waiting": 0,
        "waited_total": 1,
        "requests_total": 4,
        "next_free_in_s": None,
    }


async def test_connector_keeps_to_its_hourly_share(
    server: AutotaskServer, autojump_clock: trio.testing.MockClock
) -> None:
    connector = make_connector(server, requests_per_hour=4)
    start = trio.current_time()
    for _ in range(3):
        await connector.resource(JANE)  # zone + 3 GETs + ThresholdInformation never over 4 an hour
    assert trio.current_time() == start
    await connector.resource(JANE)
    assert trio.current_time() - start >= 3600.0
    status = connector.budget_status()
    assert status["limit"] == 4 and status["waited_total"] == 1 and status["used"] <= 4


async def test_429_and_500_are_backed_off_and_then_reported(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    server.faults.update({"fail_next": 2, "fail_status": 429})
    assert await connector.resource(JANE) is not None
    server.faults.update({"fail_next": 2, "fail_status": 500})
    assert await connector.resource(JANE) is not None
    assert connector.api.backoffs == 4
    assert connector.throttle_waits() == {"autotask": 4}  # the metric exchanged_throttle_waits_total
    counts = connector.request_counts()
    assert set(counts) == {("autotask", "get Resources")} and counts[("autotask", "get Resources")] == 2
    server.faults.update({"fail_next": 50, "fail_status": 503})
    with pytest.raises(errors.PsaUnavailable):
        await connector.load(JANE, ALL, WINDOW)  # never an empty list
    server.faults.update({"fail_next": 0})
    server.reset_stats()
    server.faults.update({"fail_next": 50, "fail_status": 429})
    with pytest.raises(errors.PsaUnavailable) as info:
        await connector.resource(JANE)
    assert server.stats()["requests"]["GET Resources"] == connector.api.max_attempts  # bounded, not hammered
    assert "refusing" in info.value.message


async def test_thread_limit_refusal_is_backed_off(server: AutotaskServer) -> None:
    connector = make_connector(server)
    calls = 0
    original = connector.api._send_blocking

    def send(method: str, url: str, body: object, with_auth: bool) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:  # the API's answer when another process of the integration holds 3 threads
            from exchanged.psa.autotask.api import Response

            return Response(500, {"errors": ["Itgenatr005: thread threshold exceeded"]})
        return original(method, url, body, with_auth)

    connector.api._send_blocking = send  # type: ignore[method-assign,assignment]
    assert await connector.resource(JANE) is not None
    assert connector.api.backoffs == 1


async def test_401_re_resolves_the_zone_then_reports_a_login_failure(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    await connector.resource(JANE)
    server.faults.update({"fail_next": 1, "fail_status": 401})
    assert await connector.resource(JANE) is not None
    assert server.stats()["requests"]["GET ZoneInformation"] == 2
    server.secret = "rotated"
    with pytest.raises(errors.PsaAuthFailed) as info:
        await connector.resource(JANE)
    assert SECRET not in info.value.message and "401" in info.value.message


async def test_a_moved_zone_is_looked_up_once_for_all_the_refused_requests(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    visit = Appointment("Visit", NOW + timedelta(days=1), NOW + timedelta(days=1, hours=1))
    server.psa.add(Kind.APPOINTMENT, visit, [JANE])
    before = (await connector.load(JANE, ALL, WINDOW)).records
    server.move_zone("127.0.0.1")
    server.reset_stats()
    # several queries at once, each refused by the old zone
    after = (await connector.load(JANE, ALL, WINDOW)).records
    assert after == before and [r.psa_key for r in after]
    stats = server.stats()
    assert stats["wrong_zone"] >= 2 and stats["requests"]["GET ZoneInformation"] == 1, stats
    assert connector.budget_status()["zone"] == server.zone_url


async def test_interrupt_ends_a_wait_for_the_hourly_budget_at_once(
    server: AutotaskServer, autojump_clock: trio.testing.MockClock
) -> None:
    connector = make_connector(server, requests_per_hour=3)
    await connector.resource(JANE)  # zone, ThresholdInformation is not read here: 2 requests
    await connector.resource(JANE)
    start = trio.current_time()
    failure: list[BaseException] = []

    async def cycle() -> None:
        try:
            await connector.resource(JANE)
        except errors.PsaBudgetExhausted as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cycle)
        await trio.sleep(60)
        assert connector.budget_status()["waiting"] == 1
        connector.interrupt_waits("the daemon is stopping")
    assert trio.current_time() - start < 3600  # trio's virtual clock: the wait did not run out
    assert failure and "budget was interrupted (the daemon is stopping)" in str(failure[0]), failure
    assert connector.budget_status()["waiting"] == 0
    with pytest.raises(errors.PsaBudgetExhausted):  # a later request that would wait fails at once
        await connector.resource(JANE)


async def test_interrupt_ends_a_back_off(server: AutotaskServer) -> None:
    connector = make_connector(server, retry_base_s=3600, retry_cap_s=3600)
    server.faults.update({"throttle_next": 50})
    with trio.fail_after(60):  # a hang guard only: without the interrupt this waits an hour
        async with trio.open_nursery() as nursery:

            async def stop_when_backing_off() -> None:
                while connector.api.backoffs == 0:  # noqa: ASYNC110 (the client has no event for it)
                    await trio.sleep(0.01)
                connector.interrupt_waits("the daemon is stopping")

            nursery.start_soon(stop_when_backing_off)
            with pytest.raises(errors.PsaUnavailable) as info:
                await connector.resource(JANE)
    assert "interrupted (the daemon is stopping)" in info.value.message and "429" in info.value.message
    assert server.stats()["throttled"] == 1


async def test_unreachable_is_psa_unavailable(server: AutotaskServer) -> None:
    connector = make_connector(server, max_attempts=2)
    server.stop()
    with pytest.raises(errors.PsaUnavailable) as info:
        await connector.load(JANE, ALL, WINDOW)
    assert "unreachable" in info.value.message and SECRET not in info.value.message
    # issue #14: the Autotask connector has no psa.url; its hint names the keys it does have
    presented = errors.present(info.value)
    assert "psa.url" not in (presented.hint or "") and "psa.zone_lookup_url" in (presented.hint or "")


def imported(subject: str = "Lunch", **kw: Any) -> Appointment:
    start = NOW + timedelta(days=1)
    return Appointment(subject=subject, start=start, end=start + timedelta(hours=1), **kw)


async def test_imported_appointment_round_trip(server: AutotaskServer, connector: AutotaskConnector) -> None:
    payload = imported(body="with Bob", location="Cafe", show_as=ShowAs.TENTATIVE, is_private=True)
    [created] = await connector.apply(
        [
            PsaWrite(
                "create",
                Kind.IMPORTED,
                None,
                payload,
                exchange_key="UID-1@2026-11-30T12:00:00Z",
                resource=JANE,
            )
        ]
    )
    assert isinstance(created, PsaRecord) and created.kind is Kind.IMPORTED
    assert created.payload == payload and created.exchange_key == "UID-1@2026-11-30T12:00:00Z"
    [loaded] = (await connector.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records
    assert loaded == created
    row = server.store.get("Appointments", int(created.psa_key.split(":")[1]))
    assert row is not None and row["resourceID"] == int(JANE) and row["title"] == "Lunch"
    # an update sends only what changed
    server.reset_stats()
    moved = replace(payload, start=payload.start + timedelta(hours=2), end=payload.end + timedelta(hours=2))
    [updated] = await connector.apply(
        [
            PsaWrite(
                "update",
                Kind.IMPORTED,
                created.psa_key,
                moved,
                fields=("start", "end"),
                exchange_key=created.exchange_key,
            )
        ]
    )
    assert isinstance(updated, PsaRecord) and updated.payload == moved
    assert server.stats()["requests"]["PATCH Appointments"] == 1
    [renamed] = await connector.apply(
        [PsaWrite("update", Kind.IMPORTED, created.psa_key, replace(moved, subject=""), fields=("subject",))]
    )
    assert isinstance(renamed, PsaRecord) and renamed.payload.subject == ""  # type: ignore[union-attr]
    assert list(await connector.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])) == [None]
    assert (await connector.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records == []


async def test_time_changes_flow_back_to_appointments_and_todos(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    appt = s.put(
        "Appointments",
        {
            "resourceID": int(JANE),
            "title": "Visit",
            "description": "keep",
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    todo = s.put(
        "CompanyToDos",
        {
            "companyID": 1,
            "assignedToResourceID": int(JANE),
            "actionType": 1,
            "activityDescription": "Call",
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    records = by_key((await connector.load(JANE, frozenset({Kind.APPOINTMENT, Kind.TODO}), WINDOW)).records)
    a = records[make_psa_key(Kind.APPOINTMENT, appt["id"])]
    d = records[make_psa_key(Kind.TODO, todo["id"])]
    assert isinstance(a.payload, Appointment) and isinstance(d.payload, Task)
    new_a = replace(
        a.payload,
        start=a.payload.start + timedelta(hours=3),
        end=a.payload.end + timedelta(hours=3),
        subject="edited in Outlook",
    )  # the subject is not in `fields`: never written
    done_at = NOW + timedelta(hours=1)
    new_d = replace(d.payload, completed=done_at, due=NOW + timedelta(days=2))
    server.reset_stats()
    out = await connector.apply(
        [
            PsaWrite("update", Kind.APPOINTMENT, a.psa_key, new_a, fields=("start", "end")),
            PsaWrite("update", Kind.TODO, d.psa_key, new_d, fields=("due", "completed")),
        ]
    )
    assert isinstance(out[0], PsaRecord) and out[0].payload == replace(new_a, subject="Visit")
    assert isinstance(out[1], PsaRecord) and out[1].payload == new_d
    row = s.get("CompanyToDos", todo["id"])
    assert row is not None and parse_time(row["completedDate"]) == done_at
    assert server.stats()["requests"]["PATCH CompanyToDos"] == 1  # through /Companies/1/ToDos


async def test_refused_writes_are_item_errors_and_the_rest_goes_on(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    plain = s.put(
        "Appointments",
        {"resourceID": int(JANE), "title": "PSA own", "startDateTime": t(1), "endDateTime": t(1, 1)},
    )
    todo = s.put(
        "CompanyToDos",
        {
            "companyID": 1,
            "assignedToResourceID": int(JANE),
            "actionType": 1,
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    server.appointments_of_others = False
    bad_times = replace(imported(), end=NOW)  # end before start: a 500 with errors
    out = await connector.apply(
        [
            PsaWrite("create", Kind.IMPORTED, None, imported(), exchange_key="UID-2", resource=JANE),
            PsaWrite("delete", Kind.IMPORTED, make_psa_key(Kind.IMPORTED, plain["id"]), None),
            PsaWrite("update", Kind.TODO, make_psa_key(Kind.TODO, 999999), Task("x"), fields=("due",)),
            PsaWrite(
                "update",
                Kind.TODO,
                make_psa_key(Kind.TODO, todo["id"]),
                Task("x", start=NOW, due=NOW + timedelta(days=2)),
                fields=("due",),
            ),
            PsaWrite("create", Kind.IMPORTED, None, bad_times, exchange_key="UID-3", resource="29682800"),
        ]
    )
    assert (
        isinstance(out[0], ItemError) and out[0].code == "autotask_403" and "Appointments" in out[0].message
    )
    assert out[0].key == "UID-2"
    assert isinstance(out[1], ItemError) and out[1].code == "invalid_write"  # never deletes a PSA-owned row
    assert isinstance(out[2], ItemError) and out[2].code == "not_found" and "999999" in out[2].message
    assert isinstance(out[3], PsaRecord) and out[3].payload.due == NOW + timedelta(days=2)  # type: ignore[union-attr]
    assert isinstance(out[4], ItemError) and out[4].code == "autotask_500"
    assert s.get("Appointments", plain["id"]) is not None


async def test_check_reports_login_resources_and_appointment_rights(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    results = {r.subject: r for r in await connector.check([JANE, OLD, "5"])}
    assert results["autotask zone"].ok and results["autotask login"].ok
    assert results[f"psa_resource {JANE}"].ok
    assert results[f"psa_resource {OLD}"].warning and "inactive" in results[f"psa_resource {OLD}"].message
    assert results["psa_resource 5"].warning and not results[f"psa_resource {JANE}"].warning
    assert results["autotask appointment rights"].ok
    assert server.store.rows("Appointments") == []  # the probe cleaned up after itself
    server.appointments_of_others = False
    rights = {r.subject: r for r in await connector.check([JANE])}["autotask appointment rights"]
    assert rights.warning and "system setting" in rights.message
    server.secret = "rotated"
    login = {r.subject: r for r in await make_connector(server).check([JANE])}["autotask login"]
    assert not login.ok and SECRET not in login.message and "rotated" not in login.message


async def test_a_reload_keeps_the_hourly_count_and_the_thread_limit(
    server: AutotaskServer, autojump_clock: trio.testing.MockClock
) -> None:
    old = make_connector(server, requests_per_hour=10)
    await old.resource(JANE)
    used = old.budget_status()["used"]
    new = make_connector(server, requests_per_hour=20, previous=old)
    assert new.budget_status()["used"] == used and new.budget_status()["limit"] == 20
    assert new.api.limiter is old.api.limiter
    server.reset_stats()
    await new.resource(JANE)
    assert "GET ZoneInformation" not in server.stats()["requests"]  # the zone is kept too


async def test_an_unknown_api_user_is_a_login_failure_at_once(server: AutotaskServer) -> None:
    connector = make_connector(server)
    connector.api.creds = replace(connector.api.creds, username="nobody@example.test")
    with pytest.raises(errors.PsaAuthFailed) as info:
        await connector.load(JANE, ALL, WINDOW)
    assert "nobody@example.test" in info.value.message and SECRET not in info.value.message
    assert server.stats()["requests"] == {"GET ZoneInformation": 1}  # not retried, nothing else sent


async def test_works_with_the_parsed_config_and_never_shows_the_secrets(server: AutotaskServer) -> None:
    from exchanged.config import parse_config

    cfg = parse_config(f"""
profile_name: t
server: {{address: mail.example.test}}
sync_interval_minutes: 15
credentials: {{username: svc, password: pw}}
users: [{{mailbox: jdoe@example.test, psa_resource: "{JANE}"}}]
psa:
  connector: autotask
  username: {USER}
  secret: {SECRET}
  integration_code: {CODE}
  zone_lookup_url: {server.url}
  requests_per_hour: 100
  ca_bundle: {server.ca_file}
""")
    connector = open_autotask(cfg.psa)
    assert (await connector.resource(JANE)) is not None
    shown = repr(connector.api.creds) + repr(connector.budget_status())
    assert SECRET not in shown and CODE not in shown and connector.budget_status()["limit"] == 100


async def test_connectors_of_one_api_user_share_the_limits_without_being_told(server: AutotaskServer) -> None:
    first = make_connector(server, requests_per_hour=50)
    await first.resource(JANE)
    second = make_connector(server, requests_per_hour=40)  # e.g. the daemon's connector after a reload
    await second.resource(JANE)
    assert second.api.budget is first.api.budget and second.api.limiter is first.api.limiter
    assert first.budget_status()["limit"] == 40 and first.budget_status()["used"] == 4


async def test_check_warns_when_the_database_threshold_is_nearly_used_up() -> None:
    from .conftest import base_seed

    with AutotaskServer(api_user=(USER, SECRET, CODE), seed=base_seed(), threshold=10) as srv:
        connector = make_connector(srv)
        for _ in range(7):
            await connector.resource(JANE)
        login = {r.subject: r for r in await connector.check([])}["autotask login"]
        assert login.ok and login.warning and "nearly used up" in login.message
        assert connector.budget_status()["database"]["used"] == 8


async def test_todo_subject_says_what_to_do_and_nameless_contacts_are_skipped(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    s = server.store
    s.put("ActionTypes", {"id": 7, "name": "Phone Call", "view": 1, "isActive": True})
    todo = s.put(
        "CompanyToDos",
        {
            "companyID": 1,
            "assignedToResourceID": int(JANE),
            "actionType": 7,
            "activityDescription": "Ring Anna",
            "startDateTime": t(1),
            "endDateTime": t(1, 1),
        },
    )
    s.put("Contacts", {"companyID": 1, "firstName": " ", "lastName": "", "isActive": 1})
    anna = s.put("Contacts", {"companyID": 1, "firstName": " Anna ", "lastName": "Smith", "isActive": 1})
    loaded = await connector.load(JANE, frozenset({Kind.TODO, Kind.CONTACT}), WINDOW)
    records = by_key(loaded.records)
    task = records[make_psa_key(Kind.TODO, todo["id"])].payload
    assert isinstance(task, Task) and task.subject == "Phone Call: Ring Anna"
    company = (server.store.get("Companies", 1) or {})["companyName"]
    assert task.body == f"Ring Anna\n\nCompany: {company}"
    assert set(records) == {make_psa_key(Kind.TODO, todo["id"]), make_psa_key(Kind.CONTACT, anna["id"])}
    [skipped] = loaded.skipped
    assert skipped.code == "invalid_row" and "Contacts" in skipped.message and "name" in skipped.message
    assert records[make_psa_key(Kind.CONTACT, anna["id"])].payload.given_name == "Anna"  # type: ignore[union-attr]
    server.reset_stats()
    await connector.load(JANE, frozenset({Kind.TODO}), WINDOW)
    assert "POST ActionTypes" not in server.stats()["requests"]  # names are kept for an hour


async def test_overlong_imports_fit_the_api_limits_and_read_back_stably(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    payload = imported(subject="S" * 300, body="B" * 9000)
    [created] = await connector.apply(
        [PsaWrite("create", Kind.IMPORTED, None, payload, exchange_key="UID-long", resource=JANE)]
    )
    assert isinstance(created, PsaRecord) and isinstance(created.payload, Appointment)
    assert created.payload.subject == payload.subject  # the marker keeps what the title cannot
    assert len(created.payload.body) < 8000 and created.exchange_key == "UID-long"
    row = server.store.get("Appointments", int(created.psa_key.split(":")[1]))
    assert row is not None and len(row["title"]) == 256 and len(row["description"]) <= 8000
    assert list((await connector.load(JANE, frozenset({Kind.IMPORTED}), WINDOW)).records) == [created]


async def test_the_change_probe_names_the_resources_of_rows_modified_since_its_watermark(
    server: AutotaskServer, connector: AutotaskConnector
) -> None:
    """One query per entity across all resources; a row written after the baseline names its
    resource once (not again at the next probe, though the watermark overlaps)."""
    s = server.store
    first = await connector.probe_changes(None)
    assert first is not None and first.resources == frozenset()
    await trio.sleep(0.01)
    s.put("Appointments", {"resourceID": int(JANE), "title": "new", "startDateTime": t(1),
                           "endDateTime": t(1, 1)})
    s.put("CompanyToDos", {"companyID": 0, "assignedToResourceID": int(BOB), "actionType": 1,
                           "startDateTime": t(2), "endDateTime": t(2, 1), "activityDescription": "call"})
    before = dict(server.stats()["requests"])
    found = await connector.probe_changes(first.cursor)
    assert found is not None and found.resources == frozenset({JANE, BOB}), found.resources
    used = {k: v - before.get(k, 0) for k, v in server.stats()["requests"].items() if v != before.get(k, 0)}
    queries = {k: v for k, v in used.items() if k.startswith("POST")}
    probed = ("Appointments", "CompanyToDos", "ServiceCalls", "Contacts")
    assert queries == {f"POST {e}": 1 for e in probed}, used
    again = await connector.probe_changes(found.cursor)
    assert again is not None and again.resources == frozenset()


async def test_all_resources_lists_every_resource(server: AutotaskServer,
                                                  connector: AutotaskConnector) -> None:
    server.psa.add_resource("777", "gone@example.test", "Gone Away", is_active=False)
    found = {r.psa_resource: r for r in await connector.all_resources()}
    assert JANE in found and found[JANE].is_active and "@" in found[JANE].email
    assert found["777"].name == "Gone Away" and not found["777"].is_active
