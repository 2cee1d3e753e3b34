"""The CRD manifests: names, scope, subresources and printer columns as the spec says; schemas
that are structural; and a JSON-schema check that valid objects pass (with their defaults) and
invalid ones are rejected — directly, and through the fake API server's HTTP (422)."""

from __future__ import annotations

import copy

import pytest

from controller import resources as R
from controller.errors import Invalid
from controller.testing import schema
from tests.controller import helpers as h

EXPECTED = {
    "Sandbox": ("agents.x-k8s.io", "sandboxes", "sandbox", True, ["Ready", "Reason", "Age"]),
    "SandboxTemplate": ("extensions.agents.x-k8s.io", "sandboxtemplates", "sandboxtemplate",
                        False, []),
    "SandboxWarmPool": ("extensions.agents.x-k8s.io", "sandboxwarmpools", "swp", True,
                        ["Ready", "Desired", "Age"]),
    "SandboxClaim": ("extensions.agents.x-k8s.io", "sandboxclaims", "sandboxclaim", True,
                     ["Ready", "Sandbox", "Reason", "Age"]),
}
# The AgentCube kinds (v1alpha1, no short names): kind -> (group, plural, printer columns).
AGENTCUBE = {
    "CodeInterpreter": ("runtime.agentcube.volcano.sh", "codeinterpreters",
                        ["Ready", "WarmPool", "Image", "Reason", "Age"]),
    "AgentRuntime": ("runtime.agentcube.volcano.sh", "agentruntimes", ["Ready", "Reason", "Age"]),
}


def by_kind(crds):
    return {crd["spec"]["names"]["kind"]: crd for crd in crds}


def openapi(crds, kind):
    return by_kind(crds)[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_kind_has_its_names_scope_and_subresources(crds):
    kinds = by_kind(crds)
    assert set(kinds) == set(EXPECTED) | set(AGENTCUBE)
    for kind, (group, plural, short, has_status, columns) in EXPECTED.items():
        spec = kinds[kind]["spec"]
        assert kinds[kind]["metadata"]["name"] == f"{plural}.{group}"
        assert (spec["group"], spec["names"]["plural"], spec["scope"]) == (group, plural,
                                                                           "Namespaced")
        assert short in spec["names"]["shortNames"]
        (version,) = spec["versions"]
        assert version["name"] == "v1beta1" and version["served"] and version["storage"]
        assert ("status" in (version.get("subresources") or {})) == has_status
        assert [c["name"] for c in version.get("additionalPrinterColumns") or []] == columns
    scale = kinds["SandboxWarmPool"]["spec"]["versions"][0]["subresources"]["scale"]
    assert scale == {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                     "labelSelectorPath": ".status.selector"}


def test_agentcube_kinds_have_their_names_scope_status_and_columns(crds):
    kinds = by_kind(crds)
    for kind, (group, plural, columns) in AGENTCUBE.items():
        spec = kinds[kind]["spec"]
        assert kinds[kind]["metadata"]["name"] == f"{plural}.{group}"
        assert (spec["group"], spec["names"]["plural"], spec["scope"]) == (group, plural,
                                                                           "Namespaced")
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]] == columns
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert {"ready", "conditions", "observedGeneration"} <= set(status)


def test_schemas_are_structural(crds):
    for crd in crds:
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema.structural_problems(root) == [], crd["metadata"]["name"]


def test_a_non_structural_schema_is_caught():
    assert schema.structural_problems({"type": "object", "properties": {"x": {}}})


VALID = {
    "Sandbox": h.sandbox("s", shutdownTime="2030-01-01T00:00:00Z"),
    "SandboxTemplate": h.template("t"),
    "SandboxWarmPool": h.pool("p", "t"),
    "SandboxClaim": h.claim("c", "p", lifecycle={"shutdownPolicy": "Delete"}),
    "CodeInterpreter": h.code_interpreter("ci", warmPoolSize=2, ports=[{"port": 8080}]),
    "AgentRuntime": h.agent_runtime("ar"),
}

