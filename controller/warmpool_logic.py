"""Pure decisions of the warm-pool reconciler: what a member looks like, which members are stale
or stuck, how many to create and which to delete (spec §4, §7.3). No I/O here."""

from __future__ import annotations

import copy
import datetime
import json
from dataclasses import dataclass, field

from controller import conditions as cond
from controller import naming as n
from controller.resources import WARMPOOLS
from controller.sandbox_logic import owner_ref


def blueprint(template_spec: dict) -> dict:
    """The part of a template that Sandboxes are built from."""
    out = {"podTemplate": template_spec.get("podTemplate") or {}}
    if template_spec.get("volumeClaimTemplates"):
        out["volumeClaimTemplates"] = template_spec["volumeClaimTemplates"]
    if template_spec.get("service") is not None:
        out["service"] = template_spec["service"]
    return out


def blueprint_hash(bp: dict) -> str:
    """NameHash of a canonical JSON encoding (not Go's byte-for-byte: compared semantically)."""
    return n.name_hash(json.dumps(bp, sort_keys=True, separators=(",", ":")))


def default_network_policy(template_spec: dict) -> bool:
    return template_spec.get("networkPolicyManagement", "Managed") == "Managed" and \
        template_spec.get("networkPolicy") is None


def secure_pod_spec(pod_spec: dict, template_spec: dict, nameservers: tuple[str, ...]) -> dict:
    """Secure defaults: no service-account token unless asked for; public resolvers when the
    default NetworkPolicy blocks cluster DNS and the template did not choose a dnsPolicy."""
    spec = copy.deepcopy(pod_spec)
    spec.setdefault("automountServiceAccountToken", False)
    if default_network_policy(template_spec) and "dnsPolicy" not in spec:
        spec["dnsPolicy"] = "None"
        spec["dnsConfig"] = {"nameservers": list(nameservers)}
    return spec


def sandbox_spec_from(template_spec: dict, nameservers: tuple[str, ...]) -> dict:
    """A Sandbox spec built from a template, with the secure defaults applied."""
    bp = copy.deepcopy(blueprint(template_spec))
    bp["podTemplate"]["spec"] = secure_pod_spec(bp["podTemplate"].get("spec") or {},
                                                template_spec, nameservers)
    return bp


def build_member(pool: dict, template: dict, *, nameservers: tuple[str, ...],
                 safe_to_evict: bool) -> dict:
    """A new warm Sandbox for the pool (the API server picks the name from generateName)."""
    pool_meta, template_name = pool["metadata"], template["metadata"]["name"]
    spec = sandbox_spec_from(template["spec"], nameservers)
    labels = {
        n.WARM_POOL_SANDBOX: n.name_hash(pool_meta["name"]),
        n.TEMPLATE_REF_HASH: n.name_hash(template_name),
        n.TEMPLATE_HASH: blueprint_hash(blueprint(template["spec"])),
        n.CREATED_BY: n.CREATED_BY_CONTROLLER,
    }
    pod_meta = spec["podTemplate"].setdefault("metadata", {})
    pod_meta.setdefault("labels", {})
    if safe_to_evict:
        pod_meta.setdefault("annotations", {}).setdefault(n.SAFE_TO_EVICT, "true")
    return {
        "apiVersion": "agents.x-k8s.io/v1beta1", "kind": "Sandbox",
        "metadata": {"generateName": f"{pool_meta['name']}-", "namespace": pool_meta["namespace"],
                     "labels": labels,
                     "annotations": {n.TEMPLATE_REF_ANNOTATION: template_name},
                     "ownerReferences": [owner_ref(pool, WARMPOOLS.api_version, "SandboxWarmPool")]},
        "spec": spec,
    }


@dataclass(frozen=True)
class Freshness:
    """What staleness is judged against, computed once per template (not once per member)."""
    ref_hash: str
    blueprint_hash: str
    spec: dict


