"""In this process: a first export of N PSA appointments over Microsoft Graph, then cycles with
nothing to do, through the adapters and runner the daemon builds from a ``use_ms_graph`` config,
against the Graph test server (``python -m exchanged.testing.graph``) in a child process, with
Exchange Online's limit of 4 requests per mailbox at once applied to $batch parts.

Figures (issue 15): graph_initial_export_requests (Graph requests of the first cycle; target
``ceil(N/20) + 10``: writes go in $batches of 20) and graph_noop_cycle_requests_per_user (target:
at most one per folder synced). Token requests go to the sign-in endpoint and are not counted.
"""

from __future__ import annotations

import json
import math
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

from bench.common import Workdir, delta, emit, mailbox_name, note, seed_psa, utcnow

TENANT, APP, SECRET = "bench.example", "bench-app", "bench-S3cret"


@dataclass(frozen=True)
class GraphSizes:
    items: int
    noop_cycles: int


class GraphProcess:
    """``python -m exchanged.testing.graph`` as a child process, with its request counts."""

    def __init__(self, state_dir: Path, mailboxes: list[str]) -> None:
        args = [sys.executable, "-m", "exchanged.testing.graph", "--port", "0", "--state-dir", str(state_dir),
                "--tenant", TENANT, "--client", f"{APP}:{SECRET}"]
        for m in mailboxes:
            args += ["--mailbox", m]
        self._log = (state_dir.parent / "graph-server.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench: the Graph test server did not start (log: {self._log.name})")
        info = json.loads(line)
        self.url, self.login_url, self.ca_file = info["url"], info["login_url"], info["ca_file"]
        self._ctx = ssl.create_default_context(cafile=self.ca_file)

    def graph_requests(self) -> dict[str, int]:
        """Requests to Graph (``/v1.0/...``) by pattern; a $batch counts once."""
        with urllib.request.urlopen(f"{self.url}/__emulator/stats", context=self._ctx, timeout=60) as resp:
            stats = json.loads(resp.read())
        return {k: v for k, v in stats["requests"].items() if " /v1.0/" in k}

    def exchange_online_limits(self) -> None:
        """Exchange Online's 4 requests per mailbox at once, counted for $batch parts too."""
        req = urllib.request.Request(f"{self.url}/__emulator/faults", method="POST",
                                     data=json.dumps({"batch_mailbox_concurrency": 4}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self._ctx, timeout=60):
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _config(base: Path, graph: GraphProcess, mailboxes: list[str]) -> Path:
    secret = base / "graph-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    cfg: dict[str, Any] = {
        "enabled": True, "profile_name": "bench-graph",
        "server": {"address": "outlook.office365.com", "use_ms_graph": True, "graph_url": graph.url,
                   "login_url": graph.login_url, "ca_bundle": graph.ca_file},
        "sync_interval_minutes": 10,
        "credentials": {"local_setup_basic_auth": False, "tenant_id": TENANT, "client_id": APP,
                        "client_secret_file": str(secret)},
        "users": [{"mailbox": m, "psa_resource": str(i + 1)} for i, m in enumerate(mailboxes)],
        "psa": {"connector": "sql", "url": f"sqlite:///{base / 'psa.db'}"},
        "state": {"url": f"sqlite:///{base / 'state.db'}"},
        "control": {"socket": str(base / "control.sock"), "group": None},
        "logging": {"format": "json"},
    }
    path = base / "exchanged.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


async def _export_and_noop(sizes: GraphSizes) -> None:
    from exchanged.config import load_config
    from exchanged.openers import Openers

    work = Workdir.make("graph")
    mailbox = mailbox_name(0)
    (work.path / "graph").mkdir()
    graph = GraphProcess(work.path / "graph", [mailbox])
    try:
        graph.exchange_online_limits()
        seed_psa(f"sqlite:///{work.path / 'psa.db'}", [mailbox], {1: sizes.items}, utcnow())
        cfg = load_config(_config(work.path, graph, [mailbox]))
        openers = Openers()
        adapters = await openers.open(cfg)
        runner = openers.runner(cfg, adapters)
        user = cfg.users[0]

        async def cycle(cid: str) -> Any:
            out = await runner.run_cycle(cfg, user, full=False, allow_deletes=False,
                                         progress=lambda done, total: None, cycle_id=cid)
            if out.result == "error":
                raise SystemExit(f"bench: cycle {cid} failed: {out.error}")
            return out

        note(f"first export of {sizes.items} appointments over Graph")
        before = graph.graph_requests()
        out = await cycle("graph-export")
        if out.counts.exported < sizes.items:
            raise SystemExit(f"bench: the export wrote {out.counts.exported} of {sizes.items} items")
        export_ops = delta(graph.graph_requests(), before)
        emit("graph_initial_export_requests", sum(export_ops.values()), "requests", items=sizes.items,
             target=math.ceil(sizes.items / 20) + 10, requests_by_operation=export_ops)

        await cycle("graph-settle")  # the first after an export sees its own writes
        await cycle("graph-warm")
        note(f"{sizes.noop_cycles} cycles with nothing to do over Graph")
        before = graph.graph_requests()
        for n in range(sizes.noop_cycles):
            out = await cycle(f"graph-noop-{n}")
            if out.counts.exported or out.counts.updated or out.counts.deleted or out.counts.imported:
                raise SystemExit(f"bench: a cycle meant to have nothing to do wrote: {out.counts}")
        noop_ops = delta(graph.graph_requests(), before)
        folders = 3  # calendar, contacts, To Do (every kind on)
        emit("graph_noop_cycle_requests_per_user", sum(noop_ops.values()) / sizes.noop_cycles, "requests",
             users=1, cycles=sizes.noop_cycles, folders=folders, target=folders,
             requests_by_operation={k: v / sizes.noop_cycles for k, v in noop_ops.items()})
        await adapters.aclose()
    finally:
        graph.stop()
        work.remove()


def run(sizes: GraphSizes) -> None:
    trio.run(_export_and_noop, sizes)
