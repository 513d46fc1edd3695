"""exchangectl's renderers, in-process: every answer shape renders, none raises."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchanged import ctl
from exchanged.control import protocol

from .fakes import HISTORY, PLAN, STATUS

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=15,
)
# answers that look like the real ones, with fields missing, null or of the wrong type
status_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in (
            "version",
            "protocol",
            "pid",
            "started_at",
            "state",
            "config",
            "exchange",
            "running",
            "paused",
        )
    }
    | {
        "users": st.lists(st.dictionaries(st.sampled_from(list(STATUS["users"][0])), json_values), max_size=3)
    },
)


@settings(max_examples=200, deadline=None)
@given(command=st.sampled_from(sorted(ctl.RENDERERS)), result=json_values | status_like)
def test_every_renderer_copes_with_any_answer(command: str, result: Any) -> None:
    out = io.StringIO()
    ctl.RENDERERS[command](result, out, ctl.Clock(utc=True))
    assert out.getvalue().endswith("\n")


def render(command: str, result: Any, utc: bool = True) -> str:
    out = io.StringIO()
    ctl.RENDERERS[command](result, out, ctl.Clock(utc=utc))
    return out.getvalue()


def test_status_header_block() -> None:
    text = render("status", STATUS)
    assert text.splitlines()[0].startswith("daemon:")
    assert "pid:" in text and "4242" in text
    assert "last reload:" in text and "applied at 2026-11-29 04:10:00" in text
    assert "exchange:" in text and "reachable" in text


def test_status_shows_reload_errors_and_exchange_error() -> None:
    status = {
        **STATUS,
        "config": {
            **STATUS["config"],
            "last_reload": {"at": None, "result": "rejected", "errors": ["line 4: bad"]},
        },
        "exchange": {"server": "mail", "reachable": False, "last_error": "connection refused"},
    }
    text = render("status", status)
    assert "rejected" in text and "line 4: bad" in text
    assert "NOT reachable" in text and "last error:" in text and "connection refused" in text


def test_status_tells_a_refused_login_and_the_servers_back_off() -> None:
    status = {**STATUS, "exchange": {"server": "mail", "reachable": True, "login": "refused",
                                     "back_off_until": "2026-11-29T10:42:13+00:00",
                                     "back_off_by_server": True}}
    text = render("status", status)
    assert "mail, reachable, but the login of the sync account is REFUSED" in text
    assert "NOT reachable" not in text
    assert "waiting for the server's back-off until 10:42:13" in text


def test_local_time_is_the_default_and_said() -> None:
    assert "times in local time" in render("status", STATUS, utc=False)
    assert "times in UTC" in render("status", STATUS, utc=True)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2026-11-29T05:00:00+01:00", "2026-11-29 04:00:00"),
        ("2026-11-29T04:00:00", "2026-11-29 04:00:00"),  # naive on the wire means UTC
        (None, "-"),
        (1795924800, "2026-11-29 04:00:00"),  # epoch seconds are understood too
        (10**20, str(10**20)),  # out of range: shown as it came, never a traceback
        ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+01:00"),
        ("soon", "soon"),
    ],
)
def test_times_in_utc(value: object, shown: str) -> None:
    assert ctl.Clock(utc=True).show(value) == shown


def test_table_is_aligned() -> None:
    out = io.StringIO()
    ctl.table(["A", "LONGER", "C"], [["xxxx", "y", "z"], ["q", "r", "s"]], out)
    lines = out.getvalue().splitlines()
    assert lines == ["A     LONGER  C", "xxxx  y       z", "q     r       s"]


def test_cells_never_break_a_row() -> None:
    out = io.StringIO()
    ctl.table(["A", "B"], [[ctl._text("two\nlines"), "x"]], out)
    assert len(out.getvalue().splitlines()) == 2


def test_history_and_plan_render_every_entry() -> None:
    assert len([line for line in render("history", HISTORY).splitlines() if "jdoe@contoso.com" in line]) == 2
    plan_text = render("plan", PLAN)
    for action in PLAN["actions"] + PLAN["held_back"]:
        assert action["key"] in plan_text


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_the_typed_answer_readers_take_any_json(value: Any) -> None:
    # exchangectl reads plan/history/sync/reload through these; none may raise on a strange peer
    protocol.PlanAnswer.from_json(value)
    protocol.history_from_json(value)
    protocol.SyncAnswer.from_json(value)
    protocol.ReloadAnswer.from_json(value)


def test_a_history_entry_reads_back_as_written() -> None:
    line = protocol.ChangeLine(side="psa", action="update", kind="appointment", key="appointment:41",
                               fields=["start", "end"], reason="moved in Exchange", subject="Visit",
                               item_id="AAM=", at="2026-11-29T04:15:02+00:00", mailbox="jdoe@contoso.com",
                               cycle_id="c1")
    assert protocol.history_from_json([line.to_json()]) == [line]
    assert protocol.history_from_json(HISTORY)[1].fields == ["start", "end"]


def test_typed_answers_keep_what_the_renderers_show() -> None:
    plan = protocol.PlanAnswer.from_json(PLAN)
    assert [a.key for a in plan.held_back] == ["contact:5"]
    assert plan.window is not None and plan.window.recurring_end == "2026-12-29T04:00:00+00:00"
    assert plan.findings[0].code == "deletes_held_back"
    sync = protocol.SyncAnswer.from_json({"started": ["a@x"], "full": True,
                                          "results": {"a@x": {"result": "ok", "counts": {"exported": 2}}}})
    assert sync.full and not sync.allow_deletes
    assert sync.results["a@x"] == protocol.SyncOutcome("ok", None, {"exported": 2}, 0)
    outcome = protocol.SyncOutcome("partial", None, {"exported": 1}, 2,
                                   [protocol.ItemErrorLine("appointment:7", "too_long", "subject too long")])
    assert protocol.SyncOutcome.from_json(outcome.to_json()) == outcome
    reload = protocol.ReloadAnswer.from_json({"result": "applied", "full_resync": True, "generation": 4})
    assert reload.record.resync_all is True and reload.generation == 4


def test_a_resource_row_reads_back_as_written() -> None:
    row = protocol.ResourceRow("1", "Alice Archer", "alice@example.test", True, True, "alice@example.test",
                               True, "2026-11-29T04:15:00+00:00", None)
    assert protocol.ResourceRow.list_from_json([row.to_json()]) == [row]
    assert protocol.ResourceRow.from_json({"psa_resource": 7}).psa_resource == "7"


def test_a_sync_answer_reads_back_as_written() -> None:
    started = protocol.SyncAnswer(["a@x", "b@x"], ["b@x"], False, True)
    assert "results" not in started.to_json() and "ok" not in started.to_json()
    assert protocol.SyncAnswer.from_json(started.to_json()) == started
    failed = protocol.SyncOutcome("error", "a@x: boom", {}, 0)
    waited = protocol.SyncAnswer(["a@x"], [], True, False, {"a@x": failed})
    assert waited.to_json()["ok"] is False
    assert protocol.SyncAnswer.from_json(waited.to_json()) == waited
