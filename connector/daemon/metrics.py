"""`GET /metrics`: every figure is read from the state store at scrape time, not kept in this process.

So the figures survive a restart, agree between two daemons on one store, and count what a
`reconcile --once` or a person's CLI command did too. Counters come from the append-only
audit log, read incrementally (each scrape reads only the entries added since the last
one); gauges and the revoke-time histogram are one grouped query each.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..reconcile.leases import daemon_of, kind_of
from ..store import Store, now

#: seconds from due to revoke complete: a minute is the goal, a day is a failure
REVOKE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 86400)
OPEN = ("due", "restricted", "in_progress", "held", "needs_human")
OUTCOME_EVENTS = {f"action_{o}": o for o in ("changed", "unchanged", "planned", "skipped", "failed", "needs_human",
                                            "pending")}


class StoreCollector(Collector):
    def __init__(self, store: Store, extra: Callable[[], Iterable[Metric]] = lambda: ()):
        self.store = store
        self.extra = extra
        self._lock = threading.Lock()
        self._seen = 0
        self._actions: Counter = Counter()
        self._errors: Counter = Counter()

    def _read_audit(self) -> None:
        with self._lock:
            while batch := self.store.audit_after(self._seen):
                for entry in batch:
                    outcome = OUTCOME_EVENTS.get(entry["event"])
                    data = entry["data"]
                    if outcome:
                        self._actions[(data.get("provider", ""), data.get("action", ""), outcome)] += 1
                        if data.get("error"):
                            self._errors[(data.get("provider", ""), data["error"])] += 1
                self._seen = batch[-1]["seq"]

    def collect(self) -> Iterable[Metric]:
        self._read_audit()
        states = GaugeMetricFamily("offboard_terminations", "Terminations by tenant and state",
                                   labels=["tenant", "state"])
        for tenant, state, count in self.store.state_counts():
            states.add_metric([tenant, state], count)
        yield states
        actions = CounterMetricFamily("offboard_actions", "Action outcomes journaled, by provider and action",
                                      labels=["provider", "action", "outcome"])
        errors = CounterMetricFamily("offboard_provider_errors", "Provider errors by class",
                                     labels=["provider", "error"])
        with self._lock:
            for labels, count in sorted(self._actions.items()):
                actions.add_metric(list(labels), count)
            for labels, count in sorted(self._errors.items()):
                errors.add_metric(list(labels), count)
        yield actions
        yield errors
        durations = self.store.revoke_durations()
        buckets = [(str(b), sum(d <= b for d in durations)) for b in REVOKE_BUCKETS] + [("+Inf", len(durations))]
        yield HistogramMetricFamily("offboard_revoke_seconds", "Seconds from a termination becoming due to its "
                                    "revoke phase complete", buckets=buckets, sum_value=sum(durations))
        oldest = self.store.oldest_open_due(OPEN)
        yield GaugeMetricFamily("offboard_oldest_open_termination_seconds",
                                "Age (since it became due) of the oldest termination not yet done",
                                value=(now() - oldest).total_seconds() if oldest else 0)
        held = Counter((daemon_of(lease["owner"]), kind_of(lease["key"])) for lease in self.store.live_leases())
        leases = GaugeMetricFamily("offboard_leases_held", "Leases not yet expired, by the daemon (host:pid) holding "
                                   "them and what they guard", labels=["daemon", "kind"])
        for labels, count in sorted(held.items()):
            leases.add_metric(list(labels), count)
        yield leases
        yield from self.extra()


def registry(store: Store, extra: Callable[[], Iterable[Metric]] = lambda: ()) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(StoreCollector(store, extra))
    return reg
