"""A watch-fed cache of one resource: list, then watch from the list's resourceVersion.

The pattern of client-go informers and kubespawner's reflector: on 410 Gone it lists again (and
tells handlers about objects that vanished meanwhile); on other errors it backs off, capped, and
resumes from the last resourceVersion seen; every `resync` seconds it replays every object to the
handlers so a missed wake-up is never permanent. Handlers are plain functions called on the loop
with (old, new) — `new` is None on deletion — and must only enqueue work.

Indexes map a value computed from each object (a label, an owner uid) to the keys holding it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from controller.errors import ApiError, Gone
from controller.resources import Resource

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Handler = Callable[[dict | None, dict | None], None]
IndexFunc = Callable[[dict], Iterable[str]]


def key_of(obj: dict) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Informer:
    def __init__(self, kube: Any, resource: Resource, namespaces: list[str] | None = None, *,
                 label_selector: str | None = None, resync: float = 300.0,
                 watch_timeout: int = 300, backoff_cap: float = 30.0) -> None:
        self.kube = kube
        self.resource = resource
        self.namespaces = namespaces or [None]  # None: all namespaces
        self.label_selector = label_selector
        self.resync = resync
        self.watch_timeout = watch_timeout
        self.backoff_cap = backoff_cap
        self.objects: dict[Key, dict] = {}
        self.first_seen: dict[Key, int] = {}  # FIFO order of arrival, for "oldest first"
        self.handlers: list[Handler] = []
        self.synced = asyncio.Event()
        self.relists = 0
        self._indexes: dict[str, tuple[IndexFunc, dict[str, set[Key]]]] = {}
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task] = []

    # -- reading ----------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> dict | None:
        return self.objects.get((namespace, name))

    def list(self, namespace: str | None = None) -> list[dict]:
        return [obj for (ns, _), obj in self.objects.items() if namespace is None or ns == namespace]

    def add_index(self, name: str, func: IndexFunc) -> None:
        values: dict[str, set[Key]] = {}
        self._indexes[name] = (func, values)
        for key, obj in self.objects.items():
            for value in func(obj):
                values.setdefault(value, set()).add(key)

    def by_index(self, name: str, value: str) -> list[dict]:
        keys = self._indexes[name][1].get(value, ())
        return [self.objects[key] for key in keys if key in self.objects]

    def has_index(self, name: str) -> bool:
        return name in self._indexes

    def index_values(self, name: str) -> list[str]:
        """Every value of an index that some cached object holds (e.g. all session ids)."""
        return [value for value, keys in self._indexes[name][1].items() if keys]

    def add_handler(self, handler: Handler) -> None:
        self.handlers.append(handler)

    # -- the cache --------------------------------------------------------------------------

    def _store(self, key: Key, obj: dict | None) -> None:
        old = self.objects.get(key)
        if old is not None and obj is not None and \
                old["metadata"].get("resourceVersion") == obj["metadata"].get("resourceVersion"):
            return  # a replay of what we hold (relist); nothing changed
        for func, values in self._indexes.values():
            if old is not None:
                for value in func(old):
                    values.get(value, set()).discard(key)
            if obj is not None:
                for value in func(obj):
                    values.setdefault(value, set()).add(key)
        if obj is None:
            self.objects.pop(key, None)
            self.first_seen.pop(key, None)
        else:
            self.objects[key] = obj
            if old is None:
                self.first_seen[key] = next(self._seq)
        self._notify(old, obj)

    def _notify(self, old: dict | None, new: dict | None) -> None:
        for handler in self.handlers:
            try:
                handler(old, new)
            except Exception:  # a handler bug must not kill the watch
                log.exception("event handler failed for %s", self.resource.plural)

    # -- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching; returns once every namespace has been listed once."""
        self.synced.clear()
        listed = [asyncio.Event() for _ in self.namespaces]
        for namespace, event in zip(self.namespaces, listed, strict=True):
            self._tasks.append(asyncio.create_task(self._run(namespace, event)))
        if self.resync:
            self._tasks.append(asyncio.create_task(self._resync_loop()))
        await asyncio.gather(*(event.wait() for event in listed))
        self.synced.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancellation of the caller itself.
            await asyncio.wait(self._tasks)
        self._tasks.clear()

    async def _list(self, namespace: str | None) -> str:
        result = await self.kube.list(self.resource, namespace, label_selector=self.label_selector)
        fresh = {key_of(obj): obj for obj in result.get("items", ())}
        for key in [k for k in self.objects if namespace is None or k[0] == namespace]:
            if key not in fresh:
                self._store(key, None)
        for key, obj in fresh.items():
            self._store(key, obj)
        return result["metadata"]["resourceVersion"]

    async def _run(self, namespace: str | None, listed: asyncio.Event) -> None:
        delay = 0.0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(namespace)
                    self.relists += 1
                    listed.set()
                started, events = asyncio.get_running_loop().time(), 0
                async for event in self.kube.watch(self.resource, namespace, version,
                                                   timeout_seconds=self.watch_timeout,
                                                   label_selector=self.label_selector):
                    events += 1
                    obj = event["object"]
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    if event["type"] == "BOOKMARK":
                        continue
                    key = key_of(obj)
                    self._store(key, None if event["type"] == "DELETED" else obj)
                    delay = 0.0
                if not events and asyncio.get_running_loop().time() - started < 1.0:
                    await asyncio.sleep(0.1)  # a server that ends streams at once: don't spin
            except Gone:
                log.info("watch of %s expired (410); listing again", self.resource.plural)
                version = None
            except (ApiError, ValueError, OSError) as exc:
                if isinstance(exc, ApiError) and exc.status == 429:
                    # A real API server answers `429 storage is (re)initializing` for a moment
                    # after a CRD is created: nothing failed, so retry soon and quietly.
                    log.debug("%s of %s refused (%s); retrying", "watch" if version else "list",
                              self.resource.plural, exc)
                    await asyncio.sleep(0.2 * random.uniform(0.8, 1.2))
                    continue
                delay = min(self.backoff_cap, max(0.1, delay * 2))
                log.warning("watch of %s failed (%s); retrying in %.1fs",
                            self.resource.plural, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync * random.uniform(0.9, 1.1))
            for obj in list(self.objects.values()):
                self._notify(obj, obj)
