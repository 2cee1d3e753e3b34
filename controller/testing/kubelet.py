"""A simulated scheduler and kubelet for the fake API server.

Pods created through the API are bound to a node and reported Running and Ready with a pod IP
after `start_delay`, as a cluster would. Tests steer it: `unschedulable` keeps new pods Pending
(PodScheduled=False/Unschedulable), `hold` keeps them Pending and scheduled but never Ready, and
`finish()` ends a pod as Succeeded or Failed. The pod IPs are data only: nothing dials them.
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
                 nodes: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> None:
        self.store = store
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event = await self._queue.get()
            if event.resource != ("", "pods") or event.type != "ADDED":
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
