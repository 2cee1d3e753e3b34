"""The process kubelet's container runtime: a pod's first container runs as a PicoD process on
the pod's own loopback address (kept across container restarts, as a pod IP is), with the
container's env (`secretKeyRef`s read from the API server) and args, in control groups of its
own that carry the container's `resources.limits` (memory, cpu), the way the local sandbox
provider bounds a sandbox (`kernel_gateway_ext.providers.cgroups`). Where no cgroup is
writable, a memory limit falls back to an address-space rlimit (`prlimit`), as there too.

Every container is in its cgroup, limited or not, so that stopping it kills whatever it forked.
Exits are noticed through a pidfd on the loop (no thread per container), which is what lets the
kubelet restart containers under the pod's `restartPolicy`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.testing.store import now_rfc3339
from kernel_gateway_ext.providers import bwrap, cgroups
from tests.kubernetes.cluster import PicodRuntime

log = logging.getLogger(__name__)
# A container without a limit: no cap, in practice (the kernel clamps it to its own maximum).
UNLIMITED_MEMORY = 1 << 50
# Kubernetes has no per-container process limit (the node's podPidsLimit is unset by default).
PROCESSES = 32768
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_SUFFIXES = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "P": 1e15, "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3", 2) as a number."""
    match = _QUANTITY.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def container_limits(container: dict) -> cgroups.Limits:
    """The container's `resources.limits` as the local provider's Limits (0 cpus: no cap)."""
    limits = (container.get("resources") or {}).get("limits") or {}
    memory = int(quantity(limits["memory"])) if "memory" in limits else UNLIMITED_MEMORY
    cpus = quantity(limits["cpu"]) if "cpu" in limits else 0.0
    return cgroups.Limits(memory=memory, processes=PROCESSES, cpus=cpus)


