"""A simulated scheduler and kubelet for the fake API server.

Pods created through the API are bound to a node and reported Running and Ready with a pod IP
after `start_delay`, as a cluster would. Tests steer it: `unschedulable` keeps new pods Pending
(PodScheduled=False/Unschedulable), `hold` keeps them Pending and scheduled but never Ready, and
`finish()` ends a pod as Succeeded or Failed. By default the pod IPs are data only: nothing
dials them. With a `runtime`, each pod's containers really run (e.g. PicoD as a local process on
a loopback address): `await runtime.start(pod)` returns the pod IP once they are ready, the pod
is reported Ready then (a container that cannot start: CrashLoopBackOff), and
`await runtime.stop(pod)` runs when the pod is deleted or the kubelet stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from controller.testing.store import Store, StoreError, now_rfc3339


def _condition(type_: str, status: str, reason: str = "") -> dict:
    cond = {"type": type_, "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        cond["reason"] = reason
    return cond


class Kubelet:
    """Runs while the `async with` block lasts; reacts to pods created in `store`."""

    def __init__(self, store: Store, *, start_delay: float = 0.02,
                 nodes: tuple[str, ...] = ("node-a", "node-b", "node-c"), runtime: Any = None) -> None:
        self.store = store
        self.runtime = runtime
        self._running: dict[str, dict] = {}  # pod uid -> pod, while its containers run
        self._starting: set[asyncio.Task] = set()
        self.start_delay = start_delay
        self.nodes = itertools.cycle(nodes)
        self.unschedulable = False
        self.hold = False
        self._ips = itertools.count(1)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._pods = store.resources[("", "pods")]

    async def __aenter__(self) -> Kubelet:
        self.store.subscribe(self._queue, ("", "pods"))
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.store.unsubscribe(self._queue)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._starting):
            task.cancel()
        if self._starting:
            await asyncio.wait(self._starting)
        for pod in list(self._running.values()):
            await self.runtime.stop(pod)
        self._running.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event = await self._queue.get()
            if event.resource != ("", "pods"):
                continue
            if event.type == "DELETED" and self.runtime is not None:
                pod = self._running.pop(event.obj["metadata"]["uid"], None)
                if pod is not None:
                    await self.runtime.stop(pod)
                continue
            if event.type != "ADDED":
                continue
            meta = event.obj["metadata"]
            loop.call_later(self.start_delay, self._start, meta["namespace"], meta["name"],
                            meta["uid"])

    def _start(self, namespace: str, name: str, uid: str) -> None:
        try:
            pod = self.store.get(self._pods, namespace, name)
        except StoreError:
            return
        if pod["metadata"]["uid"] != uid or pod.get("status", {}).get("phase"):
            return
        if self.unschedulable:
            self._status(pod, {"phase": "Pending", "conditions": [
                _condition("PodScheduled", "False", "Unschedulable")]})
            return
        pod = self.store.patch(self._pods, namespace, name, {"spec": {"nodeName": next(self.nodes)}})
        if self.runtime is not None and not self.hold:
            task = asyncio.ensure_future(self._run_containers(pod))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
            return
        n = next(self._ips)
        ready = "False" if self.hold else "True"
        self._status(pod, {
            "phase": "Pending" if self.hold else "Running",
            "podIP": f"10.244.{n // 250}.{n % 250 + 1}",
            "podIPs": [{"ip": f"10.244.{n // 250}.{n % 250 + 1}"}],
            "hostIP": "192.0.2.10",
            "startTime": now_rfc3339(),
            "conditions": [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
                           _condition("ContainersReady", ready), _condition("Ready", ready)],
        })

    async def _run_containers(self, pod: dict) -> None:
        meta = pod["metadata"]
        self._running[meta["uid"]] = pod
        try:
            ip = await self.runtime.start(pod)
        except Exception as exc:  # noqa: BLE001 -- reported in the pod's status, as a kubelet does
            ip, error = "", str(exc)[:500] or type(exc).__name__
        else:
            error = ""
        if meta["uid"] not in self._running:  # deleted while its containers started
            await self.runtime.stop(pod)
            return
        try:
            pod = self.store.get(self._pods, meta["namespace"], meta["name"])
        except StoreError:
            return
        ready = "False" if error else "True"
        status = {"phase": "Running", "hostIP": "192.0.2.10", "startTime": now_rfc3339(),
                  "conditions": [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
                                 _condition("ContainersReady", ready), _condition("Ready", ready)]}
        if ip:
            status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        if error:
            status["containerStatuses"] = [{"name": c["name"], "ready": False, "restartCount": 1, "state": {
                "waiting": {"reason": "CrashLoopBackOff", "message": error}}} for c in pod["spec"]["containers"]]
        self._status(pod, status)

    def _status(self, pod: dict, status: dict) -> None:
        meta = pod["metadata"]
        self.store.patch(self._pods, meta["namespace"], meta["name"], {"status": status},
                         subresource="status")

    def finish(self, namespace: str, name: str, phase: str = "Succeeded") -> None:
        """End a pod's containers: phase Succeeded or Failed, not Ready."""
        pod = self.store.get(self._pods, namespace, name)
        conditions = [c for c in pod.get("status", {}).get("conditions", [])
                      if c["type"] not in ("Ready", "ContainersReady")]
        self._status(pod, {"phase": phase, "conditions": conditions + [
            _condition("ContainersReady", "False", "PodCompleted"),
            _condition("Ready", "False", "PodCompleted")]})
