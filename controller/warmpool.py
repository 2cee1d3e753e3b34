"""The SandboxWarmPool reconciler: keep `spec.replicas` warm Sandboxes of the pool's template.

Creations go out in slow-start batches (1, 2, 4 …, stopping at the first error) and are gated by
expectations: while a created member is not yet in the cache, the pool creates nothing more.
"""

from __future__ import annotations

import asyncio
import copy
import logging

from controller import conditions as cond
from controller import naming as n
from controller import warmpool_logic as logic
from controller.context import Context
from controller.errors import ApiError, Conflict
from controller.resources import SANDBOXES, WARMPOOLS
from controller.sandbox_logic import controller_of, owner_ref, status_patch

log = logging.getLogger(__name__)

CHANGED_REQUEUE = 0.2  # a member changed under a delete: judge the pool again from the cache


def pool_key_of_member(sandbox: dict) -> tuple[str, str] | None:
    """The (namespace, pool) a Sandbox is a warm member of, from its controller reference."""
    ref = controller_of(sandbox)
    if ref is None or ref.get("kind") != "SandboxWarmPool" or \
            not str(ref.get("apiVersion", "")).startswith(n.EXTENSIONS_GROUP + "/"):
        return None
    if n.WARM_POOL_SANDBOX not in (sandbox["metadata"].get("labels") or {}):
        return None
    return (sandbox["metadata"]["namespace"], ref["name"])


class WarmPoolReconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._stuck: set[str] = set()  # uids of pools last reported WarmPoolNotProgressing

    def members(self, pool: dict) -> list[dict]:
        """Sandboxes carrying the pool's label and controlled by it (or by nobody)."""
        meta = pool["metadata"]
        found = []
        for sandbox in self.ctx.sandboxes.by_index("pool", n.name_hash(meta["name"])):
            if sandbox["metadata"]["namespace"] != meta["namespace"]:
                continue
            ref = controller_of(sandbox)
            if ref is None or ref.get("uid") == meta["uid"]:
                found.append(sandbox)
        return found

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        pool = self.ctx.pools.get(*key)
        if pool is None:
            self.ctx.expectations.forget(key)
            self.ctx.metrics.forget_pool(*key)
            return None
        settings = self.ctx.settings
        ns = key[0]
        template = self.ctx.templates.get(ns, pool["spec"]["sandboxTemplateRef"]["name"])
        views = []
        versions: dict[str, str] = {}  # the resourceVersion each member is judged by
        facts = None if template is None else logic.freshness(
            template, settings.public_nameservers)
        for sandbox in self.members(pool):
            if controller_of(sandbox) is None:
                sandbox = await self._adopt_orphan(pool, template, sandbox)
                if sandbox is None:
                    continue
            views.append(self._view(sandbox, template, facts))
            versions[sandbox["metadata"]["name"]] = sandbox["metadata"]["resourceVersion"]
        pending_deletes = self.ctx.expectations.pending_deletes(key)
        for view in views:
            view.deleting = view.deleting or view.name in pending_deletes

        requeue = None
        if template is not None and not pool["metadata"].get("deletionTimestamp") and \
                self.ctx.expectations.satisfied(key):
            replicas = min(int(pool["spec"].get("replicas", 1)), settings.max_pool_replicas)
            recreate = (pool["spec"].get("updateStrategy") or {}).get("type") == "Recreate"
            plan = logic.plan(replicas, views, recreate=recreate, now=cond.now(),
                              readiness_grace=settings.readiness_grace,
                              recheck=settings.unschedulable_recheck,
                              max_batch=settings.max_batch_size)
            requeue = plan.requeue_after
            for name in plan.delete:
                # Conditional on the version judged above, not on the cache's version now: the
                # cache moves on during each await, and a member adopted meanwhile (by a claim,
                # or by a gateway's fast path) is a session's now and must survive.
                self.ctx.expectations.expect_delete(key, name)
                try:
                    deleted = await self.ctx.kube.delete(SANDBOXES, ns, name,
                                                         resource_version=versions[name])
                except Conflict:
                    deleted = False
                    requeue = min(requeue or CHANGED_REQUEUE, CHANGED_REQUEUE)
                if not deleted:
                    self.ctx.expectations.observe_delete(key, name)
            if plan.create:
                await self._create(key, pool, template, plan.create)
        elif template is not None and not pool["metadata"].get("deletionTimestamp"):
            # Waiting on expectations: their events re-queue the pool; should one be lost,
            # their expiry must, or the pool would wait for the next resync.
            requeue = self.ctx.expectations.expires_in(key)

        self._report_progress(pool, views)
        status = logic.pool_status(pool, views)
        self.ctx.metrics.pool_depth(ns, key[1], status["readyReplicas"], status["replicas"])
        patch = status_patch(pool.get("status"), status)
        if patch is not None:
            try:
                await self.ctx.kube.patch_status(WARMPOOLS, ns, key[1], patch)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        return requeue

    def _report_progress(self, pool: dict, views: list[logic.Member]) -> None:
        """The Events upstream uses in place of conditions: members that cannot be scheduled
        stall the pool (WarmPoolNotProgressing); once none is held, WarmPoolProgressing."""
        uid = pool["metadata"]["uid"]
        held = sum(1 for view in views if view.held and not view.deleting)
        if held:
            self._stuck.add(uid)
            self.ctx.event(pool, "Warning", "WarmPoolNotProgressing",
                           f"{held} warm Sandbox(es) cannot be scheduled")
        elif uid in self._stuck:
            self._stuck.discard(uid)
            self.ctx.event(pool, "Normal", "WarmPoolProgressing", "members are scheduled again")

    def _view(self, sandbox: dict, template: dict | None,
              facts: logic.Freshness | None) -> logic.Member:
        meta = sandbox["metadata"]
        created = cond.parse_time(meta.get("creationTimestamp")) or cond.now()
        stale = template is not None and logic.is_stale(
            sandbox, template, self.ctx.settings.public_nameservers, facts)
        return logic.Member(
            name=meta["name"], ready=logic.is_ready(sandbox), created=created,
            order=self.ctx.sandboxes.first_seen.get((meta["namespace"], meta["name"]), 0),
            deleting=bool(meta.get("deletionTimestamp")), stale=stale,
            held=logic.scheduling_held(sandbox))

    async def _create(self, key: tuple[str, str], pool: dict, template: dict, total: int) -> None:
        settings = self.ctx.settings
        body = logic.build_member(pool, template, nameservers=settings.public_nameservers,
                                  safe_to_evict=settings.enable_warm_pool_eviction)
        for size in logic.slow_start(total):
            results = await asyncio.gather(
                *(self.ctx.kube.create(SANDBOXES, key[0], copy.deepcopy(body)) for _ in range(size)),
                return_exceptions=True)
            failed = None
            for result in results:
                if isinstance(result, BaseException):
                    failed = result
                    continue
                name = result["metadata"]["name"]
                if self.ctx.sandboxes.get(key[0], name) is None:  # not seen by the cache yet
                    self.ctx.expectations.expect_create(key, name)
            if failed is not None:
                log.warning("warm pool %s/%s: creating members failed: %s", *key, failed)
                raise failed

    async def _adopt_orphan(self, pool: dict, template: dict | None,
                            sandbox: dict) -> dict | None:
        """An unowned Sandbox with the pool's label joins the pool, unless it is stale."""
        if template is None or logic.is_stale(sandbox, template,
                                              self.ctx.settings.public_nameservers):
            return None
        meta = sandbox["metadata"]
        try:
            return await self.ctx.kube.patch(SANDBOXES, meta["namespace"], meta["name"], {
                "metadata": {"resourceVersion": meta["resourceVersion"], "ownerReferences": [
                    owner_ref(pool, WARMPOOLS.api_version, "SandboxWarmPool")]}})
        except ApiError:
            return None

