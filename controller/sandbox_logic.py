"""Pure decisions of the Sandbox reconciler: the Pod, Service and PVCs a Sandbox wants, how to
fix drift on its Pod, and the status it should report. No I/O here (spec §2, §7.2)."""

from __future__ import annotations

import copy
import datetime

from controller import conditions as cond
from controller import naming as n
from controller.resources import SANDBOXES


def owner_ref(obj: dict, api_version: str, kind: str, controller: bool = True) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def controller_of(obj: dict) -> dict | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller"):
            return ref
    return None


def is_controlled_by(obj: dict, owner: dict) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.get("uid") == owner["metadata"]["uid"]


def pvc_name(vct: dict, sandbox_name: str) -> str:
    return f"{vct['metadata']['name']}-{sandbox_name}"


def _user_keys(values: dict | None) -> dict:
    return {k: v for k, v in (values or {}).items() if not n.is_system_key(k)}


def pod_metadata(sandbox: dict) -> tuple[dict, dict]:
    """The labels and annotations the Sandbox's Pod must carry."""
    meta = sandbox["metadata"]
    template_meta = sandbox["spec"]["podTemplate"].get("metadata") or {}
    labels = _user_keys(template_meta.get("labels"))
    annotations = _user_keys(template_meta.get("annotations"))
    sandbox_labels = meta.get("labels") or {}
    labels[n.SANDBOX_NAME_HASH] = n.name_hash(meta["name"])
    for key in n.POD_EXTENSION_LABELS:
        if key in sandbox_labels:
            labels[key] = sandbox_labels[key]
    user_labels = sorted(k for k in labels if not n.is_system_key(k))
    user_annotations = sorted(annotations)
    annotations[n.PROPAGATED_LABELS] = ",".join(user_labels)
    annotations[n.PROPAGATED_ANNOTATIONS] = ",".join(user_annotations)
    return labels, annotations


def desired_pod(sandbox: dict) -> dict:
    """The Pod of a Sandbox: named after it, owned by it, with PVC volumes from its templates."""
    meta = sandbox["metadata"]
    spec = copy.deepcopy(sandbox["spec"]["podTemplate"]["spec"])
    vcts = sandbox["spec"].get("volumeClaimTemplates") or []
    if vcts:
        names = {vct["metadata"]["name"] for vct in vcts}
        volumes = [v for v in spec.get("volumes") or () if v.get("name") not in names]
        for vct in vcts:
            volumes.append({"name": vct["metadata"]["name"], "persistentVolumeClaim": {
                "claimName": pvc_name(vct, meta["name"])}})
        spec["volumes"] = volumes
    labels, annotations = pod_metadata(sandbox)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": labels,
                     "annotations": annotations,
                     "ownerReferences": [owner_ref(sandbox, SANDBOXES.api_version, "Sandbox")]},
        "spec": spec,
    }


def pod_metadata_patch(sandbox: dict, pod: dict) -> dict | None:
    """A merge patch fixing label/annotation drift on the Pod, or None when there is none.

    Keys this controller put there earlier (listed in the propagated-* annotations, or managed
    extension labels) and no longer wanted are removed.
    """
    labels, annotations = pod_metadata(sandbox)
    pod_meta = pod["metadata"]
    have_labels = pod_meta.get("labels") or {}
    have_annotations = pod_meta.get("annotations") or {}
    label_patch: dict = {k: v for k, v in labels.items() if have_labels.get(k) != v}
    stale = set(filter(None, have_annotations.get(n.PROPAGATED_LABELS, "").split(",")))
    stale |= {k for k in n.POD_EXTENSION_LABELS if k in have_labels}
    for key in stale - set(labels):
        if key in have_labels:
            label_patch[key] = None
    annotation_patch: dict = {k: v for k, v in annotations.items()
                              if have_annotations.get(k) != v}
    stale = set(filter(None, have_annotations.get(n.PROPAGATED_ANNOTATIONS, "").split(",")))
    for key in stale - set(annotations):
        if key in have_annotations:
            annotation_patch[key] = None
    patch: dict = {}
    if label_patch:
        patch["labels"] = label_patch
    if annotation_patch:
        patch["annotations"] = annotation_patch
    return {"metadata": patch} if patch else None


def may_adopt(sandbox: dict, obj: dict) -> bool:
    """An unowned existing object may be taken over if it says so, or carries our name hash."""
    if controller_of(obj) is not None:
        return False
    labels = obj["metadata"].get("labels") or {}
    return labels.get(n.ADOPTABLE) == "true" or \
        labels.get(n.SANDBOX_NAME_HASH) == n.name_hash(sandbox["metadata"]["name"])


def service_ports(pod_spec: dict) -> list[dict]:
    """Ports of the headless Service: every containerPort, sidecar init containers included."""
    ports, seen = [], set()
    containers = list(pod_spec.get("containers") or ())
    containers += [c for c in pod_spec.get("initContainers") or ()
                   if c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in container.get("ports") or ():
            number = port.get("containerPort")
            protocol = port.get("protocol", "TCP")
            if number is None or (number, protocol) in seen:
                continue
            seen.add((number, protocol))
            entry = {"port": number, "targetPort": number, "protocol": protocol}
            entry["name"] = port.get("name") or f"{protocol.lower()}-{number}"
            ports.append(entry)
    return ports


def desired_service(sandbox: dict) -> dict:
    meta = sandbox["metadata"]
    hash_label = {n.SANDBOX_NAME_HASH: n.name_hash(meta["name"])}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": hash_label,
                     "ownerReferences": [owner_ref(sandbox, SANDBOXES.api_version, "Sandbox")]},
        "spec": {"clusterIP": "None", "selector": hash_label,
                 "ports": service_ports(sandbox["spec"]["podTemplate"]["spec"])},
    }


