"""Benchmark: sessions on a real Kubernetes control plane at the scale of issue 11, the gateway's
fast path against SandboxClaims, in one run (`make bench-k8s`; not part of `make bench`).

One cluster for everything, the end-to-end tests' harness (tests/e2e): etcd, kube-apiserver and
kube-controller-manager built from Go modules, the chart's CRDs and RBAC, the process kubelet,
a real Redis, KernelCube's controller, and two gateways acting as the chart's ServiceAccount:
- the fast path: a session takes a Ready warm Sandbox itself, with one conditional PATCH;
- the baseline: a gateway with `warm_adoption` off, so that every session goes through a
  SandboxClaim that the controller binds (AgentCube's way), awaited through the gateway's watch.
The clients run in a process of their own (the kubelet runs in this one) and time
`POST /v1/sessions` until its 201, which is what a user waits for; every session is ended.

Figures (each printed against the baseline measured in the same run):
1. a warm-pool session claim, one at a time, the paths alternating, on a pool of 50 kept at
   least 40 deep (it refills meanwhile): p50 and p99;
2. the reference case: bursts of 20 sessions at once on a warm pool of 5 (goal for the fast
   path: p50 <= 100 ms), where the 15 sessions past the warm five wait for pods to start
   whichever the path; then the same bursts on a pool of 20, where none does;
3. claims/s with 100 concurrent sessions: 100 requested at once on a warm pool of 100; then
   100 clients creating and ending sessions on a pool of 50, counted over 30 s once the pool's
   stock is spent (after 30 s): the sustained rate is that of pods starting, either path;
4. a pool of 50 refilled from empty (no SandboxClaim counterpart: the pool's own throughput).
For each, where the time went: the gateway's own claim time and the API server's latency for
the writes involved (both from their metrics), and CPU seconds by component.

The pods run PicoD with `--no-kernel` (commands and files, no Jupyter kernel), limited to
500m CPU and 256 MiB: ~40 MiB and ~0.1 s of CPU to start, where a kernel adds ~60 MiB and
~0.5 s (and the image's default preload of numpy, pandas and matplotlib ~120 MiB and ~1.5 s),
which 150 pods on 2 cores could not afford. A claim does not depend on what the pod runs; a
cold start (figures 2 to 4) does.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench.real_cluster_clients import alternate, burst, sustained
from bench.stats import percentile

ON_DEMAND = True  # needs the control plane built by `make k8s-control-plane`: `make bench-k8s`
TEMPLATE = "bench"
POD_ARGS = ["--no-kernel"]
POD_LIMITS = {"cpu": "500m", "memory": "256Mi"}
SEQUENTIAL = 100  # sessions per path, one at a time
SEQUENTIAL_POOL = 50
SEQUENTIAL_DEPTH = 40  # Ready members the fast path's gateway must see before each pair
BURST, BURST_POOL, BURST_ROUNDS = 20, 5, 3
CONCURRENT, CONCURRENT_POOL = 100, 100
SUSTAINED_CLIENTS, SUSTAINED_WARMUP, SUSTAINED_WINDOW, SUSTAINED_POOL = 100, 30.0, 30.0, 50
REFILL_POOL = 50
FAST_GOAL_MS = 100.0
PATHS = ("fast path", "SandboxClaim")


# -- the cluster side ------------------------------------------------------------------------

class Bench:
    """The cluster, its two gateways and the client process; phases are methods."""

    def __init__(self, cluster, clients: ProcessPoolExecutor, redis_pid: int) -> None:
        from tests.e2e.cluster import NAMESPACE
        self.cluster = cluster
        self.redis_pid = redis_pid
        self.cp = cluster.cp
        self.ns = NAMESPACE
        self.clients = clients
        self.gateways: dict[str, object] = {}

    def start(self, pool: int) -> float:
        """The controller, both gateways and the CodeInterpreter; seconds to fill its pool."""
        self.cluster.start_controller("bench")
        self.gateways = {
            PATHS[0]: self.cluster.start_gateway(),
            PATHS[1]: self.cluster.start_gateway(extra_args=("--KernelCubeApp.warm_adoption=false",))}
        image = self.cluster.code_interpreters[0]["spec"]["template"]["image"]
        started = time.monotonic()
        self.cp.apply({
            "apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter",
            "metadata": {"name": TEMPLATE, "namespace": self.ns},
            "spec": {"warmPoolSize": pool, "sessionTimeout": "15m", "template": {
                "image": image, "args": POD_ARGS, "resources": {"limits": POD_LIMITS}}}})
        self.settle(pool, timeout=300)
        for gateway in self.gateways.values():
            self._wait_template(gateway)
        return time.monotonic() - started

    def url(self, path: str) -> str:
        return self.gateways[path].url  # type: ignore[attr-defined]

    def _wait_template(self, gateway) -> None:
        import requests

        from tests.support.gateway import HEADERS
        from tests.support.waiting import wait_for
        wait_for(lambda: TEMPLATE in requests.get(gateway.url + "/api/kernelspecs", headers=HEADERS,
                                                  timeout=10).json()["kernelspecs"],
                 60, f"the gateway to know {TEMPLATE}")

    # -- the pool ----------------------------------------------------------------------------

    def census(self) -> tuple[int, int, int]:
        """(Ready warm members, warm members, every Sandbox) of the namespace."""
        from controller import naming as n
        from tests.e2e.test_real_cluster import is_ready
        items = self.cp.api("GET", f"/apis/agents.x-k8s.io/v1beta1/namespaces/{self.ns}/sandboxes")[
            "items"]
        members = [s for s in items if n.WARM_POOL_SANDBOX in (s["metadata"].get("labels") or {})
                   and not s["metadata"].get("deletionTimestamp")]
        return sum(1 for s in members if is_ready(s)), len(members), len(items)

    def set_pool(self, size: int) -> None:
        self.cp.api("PATCH", f"/apis/runtime.agentcube.volcano.sh/v1alpha1/namespaces/{self.ns}/"
                             f"codeinterpreters/{TEMPLATE}", {"spec": {"warmPoolSize": size}},
                    content_type="application/merge-patch+json")

    def settle(self, size: int, timeout: float = 180) -> None:
        """Until the pool is exactly `size` Ready members and no other Sandbox is left (the
        sessions' are deleted), so that a phase starts from quiet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.census() == (size, size, size):
                time.sleep(0.5)  # the last deletions' pods and watch events
                return
            time.sleep(0.2)
        raise RuntimeError(f"the pool did not settle at {size}: {self.census()}")

    def refill_from_empty(self, size: int) -> float:
        self.set_pool(0)
        self.settle(0)
        started = time.monotonic()
        self.set_pool(size)
        deadline = started + 300
        while self.census()[0] < size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool did not refill to {size}: {self.census()}")
            time.sleep(0.1)
        return time.monotonic() - started

    # -- where the time goes -----------------------------------------------------------------

    def snapshot(self) -> dict:
        return {"claim": {path: self._claim_metrics(path) for path in PATHS},
                "apiserver": self._apiserver_metrics(), "cpu": self._cpu()}

    def measured(self, work, *args):
        """`work(*args)`'s result, and the snapshots around it (for `breakdown`)."""
        before = self.snapshot()
        result = work(*args)
        return result, (before, self.snapshot())

    def _claim_metrics(self, path: str) -> dict:
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        from tests.support.gateway import HEADERS
        text = requests.get(self.url(path) + "/metrics", headers=HEADERS, timeout=10).text
        found: dict = {}
        for family in text_string_to_metric_families(text):
            if family.name != "kernelcube_claim_seconds":
                continue
            for sample in family.samples:
                if sample.labels.get("template") == TEMPLATE and sample.name.endswith(("_sum", "_count")):
                    key = (sample.labels["path"], sample.name.rsplit("_", 1)[1])
                    found[key] = sample.value
        return found

    def _apiserver_metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families
        text = self.cp.session.get(self.cp.url + "/metrics", timeout=30).text
        found: dict = {}
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request_duration_seconds":
                continue
            for sample in family.samples:
                if not sample.name.endswith(("_sum", "_count")):
                    continue
                labels = sample.labels
                if labels.get("resource") not in ("sandboxes", "sandboxclaims", "pods"):
                    continue
                key = (labels["verb"], labels["resource"], labels.get("subresource", ""),
                       sample.name.rsplit("_", 1)[1])
                found[key] = found.get(key, 0.0) + sample.value
        return found

    def _cpu(self) -> dict[str, float]:
        import psutil
        pids = {p.name: p.pid for p in self.cp.processes}
        if self.cluster.controllers:
            pids["controller"] = self.cluster.controllers[0].pid
        pids |= {f"gateway ({path})": g.proc.pid for path, g in self.gateways.items()}  # type: ignore[attr-defined]
        pids["redis"] = self.redis_pid
        found = {}
        for name, pid in pids.items():
            try:
                times = psutil.Process(pid).cpu_times()
                found[name] = times.user + times.system
            except psutil.Error:
                pass
        own = psutil.Process().cpu_times()
        found["kubelet (and this bench)"] = own.user + own.system
        found["pods (exited)"] = own.children_user + own.children_system
        return found

    def breakdown(self, before: dict, after: dict, indent: str = "     ") -> None:
        """Where the time went between two snapshots."""
        for path in PATHS:
            parts = []
            for kind in ("warm", "cold"):
                count = after["claim"][path].get((kind, "count"), 0) - before["claim"][path].get(
                    (kind, "count"), 0)
                total = after["claim"][path].get((kind, "sum"), 0) - before["claim"][path].get(
                    (kind, "sum"), 0)
                if count:
                    how = "adopted" if kind == "warm" else "through a SandboxClaim"
                    parts.append(f"{int(count)} {how}, {total / count * 1000:.0f} ms on average")
            if parts:
                print(f"{indent}gateway claim time, {path}: {'; '.join(parts)}")
        writes: dict[str, tuple[float, float]] = {}
        for key, value in after["apiserver"].items():
            verb, resource, sub, kind = key
            if verb not in ("POST", "PUT", "PATCH", "DELETE") or kind != "count":
                continue
            count = value - before["apiserver"].get(key, 0)
            total = after["apiserver"].get((verb, resource, sub, "sum"), 0) - before[
                "apiserver"].get((verb, resource, sub, "sum"), 0)
            if count:
                writes[f"{verb} {resource}{'/' + sub if sub else ''}"] = (count, total)
        if writes:
            count = sum(c for c, _ in writes.values())
            total = sum(t for _, t in writes.values())
            top = sorted(writes.items(), key=lambda kv: -kv[1][0])
            print(f"{indent}API server writes: {int(count)}, {total / count * 1000:.0f} ms on average; "
                  + ", ".join(f"{name} {int(c)}x {t / c * 1000:.0f} ms" for name, (c, t) in top))
        cpu = {name: after["cpu"].get(name, 0) - before["cpu"].get(name, 0) for name in after["cpu"]}
        print(f"{indent}CPU seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in
                                                  sorted(cpu.items(), key=lambda kv: -kv[1])
                                                  if seconds >= 0.05))

    # -- phases ------------------------------------------------------------------------------

    def one_at_a_time(self) -> dict[str, list[float]]:
        urls = {path: self.url(path) for path in PATHS}
        found = self.clients.submit(alternate, urls, TEMPLATE, SEQUENTIAL, SEQUENTIAL_DEPTH).result()
        return {path: _latencies(path, results) for path, results in found.items()}

    def bursts(self, count: int, pool: int, rounds: int) -> dict[str, list[float]]:
        """`rounds` bursts of `count` sessions per path, each from a settled pool of `pool`."""
        found: dict[str, list[float]] = {path: [] for path in PATHS}
        for _ in range(rounds):
            for path in PATHS:
                self.settle(pool)
                results = self.clients.submit(burst, self.url(path), TEMPLATE, count).result()
                found[path] += _latencies(path, results)
        return found

    def sustain(self, clients: int, warmup: float, window: float, pool: int
                ) -> dict[str, list[float]]:
        """The sessions answered in the `window` seconds after `warmup` (the pool's stock is
        spent by then: a steady state)."""
        found = {}
        for path in PATHS:
            self.settle(pool)
            results = self.clients.submit(sustained, self.url(path), TEMPLATE, clients,
                                          warmup + window).result()
            found[path] = _latencies(path, [r for r in results if warmup <= r["at"] < warmup + window])
        return found


