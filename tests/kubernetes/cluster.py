"""A whole fake cluster for the gateway's Kubernetes backend, on a loop in a thread of its own:
the fake API server (real HTTP and watches), KernelCube's controller (agent-sandbox, with its
CodeInterpreter reconciler), and the test kubelet running every pod's container for real, as
PicoD on a loopback address of its own (127.77.x.y, the pod IP) with the container's environment
and arguments.

Its own thread, so that tests may block (the agentcube-sdk and `requests` are synchronous, and
gateways run as processes) while the cluster keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from controller.kube import KubeClient, load_configuration
from controller.manager import Controller
from controller.settings import Settings
from controller.testing.apiserver import FakeApiServer, load_crds
from controller.testing.kubelet import Kubelet
from controller.testing.store import StoreError
from tests.support.gateway import REPO, SANDBOX_PYTHON

CRD_DIR = Path(REPO) / "charts" / "kernelcube" / "crds"
NS = "default"
AGENTCUBE = "runtime.agentcube.volcano.sh"


class PicodRuntime:
    """Runs a pod's first container as a PicoD process bound to the pod's own loopback IP."""

    def __init__(self, store: Any, directory: str, ready_timeout: float = 60.0,
                 ip_prefix: str = "127.77") -> None:
        self.store = store
        self.ip_prefix = ip_prefix
        self.directory = directory
        self.ready_timeout = ready_timeout
        # A random block of addresses per run: test runs side by side on one machine (two
        # worktrees) must not answer each other's pods on 127.77.0.x.
        self._ips = itertools.count(2 + 250 * random.randrange(200))
        self._procs: dict[str, subprocess.Popen] = {}
        self.started = 0

    def _env(self, pod: dict, container: dict, ip: str) -> dict:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.directory, "PYTHONPATH": REPO,
               "PICOD_KERNEL_PYTHON": SANDBOX_PYTHON if os.path.exists(SANDBOX_PYTHON) else sys.executable}
        meta = pod["metadata"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "status.podIP": ip}
        for var in container.get("env") or ():
            source = var.get("valueFrom") or {}
            if "fieldRef" in source:
                env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                env[var["name"]] = self.secret_value(meta["namespace"], source["secretKeyRef"])
            else:
                env[var["name"]] = var.get("value", "")
        return env

    def secret_value(self, namespace: str, ref: dict) -> str:
        """A `secretKeyRef`'s value (the fake cluster's store; a real cluster's kubelet overrides)."""
        secret = self.store.get(self.store.info("", "secrets"), namespace, ref["name"])
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    async def start(self, pod: dict) -> str:
        n = next(self._ips)
        ip = f"{self.ip_prefix}.{n // 250}.{n % 250 + 1}"
        container = pod["spec"]["containers"][0]
        proc, log = await asyncio.to_thread(self._spawn, pod["metadata"]["name"], self.argv(container, ip),
                                            self._env(pod, container, ip))
        self._procs[pod["metadata"]["uid"]] = proc
        self.started += 1
        await self.probe(container, ip, proc.poll, log)
        return ip

    @staticmethod
    def port(container: dict) -> int:
        return ((container.get("ports") or [{}])[0]).get("containerPort", 8080)

    def argv(self, container: dict, ip: str) -> list[str]:
        """PicoD on the pod's IP and the container's port, with the container's other args."""
        return [sys.executable, "-m", "picod_kernel", "--host", ip, "--port", str(self.port(container)),
                "--log-level", "WARNING",
                *(a for a in container.get("args") or () if not a.startswith(("--workspace", "--host", "--port")))]

    async def probe(self, container: dict, ip: str, exit_code: Callable[[], int | None], log: Path) -> None:
        """The readiness probe, until it passes; RuntimeError if the process exits first
        (`exit_code()` is not None) or it does not pass within `ready_timeout`.

        Cheap while PicoD starts, since many pods start at once on few cores: a bare TCP connect
        until the port listens, then the HTTP probe over one kept-alive connection, every
        10 ms at first and at most every 50 ms."""
        port = self.port(container)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        probe = ((container.get("readinessProbe") or {}).get("httpGet") or {})
        probe_port = probe.get("port", port) if isinstance(probe.get("port"), int) else port
        interval = 0.01
        listening = False
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                code = exit_code()
                if code is not None:
                    tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-400:]
                    raise RuntimeError(f"picod exited with {code}: {tail}")
                listening = listening or await _accepts(ip, probe_port)
                if listening:
                    try:
                        async with session.get(f"http://{ip}:{probe_port}{probe.get('path', '/health')}",
                                               timeout=aiohttp.ClientTimeout(total=1)) as response:
                            if response.status == 200:
                                return
                    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                        pass
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, 0.05)
        raise RuntimeError(f"picod did not become ready in {self.ready_timeout}s")

    def _spawn(self, name: str, argv: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
        workspace = tempfile.mkdtemp(prefix=name + "-", dir=self.directory)
        log = Path(workspace + ".log")
        with open(log, "wb") as out:
            proc = subprocess.Popen([*argv, "--workspace", workspace], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log

    async def stop(self, pod: dict, grace: float = 0.0) -> None:
        """Kill the pod's process: SIGTERM and up to `grace` seconds to exit, then SIGKILL."""
        proc = self._procs.pop(pod["metadata"]["uid"], None)
        if proc is None or proc.poll() is not None:
            return
        if grace > 0:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                await asyncio.wait_for(asyncio.to_thread(proc.wait), grace)
                return
            except (ProcessLookupError, asyncio.TimeoutError):
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await asyncio.to_thread(proc.wait)

    async def stop_all(self) -> None:
        for uid in list(self._procs):
            await self.stop({"metadata": {"uid": uid}})

    def alive(self) -> int:
        return sum(1 for p in self._procs.values() if p.poll() is None)


async def _accepts(ip: str, port: int) -> bool:
    """Whether something listens on ip:port (a TCP connect, closed at once)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (ip, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Cluster:
    """`with Cluster(tmp_path) as cluster:`; `cluster.url` is the API server's URL."""

    def __init__(self, directory: str, *, runtime: bool = True, controller: bool = True,
                 validate: bool = True, watch_delay: float = 0.0) -> None:
        self.watch_delay = watch_delay
        self.directory = directory
        self.with_runtime = runtime
        self.with_controller = controller
        self.validate = validate
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-cluster", daemon=True)
        self.url = ""

    def __enter__(self) -> Cluster:
        self.thread.start()
        try:
            self.run(self._start(), timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def run(self, coroutine, timeout: float = 30.0):
        """Run a coroutine on the cluster's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn, *args, **kwargs):
        """Call a plain function on the cluster's loop (the store is not thread-safe)."""
        async def wrapped():
            return fn(*args, **kwargs)
        return self.run(wrapped())

    async def _start(self) -> None:
        self.api = FakeApiServer(load_crds(CRD_DIR), validate=self.validate, watch_delay=self.watch_delay)
        await self.api.start()
        self.url = self.api.url
        self.runtime = PicodRuntime(self.api.store, self.directory) if self.with_runtime else None
        self.kubelet = Kubelet(self.api.store, runtime=self.runtime)
        await self.kubelet.__aenter__()
        self.controller = None
        if self.with_controller:
            settings = Settings(leader_election=False, metrics_port=0, warm_wait=0.5, resync=30.0,
                                identity="test", namespaces=[])  # every namespace
            self.controller = Controller(KubeClient(await load_configuration(host=self.api.url)), settings)
            await self.controller.__aenter__()
            await self.controller.leading.wait()

    async def _stop(self) -> None:
        if self.controller is not None:
            await self.controller.close()
            await self.controller.kube.close()
        await self.kubelet.__aexit__(None, None, None)
        await self.api.stop()

    # -- objects ----------------------------------------------------------------------------

    def create(self, plural: str, body: dict, namespace: str = NS, group: str = "") -> dict:
        return self.call(lambda: self.api.store.create(self.api.info(plural, group), namespace, copy.deepcopy(body)))

    def patch(self, plural: str, name: str, patch: dict, namespace: str = NS, subresource: str | None = None) -> dict:
        return self.call(lambda: self.api.store.patch(self.api.info(plural), namespace, name, patch,
                                                      subresource=subresource))

    def delete(self, plural: str, name: str, namespace: str = NS) -> None:
        def remove():
            try:
                self.api.store.delete(self.api.info(plural), namespace, name)
            except StoreError:
                pass
        self.call(remove)

    def get(self, plural: str, name: str, namespace: str = NS) -> dict | None:
        return self.call(self.api.get, plural, namespace, name)

    def objects(self, plural: str, namespace: str | None = NS) -> list[dict]:
        return self.call(self.api.objects, plural, namespace)

    def secret_public_pem(self, name: str = "picod-router-identity", namespace: str = NS) -> str:
        secret = self.get("secrets", name, namespace)
        assert secret is not None, f"Secret {name} does not exist"
        return base64.b64decode(secret["data"]["public.pem"]).decode()


def code_interpreter(name: str, *, warm_pool_size: int = 0, args: tuple[str, ...] = (),
                     image: str = "kernelcube/picod:test", **spec: Any) -> dict:
    body = {"metadata": {"name": name}, "spec": {
        "template": {"image": image, "args": list(args),
                     "environment": [{"name": "PICOD_SANDBOX_ID",
                                      "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        **spec}}
    if warm_pool_size:
        body["spec"]["warmPoolSize"] = warm_pool_size
    return body


def install(cluster: Cluster, ci: dict, namespace: str = NS) -> None:
    """Create a CodeInterpreter; the controller makes its SandboxTemplate and warm pool."""
    cluster.create("codeinterpreters", ci, namespace=namespace, group=AGENTCUBE)
