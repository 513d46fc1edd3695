"""Metrics in the Prometheus text format, produced by ``prometheus_client`` (no hand-written
exposition).

The daemon keeps plain numbers (``Snapshot``); ``MetricsCollector`` turns a fresh snapshot into
metric families at every collection, so ``exchangectl metrics`` (the control method ``metrics``)
and the textfile written after each cycle (``metrics.textfile``, for node_exporter's textfile
collector, written atomically by ``prometheus_client.write_to_textfile``) show the same numbers.
Counters count since the daemon's start (a restart resets them, which Prometheus' ``rate()``
handles); the request counters of an adapter count since that adapter was opened (a reload that
opens a new one resets them).

=============================================  =====================================================
metric                                         what
=============================================  =====================================================
``exchanged_cycles_total{result}``             cycles by result: ok, partial, held_back, error, skipped
``exchanged_last_success_timestamp_seconds``   per ``mailbox``: the end of its last successful cycle
``exchanged_items_written_total{kind,side}``   items created/updated/deleted, by kind and side
                                               (``exchange`` / ``psa``)
``exchanged_requests_total{service,operation}``  requests sent, e.g. ``ews`` / ``SyncFolderItems``
                                               (the ``sql`` PSA: transactions, e.g. ``sql`` / ``load``)
``exchanged_throttle_waits_total{service}``    times a request had to wait for a back-off
``exchanged_deletions_held_back{mailbox}``     deletions held back by the last cycle (guard)
``exchanged_config_generation``                the running config generation (1 + applied reloads)
``exchanged_config_generation_age_seconds``    seconds since that generation was loaded
``exchanged_users{state}``                     users by state (idle, syncing, error, paused, ...)
``exchanged_exchange_reachable``               1 / 0 (absent while unknown)
=============================================  =====================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exchanged.model import CycleOutcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Snapshot:
    cycles: dict[str, int] = field(default_factory=dict)  # result -> cycles
    last_success: dict[str, float] = field(default_factory=dict)  # mailbox -> unix time
    written: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, side) -> items
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, operation) -> n
    throttle_waits: dict[str, int] = field(default_factory=dict)  # service -> waits
    held_back: dict[str, int] = field(default_factory=dict)  # mailbox -> deletions held back
    users: dict[str, int] = field(default_factory=dict)  # state -> users
    config_generation: int = 1
    config_loaded_at: float = 0.0  # unix time
    exchange_reachable: bool | None = None
    now: float = field(default_factory=time.time)


class MetricsCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        cycles = CounterMetricFamily("exchanged_cycles", "Sync cycles by result", labels=["result"])
        for result in sorted(s.cycles):
            cycles.add_metric([result], s.cycles[result])
        yield cycles
        last = GaugeMetricFamily("exchanged_last_success_timestamp_seconds",
                                 "End of the last successful cycle per mailbox (Unix time)",
                                 labels=["mailbox"])
        for mailbox in sorted(s.last_success):
            last.add_metric([mailbox], s.last_success[mailbox])
        yield last
        written = CounterMetricFamily("exchanged_items_written",
                                      "Items created, updated or deleted, by kind and side",
                                      labels=["kind", "side"])
        for kind, side in sorted(s.written):
            written.add_metric([kind, side], s.written[(kind, side)])
        yield written
        requests = CounterMetricFamily("exchanged_requests", "Requests sent, by service and operation",
                                       labels=["service", "operation"])
        for service, operation in sorted(s.requests):
            requests.add_metric([service, operation], s.requests[(service, operation)])
        yield requests
        waits = CounterMetricFamily("exchanged_throttle_waits",
                                    "Requests that waited for a throttling back-off", labels=["service"])
        for service in sorted(s.throttle_waits):
            waits.add_metric([service], s.throttle_waits[service])
        yield waits
        held = GaugeMetricFamily("exchanged_deletions_held_back",
                                 "Deletions held back by the last cycle of the mailbox",
                                 labels=["mailbox"])
        for mailbox in sorted(s.held_back):
            held.add_metric([mailbox], s.held_back[mailbox])
        yield held
        users = GaugeMetricFamily("exchanged_users", "Users by state", labels=["state"])
        for state in sorted(s.users):
            users.add_metric([state], s.users[state])
        yield users
        yield GaugeMetricFamily("exchanged_config_generation", "The running config generation",
                                value=s.config_generation)
        yield GaugeMetricFamily("exchanged_config_generation_age_seconds",
                                "Seconds since the running config generation was loaded",
                                value=max(0.0, s.now - s.config_loaded_at))
        if s.exchange_reachable is not None:
            yield GaugeMetricFamily("exchanged_exchange_reachable", "1 when Exchange answered lately",
                                    value=1 if s.exchange_reachable else 0)


def _registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(snapshot))
    return registry


def render(snapshot: Callable[[], Snapshot]) -> str:
    """The Prometheus text exposition of one snapshot."""
    return generate_latest(_registry(snapshot)).decode("utf-8")


def write_textfile(path: str, snapshot: Callable[[], Snapshot]) -> None:
    """Write the metrics to ``path`` atomically (a temporary file renamed over it; blocking)."""
    write_to_textfile(path, _registry(snapshot))


@dataclass(slots=True)
class CycleCounters:
    """What the daemon counts since its start from its cycles' outcomes (for ``Snapshot``), and
    the ``metrics.textfile`` written after each cycle."""

    cycles: dict[str, int] = field(default_factory=dict)  # by result
    written: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, side) -> writes
    held_back: dict[str, int] = field(default_factory=dict)  # mailbox -> deletes held back
    textfile_failed: bool = False  # the last write of the textfile failed (warned once per run)

    def count(self, mailbox: str, outcome: CycleOutcome) -> None:
        self.cycles[outcome.result] = self.cycles.get(outcome.result, 0) + 1
        for slot, n in outcome.written.items():
            self.written[slot] = self.written.get(slot, 0) + n
        if outcome.result != "error":
            self.held_back[mailbox] = outcome.held_back_deletes

    async def write_textfile(self, path: str, snapshot: Snapshot) -> None:
        """``write_textfile`` in a worker thread; a failure is logged once per run of failures."""
        import structlog
        import trio

        try:
            await trio.to_thread.run_sync(write_textfile, path, lambda: snapshot)
        except OSError as exc:
            if not self.textfile_failed:  # once per run of failures, not once per cycle
                structlog.get_logger("exchanged.daemon").warning(
                    "cannot write metrics.textfile", path=path, error=str(exc))
            self.textfile_failed = True
        else:
            self.textfile_failed = False


__all__ = ["CONTENT_TYPE", "CycleCounters", "MetricsCollector", "Snapshot", "render", "write_textfile"]
