"""The Sandbox reconciler against the fake API server and simulated kubelet: Pod creation and
Ready status, a deleted Pod recreated, suspend/resume, shutdownTime with both policies, Service
and PVCs, finished Pods not restarted, foreign Pods refused."""

from __future__ import annotations

import pytest

from controller import naming as n
from controller import resources as R
from tests.controller import helpers as h


def sandbox_of(cluster, name="s"):
    return cluster.api.get("sandboxes", h.NS, name)


@pytest.mark.asyncio
async def test_sandbox_gets_a_pod_and_becomes_ready(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    sb = await h.wait_for(lambda: h.ready(sandbox_of(cluster)) and sandbox_of(cluster), 5)
    pod = cluster.api.get("pods", h.NS, "s")
    assert pod["metadata"]["ownerReferences"][0]["uid"] == sb["metadata"]["uid"]
    assert pod["metadata"]["labels"][n.SANDBOX_NAME_HASH] == n.name_hash("s")
    assert sb["status"]["podIPs"] == [pod["status"]["podIP"]]
    assert sb["status"]["nodeName"] == pod["spec"]["nodeName"]
    assert sb["status"]["selector"] == n.sandbox_selector("s")
    assert sb["metadata"]["annotations"][n.POD_NAME_ANNOTATION] == "s"
    ready = [c for c in sb["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["reason"] == "DependenciesReady" and ready["observedGeneration"] == 1


@pytest.mark.asyncio
async def test_a_deleted_pod_is_recreated(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    first = cluster.api.get("pods", h.NS, "s")["metadata"]["uid"]
    await cluster.kube.delete(R.PODS, h.NS, "s")
    await h.wait_for(lambda: (cluster.api.get("pods", h.NS, "s") or {"metadata": {"uid": first}}
                              )["metadata"]["uid"] != first, 5, "a new pod")
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)


@pytest.mark.asyncio
async def test_suspend_deletes_the_pod_and_resume_brings_a_new_ip(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    old_ip = sandbox_of(cluster)["status"]["podIPs"]
    await cluster.kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"operatingMode": "Suspended"}})
    await h.wait_for(lambda: h.reason(sandbox_of(cluster)) == "SandboxSuspended"
                     and cluster.api.get("pods", h.NS, "s") is None, 5)
    sb = await h.wait_for(lambda: (lambda s: s if any(
        c["type"] == "Suspended" and c["status"] == "True"
        for c in s["status"]["conditions"]) else None)(sandbox_of(cluster)), 5)
    assert "podIPs" not in sb["status"]
    assert n.POD_NAME_ANNOTATION not in (sb["metadata"].get("annotations") or {})
    await cluster.kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"operatingMode": "Running"}})
    sb = await h.wait_for(lambda: h.ready(sandbox_of(cluster)) and sandbox_of(cluster), 5)
    assert sb["status"]["podIPs"] != old_ip


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["Retain", "Delete"])
async def test_shutdown_time_expires_the_sandbox(cluster, controller, policy):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox(
        "s", service=True, shutdownTime=h.soon(0.6), shutdownPolicy=policy))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    assert cluster.api.get("services", h.NS, "s") is not None
    await h.wait_for(lambda: cluster.api.get("pods", h.NS, "s") is None, 5, "pod deleted")
    if policy == "Delete":
        await h.wait_for(lambda: sandbox_of(cluster) is None, 5, "sandbox deleted")
    else:
        sb = await h.wait_for(lambda: h.reason(sandbox_of(cluster)) == "SandboxExpired"
                              and sandbox_of(cluster), 5)
        assert set(sb["status"]) == {"conditions"}
    await h.wait_for(lambda: cluster.api.get("services", h.NS, "s") is None, 5)


@pytest.mark.asyncio
async def test_service_follows_spec_service(cluster, controller):
    spec = h.sandbox("s", service=True)
    spec["spec"]["podTemplate"]["spec"]["containers"][0]["ports"] = [{"containerPort": 8888}]
    await cluster.kube.create(R.SANDBOXES, h.NS, spec)
    sb = await h.wait_for(lambda: h.ready(sandbox_of(cluster)) and sandbox_of(cluster), 5)
    service = cluster.api.get("services", h.NS, "s")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {n.SANDBOX_NAME_HASH: n.name_hash("s")}
    assert [p["port"] for p in service["spec"]["ports"]] == [8888]
    assert sb["status"]["serviceFQDN"] == "s.default.svc.cluster.local"
    await cluster.kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"service": False}})
    await h.wait_for(lambda: cluster.api.get("services", h.NS, "s") is None, 5)
    await h.wait_for(lambda: "serviceFQDN" not in sandbox_of(cluster)["status"], 5)


@pytest.mark.asyncio
async def test_pvcs_from_volume_claim_templates(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s", volumeClaimTemplates=[
        {"metadata": {"name": "work"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    pvc = cluster.api.get("persistentvolumeclaims", h.NS, "work-s")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = cluster.api.get("pods", h.NS, "s")["spec"]["volumes"]
    assert volumes == [{"name": "work", "persistentVolumeClaim": {"claimName": "work-s"}}]


@pytest.mark.asyncio
async def test_a_finished_pod_is_not_restarted(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    uid = cluster.api.get("pods", h.NS, "s")["metadata"]["uid"]
    cluster.kubelet.finish(h.NS, "s", "Failed")
    await h.wait_for(lambda: h.reason(sandbox_of(cluster)) == "PodFailed", 5)
    sb = sandbox_of(cluster)
    assert any(c["type"] == "Finished" and c["reason"] == "PodFailed"
               for c in sb["status"]["conditions"])
    assert cluster.api.get("pods", h.NS, "s")["metadata"]["uid"] == uid


@pytest.mark.asyncio
async def test_a_foreign_pod_of_the_same_name_is_not_taken(cluster, controller):
    await cluster.kube.create(R.PODS, h.NS, {"metadata": {"name": "s", "labels": {
        n.SANDBOX_NAME_HASH: "ffffffff"}, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ReplicaSet", "name": "rs", "uid": "other",
            "controller": True}]}, "spec": {"containers": [{"name": "c"}]}})
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.reason(sandbox_of(cluster)) == "ReconcilerError", 5)
    assert cluster.api.get("pods", h.NS, "s")["metadata"]["ownerReferences"][0]["uid"] == "other"


@pytest.mark.asyncio
async def test_an_adoptable_unowned_pod_is_adopted(cluster, controller):
    await cluster.kube.create(R.PODS, h.NS, {"metadata": {"name": "s", "labels": {
        n.ADOPTABLE: "true"}}, "spec": {"containers": [{"name": "c"}]}})
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    pod = cluster.api.get("pods", h.NS, "s")
    assert pod["metadata"]["ownerReferences"][0]["uid"] == sandbox_of(cluster)["metadata"]["uid"]
