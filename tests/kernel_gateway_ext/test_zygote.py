"""Warm kernels forked from a zygote (`kernel_zygote: on`): they share the zygote's imported
pages; a forked kernel is, from the inside, the kernel PicoD would have spawned (ids, limits,
namespaces, environment, sys.path, signals, shell); PicoD still owns it (interrupt, death with
its cause, restart, which forks again, or spawns once the user installed packages); preload
failures are reported as before; a zygote that cannot start, or dies, leaves the pool serving
spawned kernels and says why, and a dead one is replaced; no zygote outlives the gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal

import pytest

from kernel_gateway_ext.providers import local
from kernel_gateway_ext.providers.zygote import _unfit, zygote_environment

from .conftest import wait_ready
from .test_attacks import run
from .zygote_processes import alive, forked, memory, zygotes

PROPERTIES = """
import os, sys, json, resource, matplotlib
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
print(json.dumps({
    "ids": [os.getresuid(), os.getresgid(), os.getgroups()], "cwd": os.getcwd(),
    "status": {k: status[k] for k in ("Umask", "CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs",
                                      "Seccomp", "SigIgn", "SigBlk")},
    "rlimits": {n: resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")},
    "namespaces": {k: os.readlink(f"/proc/self/ns/{k}") for k in ("cgroup", "ipc", "mnt", "net", "uts", "user", "pid")},
    "cgroup": open("/proc/self/cgroup").read(), "path": sys.path,
    "env": {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"},
    "argv0": sys.argv[0], "executable": sys.executable, "flags": str(sys.flags),
    "leader": [os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid()],
    "backend": matplotlib.get_backend(), "shell": type(get_ipython()).__name__,
    "main": sys.modules["__main__"] is get_ipython().user_module,
    "history": str(get_ipython().history_manager.hist_file),
    "preloaded": [m for m in ("numpy", "pandas", "matplotlib.pyplot") if m in sys.modules],
    "own_proc": os.stat("/proc/self").st_uid == os.getuid(),
}))
"""


@pytest.fixture
def zygote_on(gateway_config):
    gateway_config["kernel_zygote"] = "on"


@pytest.fixture
def two_warm(gateway_config):
    gateway_config["pool_size"] = 2


@pytest.fixture
def broken_preload(gateway_config):
    gateway_config["templates"] = {"broken": {"pool_size": 1, "preload": {
        "modules": ["json", "no_such_module_for_kernelcube"], "code": "raise RuntimeError('boom')"}}}


async def record(gateway, session_id: str):
    return await gateway.store.get(session_id)


async def picod(gateway, session_id: str, method: str, path: str) -> dict:
    """A call to the session's PicoD, as the gateway makes it."""
    rec = await record(gateway, session_id)
    status, answer = await gateway.sessions.client(rec).call_json(
        method, path, None, token=gateway.identity.token(session_id, rec.sandbox_id), timeout=90)
    assert status == 200, answer
    return answer


class Messages(logging.Handler):
    """What the local provider logs (its logger does not propagate to pytest's capture)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def provider_log():
    handler = Messages()
    logger = logging.getLogger("kernelcube.local")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


async def test_warm_kernels_fork_from_one_zygote_and_share_its_pages(zygote_on, two_warm, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    first = await run(jp_fetch, "import sys; [m for m in ('numpy', 'pandas', 'matplotlib.pyplot') if m in sys.modules]")
    assert first["results"][0]["text/plain"] == "['numpy', 'pandas', 'matplotlib.pyplot']"
    second = await run(jp_fetch, "import pandas, matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
    assert [r for r in second["results"] if "image/png" in r] and second["stderr"] == "", second
    assert len(zygotes(gateway)) == 1
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_kernel_starts_total{source="zygote",template="default"}' in metrics
    for session in (first, second):
        rec = await record(gateway, session["session_id"])
        assert rec.sandbox["handle"]["kernel_source"] == "zygote"
        kernel, supervisor = forked(rec.sandbox)
        assert kernel and supervisor
        rollup = memory(kernel)
        # numpy, pandas and matplotlib's objects stay the zygote's: tens of MiB shared.
        assert rollup["Shared_Clean"] + rollup["Shared_Dirty"] > 40 * 1024, rollup


async def test_a_forked_kernel_is_the_kernel_picod_would_have_spawned(zygote_on, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    forked_run = await run(jp_fetch, PROPERTIES)
    session = forked_run["session_id"]
    assert (await picod(gateway, session, "GET", "/health"))["kernel_source"] == "zygote"
    # Something in the packages directory: the restarted kernel is spawned, so what the user
    # installed is imported before the preload's own copy.
    await run(jp_fetch, "open('/workspace/.packages/installed.txt', 'w').close()", session)
    assert (await picod(gateway, session, "POST", "/api/kernel/restart"))["kernel"] == "ready"
    assert (await picod(gateway, session, "GET", "/health"))["kernel_source"] == "spawn"
    spawned_run = await run(jp_fetch, PROPERTIES, session)
    mine, theirs = json.loads(forked_run["stdout"]), json.loads(spawned_run["stdout"])
    # Except the inheritable capabilities PicoD's own leave to a spawned kernel (unusable: it
    # runs as another uid with no_new_privs), a forked kernel has none at all.
    assert theirs["status"].pop("CapInh") == "00000000000000e0" and mine["status"].pop("CapInh") == "0" * 16
    env = {k: (mine["env"].get(k), theirs["env"].get(k)) for k in {*mine["env"], *theirs["env"]}
           if mine["env"].get(k) != theirs["env"].get(k)}
    assert mine == theirs, ({k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs.get(k) and k != "env"}, env)
    assert mine["ids"] == [[1000] * 3, [1000] * 3, []] and mine["preloaded"] == ["numpy", "pandas", "matplotlib.pyplot"]
    assert mine["status"]["CapEff"] == "0000000000000000" and mine["status"]["NoNewPrivs"] == "1"
    # Removed again: the next restart forks from the zygote, preloaded, with nothing of the last kernel.
    await run(jp_fetch, "x = 1; import os; os.remove('/workspace/.packages/installed.txt')", session)
    assert (await picod(gateway, session, "POST", "/api/kernel/restart"))["kernel"] == "ready"
    assert (await picod(gateway, session, "GET", "/health"))["kernel_source"] == "zygote"
    again = await run(jp_fetch, "import sys; 'x' in globals(), 'pandas' in sys.modules", session)
    assert again["results"][0]["text/plain"] == "(False, True)"


async def test_picod_interrupts_and_notices_the_death_of_a_forked_kernel(zygote_on, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    session = (await run(jp_fetch, "kept = 42"))["session_id"]
    spin = await run(jp_fetch, "while True:\n    pass", session, timeout=2)
    assert spin["status"] == "timeout" and spin["error"]["name"] == "KeyboardInterrupt", spin
    assert (await run(jp_fetch, "kept", session))["results"][0]["text/plain"] == "42"  # interrupted, not restarted
    killed = await run(jp_fetch, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", session)
    assert killed["status"] == "dead" and "SIGKILL" in killed["error"]["value"], killed
    after = await run(jp_fetch, "import sys; 'kept' in globals(), 'numpy' in sys.modules", session)
    assert after["results"][0]["text/plain"] == "(False, True)"
    assert (await picod(gateway, session, "GET", "/health"))["kernel_source"] == "zygote"


async def test_preload_failures_are_reported_as_before(zygote_on, broken_preload, jp_fetch, gateway):
    ready = await wait_ready(jp_fetch, timeout=120)
    failed = ready["pools"]["broken"]["preload_failed"]
    assert failed["no_such_module_for_kernelcube"].startswith("ModuleNotFoundError")
    assert failed["(code)"] == "RuntimeError: boom" and "json" not in failed
    result = await run(jp_fetch, "import sys; 'json' in sys.modules, 6 * 7", template="broken")
    assert result["results"][0]["text/plain"] == "(True, 42)"
    rec = await record(gateway, result["session_id"])
    assert rec.sandbox["handle"]["kernel_source"] == "zygote"
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_preload_failures_total{module="no_such_module_for_kernelcube",template="broken"}' in metrics


async def test_a_zygote_that_cannot_start_leaves_kernels_spawned(zygote_on, monkeypatch, provider_log,
                                                                   jp_fetch, gateway):
    monkeypatch.setattr(local, "BOOTSTRAP", "import sys; print('no imports today', file=sys.stderr); sys.exit(3)")
    await wait_ready(jp_fetch, timeout=120)
    result = await run(jp_fetch, "import sys; 'pandas' in sys.modules")
    assert result["results"][0]["text/plain"] == "True"
    assert (await record(gateway, result["session_id"])).sandbox["handle"]["kernel_source"] == "spawn"
    failures = [line for line in provider_log if "failed to start" in line]
    assert failures and "exit status 3" in failures[0] and "no imports today" in failures[0], provider_log
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_kernel_starts_total{source="spawn",template="default"}' in metrics


async def test_a_dead_zygote_is_replaced_and_the_pool_serves_meanwhile(zygote_on, provider_log, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    first, = zygotes(gateway)
    os.kill(first, signal.SIGKILL)
    for _ in range(100):
        if any("died" in line for line in provider_log):
            break
        await asyncio.sleep(0.05)
    assert any("died" in line and "spawned instead" in line for line in provider_log), provider_log
    sources = []
    for _ in range(2):  # each claim makes the pool start another sandbox, meanwhile
        result = await run(jp_fetch, "import sys; 'pandas' in sys.modules")
        assert result["results"][0]["text/plain"] == "True"
        sources.append((await record(gateway, result["session_id"])).sandbox["handle"]["kernel_source"])
    for _ in range(1200):  # a new zygote, started by those sandboxes' requests
        if zygotes(gateway) not in ([], [first]):
            break
        await asyncio.sleep(0.1)
    assert zygotes(gateway) not in ([], [first])
    while "zygote" not in sources[2:] and len(sources) < 6:
        result = await run(jp_fetch, "6 * 7")
        sources.append((await record(gateway, result["session_id"])).sandbox["handle"]["kernel_source"])
    assert "zygote" in sources[2:], sources


async def test_no_zygote_or_supervisor_outlives_the_gateway(zygote_on, jp_fetch, gateway):
    await wait_ready(jp_fetch, timeout=120)
    session = (await run(jp_fetch, "1"))["session_id"]
    kernel, supervisor = forked((await record(gateway, session)).sandbox)
    processes = [*zygotes(gateway), kernel, supervisor]
    await gateway.stop_extension()
    for _ in range(100):
        if not any(alive(pid) for pid in processes):
            break
        await asyncio.sleep(0.05)
    assert not [pid for pid in processes if alive(pid)]


def test_a_zygote_serves_only_single_threaded_and_holding_no_descriptor():
    assert _unfit({"preload": {}, "threads": 1, "fds": []}) is None
    assert "threads" in _unfit({"preload": {}, "threads": 3, "fds": []})
    assert "descriptors" in _unfit({"preload": {}, "threads": 1, "fds": ["3: /etc/passwd"]})
    assert _unfit(None) and _unfit({"threads": 1})


def test_the_zygote_pins_thread_pools_unless_the_kernels_ask_for_threads():
    env = zygote_environment({"PATH": "/usr/bin", "MPLBACKEND": "agg"})
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["MPLBACKEND"] == "agg" and env["PATH"] == "/usr/bin"
    assert zygote_environment({"OMP_NUM_THREADS": "4"}) is None
