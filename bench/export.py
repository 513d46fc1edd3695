"""One mailbox, in this process: the first export of N PSA appointments, then cycles with nothing
to do, through the same adapters and runner the daemon builds from its config (real exchangelib,
sql PSA in SQLite, SQLite state), against the EWS test server in a child process at LAN latency.

Figures: initial_export_requests, first_sync_items_per_s, noop_cycle_requests_per_user,
noop_cycle_cpu_ms_per_user, engine_overhead_ratio (with bench.bare as the other side).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import trio

from bench import bare
from bench.common import (
    LAN_LATENCY_MS,
    EwsProcess,
    Workdir,
    delta,
    emit,
    mailbox_name,
    note,
    seed_psa,
    utcnow,
    write_config,
)


@dataclass(frozen=True)
class ExportSizes:
    items: int
    noop_cycles: int


def _quiet_logging(path: Any) -> None:
    """The daemon's own JSON logging, written to a file so that stdout carries only figures."""
    from exchanged.logs import configure_logging

    saved = sys.stderr
    sys.stderr = path.open("a")  # configure_logging binds sys.stderr as it is now
    try:
        configure_logging("json", "info")
    finally:
        sys.stderr = saved


async def _export_and_noop(sizes: ExportSizes) -> None:
    from exchanged.config import load_config
    from exchanged.daemon import make_runner, open_adapters

    work = Workdir.make("export")
    mb, bare_mb = mailbox_name(0), mailbox_name(1)
    ews = EwsProcess(work.path / "ews", [mb, bare_mb])
    try:
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", [mb], {1: sizes.items}, utcnow())
        cfg = load_config(write_config(work.path, ews, [mb]))
        _quiet_logging(work.path / "daemon.log")
        adapters = await open_adapters(cfg)
        runner = make_runner(cfg, adapters)
        user = cfg.users[0]

        async def cycle(cid: str) -> Any:
            out = await runner.run_cycle(cfg, user, full=False, allow_deletes=False,
                                         progress=lambda done, total: None, cycle_id=cid)
            if out.result == "error":
                raise SystemExit(f"bench: cycle {cid} failed: {out.error}")
            return out

        ews.set_latency(LAN_LATENCY_MS)
        note(f"first export of {sizes.items} appointments to {mb} (latency {LAN_LATENCY_MS} ms)")
        before = ews.requests()
        t0 = time.perf_counter()
        out = await cycle("bench-export")
        ours_s = time.perf_counter() - t0
        export_ops = delta(ews.requests(), before)
        n_req = sum(export_ops.values())
        if out.counts.exported < sizes.items:
            raise SystemExit(f"bench: the export wrote {out.counts.exported} of {sizes.items} items")
        emit("initial_export_requests", n_req, "requests", items=sizes.items, latency_ms=LAN_LATENCY_MS,
             target=math.ceil(sizes.items / 100) + 10, requests_by_operation=export_ops)
        emit("first_sync_items_per_s", sizes.items / ours_s, "items/s", items=sizes.items,
             latency_ms=LAN_LATENCY_MS, wall_s=round(ours_s, 3))

        note(f"{sizes.noop_cycles} cycles with nothing to do")
        await cycle("bench-warm")  # the first after an export may still see its own writes
        before = ews.requests()
        c0, t0 = time.process_time(), time.perf_counter()
        for n in range(sizes.noop_cycles):
            out = await cycle(f"bench-noop-{n}")
            if out.counts.exported or out.counts.updated or out.counts.deleted or out.counts.imported:
                raise SystemExit(f"bench: a cycle meant to have nothing to do wrote: {out.counts}")
        cpu_s, wall_s = time.process_time() - c0, time.perf_counter() - t0
        noop_ops = delta(ews.requests(), before)
        emit("noop_cycle_requests_per_user", sum(noop_ops.values()) / sizes.noop_cycles, "requests",
             users=1, cycles=sizes.noop_cycles, latency_ms=LAN_LATENCY_MS, kinds="all",
             requests_by_operation={k: v / sizes.noop_cycles for k, v in noop_ops.items()}, target=3)
        emit("noop_cycle_cpu_ms_per_user", cpu_s * 1000 / sizes.noop_cycles, "ms", users=1,
             cycles=sizes.noop_cycles, latency_ms=LAN_LATENCY_MS, items_in_mailbox=sizes.items,
             wall_ms_per_cycle=round(wall_s * 1000 / sizes.noop_cycles, 1), target=25)
        await adapters.aclose()

        note("the same EWS calls from a bare exchangelib script, same server, same latency")
        bare_s, bare_ops = await trio.to_thread.run_sync(bare.export, ews, bare_mb, export_ops, sizes.items)
        emit("engine_overhead_ratio", ours_s / bare_s, "ratio", items=sizes.items,
             latency_ms=LAN_LATENCY_MS, exchanged_s=round(ours_s, 3), bare_exchangelib_s=round(bare_s, 3),
             exchanged_requests=export_ops, bare_requests=bare_ops, target=1.25)
    finally:
        ews.stop()
        work.remove()


def run(sizes: ExportSizes) -> None:
    trio.run(_export_and_noop, sizes)
