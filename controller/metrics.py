"""Prometheus metrics of the controller, in a registry of its own (one per controller object).

Names follow upstream agent-sandbox where it has one, so its dashboards keep working:
claim startup latency (claim first seen → Ready) and its client-side twin (from the SDK's
`client-first-requested-at`), warm-pool depth, and reconcile errors per kind.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_MS_BUCKETS = (5, 10, 25, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000, 30000, 60000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.claim_latency = Histogram(
            "agent_sandbox_claim_controller_startup_latency_ms",
            "Claim first seen by the controller until its Ready status is written, in ms",
            ["launch_type"], buckets=_MS_BUCKETS, registry=self.registry)
        self.client_claim_latency = Histogram(
            "agent_sandbox_client_claim_startup_latency_ms",
            "Claim requested by the client (annotation) until Ready, in ms",
            ["launch_type"], buckets=_MS_BUCKETS, registry=self.registry)
        self.claims_total = Counter(
            "agent_sandbox_claim_creation_total", "Claims bound and Ready",
            ["launch_type"], registry=self.registry)
        self.pool_ready = Gauge(
            "kernelcube_warmpool_ready_replicas", "Ready members of a warm pool",
            ["namespace", "pool"], registry=self.registry)
        self.pool_replicas = Gauge(
            "kernelcube_warmpool_replicas", "Members (not terminating) of a warm pool",
            ["namespace", "pool"], registry=self.registry)
        self.reconcile_errors = Counter(
            "kernelcube_reconcile_errors_total", "Reconciles that failed", ["kind"],
            registry=self.registry)
        # Session garbage collection (controller.gc).
        self.gc_sessions = Counter(
            "kernelcube_gc_sessions_total", "Sessions collected (workload and record deleted)",
            ["reason"], registry=self.registry)  # idle | expired
        self.gc_workloads = Counter(
            "kernelcube_gc_workloads_deleted_total", "Sandboxes and SandboxClaims deleted by GC",
            ["kind", "reason"], registry=self.registry)  # reason: idle | expired | orphan
        self.gc_orphans = Counter(
            "kernelcube_gc_orphans_total", "Orphans cleaned: records whose objects are gone, "
            "objects whose record is gone", ["kind"], registry=self.registry)  # record | workload
        self.gc_errors = Counter(
            "kernelcube_gc_errors_total", "GC deletes or passes that failed (retried next pass)",
            registry=self.registry)
        self.gc_pass_seconds = Histogram(
            "kernelcube_gc_pass_seconds", "Duration of one GC pass",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=self.registry)
        self.leader = Gauge("kernelcube_controller_leader",
                            "1 while this replica holds the leader Lease", registry=self.registry)

    def claim_ready(self, launch_type: str, seconds: float) -> None:
        self.claim_latency.labels(launch_type).observe(seconds * 1000.0)
        self.claims_total.labels(launch_type).inc()

    def client_claim_ready(self, launch_type: str, seconds: float) -> None:
        self.client_claim_latency.labels(launch_type).observe(max(0.0, seconds) * 1000.0)

    def pool_depth(self, namespace: str, pool: str, ready: int, replicas: int) -> None:
        self.pool_ready.labels(namespace, pool).set(ready)
        self.pool_replicas.labels(namespace, pool).set(replicas)

    def forget_pool(self, namespace: str, pool: str) -> None:
        for gauge in (self.pool_ready, self.pool_replicas):
            try:
                gauge.remove(namespace, pool)
            except KeyError:
                pass

    def error(self, kind: str) -> None:
        self.reconcile_errors.labels(kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
