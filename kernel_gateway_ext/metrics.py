"""Prometheus metrics, in a registry per gateway (tests run several gateways in one process)."""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

MAX_COUNTED_SESSIONS = 100_000

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_created = Counter("kernelcube_sessions_created", "Sessions created",
                                        ["template"], registry=self.registry)
        self.sessions_ended = Counter("kernelcube_sessions_ended", "Sessions ended, by reason",
                                      ["template", "reason"], registry=self.registry)
        self.claim_seconds = Histogram("kernelcube_claim_seconds", "Time to claim a sandbox for a new session",
                                       ["template", "path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.execute_seconds = Histogram("kernelcube_execute_seconds", "Execute round trip through the gateway",
                                         ["face", "language"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.sandbox_start_seconds = Histogram("kernelcube_sandbox_start_seconds",
                                               "Time to start a sandbox until its kernel answered",
                                               ["template"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.sandbox_start_failures = Counter("kernelcube_sandbox_start_failures",
                                              "Sandboxes that failed to start", ["template"],
                                              registry=self.registry)
        self.kernel_starts = Counter("kernelcube_kernel_starts",
                                     "Warm kernels started, by template and how: 'zygote' (forked from the "
                                     "zygote of its Python and preload) or 'spawn' (no zygote, or it could not "
                                     "give one: the gateway's log says why)", ["template", "source"],
                                     registry=self.registry)
        self.preload_failures = Counter("kernelcube_preload_failures",
                                        "Sandboxes whose preload failed, by template and module ('(code)': "
                                        "its startup code); they serve without it", ["template", "module"],
                                        registry=self.registry)

        self.sessions_active = Gauge("kernelcube_sessions_active",
                                     "Sessions in the session store, by template, counted at scrape time "
                                     "(replicas sharing a store all report the same number)",
                                     ["template"], registry=self.registry)

    def watch_pools(self, pools: dict) -> None:
        self.registry.register(_PoolCollector(pools))

    def watch_body_budget(self, budget) -> None:
        self.registry.register(_BudgetCollector(budget))

    async def count_sessions(self, store, templates) -> None:
        """Refresh the active-sessions gauge from the store (the truth), every template shown."""
        counts = collections.Counter(r.template for r in await store.list(limit=MAX_COUNTED_SESSIONS))
        for name in {*templates, *counts}:
            self.sessions_active.labels(name).set(counts.get(name, 0))


class _PoolCollector:
    """Pool depth read at scrape time, so the numbers are never stale."""

    def __init__(self, pools: dict):
        self.pools = pools

    def collect(self):
        ready = GaugeMetricFamily("kernelcube_pool_ready", "Ready sandboxes in the warm pool", labels=["template"])
        creating = GaugeMetricFamily("kernelcube_pool_creating", "Sandboxes being started", labels=["template"])
        waiting = GaugeMetricFamily("kernelcube_pool_waiters", "Claims waiting for a sandbox", labels=["template"])
        for name, pool in self.pools.items():
            ready.add_metric([name], len(pool.ready))
            creating.add_metric([name], pool.creating)
            waiting.add_metric([name], pool.waiting)
        return [ready, creating, waiting]


class _BudgetCollector:
    def __init__(self, budget):
        self.budget = budget

    def collect(self):
        held = GaugeMetricFamily("kernelcube_request_body_bytes",
                                 "Bytes of request bodies held in memory (reserved), all requests together")
        held.add_metric([], self.budget.held)
        return [held]
