"""Names, labels and annotations of the agent-sandbox API, and NameHash.

Every key here is part of the wire contract (`agent-sandbox-api.md` §6): tools written for the
upstream controller read them.
"""

from __future__ import annotations

AGENTS_GROUP = "agents.x-k8s.io"
EXTENSIONS_GROUP = "extensions.agents.x-k8s.io"
VERSION = "v1beta1"

# The AgentCube API (agentcube-api.md §3.4, §6): its kinds and the labels of session workloads.
AGENTCUBE_GROUP = "runtime.agentcube.volcano.sh"
AGENTCUBE_VERSION = "v1alpha1"
SESSION_ID = "runtime.agentcube.io/session-id"
WORKLOAD_NAME = "runtime.agentcube.io/workload-name"
SESSION_SANDBOX_NAME = "runtime.agentcube.io/sandbox-name"
IDLE_TIMEOUT_ANNOTATION = "runtime.agentcube.io/idle-timeout"
# Set by the gateway when a session takes a warm Sandbox (created long before its session).
SESSION_STARTED_AT = "kernelcube.io/session-started-at"

SANDBOX_NAME_HASH = "agents.x-k8s.io/sandbox-name-hash"
WARM_POOL_SANDBOX = "agents.x-k8s.io/warm-pool-sandbox"
TEMPLATE_REF_HASH = "agents.x-k8s.io/sandbox-template-ref-hash"
TEMPLATE_HASH = "agents.x-k8s.io/sandbox-template-hash"
POD_TEMPLATE_HASH = "agents.x-k8s.io/sandbox-pod-template-hash"
LAUNCH_TYPE = "agents.x-k8s.io/launch-type"
CREATED_BY = "agents.x-k8s.io/created-by"
CLAIM_UID = "agents.x-k8s.io/claim-uid"
ADOPTABLE = "agents.x-k8s.io/adoptable"

POD_NAME_ANNOTATION = "agents.x-k8s.io/pod-name"
TEMPLATE_REF_ANNOTATION = "agents.x-k8s.io/sandbox-template-ref"
PROPAGATED_LABELS = "agents.x-k8s.io/propagated-labels"
PROPAGATED_ANNOTATIONS = "agents.x-k8s.io/propagated-annotations"
SANDBOX_NAME_ANNOTATION = "agents.x-k8s.io/sandbox-name"
TRACE_CONTEXT = "opentelemetry.io/trace-context"
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
CLIENT_FIRST_REQUESTED_AT = "agents.x-k8s.io/client-first-requested-at"
# On a claim whose startup latency is in the metrics: a restarted or new leader counts it not again.
LATENCY_RECORDED = "agents.x-k8s.io/creation-latency-recorded"

SYSTEM_PREFIXES = ("agents.x-k8s.io/", "extensions.agents.x-k8s.io/")

# Labels that the Sandbox carries and hands down to its Pod (the "extension labels").
POD_EXTENSION_LABELS = (TEMPLATE_REF_HASH, WARM_POOL_SANDBOX, CLAIM_UID, CREATED_BY)

CREATED_BY_CONTROLLER = "controller"


def name_hash(value: str) -> str:
    """32-bit FNV-1a of the UTF-8 bytes of `value`, as 8 lowercase hex digits."""
    h = 0x811C9DC5
    for byte in value.encode("utf-8"):
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return f"{h:08x}"


def is_system_key(key: str) -> bool:
    """True for label/annotation keys the controller owns, which users may not propagate."""
    return key.startswith(SYSTEM_PREFIXES) or key == TRACE_CONTEXT


def pool_selector(pool_name: str) -> str:
    """The label selector of a warm pool's members (its `status.selector`)."""
    return f"{WARM_POOL_SANDBOX}={name_hash(pool_name)}"


def sandbox_selector(sandbox_name: str) -> str:
    """The label selector of a Sandbox's Pod (its `status.selector`)."""
    return f"{SANDBOX_NAME_HASH}={name_hash(sandbox_name)}"


def network_policy_name(template_name: str) -> str:
    return f"{template_name}-network-policy"
