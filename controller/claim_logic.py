"""Pure decisions of the SandboxClaim reconciler: which warm Sandbox to adopt, what the adoption
patch and a cold Sandbox look like, what a claim may inject, when it expires and what its status
says (spec §5, §7.4). No I/O here."""

from __future__ import annotations

import copy
import datetime
from collections import Counter
from dataclasses import dataclass

from controller import conditions as cond
from controller import naming as n
from controller.resources import CLAIMS
from controller.sandbox_logic import owner_ref
from controller.warmpool_logic import sandbox_spec_from

FORBIDDEN_ANNOTATION_DOMAINS = ("kubernetes.io", "k8s.io", "agents.x-k8s.io")


class ClaimRejected(Exception):
    """The claim cannot be served as written; `reason` is its Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- choosing a warm member -------------------------------------------------------------------

@dataclass
class Candidate:
    name: str
    ready: bool
    has_ips: bool
    node: str
    order: int  # arrival order: lower is older


def choose_candidates(candidates: list[Candidate], count: int, *,
                      adopt_unready: bool = False) -> list[str]:
    """Up to `count` names to try, best first.

    Ready members first; among them, spread across nodes by taking from the node that has the
    most Ready members left (ties and unscheduled members: oldest first). With `adopt_unready`,
    members that have IPs but are not Ready yet follow (upstream's behaviour, #1513).
    """
    ready = sorted((c for c in candidates if c.ready), key=lambda c: c.order)
    remaining = Counter(c.node for c in ready if c.node)
    chosen: list[str] = []
    pool = list(ready)
    while pool and len(chosen) < count:
        scheduled = [c for c in pool if c.node]
        if scheduled:
            best = max(scheduled, key=lambda c: (remaining[c.node], -c.order))
            remaining[best.node] -= 1
        else:
            best = pool[0]
        chosen.append(best.name)
        pool.remove(best)
    if adopt_unready and len(chosen) < count:
        rest = sorted((c for c in candidates if not c.ready and c.has_ips), key=lambda c: c.order)
        chosen += [c.name for c in rest[:count - len(chosen)]]
    return chosen


# -- what a claim may change -----------------------------------------------------------------

def _domain(key: str) -> str:
    return key.split("/", 1)[0] if "/" in key else ""


def _in_domains(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def validate_pod_metadata(claim: dict, template_spec: dict, allowed_domains: tuple[str, ...]
                          ) -> None:
    """Check `spec.additionalPodMetadata`; raise ClaimRejected(InvalidMetadata)."""
    extra = claim["spec"].get("additionalPodMetadata") or {}
    template_meta = (template_spec.get("podTemplate") or {}).get("metadata") or {}
    for key, value in (extra.get("labels") or {}).items():
        if key == "app" and value == "sandbox-router":
            raise ClaimRejected("InvalidMetadata", "the label app=sandbox-router is reserved")
        if not _in_domains(_domain(key), allowed_domains):
            raise ClaimRejected("InvalidMetadata", f"label {key!r} must use a domain prefix from "
                                f"the allow-list {list(allowed_domains)}")
        have = (template_meta.get("labels") or {}).get(key)
        if have is not None and have != value:
            raise ClaimRejected("InvalidMetadata", f"label {key!r} conflicts with the template")
    for key, value in (extra.get("annotations") or {}).items():
        if key != n.SAFE_TO_EVICT and _in_domains(_domain(key), FORBIDDEN_ANNOTATION_DOMAINS):
            raise ClaimRejected("InvalidMetadata", f"annotation {key!r} uses a reserved domain")
        have = (template_meta.get("annotations") or {}).get(key)
        if have is not None and have != value:
            raise ClaimRejected("InvalidMetadata",
                                f"annotation {key!r} conflicts with the template")


def needs_cold_start(claim: dict) -> bool:
    return bool(claim["spec"].get("env") or claim["spec"].get("volumeClaimTemplates"))


def inject_env(pod_spec: dict, env: list[dict], policy: str) -> dict:
    """Apply the claim's env to a pod spec under the template's envVarsInjectionPolicy."""
    if not env:
        return pod_spec
    if policy not in ("Allowed", "Overrides"):
        raise ClaimRejected("EnvVarsInjectionRejected",
                            "the template's envVarsInjectionPolicy does not allow spec.env")
    spec = copy.deepcopy(pod_spec)
    containers = spec.get("containers") or []
    for var in env:
        target = var.get("containerName")
        matches = [c for c in containers if c.get("name") == target] if target else containers[:1]
        if not matches:
            raise ClaimRejected("EnvVarsInjectionRejected", f"no container named {target!r}")
        container = matches[0]
        if policy == "Allowed" and container.get("envFrom"):
            raise ClaimRejected("EnvVarsInjectionRejected",
                                f"container {container['name']!r} uses envFrom")
        current = container.setdefault("env", [])
        existing = [e for e in current if e.get("name") == var["name"]]
        if existing and policy == "Allowed":
            raise ClaimRejected("EnvVarsInjectionRejected",
                                f"variable {var['name']!r} is set by the template")
        entry = {"name": var["name"], "value": var.get("value", "")}
        if existing:
            current[current.index(existing[0])] = entry
        else:
            current.append(entry)
    return spec


def merge_volume_claim_templates(template_vcts: list[dict], claim_vcts: list[dict],
                                 policy: str) -> list[dict]:
    if not claim_vcts:
        return template_vcts
    if policy not in ("Allowed", "Overrides"):
        raise ClaimRejected("VolumeClaimTemplatesError",
                            "the template's volumeClaimTemplatesPolicy does not allow them")
    merged = {v["metadata"]["name"]: v for v in template_vcts}
    for vct in claim_vcts:
        name = vct["metadata"]["name"]
        if name in merged and policy == "Allowed":
            raise ClaimRejected("VolumeClaimTemplatesError",
                                f"volumeClaimTemplate {name!r} is defined by the template")
        merged[name] = vct
    return list(merged.values())


# -- building and adopting --------------------------------------------------------------------

def _claim_ref(claim: dict) -> dict:
    return owner_ref(claim, CLAIMS.api_version, "SandboxClaim")


def _pod_metadata_patch(claim: dict) -> dict:
    extra = claim["spec"].get("additionalPodMetadata") or {}
    patch: dict = {}
    if extra.get("labels"):
        patch["labels"] = dict(extra["labels"])
    if extra.get("annotations"):
        patch["annotations"] = dict(extra["annotations"])
    return patch


def adoption_patch(claim: dict, sandbox: dict) -> dict:
    """The one conditional patch that hands a warm Sandbox to a claim.

    Drops the pool's labels (so it leaves the pool) and safe-to-evict, marks it warm-launched
    for this claim, and replaces its owner references wholesale with the claim.
    """
    meta = sandbox["metadata"]
    claim_annotations = claim["metadata"].get("annotations") or {}
    annotations = {n.POD_NAME_ANNOTATION: meta["name"]}
    if n.TRACE_CONTEXT in claim_annotations:
        annotations[n.TRACE_CONTEXT] = claim_annotations[n.TRACE_CONTEXT]
    pod_meta = _pod_metadata_patch(claim)
    pod_annotations = pod_meta.setdefault("annotations", {})
    pod_annotations.setdefault(n.SAFE_TO_EVICT, None)
    return {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],
            "labels": {n.WARM_POOL_SANDBOX: None, n.TEMPLATE_HASH: None, n.POD_TEMPLATE_HASH: None,
                       n.LAUNCH_TYPE: "warm", n.CLAIM_UID: claim["metadata"]["uid"]},
            "annotations": annotations,
            "ownerReferences": [_claim_ref(claim)],
        },
        "spec": {"podTemplate": {"metadata": pod_meta}},
    }


def adoptable(sandbox: dict, pool_hash: str, template_hash_ref: str) -> bool:
    meta = sandbox["metadata"]
    labels = meta.get("labels") or {}
    return not meta.get("deletionTimestamp") and labels.get(n.WARM_POOL_SANDBOX) == pool_hash \
        and labels.get(n.TEMPLATE_REF_HASH) == template_hash_ref


def cold_sandbox(claim: dict, template: dict, nameservers: tuple[str, ...]) -> dict:
    """A Sandbox named after the claim, built from the template plus what the claim injects."""
    cmeta, tspec = claim["metadata"], template["spec"]
    spec = sandbox_spec_from(tspec, nameservers)
    pod_template = spec["podTemplate"]
    pod_template["spec"] = inject_env(pod_template["spec"], claim["spec"].get("env") or [],
                                      tspec.get("envVarsInjectionPolicy", "Disallowed"))
    vcts = merge_volume_claim_templates(tspec.get("volumeClaimTemplates") or [],
                                        claim["spec"].get("volumeClaimTemplates") or [],
                                        tspec.get("volumeClaimTemplatesPolicy", "Disallowed"))
    if vcts:
        spec["volumeClaimTemplates"] = vcts
    extra = _pod_metadata_patch(claim)
    pod_meta = pod_template.setdefault("metadata", {})
    for part in ("labels", "annotations"):
        if extra.get(part):
            pod_meta[part] = {**(pod_meta.get(part) or {}), **extra[part]}
    annotations = {n.TEMPLATE_REF_ANNOTATION: template["metadata"]["name"],
                   n.POD_NAME_ANNOTATION: cmeta["name"]}
    if n.TRACE_CONTEXT in (cmeta.get("annotations") or {}):
        annotations[n.TRACE_CONTEXT] = cmeta["annotations"][n.TRACE_CONTEXT]
    return {
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {
            "name": cmeta["name"], "namespace": cmeta["namespace"],
            "labels": {n.CLAIM_UID: cmeta["uid"], n.LAUNCH_TYPE: "cold",
                       n.TEMPLATE_REF_HASH: n.name_hash(template["metadata"]["name"]),
                       n.CREATED_BY: (cmeta.get("labels") or {}).get(n.CREATED_BY,
                                                                      n.CREATED_BY_CONTROLLER)},
            "annotations": annotations,
            "ownerReferences": [_claim_ref(claim)],
        },
        "spec": spec,
    }


# -- lifecycle and status ---------------------------------------------------------------------

def deadline(claim: dict) -> datetime.datetime | None:
    """When the claim expires: the earlier of shutdownTime and Finished + ttlSecondsAfterFinished."""
    lifecycle = claim["spec"].get("lifecycle") or {}
    moments = []
    shutdown = cond.parse_time(lifecycle.get("shutdownTime"))
    if shutdown is not None:
        moments.append(shutdown)
    ttl = lifecycle.get("ttlSecondsAfterFinished")
    finished = cond.find((claim.get("status") or {}).get("conditions"), "Finished")
    if ttl is not None and finished is not None and finished.get("status") == "True":
        at = cond.parse_time(finished.get("lastTransitionTime"))
        if at is not None:
            moments.append(at + datetime.timedelta(seconds=int(ttl)))
    return min(moments) if moments else None


def is_expired_marked(claim: dict) -> bool:
    ready = cond.find((claim.get("status") or {}).get("conditions"), "Ready")
    return ready is not None and ready.get("reason") == "ClaimExpired"


def bound_status(claim: dict, sandbox: dict, when: datetime.datetime) -> dict:
    """Name, podIPs and Ready in one status: the SDK's single watch sees binding and readiness
    together. Ready is forwarded from the Sandbox, with the claim's generation."""
    gen = claim["metadata"].get("generation")
    sb_status = sandbox.get("status") or {}
    sb_conditions = sb_status.get("conditions")
    ready = cond.find(sb_conditions, "Ready")
    if ready is None or ready.get("reason") == "DependenciesNotReady":
        # Its Pod is on the way: the steps of a cold start (no Pod, Pod not Ready yet) are the
        # Sandbox's news, not the claim's; one SandboxNotReady until Ready saves status writes.
        current = cond.find((claim.get("status") or {}).get("conditions"), "Ready")
        if current is not None and current.get("reason") == "SandboxNotReady" and \
                current.get("observedGeneration") == gen:
            ready = current
        else:
            ready = cond.make("Ready", False, "SandboxNotReady", "the Sandbox is not Ready yet",
                              gen)
            ready["lastTransitionTime"] = cond.format_time(when)
    else:
        ready = dict(ready) | {"observedGeneration": gen}
    new = [ready]
    finished = cond.find(sb_conditions, "Finished")
    if finished is not None:
        new.append(dict(finished) | {"observedGeneration": gen})
    kept = [c for c in (claim.get("status") or {}).get("conditions") or ()
            if c.get("type") not in ("Ready", "Finished")]
    sandbox_ref: dict = {"name": sandbox["metadata"]["name"]}
    if sb_status.get("podIPs"):
        sandbox_ref["podIPs"] = list(sb_status["podIPs"])
    return {"sandbox": sandbox_ref, "conditions": new + kept}


def failed_status(claim: dict, reason: str, message: str, when: datetime.datetime,
                  keep_sandbox: bool = True) -> dict:
    """Ready=False with one of the claim's own reasons."""
    gen = claim["metadata"].get("generation")
    current = claim.get("status") or {}
    status: dict = {"conditions": cond.merge(current.get("conditions"), [
        cond.make("Ready", False, reason, message, gen)], when)}
    if keep_sandbox and current.get("sandbox"):
        status["sandbox"] = current["sandbox"]
    return status
