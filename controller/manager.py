"""The controller: caches, queues and reconcilers wired together, under leader election.

While this replica leads, it runs one informer per resource, one work queue per kind and the
four reconcilers; informer handlers only map events to queue keys. When leadership is lost
everything is stopped and dropped (caches, reservations, expectations), and the replica
campaigns again; a new term starts from a fresh list.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from controller import conditions as cond
from controller import naming as n
from controller.agentcube import AgentRuntimeReconciler, CodeInterpreterReconciler, owning_workload
from controller.claim import ClaimReconciler
from controller.context import Context
from controller.events import EventRecorder
from controller.expectations import Expectations
from controller.identity import PublicKeyLoader
from controller.informer import Informer, key_of
from controller.leader import LeaderElector
from controller.metrics import Metrics
from controller.resources import (
    AGENT_RUNTIMES,
    CLAIMS,
    CODE_INTERPRETERS,
    PODS,
    SANDBOXES,
    SERVICES,
    TEMPLATES,
    WARMPOOLS,
)
from controller.sandbox import SandboxReconciler
from controller.sandbox_logic import controller_of
from controller.settings import Settings
from controller.template import TemplateReconciler
from controller.warmpool import WarmPoolReconciler, pool_key_of_member
from controller.warmpool_logic import is_ready
from controller.workqueue import WorkQueue

log = logging.getLogger(__name__)


def _owner_uid(obj: dict) -> list[str]:
    ref = controller_of(obj)
    return [ref["uid"]] if ref and ref.get("uid") else []


def _pool_label(obj: dict) -> list[str]:
    value = (obj["metadata"].get("labels") or {}).get(n.WARM_POOL_SANDBOX)
    return [value] if value else []


def _claim_pool(obj: dict) -> list[str]:
    ref = (obj.get("spec") or {}).get("warmPoolRef") or {}
    return [f"{obj['metadata'].get('namespace')}/{ref['name']}"] if ref.get("name") else []


def _annotations(meta: dict) -> dict:
    # The claim's sandbox-name annotation is our own bookkeeping: writing it needs no reconcile.
    return {k: v for k, v in (meta.get("annotations") or {}).items()
            if k not in (n.SANDBOX_NAME_ANNOTATION, n.LATENCY_RECORDED)}


def _meta_or_spec_changed(old: dict | None, new: dict | None) -> bool:
    """False for status-only updates (our own status writes), which need no reconcile."""
    if old is None or new is None:
        return True
    a, b = old["metadata"], new["metadata"]
    return a.get("generation") != b.get("generation") or a.get("labels") != b.get("labels") \
        or _annotations(a) != _annotations(b) \
        or a.get("deletionTimestamp") != b.get("deletionTimestamp") \
        or a.get("ownerReferences") != b.get("ownerReferences")


def _condition_gist(status: dict, type_: str) -> tuple | None:
    found = cond.find(status.get("conditions"), type_)
    return None if found is None else (found.get("status"), found.get("reason"),
                                       found.get("message"))


def _claim_relevant(old: dict | None, new: dict | None) -> bool:
    """Sandbox changes a claim reports: existence, deletion, podIPs, Ready and Finished.

    Its adoption is not among them: the claim reconcile that adopted it wrote the status.
    """
    if old is None or new is None:
        return True
    so, sn = old.get("status") or {}, new.get("status") or {}
    return so.get("podIPs") != sn.get("podIPs") or \
        old["metadata"].get("deletionTimestamp") != new["metadata"].get("deletionTimestamp") or \
        any(_condition_gist(so, t) != _condition_gist(sn, t) for t in ("Ready", "Finished"))


class Controller:
    """`async with Controller(kube, settings):` runs the controller until the block ends."""

    def __init__(self, kube: Any, settings: Settings | None = None,
                 metrics: Metrics | None = None) -> None:
        self.kube = kube
        self.settings = settings or Settings()
        self.metrics = metrics or Metrics()
        identity = self.settings.identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.identity = identity
        self.elector = LeaderElector(
            kube, self.settings.lease_namespace, self.settings.lease_name, identity,
            lease_duration=self.settings.lease_duration,
            renew_deadline=self.settings.renew_deadline, retry_period=self.settings.retry_period)
        self.ctx: Context | None = None
        self.events = EventRecorder(kube, min_interval=self.settings.event_interval)
        # Kept across terms: the key never changes, so it is fetched once per process.
        self.public_key = PublicKeyLoader(kube, self.settings.identity_namespace)
        self.agentcube: dict[str, Informer] = {}
        self.gc: Any = None
        self.leading = asyncio.Event()
        self.terms = 0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Controller:
        self._task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        await self.events.drain()

    async def run(self) -> None:
        """Campaign, lead, and campaign again after a lost term; until cancelled.

        The Lease is renewed from the moment it is won, while the caches are still filling, so
        a slow start never lets a standby take over underneath us.
        """
        election = self.settings.leader_election
        try:
            while True:
                if election:
                    await self.elector.acquire()
                self.metrics.leader.set(1)
                term = asyncio.create_task(self._term())
                tasks = [term]
                if election:
                    tasks.append(asyncio.create_task(self.elector.hold()))
                try:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.wait(tasks)
                    self.metrics.leader.set(0)
                    await self._stop_term()
                if term.done() and not term.cancelled() and term.exception() is not None:
                    log.error("controller term failed; starting over", exc_info=term.exception())
                    await asyncio.sleep(1.0)
        finally:
            if election:
                await asyncio.shield(self.elector.release())

    async def _term(self) -> None:
        await self._start_term()
        await asyncio.Event().wait()  # until cancelled: leadership lost, or shutdown

    # -- one term of leadership -------------------------------------------------------------

    async def _start_term(self) -> None:
        s = self.settings
        namespaces = list(s.namespaces) or None

        def informer(res: Any, selector: str | None = None) -> Informer:
            return Informer(self.kube, res, namespaces, label_selector=selector, resync=s.resync,
                            watch_timeout=s.watch_timeout)

        ctx = Context(
            kube=self.kube, settings=s, metrics=self.metrics,
            sandboxes=informer(SANDBOXES), pods=informer(PODS, n.SANDBOX_NAME_HASH),
            services=informer(SERVICES, n.SANDBOX_NAME_HASH), claims=informer(CLAIMS),
            pools=informer(WARMPOOLS), templates=informer(TEMPLATES),
            expectations=Expectations(s.expectations_timeout), events=self.events)
        ctx.sandboxes.add_index("pool", _pool_label)
        ctx.sandboxes.add_index("owner", _owner_uid)
        ctx.pods.add_index("owner", _owner_uid)
        ctx.claims.add_index("pool", _claim_pool)
        self.sandbox_reconciler = SandboxReconciler(ctx)
        self.pool_reconciler = WarmPoolReconciler(ctx)
        self.claim_reconciler = ClaimReconciler(ctx)
        self.template_reconciler = TemplateReconciler(ctx)
        kinds = [("sandbox", self.sandbox_reconciler, s.sandbox_workers),
                 ("pool", self.pool_reconciler, s.pool_workers),
                 ("claim", self.claim_reconciler, s.claim_workers),
                 ("template", self.template_reconciler, s.template_workers)]
        if not s.agent_sandbox:  # upstream reconciles them; the informers still feed ours
            kinds = []
        self.agentcube = {}
        if s.agentcube:
            self.agentcube = {"codeinterpreter": informer(CODE_INTERPRETERS),
                              "agentruntime": informer(AGENT_RUNTIMES)}
            self.ci_reconciler = CodeInterpreterReconciler(
                ctx, self.agentcube["codeinterpreter"], self.events, self.public_key)
            self.ar_reconciler = AgentRuntimeReconciler(ctx, self.agentcube["agentruntime"],
                                                        self.events)
            kinds += [("codeinterpreter", self.ci_reconciler, s.agentcube_workers),
                      ("agentruntime", self.ar_reconciler, s.agentcube_workers)]
        for kind, reconciler, workers in kinds:
            ctx.queues[kind] = WorkQueue(kind, reconciler.reconcile, workers,
                                         on_error=self.metrics.error)
        self.ctx = ctx
        self._wire(ctx)
        if s.agentcube:
            self._wire_agentcube(ctx)
        self.terms += 1
        informers = (ctx.templates, ctx.pools, ctx.sandboxes, ctx.pods, ctx.services, ctx.claims,
                     *self.agentcube.values())
        await asyncio.gather(*(inf.start() for inf in informers))
        for queue in ctx.queues.values():
            await queue.start()
        if s.agentcube:
            self.public_key.start()  # creates the identity Secret if no gateway has yet
        if s.redis_url:
            from controller.gc import SessionCollector  # needs redis only when configured

            self.gc = SessionCollector(ctx, self.metrics)
            self.gc.start()
        self.leading.set()
        log.info("controller %s is reconciling (term %d)", self.identity, self.terms)

    async def _stop_term(self) -> None:
        self.leading.clear()
        ctx = self.ctx
        if ctx is None:
            return
        if self.gc is not None:
            await self.gc.stop()
            self.gc = None
        await self.public_key.stop()
        for queue in ctx.queues.values():
            await queue.stop()
        for inf in (ctx.templates, ctx.pools, ctx.sandboxes, ctx.pods, ctx.services, ctx.claims,
                    *self.agentcube.values()):
            await inf.stop()
        self.ctx = None

    def _wire(self, ctx: Context) -> None:
        loop = asyncio.get_running_loop()
        claims = self.claim_reconciler
        s = self.settings

        def on_sandbox(old: dict | None, new: dict | None) -> None:
            obj = new or old
            assert obj is not None
            ns, name = key_of(obj)
            if new is not None:
                ctx.enqueue("sandbox", ns, name)
            else:
                self.sandbox_reconciler.forget(obj["metadata"]["uid"])
            old_pool = pool_key_of_member(old) if old is not None else None
            new_pool = pool_key_of_member(new) if new is not None else None
            # Expectations count members: one that joins the pool (however it came) is a
            # creation seen, one that leaves it (deleted, or adopted by a claim or a gateway,
            # maybe deleted later as a session's) is a deletion seen. A DELETED event alone
            # would never cross off a member adopted before it went.
            if new_pool is not None and new_pool != old_pool:
                ctx.expectations.observe_create(new_pool, name)
            if old_pool is not None and old_pool != new_pool:
                ctx.expectations.observe_delete(old_pool, name)
            if new is None or new_pool is None:
                claims.release((ns, name))
            for pool in {old_pool, new_pool} - {None}:
                # Coalesce a burst of member events into one pool reconcile, except for new
                # and vanished members, which gate the pool's expectations.
                batch = 0.0 if old is None or new is None else s.pool_batch_delay
                ctx.enqueue("pool", *pool, delay=batch)
            if new_pool is not None and is_ready(new) and (old is None or not is_ready(old)):
                claims.wake_one(new_pool)
            ref = controller_of(obj)
            if ref is not None and ref.get("kind") == "SandboxClaim" and _claim_relevant(old, new):
                ctx.enqueue("claim", ns, ref["name"])

        def on_owned(old: dict | None, new: dict | None) -> None:  # pods and services
            obj = new or old
            assert obj is not None
            ref = controller_of(obj)
            ns, name = key_of(obj)
            if ref is None:
                ctx.enqueue("sandbox", ns, name)
            elif ref.get("kind") == "Sandbox":
                ctx.enqueue("sandbox", ns, ref["name"])

        def on_claim(old: dict | None, new: dict | None) -> None:
            if new is None:
                assert old is not None
                claims.forget(old)
                return
            if old is None:
                claims.observe(new, loop.time())
            if _meta_or_spec_changed(old, new):
                ctx.enqueue("claim", *key_of(new))

        def on_pool(old: dict | None, new: dict | None) -> None:
            obj = new or old
            assert obj is not None
            # Status-only updates are our own writes; a resync replays the very object (old is
            # new) and must wake the pool, so that a missed wake-up is never permanent.
            if old is not new and not _meta_or_spec_changed(old, new):
                return
            ns, name = key_of(obj)
            ctx.enqueue("pool", ns, name)
            for claim in ctx.claims.by_index("pool", f"{ns}/{name}"):
                if not (claim.get("status") or {}).get("sandbox"):
                    ctx.enqueue("claim", *key_of(claim))

        def on_template(old: dict | None, new: dict | None) -> None:
            obj = new or old
            assert obj is not None
            if not _meta_or_spec_changed(old, new):
                return
            ns, name = key_of(obj)
            if new is not None:
                ctx.enqueue("template", ns, name)
            for pool in ctx.pools.list(ns):
                if pool["spec"]["sandboxTemplateRef"]["name"] == name:
                    on_pool(None, pool)

        ctx.sandboxes.add_handler(on_sandbox)
        ctx.pods.add_handler(on_owned)
        ctx.services.add_handler(on_owned)
        ctx.claims.add_handler(on_claim)
        ctx.pools.add_handler(on_pool)
        ctx.templates.add_handler(on_template)

    def _wire_agentcube(self, ctx: Context) -> None:
        """CRs wake their reconciler on spec changes; owned templates and pools, and the pool's
        members and their pods, wake the CR that owns them (status, problems, drift)."""
        cis, ars = self.agentcube["codeinterpreter"], self.agentcube["agentruntime"]
        queue_of = {"CodeInterpreter": "codeinterpreter", "AgentRuntime": "agentruntime"}
        settle = 0.2  # member and pod events within this window share one CR reconcile

        def on_cr(kind: str, forget: Any = None) -> Any:
            def handler(old: dict | None, new: dict | None) -> None:
                obj = new or old
                assert obj is not None
                if new is None and forget is not None:
                    forget(key_of(obj))
                if _meta_or_spec_changed(old, new):
                    ctx.enqueue(kind, *key_of(obj))
            return handler

        def owner_of(obj: dict | None, delay: float = 0.0) -> None:
            found = owning_workload(obj) if obj is not None else None
            if found is not None:
                ctx.enqueue(queue_of[found[0]], obj["metadata"]["namespace"], found[1], delay)

        def on_owned(old: dict | None, new: dict | None) -> None:
            owner_of(new or old)

        def member_pool(sandbox: dict | None) -> dict | None:
            key = pool_key_of_member(sandbox) if sandbox is not None else None
            return ctx.pools.get(*key) if key is not None else None

        def on_member(old: dict | None, new: dict | None) -> None:
            owner_of(member_pool(new or old), settle)

        def on_pod(old: dict | None, new: dict | None) -> None:
            pod = new or old
            assert pod is not None
            ref = controller_of(pod)
            if ref is not None and ref.get("kind") == "Sandbox":
                owner_of(member_pool(ctx.sandboxes.get(pod["metadata"]["namespace"],
                                                       ref["name"])), settle)

        def key_loaded() -> None:
            if self.ctx is ctx:
                for ci in cis.list():
                    ctx.enqueue("codeinterpreter", *key_of(ci))

        cis.add_handler(on_cr("codeinterpreter", self.ci_reconciler.forget))
        ars.add_handler(on_cr("agentruntime"))
        ctx.templates.add_handler(on_owned)
        ctx.pools.add_handler(on_owned)
        ctx.sandboxes.add_handler(on_member)
        ctx.pods.add_handler(on_pod)
        self.public_key.on_loaded(key_loaded)


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