def freshness(template: dict, nameservers: tuple[str, ...]) -> Freshness:
    return Freshness(n.name_hash(template["metadata"]["name"]),
                     blueprint_hash(blueprint(template["spec"])),
                     sandbox_spec_from(template["spec"], nameservers))


def is_stale(member: dict, template: dict, nameservers: tuple[str, ...],
             facts: Freshness | None = None) -> bool:
    """Built from an older blueprint? Metadata-only template edits don't count."""
    facts = facts or freshness(template, nameservers)
    labels = member["metadata"].get("labels") or {}
    if labels.get(n.TEMPLATE_REF_HASH) != facts.ref_hash:
        return True
    if labels.get(n.TEMPLATE_HASH) == facts.blueprint_hash:
        return False
    fresh = facts.spec
    spec = member.get("spec") or {}
    have_pod = (spec.get("podTemplate") or {}).get("spec")
    return have_pod != fresh["podTemplate"]["spec"] or \
        (spec.get("volumeClaimTemplates") or None) != (fresh.get("volumeClaimTemplates") or None) \
        or spec.get("service") != fresh.get("service")


def is_ready(sandbox: dict) -> bool:
    return cond.is_true((sandbox.get("status") or {}).get("conditions"), "Ready")


def scheduling_held(sandbox: dict) -> bool:
    """Unschedulable or SchedulingGated (Kueue): hold, don't reap (#1735)."""
    scheduled = cond.find((sandbox.get("status") or {}).get("conditions"), "PodScheduled")
    return scheduled is not None and scheduled.get("status") == "False" and \
        scheduled.get("reason") in ("Unschedulable", "SchedulingGated")


@dataclass
class Member:
    name: str
    ready: bool
    created: datetime.datetime
    order: int  # arrival order, a tie-breaker for "newest"
    deleting: bool = False
    stale: bool = False
    held: bool = False


@dataclass
class Plan:
    create: int = 0
    delete: list[str] = field(default_factory=list)
    requeue_after: float | None = None


def plan(replicas: int, members: list[Member], *, recreate: bool, now: datetime.datetime,
         readiness_grace: float, recheck: float, max_batch: int) -> Plan:
    """How to move the pool toward `replicas` warm members.

    Deleting members still count (they are replaced once gone, never twice). Stale members
    go at once only under `Recreate`. Members not Ready after the grace period are replaced,
    unless their pod cannot be scheduled (held and looked at again after `recheck`).
    Scale-down removes unready members first, then the newest.
    """
    result = Plan()
    live = [m for m in members if not m.deleting]
    doomed: set[str] = set()
    waits: list[float] = []
    for m in live:
        if recreate and m.stale:
            doomed.add(m.name)
            continue
        if m.ready:
            continue
        age = (now - m.created).total_seconds()
        if m.held:
            waits.append(recheck)
        elif age >= readiness_grace:
            doomed.add(m.name)
        else:
            waits.append(readiness_grace - age)
    keep = [m for m in live if m.name not in doomed]
    excess = len(keep) - replicas
    if excess > 0:
        keep.sort(key=lambda m: (m.ready, -m.created.timestamp(), -m.order))
        doomed.update(m.name for m in keep[:excess])
    result.delete = sorted(doomed)
    counted = len(members)  # live and terminating alike
    result.create = max(0, min(replicas - counted, max_batch))
    if waits:
        result.requeue_after = min(waits)
    return result


def slow_start(total: int, first: int = 1) -> list[int]:
    """Batch sizes 1, 2, 4, … adding up to `total` (stop at the first failed batch)."""
    sizes, size = [], first
    while total > 0:
        sizes.append(min(size, total))
        total -= sizes[-1]
        size *= 2
    return sizes


def pool_status(pool: dict, members: list[Member]) -> dict:
    live = [m for m in members if not m.deleting]
    return {"replicas": len(live), "readyReplicas": sum(m.ready for m in live),
            "selector": n.pool_selector(pool["metadata"]["name"]),
            "observedGeneration": pool["metadata"].get("generation", 0)}
