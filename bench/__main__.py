"""``bench/run [--quick | --smoke] [--only GROUP]``: every figure of issue 6, one JSON object per line.

Sizes: the default is the full set (5,000 items, 1,000 users); ``--quick`` keeps 1,000 users but
exports 1,000 items (under 5 minutes on 2 cores); ``--smoke`` (or ``EXCHANGED_BENCH_SMOKE=1``) uses
tiny sizes so that a CI run checks only that every figure is produced. Figures never pass or fail
here: the targets are printed next to them and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench import export, graph, node, push
from bench.common import emit, machine, note

SIZES = {
    "full": (export.ExportSizes(items=5000, noop_cycles=200),
             node.NodeSizes(users=1000, items_per_user=2, reloads=5)),
    "quick": (export.ExportSizes(items=1000, noop_cycles=50),
              node.NodeSizes(users=1000, items_per_user=2, reloads=3)),
    "smoke": (export.ExportSizes(items=30, noop_cycles=3, repeats=1),
              node.NodeSizes(users=5, items_per_user=1, reloads=1)),
}
GRAPH_SIZES = {"full": graph.GraphSizes(items=5000, noop_cycles=50),
               "quick": graph.GraphSizes(items=1000, noop_cycles=20),
               "smoke": graph.GraphSizes(items=30, noop_cycles=2)}
PUSH_SIZES = {"full": push.PushSizes(mailboxes=100, quiet_minutes=20, edits=20),
              "quick": push.PushSizes(mailboxes=100, quiet_minutes=10, edits=20),
              "smoke": push.PushSizes(mailboxes=5, quiet_minutes=0.2, edits=3, stagger_s=0.5,
                                      psa_poll_seconds=5)}
GROUPS = ("export", "node", "graph", "push", "listen")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0] if __doc__ else None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller export (1,000 items); < 5 min on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every figure is produced")
    p.add_argument("--only", choices=GROUPS, action="append", help="run only this group (repeatable)")
    args = p.parse_args(argv)
    size = "smoke" if args.smoke or os.environ.get("EXCHANGED_BENCH_SMOKE") == "1" else \
        "quick" if args.quick else "full"
    export_sizes, node_sizes = SIZES[size]
    groups = args.only or list(GROUPS)
    emit("machine", 0, "info", size=size, **machine())
    t0 = time.monotonic()
    if "export" in groups:
        export.run(export_sizes)
    if "node" in groups:
        node.run(node_sizes)
    if "graph" in groups:
        graph.run(GRAPH_SIZES[size])
    if "push" in groups:
        push.run(PUSH_SIZES[size])
    if "listen" in groups:
        push.run_listen(PUSH_SIZES[size])
    note(f"done in {time.monotonic() - t0:.0f} s ({size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
