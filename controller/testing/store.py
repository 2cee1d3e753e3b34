"""The object store of the fake API server: the semantics of a kube-apiserver over one dict.

What it reproduces, because the controller depends on it: uid, resourceVersion (one counter for
all kinds), generation (bumped on changes outside metadata and status), creationTimestamp,
generateName, 409 on a stale resourceVersion or duplicate name, status subresources, schema
defaulting/pruning/validation from CRDs (422), finalizers and deletionTimestamp, preconditions on
delete, and garbage collection through ownerReferences (background and foreground). Every change
is an event in a bounded history, which watches replay from a resourceVersion (410 when compacted).

Stored objects are never mutated in place: every write stores a new dict, so readers and the event
history may share them without copying.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import random
import re
import string
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from controller.testing import schema as schemas

FOREGROUND = "foregroundDeletion"


class StoreError(Exception):
    """An API error answer: HTTP status, reason and message, as a `Status` object."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "code": self.status, "reason": self.reason, "message": self.message}


@dataclass
class ResourceInfo:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    schema: dict | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class Event:
    rv: int
    resource: tuple[str, str]
    type: str
    obj: dict
    old: dict | None = None
    at: float = field(default=0.0)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; returns a new value and leaves both arguments untouched."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


class Store:
    """All objects of the fake cluster, keyed by (resource key, namespace, name)."""

    def __init__(self, resources: list[ResourceInfo], *, history: int = 20000) -> None:
        self.resources = {info.key: info for info in resources}
        self.objects: dict[tuple, dict] = {}
        self._by_resource: dict[tuple[str, str], dict[tuple, dict]] = {}
        self.uids: dict[str, tuple] = {}
        self.rv = 100  # never "0": that asks a watch for "any version"
        self.history: deque[Event] = deque(maxlen=history)
        self.compacted_rv = 0  # events at or below this resourceVersion are gone
        self._listeners: list[tuple[tuple[str, str] | None, asyncio.Queue]] = []
        self._gc_pending: set[str] = set()
        self._validators: dict = {}
        self.validate = True  # schema defaulting, pruning and validation of custom resources
        self.gc_delay = 0.0

    # -- events -----------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, info: ResourceInfo, type_: str, obj: dict, old: dict | None, rv: int) -> None:
        event = Event(rv, info.key, type_, obj, old, asyncio.get_running_loop().time())
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].rv
        self.history.append(event)
        for resource, queue in self._listeners:
            if resource is None or resource == info.key:
                queue.put_nowait(event)

    def subscribe(self, queue: asyncio.Queue, resource: tuple[str, str] | None = None) -> None:
        """Receive every change (of one resource, or of all) as an `Event` on `queue`."""
        self._listeners.append((resource, queue))

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self._listeners = [(r, q) for r, q in self._listeners if q is not queue]

    def _put(self, key: tuple, obj: dict) -> None:
        self.objects[key] = obj
        self._by_resource.setdefault(key[0], {})[key] = obj

    def _pop(self, key: tuple) -> dict:
        self._by_resource.get(key[0], {}).pop(key, None)
        return self.objects.pop(key)

    def compact(self) -> None:
        """Forget the whole history, so any watch resuming from a version seen so far gets 410."""
        self.history.clear()
        self.compacted_rv = self.rv + 1

    def events_since(self, rv: int, resource: tuple[str, str]) -> list[Event]:
        if rv < self.compacted_rv:
            raise StoreError(410, "Expired", f"too old resource version: {rv} ({self.compacted_rv})")
        return [e for e in self.history if e.rv > rv and e.resource == resource]

    # -- reads ------------------------------------------------------------------------------

    def info(self, group: str, plural: str) -> ResourceInfo:
        try:
            return self.resources[(group, plural)]
        except KeyError:
            raise StoreError(404, "NotFound", f"the server could not find resource {plural}.{group}"
                             ) from None

    def get(self, info: ResourceInfo, namespace: str | None, name: str) -> dict:
        obj = self.objects.get((info.key, namespace, name))
        if obj is None:
            raise StoreError(404, "NotFound", f'{info.plural} "{name}" not found')
        return obj

    def list(self, info: ResourceInfo, namespace: str | None) -> list[dict]:
        return [obj for (_, ns, _), obj in self._by_resource.get(info.key, {}).items()
                if namespace is None or ns == namespace]

    # -- writes -----------------------------------------------------------------------------

    def _validate(self, info: ResourceInfo, obj: dict, old: dict | None) -> None:
        if self.validate and info.key == ("", "services"):
            errors = _service_errors(obj)
            if errors:
                name = obj.get("metadata", {}).get("name", "")
                raise StoreError(422, "Invalid", f'Service "{name}" is invalid: '
                                 + "; ".join(errors))
        if info.schema is None or not self.validate:
            return
        schemas.prune(info.schema, obj, root=True)
        schemas.apply_defaults(info.schema, obj)
        errors = schemas.validation_errors(info.schema, obj, cache=self._validators)
        if old is not None:
            errors += schemas.transition_errors(info.schema, old, obj)
        if errors:
            name = obj.get("metadata", {}).get("name", "")
            raise StoreError(422, "Invalid", f'{info.kind}.{info.group} "{name}" is invalid: '
                             + "; ".join(errors))

    def create(self, info: ResourceInfo, namespace: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise StoreError(422, "Invalid", "metadata.name or generateName is required")
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = prefix + suffix
        if info.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = (info.key, meta.get("namespace"), meta["name"])
        if key in self.objects:
            raise StoreError(409, "AlreadyExists",
                             f'{info.plural}.{info.group} "{meta["name"]}" already exists')
        obj["apiVersion"], obj["kind"] = info.api_version, info.kind
        if info.status_subresource:
            obj.pop("status", None)
        self._validate(info, obj, None)
        rv = self._next_rv()
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(rv), generation=1,
                    creationTimestamp=now_rfc3339())
        meta.pop("deletionTimestamp", None)
        self._put(key, obj)
        self.uids[meta["uid"]] = key
        self._emit(info, "ADDED", obj, None, rv)
        return obj

    def update(self, info: ResourceInfo, namespace: str | None, name: str, body: dict, *,
               subresource: str | None = None) -> dict:
        """PUT semantics: replace, subject to a resourceVersion precondition if one is given."""
        old = self.get(info, namespace, name)
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise StoreError(409, "Conflict", f'Operation cannot be fulfilled on {info.plural}.'
                             f'{info.group} "{name}": the object has been modified; please apply '
                             "your changes to the latest version and try again")
        if subresource == "status":
            new = {k: v for k, v in old.items() if k != "status"}
            if body.get("status") is not None:
                new["status"] = copy.deepcopy(body["status"])
            new["metadata"] = dict(old["metadata"])
        else:
            new = dict(body)  # shallow: nested values are never mutated, only replaced
            new["metadata"] = dict(body.get("metadata") or {})
            if info.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp",
                    "generation"):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = info.api_version, info.kind
        self._validate(info, new, old)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op write changes nothing and tells no watcher
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        key = (info.key, meta.get("namespace"), name)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(info, key, new, rv)
        self._put(key, new)
        self._emit(info, "MODIFIED", new, old, rv)
        if FOREGROUND in (meta.get("finalizers") or ()):
            self._schedule_gc(meta["uid"])
        return new

    def patch(self, info: ResourceInfo, namespace: str | None, name: str, patch: dict, *,
              subresource: str | None = None) -> dict:
        """Merge-patch semantics; a `metadata.resourceVersion` in the patch is a precondition."""
        old = self.get(info, namespace, name)
        if not isinstance(patch, dict):
            raise StoreError(400, "BadRequest", "a merge patch must be a JSON object")
        body = merge_patch(old, patch)
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        body["metadata"] = dict(body.get("metadata") or {}) | {
            "resourceVersion": want_rv or old["metadata"]["resourceVersion"]}
        return self.update(info, namespace, name, body, subresource=subresource)

    def delete(self, info: ResourceInfo, namespace: str | None, name: str,
               options: dict | None = None) -> dict:
        options = options or {}
        obj = self.get(info, namespace, name)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise StoreError(409, "Conflict", f"Precondition failed: UID in precondition: "
                             f"{pre['uid']}, UID in object meta: {meta['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise StoreError(409, "Conflict", "Precondition failed: resourceVersion")
        foreground = options.get("propagationPolicy") == "Foreground"
        finalizers = list(meta.get("finalizers") or ())
        if foreground and FOREGROUND not in finalizers and self._dependents(meta["uid"]):
            finalizers.append(FOREGROUND)
        if finalizers:
            if meta.get("deletionTimestamp") and finalizers == meta.get("finalizers"):
                return obj
            new = dict(obj) | {"metadata": dict(meta) | {
                "finalizers": finalizers, "deletionTimestamp": now_rfc3339()}}
            rv = self._next_rv()
            new["metadata"]["resourceVersion"] = str(rv)
            self._put((info.key, namespace if info.namespaced else None, name), new)
            self._emit(info, "MODIFIED", new, obj, rv)
            if FOREGROUND in finalizers:
                self._schedule_gc(meta["uid"])
            return new
        key = (info.key, meta.get("namespace"), name)
        return self._remove(info, key, obj, self._next_rv())

    def _remove(self, info: ResourceInfo, key: tuple, obj: dict, rv: int) -> dict:
        old = self._pop(key)
        self.uids.pop(obj["metadata"]["uid"], None)
        gone = dict(obj) | {"metadata": dict(obj["metadata"]) | {"resourceVersion": str(rv)}}
        self._emit(info, "DELETED", gone, old, rv)
        self._schedule_gc(obj["metadata"]["uid"])
        return gone

    # -- garbage collection -----------------------------------------------------------------

    def _dependents(self, uid: str) -> list[tuple]:
        return [key for key, obj in self.objects.items()
                if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or ())]

    def _schedule_gc(self, uid: str) -> None:
        if uid in self._gc_pending:
            return
        self._gc_pending.add(uid)
        asyncio.get_running_loop().call_later(self.gc_delay, self._collect, uid)

    def _collect(self, uid: str) -> None:
        """Delete dependents left without any live owner; finish foreground deletions."""
        self._gc_pending.discard(uid)
        for key in self._dependents(uid):
            obj = self.objects.get(key)
            if obj is None:
                continue
            live = [ref for ref in obj["metadata"].get("ownerReferences") or ()
                    if ref.get("uid") in self.uids and not self._deleting(ref["uid"])]
            if not live:
                info = self.resources[key[0]]
                try:
                    self.delete(info, key[1], key[2], {"propagationPolicy": "Background"})
                except StoreError:
                    pass
        owner_key = self.uids.get(uid)
        if owner_key is not None:
            owner = self.objects[owner_key]
            if FOREGROUND in (owner["metadata"].get("finalizers") or ()):
                if self._dependents(uid):
                    self._gc_pending.add(uid)
                    asyncio.get_running_loop().call_later(0.01, self._collect, uid)
                else:
                    finalizers = [f for f in owner["metadata"]["finalizers"] if f != FOREGROUND]
                    body = dict(owner) | {"metadata": dict(owner["metadata"]) | {
                        "finalizers": finalizers}}
                    self.update(self.resources[owner_key[0]], owner_key[1], owner_key[2], body,
                                subresource=None)

    def _deleting(self, uid: str) -> bool:
        key = self.uids.get(uid)
        return key is not None and bool(self.objects[key]["metadata"].get("deletionTimestamp"))


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _service_errors(obj: dict) -> list[str]:
    """What kube-apiserver's Service validation refuses that controllers can get wrong."""
    errors = []
    name = obj.get("metadata", {}).get("name", "")
    if len(name) > 63 or not _DNS1035.match(name):
        errors.append(f'metadata.name: Invalid value: "{name}": a DNS-1035 label must consist '
                      "of lower case alphanumeric characters or '-', start with an alphabetic "
                      "character, and end with an alphanumeric character")
    ports = (obj.get("spec") or {}).get("ports") or []
    seen: set[str] = set()
    for i, port in enumerate(ports):
        port_name = port.get("name", "")
        if len(ports) > 1 and not port_name:
            errors.append(f"spec.ports[{i}].name: Required value")
        elif port_name in seen:
            errors.append(f'spec.ports[{i}].name: Duplicate value: "{port_name}"')
        seen.add(port_name)
    return errors


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
