"""Preloaded warm pools, measured in one run, each figure next to its baseline:

- a new session's first `import pandas, matplotlib.pyplot as plt; plt.plot([1,2]); plt.show()`
  until its PNG is back (POST /v1/execute without a session), with the default preload and with
  `preload: false`, against the same code in a fresh local ipykernel that never imported them;
- idle memory per warm sandbox: PSS (shared pages counted once) from /proc/<pid>/smaps_rollup,
  summed over every process of the sandbox (bubblewrap, PicoD, the kernel and, for a kernel
  forked from a zygote, its supervisor) plus its share of the zygotes, split by process;
- refill of 8 warm sandboxes: from a pool emptied by 8 claims until 8 are ready again.

The gateways run one after the other: preloaded with kernels forked from a zygote (the
default), preloaded with every kernel spawned (`--kernel-zygote off`, the baseline), then bare
(on a shared, busy machine, compare figures of one run only).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time

from jupyter_client.manager import AsyncKernelManager

from bench.bench_gateway import SANDBOX_PYTHON, Client, start_gateway, wait_pool
from bench.stats import report
from kernel_gateway_ext.providers.local import _descendants, sandboxes_root
from tests.kernel_gateway_ext.zygote_processes import namespace

PLOT = "import pandas, matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()"
POOL = 8
FIRST_PLOTS = 8
BARE = json.dumps({"default": {"pool_size": POOL, "preload": False}})


def first_plots(client: Client, n: int = FIRST_PLOTS) -> list[float]:
    samples = []
    for _ in range(n):
        wait_pool(client, POOL)
        started = time.perf_counter()
        result = client.call("POST", "/v1/execute", {"code": PLOT})
        samples.append((time.perf_counter() - started) * 1000)
        assert any("image/png" in r for r in result["results"]), result
        client.call("DELETE", f"/v1/sessions/{result['session_id']}")
    return samples


def refill(client: Client) -> float:
    wait_pool(client, POOL)
    taken = [client.call("POST", "/v1/sessions", {})["session_id"] for _ in range(POOL)]
    started = time.monotonic()
    wait_pool(client, POOL, timeout=300)
    elapsed = time.monotonic() - started
    for session_id in taken:
        client.call("DELETE", f"/v1/sessions/{session_id}")
    return elapsed


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _role(pid: int) -> str:
    argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
    if not argv[0]:
        return "gone"
    if argv[0].endswith(b"bwrap"):
        return "bwrap"
    if b"ipykernel_launcher" in argv or any(b"kernel_zygote" in a for a in argv):
        # A kernel forked from a zygote runs in its sandbox's pid namespace; its supervisor
        # (which waits for it) only creates children there.
        return "kernel" if namespace(pid, "pid") == namespace(pid, "pid_for_children") else "supervisor"
    return "picod" if any(b"picod_kernel" in a for a in argv) else "other"


def sandbox_memory(state_dir: str) -> list[dict[str, float]]:
    """Per sandbox of the gateway with this state directory: PSS in MiB by role (bwrap, picod,
    kernel, supervisor, other) and in total. A sandbox's processes are those whose environment
    names it (bubblewrap, PicoD), all below them (a spawned kernel, whose environment PicoD
    cleans), and those in or creating into its pid namespace (a kernel forked from a zygote and
    its supervisor). The gateway's zygotes are shared by all its sandboxes: their PSS, divided
    by the number of sandboxes, is each sandbox's "zygote" share."""
    ours = set(os.listdir(sandboxes_root(state_dir)))  # other gateways may run on the machine
    roots: dict[str, set[int]] = {}
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    zygotes = []
    for pid in pids:
        env = dict(item.split(b"=", 1) for item in _read(f"/proc/{pid}/environ").split(b"\0") if b"=" in item)
        sandbox = env.get(b"PICOD_SANDBOX_ID")
        if sandbox and sandbox.decode() in ours:
            roots.setdefault(sandbox.decode(), set()).add(int(pid))
        parent = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[-1].split()[1:2]
        if b"kernel_zygote" in _read(f"/proc/{pid}/cmdline") and parent and \
                state_dir.encode() in _read(f"/proc/{int(parent[0])}/cmdline"):
            zygotes.append(pid)  # its bubblewrap binds this gateway's caches
    zygote_share = sum(_pss_kib(pid) for pid in zygotes) / 1024 / max(1, len(roots))
    result = []
    for sandbox_pids in roots.values():
        everything = set(sandbox_pids)
        for pid in sandbox_pids:
            everything.update(_descendants(pid))
        namespaces = {namespace(pid, "pid") for pid in everything} - {"", namespace(os.getpid(), "pid")}
        everything.update(pid for pid in pids if namespace(pid, "pid_for_children") in namespaces)
        by_role: dict[str, float] = {}
        for pid in everything:
            role = _role(pid)
            by_role[role] = by_role.get(role, 0.0) + _pss_kib(pid) / 1024
        if zygotes:
            by_role["zygote"] = zygote_share
        by_role["total"] = sum(by_role.values())
        result.append(by_role)
    return result


