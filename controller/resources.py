"""The API resources the controller reads and writes, as (group, version, plural) descriptors."""

from __future__ import annotations

from dataclasses import dataclass

from controller.naming import (
    AGENTCUBE_GROUP,
    AGENTCUBE_VERSION,
    AGENTS_GROUP,
    EXTENSIONS_GROUP,
    VERSION,
)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The URL path of the collection, or of one object (and its subresource)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


SANDBOXES = Resource(AGENTS_GROUP, VERSION, "sandboxes", "Sandbox")
TEMPLATES = Resource(EXTENSIONS_GROUP, VERSION, "sandboxtemplates", "SandboxTemplate")
WARMPOOLS = Resource(EXTENSIONS_GROUP, VERSION, "sandboxwarmpools", "SandboxWarmPool")
CLAIMS = Resource(EXTENSIONS_GROUP, VERSION, "sandboxclaims", "SandboxClaim")
CODE_INTERPRETERS = Resource(AGENTCUBE_GROUP, AGENTCUBE_VERSION, "codeinterpreters",
                             "CodeInterpreter")
AGENT_RUNTIMES = Resource(AGENTCUBE_GROUP, AGENTCUBE_VERSION, "agentruntimes", "AgentRuntime")
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
EVENTS = Resource("", "v1", "events", "Event")
SECRETS = Resource("", "v1", "secrets", "Secret")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")

ALL = (SANDBOXES, TEMPLATES, WARMPOOLS, CLAIMS, CODE_INTERPRETERS, AGENT_RUNTIMES, PODS, SERVICES,
       PVCS, EVENTS, SECRETS, NETWORK_POLICIES, LEASES)