def _latencies(path: str, results: list[dict]) -> list[float]:
    failed = [r for r in results if r["status"] != 201]
    if failed:
        print(f"     {path}: {len(failed)} of {len(results)} sessions failed, e.g. "
              f"{failed[0]['status']} {str(failed[0]['error'])[:300]}")
    return [r["seconds"] * 1000 for r in results if r["status"] == 201]


def _line(label: str, samples: list[float]) -> str:
    if not samples:
        return f"     {label:<14} no sample"
    return (f"     {label:<14} p50 {statistics.median(samples):7.1f} ms   p99 "
            f"{percentile(samples, 99):7.1f} ms   (n={len(samples)})")


def _versus(fast: list[float], claim: list[float]) -> str:
    if not fast or not claim:
        return ""
    p50 = statistics.median(fast) / statistics.median(claim)
    p99 = percentile(fast, 99) / percentile(claim, 99)
    return (f"     fast path / SandboxClaim: p50 {p50:.2f}x, p99 {p99:.2f}x "
            f"({1 / p50:.1f}x faster at p50)")


def _pair(found: dict[str, list[float]], suffix: dict[str, str] | None = None) -> None:
    for path in PATHS:
        print(_line(path, found[path]) + (suffix or {}).get(path, "")
              + ("   baseline" if path == PATHS[1] else ""))
    print(_versus(found[PATHS[0]], found[PATHS[1]]))


