"""Pure decisions of the Kubernetes backend: templates from AgentCube CRs, the objects a session
writes (the fast-path adoption patch, a SandboxClaim, a cold Sandbox), and
what a Sandbox or Pod says about readiness and failure. No I/O here.

Label and annotation keys are the wire contract of agent-sandbox (`agent-sandbox-api.md` §6) and
of AgentCube's Workload Manager (`agentcube-api.md` §3.4), so tools written for either, and
KernelCube's controller (its warm pools and GC), read them.
"""

from __future__ import annotations

import ipaddress
import secrets
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..store.sandbox_info import go_duration, parse_go_duration, rfc3339
from ..templates import Template, TemplateError

# agent-sandbox
WARM_POOL_SANDBOX = "agents.x-k8s.io/warm-pool-sandbox"
TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
TEMPLATE_HASH = "agents.x-k8s.io/sandbox-template-hash"
POD_TEMPLATE_HASH = "agents.x-k8s.io/sandbox-pod-template-hash"
LAUNCH_TYPE = "agents.x-k8s.io/launch-type"
CREATED_BY = "agents.x-k8s.io/created-by"
SANDBOX_NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
POD_NAME_ANNOTATION = "agents.x-k8s.io/pod-name"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
# AgentCube's Workload Manager
SESSION_ID = "runtime.agentcube.io/session-id"
WORKLOAD_NAME = "runtime.agentcube.io/workload-name"
SANDBOX_NAME = "runtime.agentcube.io/sandbox-name"
IDLE_TIMEOUT = "runtime.agentcube.io/idle-timeout"
MANAGED_BY = "managed-by"
MANAGER = "kernelcube-gateway"
# When a session took the object: a warm Sandbox was created long before its session, so its
# age alone does not tell a garbage collector whether its session record can exist yet.
SESSION_STARTED_AT = "kernelcube.io/session-started-at"

# Waiting reasons of a container that will not start by itself.
STUCK_CONTAINER = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
CR_GROUP, CR_VERSION = "runtime.agentcube.volcano.sh", "v1alpha1"
DEFAULT_PORTS = ({"port": 8080, "protocol": "HTTP", "pathPrefix": "/"},)
CI_CONTAINER = "code-interpreter"


def name_hash(value: str) -> str:
    """agent-sandbox's NameHash: 32-bit FNV-1a of the UTF-8 bytes, 8 lowercase hex digits."""
    h = 0x811C9DC5
    for byte in value.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def random_suffix(length: int = 8) -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(length))


# -- templates from CRs -----------------------------------------------------------------------

@dataclass(frozen=True)
class KubeTemplate(Template):
    """A template backed by a CodeInterpreter or AgentRuntime. `pool_size` is `warmPoolSize`;
    `ports` are the entry points (the first is PicoD's, or the agent's)."""

    cr_kind: str = "CodeInterpreter"
    cr_name: str = ""
    uid: str = ""
    ports: tuple = DEFAULT_PORTS
    spec: dict = field(default_factory=dict, compare=False)

    def validate(self) -> None:  # the CRD's schema validated the object; nothing local applies
        return


def _duration(spec: dict, key: str, default: str, where: str) -> float:
    value = spec.get(key) or default
    try:
        seconds = parse_go_duration(str(value))
    except ValueError:
        raise TemplateError(f"{where}: spec.{key} {value!r} is not a duration such as 15m or 8h") from None
    if seconds <= 0:
        raise TemplateError(f"{where}: spec.{key} must be positive, not {value!r}")
    return seconds