def exit_code(returncode: int) -> int:
    """A container's exit code: 128 + the signal for a process killed by one, as runtimes say."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Container:
    """One run of a pod's container: restarting the container makes a new one."""

    proc: subprocess.Popen
    log: Path
    started_at: str
    exited: asyncio.Future = field(repr=False)  # the container's exit code, once it exits

    def log_tail(self, chars: int = 400) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ProcessRuntime(PicodRuntime):
    """Containers as local PicoD processes for the kubelet of a real API server."""

    def __init__(self, kube: Any, directory: str, *, ip_prefix: str = "127.78",
                 ready_timeout: float = 60.0) -> None:
        super().__init__(None, directory, ready_timeout=ready_timeout, ip_prefix=ip_prefix)
        self.kube = kube
        self._secrets: dict[tuple[str, str], dict] = {}
        self._pod_ips: dict[str, str] = {}  # pod uid -> its address, for the pod's whole life
        self._containers: dict[str, Container] = {}  # pod uid -> its running container
        group = f"kernelcube-e2e-{hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:12]}"
        self.cgroups = cgroups.detect(group)

    def describe(self) -> str:
        """What bounds the containers here, for the test's log."""
        if self.cgroups is not None:
            return f"containers in cgroups v{self.cgroups.version} with their resources.limits"
        return "no writable cgroups: a memory limit is an address-space rlimit, cpu is not capped"

    # -- secrets ---------------------------------------------------------------------------

    async def _read_secrets(self, pod: dict) -> None:
        ns = pod["metadata"]["namespace"]
        for container in pod["spec"]["containers"][:1]:
            for var in container.get("env") or ():
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ns, ref["name"]) not in self._secrets:
                    self._secrets[(ns, ref["name"])] = await self.kube.request(
                        "GET", f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")

    def secret_value(self, namespace: str, ref: dict) -> str:
        secret = self._secrets[(namespace, ref["name"])]
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    # -- containers ------------------------------------------------------------------------

    def pod_ip(self, pod: dict) -> str:
        uid = pod["metadata"]["uid"]
        if uid not in self._pod_ips:
            n = next(self._ips)
            self._pod_ips[uid] = f"{self.ip_prefix}.{n // 250}.{n % 250 + 1}"
        return self._pod_ips[uid]

    def pid(self, pod_uid: str) -> int | None:
        """The PID of the pod's running container (for tests that kill it)."""
        container = self._containers.get(pod_uid)
        return container.proc.pid if container is not None and container.proc.returncode is None else None

    async def launch(self, pod: dict) -> Container:
        """Start (or restart) the pod's container; its readiness is `ready`'s to tell."""
        uid = pod["metadata"]["uid"]
        old = self._containers.pop(uid, None)
        if old is not None:
            await self._kill(old, 0.0)
        await self._read_secrets(pod)
        spec = pod["spec"]["containers"][0]
        ip = self.pod_ip(pod)
        limits = container_limits(spec)
        prefix: list[str] = []
        if self.cgroups is not None:
            group = _group(uid)
            await self._discard(group)  # what a previous run of the container left
            prefix = cgroups.join_argv(self.cgroups.create(group, limits))
        elif limits.memory != UNLIMITED_MEMORY:
            prefix = bwrap.prlimit_argv({"as": limits.memory})
        spawning = asyncio.ensure_future(asyncio.to_thread(
            self._spawn, pod["metadata"]["name"], prefix + self.argv(spec, ip), self._env(pod, spec, ip)))
        try:
            proc, log = await asyncio.shield(spawning)
        except asyncio.CancelledError:  # the pod went while it spawned: do not leave it behind
            spawning.add_done_callback(lambda done: None if done.cancelled() or done.exception()
                                       else _killpg(done.result()[0].pid))
            raise
        container = Container(proc, log, now_rfc3339(), _exit_future(proc))
        self._containers[uid] = container
        self.started += 1
        return container

    async def ready(self, pod: dict, container: Container) -> None:
        """The readiness probe until it passes (RuntimeError: the container exited first)."""
        def code() -> int | None:
            return container.exited.result() if container.exited.done() else None
        await self.probe(pod["spec"]["containers"][0], self.pod_ip(pod), code, container.log)

    async def start(self, pod: dict) -> str:
        await self.ready(pod, await self.launch(pod))
        return self.pod_ip(pod)

    async def stop(self, pod: dict, grace: float = 0.0) -> None:
        """The pod is gone: SIGTERM, up to `grace` seconds, then SIGKILL to all it runs."""
        uid = pod["metadata"]["uid"]
        container = self._containers.pop(uid, None)
        self._pod_ips.pop(uid, None)
        if container is not None:
            await self._kill(container, grace)
        await self._discard(_group(uid))

    async def _discard(self, group: str, timeout: float = 60.0) -> None:
        """SIGKILL whatever is left in the container's cgroups and remove them, without
        blocking the loop or a thread while killed processes take their time to leave (they
        do, when a hundred pods go at once on two cores)."""
        if self.cgroups is None:
            return
        paths = self.cgroups.paths(group)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while _sweep(paths):
            if loop.time() > deadline:
                log.warning("cgroup %s still busy after %.0fs; left behind", group, timeout)
                return
            await asyncio.sleep(0.05)

    async def _kill(self, container: Container, grace: float) -> None:
        if container.exited.done():
            return
        if grace > 0:
            _killpg(container.proc.pid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(container.exited), grace)
                return
        _killpg(container.proc.pid, signal.SIGKILL)
        await container.exited

    async def stop_all(self) -> None:
        """Every container, and every cgroup of ours left (a launch cut short by the end)."""
        await asyncio.gather(*(self.stop({"metadata": {"uid": uid}}) for uid in list(self._containers)))
        if self.cgroups is not None:
            groups = {name for parent in self.cgroups.parents.values()
                      for name in _listdir(parent) if name.startswith("pod-")}
            await asyncio.gather(*(self._discard(group) for group in groups))
            self.cgroups.close()

    def alive(self) -> int:
        return sum(1 for c in self._containers.values() if not c.exited.done())


def _sweep(paths: list[str]) -> bool:
    """One round of killing what is in the cgroups and removing them (cgroupfs calls, which
    never block); whether any is left."""
    left = False
    for path in paths:
        if not os.path.isdir(path):
            continue
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.procs")) as procs:
            for pid in procs.read().split():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            os.rmdir(path)
        except OSError:  # EBUSY while a killed process is still leaving
            left = True
    return left


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _group(pod_uid: str) -> str:
    return f"pod-{pod_uid}"


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _exit_future(proc: subprocess.Popen) -> asyncio.Future:
    """A future of the process's exit code, set from a pidfd watched by the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    fd = os.pidfd_open(proc.pid)

    def exited() -> None:
        returncode = proc.poll()
        if returncode is None:  # readable means exited; poll() may lose a race for the lock
            loop.call_later(0.01, exited)
            return
        if not future.done():
            future.set_result(exit_code(returncode))

    def readable() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        exited()

    loop.add_reader(fd, readable)
    return future