INVALID = [
    ("Sandbox", ["spec", "operatingMode"], "Paused"),
    ("Sandbox", ["spec", "shutdownPolicy"], "Forget"),
    ("Sandbox", ["spec", "podTemplate", "spec", "containers"], []),
    ("Sandbox", ["spec", "service"], "yes"),
    ("SandboxTemplate", ["spec", "networkPolicyManagement"], "Sometimes"),
    ("SandboxTemplate", ["spec", "envVarsInjectionPolicy"], "Always"),
    ("SandboxWarmPool", ["spec", "replicas"], -1),
    ("SandboxWarmPool", ["spec", "replicas"], "two"),
    ("SandboxWarmPool", ["spec", "updateStrategy", "type"], "Rolling"),
    ("SandboxWarmPool", ["spec", "sandboxTemplateRef"], {}),
    ("SandboxClaim", ["spec", "warmPoolRef"], None),
    ("SandboxClaim", ["spec", "lifecycle", "shutdownPolicy"], "Never"),
    ("SandboxClaim", ["spec", "lifecycle", "ttlSecondsAfterFinished"], -5),
    ("SandboxClaim", ["spec", "env"], [{"value": "no name"}]),
    ("CodeInterpreter", ["spec", "template"], None),
    ("CodeInterpreter", ["spec", "template", "image"], None),
    ("CodeInterpreter", ["spec", "authMode"], "jwt"),
    ("CodeInterpreter", ["spec", "warmPoolSize"], -1),
    ("CodeInterpreter", ["spec", "sessionTimeout"], "15 minutes"),
    ("CodeInterpreter", ["spec", "ports"], [{"port": 8080, "protocol": "TCP"}]),
    ("CodeInterpreter", ["spec", "template", "environment"], [{"value": "no name"}]),
    ("AgentRuntime", ["spec", "targetPort"], None),
    ("AgentRuntime", ["spec", "podTemplate"], None),
    ("AgentRuntime", ["spec", "maxSessionDuration"], "1 day"),
]


def put(obj, path, value):
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    if value is None:
        obj.pop(path[-1], None)
    else:
        obj[path[-1]] = value


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_examples_pass_and_get_defaults(crds, kind):
    root = openapi(crds, kind)
    obj = copy.deepcopy(VALID[kind])
    assert schema.validation_errors(root, obj) == []
    schema.apply_defaults(root, obj)
    if kind == "Sandbox":
        assert obj["spec"]["operatingMode"] == "Running"
    if kind == "SandboxWarmPool":
        assert obj["spec"]["updateStrategy"] == {"type": "OnReplenish"}
    if kind == "SandboxTemplate":
        assert obj["spec"]["networkPolicyManagement"] == "Managed"
        assert obj["spec"]["envVarsInjectionPolicy"] == "Disallowed"
    if kind in ("CodeInterpreter", "AgentRuntime"):
        assert (obj["spec"]["sessionTimeout"], obj["spec"]["maxSessionDuration"]) == ("15m", "8h")
    if kind == "CodeInterpreter":
        assert obj["spec"]["authMode"] == "picod"
        assert obj["spec"]["ports"] == [{"port": 8080, "protocol": "HTTP"}]


@pytest.mark.parametrize("kind, path, value", INVALID)
def test_invalid_examples_are_rejected(crds, kind, path, value):
    obj = copy.deepcopy(VALID[kind])
    put(obj, path, value)
    assert schema.validation_errors(openapi(crds, kind), obj)


def test_pool_replicas_default_to_one(crds):
    obj = {"spec": {"sandboxTemplateRef": {"name": "t"}}}
    schema.apply_defaults(openapi(crds, "SandboxWarmPool"), obj)
    assert obj["spec"]["replicas"] == 1


@pytest.mark.asyncio
async def test_the_api_server_rejects_invalid_objects_with_422(cluster):
    bad = h.pool("p", "t")
    bad["spec"]["replicas"] = -3
    with pytest.raises(Invalid, match="replicas"):
        await cluster.kube.create(R.WARMPOOLS, h.NS, bad)
    created = await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox(
        "s", volumeClaimTemplates=[{"metadata": {"name": "data"}, "spec": {}}],
        unknownField="pruned"))
    assert "unknownField" not in created["spec"]
    assert created["spec"]["shutdownPolicy"] == "Retain"
    with pytest.raises(Invalid, match="immutable"):
        await cluster.kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"volumeClaimTemplates": [
            {"metadata": {"name": "other"}}]}})


@pytest.mark.asyncio
async def test_the_api_server_serves_agentcube_kinds_with_defaults(cluster):
    ci = await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci"))
    assert (ci["spec"]["sessionTimeout"], ci["spec"]["authMode"]) == ("15m", "picod")
    assert ci["metadata"]["generation"] == 1
    ar = await cluster.kube.create(R.AGENT_RUNTIMES, h.NS, h.agent_runtime("ar"))
    assert ar["spec"]["maxSessionDuration"] == "8h"
    with pytest.raises(Invalid, match="authMode"):
        await cluster.kube.create(R.CODE_INTERPRETERS, h.NS,
                                  h.code_interpreter("bad", authMode="token"))
