"""Sandboxes as Kubernetes pods: agent-sandbox Sandboxes drawn from the warm pools that
KernelCube's controller keeps for each CodeInterpreter.

Templates are the CodeInterpreter and AgentRuntime objects of the watched namespaces (the
AgentCube `name` is the CR's name), kept current by watches. A new session:

1. **Fast path.** A watch-fed cache knows the Ready members of the CR's SandboxWarmPool. The
   session takes one with a single conditional merge patch (the resourceVersion the cache saw is
   a precondition), which takes it out of its pool the way the controller's claim adoption does,
   so the pool refills. A 409 means someone else took it: try the next one. Within a gateway,
   a member being patched is reserved so two sessions never race for it. Ready members that
   sessions' SandboxClaims already wait for are left to them (first come, first served, when a
   drained pool refills under more requests than it holds).
   With `warm_adoption` off, there is no fast path: every session takes the fallback.
2. **Fallback.** With no Ready member, a SandboxClaim on the pool (the controller binds it to
   the next warm member, or starts a cold one), or, for a CR without a pool, a cold Sandbox of
   its own. The session waits for Ready through the same watches (no polling), bounded by the
   caller's timeout. A pod that cannot be scheduled or whose container cannot start ends the
   wait at once with the cause; so does a pool whose every member is stuck that way.

Sessions reach PicoD at `http://<podIP>:<port>` (the CR's first port). Nothing here outlives a
session but what its record names: destroying a session deletes its claim or Sandbox. Pods
outlive gateways, so `keep_on_exit` is a no-op and `sweep` leaves orphans to the controller's
GC, which is leader-only and so never races a replica that is just recording a new session.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass

from kernelcube_wire.identity_secret import SECRET_NAME, ensure_identity

from ..identity import Identity
from ..kube import (
    AGENT_RUNTIMES,
    CLAIMS,
    CODE_INTERPRETERS,
    PODS,
    SANDBOXES,
    SECRETS,
    WARMPOOLS,
    Conflict,
    KubeApi,
    KubeError,
    NotFound,
)
from ..kube_informer import Informer
from ..pool import CapacityExhausted
from ..templates import Template, TemplateError
from . import k8s_objects as k
from .base import Sandbox, SandboxProvider, SandboxStartError

log = logging.getLogger("kernelcube.kubernetes")

START_SYNC_TIMEOUT = 30.0
# Reasons with which a claim will never bind (agent-sandbox-api.md §9, "Fail fast").
CLAIM_FAILURES = ("TemplateNotFound", "WarmPoolNotFound", "InvalidMetadata", "EnvVarsInjectionRejected",
                  "VolumeClaimTemplatesError", "ClaimExpired", "SandboxExpired", "InvalidConfiguration",
                  "PodFailed", "PodSucceeded", "ReconcilerError")


@dataclass
class KubeSettings:
    namespaces: list[str]
    kubeconfig: str = ""
    context: str = ""
    in_cluster: str = "auto"
    api_url: str = ""
    identity_namespace: str = ""
    warm_adoption: bool = True  # the fast path; False: every session through a SandboxClaim

    def connection(self) -> dict:
        return {"kubeconfig": self.kubeconfig, "context": self.context, "in_cluster": self.in_cluster,
                "api_url": self.api_url}


async def load_identity(settings: KubeSettings) -> Identity:
    """The signing key every replica shares, from Secret `picod-router-identity`; whoever comes
    first (a replica or the controller) creates it, race-safe (`kernelcube_wire`)."""
    namespace = settings.identity_namespace or settings.namespaces[0]
    api = await KubeApi.connect(**settings.connection())

    async def create(body: dict) -> bool:
        try:
            await api.create(SECRETS, namespace, body)
        except Conflict:
            return False
        return True

    async def read() -> dict | None:
        try:
            return await api.get(SECRETS, namespace, SECRET_NAME)
        except NotFound:
            return None

    try:
        found = await ensure_identity(create, read, namespace)
    finally:
        await api.close()
    return Identity.from_pem(found.private_pem)


class KubernetesPool:
    """A CR's warm pool as the session manager sees it (the interface of `pool.WarmPool`). The
    pool itself lives in the cluster; this claims from it."""

    gates_readiness = False  # an empty pool refills in the cluster; the gateway is still ready

    def __init__(self, provider: KubernetesProvider, template: k.KubeTemplate):
        self.provider = provider
        self.template = template
        self.creating = 0  # fallback claims and cold sandboxes in flight
        self.waiting = 0
        # Pods preload before they report Ready; a failure shows in their PicoD's /health and
        # the CodeInterpreter's status, not in the gateway.
        self.preload_failures: dict[str, str] = {}

    @property
    def ready(self) -> set[str]:
        return self.provider.ready_members(self.template)

    def start(self) -> None:
        return

    async def stop(self) -> None:
        return

    async def claim(self, timeout: float, session_id: str | None = None) -> tuple[Sandbox, str]:
        return await self.provider.claim(self, timeout, session_id or str(uuid.uuid4()))


class _Waiter:
    """Woken by watch events on the keys it listens to; never polls."""

    def __init__(self, listeners: dict[tuple, set[asyncio.Event]]):
        self.listeners = listeners
        self.event = asyncio.Event()
        self.keys: set[tuple] = set()

    def listen(self, *keys: tuple) -> None:
        for key in keys:
            if key not in self.keys:
                self.keys.add(key)
                self.listeners.setdefault(key, set()).add(self.event)

    async def wait(self, deadline: float) -> bool:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self.event.wait(), remaining)
        except asyncio.TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        for key in self.keys:
            events = self.listeners.get(key)
            if events is not None:
                events.discard(self.event)
                if not events:
                    del self.listeners[key]


class KubernetesProvider(SandboxProvider):
    name = "kubernetes"

    def __init__(self, settings: KubeSettings, public_pem: str):
        self.settings = settings
        self.namespaces = settings.namespaces
        self.primary = settings.namespaces[0]
        self.public_pem = public_pem
        self.templates: dict[str, Template] = {}  # live: kept by the CR watches
        self.pools: dict[str, KubernetesPool] = {}
        self.api: KubeApi | None = None
        self._informers: list[Informer] = []
        self._members: dict[tuple[str, str], set[str]] = {}  # (ns, pool) -> member names
        self._ready: dict[tuple[str, str], set[str]] = {}  # (ns, pool) -> Ready member names
        self._reserved: set[tuple[str, str]] = set()  # (ns, sandbox) being adopted here
        self._listeners: dict[tuple, set[asyncio.Event]] = {}
        self._synced = False

    # -- watches ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.api = await KubeApi.connect(**self.settings.connection())
        ns = self.namespaces
        self.crs = [Informer(self.api, CODE_INTERPRETERS, ns), Informer(self.api, AGENT_RUNTIMES, ns)]
        self.warmpools = Informer(self.api, WARMPOOLS, ns)
        self.sandboxes = Informer(self.api, SANDBOXES, ns)
        self.claims = Informer(self.api, CLAIMS, ns, label_selector=k.SESSION_ID)
        self.pods = Informer(self.api, PODS, ns, label_selector=k.SANDBOX_NAME_HASH)
        for informer in self.crs:
            informer.add_handler(self._on_cr)
        self.sandboxes.add_handler(self._on_sandbox)
        self.warmpools.add_handler(lambda old, new: self._wake(("pool",) + _key(new or old)))
        self.claims.add_handler(lambda old, new: self._wake(("claim",) + _key(new or old)))
        self.pods.add_handler(lambda old, new: self._wake(("sandbox",) + _key(new or old)))
        self._informers = [*self.crs, self.warmpools, self.sandboxes, self.claims, self.pods]
        try:
            await asyncio.wait_for(asyncio.gather(*(i.start() for i in self._informers)), START_SYNC_TIMEOUT)
            self._synced = True
        except asyncio.TimeoutError:
            log.error("the Kubernetes watches did not sync within %gs; sessions may fail until they do",
                      START_SYNC_TIMEOUT)
        log.info("watching namespace(s) %s: %d template(s): %s", ", ".join(ns), len(self.templates),
                 ", ".join(sorted(self.templates)) or "none yet")

    def readiness_problems(self) -> list[str]:
        problems = [] if self._synced else ["the Kubernetes watches have not synced yet"]
        for informer in self._informers[:2]:
            if not informer.installed:
                problems.append(f"the API server does not serve {informer.resource.plural} "
                                f"(install the KernelCube CRDs)")
        return problems

    def _wake(self, key: tuple) -> None:
        for event in self._listeners.get(key, ()):
            event.set()

    def _on_cr(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        ns, name = _key(obj)
        key = name if ns == self.primary else f"{ns}/{name}"
        current = self.templates.get(key)
        if current is not None and isinstance(current, k.KubeTemplate) and current.cr_kind != obj["kind"]:
            log.warning("%s %s/%s has the name of a %s; the gateway serves the %s only", obj["kind"], ns, name,
                        current.cr_kind, current.cr_kind)
            return
        if new is None:
            self.templates.pop(key, None)
            self.pools.pop(key, None)
            log.info("template %s removed (%s deleted)", key, obj["kind"])
            return
        try:
            template = k.template_from(new, key)
        except TemplateError as exc:
            log.error("ignoring %s: %s", obj["kind"], exc)
            return
        self.templates[key] = template
        pool = self.pools.get(key)
        if pool is None:
            self.pools[key] = KubernetesPool(self, template)
            log.info("template %s from %s %s/%s (warm pool %d)", key, obj["kind"], ns, name, template.pool_size)
        else:
            pool.template = template

    def _on_sandbox(self, old: dict | None, new: dict | None) -> None:
        obj = new or old
        assert obj is not None
        ns, name = _key(obj)
        for state in (old, new):
            pool = _pool_of(state) if state is not None else None
            if pool is not None:
                self._members.get((ns, pool), set()).discard(name)
                self._ready.get((ns, pool), set()).discard(name)
        pool = _pool_of(new) if new is not None else None
        if pool is not None and not k.is_deleting(new):
            self._members.setdefault((ns, pool), set()).add(name)
            if k.is_ready(new):
                self._ready.setdefault((ns, pool), set()).add(name)
        if new is None or pool is None:
            self._reserved.discard((ns, name))  # it left the pool: no reservation needed any more
        self._wake(("sandbox", ns, name))
        for state in (old, new):
            pool = _pool_of(state) if state is not None else None
            if pool is not None:
                self._wake(("pool", ns, pool))

    def ready_members(self, template: k.KubeTemplate) -> set[str]:
        return set(self._ready.get((template.namespace, template.cr_name), ()))

    # -- claiming ----------------------------------------------------------------------------

    async def claim(self, pool: KubernetesPool, timeout: float, session_id: str) -> tuple[Sandbox, str]:
        try:
            return await self._claim(pool, timeout, session_id)
        except KubeError as exc:
            raise SandboxStartError(f"the Kubernetes API server refused or failed a call for a new session "
                                    f"of {pool.template.name!r}: {exc}") from exc

    async def _claim(self, pool: KubernetesPool, timeout: float, session_id: str) -> tuple[Sandbox, str]:
        template = pool.template
        assert isinstance(template, k.KubeTemplate) and self.api is not None
        expires_at = k.expiry(template)
        sandbox = await self._adopt_warm(template, session_id, expires_at) if self.settings.warm_adoption else None
        if sandbox is not None:
            meta = sandbox["metadata"]
            return self._sandbox(template, sandbox, {"kind": "Sandbox", "name": meta["name"], "uid": meta["uid"]}), "warm"
        deadline = asyncio.get_running_loop().time() + timeout
        pool.creating += 1
        pool.waiting += 1
        try:
            warm_pool = self.warmpools.get(template.namespace, template.cr_name)
            if warm_pool is not None and template.cr_kind == "CodeInterpreter":
                self._check_pool(template)
                sandbox, handle = await self._via_claim(template, session_id, expires_at, deadline)
            else:
                sandbox, handle = await self._cold(template, session_id, expires_at, deadline)
        finally:
            pool.creating -= 1
            pool.waiting -= 1
        return self._sandbox(template, sandbox, handle), "cold"

    async def _adopt_warm(self, template: k.KubeTemplate, session_id: str, expires_at: float) -> dict | None:
        """The fast path: one conditional patch on a Ready warm member; on 409 the next one."""
        assert self.api is not None
        ns, pool_name = template.namespace, template.cr_name
        warm_pool = self.warmpools.get(ns, pool_name)
        if warm_pool is None:
            return None
        template_name = ((warm_pool.get("spec") or {}).get("sandboxTemplateRef") or {}).get("name", pool_name)
        names = [name for name in self._ready.get((ns, pool_name), ()) if (ns, name) not in self._reserved]
        if len(names) <= k.queued_claims(self.claims.values(), ns, pool_name):
            return None  # they go to the sessions' claims that were waiting for them first
        random.shuffle(names)  # replicas that share the pool rarely pick the same member
        for name in names:
            member = self.sandboxes.get(ns, name)
            if (ns, name) in self._reserved or member is None or not k.is_ready(member) or \
                    not k.is_warm_member(member, pool_name, template_name) or not self._current(template, member):
                continue
            self._reserved.add((ns, name))
            try:
                return await self.api.patch(SANDBOXES, ns, name, k.adoption_patch(member, template, session_id, expires_at))
            except (Conflict, NotFound):
                self._reserved.discard((ns, name))
                continue
            except BaseException:
                self._reserved.discard((ns, name))
                raise
        return None

    def _current(self, template: k.KubeTemplate, sandbox: dict) -> bool:
        """Built from the CR's current spec, or from an older one that its pool does not replace.
        Under `Recreate` (the pools of CodeInterpreters) a member of an older spec is about to
        go, so the fast path never takes it. (What a claim is bound to is the controller's
        choice, made against its own view of the template.)"""
        warm_pool = self.warmpools.get(template.namespace, template.cr_name) or {}
        recreate = ((warm_pool.get("spec") or {}).get("updateStrategy") or {}).get("type") == "Recreate"
        return not recreate or k.built_from(sandbox, template)

    def _check_pool(self, template: k.KubeTemplate) -> None:
        """A pool whose every member is stuck (unschedulable, image not pullable, crashing) will
        not produce a sandbox: say why now instead of timing out."""
        ns, pool = template.namespace, template.cr_name
        members = [self.sandboxes.get(ns, name) for name in self._members.get((ns, pool), ())]
        members = [m for m in members if m is not None]
        if not members or self._ready.get((ns, pool)):
            return
        causes = [k.failure(m, self.pods.get(ns, _pod_name(m))) for m in members]
        if all(causes):
            raise SandboxStartError(f"{template.cr_kind} {ns}/{pool}: no sandbox can start: {causes[0]}")

    async def _via_claim(self, template: k.KubeTemplate, session_id: str, expires_at: float,
                         deadline: float) -> tuple[dict, dict]:
        assert self.api is not None
        ns = template.namespace
        name = _object_name(template.cr_name)
        body = k.claim_body(template, session_id, name, expires_at)
        claim = await self.api.create(CLAIMS, ns, body)
        handle = {"kind": "SandboxClaim", "name": name, "uid": claim["metadata"]["uid"]}
        try:
            sandbox = await self._await_claim(template, name, deadline)
        except BaseException:
            await asyncio.shield(self._delete(CLAIMS, ns, name, handle["uid"]))
            raise
        return sandbox, handle

    async def _await_claim(self, template: k.KubeTemplate, name: str, deadline: float) -> dict:
        ns = template.namespace
        waiter = _Waiter(self._listeners)
        # A cold start makes a Sandbox (and pod) named after the claim: watch it from the start.
        waiter.listen(("claim", ns, name), ("sandbox", ns, name), ("pool", ns, template.cr_name))
        try:
            while True:
                claim = self.claims.get(ns, name)
                bound = (((claim or {}).get("status") or {}).get("sandbox") or {}).get("name")
                if bound:
                    waiter.listen(("sandbox", ns, bound))
                    sandbox = self.sandboxes.get(ns, bound)
                    if sandbox is not None and k.is_ready(sandbox) and _owned_by(sandbox, claim):
                        return sandbox
                self._fail_claim(template, claim, bound or name)
                if not await waiter.wait(deadline):
                    raise CapacityExhausted(f"no sandbox of {template.cr_kind} {ns}/{template.cr_name} became "
                                            "ready in time (its warm pool is empty and a cold start takes "
                                            "longer); retry later or raise the timeout")
        finally:
            waiter.close()

    def _fail_claim(self, template: k.KubeTemplate, claim: dict | None, sandbox_name: str) -> None:
        ns = template.namespace
        ready = next((c for c in ((claim or {}).get("status") or {}).get("conditions") or ()
                      if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("status") == "False" and ready.get("reason") in CLAIM_FAILURES:
            raise SandboxStartError(f"{template.cr_kind} {ns}/{template.cr_name}: the SandboxClaim failed: "
                                    f"{ready['reason']}: {ready.get('message') or ''}".rstrip(": "))
        sandbox = self.sandboxes.get(ns, sandbox_name)
        cause = k.failure(sandbox, self.pods.get(ns, _pod_name(sandbox) if sandbox else sandbox_name))
        if cause:
            raise SandboxStartError(f"{template.cr_kind} {ns}/{template.cr_name}: the sandbox cannot start: {cause}")
        if not (((claim or {}).get("status") or {}).get("sandbox") or {}).get("name"):
            self._check_pool(template)

    async def _cold(self, template: k.KubeTemplate, session_id: str, expires_at: float,
                    deadline: float) -> tuple[dict, dict]:
        """A Sandbox of the session's own, when the CR has no warm pool."""
        assert self.api is not None
        ns = template.namespace
        name = _object_name(template.cr_name)
        created = await self.api.create(SANDBOXES, ns, k.cold_sandbox_body(template, session_id, name, expires_at,
                                                                          self.public_pem))
        handle = {"kind": "Sandbox", "name": name, "uid": created["metadata"]["uid"]}
        waiter = _Waiter(self._listeners)
        waiter.listen(("sandbox", ns, name))
        try:
            while True:
                sandbox = self.sandboxes.get(ns, name)
                if sandbox is not None and k.is_ready(sandbox):
                    return sandbox, handle
                cause = k.failure(sandbox, self.pods.get(ns, name))
                if cause:
                    raise SandboxStartError(f"{template.cr_kind} {ns}/{template.cr_name}: the sandbox cannot "
                                            f"start: {cause}")
                if not await waiter.wait(deadline):
                    raise CapacityExhausted(f"the sandbox of {template.cr_kind} {ns}/{template.cr_name} did not "
                                            "become ready in time; retry later or raise the timeout")
        except BaseException:
            await asyncio.shield(self._delete(SANDBOXES, ns, name, handle["uid"]))
            raise
        finally:
            waiter.close()

    def _sandbox(self, template: k.KubeTemplate, obj: dict, handle: dict) -> Sandbox:
        """`handle`: the object that ends with the session (kind, name, uid), plus the Sandbox's
        uid and pod IP, by which `is_alive` tells this pod from a replacement, and its
        containers' restarts so far, by which `lost_state` tells a restarted container."""
        ip = k.pod_ip(obj)
        pod = self.pods.get(template.namespace, _pod_name(obj))
        return Sandbox(id=obj["metadata"]["name"], template=template.name, endpoint=k.endpoint(template, ip),
                       handle={"namespace": template.namespace, **handle, "sandbox_uid": obj["metadata"]["uid"],
                               "pod_ip": ip, "restarts": k.restarts(pod)},
                       entry_points=k.entry_points(template, ip))

    # -- the SandboxProvider lifecycle -------------------------------------------------------

    async def create(self, template: Template) -> Sandbox:
        """A sandbox without a pool adapter's bookkeeping (the session manager uses the pools)."""
        if not isinstance(template, k.KubeTemplate):
            raise SandboxStartError(f"template {template.name!r} is not backed by a Kubernetes resource")
        pool = self.pools.get(template.name) or KubernetesPool(self, template)
        try:
            sandbox, _ = await pool.claim(60.0)
        except CapacityExhausted as exc:
            raise SandboxStartError(str(exc)) from exc
        return sandbox

    async def destroy(self, sandbox: Sandbox) -> None:
        handle = sandbox.handle
        kind = CLAIMS if handle.get("kind") == "SandboxClaim" else SANDBOXES
        await self._delete(kind, handle.get("namespace") or self.primary, handle.get("name") or sandbox.id,
                           handle.get("uid", ""))

    async def _delete(self, resource, namespace: str, name: str, uid: str) -> None:
        assert self.api is not None
        try:
            await self.api.delete(resource, namespace, name, uid=uid)
        except Conflict:
            pass  # the uid differs: that object is gone, and the one of that name is not ours
        except KubeError as exc:
            log.warning("could not delete %s %s/%s: %s", resource.kind, namespace, name, exc)
            raise

    async def is_alive(self, sandbox: Sandbox) -> bool:
        """From the watch cache (a Sandbox the cache has not seen yet is read from the API).
        The session's pod, not just a Sandbox of that name: a Sandbox re-created under the name
        (a claim healing itself) or a pod re-created elsewhere (an eviction) has lost the
        session's state, so the session is over."""
        namespace = sandbox.handle.get("namespace") or self.primary
        obj = self.sandboxes.get(namespace, sandbox.id)
        if obj is None:
            assert self.api is not None
            try:
                obj = await self.api.get(SANDBOXES, namespace, sandbox.id)
            except NotFound:
                return False
        handle = sandbox.handle
        if handle.get("sandbox_uid") not in (None, obj["metadata"]["uid"]) or \
                handle.get("pod_ip") not in (None, k.pod_ip(obj)):
            return False
        return not k.is_deleting(obj) and not k.failure(obj, self.pods.get(namespace, _pod_name(obj)))

    def lost_state(self, sandbox: Sandbox) -> str:
        """The pod's container was restarted since the session took it (a crash, an OOM kill, a
        failed liveness probe): the pod and its IP are the same, its PicoD and kernel are new."""
        namespace = sandbox.handle.get("namespace") or self.primary
        obj = self.sandboxes.get(namespace, sandbox.id)
        if obj is None or "restarts" not in sandbox.handle:  # recorded before restarts were kept
            return ""
        now = k.restarts(self.pods.get(namespace, _pod_name(obj)))
        if now <= sandbox.handle["restarts"]:
            return ""
        return (f"the container of its sandbox {sandbox.id} restarted (restartCount {now}), so the session's "
                "kernel state and files are gone")

    async def sweep(self, keep: set[str]) -> int:
        """Orphans are the controller's GC's to clean (leader-only, so never racing a replica
        that is recording a session it just claimed)."""
        return 0

    async def close(self) -> None:
        for informer in self._informers:
            await informer.stop()
        if self.api is not None:
            await self.api.close()
            self.api = None


def _key(obj: dict | None) -> tuple[str, str]:
    assert obj is not None
    return (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])


def _pool_of(sandbox: dict) -> str | None:
    """The warm pool a Sandbox is an unclaimed member of, from its label and controller."""
    meta = sandbox["metadata"]
    if k.WARM_POOL_SANDBOX not in (meta.get("labels") or {}):
        return None
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == "SandboxWarmPool":
            return ref.get("name")
    return None


def _pod_name(sandbox: dict) -> str:
    meta = sandbox["metadata"]
    return (meta.get("annotations") or {}).get(k.POD_NAME_ANNOTATION) or meta["name"]


def _owned_by(sandbox: dict, claim: dict | None) -> bool:
    uid = ((claim or {}).get("metadata") or {}).get("uid")
    return any(r.get("uid") == uid and r.get("controller") for r in sandbox["metadata"].get("ownerReferences") or ())


def _object_name(cr_name: str) -> str:
    """`<cr>-<8 random>`, as AgentCube names its sandboxes; short enough to be a pod name."""
    return f"{cr_name[:54].rstrip('-.')}-{k.random_suffix()}"

