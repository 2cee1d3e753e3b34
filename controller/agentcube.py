"""The AgentCube reconcilers: CodeInterpreter → SandboxTemplate (+ SandboxWarmPool), and
AgentRuntime → SandboxTemplate (agentcube-api.md §3.5).

Everything made carries a controller ownerReference to its CR, so deleting the CR removes it
through Kubernetes garbage collection (no finalizers, as agent-sandbox). An object of the same
name owned by someone else is never touched: the CR reports `NameConflict` instead. Users see
progress and trouble as conditions and as Events on the CR (`kubectl describe`).
"""

from __future__ import annotations

import logging
import time

from controller import agentcube_logic as logic
from controller import conditions as cond
from controller import naming as n
from controller.context import Context
from controller.errors import AlreadyExists, Invalid, NotFound, TemporaryError
from controller.events import NORMAL, WARNING, EventRecorder
from controller.identity import PublicKeyLoader
from controller.informer import Informer
from controller.resources import AGENT_RUNTIMES, CODE_INTERPRETERS, TEMPLATES, WARMPOOLS, Resource
from controller.sandbox_logic import controller_of, is_controlled_by, status_patch

log = logging.getLogger(__name__)


class Refused(Exception):
    """The desired objects cannot be written until the user changes something."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _Base:
    resource: Resource

    def __init__(self, ctx: Context, cache: Informer, events: EventRecorder) -> None:
        self.ctx = ctx
        self.cache = cache
        self.events = events

    async def _ensure(self, res: Resource, cache: Informer, owner: dict, desired: dict) -> None:
        """Create or update one owned object to `desired`."""
        meta = desired["metadata"]
        ns, name = meta["namespace"], meta["name"]
        current = cache.get(ns, name)
        try:
            if current is None:
                try:
                    await self.ctx.kube.create(res, ns, desired)
                except AlreadyExists:
                    raise TemporaryError(f"{res.kind} {ns}/{name} appeared meanwhile",
                                         0.2) from None
                await self.events.record(owner, NORMAL, f"{res.kind}Created",
                                         f"created {res.kind} {name}")
            elif not is_controlled_by(current, owner):
                ref = controller_of(current)
                holder = f"{ref['kind']} {ref['name']}" if ref else "nobody (created by hand)"
                raise Refused("NameConflict", f"{res.kind} {ns}/{name} exists and is controlled "
                              f"by {holder}; rename this {owner['kind']} or delete that object")
            elif logic.drift(current, desired):
                await self.ctx.kube.replace(res, ns, name, logic.replacement(current, desired))
                await self.events.record(owner, NORMAL, f"{res.kind}Updated",
                                         f"updated {res.kind} {name} to generation "
                                         f"{owner['metadata'].get('generation')}")
        except Invalid as exc:
            raise Refused("TemplateInvalid" if res is TEMPLATES else "Invalid",
                          f"the API server rejected {res.kind} {name}: {exc.message}") from exc

    async def _remove(self, res: Resource, cache: Informer, owner: dict, name: str) -> None:
        ns = owner["metadata"]["namespace"]
        current = cache.get(ns, name)
        if current is not None and is_controlled_by(current, owner):
            if await self.ctx.kube.delete(res, ns, name, uid=current["metadata"]["uid"]):
                await self.events.record(owner, NORMAL, f"{res.kind}Deleted",
                                         f"deleted {res.kind} {name}")

    async def _write_status(self, obj: dict, status: dict) -> None:
        patch = status_patch(obj.get("status"), status)
        if patch is None:
            return
        meta = obj["metadata"]
        try:
            await self.ctx.kube.patch_status(self.resource, meta["namespace"], meta["name"], patch)
        except NotFound:
            pass  # deleted meanwhile

    async def _refused(self, obj: dict, exc: Refused, with_pool: bool) -> None:
        log.warning("%s %s/%s: %s", obj["kind"], obj["metadata"]["namespace"],
                    obj["metadata"]["name"], exc.message)
        await self.events.record(obj, WARNING, exc.reason, exc.message)
        outcome = logic.Outcome(False, exc.reason, exc.message)
        await self._write_status(obj, logic.status_of(obj, outcome, cond.now(),
                                                      with_pool=with_pool))


class CodeInterpreterReconciler(_Base):
    resource = CODE_INTERPRETERS

    def __init__(self, ctx: Context, cache: Informer, events: EventRecorder,
                 public_key: PublicKeyLoader) -> None:
        super().__init__(ctx, cache, events)
        self.public_key = public_key
        # (namespace, name) -> (ready members, since when): how long the pool has not grown.
        self._progress: dict[tuple[str, str], tuple[int, float]] = {}

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        ci = self.cache.get(*key)
        if ci is None or ci["metadata"].get("deletionTimestamp"):
            self._progress.pop(key, None)
            return None  # garbage collection removes the template and the pool
        size = logic.pool_size(ci)
        if size == 0:
            try:
                await self._remove(WARMPOOLS, self.ctx.pools, ci, key[1])
                await self._remove(TEMPLATES, self.ctx.templates, ci, key[1])
            finally:
                self._progress.pop(key, None)
            await self._write_status(ci, logic.status_of(ci, logic.Outcome(True), cond.now(),
                                                         with_pool=False))
            return None
        if logic.needs_public_key(ci) and self.public_key.key is None:
            self.public_key.start()
            outcome = logic.Outcome(False, "IdentityPending", "waiting for the router identity "
                                    "Secret picod-router-identity (its public key is injected "
                                    "as PICOD_AUTH_PUBLIC_KEY)")
            await self._write_status(ci, logic.status_of(ci, outcome, cond.now(), with_pool=True))
            return 5.0  # also woken when the key arrives
        try:
            await self._ensure(TEMPLATES, self.ctx.templates, ci,
                               logic.ci_template(ci, self.public_key.key))
            await self._ensure(WARMPOOLS, self.ctx.pools, ci, logic.ci_pool(ci))
        except Refused as exc:
            await self._refused(ci, exc, with_pool=True)
            return None
        return await self._observe_pool(ci, size)

    async def _observe_pool(self, ci: dict, size: int) -> float | None:
        """Report the pool's fill and its members' trouble; warn when it stops filling."""
        ns, name = ci["metadata"]["namespace"], ci["metadata"]["name"]
        pool = self.ctx.pools.get(ns, name)
        ready = int(((pool or {}).get("status") or {}).get("readyReplicas") or 0)
        problems: list[logic.Problem] = []
        if pool is not None:
            for member in self.ctx.sandboxes.by_index("pool", n.name_hash(name)):
                if member["metadata"]["namespace"] != ns or not is_controlled_by(member, pool):
                    continue
                problems += logic.sandbox_problems(member)
                for pod in self.ctx.pods.by_index("owner", member["metadata"]["uid"]):
                    problems += logic.pod_problems(pod)
        for problem in problems[:3]:  # a few examples, not one Event per member
            await self.events.record(ci, WARNING, problem.reason, problem.message)
        outcome = logic.Outcome(True, pool_size=size, pool_ready=ready,
                                problems=tuple(problems))
        await self._write_status(ci, logic.status_of(ci, outcome, cond.now(), with_pool=True))
        if ready >= size:
            self._progress.pop((ns, name), None)
            return None
        now = time.monotonic()
        last = self._progress.get((ns, name))
        if last is None or ready > last[0]:
            self._progress[(ns, name)] = last = (ready, now)
        stalled = now - last[1]
        grace = self.ctx.settings.pool_fill_warning
        if stalled >= grace:
            await self.events.record(ci, WARNING, "WarmPoolNotFilling",
                                     f"{ready}/{size} warm sandboxes ready after "
                                     f"{int(stalled)}s without progress")
            return grace
        return max(0.5, min(grace - stalled, 10.0))

    def forget(self, key: tuple[str, str]) -> None:
        self._progress.pop(key, None)


class AgentRuntimeReconciler(_Base):
    resource = AGENT_RUNTIMES

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        ar = self.cache.get(*key)
        if ar is None or ar["metadata"].get("deletionTimestamp"):
            return None
        try:
            await self._ensure(TEMPLATES, self.ctx.templates, ar, logic.ar_template(ar))
        except Refused as exc:
            await self._refused(ar, exc, with_pool=False)
            return None
        await self._write_status(ar, logic.status_of(ar, logic.Outcome(True), cond.now(),
                                                     with_pool=False))
        return None


def owning_workload(obj: dict, kinds: tuple[str, ...] = ("CodeInterpreter", "AgentRuntime")
                    ) -> tuple[str, str] | None:
    """(kind, name) of the AgentCube CR controlling a template or pool, if any."""
    ref = controller_of(obj)
    if ref is None or ref.get("kind") not in kinds or \
            not str(ref.get("apiVersion", "")).startswith(n.AGENTCUBE_GROUP + "/"):
        return None
    return ref["kind"], ref["name"]

