"""Property tests: no input makes the protocol layer raise or answer outside the contract."""

from __future__ import annotations

import json
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from exchanged.control import dispatch, handle_line
from exchanged.control.protocol import METHODS

from .fakes import FakeHandler

KNOWN_REASONS = {
    "parse_error",
    "invalid_request",
    "nesting_too_deep",
    "method_not_found",
    "invalid_params",
    "unknown_mailbox",
    "internal_error",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

requests = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0"]), "method": st.sampled_from([*METHODS, "nope"])},
    optional={
        "id": st.none() | st.integers() | st.text(max_size=8) | st.booleans(),
        "params": st.dictionaries(
            st.sampled_from(["mailboxes", "mailbox", "full", "wait", "allow_deletes", "since", "x"]),
            json_values,
            max_size=4,
        )
        | json_values,
    },
)


def check_answer(response: dict[str, Any] | None, request: object) -> None:
    if response is None:  # only a valid notification goes unanswered
        assert isinstance(request, dict) and "id" not in request
        return
    assert response["jsonrpc"] == "2.0"
    assert ("result" in response) != ("error" in response)
    if "error" in response:
        assert response["error"]["data"]["reason"] in KNOWN_REASONS
        assert isinstance(response["error"]["message"], str) and response["error"]["message"]


@settings(max_examples=300, deadline=None)
@given(request=requests | json_values)
def test_dispatch_answers_any_request_within_the_contract(request: object) -> None:
    async def run() -> None:
        with capture_logs():
            check_answer(await dispatch(FakeHandler(), request), request)

    trio.run(run)


@settings(max_examples=300, deadline=None)
@given(line=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_handle_line_answers_any_bytes_with_one_json_line(line: bytes) -> None:
    async def run() -> None:
        with capture_logs():
            answer = await handle_line(FakeHandler(), line.replace(b"\n", b" "))
        if answer is not None:
            assert answer.endswith(b"\n") and answer.count(b"\n") == 1
            check_answer(json.loads(answer), None)

    trio.run(run)
