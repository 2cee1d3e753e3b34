"""A process kubelet for a real API server: the scheduler and kubelet of one fake node.

It watches every pod, binds the pending ones to its node (the `binding` subresource, as the
scheduler does), reports them Pending and scheduled, starts each pod's PicoD container as a local
process with the pod's env and args on a loopback address of its own (the pod IP, so ports never
collide), runs the readiness probe, and writes the pod's status (phase, conditions, podIP). When a
pod is deleted, the API server marks it terminating for its grace period; the kubelet stops the
process (SIGTERM, then SIGKILL after the grace period) and finishes the deletion with a zero
grace period, as a real kubelet does. The container runtime is the fake cluster's `PicodRuntime`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

from controller.errors import ApiError, NotFound
from controller.informer import Informer
from controller.resources import PODS
from controller.testing.store import now_rfc3339
from tests.kubernetes.cluster import PicodRuntime

log = logging.getLogger(__name__)
NODE = "e2e-node"


def _condition(type_: str, status: str, reason: str = "") -> dict:
    found = {"type": type_, "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        found["reason"] = reason
    return found


class ApiPicodRuntime(PicodRuntime):
    """PicodRuntime whose `secretKeyRef`s are read from the API server before a pod starts."""

    def __init__(self, kube: Any, directory: str, **kwargs: Any) -> None:
        super().__init__(None, directory, **kwargs)
        self.kube = kube
        self._secrets: dict[tuple[str, str], dict] = {}

    async def start(self, pod: dict) -> str:
        ns = pod["metadata"]["namespace"]
        for container in pod["spec"]["containers"][:1]:
            for var in container.get("env") or ():
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ns, ref["name"]) not in self._secrets:
                    self._secrets[(ns, ref["name"])] = await self.kube.request(
                        "GET", f"/api/v1/namespaces/{ns}/secrets/{ref['name']}")
        return await super().start(pod)

    def secret_value(self, namespace: str, ref: dict) -> str:
        secret = self._secrets[(namespace, ref["name"])]
        return base64.b64decode(secret["data"][ref["key"]]).decode()


class ProcessKubelet:
    """`async with ProcessKubelet(kube, runtime):` runs pods while the block lasts."""

    def __init__(self, kube: Any, runtime: PicodRuntime, node: str = NODE) -> None:
        self.kube = kube
        self.runtime = runtime
        self.node = node
        self.pods = Informer(kube, PODS, None, resync=0, watch_timeout=290)
        self._tasks: dict[str, asyncio.Task] = {}  # pod uid -> its lifecycle task
        self._seen: dict[str, asyncio.Event] = {}  # pod uid -> set on every update
        self._stopping: set[asyncio.Future] = set()
        self.deletes_finished = 0

    async def __aenter__(self) -> ProcessKubelet:
        self.pods.add_handler(self._on_pod)
        await self.pods.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.pods.stop()
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
        if self._stopping:
            await asyncio.wait(list(self._stopping))
        await self.runtime.stop_all()

    def _on_pod(self, old: dict | None, new: dict | None) -> None:
        pod = new or old
        assert pod is not None
        uid = pod["metadata"]["uid"]
        if new is None:
            task = self._tasks.pop(uid, None)
            if task is not None:
                task.cancel()
            stopping = asyncio.ensure_future(self.runtime.stop(pod))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            return
        if uid not in self._tasks:
            if new.get("status", {}).get("phase") in ("Running", "Succeeded", "Failed") and \
                    new["spec"].get("nodeName") == self.node and not new["metadata"].get(
                        "deletionTimestamp"):
                return  # ours from before a restart of the kubelet: nothing runs it any more
            self._seen[uid] = asyncio.Event()
            self._tasks[uid] = asyncio.create_task(self._lifecycle(uid, new))
        self._seen[uid].set()

    def _current(self, pod: dict) -> dict | None:
        found = self.pods.get(pod["metadata"]["namespace"], pod["metadata"]["name"])
        return found if found is not None and found["metadata"]["uid"] == pod["metadata"][
            "uid"] else None

    async def _lifecycle(self, uid: str, pod: dict) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        try:
            if not pod["metadata"].get("deletionTimestamp"):
                if not pod["spec"].get("nodeName"):
                    await self.kube.request("POST", path + "/binding", content_type=(
                        "application/json"), body={
                        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}})
                await self._status(path, {"phase": "Pending", "hostIP": "127.0.0.1",
                                          "conditions": [
                                              _condition("PodScheduled", "True"),
                                              _condition("Initialized", "True"),
                                              _condition("ContainersReady", "False",
                                                         "ContainersNotReady"),
                                              _condition("Ready", "False",
                                                         "ContainersNotReady")]})
                await self._run(path, pod)
            while True:  # wait for the deletion
                current = self._current(pod)
                if current is None:
                    return
                if current["metadata"].get("deletionTimestamp"):
                    grace = current["metadata"].get("deletionGracePeriodSeconds") or 0
                    await self.runtime.stop(current, float(grace))
                    await self._finish_delete(path, uid)
                    return
                self._seen[uid].clear()
                await self._seen[uid].wait()
        except asyncio.CancelledError:
            raise
        except NotFound:
            await self.runtime.stop(pod)
        except Exception:  # noqa: BLE001 -- a test kubelet logs and gives the pod up
            log.exception("kubelet: pod %s/%s failed", ns, name)
            await self.runtime.stop(pod)
        finally:
            if self._tasks.get(uid) is asyncio.current_task():
                self._tasks.pop(uid, None)
                self._seen.pop(uid, None)

    async def _run(self, path: str, pod: dict) -> None:
        try:
            ip = await self.runtime.start(pod)
        except Exception as exc:  # noqa: BLE001 -- reported in the pod's status
            await self._status(path, {"containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                "restartCount": 1, "state": {"waiting": {
                    "reason": "CrashLoopBackOff", "message": str(exc)[:500]}}}
                for c in pod["spec"]["containers"]]})
            return
        await self._status(path, {
            "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": now_rfc3339(),
            "conditions": [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
                           _condition("ContainersReady", "True"), _condition("Ready", "True")],
            "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                "started": True, "restartCount": 0,
                "state": {"running": {"startedAt": now_rfc3339()}}}
                for c in pod["spec"]["containers"]]})

    async def _status(self, path: str, status: dict) -> None:
        await self.kube.request("PATCH", path + "/status", body={"status": status},
                                content_type="application/merge-patch+json")

    async def _finish_delete(self, path: str, uid: str) -> None:
        with contextlib.suppress(NotFound):
            try:
                await self.kube.request("DELETE", path, content_type="application/json", body={
                    "kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid}})
            except ApiError as exc:
                if exc.status != 409:
                    raise
        self.deletes_finished += 1
