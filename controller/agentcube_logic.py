"""Pure decisions of the AgentCube reconcilers (agentcube-api.md §3.5, §6): the SandboxTemplate
and SandboxWarmPool a CodeInterpreter stands for, the SandboxTemplate of an AgentRuntime, what
is wrong with a pool's members, and the status to report. No I/O here.
"""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass

from controller import conditions as cond
from controller import naming as n
from controller.resources import AGENT_RUNTIMES, CODE_INTERPRETERS, TEMPLATES, WARMPOOLS
from controller.sandbox_logic import owner_ref

CONTAINER = "codeinterpreter"  # §3.5: not `code-interpreter` (that is the WM's direct path)
PUBLIC_KEY_ENV = "PICOD_AUTH_PUBLIC_KEY"
DEFAULT_PORTS = ({"port": 8080, "protocol": "HTTP", "pathPrefix": "/"},)
# Container waiting reasons that no retry will fix without a user's change.
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                      "ErrImageNeverPull")
CRASH_REASONS = ("CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError",
                 "RunContainerError")


def pool_size(ci: dict) -> int:
    return int(ci["spec"].get("warmPoolSize") or 0)


def needs_public_key(ci: dict) -> bool:
    return ci["spec"].get("authMode", "picod") != "none"


def ports_of(ci: dict) -> list[dict]:
    return copy.deepcopy(ci["spec"].get("ports") or list(DEFAULT_PORTS))


def _container_ports(target_ports: list[dict]) -> list[dict]:
    out = []
    for port in target_ports:
        item = {"containerPort": int(port["port"]), "protocol": "TCP"}
        if port.get("name"):
            item["name"] = port["name"]
        out.append(item)
    return out


def _pod_metadata(labels: dict | None, annotations: dict | None, workload: str) -> dict:
    meta: dict = {"labels": {**(labels or {}), n.WORKLOAD_NAME: workload}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _template_body(owner: dict, owner_res, pod_metadata: dict, pod_spec: dict) -> dict:
    meta = owner["metadata"]
    return {
        "apiVersion": TEMPLATES.api_version, "kind": TEMPLATES.kind,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": {n.WORKLOAD_NAME: meta["name"]},
                     "ownerReferences": [owner_ref(owner, owner_res.api_version, owner_res.kind)]},
        # Every field the CRD defaults is explicit, so comparing with what the server stored
        # tells real drift from defaulting. Unmanaged: the chart's NetworkPolicy governs
        # sandbox traffic, as upstream agentcube's templates do.
        "spec": {"podTemplate": {"metadata": pod_metadata, "spec": pod_spec},
                 "networkPolicyManagement": "Unmanaged",
                 "envVarsInjectionPolicy": "Disallowed",
                 "volumeClaimTemplatesPolicy": "Disallowed"},
    }


def ci_template(ci: dict, public_key: str | None) -> dict:
    """The SandboxTemplate named after a CodeInterpreter: one PicoD container."""
    tpl = ci["spec"]["template"]
    env = [dict(item) for item in tpl.get("environment") or ()
           if item.get("name") != PUBLIC_KEY_ENV]
    if needs_public_key(ci):
        if public_key is None:
            raise ValueError("the router public key is not loaded yet")
        env.append({"name": PUBLIC_KEY_ENV, "value": public_key})
    first = ports_of(ci)[0]
    container: dict = {"name": CONTAINER, "image": tpl["image"],
                       "ports": _container_ports(ports_of(ci)),
                       # Ready once PicoD answers (its /health is 200 once its kernel did), so a
                       # session is never handed a warm pod that cannot serve its first call.
                       "readinessProbe": {"httpGet": {"path": "/health", "port": int(first["port"]),
                                                      "scheme": first.get("protocol") or "HTTP"},
                                          "periodSeconds": 1, "failureThreshold": 1}}
    for key in ("imagePullPolicy", "command", "args", "resources"):
        if tpl.get(key):
            container[key] = copy.deepcopy(tpl[key])
    if env:
        container["env"] = env
    pod_spec: dict = {"containers": [container]}
    if tpl.get("runtimeClassName"):  # "" means the cluster default (§6.1)
        pod_spec["runtimeClassName"] = tpl["runtimeClassName"]
    if tpl.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = copy.deepcopy(tpl["imagePullSecrets"])
    return _template_body(ci, CODE_INTERPRETERS,
                          _pod_metadata(tpl.get("labels"), tpl.get("annotations"),
                                        ci["metadata"]["name"]), pod_spec)


def ci_pool(ci: dict) -> dict:
    """The SandboxWarmPool named after a CodeInterpreter.

    `Recreate`: after a spec change, warm members built from the old template are replaced at
    once, so new sessions get the new image; claimed sandboxes have left the pool and are not
    touched.
    """
    meta = ci["metadata"]
    return {
        "apiVersion": WARMPOOLS.api_version, "kind": WARMPOOLS.kind,
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                     "labels": {n.WORKLOAD_NAME: meta["name"]},
                     "ownerReferences": [owner_ref(ci, CODE_INTERPRETERS.api_version,
                                                   CODE_INTERPRETERS.kind)]},
        "spec": {"replicas": pool_size(ci), "sandboxTemplateRef": {"name": meta["name"]},
                 "updateStrategy": {"type": "Recreate"}},
    }


