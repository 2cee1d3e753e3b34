"""What a real kube-apiserver does that the controller must survive, reproduced by the fake one:
a Service refused with 422 (reported as Ready=False/ReconcilerError, logged once, no traceback),
a Pod that terminates for a grace period (suspending DELETEs it once), a restart with PVCs
already there (not created again), and lists refused with `429 storage is (re)initializing`
right after a CRD is created (retried quietly)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from controller import resources as R
from tests.controller import helpers as h


def sandbox_of(cluster, name="s"):
    return cluster.api.get("sandboxes", h.NS, name)


def ready_message(obj):
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c.get("message", "")
    return ""


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ["dotted-name", "duplicate-port-names"])
async def test_a_refused_service_is_reported_not_retried_with_tracebacks(
        cluster, controller, caplog, case):
    name = "s.v1" if case == "dotted-name" else "s"
    body = h.sandbox(name, service=True)
    body["spec"]["podTemplate"]["spec"]["containers"] = [
        {"name": "a", "image": "x", "ports": [{"containerPort": 80, "name": "http"}]},
        {"name": "b", "image": "x",
         "ports": [{"containerPort": 81, "name": "http" if case != "dotted-name" else "alt"}]}]
    caplog.set_level(logging.INFO)
    await cluster.kube.create(R.SANDBOXES, h.NS, body)
    sb = await h.wait_for(lambda: h.reason(sandbox_of(cluster, name)) == "ReconcilerError"
                          and sandbox_of(cluster, name), 5)
    assert "refused the Service" in ready_message(sb)
    assert ("Duplicate value" if case != "dotted-name" else "DNS-1035") in ready_message(sb)
    # Pod updates reconcile it again: still the same report, no traceback, one warning.
    await h.wait_for(lambda: (cluster.api.get("pods", h.NS, name) or {}).get(
        "status", {}).get("phase") == "Running", 5)
    await asyncio.sleep(0.3)
    assert h.reason(sandbox_of(cluster, name)) == "ReconcilerError"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if "refused the Service" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.asyncio
async def test_a_claim_reports_its_sandboxs_refused_service(cluster, controller):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template(service=True))
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=0))
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("my.claim"))
    claim = await h.wait_for(
        lambda: h.reason(cluster.api.get("sandboxclaims", h.NS, "my.claim")) == "ReconcilerError"
        and cluster.api.get("sandboxclaims", h.NS, "my.claim"), 5)
    assert "refused the Service" in ready_message(claim)


@pytest.mark.asyncio
async def test_suspending_deletes_a_terminating_pod_once(cluster, controller):
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    # A finalizer stands in for a kubelet's grace period: the Pod terminates for a while.
    await cluster.kube.patch(R.PODS, h.NS, "s", {"metadata": {"finalizers": ["test/grace"]}})
    await cluster.kube.patch(R.SANDBOXES, h.NS, "s", {"spec": {"operatingMode": "Suspended"}})
    await h.wait_for(lambda: cluster.api.get("pods", h.NS, "s")["metadata"].get(
        "deletionTimestamp"), 5, "the pod terminating")
    for i in range(5):  # the kubelet updates the terminating pod's status
        await cluster.kube.patch_status(R.PODS, h.NS, "s", {"status": {"message": f"t{i}"}})
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert cluster.api.requests[("DELETE", "pods")] == 1
    await cluster.kube.patch(R.PODS, h.NS, "s", {"metadata": {"finalizers": None}})
    await h.wait_for(lambda: cluster.api.get("pods", h.NS, "s") is None, 5)


@pytest.mark.asyncio
async def test_a_restart_does_not_create_existing_pvcs_again(cluster, make_controller):
    first = await make_controller()
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s", volumeClaimTemplates=[
        {"metadata": {"name": "work"}, "spec": {"accessModes": ["ReadWriteOnce"]}},
        {"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    await first.close()
    assert cluster.api.requests[("POST", "persistentvolumeclaims")] == 2
    second = await make_controller()
    await h.wait_for(lambda: second.ctx.queues["sandbox"].runs >= 1, 5, "a reconcile")
    await asyncio.sleep(0.1)
    assert cluster.api.requests[("POST", "persistentvolumeclaims")] == 2
    assert h.ready(sandbox_of(cluster))


@pytest.mark.asyncio
async def test_lists_refused_while_storage_initializes_are_retried_quietly(
        cluster, make_controller, caplog):
    caplog.set_level(logging.INFO)
    cluster.api.initializing = {"sandboxes": 3, "sandboxclaims": 2}
    await make_controller()
    assert cluster.api.statuses[("GET", "sandboxes", 429)] == 3
    await cluster.kube.create(R.SANDBOXES, h.NS, h.sandbox("s"))
    await h.wait_for(lambda: h.ready(sandbox_of(cluster)), 5)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.asyncio
async def test_a_cold_claim_costs_few_status_writes(cluster, controller):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=0))
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))
    await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "c")), 5)
    await asyncio.sleep(0.2)
    writes = cluster.api.subresource_requests[("PATCH", "sandboxclaims", "status")]
    print("cold claim status writes", writes)
    assert writes <= 2


def events(cluster, reason):
    return [e for e in cluster.api.objects("events", h.NS) if e["reason"] == reason]


def claims_counted(ctl, launch):
    return ctl.metrics.claims_total.labels(launch)._value.get()


@pytest.mark.asyncio
async def test_claims_are_counted_once_across_a_restart(cluster, make_controller):
    first = await make_controller()
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=1))
    await h.wait_for(lambda: any(h.ready(s) for s in cluster.api.objects("sandboxes")), 5)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("warm"))
    await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "warm")), 5)
    await cluster.kube.patch(R.WARMPOOLS, h.NS, "python", {"spec": {"replicas": 0}})
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("cold"))
    await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "cold")), 5)
    await h.wait_for(lambda: claims_counted(first, "cold") == 1, 5)
    assert claims_counted(first, "warm") == 1
    for name in ("warm", "cold"):
        annotations = cluster.api.get("sandboxclaims", h.NS, name)["metadata"]["annotations"]
        assert annotations["agents.x-k8s.io/creation-latency-recorded"] == "true"
    # Warm: marked with the choice of the member, so the bind still costs two claim writes.
    await h.wait_for(lambda: events(cluster, "SandboxAdopted")
                     and events(cluster, "SandboxProvisioned"), 5, "Events")
    await first.close()
    second = await make_controller()
    uids = {cluster.api.get("sandboxclaims", h.NS, name)["metadata"]["uid"]
            for name in ("warm", "cold")}
    await h.wait_for(lambda: second.claim_reconciler.reported >= uids, 5, "claims reconciled")
    assert claims_counted(second, "warm") == claims_counted(second, "cold") == 0


@pytest.mark.asyncio
async def test_an_expired_claim_gets_an_event(cluster, controller):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=0))
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c", lifecycle={
        "shutdownTime": h.soon(0.5)}))
    (event,) = await h.wait_for(lambda: events(cluster, "ClaimExpired"), 5, "Event")
    assert event["involvedObject"]["kind"] == "SandboxClaim"


@pytest.mark.asyncio
async def test_a_pool_that_cannot_schedule_reports_not_progressing(cluster, controller):
    cluster.kubelet.unschedulable = True
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=2))
    (event,) = await h.wait_for(lambda: events(cluster, "WarmPoolNotProgressing"), 5, "Event")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "SandboxWarmPool"
    cluster.kubelet.unschedulable = False
    for sb in cluster.api.objects("sandboxes"):  # held pods: delete them so new ones schedule
        await cluster.kube.delete(R.PODS, h.NS, sb["metadata"]["name"])
    await h.wait_for(lambda: events(cluster, "WarmPoolProgressing"), 10, "Event")
