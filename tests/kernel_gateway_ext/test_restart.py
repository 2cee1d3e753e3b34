"""The gateway as users run it (the `kernelcube` command, a real redis-server): sessions and
their sandboxes survive a gateway restart and keep their state; a sandbox that died while the
gateway was down is cleaned; a Redis outage answers 503 and the gateway recovers by itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
import requests

from kernel_gateway_ext.providers.local import sandboxes_root
from tests.support.channels import KernelChannels
from tests.support.gateway import HEADERS, Gateway
from tests.support.redis import RedisServer, free_port

from .conftest import picod_pid, sandbox_processes, wait_gone

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_sessions_survive_a_restart_and_redis_outages(tmp_path, redis_server):
    state_dir, port = str(tmp_path / "state"), free_port()
    first = Gateway(state_dir, port, redis_url=redis_server.url)
    try:
        kept = first.execute("answer = 42").json()["session_id"]
        lost = first.execute("doomed = True").json()["session_id"]
    finally:
        assert first.stop() == 0, first.log
    assert "sessions persist in the store" in first.log

    # While no gateway runs, the sandbox of `lost` dies.
    lost_dir = os.path.join(sandboxes_root(state_dir), _sandbox_of(redis_server, lost))
    _kill_picod(lost_dir)

    second = Gateway(state_dir, port, redis_url=redis_server.url)
    try:
        assert "re-adopted 1 session(s)" in second.log
        answer = second.execute("answer", kept).json()
        assert answer["results"][0]["text/plain"] == "42", answer
        gone = second.execute("1", lost)
        assert gone.status_code == 404 and gone.json()["code"] == "SESSION_NOT_FOUND"
        assert not os.path.exists(lost_dir)
        assert requests.delete(f"{second.url}/v1/sessions/{kept}", headers=HEADERS, timeout=30).status_code == 204

        redis_server.stop()
        down = requests.post(second.url + "/v1/sessions", json={}, headers=HEADERS, timeout=30)
        assert down.status_code == 503 and down.json()["code"] == "STORE_UNAVAILABLE"
        assert "redis://127.0.0.1" in down.json()["error"]
        assert requests.get(second.url + "/health/ready", timeout=30).status_code == 503

        redis_server.start()
        recovered = second.execute("'back'")
        assert recovered.status_code == 200 and recovered.json()["results"][0]["text/plain"] == "'back'"
        session_id = recovered.json()["session_id"]
        assert requests.delete(f"{second.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=30).status_code == 204
    finally:
        assert second.stop() == 0, second.log
    assert not wait_gone(sandboxes_root(state_dir)), "a sandbox outlived the test"


def _sandbox_of(redis_server: RedisServer, session_id: str) -> str:
    import redis
    client = redis.Redis.from_url(redis_server.url)
    try:
        return json.loads(client.get(f"session:{session_id}"))["sandboxId"]
    finally:
        client.close()


def _kill_picod(sandbox_dir: str) -> None:
    with open(os.path.join(sandbox_dir, "sandbox.json")) as f:
        os.kill(picod_pid(json.load(f)["handle"]["pid"]), signal.SIGKILL)


def test_a_kernel_outlives_a_gateway_restart_with_its_variables(tmp_path, redis_server):
    """A notebook's kernel, after the gateway restarts: the same id answers on a new channels
    socket (as jupyter_server re-dials) with its variables, and REST sees it alive."""
    state_dir, port = str(tmp_path / "state"), free_port()

    async def run(gateway: Gateway, kernel_id: str, code: str) -> str | None:
        channels = await KernelChannels.open(f"{gateway.url}/api/kernels/{kernel_id}/channels?session_id=nb", HEADERS)
        try:
            return await channels.run(code)
        finally:
            await channels.close()

    first = Gateway(state_dir, port, redis_url=redis_server.url)
    try:
        kernel_id = requests.post(f"{first.url}/api/kernels", json={"name": "default"}, headers=HEADERS,
                                  timeout=60).json()["id"]
        assert asyncio.run(run(first, kernel_id, "rows = [1, 2, 3]; len(rows)")) == "3"
    finally:
        assert first.stop() == 0, first.log
    second = Gateway(state_dir, port, redis_url=redis_server.url)
    try:
        model = requests.get(f"{second.url}/api/kernels/{kernel_id}", headers=HEADERS, timeout=30).json()
        assert model["execution_state"] == "idle", model
        assert asyncio.run(run(second, kernel_id, "sum(rows)")) == "6"
        assert requests.delete(f"{second.url}/api/kernels/{kernel_id}", headers=HEADERS, timeout=30).status_code == 204
    finally:
        assert second.stop() == 0, second.log


def test_a_double_interrupt_still_leaves_nothing_running(tmp_path):
    """Two SIGTERMs in a row (a double Ctrl-C): with the in-memory store no sandbox, claimed
    or warm, may outlive the gateway."""
    state_dir = str(tmp_path / "state")
    gateway = Gateway(state_dir, free_port())
    try:
        assert gateway.execute("1+1").status_code == 200
        gateway.proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)  # two signals, not one coalesced by the kernel
        gateway.proc.send_signal(signal.SIGTERM)
        gateway.proc.wait(30)
    finally:
        gateway.stop()
    assert not wait_gone(sandboxes_root(state_dir)), "a sandbox outlived the interrupted gateway"


def test_sigkill_of_an_ephemeral_gateway_takes_its_sandboxes_along(tmp_path):
    """With the in-memory store no session can outlive the gateway, so no sandbox may either,
    even when the gateway is killed without a chance to clean up. The next gateway on the same
    state directory sweeps what was left on disk (directories, cgroups)."""
    state_dir = str(tmp_path / "state")
    root = sandboxes_root(state_dir)
    gateway = Gateway(state_dir, free_port())
    try:
        assert gateway.execute("1+1").status_code == 200
        assert sandbox_processes(root)
        cgroups_parent = gateway_cgroups(gateway)
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(30)
    finally:
        gateway.stop()
    assert not wait_gone(root), "a sandbox outlived the killed gateway"

    successor = Gateway(state_dir, free_port())
    try:
        if cgroups_parent:
            deadline = time.monotonic() + 10
            while {n for n in os.listdir(cgroups_parent) if n.startswith("sb-")} - set(os.listdir(root)):
                assert time.monotonic() < deadline, "the successor left dead sandboxes' cgroups behind"
                time.sleep(0.1)
    finally:
        assert successor.stop() == 0, successor.log
    assert not wait_gone(root)


def gateway_cgroups(gateway: Gateway) -> str | None:
    """The memory (v1) or unified (v2) cgroup directory that holds the gateway's sandboxes."""
    for pid in sandbox_processes(sandboxes_root_of(gateway)):
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.strip().split(":", 2)
                if controllers in ("memory", "") and "/sb-" in path:
                    mount = "/sys/fs/cgroup/memory" if controllers == "memory" else "/sys/fs/cgroup"
                    return os.path.dirname(mount + path)
    return None


def sandboxes_root_of(gateway: Gateway) -> str:
    state_dir = gateway.argv[gateway.argv.index("--state-dir") + 1]
    return sandboxes_root(state_dir)
