"""The SandboxClaim reconciler against the fake API server: warm adoption (few writes; binding
and readiness in one status update, as the SDK's single watch needs), the cold path (empty pool,
or env injection), missing pool, rejected metadata, expiry with each policy, TTL after the pod
finished, and cascading deletion."""

from __future__ import annotations

import asyncio

import pytest

from controller import naming as n
from controller import resources as R
from tests.controller import helpers as h


def get_claim(cluster, name="c"):
    return cluster.api.get("sandboxclaims", h.NS, name)


def bound(cluster, name="c"):
    claim = get_claim(cluster, name)
    if claim and h.ready(claim) and claim["status"].get("sandbox", {}).get("name"):
        return claim
    return None


async def warm_pool(cluster, replicas=2, **template_spec):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template(**template_spec))
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=replicas))
    if replicas:
        await h.wait_for(lambda: sum(h.ready(s) for s in cluster.api.objects("sandboxes"))
                         == replicas, 5, "pool filled")


@pytest.mark.asyncio
async def test_warm_claim_binds_in_one_status_update_with_few_writes(cluster, controller):
    await warm_pool(cluster, replicas=2)
    await asyncio.sleep(0.1)  # let the fill settle, then count only the claim's work
    created = await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", additionalPodMetadata={
        "labels": {"sandbox.users.io/user": "ada"}}))
    before = dict(cluster.api.requests)
    runs_before = controller.ctx.queues["claim"].runs
    seen = []

    async def sdk_watch():  # what the k8s-agent-sandbox SDK does: one watch from the create
        async for event in cluster.kube.watch(R.CLAIMS, h.NS,
                                              created["metadata"]["resourceVersion"],
                                              timeout_seconds=5):
            status = event["object"].get("status") or {}
            seen.append((status.get("sandbox", {}).get("name"), h.ready(event["object"])))
            if status.get("sandbox", {}).get("name"):
                return

    await asyncio.wait_for(sdk_watch(), 5)
    assert [s for s in seen if s[0]] == [(seen[-1][0], True)], "name without Ready"
    claim = await h.wait_for(lambda: bound(cluster), 5)
    name = claim["status"]["sandbox"]["name"]
    assert name.startswith("python-")
    sandbox = cluster.api.get("sandboxes", h.NS, name)
    assert claim["status"]["sandbox"]["podIPs"] == sandbox["status"]["podIPs"]
    labels = sandbox["metadata"]["labels"]
    assert labels[n.LAUNCH_TYPE] == "warm" and labels[n.CLAIM_UID] == claim["metadata"]["uid"]
    assert n.WARM_POOL_SANDBOX not in labels
    assert sandbox["metadata"]["ownerReferences"] == [{
        "apiVersion": "extensions.agents.x-k8s.io/v1beta1", "kind": "SandboxClaim", "name": "c",
        "uid": claim["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert sandbox["metadata"]["annotations"][n.POD_NAME_ANNOTATION] == name
    assert claim["metadata"]["annotations"][n.SANDBOX_NAME_ANNOTATION] == name
    pod = await h.wait_for(lambda: (lambda p: p if n.WARM_POOL_SANDBOX not in p["metadata"][
        "labels"] else None)(cluster.api.get("pods", h.NS, name)), 5, "pod relabelled")
    assert pod["metadata"]["labels"]["sandbox.users.io/user"] == "ada"
    assert n.SAFE_TO_EVICT not in pod["metadata"].get("annotations", {})
    await asyncio.sleep(0.1)
    claim_writes = cluster.api.requests[("PATCH", "sandboxclaims")] - before.get(
        ("PATCH", "sandboxclaims"), 0)
    assert claim_writes == 2  # the annotation (conditional) and one status update
    assert controller.ctx.queues["claim"].runs - runs_before <= 3
    histogram = controller.metrics.claim_latency.labels("warm")
    assert histogram._sum.get() > 0


@pytest.mark.asyncio
async def test_cold_path_when_the_pool_is_empty(cluster, controller):
    await warm_pool(cluster, replicas=0)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))
    claim = await h.wait_for(lambda: bound(cluster), 5)
    assert claim["status"]["sandbox"]["name"] == "c"
    sandbox = cluster.api.get("sandboxes", h.NS, "c")
    assert sandbox["metadata"]["labels"][n.LAUNCH_TYPE] == "cold"
    assert sandbox["metadata"]["labels"][n.CREATED_BY] == "python-client"
    assert sandbox["spec"]["podTemplate"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.asyncio
async def test_env_forces_a_cold_start_under_the_template_policy(cluster, controller):
    await warm_pool(cluster, replicas=1, envVarsInjectionPolicy="Allowed")
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", env=[{"name": "MODE", "value": "x"}]))
    claim = await h.wait_for(lambda: bound(cluster), 5)
    assert claim["status"]["sandbox"]["name"] == "c"
    env = cluster.api.get("pods", h.NS, "c")["spec"]["containers"][0]["env"]
    assert env == [{"name": "MODE", "value": "x"}]


@pytest.mark.asyncio
async def test_env_rejected_when_the_template_disallows_it(cluster, controller):
    await warm_pool(cluster, replicas=1)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", env=[{"name": "MODE", "value": "x"}]))
    await h.wait_for(lambda: h.reason(get_claim(cluster)) == "EnvVarsInjectionRejected", 5)


@pytest.mark.asyncio
async def test_missing_pool_then_created(cluster, controller):
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", pool_name="later"))
    await h.wait_for(lambda: h.reason(get_claim(cluster)) == "WarmPoolNotFound", 5)
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template("python"))
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool("later", "python", replicas=1))
    await h.wait_for(lambda: bound(cluster), 5, "bound once the pool exists")


