"""A watch-fed cache of one resource in some namespaces: list, then watch from the list's
resourceVersion (the reflector pattern of client-go and kubespawner).

On 410 Gone it lists again and tells handlers about objects that vanished meanwhile; on other
errors it backs off (capped, jittered) and resumes from the last resourceVersion seen. A kind
whose CRD is not installed counts as listed (empty) and is retried, so the gateway still starts.
Handlers are plain functions called on the loop with (old, new), `new` None on deletion; they
must not block.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from .kube import Gone, KubeApi, KubeError, NotFound, Resource

log = logging.getLogger("kernelcube.kube")

Key = tuple[str, str]  # (namespace, name)
Handler = Callable[[dict | None, dict | None], None]


def key_of(obj: dict) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Informer:
    def __init__(self, api: KubeApi, resource: Resource, namespaces: list[str], *,
                 label_selector: str = "", watch_timeout: int = 300, backoff_cap: float = 30.0) -> None:
        self.api = api
        self.resource = resource
        self.namespaces = namespaces
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.backoff_cap = backoff_cap
        self.objects: dict[Key, dict] = {}
        self.handlers: list[Handler] = []
        self.installed = True  # False while the API server does not know the kind
        self._tasks: list[asyncio.Task] = []

    def get(self, namespace: str, name: str) -> dict | None:
        return self.objects.get((namespace, name))

    def values(self) -> list[dict]:
        return list(self.objects.values())

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    async def start(self) -> None:
        """Start watching; return once every namespace was listed once (or found not served)."""
        listed = [asyncio.Event() for _ in self.namespaces]
        for namespace, event in zip(self.namespaces, listed, strict=True):
            self._tasks.append(asyncio.ensure_future(self._run(namespace, event)))
        await asyncio.gather(*(event.wait() for event in listed))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()

    def _store(self, key: Key, obj: dict | None) -> None:
        old = self.objects.get(key)
        if obj is None:
            if old is None:
                return
            del self.objects[key]
        else:
            if old is not None and old["metadata"].get("resourceVersion") == obj["metadata"].get("resourceVersion"):
                return
            self.objects[key] = obj
        for handler in self.handlers:
            try:
                handler(old, obj)
            except Exception:  # a handler bug must not end the watch
                log.exception("event handler failed for %s", self.resource.plural)

    async def _list(self, namespace: str) -> str:
        result = await self.api.list(self.resource, namespace, label_selector=self.label_selector)
        fresh = {key_of(obj): obj for obj in result.get("items") or ()}
        for key in [k for k in self.objects if k[0] == namespace and k not in fresh]:
            self._store(key, None)
        for key, obj in fresh.items():
            self._store(key, obj)
        return result["metadata"]["resourceVersion"]

    async def _run(self, namespace: str, listed: asyncio.Event) -> None:
        delay = 0.0
        version: str | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                if version is None:
                    version = await self._list(namespace)
                    self.installed = True
                    listed.set()
                started, events = loop.time(), 0
                async for event in self.api.watch(self.resource, namespace, version,
                                                  timeout_seconds=self.watch_timeout,
                                                  label_selector=self.label_selector):
                    events += 1
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    if event["type"] != "BOOKMARK":
                        self._store(key_of(obj), None if event["type"] == "DELETED" else obj)
                    delay = 0.0
                if not events and loop.time() - started < 1.0:
                    await asyncio.sleep(0.1)  # a server that ends streams at once: don't spin
            except Gone:
                log.info("watch of %s expired (410); listing again", self.resource.plural)
                version = None
            except (KubeError, ValueError, OSError) as exc:
                if isinstance(exc, NotFound) and version is None:
                    if self.installed:
                        log.warning("the API server does not serve %s in namespace %s (is its CRD "
                                    "installed?); looking again in the background", self.resource.plural, namespace)
                    self.installed = False
                    listed.set()
                delay = min(self.backoff_cap, max(0.2, delay * 2))
                if not isinstance(exc, NotFound):
                    log.warning("watch of %s failed (%s); retrying in %.1fs", self.resource.plural, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
