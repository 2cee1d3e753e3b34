"""A process kubelet for a real API server: the scheduler and kubelet of one fake node.

It watches every pod, binds the pending ones to its node (the `binding` subresource, as the
scheduler does), reports them Pending and scheduled, starts each pod's PicoD container through
the `ProcessRuntime` (a local process on a loopback address of its own, the pod IP, so ports
never collide, bounded by the container's resource limits), runs the readiness probe, and
writes the pod's status (phase, conditions, podIP, containerStatuses).

A container that exits is handled under the pod's `restartPolicy`, as a kubelet does: `Always`
(the default) and `OnFailure` (for a non-zero exit) restart it on the same pod IP, the first time
at once and then after a back-off that doubles up to a cap (CrashLoopBackOff while it waits),
counting `restartCount` and reporting the exit in `lastState.terminated`; otherwise the pod ends
`Succeeded` (exit 0) or `Failed`. When a pod is deleted, the API server marks it terminating for
its grace period; the kubelet stops the process (SIGTERM, then SIGKILL after the grace period)
and finishes the deletion with a zero grace period, as a real kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from controller.errors import ApiError, NotFound
from controller.informer import Informer
from controller.resources import PODS
from controller.testing.store import now_rfc3339
from tests.e2e.runtime import ProcessRuntime

log = logging.getLogger(__name__)
NODE = "e2e-node"
# The kubelet's back-off (10 s doubling to 5 min), scaled down for tests; a container that ran
# this long without exiting starts over from the first step.
BACKOFF = (1.0, 30.0)
BACKOFF_RESET = 60.0


def _condition(type_: str, status: str, reason: str = "") -> dict:
    found = {"type": type_, "status": status, "lastTransitionTime": now_rfc3339()}
    if reason:
        found["reason"] = reason
    return found


def _conditions(ready: bool, reason: str = "ContainersNotReady") -> list[dict]:
    state, why = ("True", "") if ready else ("False", reason)
    return [_condition("PodScheduled", "True"), _condition("Initialized", "True"),
            _condition("ContainersReady", state, why), _condition("Ready", state, why)]


class ProcessKubelet:
    """`async with ProcessKubelet(kube, runtime):` runs pods while the block lasts."""

    def __init__(self, kube: Any, runtime: ProcessRuntime, node: str = NODE,
                 backoff: tuple[float, float] = BACKOFF) -> None:
        self.kube = kube
        self.runtime = runtime
        self.node = node
        self.backoff = backoff
        self.pods = Informer(kube, PODS, None, resync=0, watch_timeout=290)
        self._tasks: dict[str, asyncio.Task] = {}  # pod uid -> its lifecycle task
        self._seen: dict[str, asyncio.Event] = {}  # pod uid -> set on every update
        self._stopping: set[asyncio.Future] = set()
        self.deletes_finished = 0
        self.restarts = 0

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
        containers: asyncio.Task | None = None
        try:
            if not pod["metadata"].get("deletionTimestamp"):
                if not pod["spec"].get("nodeName"):
                    await self.kube.request("POST", path + "/binding", content_type=(
                        "application/json"), body={
                        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}})
                await self._status(path, {"phase": "Pending", "hostIP": "127.0.0.1",
                                          "conditions": _conditions(False)})
                containers = asyncio.create_task(self._containers(path, pod))
            while True:  # wait for the deletion
                if containers is not None and containers.done():
                    containers.result()  # raises what failed it
                current = self._current(pod)
                if current is None:
                    return
                if current["metadata"].get("deletionTimestamp"):
                    await _cancelled(containers)
                    grace = current["metadata"].get("deletionGracePeriodSeconds") or 0
                    await self.runtime.stop(current, float(grace))
                    await self._finish_delete(path, uid)
                    return
                self._seen[uid].clear()
                waits: list[Any] = [asyncio.ensure_future(self._seen[uid].wait())]
                if containers is not None and not containers.done():
                    waits.append(containers)
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waits[0].cancel()
        except asyncio.CancelledError:
            raise
        except NotFound:
            await self.runtime.stop(pod)
        except Exception:  # noqa: BLE001 -- a test kubelet logs and gives the pod up
            log.exception("kubelet: pod %s/%s failed", ns, name)
            await self.runtime.stop(pod)
        finally:
            await _cancelled(containers)
            if self._tasks.get(uid) is asyncio.current_task():
                self._tasks.pop(uid, None)
                self._seen.pop(uid, None)

    async def _containers(self, path: str, pod: dict) -> None:
        """Run the pod's container until the restart policy lets it end (or the pod goes)."""
        policy = pod["spec"].get("restartPolicy") or "Always"
        names = [c["name"] for c in pod["spec"]["containers"]]
        image = pod["spec"]["containers"][0].get("image", "")
        restarts = crashes = 0
        last: dict = {}  # lastState
        loop = asyncio.get_running_loop()
        while True:
            container = await self.runtime.launch(pod)
            ran_since = loop.time()
            message = ""
            try:
                await self.runtime.ready(pod, container)
            except RuntimeError as exc:  # exited before it was ready, or never got ready
                message = str(exc)[:500]
            else:
                ip = self.runtime.pod_ip(pod)
                await self._status(path, {
                    "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                    "podIP": ip, "podIPs": [{"ip": ip}], "startTime": container.started_at,
                    "conditions": _conditions(True),
                    "containerStatuses": [_container_status(
                        n, image, restarts, {"running": {"startedAt": container.started_at}},
                        last, ready=True) for n in names]})
            code = await container.exited
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "startedAt": container.started_at, "finishedAt": now_rfc3339()}
            if message or code:
                terminated["message"] = message or container.log_tail()
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                phase = "Succeeded" if code == 0 else "Failed"
                await self._status(path, {
                    "phase": phase, "conditions": _conditions(False, "PodCompleted"),
                    "containerStatuses": [_container_status(
                        n, image, restarts, {"terminated": terminated}, last) for n in names]})
                return
            if loop.time() - ran_since >= BACKOFF_RESET:
                crashes = 0
            delay = 0.0 if crashes == 0 else min(self.backoff[0] * 2 ** (crashes - 1),
                                                 self.backoff[1])
            crashes += 1
            last = {"terminated": terminated}
            state = {"terminated": terminated} if not delay else {"waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container; "
                           f"{terminated.get('message') or terminated['reason']}"[:500]}}
            await self._status(path, {"phase": "Running", "conditions": _conditions(False),
                                      "containerStatuses": [_container_status(
                                          n, image, restarts, state, last) for n in names]})
            await asyncio.sleep(delay)
            restarts += 1
            self.restarts += 1

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


def _container_status(name: str, image: str, restarts: int, state: dict, last: dict,
                      ready: bool = False) -> dict:
    return {"name": name, "image": image, "imageID": "", "ready": ready,
            "started": "running" in state, "restartCount": restarts, "state": state,
            "lastState": last}


async def _cancelled(task: asyncio.Task | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
