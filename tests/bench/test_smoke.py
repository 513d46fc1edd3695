"""CI smoke run of the benchmarks: `bench/run --smoke` (the --quick set at tiny sizes) runs to the
end and prints every figure as one JSON object per line. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "initial_export_requests", "noop_cycle_requests_per_user", "noop_cycle_cpu_ms_per_user",
    "engine_overhead_ratio", "users_per_node_at_10_min", "rss_mb_1000_users", "first_sync_items_per_s",
    "reload_ms_1000_users", "settled_export_requests", "quiet_mailbox_ews_requests_per_hour",
    "change_latency_exchange_to_psa_p95_s", "change_latency_psa_to_exchange_p95_s",
    "change_latency_psa_to_exchange_listen_p95_s",
    "graph_initial_export_requests", "graph_noop_cycle_requests_per_user",
}
HANG_GUARD_S = 600  # only against a hung run; never asserted as a speed


def test_bench_run_prints_every_figure_as_json_lines() -> None:
    env = {**os.environ, "EXCHANGED_BENCH_SMOKE": "1"}
    done = subprocess.run([str(ROOT / "bench" / "run"), "--quick"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    by_name = {line["name"]: line for line in lines}
    assert set(by_name) >= FIGURES, (FIGURES - set(by_name), done.stderr[-2000:])
    for name in FIGURES:
        figure = by_name[name]
        assert isinstance(figure["value"], int | float) and figure["value"] >= 0, figure
        assert figure["unit"], figure
    # inputs travel with the figures; a ratio carries both measured sides
    assert by_name["initial_export_requests"]["items"] > 0
    assert by_name["noop_cycle_requests_per_user"]["latency_ms"] == 20
    assert by_name["rss_mb_1000_users"]["users"] > 0
    ratio = by_name["engine_overhead_ratio"]
    assert ratio["exchanged_s"] > 0 and ratio["bare_exchangelib_s"] > 0
    assert ratio["bare_requests"] == ratio["exchanged_requests"]  # the same EWS calls on both sides
