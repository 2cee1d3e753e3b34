"""The Sandbox reconciler: PVCs, then the Pod, then the Service, then one status merge-patch.

Decisions come from `sandbox_logic`; this module only reads the caches and writes to the API.
The controller is the Sandbox status's sole writer, so status patches carry no precondition.
"""

from __future__ import annotations

import logging

from controller import conditions as cond
from controller import naming as n
from controller import sandbox_logic as logic
from controller.context import Context
from controller.errors import AlreadyExists, Invalid, NotFound
from controller.memo import StatusMemo
from controller.resources import PODS, PVCS, SANDBOXES, SERVICES

log = logging.getLogger(__name__)


class SandboxReconciler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._pvcs_done: set[str] = set()  # sandbox uids whose PVCs exist
        self.memo = StatusMemo()
        self._errors: dict[str, str] = {}  # sandbox uid -> the error last reported

    async def reconcile(self, key: tuple[str, str]) -> float | None:
        sandbox = self.ctx.sandboxes.get(*key)
        if sandbox is None or sandbox["metadata"].get("deletionTimestamp"):
            return None
        try:
            return await self._reconcile(sandbox)
        except NotFound as exc:
            # Deleted under us (the cache has not seen it yet): its DELETED event ends this.
            log.debug("sandbox %s/%s: %s", *key, exc)
            return None

    async def _reconcile(self, sandbox: dict) -> float | None:
        key = (sandbox["metadata"]["namespace"], sandbox["metadata"]["name"])
        now = cond.now()
        deadline = logic.shutdown_at(sandbox)
        if deadline is not None and deadline <= now:
            await self._expire(sandbox)
            return None

        error = ""
        await self._ensure_pvcs(sandbox)
        pod = self.ctx.pods.get(*key)
        if pod is not None and not logic.is_controlled_by(pod, sandbox):
            if logic.may_adopt(sandbox, pod):
                pod = await self._adopt(PODS, pod, sandbox)
            else:
                error, pod = f"Pod {key[1]} exists and is not owned by this Sandbox", None
        owned = [p for p in self.ctx.pods.by_index("owner", sandbox["metadata"]["uid"])]
        multiple = len(owned) > 1

        if logic.is_suspended(sandbox):
            if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                # Once terminating (a kubelet's grace period), its updates must not re-DELETE.
                await self.ctx.kube.delete(PODS, key[0], key[1], uid=pod["metadata"]["uid"])
            await self._track_pod_name(sandbox, None)
        elif not error:
            if pod is None:
                pod, error = await self._create_pod(sandbox)
            else:
                patch = logic.pod_metadata_patch(sandbox, pod)
                if patch is not None:
                    pod = await self.ctx.kube.patch(PODS, key[0], key[1], patch)
            await self._track_pod_name(sandbox, pod)

        has_service, service_ok, service_error = await self._reconcile_service(sandbox)
        error = error or service_error
        status = logic.compute_status(
            sandbox | {"status": self.memo.current(sandbox) or {}}, pod, service_ok=service_ok, has_service=has_service,
            cluster_domain=self.ctx.settings.cluster_domain, when=now, error=error,
            multiple_pods=multiple)
        patch = logic.status_patch(self.memo.current(sandbox), status)
        if patch is not None:
            uid = sandbox["metadata"]["uid"]
            if error and self._errors.get(uid) != error:
                log.warning("sandbox %s/%s: %s", key[0], key[1], error)  # once, not per retry
            self._errors[uid] = error
            await self.ctx.kube.patch_status(SANDBOXES, key[0], key[1], patch)
            self.memo.record(sandbox, status)
        if deadline is not None:
            return max(0.05, (deadline - cond.now()).total_seconds())
        return None

    async def _create_pod(self, sandbox: dict) -> tuple[dict | None, str]:
        """Create the Pod; on AlreadyExists (a lagging cache, or a Pod we do not watch because
        it lacks our label) reconcile what is there: ours, adoptable, or an error."""
        meta = sandbox["metadata"]
        try:
            pod = await self.ctx.kube.create(PODS, meta["namespace"], logic.desired_pod(sandbox))
            return pod, ""
        except Invalid as exc:
            return None, _refused("Pod", meta, exc)
        except AlreadyExists:
            pod = await self.ctx.kube.get(PODS, meta["namespace"], meta["name"])
        if logic.is_controlled_by(pod, sandbox):
            return pod, ""
        if logic.may_adopt(sandbox, pod):
            return await self._adopt(PODS, pod, sandbox), ""
        return None, f"Pod {meta['name']} exists and is not owned by this Sandbox"

    async def _adopt(self, res, obj: dict, sandbox: dict) -> dict:
        meta = obj["metadata"]
        refs = [logic.owner_ref(sandbox, SANDBOXES.api_version, "Sandbox")]
        hash_label = {n.SANDBOX_NAME_HASH: n.name_hash(sandbox["metadata"]["name"])}
        return await self.ctx.kube.patch(res, meta["namespace"], meta["name"], {
            "metadata": {"ownerReferences": refs, "resourceVersion": meta["resourceVersion"],
                         "labels": hash_label}})

    async def _track_pod_name(self, sandbox: dict, pod: dict | None) -> None:
        """Keep the `pod-name` annotation (read by agentcube and the SDK) in step.

        Warm-pool members get it when a claim adopts them, which saves a write per member.
        """
        meta = sandbox["metadata"]
        annotations = meta.get("annotations") or {}
        current = annotations.get(n.POD_NAME_ANNOTATION)
        if pod is None and current is not None:
            value = None
        elif pod is not None and current is None and \
                n.WARM_POOL_SANDBOX not in (meta.get("labels") or {}):
            value = pod["metadata"]["name"]
        else:
            return
        await self.ctx.kube.patch(SANDBOXES, meta["namespace"], meta["name"],
                                  {"metadata": {"annotations": {n.POD_NAME_ANNOTATION: value}}})

    async def _ensure_pvcs(self, sandbox: dict) -> None:
        """Create the PVCs of the volume-claim templates before the Pod that mounts them.

        After a restart, a Sandbox whose Pod exists had its PVCs created before that Pod, so
        they are not created again (which would cost a 409 per PVC).
        """
        vcts = sandbox["spec"].get("volumeClaimTemplates") or []
        uid = sandbox["metadata"]["uid"]
        if not vcts or uid in self._pvcs_done:
            return
        pod = self.ctx.pods.get(sandbox["metadata"]["namespace"], sandbox["metadata"]["name"])
        if pod is not None and logic.is_controlled_by(pod, sandbox):
            self._pvcs_done.add(uid)
            return
        for vct in vcts:
            try:
                await self.ctx.kube.create(PVCS, sandbox["metadata"]["namespace"],
                                           logic.desired_pvc(sandbox, vct))
            except AlreadyExists:
                pass
        self._pvcs_done.add(uid)

    async def _reconcile_service(self, sandbox: dict) -> tuple[bool, bool, str]:
        """(a Service exists for it, the Service requirement is met, an error to report).

        A Service the API server refuses (422: a Sandbox name with dots, two ports of one name)
        is reported in the Ready condition, not retried: only a change of the Sandbox can fix it.
        """
        meta = sandbox["metadata"]
        want = sandbox["spec"].get("service")
        service = self.ctx.services.get(meta["namespace"], meta["name"])
        if service is not None and not logic.is_controlled_by(service, sandbox):
            if want and logic.may_adopt(sandbox, service):
                service = await self._adopt(SERVICES, service, sandbox)
            else:
                return False, not want, ""
        if want is True:
            if service is None:
                try:
                    service = await self.ctx.kube.create(SERVICES, meta["namespace"],
                                                         logic.desired_service(sandbox))
                except AlreadyExists:
                    return False, False, ""
                except Invalid as exc:
                    return False, False, _refused("Service", meta, exc)
            return True, True, ""
        if want is False and service is not None:
            await self.ctx.kube.delete(SERVICES, meta["namespace"], meta["name"],
                                       uid=service["metadata"]["uid"])
            return False, True, ""
        return service is not None, True, ""

    async def _expire(self, sandbox: dict) -> None:
        """At shutdownTime: Ready=False/SandboxExpired, delete Pod and Service, then the CR
        (`Delete`) or its status but the conditions (`Retain`)."""
        meta = sandbox["metadata"]
        ns, name = meta["namespace"], meta["name"]
        status = logic.expired_status(sandbox, cond.now())
        patch = logic.status_patch(sandbox.get("status"), status)
        if patch is not None:
            try:
                await self.ctx.kube.patch_status(SANDBOXES, ns, name, patch)
            except NotFound:
                return
        pod = self.ctx.pods.get(ns, name)
        if pod is not None and logic.is_controlled_by(pod, sandbox) and \
                not pod["metadata"].get("deletionTimestamp"):
            await self.ctx.kube.delete(PODS, ns, name, uid=pod["metadata"]["uid"])
        service = self.ctx.services.get(ns, name)
        if service is not None and logic.is_controlled_by(service, sandbox):
            await self.ctx.kube.delete(SERVICES, ns, name, uid=service["metadata"]["uid"])
        if sandbox["spec"].get("shutdownPolicy") == "Delete":
            log.info("sandbox %s/%s expired; deleting it (shutdownPolicy Delete)", ns, name)
            await self.ctx.kube.delete(SANDBOXES, ns, name, uid=meta["uid"])
        self._pvcs_done.discard(meta["uid"])

    def forget(self, uid: str) -> None:
        self._pvcs_done.discard(uid)
        self._errors.pop(uid, None)
        self.memo.forget(uid)


def _refused(kind: str, meta: dict, exc: Invalid) -> str:
    return f"the API server refused the {kind}: {exc.message or exc}"
