"""The connector against a real Autotask sandbox, when one is configured (skipped otherwise).

Set ``EXCHANGED_TEST_AUTOTASK_USERNAME``, ``_SECRET``, ``_INTEGRATION_CODE`` and ``_RESOURCE`` (a
resource id to read; optional ``_ZONE_LOOKUP_URL``). Reads only, unless
``EXCHANGED_TEST_AUTOTASK_WRITES=1``: then one imported appointment is created, updated and
deleted for that resource, in the window, and ``check`` runs its permission probe.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from exchanged.model import Appointment, Kind, PsaRecord, Window
from exchanged.ports import PsaWrite
from exchanged.psa.autotask import open_autotask

from .conftest import PsaCfg

ENV = "EXCHANGED_TEST_AUTOTASK_"
NEEDED = ("USERNAME", "SECRET", "INTEGRATION_CODE", "RESOURCE")

pytestmark = pytest.mark.skipif(
    any(not os.environ.get(ENV + n) for n in NEEDED),
    reason="no Autotask sandbox configured (EXCHANGED_TEST_AUTOTASK_*)",
)


def _connector():  # type: ignore[no-untyped-def]
    cfg = PsaCfg(
        username=os.environ[ENV + "USERNAME"],
        secret=os.environ[ENV + "SECRET"],
        integration_code=os.environ[ENV + "INTEGRATION_CODE"],
        zone_lookup_url=os.environ.get(
            ENV + "ZONE_LOOKUP_URL", "https://webservices.autotask.net/ATServicesRest/"
        ),
        requests_per_hour=200,
    )
    return open_autotask(cfg)


async def test_sandbox_reads() -> None:
    connector = _connector()
    resource = os.environ[ENV + "RESOURCE"]
    assert await connector.resource(resource) is not None
    now = datetime.now(UTC)
    window = Window(now=now, past_start=now - timedelta(days=7), recurring_end=now + timedelta(days=30))
    records = (await connector.load(resource, frozenset(Kind) - {Kind.PUBLIC_CONTACT}, window)).records
    assert all(r.psa_key.partition(":")[2].isdigit() for r in records)
    assert connector.budget_status()["database"] is not None


@pytest.mark.skipif(os.environ.get(ENV + "WRITES") != "1", reason="sandbox writes not allowed")
async def test_sandbox_imported_appointment_round_trip() -> None:
    connector = _connector()
    resource = os.environ[ENV + "RESOURCE"]
    results = {r.subject: r for r in await connector.check([resource])}
    assert results["autotask login"].ok
    start = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    payload = Appointment("exchanged sandbox test", start, start + timedelta(hours=1), body="delete me")
    [created] = await connector.apply(
        [
            PsaWrite(
                "create",
                Kind.IMPORTED,
                None,
                payload,
                exchange_key="exchanged-sandbox-test",
                resource=resource,
            )
        ]
    )
    assert isinstance(created, PsaRecord) and created.exchange_key == "exchanged-sandbox-test"
    try:
        moved = replace(payload, start=start + timedelta(hours=1), end=start + timedelta(hours=2))
        [updated] = await connector.apply(
            [PsaWrite("update", Kind.IMPORTED, created.psa_key, moved, fields=("start", "end"))]
        )
        assert isinstance(updated, PsaRecord) and updated.payload == moved
    finally:
        assert list(await connector.apply([PsaWrite("delete", Kind.IMPORTED, created.psa_key, None)])) == [
            None
        ]