def template_from(obj: dict, key: str) -> KubeTemplate:
    """The template of a CodeInterpreter or AgentRuntime, registered under `key`."""
    meta, spec, kind = obj["metadata"], obj.get("spec") or {}, obj["kind"]
    where = f"{kind} {meta.get('namespace')}/{meta['name']}"
    if kind == "CodeInterpreter":
        ports = tuple(spec.get("ports") or DEFAULT_PORTS)
        pool_size = int(spec.get("warmPoolSize") or 0)
    else:
        ports = tuple(spec.get("targetPort") or ())
        pool_size = 0
        if not ports:
            raise TemplateError(f"{where}: spec.targetPort is empty")
    for port in ports:
        if not isinstance(port.get("port"), int) or port.get("protocol", "HTTP") not in ("HTTP", "HTTPS"):
            raise TemplateError(f"{where}: bad port {port!r}")
    return KubeTemplate(
        name=key, kind="code-interpreter" if kind == "CodeInterpreter" else "agent-runtime",
        namespace=meta.get("namespace") or "default", pool_size=pool_size,
        session_timeout=_duration(spec, "sessionTimeout", "15m", where),
        max_session_duration=_duration(spec, "maxSessionDuration", "8h", where),
        port=ports[0]["port"], cr_kind=kind, cr_name=meta["name"], uid=meta.get("uid", ""),
        ports=ports, spec=spec)


def entry_points(template: KubeTemplate, ip: str) -> list[dict]:
    host = f"[{ip}]" if ":" in ip else ip
    return [{"path": p.get("pathPrefix") or "/", "protocol": p.get("protocol") or "HTTP",
             "endpoint": f"{host}:{p['port']}"} for p in template.ports]


def endpoint(template: KubeTemplate, ip: str) -> dict:
    first = entry_points(template, ip)[0]
    return {"url": f"{first['protocol'].lower()}://{first['endpoint']}"}


# -- reading Sandboxes and Pods ---------------------------------------------------------------

def _condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def is_ready(sandbox: dict) -> bool:
    ready = _condition(sandbox, "Ready")
    return ready is not None and ready.get("status") == "True" and bool(pod_ip(sandbox))


def restarts(pod: dict | None) -> int:
    """How many times the pod's (main) containers were restarted: each restart loses what the
    container held, a session's kernel and files among it."""
    return sum(int(c.get("restartCount") or 0)
               for c in ((pod or {}).get("status") or {}).get("containerStatuses") or ())


def pod_ip(sandbox: dict) -> str:
    """The Sandbox's pod IP (IPv4 preferred), or ""."""
    ips = [ip for ip in (sandbox.get("status") or {}).get("podIPs") or () if isinstance(ip, str) and ip]
    for ip in ips:
        try:
            if ipaddress.ip_address(ip).version == 4:
                return ip
        except ValueError:
            continue
    return ips[0] if ips else ""


def is_deleting(obj: dict) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def is_warm_member(sandbox: dict, pool: str, template: str) -> bool:
    """An unclaimed member of warm pool `pool` built from SandboxTemplate `template`."""
    meta = sandbox["metadata"]
    labels = meta.get("labels") or {}
    if is_deleting(sandbox) or labels.get(WARM_POOL_SANDBOX) != name_hash(pool) or \
            labels.get(TEMPLATE_REF_HASH) != name_hash(template):
        return False
    refs = [r for r in meta.get("ownerReferences") or () if r.get("controller")]
    return bool(refs) and refs[0].get("kind") == "SandboxWarmPool" and refs[0].get("name") == pool


def queued_claims(claims: Iterable[dict], namespace: str, pool: str) -> int:
    """Sessions' SandboxClaims on warm pool `pool` that no Sandbox is bound to yet: they wait for
    its next Ready members, which the controller hands out oldest first, so the fast path leaves
    it that many."""
    return sum(1 for claim in claims
               if claim["metadata"].get("namespace") == namespace
               and ((claim.get("spec") or {}).get("warmPoolRef") or {}).get("name") == pool
               and not (((claim.get("status") or {}).get("sandbox") or {}).get("name")
                        or claim["metadata"].get("deletionTimestamp")))


