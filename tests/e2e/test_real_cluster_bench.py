"""The real-cluster benchmark (bench/bench_real_cluster.py, `make bench-k8s`) in small: one burst
of 5 sessions on a warm pool of 5 through each path (the gateway's fast path, and a gateway
whose sessions all go through SandboxClaims), with loose bounds. It keeps the benchmark's
machinery working in `make test-k8s`; the figures come from the full run."""

from __future__ import annotations

import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from bench.bench_real_cluster import PATHS, Bench, _line, _versus

POOL = 5


def test_a_burst_through_each_path(real_cluster, redis_server):
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as clients:
        bench = Bench(real_cluster, clients, redis_server.proc.pid)
        filled = bench.start(POOL)
        print(f"\npool of {POOL} filled from empty in {filled:.1f}s")
        before = bench.snapshot()
        found = bench.bursts(POOL, POOL, rounds=1)
        after = bench.snapshot()
    print(f"a burst of {POOL} on a warm pool of {POOL}:")
    for path in PATHS:
        print(_line(path, found[path]))
    print(_versus(found[PATHS[0]], found[PATHS[1]]))
    bench.breakdown(before, after)
    assert len(found[PATHS[0]]) == len(found[PATHS[1]]) == POOL, "every session was created"
    assert statistics.median(found[PATHS[0]]) < 2000
    assert statistics.median(found[PATHS[1]]) < 5000
