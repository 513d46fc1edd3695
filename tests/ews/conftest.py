"""Targets for the EWS contract suite: our test server, or a real Exchange when configured.

Set EXCHANGED_TEST_EWS_URL, EXCHANGED_TEST_EWS_USER and EXCHANGED_TEST_EWS_PASSWORD (optionally
EXCHANGED_TEST_EWS_CA for a private CA, EXCHANGED_TEST_EWS_MAILBOX for the mailbox to use,
default: the user, and EXCHANGED_TEST_EWS_AUTH=ntlm|basic for how to log in, default ntlm: a
server that offers Basic only needs basic) to run the same tests against a real server; tests that
need the test server's switches, statistics or several mailboxes are skipped there, and so are the
tests of an authentication type the real server was not said to offer.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from exchangelib import BASIC, DELEGATE, IMPERSONATION, NTLM, Account, Configuration, Credentials
from exchangelib.folders import Calendar, Contacts, Folder, Tasks
from exchangelib.protocol import BaseProtocol

from exchanged.testing.ews import EwsTestServer
from exchanged.testing.ews.fixtures import MAILBOXES, SERVICE_ACCOUNT, start_server
from exchanged.testing.tls import ca_adapter_class

TARGET = "target"  # config()/account(): log in as the target says (EwsTarget.auth_type)


@dataclass
class EwsTarget:
    url: str
    ca_file: str | None
    user: str
    password: str
    mailboxes: list[str]
    server: EwsTestServer | None = None
    auth_type: str = NTLM  # how the tests log in unless they say otherwise
    offered: frozenset[str] = frozenset({NTLM, BASIC})  # what the target accepts
    _accounts: dict[tuple[Any, ...], Account] = field(default_factory=dict)

    def require(self, auth_type: str) -> None:
        """Skip the test on a target that does not offer ``auth_type``."""
        if auth_type not in self.offered:
            pytest.skip(f"the target offers {', '.join(sorted(self.offered))} only (EXCHANGED_TEST_EWS_AUTH)")

    def config(
        self, user: str | None = None, password: str | None = None, auth_type: str | None = TARGET
    ) -> Configuration:
        if auth_type == TARGET:
            auth_type = self.auth_type
        creds = Credentials(user or self.user, password if password is not None else self.password)
        kwargs: dict[str, Any] = {"auth_type": auth_type} if auth_type else {}
        return Configuration(service_endpoint=self.url, credentials=creds, **kwargs)

    def account(
        self,
        address: str | None = None,
        user: str | None = None,
        password: str | None = None,
        access_type: str | None = None,
        auth_type: str | None = TARGET,
    ) -> Account:
        if auth_type == TARGET:
            auth_type = self.auth_type
        if access_type is None:
            # A real server's test user reads its own mailbox as itself (impersonating oneself needs
            # the ApplicationImpersonation role); our server's service account impersonates.
            own = (address or self.mailboxes[0]).lower() == (user or self.user).lower()
            access_type = DELEGATE if own else IMPERSONATION
        key = (address, user, password, access_type, auth_type)
        if key not in self._accounts:
            self._accounts[key] = Account(
                address or self.mailboxes[0],
                config=self.config(user, password, auth_type),
                autodiscover=False,
                access_type=access_type,
            )
        return self._accounts[key]


@pytest.fixture(scope="module")
def ews(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EwsTarget]:
    real_url = os.environ.get("EXCHANGED_TEST_EWS_URL")
    previous_adapter = BaseProtocol.HTTP_ADAPTER_CLS
    if real_url:
        user = os.environ["EXCHANGED_TEST_EWS_USER"]
        ca = os.environ.get("EXCHANGED_TEST_EWS_CA")
        if ca:
            BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(ca)
        mailbox = os.environ.get("EXCHANGED_TEST_EWS_MAILBOX", user)
        auth = os.environ.get("EXCHANGED_TEST_EWS_AUTH", "ntlm").strip().lower()
        auth_type = {"ntlm": NTLM, "basic": BASIC}.get(auth)
        if auth_type is None:
            raise pytest.UsageError(f"EXCHANGED_TEST_EWS_AUTH={auth!r}: use ntlm or basic")
        yield EwsTarget(real_url, ca, user, os.environ["EXCHANGED_TEST_EWS_PASSWORD"], [mailbox],
                        auth_type=auth_type, offered=frozenset({auth_type}))
        BaseProtocol.HTTP_ADAPTER_CLS = previous_adapter
        return
    server = start_server(tmp_path_factory.mktemp("ews"))
    BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(server.ca_file)
    try:
        yield EwsTarget(
            server.url, server.ca_file, SERVICE_ACCOUNT[0], SERVICE_ACCOUNT[1], list(MAILBOXES), server
        )
    finally:
        BaseProtocol.HTTP_ADAPTER_CLS = previous_adapter
        server.stop()


@pytest.fixture
def restore_adapter() -> Iterator[None]:
    """For tests that point exchangelib at another server: put the module's CA adapter back."""
    saved = BaseProtocol.HTTP_ADAPTER_CLS
    yield
    BaseProtocol.HTTP_ADAPTER_CLS = saved


@pytest.fixture
def emulator(ews: EwsTarget) -> EwsTestServer:
    """The test server itself, for statistics and fault switches (skipped against a real Exchange)."""
    if ews.server is None:
        pytest.skip("needs the test server's switches/statistics")
    ews.server.set_faults(throttle_next=0, fail_next=0, drop_next=0, latency_ms=0, throttle_style="fault",
                          basic_only=0, offer_negotiate=0)
    return ews.server


@pytest.fixture
def account(ews: EwsTarget) -> Account:
    return ews.account()


def _scratch(parent: Folder, cls: type[Folder]) -> Iterator[Folder]:
    folder = cls(parent=parent, name=f"exchanged-test-{uuid.uuid4().hex[:10]}")
    folder.save()
    try:
        yield folder
    finally:
        folder.delete()


@pytest.fixture
def calendar(account: Account) -> Iterator[Folder]:
    """A fresh calendar folder per test, so tests never see each other's items."""
    yield from _scratch(account.calendar, Calendar)


@pytest.fixture
def tasks(account: Account) -> Iterator[Folder]:
    yield from _scratch(account.tasks, Tasks)


@pytest.fixture
def contacts(account: Account) -> Iterator[Folder]:
    yield from _scratch(account.contacts, Contacts)


__all__ = ["BASIC", "DELEGATE", "IMPERSONATION", "NTLM", "EwsTarget"]