def local_kernel_first_plots(n: int = 6) -> list[float]:
    """The baseline: a fresh ipykernel of the sandbox Python (font list already built, as the
    sandboxes have it), the plot code as its first execution."""
    cache = tempfile.mkdtemp(prefix="bench-mpl-")
    env = {**os.environ, "MPLCONFIGDIR": cache}
    subprocess.run([SANDBOX_PYTHON, "-c", "import matplotlib.font_manager"], env=env, check=True)

    async def one() -> float:
        km = AsyncKernelManager(transport="ipc")
        km.kernel_spec.argv[0] = SANDBOX_PYTHON
        km.ip = os.path.join(tempfile.mkdtemp(prefix="bench-kernel-"), "ipc")
        await km.start_kernel(env=env)
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            started = time.perf_counter()
            outputs = []
            reply = await client.execute_interactive(PLOT, output_hook=outputs.append, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            assert reply["content"]["status"] == "ok"
            assert any("image/png" in m["content"].get("data", {}) for m in outputs)
            return elapsed
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    samples: list[float] = []
    thread = threading.Thread(target=lambda: samples.extend(asyncio.run(one()) for _ in range(n)))
    thread.start()
    thread.join()
    return samples


def measure(label: str, templates: str = "", zygote: str = "on") -> dict:
    with tempfile.TemporaryDirectory(prefix="kcb-") as state_dir:
        started = time.monotonic()
        env = {"KERNELCUBE_KERNEL_ZYGOTE": zygote, **({"KERNELCUBE_TEMPLATES": templates} if templates else {})}
        gateway = start_gateway(state_dir, pool_size=POOL, env=env)
        try:
            client = Client(gateway.url)
            from_start = wait_pool(client, POOL, timeout=300) + (time.monotonic() - started)
            time.sleep(2)  # let the last kernels settle before reading their memory
            memory = sandbox_memory(state_dir)
            plots = first_plots(client)
            refills = [refill(client) for _ in range(2)]
        finally:
            gateway.stop()
    return {"label": label, "start": from_start, "memory": memory, "plots": plots, "refills": refills}


def _print(run: dict, baseline: list[float]) -> None:
    memory = run["memory"]
    roles = sorted({role for m in memory for role in m} - {"total"})
    split = ", ".join(f"{role} {statistics.median(m.get(role, 0) for m in memory):.0f}" for role in roles)
    print(f"  [{run['label']}]")
    report("first plot of a new session (goal p50<=150)", run["plots"], baseline)
    print(f"    idle PSS per warm sandbox: median {statistics.median(m['total'] for m in memory):.0f} MiB "
          f"(goal <=80 with preload; {split}; n={len(memory)})")
    print(f"    refill of {POOL} (goal <=3 s with preload): {', '.join(f'{r:.2f}s' for r in run['refills'])}; "
          f"gateway start to {POOL} ready {run['start']:.1f}s")


def run() -> None:
    baseline = local_kernel_first_plots()
    report("fresh local ipykernel, same code (baseline)", baseline)
    for label, templates, zygote in (("preload, forked from a zygote (default)", "", "on"),
                                     ("preload, spawned (--kernel-zygote off)", "", "off"),
                                     ("preload: false", BARE, "on")):
        _print(measure(label, templates, zygote), baseline)
