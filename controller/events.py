"""Kubernetes Events on the objects users look at (`kubectl describe codeinterpreter NAME`).

core/v1 Events, aggregated as kubectl and client-go's recorder do: a repeat of the same
(object, type, reason, message) bumps `count` and `lastTimestamp` of the existing Event instead of
creating another, and repeats within `min_interval` are not written at all, so a failing pool
polled every few seconds costs one write per interval. Recording never fails a reconcile:
errors are logged and dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

from controller import conditions as cond
from controller.errors import ApiError, NotFound
from controller.resources import EVENTS

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
COMPONENT = "kernelcube-controller"


class EventRecorder:
    def __init__(self, kube: Any, *, min_interval: float = 60.0, cache_size: int = 4096) -> None:
        self.kube = kube
        self.min_interval = min_interval
        self.cache_size = cache_size
        self.recorded = 0  # Events written (created or bumped), for tests
        self._seen: dict[str, tuple[float, int]] = {}  # event name -> (last write, count)
        self._pending: set[asyncio.Task] = set()

    def emit(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """`record` in a task of its own, for callers on a latency-sensitive path."""
        task = asyncio.ensure_future(self._record_quietly(obj, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record_quietly(self, obj: dict, type_: str, reason: str, message: str) -> None:
        try:
            await self.record(obj, type_, reason, message)
        except Exception as exc:  # noqa: BLE001 -- an Event is never worth a failure
            log.warning("cannot record Event %s: %s", reason, exc)

    async def drain(self) -> None:
        """Wait for the Events being written (before stopping, and in tests)."""
        if self._pending:
            await asyncio.wait(list(self._pending))

    async def record(self, obj: dict, type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        digest = hashlib.sha256(f"{meta['uid']}/{type_}/{reason}/{message}".encode()).hexdigest()
        name = f"{meta['name']}.{digest[:16]}"
        now = time.monotonic()
        last = self._seen.get(name)
        if last is not None and now - last[0] < self.min_interval:
            return
        count = (last[1] if last else 0) + 1
        stamp = cond.format_time(cond.now())
        ns = meta.get("namespace") or "default"
        try:
            if last is None:
                await self.kube.create(EVENTS, ns, self._body(obj, name, type_, reason, message,
                                                              stamp))
            else:
                await self.kube.patch(EVENTS, ns, name, {"count": count, "lastTimestamp": stamp})
        except NotFound:
            # Expired by the API server meanwhile (Events live about an hour): start afresh.
            self._seen.pop(name, None)
            return await self.record(obj, type_, reason, message)
        except ApiError as exc:
            if exc.status != 409:
                log.warning("cannot record Event %s on %s %s/%s: %s", reason,
                            obj.get("kind"), ns, meta["name"], exc)
                return
            # 409: another replica (or our previous term) created it; bump it next time.
        if len(self._seen) >= self.cache_size:
            self._seen.clear()
        self._seen[name] = (now, count)
        self.recorded += 1
        log.info("Event %s %s on %s %s/%s: %s", type_, reason, obj.get("kind"), ns, meta["name"],
                 message)

    @staticmethod
    def _body(obj: dict, name: str, type_: str, reason: str, message: str, stamp: str) -> dict:
        meta = obj["metadata"]
        return {
            "metadata": {"name": name, "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "name": meta["name"], "namespace": meta.get("namespace"),
                               "uid": meta["uid"],
                               "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
        }
