"""Benchmark: SandboxClaim bursts against the controller, over HTTP to the fake API server.

Everything runs in this one process and one event loop (fake API server, simulated kubelet,
controller, client), on loopback only, so the figures include the fake server's own CPU: a real
cluster would add network and API-server latency, and remove the shared-loop contention.

Phases:
1. fill a warm pool;
2. paced claims at 75/s (upstream agent-sandbox's CI gate: p50/p90 <= 300 ms, p99 <= 500 ms);
3. an unpaced burst, for the sustainable claims/s.
Latency is claim POST -> the claim's watch event carrying both status.sandbox.name and Ready,
which is what the k8s-agent-sandbox SDK waits for.

Then session GC over a real redis-server (skipped without one): one pass over 10,000 session
records with 0 due (the baseline) and with 100 expired, and over 1,000 records with 100
expired, each deleting the session's SandboxClaim through the API. The goal: a pass costs what
it collects, not what the store holds.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

CRD_DIR = Path(__file__).resolve().parents[1] / "charts" / "kernelcube" / "crds"
NS = "default"
POOL = 320
PACED_RATE = 75.0
PACED_SECONDS = 4.0
BURST = 300
BURST_CONCURRENCY = 50


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _template() -> dict:
    return {"metadata": {"name": "python"}, "spec": {
        "networkPolicyManagement": "Unmanaged",
        "podTemplate": {"spec": {"containers": [{"name": "picod", "image": "picod"}]}}}}


async def _bench() -> dict:
    from controller import resources as R
    from controller.kube import KubeClient, load_configuration
    from controller.manager import Controller
    from controller.settings import Settings
    from controller.testing.apiserver import FakeApiServer, load_crds
    from controller.testing.kubelet import Kubelet

    results: dict = {}
    async with FakeApiServer(load_crds(CRD_DIR)) as api, Kubelet(api.store, start_delay=0.02):
        client = KubeClient(await load_configuration(host=api.url))
        settings = Settings(leader_election=False, metrics_port=0, identity="bench",
                            warm_wait=5.0)
        controller = Controller(KubeClient(await load_configuration(host=api.url)), settings)
        bound: dict[str, float] = {}
        started: dict[str, float] = {}
        all_bound = asyncio.Event()
        expected = 0

        async def watch_claims() -> None:
            listed = await client.list(R.CLAIMS, NS)
            version = listed["metadata"]["resourceVersion"]
            while True:
                async for event in client.watch(R.CLAIMS, NS, version, timeout_seconds=120):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    status = obj.get("status") or {}
                    name = obj["metadata"]["name"]
                    ready = any(c["type"] == "Ready" and c["status"] == "True"
                                for c in status.get("conditions", ()))
                    if name not in bound and ready and status.get("sandbox", {}).get("name"):
                        bound[name] = time.perf_counter()
                        if len(bound) >= expected:
                            all_bound.set()

        async def claim(name: str) -> None:
            started[name] = time.perf_counter()
            await client.create(R.CLAIMS, NS, {"metadata": {"name": name}, "spec": {
                "warmPoolRef": {"name": "python"}}})

        def ready_members() -> int:
            return sum(1 for sb in api.store.list(api.info("sandboxes"), NS)
                       if "agents.x-k8s.io/warm-pool-sandbox" in sb["metadata"].get("labels", {})
                       and any(c["type"] == "Ready" and c["status"] == "True"
                               for c in sb.get("status", {}).get("conditions", ())))

        async def until(predicate, timeout: float) -> None:
            deadline = time.perf_counter() + timeout
            while not predicate():
                if time.perf_counter() > deadline:
                    raise TimeoutError("benchmark phase did not finish in time")
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch_claims())
        try:
            async with controller:
                await controller.leading.wait()
                await client.create(R.TEMPLATES, NS, _template())
                t0 = time.perf_counter()
                await client.create(R.WARMPOOLS, NS, {"metadata": {"name": "python"},
                                                      "spec": {"replicas": POOL,
                                                               "sandboxTemplateRef": {
                                                                   "name": "python"}}})
                await until(lambda: ready_members() == POOL, 120)
                results["fill_s"] = time.perf_counter() - t0

                # Paced: 75 claims/s.
                writes0 = api.writes()
                runs0 = controller.ctx.queues["claim"].runs
                count = int(PACED_RATE * PACED_SECONDS)
                expected = count
                t0 = time.perf_counter()
                tasks = []
                for i in range(count):
                    await asyncio.sleep(max(0.0, t0 + i / PACED_RATE - time.perf_counter()))
                    tasks.append(asyncio.create_task(claim(f"paced-{i}")))
                await asyncio.gather(*tasks)
                await asyncio.wait_for(all_bound.wait(), 60)
                paced = [bound[f"paced-{i}"] - started[f"paced-{i}"] for i in range(count)]
                results["paced"] = paced
                results["paced_rate"] = count / (max(bound.values()) - t0)
                results["claim_runs_per_claim"] = (
                    controller.ctx.queues["claim"].runs - runs0) / count

                await until(lambda: ready_members() == POOL, 120)
                results["writes_per_claim"] = (api.writes() - writes0) / count  # incl. refill

                # Unpaced burst.
                all_bound.clear()
                expected = count + BURST
                gate = asyncio.Semaphore(BURST_CONCURRENCY)

                async def gated(name: str) -> None:
                    async with gate:
                        await claim(name)

                t0 = time.perf_counter()
                await asyncio.gather(*(gated(f"burst-{i}") for i in range(BURST)))
                await asyncio.wait_for(all_bound.wait(), 60)
                burst = [bound[f"burst-{i}"] - started[f"burst-{i}"] for i in range(BURST)]
                results["burst"] = burst
                results["burst_rate"] = BURST / (max(bound[f"burst-{i}"]
                                                     for i in range(BURST)) - t0)
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])
            await client.close()
            await controller.kube.close()
    return results


def _line(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"  {label}: p50 {_percentile(ms, 50):.1f} ms  p90 {_percentile(ms, 90):.1f} ms  "
            f"p99 {_percentile(ms, 99):.1f} ms  (mean {statistics.fmean(ms):.1f} ms, "
            f"n={len(ms)})")


GC_TOTAL = 10_000
GC_DUE = 100
GC_TRIALS = 5


async def _gc_bench(redis_url: str) -> dict:
    from controller.kube import KubeClient, load_configuration
    from controller.manager import Controller
    from controller.settings import Settings
    from controller.testing.apiserver import FakeApiServer, load_crds
    from kernel_gateway_ext.store.base import SessionRecord
    from kernel_gateway_ext.store.redis import RedisStore

    store = RedisStore(redis_url)
    now = time.time()

    def record(sid: str, expired: bool) -> SessionRecord:
        # Records as the gateway's Kubernetes backend writes them; the claims do not exist,
        # so each delete is one API round trip answered 404 (counted as done).
        created = now - (7200 if expired else 60)
        return SessionRecord(session_id=sid, template="ci", created_at=created,
                             expires_at=created + 3600 if expired else now + 8 * 3600,
                             last_activity=now, provider="kubernetes",
                             sandbox={"kind": "SandboxClaim", "name": f"c-{sid}"})

    async def fill(prefix: str, count: int, expired: bool) -> None:
        for start in range(0, count, 500):
            await asyncio.gather(*(store.create(record(f"{prefix}-{i}", expired))
                                   for i in range(start, min(count, start + 500))))

    results: dict = {}
    async with FakeApiServer(load_crds(CRD_DIR), validate=False) as api:
        settings = Settings(leader_election=False, metrics_port=0, identity="bench-gc",
                            agentcube=False, redis_url=redis_url, gc_interval=3600.0)
        controller = Controller(KubeClient(await load_configuration(host=api.url)), settings)
        try:
            async with controller:
                await asyncio.wait_for(controller.leading.wait(), 30)
                gc = controller.gc

                async def timed_passes(total: int, due: int) -> list[float]:
                    await store._redis.flushdb()
                    await fill("live", total - due, expired=False)
                    times = []
                    for trial in range(GC_TRIALS):
                        await fill(f"exp{trial}", due, expired=True)
                        report = await gc.run_pass()
                        assert report.expired == due, report
                        times.append(report.seconds)
                    return times

                results["base"] = await timed_passes(GC_TOTAL, 0)
                results["due"] = await timed_passes(GC_TOTAL, GC_DUE)
                results["small"] = await timed_passes(GC_TOTAL // 10, GC_DUE)
        finally:
            await controller.kube.close()
            await store.close()
    return results


def _run_gc() -> None:
    import shutil
    import tempfile

    if shutil.which("redis-server") is None:
        print("session GC: skipped (no redis-server on PATH)")
        return
    from tests.support.redis import RedisServer

    with tempfile.TemporaryDirectory() as tmp, RedisServer(tmp) as server:
        r = asyncio.run(_gc_bench(server.url))
    base, due, small = (statistics.median(r[k]) * 1000 for k in ("base", "due", "small"))
    print(f"session GC: one pass, median of {GC_TRIALS}, real redis-server + fake API server")
    print(f"  {GC_TOTAL} records, 0 due (baseline): {base:.1f} ms")
    print(f"  {GC_TOTAL} records, {GC_DUE} expired: {due:.1f} ms "
          f"({(due - base) / GC_DUE:.2f} ms per collected session; {due / base:.1f}x baseline)")
    print(f"  {GC_TOTAL // 10} records, {GC_DUE} expired: {small:.1f} ms "
          f"(10x the records costs {due / small:.2f}x: the pass follows the due, not the total)")


def run() -> None:
    """Print the controller's claim throughput and claim->bound latency percentiles, then the
    session GC pass figures."""
    results = asyncio.run(_bench())
    print("controller: claim -> bound (name + Ready), fake API server over loopback HTTP")
    print(f"  warm pool fill: {POOL} sandboxes Ready in {results['fill_s']:.2f} s "
          f"({POOL / results['fill_s']:.0f}/s)")
    print(f"  paced at {PACED_RATE:.0f}/s for {PACED_SECONDS:.0f} s: served "
          f"{results['paced_rate']:.1f} claims/s")
    print(_line("paced latency", results["paced"]))
    print(f"  burst of {BURST} (at most {BURST_CONCURRENCY} creates in flight): "
          f"{results['burst_rate']:.1f} claims/s")
    print(_line("burst latency", results["burst"]))
    print(f"  claim reconciles per claim: {results['claim_runs_per_claim']:.2f}; API writes "
          f"per claim, refill included: {results['writes_per_claim']:.1f}")
    _run_gc()


if __name__ == "__main__":
    run()
