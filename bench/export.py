"""In this process: first exports of N PSA appointments (``repeats`` of them, each to its own empty
mailbox, alternating with the bare exchangelib script), then cycles with nothing to do, through
the same adapters and runner the daemon builds from its config (real exchangelib, sql PSA in
SQLite, SQLite state), against the EWS test server in a child process at LAN latency.

Figures: initial_export_requests, settled_export_requests (the export plus the cycle after it),
first_sync_items_per_s, noop_cycle_requests_per_user,
noop_cycle_cpu_ms_per_user, engine_overhead_ratio (with bench.bare as the other side).
"""

from __future__ import annotations

import math
import statistics
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
    repeats: int = 3  # first exports per side (each into an empty mailbox): the ratio takes medians


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
    from exchanged.openers import Openers

    work = Workdir.make("export")
    ours = [mailbox_name(r) for r in range(sizes.repeats)]
    bare_mbs = [mailbox_name(sizes.repeats + r) for r in range(sizes.repeats)]
    ews = EwsProcess(work.path / "ews", ours + bare_mbs)
    try:
        # user r <-> PSA resource r + 1, each with its own N appointments and empty mailbox
        per_resource = {r + 1: sizes.items for r in range(sizes.repeats)}
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", ours, per_resource, utcnow())
        cfg = load_config(write_config(work.path, ews, ours))
        _quiet_logging(work.path / "daemon.log")
        openers = Openers()  # what the daemon opens and builds
        adapters = await openers.open(cfg)
        runner = openers.runner(cfg, adapters)

        async def cycle(user: Any, cid: str) -> Any:
            out = await runner.run_cycle(cfg, user, full=False, allow_deletes=False,
                                         progress=lambda done, total: None, cycle_id=cid)
            if out.result == "error":
                raise SystemExit(f"bench: cycle {cid} failed: {out.error}")
            return out

        ews.set_latency(LAN_LATENCY_MS)
        ours_s: list[float] = []
        bare_s: list[float] = []
        export_ops: dict[str, int] = {}
        bare_ops: dict[str, int] = {}
        for r, user in enumerate(cfg.users):
            note(f"first export {r + 1}/{sizes.repeats} of {sizes.items} appointments to {user.mailbox} "
                 f"(latency {LAN_LATENCY_MS} ms)")
            before = ews.requests()
            t0 = time.perf_counter()
            out = await cycle(user, f"bench-export-{r}")
            ours_s.append(time.perf_counter() - t0)
            export_ops = delta(ews.requests(), before)
            if out.counts.exported < sizes.items:
                raise SystemExit(f"bench: the export wrote {out.counts.exported} of {sizes.items} items")
            note("the same EWS calls from a bare exchangelib script, same server, same latency")
            seconds, bare_ops = await trio.to_thread.run_sync(bare.export, ews, bare_mbs[r], export_ops,
                                                              sizes.items)
            bare_s.append(seconds)
        note("the cycle after the last export (it sees its own creates)")
        before = ews.requests()
        await cycle(cfg.users[sizes.repeats - 1], "bench-settle")
        settle_ops = delta(ews.requests(), before)
        n_req = sum(export_ops.values())
        emit("settled_export_requests", n_req + sum(settle_ops.values()), "requests", items=sizes.items,
             latency_ms=LAN_LATENCY_MS, target=math.ceil(sizes.items / 100) + 10,
             export_requests_by_operation=export_ops, next_cycle_requests_by_operation=settle_ops)
        emit("initial_export_requests", n_req, "requests", items=sizes.items, latency_ms=LAN_LATENCY_MS,
             target=math.ceil(sizes.items / 100) + 10, requests_by_operation=export_ops)
        emit("first_sync_items_per_s", sizes.items / statistics.median(ours_s), "items/s", items=sizes.items,
             latency_ms=LAN_LATENCY_MS, wall_s=round(statistics.median(ours_s), 3),
             all_wall_s=[round(x, 3) for x in ours_s])

        user = cfg.users[0]
        note(f"{sizes.noop_cycles} cycles with nothing to do")
        await cycle(user, "bench-warm")  # the first after an export sees its own writes (and confirms them)
        await cycle(user, "bench-warm-2")  # and the first with nothing to do plans once
        before = ews.requests()
        c0, t0 = time.process_time(), time.perf_counter()
        for n in range(sizes.noop_cycles):
            out = await cycle(user, f"bench-noop-{n}")
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

        emit("engine_overhead_ratio", statistics.median(ours_s) / statistics.median(bare_s), "ratio",
             items=sizes.items, latency_ms=LAN_LATENCY_MS, runs=sizes.repeats,
             exchanged_s=round(statistics.median(ours_s), 3),
             bare_exchangelib_s=round(statistics.median(bare_s), 3),
             exchanged_all_s=[round(x, 3) for x in ours_s], bare_all_s=[round(x, 3) for x in bare_s],
             exchanged_requests=export_ops, bare_requests=bare_ops, target=1.25,
             measured="median wall time of each side's first exports, run alternately")
    finally:
        ews.stop()
        work.remove()


def run(sizes: ExportSizes) -> None:
    trio.run(_export_and_noop, sizes)
