"""`helm lint` and `helm template` of the chart with its defaults and with non-default values
(external Redis, an upstream agent-sandbox, monitoring on, 3 gateway replicas, several or all
namespaces, ...), every rendered manifest validated: Kubernetes kinds strictly against the
Kubernetes API schemas, our kinds against their CRD's schema. The CRDs in crds/ and the examples
in examples/k8s/ are validated the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.charts.conftest import CHART, ROOT, HelmFailed
from tests.charts.validation import CLUSTER_SCOPED, problems

SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "external-redis": {"redis": {"bundled": {"enabled": False}, "external": {
        "url": "rediss://redis.example.internal:6380/2", "existingSecret": "store-auth"}}},
    "external-redis-no-password": {"redis": {"bundled": {"enabled": False},
                                             "external": {"url": "redis://redis:6379/0"}}},
    "upstream-agent-sandbox": {"agentSandbox": {"external": True}},
    "monitoring": {"monitoring": {"serviceMonitor": {"enabled": True,
                                                     "labels": {"release": "prom"}},
                                  "grafanaDashboard": {"enabled": True}}},
    "ha": {"gateway": {"replicas": 3}, "controller": {"replicas": 2},
           "redis": {"bundled": {"persistence": {"enabled": True, "storageClass": "fast"}}}},
    "namespaces": {"sandboxNamespaces": {"list": ["team-a", "team-b"]},
                   "networkPolicy": {"sandboxIngressPorts": [8080], "sandboxEgress": [
                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                            "except": ["10.0.0.0/8", "169.254.0.0/16"]}}]}]}},
    "all-namespaces": {"sandboxNamespaces": {"all": True}},
    "custom": {"gateway": {"auth": {"existingSecret": "my-token", "secretKey": "t"},
                           "service": {"type": "NodePort", "nodePort": 30888},
                           "podDisruptionBudget": {"enabled": False},
                           "extraEnv": [{"name": "KERNELCUBE_RELAY_TIMEOUT", "value": "30"}]},
               "controller": {"leaderElection": {"enabled": False}},
               "codeInterpreter": {"create": False}, "networkPolicy": {"enabled": False},
               "imagePullSecrets": ["regcred"], "fullnameOverride": "kcube"},
    "gvisor": {"codeInterpreter": {"runtimeClassName": "gvisor", "warmPoolSize": 0,
                                   "environment": [{"name": "TZ", "value": "UTC"}]}},
}


@pytest.fixture(scope="module")
def rendered(render) -> dict[str, list[dict]]:
    return {name: render(values) for name, values in SCENARIOS.items()}


def test_helm_lint_strict(helm, tmp_path):
    for name, values in SCENARIOS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        out = helm("lint", "--strict", str(CHART), "--values", str(path))
        assert "1 chart(s) linted, 0 chart(s) failed" in out, name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_manifest_is_valid(rendered, scenario):
    docs = rendered[scenario]
    assert docs
    found = [p for doc in docs for p in problems(doc)]
    assert found == []
    for doc in docs:
        namespaced = doc["kind"] not in CLUSTER_SCOPED
        assert bool(doc["metadata"].get("namespace")) == namespaced, doc["metadata"]["name"]


def test_names_are_unique_per_kind_and_namespace(rendered):
    for scenario, docs in rendered.items():
        keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
        assert len(keys) == len(set(keys)), scenario


def test_the_crds_are_valid_and_all_six_are_shipped():
    crds = [doc for path in sorted((CHART / "crds").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert {c["metadata"]["name"] for c in crds} == {
        "sandboxes.agents.x-k8s.io", "sandboxtemplates.extensions.agents.x-k8s.io",
        "sandboxwarmpools.extensions.agents.x-k8s.io", "sandboxclaims.extensions.agents.x-k8s.io",
        "codeinterpreters.runtime.agentcube.volcano.sh", "agentruntimes.runtime.agentcube.volcano.sh"}
    assert [p for crd in crds for p in problems(crd)] == []
    # checks.yaml tells our CRDs from upstream's by this label.
    assert all(c["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kernelcube" for c in crds)


def examples() -> list[Path]:
    return sorted((ROOT / "examples" / "k8s").glob("*.yaml"))


@pytest.mark.parametrize("path", examples(), ids=lambda p: p.name)
def test_examples_are_valid(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    assert [p for doc in docs for p in problems(doc)] == []


def test_examples_cover_a_warm_code_interpreter_and_an_agent_runtime():
    docs = [doc for path in examples() for doc in yaml.safe_load_all(path.read_text()) if doc]
    kinds = {d["kind"] for d in docs}
    assert {"CodeInterpreter", "AgentRuntime"} <= kinds
    assert any(d["kind"] == "CodeInterpreter" and d["spec"].get("warmPoolSize", 0) > 0
               for d in docs)


def test_invalid_manifests_are_caught():
    """The validators are not vacuous: a wrong type, an unknown field, a bad enum all fail."""
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x",
                  "namespace": "n"}, "spec": {"replicas": "two", "selector": {}, "template": {}}}
    assert problems(deployment)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"ports": [{"port": 80}], "selectr": {}}}
    assert problems(service)
    ci = {"apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter",
          "metadata": {"name": "c"}, "spec": {"template": {"image": "i"}, "authMode": "jwt"}}
    assert problems(ci)
    assert problems({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


@pytest.mark.parametrize("values, message", [
    ({"gateway": {"replicas": 0}}, "gateway.replicas"),
    ({"gatway": {}}, "gatway"),
    ({"redis": {"bundled": {"enabled": False}}}, "redis.external.url"),
    ({"redis": {"bundled": {"enabled": False},
                "external": {"url": "redis://:secret@host:6379/0"}}}, "without a password"),
    ({"controller": {"replicas": 2, "leaderElection": {"enabled": False}}}, "leaderElection"),
    ({"codeInterpreter": {"sessionTimeout": "15 minutes"}}, "sessionTimeout"),
])
def test_bad_values_are_refused_with_a_message(render, values, message):
    with pytest.raises(HelmFailed, match=message):
        render(values)
