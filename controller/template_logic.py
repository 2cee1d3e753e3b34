"""Pure decisions of the SandboxTemplate reconciler: the template's shared NetworkPolicy (§7.5).

Secure by default: ingress only from the gateway's pods, egress to the internet but not to
cluster-internal ranges nor the link-local metadata server (169.254.169.254).
"""

from __future__ import annotations

from controller import naming as n
from controller.resources import TEMPLATES
from controller.sandbox_logic import owner_ref

PRIVATE_V4 = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"]
PRIVATE_V6 = ["fc00::/7", "fe80::/10"]


def default_rules(gateway_namespace: str, gateway_labels: dict[str, str]) -> tuple[list, list]:
    ingress = [{"from": [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gateway_namespace}},
        "podSelector": {"matchLabels": dict(gateway_labels)},
    }]}]
    egress = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_V4)}},
                      {"ipBlock": {"cidr": "::/0", "except": list(PRIVATE_V6)}}]}]
    return ingress, egress


def desired_network_policy(template: dict, gateway_namespace: str,
                           gateway_labels: dict[str, str]) -> dict | None:
    """The template's NetworkPolicy, or None when the template opts out (`Unmanaged`)."""
    spec, meta = template["spec"], template["metadata"]
    if spec.get("networkPolicyManagement", "Managed") == "Unmanaged":
        return None
    custom = spec.get("networkPolicy")
    if custom is None:
        ingress, egress = default_rules(gateway_namespace, gateway_labels)
    else:
        ingress, egress = custom.get("ingress") or [], custom.get("egress") or []
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": n.network_policy_name(meta["name"]), "namespace": meta["namespace"],
                     "labels": {n.TEMPLATE_REF_HASH: n.name_hash(meta["name"])},
                     "ownerReferences": [owner_ref(template, TEMPLATES.api_version,
                                                   "SandboxTemplate")]},
        "spec": {"podSelector": {"matchLabels": {n.TEMPLATE_REF_HASH: n.name_hash(meta["name"])}},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    }