def desired_pvc(sandbox: dict, vct: dict) -> dict:
    meta = sandbox["metadata"]
    labels = dict(vct["metadata"].get("labels") or {})
    labels[n.SANDBOX_NAME_HASH] = n.name_hash(meta["name"])
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc_name(vct, meta["name"]), "namespace": meta["namespace"],
                     "labels": labels, "annotations": dict(vct["metadata"].get("annotations") or {}),
                     "ownerReferences": [owner_ref(sandbox, SANDBOXES.api_version, "Sandbox")]},
        "spec": copy.deepcopy(vct.get("spec") or {}),
    }


def pod_is_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and cond.is_true(status.get("conditions"), "Ready") \
        and bool(pod_ips(pod))


def pod_ips(pod: dict) -> list[str]:
    status = pod.get("status") or {}
    ips = [entry["ip"] for entry in status.get("podIPs") or () if entry.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def is_suspended(sandbox: dict) -> bool:
    return sandbox["spec"].get("operatingMode") == "Suspended"


def shutdown_at(sandbox: dict) -> datetime.datetime | None:
    return cond.parse_time(sandbox["spec"].get("shutdownTime"))


def compute_status(sandbox: dict, pod: dict | None, *, service_ok: bool, has_service: bool,
                   cluster_domain: str, when: datetime.datetime, error: str = "",
                   multiple_pods: bool = False) -> dict:
    """The Sandbox status for what exists now (conditions keep their transition times)."""
    meta = sandbox["metadata"]
    gen = meta.get("generation")
    suspended = is_suspended(sandbox)
    phase = (pod or {}).get("status", {}).get("phase")
    pod_conditions = (pod or {}).get("status", {}).get("conditions")
    new: list[dict] = []
    if error:
        ready = cond.make("Ready", False, "ReconcilerError", error, gen)
    elif multiple_pods:
        ready = cond.make("Ready", False, "MultiplePods", "more than one Pod is owned", gen)
    elif suspended:
        ready = cond.make("Ready", False, "SandboxSuspended", "the Sandbox is suspended", gen)
    elif phase == "Succeeded":
        ready = cond.make("Ready", False, "PodSucceeded", "the Pod has completed", gen)
    elif phase == "Failed":
        ready = cond.make("Ready", False, "PodFailed", "the Pod has failed", gen)
    elif pod is not None and pod_is_ready(pod) and service_ok:
        ready = cond.make("Ready", True, "DependenciesReady", "Pod is Ready", gen)
    else:
        what = "Pod is not Ready" if pod is not None else "Pod does not exist"
        if pod is not None and pod_is_ready(pod):
            what = "Service does not exist"
        ready = cond.make("Ready", False, "DependenciesNotReady", what, gen)
    new.append(ready)
    if suspended:
        if pod is None:
            new.append(cond.make("Suspended", True, "PodTerminated", "the Pod is gone", gen))
        else:
            new.append(cond.make("Suspended", False, "PodTerminating", "deleting the Pod", gen))
    else:
        new.append(cond.make("Suspended", False, "NotSuspended", "", gen))
    drop = ["PodScheduled"]
    if phase in ("Succeeded", "Failed"):
        new.append(cond.make("Finished", True, "Pod" + phase, f"the Pod has {phase.lower()}", gen))
    else:
        drop.append("Finished")
    scheduled = cond.find(pod_conditions, "PodScheduled")
    pod_ready = ready["status"] == "True"
    if scheduled is not None and scheduled.get("status") == "True" and not pod_ready:
        scheduled = None  # being scheduled is no news until Ready: one status write fewer
    if scheduled is not None:
        copied = {k: scheduled[k] for k in ("type", "status", "reason", "message") if k in scheduled}
        copied.setdefault("reason", "PodScheduled" if copied["status"] == "True" else "Unknown")
        copied.setdefault("message", "")
        new.append(copied)
    status: dict = {"conditions": cond.merge(sandbox.get("status", {}).get("conditions"), new,
                                             when, drop=tuple(drop)),
                    "selector": n.sandbox_selector(meta["name"])}
    if pod is not None:
        ips = pod_ips(pod)
        if ips:
            status["podIPs"] = ips
        node = (pod.get("spec") or {}).get("nodeName")
        if node and pod_ready:  # as upstream: a node alone is not written until Ready
            status["nodeName"] = node
    if has_service:
        status["service"] = meta["name"]
        status["serviceFQDN"] = f"{meta['name']}.{meta['namespace']}.svc.{cluster_domain}"
    return status


def status_patch(current: dict | None, desired: dict) -> dict | None:
    """A merge patch turning the current status into the desired one (absent keys removed)."""
    current = current or {}
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch or None


def expired_status(sandbox: dict, when: datetime.datetime) -> dict:
    """The status of an expired Sandbox that is retained: conditions only."""
    gen = sandbox["metadata"].get("generation")
    ready = cond.make("Ready", False, "SandboxExpired", "the Sandbox reached its shutdownTime", gen)
    return {"conditions": cond.merge(sandbox.get("status", {}).get("conditions"), [ready], when,
                                     drop=("PodScheduled",))}