def built_from(sandbox: dict, template: KubeTemplate) -> bool:
    """Was this warm member built from the CR as it is now (image, command, args)? After a
    spec change the controller replaces older members, but a session must not take one in
    the meantime: it would run the old image."""
    if template.cr_kind != "CodeInterpreter":
        return True
    containers = (((sandbox.get("spec") or {}).get("podTemplate") or {}).get("spec") or {}).get("containers") or [{}]
    have, want = containers[0], template.spec.get("template") or {}
    return have.get("image") == want.get("image") and all(
        (have.get(key) or []) == (want.get(key) or []) for key in ("command", "args"))


def failure(sandbox: dict | None, pod: dict | None) -> str:
    """Why a Sandbox will not become Ready by itself ("" while it may): the pod cannot be
    scheduled, a container cannot start, or the pod ended."""
    scheduled = _condition(pod, "PodScheduled") or _condition(sandbox, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return f"Unschedulable: {scheduled.get('message') or 'no node can run the pod'}"
    status = (pod or {}).get("status") or {}
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_CONTAINER:
            detail = f": {waiting['message']}" if waiting.get("message") else ""
            return f"{waiting['reason']} (container {container.get('name', '?')}){detail}"
    ready = _condition(sandbox, "Ready")
    if ready is not None and ready.get("status") == "False" and \
            ready.get("reason") in ("PodFailed", "PodSucceeded", "SandboxExpired"):
        return f"{ready['reason']}: {ready.get('message') or 'the sandbox ended'}"
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"the pod {status['phase'].lower()}"
    return ""


# -- what a session writes --------------------------------------------------------------------

def _session_labels(template: KubeTemplate, session_id: str) -> dict:
    return {SESSION_ID: session_id, WORKLOAD_NAME: template.cr_name, MANAGED_BY: MANAGER}


def adoption_patch(sandbox: dict, template: KubeTemplate, session_id: str, expires_at: float) -> dict:
    """The fast path's one conditional write: take a warm Sandbox out of its pool for a session.

    As the controller's claim adoption does, it drops the pool's labels (so the pool counts a
    member fewer and refills) and safe-to-evict, marks it warm-launched, and replaces its owner
    references: no claim controls it, and the pool no longer does; the CR owns it (not as its
    controller), so deleting the CR ends its sessions, as it ends those that came by a claim.
    The resourceVersion makes it conditional: a Sandbox someone took meanwhile answers 409.
    The session's labels let the GC pair it with its record (and `SESSION_STARTED_AT` tells it
    the session is new, though the Sandbox is not); `shutdownTime` bounds its life even if every
    gateway and the GC were gone.
    """
    meta = sandbox["metadata"]
    return {
        "metadata": {
            "resourceVersion": meta["resourceVersion"],
            "labels": {WARM_POOL_SANDBOX: None, TEMPLATE_HASH: None, POD_TEMPLATE_HASH: None,
                       LAUNCH_TYPE: "warm", **_session_labels(template, session_id)},
            "annotations": {POD_NAME_ANNOTATION: meta["name"], IDLE_TIMEOUT: go_duration(template.session_timeout),
                            SESSION_STARTED_AT: rfc3339(time.time())},
            "ownerReferences": [owner(template, controller=False)] if template.uid else None,
        },
        "spec": {"shutdownTime": rfc3339(expires_at), "shutdownPolicy": "Delete",
                 "podTemplate": {"metadata": {"annotations": {SAFE_TO_EVICT: None}}}},
    }


def owner(template: KubeTemplate, controller: bool = True) -> dict:
    """The CR as the owner of a session's objects (deleting the CR ends its sessions, as
    upstream). No blockOwnerDeletion: that would need update rights on the CR's finalizers."""
    return {"apiVersion": f"{CR_GROUP}/{CR_VERSION}", "kind": template.cr_kind, "name": template.cr_name,
            "uid": template.uid, "controller": controller}


def claim_body(template: KubeTemplate, session_id: str, name: str, expires_at: float) -> dict:
    """A SandboxClaim on the CR's warm pool (named after the CR), deleted at the session's end
    of life by its own controller if nothing else did it first."""
    meta: dict = {"name": name, "labels": {**_session_labels(template, session_id), SANDBOX_NAME: name,
                                           CREATED_BY: MANAGER},
                  "annotations": {IDLE_TIMEOUT: go_duration(template.session_timeout)}}
    if template.uid:
        meta["ownerReferences"] = [owner(template)]
    return {"metadata": meta, "spec": {
        "warmPoolRef": {"name": template.cr_name},
        "lifecycle": {"shutdownTime": rfc3339(expires_at), "shutdownPolicy": "Delete"}}}


def _code_interpreter_pod(spec: dict, public_pem: str) -> tuple[dict, dict]:
    """(pod metadata, pod spec) of a CodeInterpreter, as AgentCube's Workload Manager builds it."""
    tpl = spec.get("template") or {}
    env = list(tpl.get("environment") or [])
    if spec.get("authMode", "picod") != "none" and not any(e.get("name") == "PICOD_AUTH_PUBLIC_KEY" for e in env):
        env.append({"name": "PICOD_AUTH_PUBLIC_KEY", "value": public_pem})
    container: dict = {"name": CI_CONTAINER, "image": tpl.get("image", ""), "env": env,
                       "ports": [{"containerPort": p["port"], "name": p.get("name") or f"port-{p['port']}"}
                                 for p in spec.get("ports") or DEFAULT_PORTS]}
    for key in ("imagePullPolicy", "command", "args", "resources"):
        if tpl.get(key):
            container[key] = tpl[key]
    # Ready only once PicoD answers (its /health is 200 once its kernel did): a session is
    # handed a pod that can serve its first call, as upstream's Workload Manager probes it.
    first = (spec.get("ports") or DEFAULT_PORTS)[0]
    container["readinessProbe"] = {"httpGet": {"path": "/health", "port": first["port"],
                                               "scheme": first.get("protocol", "HTTP")},
                                   "periodSeconds": 1, "failureThreshold": 1}
    pod_spec: dict = {"containers": [container], "automountServiceAccountToken": False}
    if tpl.get("runtimeClassName"):
        pod_spec["runtimeClassName"] = tpl["runtimeClassName"]
    if tpl.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = tpl["imagePullSecrets"]
    return {"labels": dict(tpl.get("labels") or {}), "annotations": dict(tpl.get("annotations") or {})}, pod_spec


def cold_sandbox_body(template: KubeTemplate, session_id: str, name: str, expires_at: float,
                      public_pem: str) -> dict:
    """A Sandbox made for one session when its CR has no warm pool (AgentCube's direct path)."""
    if template.cr_kind == "CodeInterpreter":
        pod_meta, pod_spec = _code_interpreter_pod(template.spec, public_pem)
    else:
        pod_template = template.spec.get("podTemplate") or {}
        pod_meta = {"labels": dict(pod_template.get("labels") or {}),
                    "annotations": dict(pod_template.get("annotations") or {})}
        pod_spec = dict(pod_template.get("spec") or {})
    pod_meta["labels"].update({SESSION_ID: session_id, SANDBOX_NAME: name})
    meta: dict = {"name": name, "labels": {**_session_labels(template, session_id), LAUNCH_TYPE: "cold"},
                  "annotations": {IDLE_TIMEOUT: go_duration(template.session_timeout), POD_NAME_ANNOTATION: name}}
    if template.uid:
        meta["ownerReferences"] = [owner(template, controller=False)]
    return {
        "metadata": meta,
        "spec": {"podTemplate": {"metadata": pod_meta, "spec": pod_spec},
                 "shutdownTime": rfc3339(expires_at), "shutdownPolicy": "Delete"},
    }


def expiry(template: Template, now: float | None = None) -> float:
    return (time.time() if now is None else now) + template.max_session_duration
