"""Claim latency on a real kube-apiserver (printed; loose bounds only): a burst of sessions taken
from a warm pool through the gateway's fast path (one conditional patch), against the same burst
of SandboxClaims bound by the controller, then the pool refilled from empty."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from controller.resources import CLAIMS, CODE_INTERPRETERS
from tests.e2e.cluster import NAMESPACE
from tests.e2e.test_real_cluster import is_ready, wait_for, warm_ready
from tests.support.gateway import HEADERS

BURST = 5


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
            f"over {len(ordered)}")


def test_warm_claims_fast_path_vs_sandbox_claims(real_cluster):
    cluster = real_cluster
    cluster.start_controller("bench")
    gateway = cluster.start_gateway()
    ci = next(c for c in cluster.code_interpreters)
    ci = dict(ci, spec=dict(ci["spec"], warmPoolSize=BURST))
    cluster.cp.apply(ci, NAMESPACE)
    wait_for(lambda: len(warm_ready(cluster)) == BURST, 120, "a warm pool of the burst's size")

    def session(_: int) -> float:
        started = time.monotonic()
        response = requests.post(gateway.url + "/v1/sessions", json={"template": "default"},
                                 headers=HEADERS, timeout=60)
        assert response.status_code == 201, response.text
        return time.monotonic() - started

    with ThreadPoolExecutor(BURST) as pool:
        fast = list(pool.map(session, range(BURST)))
    print(f"\nfast path, burst of {BURST} on a warm pool of {BURST}: {summary(fast)}")

    started = time.monotonic()
    wait_for(lambda: len(warm_ready(cluster)) == BURST, 120, "the pool to refill")
    print(f"pool of {BURST} refilled from empty in {time.monotonic() - started:.1f}s")

    def claim(i: int) -> float:
        name = f"bench-{i}"
        started = time.monotonic()
        cluster.cp.api("POST", CLAIMS.path(NAMESPACE), {
            "apiVersion": CLAIMS.api_version, "kind": "SandboxClaim",
            "metadata": {"name": name}, "spec": {"warmPoolRef": {"name": "default"}}})
        wait_for(lambda: is_ready(cluster.cp.api("GET", CLAIMS.path(NAMESPACE, name))), 60,
                 f"claim {name}")
        return time.monotonic() - started

    with ThreadPoolExecutor(BURST) as pool:
        claimed = list(pool.map(claim, range(BURST)))
    print(f"SandboxClaims, burst of {BURST} on a warm pool of {BURST}: {summary(claimed)}")
    assert statistics.median(fast) < 2.0
    ci_now = cluster.cp.api("GET", CODE_INTERPRETERS.path(NAMESPACE, "default"))
    assert ci_now["spec"]["warmPoolSize"] == BURST
