"""The SandboxClaim reconciler: bind a claim to a warm Sandbox (or a cold one) and report it.

A warm adoption costs three writes: the claim's `sandbox-name` annotation under the claim's
resourceVersion (so two controllers never bind one claim to two Sandboxes), the Sandbox's
ownership transfer under the Sandbox's resourceVersion (so two claims never get one Sandbox),
and one status patch carrying name, podIPs and Ready together. Within one process, a Sandbox
being adopted is reserved so that no other worker tries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from controller import claim_logic as logic
from controller import conditions as cond
from controller import naming as n
from controller.claim_logic import Candidate, ClaimRejected
from controller.context import Context
from controller.errors import AlreadyExists, ApiError, Conflict, NotFound
from controller.events import NORMAL
from controller.memo import StatusMemo
from controller.resources import CLAIMS, SANDBOXES
from controller.sandbox_logic import controller_of, is_controlled_by, status_patch
from controller.warmpool_logic import freshness, is_ready, is_stale

log = logging.getLogger(__name__)

MISSING_REQUEUE = 60.0  # pool or template missing: look again (their events also wake us)


class _Wait(Exception):
    def __init__(self, delay: float) -> None:
        super().__init__(f"waiting {delay:.2f}s for a warm sandbox")
        self.delay = delay


class ClaimReconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.reserved: dict[tuple[str, str], str] = {}  # sandbox key -> claim uid adopting it
        self.waiters: dict[tuple[str, str], deque] = {}  # pool key -> claim keys
        self.first_seen: dict[str, float] = {}  # claim uid -> loop time first observed
        self.reported: set[str] = set()  # claim uids whose latency this term has handled
        self.marking: set[str] = set()  # claim uids marked latency-recorded by this process
        self.memo = StatusMemo()

    # -- hooks called from informer handlers ------------------------------------------------

    def observe(self, claim: dict, now: float) -> None:
        self.first_seen.setdefault(claim["metadata"]["uid"], now)

    def forget(self, claim: dict) -> None:
        uid = claim["metadata"]["uid"]
        self.first_seen.pop(uid, None)
        self.reported.discard(uid)
        self.marking.discard(uid)
        self.memo.forget(uid)

    def release(self, sandbox_key: tuple[str, str]) -> None:
        self.reserved.pop(sandbox_key, None)

    def wake_one(self, pool_key: tuple[str, str]) -> None:
        """A member of the pool became Ready: let the longest-waiting claim try again."""
        waiting = self.waiters.get(pool_key)
        while waiting:
            key = waiting.popleft()
            claim = self.ctx.claims.get(*key)
            if claim is not None and not (claim.get("status") or {}).get("sandbox"):
                self.ctx.enqueue("claim", *key)
                return

    # -- reconcile --------------------------------------------------------------------------

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        claim = self.ctx.claims.get(*key)
        if claim is None or claim["metadata"].get("deletionTimestamp"):
            return None
        now = cond.now()
        expiry = logic.deadline(claim)
        if expiry is not None and expiry <= now:
            await self._expire(claim)
            return None
        try:
            sandbox = await self._find_or_make(claim)
        except _Wait as wait:
            return wait.delay
        except ClaimRejected as exc:
            await self._write(claim, logic.failed_status(claim, exc.reason, str(exc), now))
            if exc.reason in ("WarmPoolNotFound", "TemplateNotFound"):
                return MISSING_REQUEUE
            return None
        claim = self.ctx.claims.get(*key) or claim
        status = logic.bound_status(claim, sandbox, now)
        await self._write(claim, status)
        await self._report(claim, sandbox, status)
        expiry = logic.deadline(claim | {"status": status})
        if expiry is not None:
            return max(0.05, (expiry - cond.now()).total_seconds())
        return None

    async def _write(self, claim: dict, status: dict) -> None:
        patch = status_patch(self.memo.current(claim), status)
        if patch is None:
            return
        meta = claim["metadata"]
        try:
            await self.ctx.kube.patch_status(CLAIMS, meta["namespace"], meta["name"], patch)
        except NotFound:
            return  # deleted meanwhile
        self.memo.record(claim, status)

    async def _report(self, claim: dict, sandbox: dict, status: dict) -> None:
        """Count a claim's startup latency once, across restarts and leader changes: a counted
        claim carries the `creation-latency-recorded` annotation (upstream's marker). A warm
        adoption writes it with the choice of a Ready member (no extra write); a cold start
        writes it when Ready."""
        uid = claim["metadata"]["uid"]
        if uid in self.reported or not cond.is_true(status["conditions"], "Ready"):
            return
        marked = (claim["metadata"].get("annotations") or {}).get(n.LATENCY_RECORDED)
        if marked and uid not in self.marking:
            self.reported.add(uid)
            return  # counted before a restart, or by another leader
        if not marked:
            meta = claim["metadata"]
            try:
                await self.ctx.kube.patch(CLAIMS, meta["namespace"], meta["name"], {
                    "metadata": {"annotations": {n.LATENCY_RECORDED: "true"}}})
            except NotFound:
                return
        self.reported.add(uid)
        self.marking.discard(uid)
        launch = (sandbox["metadata"].get("labels") or {}).get(n.LAUNCH_TYPE, "cold")
        started = self.first_seen.get(uid)
        if started is not None:
            elapsed = asyncio.get_running_loop().time() - started
            self.ctx.metrics.claim_ready(launch, elapsed)
        requested = cond.parse_time((claim["metadata"].get("annotations") or {}).get(
            n.CLIENT_FIRST_REQUESTED_AT))
        if requested is not None:
            self.ctx.metrics.client_claim_ready(launch, (cond.now() - requested).total_seconds())

    # -- finding or making the Sandbox --------------------------------------------------------

    async def _find_or_make(self, claim: dict) -> dict:
        meta = claim["metadata"]
        ns, uid = meta["namespace"], meta["uid"]
        bound = ((claim.get("status") or {}).get("sandbox") or {}).get("name")
        if bound:
            sandbox = self.ctx.sandboxes.get(ns, bound)
            if sandbox is not None and is_controlled_by(sandbox, claim):
                return sandbox
        for sandbox in self.ctx.sandboxes.by_index("owner", uid):
            if not sandbox["metadata"].get("deletionTimestamp"):
                return sandbox

        same_name = self.ctx.sandboxes.get(ns, meta["name"])
        if same_name is not None and not is_controlled_by(same_name, claim) and (
                controller_of(same_name) is None or
                controller_of(same_name).get("kind") != "SandboxWarmPool"):
            raise ClaimRejected("ReconcilerError",
                                f"Sandbox {meta['name']} exists and is not owned by this claim")
        chosen = (meta.get("annotations") or {}).get(n.SANDBOX_NAME_ANNOTATION)
        if chosen:
            found = await self._resume(claim, chosen)
            if found is not None:
                return found
            claim = await self._annotate(claim, None)

        pool, template = self._resolve(claim)
        logic.validate_pod_metadata(claim, template["spec"],
                                    self.ctx.settings.allowed_label_domains)
        if not logic.needs_cold_start(claim):
            sandbox, contended = await self._adopt_warm(claim, pool, template)
            if sandbox is not None:
                return sandbox
            self._maybe_wait(claim, pool, contended)
        claim, followed = await self._lock(claim, meta["name"])
        if followed is not None:
            return followed
        return await self._create_cold(claim, template)

    def _resolve(self, claim: dict) -> tuple[dict, dict]:
        ns = claim["metadata"]["namespace"]
        pool_name = claim["spec"]["warmPoolRef"]["name"]
        pool = self.ctx.pools.get(ns, pool_name)
        if pool is None:
            raise ClaimRejected("WarmPoolNotFound", f"SandboxWarmPool {pool_name} not found")
        template_name = pool["spec"]["sandboxTemplateRef"]["name"]
        template = self.ctx.templates.get(ns, template_name)
        if template is None:
            raise ClaimRejected("TemplateNotFound", f"SandboxTemplate {template_name} not found")
        return pool, template

    async def _lock(self, claim: dict, name: str, ready: bool = False
                    ) -> tuple[dict, dict | None]:
        """Write our choice into the claim under its resourceVersion, before acting on it.

        This is what keeps two controllers from binding one claim twice: if a rival wrote its
        choice first (409), follow that choice when it can still be had; overwrite it only when
        it cannot (the rival will fail on it too). Returns (the updated claim, None) when our
        choice stands, or (the claim, the Sandbox we followed).
        """
        try:
            return await self._annotate(claim, name, ready), None
        except Conflict:
            self.marking.discard(claim["metadata"]["uid"])
            meta = claim["metadata"]
            claim = await self.ctx.kube.get(CLAIMS, meta["namespace"], meta["name"])
        other = (claim["metadata"].get("annotations") or {}).get(n.SANDBOX_NAME_ANNOTATION)
        if other:
            followed = await self._resume(claim, other)
            if followed is not None:
                return claim, followed
        return await self._annotate(claim, name, ready), None

    async def _resume(self, claim: dict, name: str) -> dict | None:
        """The claim names a Sandbox chosen earlier (by us before a restart, or by a rival):
        finish that binding if it can still be had."""
        ns = claim["metadata"]["namespace"]
        sandbox = self.ctx.sandboxes.get(ns, name)
        if sandbox is None or not is_controlled_by(sandbox, claim):
            try:
                sandbox = await self.ctx.kube.get(SANDBOXES, ns, name)
            except NotFound:
                sandbox = None
        if sandbox is None:
            if name != claim["metadata"]["name"]:
                return None
            # A cold start was chosen: creating it is idempotent, whoever chose it.
            _, template = self._resolve(claim)
            return await self._create_cold(claim, template)
        return await self._transfer(claim, sandbox)

    async def _annotate(self, claim: dict, name: str | None, ready: bool = False) -> dict:
        """Record the chosen Sandbox on the claim, under the claim's resourceVersion; with a
        Ready choice, mark its latency recorded too (it is counted right after the bind)."""
        meta = claim["metadata"]
        annotations: dict = {n.SANDBOX_NAME_ANNOTATION: name}
        if ready and not (meta.get("annotations") or {}).get(n.LATENCY_RECORDED):
            annotations[n.LATENCY_RECORDED] = "true"
            self.marking.add(meta["uid"])
        return await self.ctx.kube.patch(CLAIMS, meta["namespace"], meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"], "annotations": annotations}})

    async def _transfer(self, claim: dict, sandbox: dict) -> dict | None:
        """Hand the Sandbox to the claim under its resourceVersion; on 404/409 decide from an
        authoritative read rather than switching candidates blindly.

        The patch is conditional on the very version checked to be a pool member here, so a
        Sandbox another claim took in between is never taken from it.
        """
        ns, name = sandbox["metadata"]["namespace"], sandbox["metadata"]["name"]
        for _ in range(2):
            if is_controlled_by(sandbox, claim):
                return sandbox
            if not _in_pool(sandbox):
                return None  # another claim has it, or it left the pool
            try:
                return await self.ctx.kube.patch(SANDBOXES, ns, name,
                                                 logic.adoption_patch(claim, sandbox))
            except (Conflict, NotFound):
                try:
                    sandbox = await self.ctx.kube.get(SANDBOXES, ns, name)
                except NotFound:
                    return None
        return None

    def _candidates(self, claim: dict, pool: dict, template: dict) -> list[str]:
        ns = claim["metadata"]["namespace"]
        pool_hash = n.name_hash(pool["metadata"]["name"])
        template_ref = n.name_hash(template["metadata"]["name"])
        recreate = (pool["spec"].get("updateStrategy") or {}).get("type") == "Recreate"
        nameservers = self.ctx.settings.public_nameservers
        facts = freshness(template, nameservers) if recreate else None
        options = []
        for sandbox in self.ctx.sandboxes.by_index("pool", pool_hash):
            smeta = sandbox["metadata"]
            key = (smeta["namespace"], smeta["name"])
            ref = controller_of(sandbox)
            if smeta["namespace"] != ns or key in self.reserved or ref is None or \
                    ref.get("uid") != pool["metadata"]["uid"] or \
                    not logic.adoptable(sandbox, pool_hash, template_ref):
                continue
            if recreate and is_stale(sandbox, template, nameservers, facts):
                continue
            status = sandbox.get("status") or {}
            options.append(Candidate(smeta["name"], is_ready(sandbox), bool(status.get("podIPs")),
                                     status.get("nodeName", ""),
                                     self.ctx.sandboxes.first_seen.get(key, 0)))
        return logic.choose_candidates(options, self.ctx.settings.adoption_candidates,
                                       adopt_unready=self.ctx.settings.adopt_unready)

    async def _adopt_warm(self, claim: dict, pool: dict, template: dict
                          ) -> tuple[dict | None, bool]:
        """(the adopted Sandbox or None, whether candidates existed but were all lost)."""
        ns, uid = claim["metadata"]["namespace"], claim["metadata"]["uid"]
        candidates = self._candidates(claim, pool, template)
        for name in candidates:
            key = (ns, name)
            self.reserved[key] = uid
            adopted = None
            try:
                member = self.ctx.sandboxes.get(ns, name)
                claim, adopted = await self._lock(claim, name,
                                                  member is not None and is_ready(member))
                if adopted is None:
                    sandbox = self.ctx.sandboxes.get(ns, name)
                    if sandbox is not None:
                        adopted = await self._transfer(claim, sandbox)
                if adopted is not None:
                    log.debug("claim %s/%s adopted %s", ns, claim["metadata"]["name"],
                              adopted["metadata"]["name"])
                    self.ctx.event(claim, NORMAL, "SandboxAdopted",
                                   f"Adopted warm pool Sandbox {adopted['metadata']['name']}")
                    return adopted, False
            finally:
                if adopted is None or adopted["metadata"]["name"] != name:
                    self.reserved.pop(key, None)
        return None, bool(candidates)

    def _maybe_wait(self, claim: dict, pool: dict, contended: bool) -> None:
        """With no Ready member, wait a little for the refilling pool before going cold; when
        the members tried were all taken by rivals, look again as soon as the cache catches up.
        """
        if int(pool["spec"].get("replicas", 1)) <= 0:
            return
        started = self.first_seen.get(claim["metadata"]["uid"])
        now = asyncio.get_running_loop().time()
        if started is None:
            started = self.first_seen.setdefault(claim["metadata"]["uid"], now)
        remaining = self.ctx.settings.warm_wait - (now - started)
        if remaining <= 0:
            return
        if contended:
            raise _Wait(min(0.02, remaining))
        pool_key = (pool["metadata"]["namespace"], pool["metadata"]["name"])
        waiting = self.waiters.setdefault(pool_key, deque())
        key = (claim["metadata"]["namespace"], claim["metadata"]["name"])
        if key not in waiting:
            waiting.append(key)
        raise _Wait(remaining)

    async def _create_cold(self, claim: dict, template: dict) -> dict:
        meta = claim["metadata"]
        body = logic.cold_sandbox(claim, template, self.ctx.settings.public_nameservers)
        try:
            sandbox = await self.ctx.kube.create(SANDBOXES, meta["namespace"], body)
        except AlreadyExists:
            sandbox = await self.ctx.kube.get(SANDBOXES, meta["namespace"], meta["name"])
            if is_controlled_by(sandbox, claim):
                return sandbox
            raise ClaimRejected("ReconcilerError",
                                f"Sandbox {meta['name']} exists and is not owned by this claim"
                                ) from None
        self.ctx.event(claim, NORMAL, "SandboxProvisioned",
                       f"Created Sandbox {meta['name']} (no warm Sandbox to adopt)")
        return sandbox

    # -- expiry -----------------------------------------------------------------------------

    async def _expire(self, claim: dict) -> None:
        meta = claim["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if not logic.is_expired_marked(claim):
            await self._write(claim, logic.failed_status(
                claim, "ClaimExpired", "the claim reached its shutdown time", cond.now(),
                keep_sandbox=False))
            self.ctx.event(claim, NORMAL, "ClaimExpired", "the claim reached its shutdown time")
        policy = (claim["spec"].get("lifecycle") or {}).get("shutdownPolicy", "Retain")
        if policy in ("Delete", "DeleteForeground"):
            propagation = "Foreground" if policy == "DeleteForeground" else "Background"
            log.info("claim %s/%s expired; deleting it (%s)", ns, name, policy)
            await self.ctx.kube.delete(CLAIMS, ns, name, uid=meta["uid"], propagation=propagation)
            return
        for sandbox in self.ctx.sandboxes.by_index("owner", meta["uid"]):
            try:
                await self.ctx.kube.delete(SANDBOXES, ns, sandbox["metadata"]["name"],
                                           uid=sandbox["metadata"]["uid"])
            except ApiError as exc:
                if exc.status != 409:
                    raise


def _in_pool(sandbox: dict) -> bool:
    """Still a warm-pool member: controlled by a pool and carrying its label."""
    ref = controller_of(sandbox)
    return ref is not None and ref.get("kind") == "SandboxWarmPool" and \
        n.WARM_POOL_SANDBOX in (sandbox["metadata"].get("labels") or {}) and \
        not sandbox["metadata"].get("deletionTimestamp")
