"""The AgentCube reconcilers against the fake API server: a CodeInterpreter drives a
SandboxTemplate (PicoD container, public key, runtimeClassName, labels, ports) and a warm pool;
spec changes roll out to warm members but not to claimed ones; warmPoolSize 0 and deleting the
CR remove what it made; an AgentRuntime becomes a template; status, conditions,
observedGeneration; Events for a bad image, an unfillable pool and a name conflict."""

from __future__ import annotations

import asyncio
import base64

import pytest

from controller import resources as R
from tests.controller import helpers as h


def template_of(cluster, name="ci"):
    return cluster.api.get("sandboxtemplates", h.NS, name)


def pool_of(cluster, name="ci"):
    return cluster.api.get("sandboxwarmpools", h.NS, name)


def ci_of(cluster, name="ci"):
    return cluster.api.get("codeinterpreters", h.NS, name)


def members(cluster, pool="ci"):
    return [sb for sb in cluster.api.objects("sandboxes", h.NS)
            if any(r["kind"] == "SandboxWarmPool" and r["name"] == pool
                   for r in sb["metadata"].get("ownerReferences") or [])]


def condition(obj, type_):
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return None


def events(cluster, reason=None):
    return [e for e in cluster.api.objects("events", h.NS)
            if reason is None or e["reason"] == reason]


def image_of(obj):
    return obj["spec"]["podTemplate"]["spec"]["containers"][0]["image"]


