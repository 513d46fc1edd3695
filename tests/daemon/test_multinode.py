"""Several nodes, end to end: two real daemons (``exchanged run``, each with its own control socket)
with the same users, the same EWS test server (TLS), the same sql PSA (SQLite) and one PostgreSQL
state store. Everything is checked from outside: exchangectl against each node, the items on the
EWS server read back per PSA key, the journal (``exchangectl history``), and each node's JSON log,
whose "cycle started" / "cycle done" lines bracket every cycle inside its lease.

The nodes run with ``EXCHANGED_LEASE_TTL_S`` = ``TTL_S`` (renewed every third of it), so that a
dead node's lease runs out within the test. The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from exchanged.testing.smtp import SmtpSink
from tests.conftest import fresh_schema
from tests.daemon.ews_daemon import add_psa_appointments
from tests.daemon.harness import DaemonEnv, NotifySocket, secret_file, wait_until
from tests.daemon.test_e2e_rules import ALICE, BOB, CAROL, World
from tests.reliability.harness import PASSWORD, SVC, duplicates, exchange_snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

USERS = (ALICE, BOB, CAROL)
TTL_S = 6.0  # the nodes' lease TTL: renewed every 2 s, a dead node's users free 6 s after its last renewal
SLOW_ROWS = 12  # new appointments of alice's slow cycle (test 2)
BULK = 300  # bob's appointments exported when node A is killed (test 3)
HANG_GUARD_S = 60.0  # only against a hung run; never asserted


@dataclass
class Node:
    """One daemon of the cluster, driven through its own control socket."""

    name: str
    env: DaemonEnv
    world: World
    killed_at: float | None = None  # wall clock of a kill -9: its last cycle ended there at the latest

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.world.ctl(*args)

    def sync(self, mailbox: str) -> dict[str, Any]:
        """``exchangectl sync MAILBOX --wait --json``: that user's outcome on this node."""
        done = self.ctl("sync", mailbox, "--wait", "--json")
        assert done.returncode == 0, done.stdout + done.stderr + self.env.stderr()[-3000:]
        return json.loads(done.stdout)["results"][mailbox]  # type: ignore[no-any-return]

    def user(self, mailbox: str) -> dict[str, Any]:
        done = self.ctl("status", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return next(u for u in json.loads(done.stdout)["users"] if u["mailbox"] == mailbox)

    def node_prefix(self) -> str:
        """The start of this process's node id (host:pid:random) as leases name it."""
        assert self.env.proc is not None
        return f"{socket.gethostname()}:{self.env.proc.pid}:"

    def cycles(self) -> list[tuple[str, str, float, float]]:
        """(mailbox, cycle_id, start, end) of every cycle in the log; a cycle cut short by kill -9
        ends at the kill."""
        started: dict[str, tuple[str, float]] = {}
        out = []
        for line in self.env.stderr().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or "cycle_id" not in event:
                continue
            at = datetime.fromisoformat(event["timestamp"]).timestamp()
            if event.get("event") == "cycle started":
                started[event["cycle_id"]] = (event["mailbox"], at)
            elif event.get("event") in ("cycle done", "cycle failed") and event["cycle_id"] in started:
                mailbox, start = started.pop(event["cycle_id"])
                out.append((mailbox, event["cycle_id"], start, at))
        for cycle_id, (mailbox, start) in started.items():
            assert self.killed_at is not None, f"{self.name}: cycle {cycle_id} never ended"
            out.append((mailbox, cycle_id, start, self.killed_at))
        return out


@dataclass
class Cluster:
    nodes: list[Node]
    ews: Any
    psa_dir: Any
    now: datetime
    pg_url: str
    smtp: SmtpSink
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def a(self) -> Node:
        return self.nodes[0]

    @property
    def b(self) -> Node:
        return self.nodes[1]

    def exchange(self) -> Any:
        return exchange_snapshot(self.ews, USERS)

    def keys(self, mailbox: str) -> list[str]:
        """The PSA keys of the items in ``mailbox`` (one entry per item)."""
        return [key for (box, _folder, key, _payload), n in self.exchange().items()
                if box == mailbox and key for _ in range(n)]

    def add_appointments(self, resource: int, first_id: int, count: int, title: str) -> list[str]:
        return add_psa_appointments(self.psa_dir, self.now, resource, first_id, count, title)

    def in_background(self, node: Node, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "exchanged.ctl", "--socket", str(node.env.socket_path),
                                 *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.background.append(proc)
        return proc

    def settle(self) -> None:
        """Wait until no node runs a cycle (the scheduled first ones included)."""
        for node in self.nodes:
            if node.killed_at is None:
                wait_until(lambda n=node: json.loads(n.ctl("status", "--json").stdout)["running"] == 0,
                           f"node {node.name} idle", HANG_GUARD_S)

    def overlapping_cycles(self) -> list[tuple[Any, ...]]:
        """Pairs of cycles of one user on different nodes whose times overlap."""
        spans = [(node.name, *cycle) for node in self.nodes for cycle in node.cycles()]
        return [(x, y) for i, x in enumerate(spans) for y in spans[i + 1:]
                if x[0] != y[0] and x[1] == y[1] and x[3] < y[4] and y[3] < x[4]]


@pytest.fixture(scope="module")
def pg_module_url(pg_server: str) -> Iterator[str]:
    """One fresh schema for the whole module (the ``pg_url`` fixture is per test)."""
    with fresh_schema(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_module_url: str) -> Iterator[Cluster]:
    from exchanged.psa.sample import seed_sample
    from exchanged.testing.ews import EwsTestServer
    from exchanged.testing.ews.streaming import StreamingLimits

    base = tmp_path_factory.mktemp("multinode")
    now = datetime.now(UTC).replace(microsecond=0)
    seed_sample(f"sqlite:///{base / 'psa.db'}", now)
    pw = secret_file(base / "ews-password", PASSWORD)
    nodes: list[Node] = []
    # no push and an hourly PSA probe: the tests time which node holds a user's lease, and a pushed
    # cycle after a node's own writes (or a probe's) would take it at a moment no test chooses
    with SmtpSink() as smtp, EwsTestServer(state_dir=str(base / "ews"), mailboxes=list(USERS),
                                           service_accounts={SVC: PASSWORD},
                                           streaming=StreamingLimits(max_connections=0)) as ews:
        try:
            for name in ("a", "b"):
                (base / name).mkdir()
                env = DaemonEnv(base=base / name, smtp=smtp, notify=NotifySocket(base / name / "notify.sock"))
                env.memory = False
                env.users = [{"mailbox": m, "psa_resource": str(i + 1)} for i, m in enumerate(USERS)]
                env.extra = {
                    "server": {"address": "localhost", "port": ews.port, "version": "Exchange2016",
                               "ca_bundle": ews.ca_file},
                    "credentials": {"username": SVC, "password_file": pw},
                    "psa": {"connector": "sql", "url": f"sqlite:///{base / 'psa.db'}"},
                    "state": {"url": pg_module_url},
                    "sync": {"max_deletes_per_cycle": 25, "psa_poll_seconds": 3600},
                }
                env.extra_env = {"EXCHANGED_LEASE_TTL_S": str(TTL_S)}
                nodes.append(Node(name, env, World(env, ews, now)))
            for node in nodes:  # both at once: they migrate the schema and race for the first user
                node.env.start()
            for node in nodes:
                node.env.notify.wait_for("READY=1")
            yield Cluster(nodes, ews, base, now, pg_module_url, smtp)
        finally:
            for node in nodes:
                node.env.kill()
                node.env.notify.close()


@pytest.fixture(autouse=True)
def _reap(cluster: Cluster) -> Iterator[None]:
    yield
    cluster.ews.set_faults(latency_ms=0)
    for proc in cluster.background:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    cluster.background.clear()


# ---------------------------------------------------------------------------------------------------


def test_first_export_on_both_nodes_creates_every_item_once(cluster: Cluster) -> None:
    # every user asked of both nodes at once (and alice's scheduled first cycle runs on both too)
    waits = [cluster.in_background(node, "sync", "--wait") for node in cluster.nodes]
    for proc in waits:
        assert proc.wait(timeout=HANG_GUARD_S) == 0
    results = {(node.name, m): node.user(m)["last_result"] for node in cluster.nodes for m in USERS}
    for mailbox in USERS:
        assert "ok" in (results[("a", mailbox)], results[("b", mailbox)]), results
    snapshot = cluster.exchange()
    assert duplicates(snapshot) == []
    history = json.loads(cluster.b.ctl("history", "--json").stdout)
    creates = [(e["mailbox"], e["key"]) for e in history
               if e["side"] == "exchange" and e["action"] == "create"]
    assert len(creates) == len(set(creates))
    for mailbox in (ALICE, BOB):  # carol's resource has nothing in the sample data
        keys = cluster.keys(mailbox)
        assert keys, mailbox
        assert sorted(keys) == sorted(k for m, k in creates if m == mailbox)
    assert cluster.overlapping_cycles() == []


def test_a_user_syncing_on_one_node_is_not_synced_by_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    cluster.settle()
    assert b.sync(ALICE)["result"] == "ok"  # B's own last view of alice predates A's next cycle
    keys = cluster.add_appointments(1, 20_000, SLOW_ROWS, "Slow")
    cluster.ews.set_faults(latency_ms=2500)  # every EWS answer: alice's cycle on A outlives a TTL
    cluster.in_background(a, "sync", ALICE, "--wait")
    wait_until(lambda: a.user(ALICE)["state"] == "syncing", "alice syncing on node A", HANG_GUARD_S)
    seen_at = time.monotonic()
    held = b.user(ALICE)
    assert held["state"] == "held_elsewhere", held
    assert held["held_by"]["node"].startswith(a.node_prefix()), held
    shown = b.ctl("status")
    row = next(line for line in shown.stdout.splitlines() if line.startswith(ALICE))
    assert "held_elsewhere by " + held["held_by"]["node"] in row, shown.stdout
    skipped = b.sync(ALICE)
    assert skipped["result"] == "skipped", skipped
    # still held once A's cycle has outlived the TTL: A renews its lease while it works
    wait_until(lambda: time.monotonic() - seen_at > TTL_S + 1, "a TTL to pass", HANG_GUARD_S)
    assert a.user(ALICE)["state"] == "syncing", "alice's cycle on A ended too soon to show the renewal"
    assert b.sync(ALICE)["result"] == "skipped"
    cluster.ews.set_faults(latency_ms=0)
    wait_until(lambda: a.user(ALICE)["state"] != "syncing", "alice's cycle on A to end", HANG_GUARD_S)
    assert a.user(ALICE)["last_result"] == "ok"
    free = b.user(ALICE)
    assert free["state"] != "held_elsewhere" and free["held_by"] is None, free
    writes = cluster.ews.stats()["requests"].get("CreateItem", 0)
    journal = b.ctl("history", ALICE, "--json").stdout
    after = b.sync(ALICE)  # carries on from what A committed: nothing to do again, nothing adopted
    assert after["result"] == "ok" and after["counts"]["exported"] == 0, after
    assert cluster.ews.stats()["requests"].get("CreateItem", 0) == writes
    assert b.ctl("history", ALICE, "--json").stdout == journal
    found = cluster.keys(ALICE)
    assert sorted(k for k in found if k in keys) == sorted(keys)
    assert duplicates(cluster.exchange()) == []
    assert cluster.overlapping_cycles() == []


def test_kill_9_of_the_syncing_node_hands_the_user_over_after_the_ttl(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    cluster.settle()
    keys = cluster.add_appointments(2, 30_000, BULK, "Bulk")
    cluster.ews.set_faults(latency_ms=300)  # the export of 3 CreateItem chunks takes a while
    cluster.in_background(a, "sync", BOB, "--wait")
    wait_until(lambda: a.user(BOB)["state"] == "syncing", "bob syncing on node A", HANG_GUARD_S)
    creates = cluster.ews.stats()["requests"].get("CreateItem", 0)  # the one cycle running is bob's
    # killed right after the first chunk's items exist in Exchange, in the middle of the export
    wait_until(lambda: cluster.ews.stats()["requests"].get("CreateItem", 0) > creates,
               "node A creating bob's appointments", HANG_GUARD_S)
    assert a.env.proc is not None
    prefix = a.node_prefix()
    a.env.kill()  # SIGKILL: its lease stays behind until it expires
    a.killed_at = time.time()
    cluster.ews.set_faults(latency_ms=0)
    held = b.user(BOB)
    assert held["state"] == "held_elsewhere" and held["held_by"]["node"].startswith(prefix), held
    assert b.sync(BOB)["result"] == "skipped"  # the dead node's lease has not run out yet
    made = [k for k in cluster.keys(BOB) if k in keys]
    assert 0 < len(made) < BULK  # really killed in the middle of the export
    taken = wait_until(lambda: (r := b.sync(BOB))["result"] != "skipped" and r, "node B to take bob over",
                       HANG_GUARD_S)
    assert taken["result"] == "ok", taken
    found = cluster.keys(BOB)
    assert sorted(k for k in found if k in keys) == sorted(keys)  # each exactly once, none lost
    # and journaled once: created by A (committed before the kill) or B, or adopted by B (created by
    # A whose state never committed it: B found it by its PSA key)
    history = json.loads(b.ctl("history", BOB, "--json").stdout)
    made_by = sorted(e["key"] for e in history
                     if e["key"] in keys and e["side"] == "exchange" and e["action"] in ("create", "adopt"))
    assert made_by == sorted(keys)
    assert duplicates(cluster.exchange()) == []
    assert b.user(BOB)["held_by"] is None
    writes = cluster.ews.stats()["requests"].get("CreateItem", 0)
    assert b.sync(BOB)["result"] == "ok"
    assert cluster.ews.stats()["requests"].get("CreateItem", 0) == writes
    assert cluster.overlapping_cycles() == []



def test_a_node_restarted_after_kill_9_takes_its_own_leases_back_at_once(cluster: Cluster) -> None:
    """Under systemd (StateDirectory=) a node keeps its name in the state directory: killed and
    started again it is the same node, so it renews the lease its dead process held instead of
    waiting the TTL out (120 s here: longer than this test), and the other node still keeps off."""
    a, b = cluster.a, cluster.b
    state_dir = cluster.psa_dir / "a" / "state"
    state_dir.mkdir()
    a.env.kill()  # node A of the tests before (or its corpse): it comes back with a state directory
    a.env.extra_env = {"EXCHANGED_LEASE_TTL_S": "120", "STATE_DIRECTORY": str(state_dir)}
    seen = len(a.env.notify.poll())
    a.env.start()
    a.env.notify.wait_for("READY=1", after=seen)
    a.killed_at = None
    cluster.settle()
    node = f"{socket.gethostname()}:{(state_dir / 'node-id').read_text().strip()}"
    keys = cluster.add_appointments(3, 40_000, 150, "Restart")
    cluster.ews.set_faults(latency_ms=300)
    cluster.in_background(a, "sync", CAROL, "--wait")
    wait_until(lambda: a.user(CAROL)["state"] == "syncing", "carol syncing on node A", HANG_GUARD_S)
    assert b.user(CAROL)["held_by"]["node"] == node
    a.env.kill()
    cluster.ews.set_faults(latency_ms=0)
    assert b.sync(CAROL)["result"] == "skipped"  # the dead process's lease: 120 s to go
    seen = len(a.env.notify.poll())
    a.env.start()
    a.env.notify.wait_for("READY=1", after=seen)
    again = a.sync(CAROL)  # the same node: its lease is its own, renewed, not waited out
    assert again["result"] == "ok", again
    assert sorted(k for k in cluster.keys(CAROL) if k in keys) == sorted(keys)
    assert duplicates(cluster.exchange()) == []
    held = b.user(CAROL)["held_by"]
    assert held is None or held["node"] == node
    assert b.sync(CAROL)["result"] in ("skipped", "ok")
