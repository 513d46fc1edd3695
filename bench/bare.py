"""The other side of ``engine_overhead_ratio``: a bare exchangelib script that issues the same EWS
calls as exchanged's first export (same operations, same counts, same batch sizes, same item
fields and extended property), with no engine, PSA or state store behind it.

It runs as its own process (``python -m bench.bare``), so nothing of exchanged's set-up is shared;
it measures its wall time from the first request to the last answer and prints ``{"wall_s": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import PASSWORD, SERVICE_ACCOUNT, EwsProcess

FIND_CHUNK = 50  # keys per FindItem restriction, as the adapter sends them
GET_CHUNK = 50


def export(ews: EwsProcess, mailbox: str, ops: dict[str, int], items: int) -> tuple[float, dict[str, int]]:
    """Run the bare script against ``ews``; returns its wall time in seconds and the requests it
    made in that time."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.bare", "--url", ews.url, "--ca-file", ews.ca_file, "--mailbox", mailbox,
         "--ops", json.dumps(ops), "--items", str(items)],
        capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: the bare exchangelib script failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return float(answer["wall_s"]), dict(answer["requests"])


def _spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal sizes (the batch sizes of ``parts`` requests)."""
    if parts <= 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if n < extra else 0) for n in range(parts)]


def _stats(url: str, ca_file: str) -> dict[str, int]:
    import ssl
    import urllib.request

    base = url.split("/EWS/")[0]
    ctx = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(f"{base}/__emulator/stats", context=ctx, timeout=60) as resp:
        return dict(json.loads(resp.read())["requests"])


def main(argv: list[str] | None = None) -> int:
    from exchangelib import IMPERSONATION, Account, CalendarItem, Configuration, Credentials, Q
    from exchangelib.errors import ErrorItemNotFound
    from exchangelib.extended_properties import ExtendedProperty
    from exchangelib.properties import DistinguishedFolderId, Mailbox, UserConfigurationNameMNS
    from exchangelib.protocol import BaseProtocol
    from exchangelib.services import GetUserConfiguration

    from exchanged.testing.ews import ca_adapter_class

    p = argparse.ArgumentParser(prog="python -m bench.bare")
    p.add_argument("--url", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--mailbox", required=True)
    p.add_argument("--ops", required=True, help="JSON {operation: count} to issue")
    p.add_argument("--items", type=int, required=True)
    args = p.parse_args(argv)
    ops: dict[str, int] = json.loads(args.ops)

    class BenchKey(ExtendedProperty):
        property_set_id = "c11ff724-aa03-4555-9952-8fa248a11c3e"
        property_name = "BenchKey"
        property_type = "String"

    CalendarItem.register("bench_key", BenchKey)
    BaseProtocol.HTTP_ADAPTER_CLS = ca_adapter_class(args.ca_file)
    config = Configuration(service_endpoint=args.url, credentials=Credentials(SERVICE_ACCOUNT, PASSWORD),
                           auth_type="basic", max_connections=4)
    account = Account(args.mailbox, config=config, autodiscover=False, access_type=IMPERSONATION,
                      default_timezone=None)
    folders = [account.calendar, account.tasks, account.contacts]  # GetFolder: not counted below
    day = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(days=1)
    keys = [f"appointment:{n + 1}" for n in range(args.items)]

    # one-time set-up outside the timed part, as exchanged's account warms up before its cycle:
    # folder ids, server version, a connection in the pool
    for f in folders:
        f.refresh()
    list(account.calendar.filter(Q(bench_key__in=["warm-up"])).only("id"))
    before = _stats(args.url, args.ca_file)
    t0 = time.perf_counter()
    for _ in range(ops.get("GetUserConfiguration", 0)):  # the mailbox's time zone, as exchanged reads it
        name = UserConfigurationNameMNS(name="OWA.UserOptions", folder=DistinguishedFolderId(
            id="root", mailbox=Mailbox(email_address=args.mailbox)))
        with contextlib.suppress(ErrorItemNotFound):
            GetUserConfiguration(account=account).get(user_configuration_name=name, properties="Dictionary")
    for n in range(ops.get("SyncFolderItems", 0)):
        list(folders[n % len(folders)].sync_items(only_fields=["id"], max_changes_returned=512))
    creates = _spread(len(keys), ops.get("CreateItem", 0))  # items per CreateItem
    finds = _spread(ops.get("FindItem", 0), len(creates))  # FindItems before each CreateItem
    gets = _spread(ops.get("GetItem", 0), len(creates))  # GetItems after each CreateItem
    created = 0
    first = 0
    for batch, n_find, n_get in zip(creates, finds, gets, strict=True):
        chunk = list(range(first, first + batch))
        first += batch
        for f in range(n_find):  # adoption check: items that already carry these keys
            wanted = [keys[n] for n in chunk[f * FIND_CHUNK:(f + 1) * FIND_CHUNK]] or keys[:1]
            list(account.calendar.filter(Q(bench_key__in=wanted)).only("id", "changekey", "bench_key"))
        new = []
        for n in chunk:
            start = day + timedelta(days=n // 8, hours=n % 8)
            new.append(CalendarItem(account=account, folder=account.calendar, subject=f"Appointment {n}",
                                    body=f"Bench appointment {n}", start=start,
                                    end=start + timedelta(minutes=45), categories=["PSA"],
                                    legacy_free_busy_status="Busy", bench_key=keys[n]))
        answers = account.bulk_create(folder=account.calendar, items=new, message_disposition="SaveOnly",
                                      send_meeting_invitations="SendToNone", chunk_size=max(1, len(new)))
        ids = [(a.id, a.changekey) for a in answers if not isinstance(a, Exception)]
        created += len(ids)
        for g in range(n_get):  # read back what the server holds
            part = ids[g * GET_CHUNK:(g + 1) * GET_CHUNK] or ids[:1]
            list(account.fetch(ids=part))
    wall = time.perf_counter() - t0
    after = _stats(args.url, args.ca_file)
    timed = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    print(json.dumps({"wall_s": wall, "created": created, "requests": timed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
