"""status.CredentialCheck: what a credential check's results say about Exchange (a table)."""

from __future__ import annotations

import pytest

from exchanged.ports import CheckResult
from exchanged.status import CredentialCheck

OK_LOGIN = CheckResult("login", True, "ok")
REFUSED = CheckResult("login", False, "401 Unauthorized")
EWS_DOWN = CheckResult("ews", False, "connection refused")
EWS_UP = CheckResult("ews", True, "ok")
ALICE_OK = CheckResult("alice@x", True, "ok")
ALICE_BAD = CheckResult("alice@x", False, "impersonation denied")
SLOW = CheckResult("ews", True, "answered slowly", warning=True)


@pytest.mark.parametrize(
    ("results", "reachable", "login", "warnings", "last_error"),
    [
        ([OK_LOGIN, EWS_UP, ALICE_OK], True, "ok", [], None),
        ([REFUSED], True, "refused", ["login: 401 Unauthorized"], "login: 401 Unauthorized"),
        ([REFUSED, EWS_DOWN], False, "not checked",
         ["login: 401 Unauthorized", "ews: connection refused"], "login: 401 Unauthorized"),
        ([OK_LOGIN, SLOW], True, "ok", ["ews: answered slowly"], None),  # a warning is no error
        ([OK_LOGIN, ALICE_BAD], True, "ok", ["alice@x: impersonation denied"], None),
        # per-user credentials: reachable when a mailbox answered; nothing about one login
        ([ALICE_OK], True, "not checked", [], None),
        ([ALICE_BAD], False, "not checked", ["alice@x: impersonation denied"], None),
        ([], None, "not checked", [], None),
    ],
)
def test_what_the_check_results_say(results: list[CheckResult], reachable: bool | None, login: str,
                                    warnings: list[str], last_error: str | None) -> None:
    expected = CredentialCheck(reachable, login, warnings, last_error)
    assert CredentialCheck.read(results, ["alice@x"]) == expected
