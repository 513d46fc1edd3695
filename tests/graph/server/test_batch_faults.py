"""JSON batching, throttling and the other test switches, statistics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import PSA_KEY, Graph
from .test_events import U, event

JSON = {"Content-Type": "application/json"}


def batch(graph: Graph, requests: list[dict[str, Any]]) -> httpx.Response:
    return graph.post("/$batch", json={"requests": requests})


def by_id(r: httpx.Response) -> dict[str, dict[str, Any]]:
    assert r.status_code == 200, r.text
    return {x["id"]: x for x in r.json()["responses"]}


def test_batch_runs_each_request_and_answers_each(graph: Graph) -> None:
    reqs = [
        {
            "id": str(n),
            "method": "POST",
            "url": f"{U}/events",
            "headers": JSON,
            "body": event(f"B{n}", day=n + 1),
        }
        for n in range(3)
    ]
    reqs.append({"id": "get", "method": "GET", "url": "/users/alice@example.test/mailboxSettings/timeZone"})
    reqs.append({"id": "bad", "method": "GET", "url": f"{U}/events/nope"})
    answers = by_id(batch(graph, reqs))
    assert [answers[str(n)]["status"] for n in range(3)] == [201, 201, 201]
    assert answers["0"]["body"]["subject"] == "B0"
    assert answers["get"]["body"]["value"] == "UTC"
    assert (
        answers["bad"]["status"] == 400
        and answers["bad"]["body"]["error"]["code"] == "ErrorInvalidIdMalformed"
    )
    stats = graph.server.stats()
    assert stats["requests"]["POST /v1.0/$batch"] == 1
    assert "POST /v1.0/users/{user}/events" not in stats["requests"]
    assert stats["batched"]["POST /v1.0/users/{user}/events"] == 3


def test_batch_limits_and_payload_checks(graph: Graph) -> None:
    reqs = [{"id": str(n), "method": "GET", "url": f"{U}/events"} for n in range(21)]
    r = batch(graph, reqs)
    assert r.status_code == 400 and "20" in r.json()["error"]["message"]
    assert batch(graph, reqs[:20]).status_code == 200
    r = batch(graph, [{"id": "1", "method": "GET", "url": f"{U}/events"}] * 2)
    assert r.status_code == 400
    r = graph.post("/$batch", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    # a body without Content-Type is refused for that request only
    answers = by_id(batch(graph, [{"id": "1", "method": "POST", "url": f"{U}/events", "body": event("x")}]))
    assert answers["1"]["status"] == 400


def test_batch_depends_on(graph: Graph) -> None:
    reqs = [
        {"id": "1", "method": "GET", "url": f"{U}/events/nope"},
        {
            "id": "2",
            "method": "POST",
            "url": f"{U}/events",
            "headers": JSON,
            "body": event("x"),
            "dependsOn": ["1"],
        },
        {"id": "3", "method": "GET", "url": f"{U}/events", "dependsOn": ["4"]},
        {"id": "4", "method": "POST", "url": f"{U}/events", "headers": JSON, "body": event("y")},
    ]
    answers = by_id(batch(graph, reqs))
    assert answers["2"]["status"] == 424
    assert answers["4"]["status"] == 201
    assert [e["subject"] for e in answers["3"]["body"]["value"]] == ["y"]  # ran after 4


def test_throttling_of_requests_and_inside_batches(graph: Graph) -> None:
    graph.server.set_faults(throttle_next=1, retry_after_s=7)
    r = graph.get(f"{U}/events")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == "ApplicationThrottled"
    assert graph.get(f"{U}/events").status_code == 200
    graph.server.set_faults(fail_next=1, retry_after_s=3)
    r = graph.get(f"{U}/events")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    graph.server.set_faults(batch_throttle_next=1, retry_after_s=2)
    reqs = [
        {"id": str(n), "method": "POST", "url": f"{U}/events", "headers": JSON, "body": event(f"T{n}")}
        for n in range(3)
    ]
    answers = by_id(batch(graph, reqs))
    assert sorted(a["status"] for a in answers.values()) == [201, 201, 429]
    throttled = next(a for a in answers.values() if a["status"] == 429)
    assert throttled["headers"]["Retry-After"] == "2"
    assert len(graph.get(f"{U}/events").json()["value"]) == 2
    assert graph.server.stats()["throttled"] == 2 and graph.server.stats()["failed"] == 1


def test_faults_can_target_one_pattern(graph: Graph) -> None:
    graph.server.set_faults(throttle_next=1, only="POST /v1.0/$batch")
    assert graph.get(f"{U}/events").status_code == 200
    assert batch(graph, [{"id": "1", "method": "GET", "url": f"{U}/events"}]).status_code == 429


def test_drop_next_carries_out_the_write_and_loses_the_reply(graph: Graph) -> None:
    graph.server.set_faults(drop_next=1)
    body = event("lost reply", singleValueExtendedProperties=[{"id": PSA_KEY, "value": "appointment:7"}])
    reqs = [{"id": "1", "method": "POST", "url": f"{U}/events", "headers": JSON, "body": body}]
    with pytest.raises(httpx.TransportError):
        batch(graph, reqs)
    listed = graph.get(f"{U}/events").json()["value"]
    assert [e["subject"] for e in listed] == ["lost reply"]
    assert graph.server.stats()["dropped"] == 1


def test_fault_switches_over_https_and_refusals(graph: Graph) -> None:
    http, base = graph.http, graph.server.url
    r = http.post(f"{base}/__emulator/faults", json={"latency_ms": 1, "retry_after_s": 5})
    assert r.status_code == 200 and r.json()["faults"]["retry_after_s"] == 5
    r = http.post(f"{base}/__emulator/faults", json={"no_such_switch": 1})
    assert r.status_code == 400 and "no_such_switch" in r.json()["error"]
    r = http.post(f"{base}/__emulator/faults", json={"throttle_next": -1})
    assert r.status_code == 400
    graph.get(f"{U}/events")
    stats = http.get(f"{base}/__emulator/stats").json()
    assert stats["requests"]["GET /v1.0/users/{user}/events"] == 1


def test_mailbox_concurrency_limit(graph: Graph) -> None:
    """Exchange Online allows 4 concurrent requests per app and mailbox; one more gets 429."""
    server = graph.server
    busy = ["alice@example.test"]
    for _ in range(4):  # four requests of alice's in flight
        assert server.enter_mailboxes(busy)
    try:
        r = graph.get(f"{U}/events")
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
        assert graph.get("/users/bob@example.test/events").status_code == 200
        # the same mailbox named by its user id is the same mailbox
        from exchanged.testing.graph.base import user_id

        assert graph.get(f"/users/{user_id('alice@example.test')}/events").status_code == 429
        r = batch(graph, [{"id": "1", "method": "GET", "url": f"{U}/events"}])
        assert r.status_code == 429
    finally:
        server.leave_mailboxes(busy * 4)
    assert graph.get(f"{U}/events").status_code == 200
    server.set_faults(mailbox_concurrency=0)
    for _ in range(10):
        assert server.enter_mailboxes(busy)
    assert graph.get(f"{U}/events").status_code == 200


def test_batch_parts_beyond_the_mailbox_concurrency_are_throttled(graph: Graph) -> None:
    graph.server.set_faults(batch_mailbox_concurrency=4, retry_after_s=2)
    reqs = [
        {"id": str(n), "method": "POST", "url": f"{U}/events", "headers": JSON, "body": event(f"C{n}")}
        for n in range(6)
    ]
    reqs.append({"id": "bob", "method": "GET", "url": "/users/bob@example.test/events"})
    reqs.append({"id": "chained", "method": "GET", "url": f"{U}/events", "dependsOn": ["0"]})
    answers = by_id(batch(graph, reqs))
    statuses = sorted(answers[str(n)]["status"] for n in range(6))
    assert statuses == [201, 201, 201, 201, 429, 429]
    assert all(
        answers[str(n)]["headers"].get("Retry-After") == "2"
        for n in range(6)
        if answers[str(n)]["status"] == 429
    )
    assert answers["bob"]["status"] == 200 and answers["chained"]["status"] == 200
    assert len(graph.get(f"{U}/events").json()["value"]) == 4