@pytest.mark.asyncio
async def test_invalid_pod_metadata_is_refused(cluster, controller):
    await warm_pool(cluster, replicas=1)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", additionalPodMetadata={
        "labels": {"evil.io/x": "y"}}))
    await h.wait_for(lambda: h.reason(get_claim(cluster)) == "InvalidMetadata", 5)
    assert len(cluster.api.objects("sandboxes")) == 1  # the warm member was left alone


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["Delete", "Retain"])
async def test_claim_shutdown_time(cluster, controller, policy):
    await warm_pool(cluster, replicas=1)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", lifecycle={
        "shutdownTime": h.soon(0.5), "shutdownPolicy": policy}))
    claim = await h.wait_for(lambda: bound(cluster), 5)
    name = claim["status"]["sandbox"]["name"]
    await h.wait_for(lambda: cluster.api.get("sandboxes", h.NS, name) is None, 5,
                     "sandbox gone")
    await h.wait_for(lambda: cluster.api.get("pods", h.NS, name) is None, 5, "pod gone")
    if policy == "Delete":
        await h.wait_for(lambda: get_claim(cluster) is None, 5, "claim deleted")
    else:
        claim = await h.wait_for(lambda: h.reason(get_claim(cluster)) == "ClaimExpired"
                                 and get_claim(cluster), 5)
        assert "sandbox" not in claim["status"]


@pytest.mark.asyncio
async def test_ttl_after_finished_deletes_the_claim(cluster, controller):
    await warm_pool(cluster, replicas=1)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", lifecycle={
        "ttlSecondsAfterFinished": 0, "shutdownPolicy": "Delete"}))
    claim = await h.wait_for(lambda: bound(cluster), 5)
    cluster.kubelet.finish(h.NS, claim["status"]["sandbox"]["name"], "Succeeded")
    await h.wait_for(lambda: get_claim(cluster) is None, 5, "claim deleted after finishing")


@pytest.mark.asyncio
async def test_deleting_a_claim_cascades_to_sandbox_and_pod(cluster, controller):
    await warm_pool(cluster, replicas=1)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))
    name = (await h.wait_for(lambda: bound(cluster), 5))["status"]["sandbox"]["name"]
    await cluster.kube.delete(R.CLAIMS, h.NS, "c", propagation="Foreground")
    await h.wait_for(lambda: cluster.api.get("pods", h.NS, name) is None and
                     get_claim(cluster) is None, 5)
    assert cluster.api.get("sandboxes", h.NS, name) is None


@pytest.mark.asyncio
async def test_template_gets_its_network_policy(cluster, controller):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template("python"))
    policy = await h.wait_for(lambda: cluster.api.get("networkpolicies", h.NS,
                                                      "python-network-policy"), 5)
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        n.TEMPLATE_REF_HASH: n.name_hash("python")}
    template = cluster.api.get("sandboxtemplates", h.NS, "python")
    assert template["metadata"]["labels"][n.TEMPLATE_REF_HASH] == n.name_hash("python")
    await cluster.kube.patch(R.TEMPLATES, h.NS, "python",
                             {"spec": {"networkPolicyManagement": "Unmanaged"}})
    await h.wait_for(lambda: cluster.api.get("networkpolicies", h.NS,
                                             "python-network-policy") is None, 5)


@pytest.mark.asyncio
async def test_claims_are_served_after_watches_drop_and_history_is_compacted(cluster, controller):
    await warm_pool(cluster, replicas=2)
    cluster.api.close_watches()  # every informer resumes from its last version
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))
    await h.wait_for(lambda: bound(cluster), 5, "bound after reconnecting")
    cluster.api.compact()  # resuming now gets 410: every informer lists again
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("d"))
    await h.wait_for(lambda: bound(cluster, "d"), 5, "bound after relisting")
    await h.wait_for(lambda: all(inf.relists >= 2 for inf in (
        controller.ctx.claims, controller.ctx.sandboxes, controller.ctx.pods)), 5)
