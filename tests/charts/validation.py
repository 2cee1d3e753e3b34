"""Validation of rendered manifests: Kubernetes kinds against the API's own schemas
(kubernetes-validate, strict: unknown fields are errors), KernelCube's kinds against the
openAPIV3Schema of their CRD in charts/kernelcube/crds/ (with the API server's defaulting),
the Prometheus Operator's ServiceMonitor against the fields it needs. Any other kind fails."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate

from controller.testing import schema
from controller.testing.apiserver import load_crds

CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "kernelcube" / "crds"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "rbac.authorization.k8s.io/v1",
               "networking.k8s.io/v1", "apiextensions.k8s.io/v1", "coordination.k8s.io/v1"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {"type": "object", "properties": {
                    "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}},
            },
        },
    },
}


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> openAPIV3Schema, for every version of every CRD in crds/."""
    out = {}
    for crd in load_crds(CRD_DIR):
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            out[key] = version["schema"]["openAPIV3Schema"]
    return out


def problems(doc: dict) -> list[str]:
    """Why `doc` would be refused (empty when it is valid)."""
    return list(_problems(json.dumps(doc, sort_keys=True)))


@cache
def _problems(canonical: str) -> tuple[str, ...]:
    # Scenarios render many identical objects: each distinct one is validated once.
    return tuple(_check(json.loads(canonical)))


def _check(doc: dict) -> list[str]:
    kind, api = doc.get("kind"), doc.get("apiVersion")
    where = f"{kind} {doc.get('metadata', {}).get('name')}"
    if api in CORE_GROUPS:
        found = []
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                found.append(f"{where} (Kubernetes {version}): {str(exc).splitlines()[0]}")
        return found
    if (api, kind) in crd_schemas():
        root = crd_schemas()[(api, kind)]
        obj = schema.apply_defaults(root, copy.deepcopy(doc))
        return [f"{where}: {p}" for p in schema.validation_errors(root, obj)]
    if kind == "ServiceMonitor":
        validator = jsonschema.Draft7Validator(SERVICE_MONITOR)
        return [f"{where}: {e.message}" for e in validator.iter_errors(doc)]
    return [f"{where}: no schema known for {api} {kind}"]