def ar_template(ar: dict) -> dict:
    """The SandboxTemplate named after an AgentRuntime: its own PodSpec, with every targetPort
    declared as a containerPort (on the first container) if no container declares it."""
    pod = ar["spec"]["podTemplate"]
    pod_spec = copy.deepcopy(pod["spec"])
    declared = {int(p.get("containerPort", 0)) for c in pod_spec.get("containers") or ()
                for p in c.get("ports") or ()}
    missing = [p for p in ar["spec"]["targetPort"] if int(p["port"]) not in declared]
    if missing:
        first = pod_spec["containers"][0]
        first["ports"] = list(first.get("ports") or ()) + _container_ports(missing)
    return _template_body(ar, AGENT_RUNTIMES,
                          _pod_metadata(pod.get("labels"), pod.get("annotations"),
                                        ar["metadata"]["name"]), pod_spec)


def drift(current: dict, desired: dict) -> bool:
    """Does a stored object differ from what we want (spec, our labels, the owner)?"""
    cur_meta, want_meta = current["metadata"], desired["metadata"]
    labels = cur_meta.get("labels") or {}
    return current.get("spec") != desired["spec"] or \
        any(labels.get(k) != v for k, v in want_meta["labels"].items()) or \
        cur_meta.get("ownerReferences") != want_meta["ownerReferences"]


def replacement(current: dict, desired: dict) -> dict:
    """A full object for PUT: the desired spec on the current metadata (other labels kept)."""
    meta = copy.deepcopy(current["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
    return {"apiVersion": desired["apiVersion"], "kind": desired["kind"], "metadata": meta,
            "spec": desired["spec"]}


# -- what is wrong with a pool ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    reason: str  # ImagePullFailed | ContainerFailing | Unschedulable
    message: str


def pod_problems(pod: dict) -> list[Problem]:
    """Container states that block a member from becoming Ready, in the user's words."""
    found = []
    name = pod["metadata"]["name"]
    statuses = (pod.get("status") or {}).get("containerStatuses") or ()
    for status in statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason")
        detail = waiting.get("message") or why
        if why in IMAGE_PULL_REASONS:
            found.append(Problem("ImagePullFailed", f"pod {name}: container "
                                 f"{status.get('name')} cannot pull image "
                                 f"{status.get('image') or ''}: {detail}".replace(" : ", ": ")))
        elif why in CRASH_REASONS:
            found.append(Problem("ContainerFailing",
                                 f"pod {name}: container {status.get('name')}: {detail}"))
    return found


def sandbox_problems(sandbox: dict) -> list[Problem]:
    scheduled = cond.find((sandbox.get("status") or {}).get("conditions"), "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False" and \
            scheduled.get("reason") == "Unschedulable":
        return [Problem("Unschedulable", f"sandbox {sandbox['metadata']['name']}: "
                        f"{scheduled.get('message') or 'no node fits the pod'}")]
    return []


# -- status -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a reconcile found: whether the objects are in place, and the pool's state."""

    reconciled: bool
    reason: str = "Reconciled"
    message: str = ""
    pool_size: int = 0
    pool_ready: int = 0
    problems: tuple[Problem, ...] = ()


def status_of(obj: dict, outcome: Outcome, when: datetime.datetime, *,
              with_pool: bool) -> dict:
    """`ready`, `observedGeneration` and the conditions Ready, Reconciled (and WarmPoolReady).

    Ready means sessions can be served: the objects are in place and no pool member shows a
    problem that every sandbox of this blueprint would hit (a bad image, a crashing container).
    A pool still filling leaves Ready True: a session then starts cold.
    """
    gen = obj["metadata"].get("generation")
    conds = [cond.make("Reconciled", outcome.reconciled, outcome.reason,
                       outcome.message or ("template and pool are up to date" if with_pool
                                           else "up to date"), gen)]
    blocking = [p for p in outcome.problems if p.reason != "Unschedulable"]
    if not outcome.reconciled:
        ready = cond.make("Ready", False, outcome.reason, outcome.message, gen)
    elif blocking:
        ready = cond.make("Ready", False, blocking[0].reason, blocking[0].message, gen)
    else:
        ready = cond.make("Ready", True, "Reconciled", "sessions can be created", gen)
    conds.append(ready)
    drop: tuple[str, ...] = ()
    if with_pool and outcome.reconciled:
        text = f"{outcome.pool_ready}/{outcome.pool_size} warm sandboxes ready"
        if outcome.pool_ready >= outcome.pool_size:
            conds.append(cond.make("WarmPoolReady", True, "Filled", text, gen))
        elif outcome.problems:
            first = outcome.problems[0]
            conds.append(cond.make("WarmPoolReady", False, first.reason,
                                   f"{text}; {first.message}", gen))
        else:
            conds.append(cond.make("WarmPoolReady", False, "Filling", text, gen))
    elif not with_pool:
        drop = ("WarmPoolReady",)
    merged = cond.merge((obj.get("status") or {}).get("conditions"), conds, when, drop=drop)
    return {"ready": ready["status"] == "True", "observedGeneration": gen, "conditions": merged}