def run() -> None:
    from tests.e2e.build_control_plane import ensure_built
    from tests.e2e.cluster import RealCluster
    from tests.support.redis import RedisServer

    bin_dir = ensure_built()
    with tempfile.TemporaryDirectory(prefix="kernelcube-bench-k8s-") as tmp, \
            RedisServer(Path(tmp) / "redis") as redis, \
            RealCluster(Path(tmp) / "k8s", bin_dir, redis.url) as cluster, \
            ProcessPoolExecutor(1, mp_context=get_context("spawn")) as clients:
        print(f"  pods: PicoD {' '.join(POD_ARGS)} (commands and files, no Jupyter kernel), limits "
              f"cpu {POD_LIMITS['cpu']} memory {POD_LIMITS['memory']}; {cluster.runtime.describe()}")
        print(f"  machine: {os.cpu_count()} cores; control plane ready in "
              f"{cluster.timings['cluster_ready']:.1f}s")
        clients.submit(time.monotonic).result()  # the client process is up before any timing
        assert redis.proc is not None
        bench = Bench(cluster, clients, redis.proc.pid)
        filled = bench.start(SEQUENTIAL_POOL)
        print(f"  pool of {SEQUENTIAL_POOL} filled from empty in {filled:.1f}s (CodeInterpreter "
              f"created to {SEQUENTIAL_POOL} Ready)")

        print(f"  1. warm-pool session claim, one at a time ({SEQUENTIAL} per path, alternating; "
              f"pool of {SEQUENTIAL_POOL}, at least {SEQUENTIAL_DEPTH} Ready at each turn)",
              flush=True)
        found, window = bench.measured(bench.one_at_a_time)
        _pair(found)
        bench.breakdown(*window)

        print(f"  2. reference case: {BURST_ROUNDS} bursts of {BURST} sessions at once on a warm "
              f"pool of {BURST_POOL} (goal: fast path p50 <= {FAST_GOAL_MS:.0f} ms)", flush=True)
        bench.set_pool(BURST_POOL)
        found, window = bench.measured(bench.bursts, BURST, BURST_POOL, BURST_ROUNDS)
        _pair(found)
        if found[PATHS[0]]:
            p50 = statistics.median(found[PATHS[0]])
            print(f"     goal fast path p50 <= {FAST_GOAL_MS:.0f} ms: "
                  f"{'met' if p50 <= FAST_GOAL_MS else 'NOT met'} ({p50:.0f} ms); the "
                  f"{BURST - BURST_POOL} sessions of each burst past the warm {BURST_POOL} wait "
                  "for pods to start, whichever the path")
        bench.breakdown(*window)
        print(f"     the same bursts on a warm pool of {BURST} (no pod to start):", flush=True)
        bench.set_pool(BURST)
        found, window = bench.measured(bench.bursts, BURST, BURST, BURST_ROUNDS)
        _pair(found)
        bench.breakdown(*window)

        print(f"  3. {CONCURRENT} concurrent sessions, all requested at once on a warm pool of "
              f"{CONCURRENT_POOL}", flush=True)
        bench.set_pool(CONCURRENT_POOL)
        found, window = bench.measured(bench.bursts, CONCURRENT, CONCURRENT_POOL, 1)
        rates = {path: len(found[path]) / (max(found[path]) / 1000) for path in PATHS if found[path]}
        _pair(found, {path: f"   {rates[path]:5.1f} claims/s" for path in rates})
        if len(rates) == 2:
            print(f"     fast path / SandboxClaim: {rates[PATHS[0]] / rates[PATHS[1]]:.2f}x the claims/s")
        bench.breakdown(*window)
        print(f"     sustained: {SUSTAINED_CLIENTS} concurrent clients creating and ending sessions "
              f"on a pool of {SUSTAINED_POOL}, counted from {SUSTAINED_WARMUP:.0f}s to "
              f"{SUSTAINED_WARMUP + SUSTAINED_WINDOW:.0f}s", flush=True)
        bench.set_pool(SUSTAINED_POOL)
        found, window = bench.measured(bench.sustain, SUSTAINED_CLIENTS, SUSTAINED_WARMUP, SUSTAINED_WINDOW,
                                       SUSTAINED_POOL)
        rates = {path: len(found[path]) / SUSTAINED_WINDOW for path in PATHS}
        _pair(found, {path: f"   {rates[path]:5.1f} claims/s" for path in rates})
        print(f"     fast path / SandboxClaim: {rates[PATHS[0]] / max(rates[PATHS[1]], 1e-9):.2f}x "
              "the claims/s (once the pool is drained, both are bound by how fast pods start)")
        bench.breakdown(*window)

        print(f"  4. a pool of {REFILL_POOL} refilled from empty (the pool's own throughput)",
              flush=True)
        refill, window = bench.measured(bench.refill_from_empty, REFILL_POOL)
        print(f"     {refill:.1f}s, {REFILL_POOL / refill:.1f} sandboxes/s")
        bench.breakdown(*window)


if __name__ == "__main__":
    run()
