"""The gateway, measured in one run on this machine, each figure next to its baseline:

- session claim latency with a warm pool (POST /v1/sessions);
- first result of `1+1` for a new session (POST /v1/execute without a session);
- warm /v1/execute round trip against a direct jupyter_client round trip to an ipykernel;
- throughput with 50 concurrent sessions;
- pool refill time for 8 sandboxes, and memory (PSS) per idle warm sandbox.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time

import aiohttp

from bench.bench_picod import _direct_kernel_samples
from bench.stats import report, summary
from tests.support.processes import ServerProcess
from tests.support.redis import free_port

TOKEN = "bench-token"
HEADERS = {"Authorization": f"token {TOKEN}", "Content-Type": "application/json"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANDBOX_PYTHON = os.path.join(REPO, ".sandbox-venv", "bin", "python")
CONCURRENT = 50
THROUGHPUT_SECONDS = 10.0


def start_gateway(state_dir: str, pool_size: int, max_sandboxes: int = 64, token: str = TOKEN,
                  env: dict[str, str] | None = None) -> ServerProcess:
    """`token` empty: auth off, and the gateway then listens on loopback only."""
    kernelcube = os.path.join(os.path.dirname(sys.executable), "kernelcube")
    argv = [kernelcube, "--ip", "127.0.0.1", "--port", str(free_port()), "--token", token,
            "--state-dir", state_dir, "--sandbox-python", SANDBOX_PYTHON, "--pool-size", str(pool_size),
            "--max-sandboxes", str(max_sandboxes), "--KernelCubeApp.max_parallel_starts=4",
            "--ServerApp.log_level=WARN", "--KernelCubeApp.log_level=INFO"]
    return ServerProcess(argv, {**os.environ, **(env or {})}, ready_path="/health/ready", timeout=180,
                         url_pattern=r"KernelCube gateway at http://(\S+):(\d+)")


class Client:
    """Keep-alive HTTP/1.1 with TCP_NODELAY."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        self.conn.request(method, path, json.dumps(body) if body is not None else None, HEADERS)
        response = self.conn.getresponse()
        raw = response.read()
        assert response.status < 300, (response.status, raw[:300])
        return json.loads(raw) if raw else {}


def wait_pool(client: Client, want: int, timeout: float = 300) -> float:
    """Seconds until the pool holds `want` ready sandboxes and starts no more (an idle machine)."""
    started = time.monotonic()
    while True:
        client.conn.request("GET", "/health/ready", headers=HEADERS)
        pool = json.loads(client.conn.getresponse().read())["pools"]["default"]
        if pool["ready"] >= want and pool["creating"] == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"the pool did not reach {want} ready sandboxes")
        time.sleep(0.01)


def claims_and_first_results(client: Client, n: int = 30) -> tuple[list[float], list[float]]:
    claims, firsts = [], []
    for _ in range(n):
        wait_pool(client, 8)
        started = time.perf_counter()
        session = client.call("POST", "/v1/sessions", {})
        claims.append((time.perf_counter() - started) * 1000)
        client.call("DELETE", f"/v1/sessions/{session['session_id']}")
        wait_pool(client, 8)
        started = time.perf_counter()
        result = client.call("POST", "/v1/execute", {"code": "1+1"})
        firsts.append((time.perf_counter() - started) * 1000)
        assert result["results"][0]["text/plain"] == "2"
        client.call("DELETE", f"/v1/sessions/{result['session_id']}")
    return claims, firsts


def warm_round_trips(client: Client, n: int = 200) -> list[float]:
    session_id = client.call("POST", "/v1/sessions", {})["session_id"]
    body = {"code": "1+1", "session_id": session_id}
    for _ in range(5):
        client.call("POST", "/v1/execute", body)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        client.call("POST", "/v1/execute", body)
        samples.append((time.perf_counter() - started) * 1000)
    client.call("DELETE", f"/v1/sessions/{session_id}")
    return samples


async def throughput(url: str, settle) -> tuple[int, float, list[float]]:
    """CONCURRENT sessions, each executing `1+1` in a loop for THROUGHPUT_SECONDS, once
    `settle()` returns (the pool has refilled: the figure is the steady state's, not the
    refill's CPU)."""
    async with aiohttp.ClientSession(headers=HEADERS) as http_session:
        async def create() -> str:
            async with http_session.post(url + "/v1/sessions", json={"timeout": 120}) as response:
                body = await response.json()
                assert response.status == 201, f"session creation refused: {response.status} {body}"
                return body["session_id"]
        session_ids = await asyncio.gather(*(create() for _ in range(CONCURRENT)))
        await asyncio.to_thread(settle)
        latencies: list[float] = []
        deadline = time.monotonic() + THROUGHPUT_SECONDS

        async def worker(session_id: str) -> int:
            done = 0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http_session.post(url + "/v1/execute", json={"code": "1+1", "session_id": session_id}) as r:
                    await r.read()
                    assert r.status == 200
                latencies.append((time.perf_counter() - started) * 1000)
                done += 1
            return done

        started = time.monotonic()
        counts = await asyncio.gather(*(worker(s) for s in session_ids))
        elapsed = time.monotonic() - started
        await asyncio.gather(*(http_session.delete(f"{url}/v1/sessions/{s}") for s in session_ids))
    return sum(counts), elapsed, latencies


def sandbox_pss_mib(state_dir: str) -> list[float]:
    """PSS of each sandbox's processes (bwrap, PicoD, kernel, its supervisor if forked from a
    zygote) plus its share of the zygotes, summed per sandbox."""
    from bench.bench_preload import sandbox_memory

    return [m["total"] for m in sandbox_memory(state_dir)]


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="kcb-") as state_dir:
        gateway = start_gateway(state_dir, pool_size=8)
        try:
            client = Client(gateway.url)
            refill = wait_pool(client, 8)
            memory = sandbox_pss_mib(state_dir)
            direct = _direct_kernel_samples()
            warm = warm_round_trips(client)
            claims, firsts = claims_and_first_results(client)
            # Refill: claim all 8, then time until the pool holds 8 again.
            wait_pool(client, 8)
            taken = [client.call("POST", "/v1/sessions", {})["session_id"] for _ in range(8)]
            started = time.monotonic()
            wait_pool(client, 8)
            refill = time.monotonic() - started
            for session_id in taken:
                client.call("DELETE", f"/v1/sessions/{session_id}")
            count, elapsed, latencies = asyncio.run(throughput(gateway.url, lambda: wait_pool(client, 8)))
        finally:
            gateway.stop()
    report("session claim, warm pool (goal p50<=5, p99<=20)", claims)
    report("first 1+1 of a new session (goal p50<=30)", firsts)
    report("direct jupyter_client 1+1 (baseline)", direct)
    report("gateway /v1/execute 1+1, warm session", warm, direct, goal=1.3)
    print(f"  {CONCURRENT} concurrent sessions (goal >= 150/s): {count / elapsed:.0f} executions/s over {elapsed:.1f}s; "
          f"latency {summary(latencies)}")
    print(f"  pool refill of 8 sandboxes (goal <= 3 s): {refill:.2f}s")
    if memory:
        print(f"  memory per idle warm sandbox (PSS, goal <= 80 MiB): median {statistics.median(memory):.0f} MiB "
              f"(n={len(memory)})")
