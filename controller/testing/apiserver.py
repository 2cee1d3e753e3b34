"""A fake Kubernetes API server over real HTTP, for tests and benchmarks.

No kube-apiserver can run on the development machines, so the controller's tests and benchmark
talk to this one instead: the same URLs, verbs, JSON bodies, `Status` errors and chunked watch
streams as the real server, over aiohttp on a loopback port. The object semantics live in
`controller.testing.store`. kmock was tried first and set aside: it has no resourceVersion
conflicts, uids, generateName, label selectors or garbage collection, all of which the claim and
warm-pool logic depend on.

Served: core `pods`, `services`, `persistentvolumeclaims`, `events`, `secrets`; `events.k8s.io`
events; `networkpolicies`, `leases`;
and every custom resource of the CRD manifests given (their schemas are enforced).
Knobs for tests: `validate=False` (skip CRD schema work, for benchmarks of the controller),
`watch_delay` (an informer that lags), `compact()` (forces 410 on resume),
`close_watches()` (drops every stream), `initializing` (a number of lists or watches of a
resource answered `429 storage is (re)initializing`, as right after its CRD is created), and
`requests` (a count per verb and resource), `subresource_requests` (per verb, resource and
subresource) and `statuses` (per verb, resource and code).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from controller.testing.selectors import matches_fields, matches_labels
from controller.testing.store import ResourceInfo, Store, StoreError, dumps

CORE = [
    ResourceInfo("", "v1", "pods", "Pod"),
    ResourceInfo("", "v1", "services", "Service"),
    ResourceInfo("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    ResourceInfo("", "v1", "events", "Event", status_subresource=False),
    ResourceInfo("events.k8s.io", "v1", "events", "Event", status_subresource=False),
    ResourceInfo("", "v1", "secrets", "Secret", status_subresource=False),
    ResourceInfo("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy",
                 status_subresource=False),
    ResourceInfo("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False),
]

_PATH = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


def crd_resources(crds: list[dict]) -> list[ResourceInfo]:
    """ResourceInfos for the served versions of CustomResourceDefinition manifests."""
    infos = []
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True) or not version.get("storage", False):
                continue
            infos.append(ResourceInfo(
                spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                status_subresource="status" in (version.get("subresources") or {}),
                schema=version["schema"]["openAPIV3Schema"]))
    return infos


def load_crds(directory: str | Path) -> list[dict]:
    """Every CustomResourceDefinition in the YAML files of a directory."""
    import yaml

    crds = []
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds.append(doc)
    return crds


class FakeApiServer:
    """`async with FakeApiServer(crds) as api:` serves on `api.url` until the block ends."""

    def __init__(self, crds: list[dict] = (), *, watch_delay: float = 0.0,
                 history: int = 50000, validate: bool = True) -> None:
        self.store = Store(CORE + crd_resources(list(crds)), history=history)
        self.store.validate = validate
        self.watch_delay = watch_delay
        self.requests: collections.Counter = collections.Counter()
        self.statuses: collections.Counter = collections.Counter()  # (verb, plural, code)
        self.subresource_requests: collections.Counter = collections.Counter()  # (verb, plural, sub)
        self.url = ""
        self.initializing: dict[str, int] = {}  # plural -> requests still to refuse with 429
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue] = set()

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.url = "http://{}:{}".format(*sockets[0].getsockname()[:2])

    async def stop(self) -> None:
        self.close_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- knobs and direct access for tests --------------------------------------------------

    def close_watches(self) -> None:
        """End every open watch stream cleanly, as an API server restart would."""
        for queue in list(self._streams):
            queue.put_nowait(None)

    def compact(self) -> None:
        """Forget history and drop every watch: resuming watchers get 410 and must relist."""
        self.store.compact()
        self.close_watches()

    def info(self, plural: str, group: str = "") -> ResourceInfo:
        for info in self.store.resources.values():
            if info.plural == plural and (not group or info.group == group):
                return info
        raise KeyError(plural)

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Copies of the stored objects of a resource (for assertions)."""
        return json.loads(dumps(self.store.list(self.info(plural), namespace)))

    def get(self, plural: str, namespace: str | None, name: str) -> dict | None:
        """A copy of one stored object, or None."""
        try:
            return json.loads(dumps(self.store.get(self.info(plural), namespace, name)))
        except StoreError:
            return None

    def writes(self) -> int:
        return sum(n for (verb, _), n in self.requests.items() if verb != "GET")

    # -- HTTP -------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._serve(request)
        match = _PATH.match(request.path)
        plural = match["plural"] if match else ""
        self.statuses[(request.method, plural, response.status)] += 1
        return response

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        match = _PATH.match(request.path)
        if match is None:
            return _error(StoreError(404, "NotFound", f"no route for {request.path}"))
        group = match["group"] or ""
        plural, ns, name, sub = match["plural"], match["ns"], match["name"], match["sub"]
        self.requests[(request.method, plural)] += 1
        if sub:
            self.subresource_requests[(request.method, plural, sub)] += 1
        try:
            info = self.store.info(group, plural)
            body = await request.json() if request.can_read_body else None
            if request.method == "GET" and name is None:
                if self.initializing.get(plural):
                    self.initializing[plural] -= 1
                    raise StoreError(429, "TooManyRequests", "storage is (re)initializing")
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, info, ns)
                return self._list(request, info, ns)
            if request.method == "GET":
                return _json(self.store.get(info, ns, name))
            if request.method == "POST" and name is None:
                return _json(self.store.create(info, ns, body or {}), 201)
            if request.method == "PUT" and name is not None:
                return _json(self.store.update(info, ns, name, body or {}, subresource=sub))
            if request.method == "PATCH" and name is not None:
                ctype = request.content_type
                if ctype not in ("application/merge-patch+json",
                                 "application/strategic-merge-patch+json"):
                    raise StoreError(415, "UnsupportedMediaType", f"patch type {ctype}")
                return _json(self.store.patch(info, ns, name, body or {}, subresource=sub))
            if request.method == "DELETE" and name is not None:
                return _json(self.store.delete(info, ns, name, body))
            raise StoreError(405, "MethodNotAllowed", f"{request.method} {request.path}")
        except StoreError as exc:
            return _error(exc)
        except json.JSONDecodeError as exc:
            return _error(StoreError(400, "BadRequest", str(exc)))

    def _list(self, request: web.Request, info: ResourceInfo, ns: str | None) -> web.Response:
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        items = [obj for obj in self.store.list(info, ns)
                 if matches_labels(labels, obj) and matches_fields(fields, obj)]
        return _json({"apiVersion": info.api_version, "kind": f"{info.kind}List",
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})

    async def _watch(self, request: web.Request, info: ResourceInfo,
                     ns: str | None) -> web.StreamResponse:
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        since = request.query.get("resourceVersion") or "0"

        def visible(obj: dict | None) -> bool:
            return obj is not None and (ns is None or obj["metadata"].get("namespace") == ns) \
                and matches_labels(labels, obj) and matches_fields(fields, obj)

        queue: asyncio.Queue = asyncio.Queue()
        self.store.subscribe(queue, info.key)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        self._streams.add(queue)
        try:
            await response.prepare(request)
            if since == "0":
                backlog = [("ADDED", obj) for obj in self.store.list(info, ns) if visible(obj)]
                last = self.store.rv
            else:
                try:
                    events = self.store.events_since(int(since), info.key)
                except StoreError as exc:
                    await response.write(dumps({"type": "ERROR", "object": exc.body()}) + b"\n")
                    return response
                backlog = [item for e in events for item in _translate(e, visible)]
                last = events[-1].rv if events else int(since)
            for type_, obj in backlog:
                await response.write(dumps({"type": type_, "object": obj}) + b"\n")
            loop = asyncio.get_running_loop()
            timer = loop.call_later(timeout, queue.put_nowait, None)  # the server-side timeout
            while True:
                event = await queue.get()
                if event is None:
                    break
                if event.rv <= last:
                    continue
                if self.watch_delay:
                    await asyncio.sleep(max(0.0, event.at + self.watch_delay - loop.time()))
                for type_, obj in _translate(event, visible):
                    await response.write(dumps({"type": type_, "object": obj}) + b"\n")
            timer.cancel()
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.store.unsubscribe(queue)
            self._streams.discard(queue)
        return response


def _translate(event: Any, visible: Any) -> list[tuple[str, dict]]:
    """Map one store event to what a filtered watch sees (selector changes become ADDED/DELETED)."""
    now, before = visible(event.obj), visible(event.old)
    if event.type == "DELETED":
        return [("DELETED", event.obj)] if before or now else []
    if now and not before:
        return [("ADDED", event.obj)]
    if before and not now:
        return [("DELETED", event.obj)]
    return [(event.type, event.obj)] if now else []


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json")


def _error(exc: StoreError) -> web.Response:
    return _json(exc.body(), exc.status)