@pytest.mark.asyncio
async def test_code_interpreter_makes_template_and_pool_and_reports_ready(cluster, controller):
    ci = h.code_interpreter("ci", warmPoolSize=2, ports=[{"port": 9000, "name": "picod"}])
    ci["spec"]["template"].update(
        runtimeClassName="kata", imagePullPolicy="IfNotPresent", command=["picod"],
        labels={"team": "ml"}, annotations={"note": "x"},
        environment=[{"name": "A", "value": "1"}],
        resources={"limits": {"cpu": "1", "memory": "512Mi"}})
    created = await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, ci)
    tpl = await h.wait_for(lambda: template_of(cluster), 5, "template")
    (container,) = tpl["spec"]["podTemplate"]["spec"]["containers"]
    assert container["name"] == "codeinterpreter" and container["image"] == "picod:latest"
    assert container["command"] == ["picod"] and container["args"] == ["--workspace=/root"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {"limits": {"cpu": "1", "memory": "512Mi"}}
    assert container["ports"] == [{"containerPort": 9000, "protocol": "TCP", "name": "picod"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    secret = cluster.api.get("secrets", h.NS, "picod-router-identity")
    assert secret["metadata"]["labels"] == {"app": "agentcube", "component": "router"}
    assert env == {"A": "1", "PICOD_AUTH_PUBLIC_KEY":
                   base64.b64decode(secret["data"]["public.pem"]).decode()}
    assert env["PICOD_AUTH_PUBLIC_KEY"].startswith("-----BEGIN PUBLIC KEY-----")
    pod = tpl["spec"]["podTemplate"]
    assert pod["spec"]["runtimeClassName"] == "kata"
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["metadata"]["annotations"] == {"note": "x"}
    assert tpl["spec"]["networkPolicyManagement"] == "Unmanaged"
    pool = await h.wait_for(lambda: pool_of(cluster), 5, "pool")
    assert pool["spec"]["replicas"] == 2 and pool["spec"]["sandboxTemplateRef"]["name"] == "ci"
    for owned in (tpl, pool):
        (ref,) = owned["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == (
            "CodeInterpreter", created["metadata"]["uid"], True)
    done = await h.wait_for(lambda: (lambda c: c if condition(c, "WarmPoolReady") and
                                     condition(c, "WarmPoolReady")["status"] == "True" else None)(
        ci_of(cluster)), 10, "pool ready reported")
    assert done["status"]["ready"] is True and done["status"]["observedGeneration"] == 1
    assert condition(done, "Ready")["status"] == "True"
    assert condition(done, "Reconciled")["reason"] == "Reconciled"
    assert condition(done, "WarmPoolReady")["message"] == "2/2 warm sandboxes ready"
    assert {e["reason"] for e in events(cluster)} >= {"SandboxTemplateCreated",
                                                      "SandboxWarmPoolCreated"}


@pytest.mark.asyncio
async def test_auth_none_and_empty_runtime_class_leave_them_unset(cluster, controller):
    ci = h.code_interpreter("ci", warmPoolSize=1, authMode="none")
    ci["spec"]["template"]["runtimeClassName"] = ""
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, ci)
    tpl = await h.wait_for(lambda: template_of(cluster), 5, "template")
    spec = tpl["spec"]["podTemplate"]["spec"]
    assert "runtimeClassName" not in spec and "env" not in spec["containers"][0]
    assert spec["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]


@pytest.mark.asyncio
async def test_spec_change_rolls_out_to_warm_members_not_claimed_ones(cluster, controller):
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci", warmPoolSize=2))
    await h.wait_for(lambda: len([s for s in members(cluster) if h.ready(s)]) == 2, 10, "filled")
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("session-1", "ci"))
    claim = await h.wait_for(lambda: (lambda c: c if h.ready(c) else None)(
        cluster.api.get("sandboxclaims", h.NS, "session-1")), 10, "claim bound")
    claimed = claim["status"]["sandbox"]["name"]

    await cluster.kube.patch(R.CODE_INTERPRETERS, h.NS, "ci", {"spec": {"template": {
        "image": "picod:v2"}}})
    await h.wait_for(lambda: image_of(template_of(cluster)) == "picod:v2", 5, "template updated")

    def rolled():
        warm = [s for s in members(cluster) if not s["metadata"].get("deletionTimestamp")]
        return len(warm) == 2 and all(image_of(s) == "picod:v2" and h.ready(s) for s in warm)

    await h.wait_for(rolled, 10, "warm members rebuilt from the new template")
    assert image_of(cluster.api.get("sandboxes", h.NS, claimed)) == "picod:latest"
    ci = await h.wait_for(lambda: (lambda c: c if c["status"].get("observedGeneration") == 2
                                   else None)(ci_of(cluster)), 5, "generation 2 observed")
    assert condition(ci, "Ready")["observedGeneration"] == 2
    assert events(cluster, "SandboxTemplateUpdated")


@pytest.mark.asyncio
async def test_pool_size_zero_deletes_both_and_deleting_the_cr_cleans_up(cluster, controller):
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci", warmPoolSize=1))
    await h.wait_for(lambda: pool_of(cluster) and template_of(cluster), 5, "made")
    await cluster.kube.patch(R.CODE_INTERPRETERS, h.NS, "ci", {"spec": {"warmPoolSize": 0}})
    await h.wait_for(lambda: pool_of(cluster) is None and template_of(cluster) is None, 5,
                     "both deleted")
    ci = await h.wait_for(lambda: (lambda c: c if c["status"].get("observedGeneration") == 2
                                   else None)(ci_of(cluster)), 5, "status")
    assert ci["status"]["ready"] is True and condition(ci, "WarmPoolReady") is None

    await cluster.kube.patch(R.CODE_INTERPRETERS, h.NS, "ci", {"spec": {"warmPoolSize": 3}})
    await h.wait_for(lambda: len([s for s in members(cluster) if h.ready(s)]) == 3, 10, "refill")
    await cluster.kube.delete(R.CODE_INTERPRETERS, h.NS, "ci")
    await h.wait_for(lambda: pool_of(cluster) is None and template_of(cluster) is None
                     and not members(cluster), 5, "garbage collected")


@pytest.mark.asyncio
async def test_agent_runtime_becomes_a_template_with_its_ports(cluster, controller):
    ar = h.agent_runtime("agent", port=8000)
    ar["spec"]["targetPort"].append({"port": 9090, "name": "metrics"})
    await cluster.kube.create(R.AGENT_RUNTIMES, h.NS, ar)
    tpl = await h.wait_for(lambda: template_of(cluster, "agent"), 5, "template")
    (container,) = tpl["spec"]["podTemplate"]["spec"]["containers"]
    assert container["name"] == "agent" and container["image"] == "agent:latest"
    assert [p["containerPort"] for p in container["ports"]] == [8000, 9090]
    assert tpl["spec"]["podTemplate"]["metadata"]["labels"]["app"] == "agent"
    assert tpl["metadata"]["ownerReferences"][0]["kind"] == "AgentRuntime"
    assert pool_of(cluster, "agent") is None
    done = await h.wait_for(lambda: (lambda a: a if a.get("status", {}).get("ready") else None)(
        cluster.api.get("agentruntimes", h.NS, "agent")), 5, "ready")
    assert done["status"]["observedGeneration"] == 1
    assert condition(done, "Reconciled")["status"] == "True"
    await cluster.kube.delete(R.AGENT_RUNTIMES, h.NS, "agent")
    await h.wait_for(lambda: template_of(cluster, "agent") is None, 5, "template collected")


@pytest.mark.asyncio
async def test_image_pull_errors_on_pool_pods_become_events_and_not_ready(cluster, controller):
    cluster.kubelet.hold = True  # pods stay Pending; we report the kubelet's pull failure
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS,
                              h.code_interpreter("ci", image="picod:typo", warmPoolSize=1))
    pod = await h.wait_for(lambda: cluster.api.objects("pods", h.NS), 10, "a pool pod")
    pods = cluster.api.store.resources[("", "pods")]
    cluster.api.store.patch(pods, h.NS, pod[0]["metadata"]["name"], {"status": {
        "containerStatuses": [{"name": "codeinterpreter", "image": "picod:typo", "ready": False,
                               "state": {"waiting": {"reason": "ImagePullBackOff",
                                                     "message": "Back-off pulling image"}}}]}},
        subresource="status")
    (event,) = await h.wait_for(lambda: events(cluster, "ImagePullFailed"), 5, "Event")
    assert event["type"] == "Warning" and "picod:typo" in event["message"]
    assert event["involvedObject"]["kind"] == "CodeInterpreter"
    ci = await h.wait_for(lambda: (lambda c: c if c.get("status", {}).get("ready") is False
                                   else None)(ci_of(cluster)), 5, "not ready")
    assert condition(ci, "Ready")["reason"] == "ImagePullFailed"
    assert condition(ci, "WarmPoolReady")["reason"] == "ImagePullFailed"


@pytest.mark.asyncio
async def test_an_unfillable_pool_is_reported(cluster, make_controller):
    await make_controller(pool_fill_warning=0.3)
    cluster.kubelet.unschedulable = True
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci", warmPoolSize=2))
    (event,) = await h.wait_for(lambda: events(cluster, "WarmPoolNotFilling"), 10, "Event")
    assert event["type"] == "Warning" and event["message"].startswith("0/2 warm sandboxes ready")
    assert events(cluster, "Unschedulable")
    ci = ci_of(cluster)
    assert condition(ci, "WarmPoolReady")["reason"] == "Unschedulable"
    assert ci["status"]["ready"] is True  # a cold start may still find room


@pytest.mark.asyncio
async def test_a_template_of_the_same_name_owned_by_another_is_left_alone(cluster, controller):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template("ci"))
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci", warmPoolSize=1))
    ci = await h.wait_for(lambda: (lambda c: c if (condition(c, "Reconciled") or {}).get(
        "reason") == "NameConflict" else None)(ci_of(cluster)), 5, "conflict reported")
    assert ci["status"]["ready"] is False
    assert events(cluster, "NameConflict")[0]["type"] == "Warning"
    assert image_of(template_of(cluster)) == "picod:latest"
    assert template_of(cluster)["spec"]["podTemplate"]["spec"]["containers"][0]["name"] == "picod"
    assert pool_of(cluster) is None


@pytest.mark.asyncio
async def test_with_an_upstream_agent_sandbox_controller_only_agentcube_runs(cluster, make_controller):
    """`--no-agent-sandbox`: the CodeInterpreter still becomes a template and a pool, but filling
    the pool is left to the upstream controller (so none of ours creates a Sandbox)."""
    await make_controller(agent_sandbox=False)
    await cluster.kube.create(R.CODE_INTERPRETERS, h.NS, h.code_interpreter("ci", warmPoolSize=2))
    await h.wait_for(lambda: template_of(cluster) and pool_of(cluster), 5, "template and pool")
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c1", "ci"))
    await h.wait_for(lambda: condition(ci_of(cluster), "Reconciled"), 5, "the CodeInterpreter's status")
    await asyncio.sleep(1.0)  # what ours would have done by now: a pool member and the claim's
    assert cluster.api.objects("sandboxes", h.NS) == []
    assert not cluster.api.get("sandboxclaims", h.NS, "c1").get("status")
