"""The SandboxWarmPool reconciler against the fake API server: fill to N and refill after
claims, no over-creation under a burst of 50 claims while the watch lags, members stuck
unready replaced (but unschedulable ones held), Recreate vs OnReplenish, scale-down, status,
and deleting a pool removes only its unclaimed members."""

from __future__ import annotations

import asyncio

import pytest

from controller import naming as n
from controller import resources as R
from tests.controller import helpers as h


def members(cluster, pool="python"):
    out = []
    for sb in cluster.api.objects("sandboxes", h.NS):
        refs = sb["metadata"].get("ownerReferences") or []
        if refs and refs[0]["kind"] == "SandboxWarmPool" and refs[0]["name"] == pool:
            out.append(sb)
    return out


def ready_members(cluster, pool="python"):
    return [sb for sb in members(cluster, pool) if h.ready(sb)]


async def setup_pool(cluster, replicas=3, strategy=None, **template_spec):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template(**template_spec))
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=replicas, strategy=strategy))


@pytest.mark.asyncio
async def test_pool_fills_to_n_and_refills_after_claims(cluster, controller):
    await setup_pool(cluster, replicas=3)
    await h.wait_for(lambda: len(ready_members(cluster)) == 3, 5, "pool filled")
    pool = await h.wait_for(lambda: (lambda p: p if p.get("status", {}).get("readyReplicas") == 3
                                     else None)(cluster.api.get("sandboxwarmpools", h.NS,
                                                                "python")), 5)
    assert pool["status"] == {"replicas": 3, "readyReplicas": 3, "observedGeneration": 1,
                              "selector": n.pool_selector("python")}
    member = members(cluster)[0]
    assert member["metadata"]["labels"][n.CREATED_BY] == "controller"
    assert member["metadata"]["annotations"][n.TEMPLATE_REF_ANNOTATION] == "python"
    pod_spec = member["spec"]["podTemplate"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False and pod_spec["dnsPolicy"] == "None"
    pod = cluster.api.get("pods", h.NS, member["metadata"]["name"])
    assert pod["metadata"]["labels"][n.TEMPLATE_REF_HASH] == n.name_hash("python")

    for i in range(2):
        await cluster.kube.create(R.CLAIMS, h.NS, h.claim(f"c{i}"))
    await h.wait_for(lambda: all(h.ready(cluster.api.get("sandboxclaims", h.NS, f"c{i}"))
                                 for i in range(2)), 5, "claims bound")
    await h.wait_for(lambda: len(ready_members(cluster)) == 3, 5, "pool refilled")
    assert len(cluster.api.objects("sandboxes", h.NS)) == 5
    gauge = controller.metrics.pool_ready.labels(h.NS, "python")
    await h.wait_for(lambda: gauge._value.get() == 3, 5, "pool depth gauge")


@pytest.mark.asyncio
async def test_no_over_creation_under_a_burst_of_50_claims_with_a_lagging_watch(
        cluster, make_controller):
    """Upstream #1215: an informer that lags made pools over-create ~5x. Expectations stop it:
    the pool never holds more than `replicas` members, however the burst and the lag go."""
    await make_controller(warm_wait=5.0)
    cluster.api.watch_delay = 0.03
    await setup_pool(cluster, replicas=10)
    await h.wait_for(lambda: len(ready_members(cluster)) == 10, 10, "pool filled")
    peak = 0
    queue: asyncio.Queue = asyncio.Queue()
    cluster.api.store.subscribe(queue, ("agents.x-k8s.io", "sandboxes"))

    async def watch_peak():
        nonlocal peak
        while True:
            await queue.get()
            peak = max(peak, len(members(cluster)))

    watcher = asyncio.create_task(watch_peak())
    try:
        await asyncio.gather(*(cluster.kube.create(R.CLAIMS, h.NS, h.claim(f"c{i}"))
                               for i in range(50)))
        claims = await h.wait_for(lambda: (lambda cs: cs if len(cs) == 50 and all(
            h.ready(c) for c in cs) else None)(cluster.api.objects("sandboxclaims", h.NS)),
            30, "all 50 claims bound")
        await h.wait_for(lambda: len(ready_members(cluster)) == 10, 10, "pool refilled")
    finally:
        watcher.cancel()
        cluster.api.store.unsubscribe(queue)
    bound = [c["status"]["sandbox"]["name"] for c in claims]
    assert len(set(bound)) == 50
    assert peak <= 10, f"the pool over-created: {peak} members at once"
    total = len(cluster.api.objects("sandboxes", h.NS))
    assert total == 60  # 50 bound (warm or cold) + 10 warm, nothing extra


@pytest.mark.asyncio
async def test_members_stuck_unready_are_replaced(cluster, make_controller):
    await make_controller(readiness_grace=0.4)
    cluster.kubelet.hold = True
    await setup_pool(cluster, replicas=2)
    await h.wait_for(lambda: len(members(cluster)) == 2 and all(
        (cluster.api.get("pods", h.NS, sb["metadata"]["name"]) or {}).get("status", {}).get(
            "phase") == "Pending" for sb in members(cluster)), 5, "pods started, never Ready")
    first = {sb["metadata"]["name"] for sb in members(cluster)}
    cluster.kubelet.hold = False
    await h.wait_for(lambda: len(ready_members(cluster)) == 2, 5, "replacements Ready")
    assert not first & {sb["metadata"]["name"] for sb in members(cluster)}


@pytest.mark.asyncio
async def test_unschedulable_members_are_held_not_reaped(cluster, make_controller):
    await make_controller(readiness_grace=0.2)
    cluster.kubelet.unschedulable = True
    await setup_pool(cluster, replicas=2)
    await h.wait_for(lambda: len(members(cluster)) == 2 and all(
        any(c["type"] == "PodScheduled" and c["status"] == "False"
            for c in sb.get("status", {}).get("conditions", [])) for sb in members(cluster)), 5)
    names = {sb["metadata"]["name"] for sb in members(cluster)}
    await asyncio.sleep(0.6)  # three grace periods
    assert {sb["metadata"]["name"] for sb in members(cluster)} == names


@pytest.mark.asyncio
@pytest.mark.parametrize("strategy", ["Recreate", "OnReplenish"])
async def test_update_strategies(cluster, controller, strategy):
    await setup_pool(cluster, replicas=2, strategy=strategy)
    await h.wait_for(lambda: len(ready_members(cluster)) == 2, 5)
    before = {sb["metadata"]["name"] for sb in members(cluster)}
    template = cluster.api.get("sandboxtemplates", h.NS, "python")
    containers = template["spec"]["podTemplate"]["spec"]["containers"]
    containers[0]["image"] = "picod:v2"
    await cluster.kube.patch(R.TEMPLATES, h.NS, "python", {"spec": {"podTemplate": {"spec": {
        "containers": containers}}}})
    if strategy == "Recreate":
        await h.wait_for(lambda: len(ready_members(cluster)) == 2 and not before & {
            sb["metadata"]["name"] for sb in members(cluster)}, 5, "members recreated")
        images = {sb["spec"]["podTemplate"]["spec"]["containers"][0]["image"]
                  for sb in members(cluster)}
        assert images == {"picod:v2"}
    else:
        await asyncio.sleep(0.3)
        assert {sb["metadata"]["name"] for sb in members(cluster)} == before
        await cluster.kube.create(R.CLAIMS, h.NS, h.claim("c"))  # replenished with the new one
        await h.wait_for(lambda: len(ready_members(cluster)) == 2 and any(
            sb["spec"]["podTemplate"]["spec"]["containers"][0]["image"] == "picod:v2"
            for sb in members(cluster)), 5)


@pytest.mark.asyncio
async def test_scale_down_and_pool_deletion_spare_claimed_sandboxes(cluster, controller):
    await setup_pool(cluster, replicas=4)
    await h.wait_for(lambda: len(ready_members(cluster)) == 4, 5)
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("keep"))
    await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "keep")), 5)
    await cluster.kube.patch(R.WARMPOOLS, h.NS, "python", {"spec": {"replicas": 1}})
    await h.wait_for(lambda: len(members(cluster)) == 1, 5, "scaled down")
    await h.wait_for(lambda: cluster.api.get("sandboxwarmpools", h.NS, "python")["status"][
        "replicas"] == 1, 5)
    await cluster.kube.delete(R.WARMPOOLS, h.NS, "python")
    await h.wait_for(lambda: len(cluster.api.objects("sandboxes", h.NS)) == 1, 5)
    claimed = cluster.api.get("sandboxclaims", h.NS, "keep")["status"]["sandbox"]["name"]
    assert cluster.api.get("sandboxes", h.NS, claimed) is not None


@pytest.mark.asyncio
async def test_a_member_taken_while_recreate_deletes_survives_and_the_pool_refills(
        cluster, make_controller):
    """Under Recreate the pool deletes its stale members one by one; one taken out of the pool
    meanwhile (a gateway's or a claim's adoption, seen by the cache during the first delete)
    must not be deleted, and once it left, the pool must refill at once: its deletion
    expectation is crossed off by the member leaving, not left to time out."""
    ctl = await make_controller()
    await setup_pool(cluster, replicas=2, strategy="Recreate")
    await h.wait_for(lambda: len(ready_members(cluster)) == 2, 5, "pool filled")
    before = sorted(sb["metadata"]["name"] for sb in members(cluster))
    taken = before[1]  # the pool deletes in name order: this one goes second
    delete = ctl.kube.delete

    async def delete_after_a_take(res, namespace, name, **kwargs):
        if res is R.SANDBOXES and name == before[0]:
            sandbox = cluster.api.get("sandboxes", h.NS, taken)
            await cluster.kube.patch(R.SANDBOXES, h.NS, taken, {"metadata": {
                "resourceVersion": sandbox["metadata"]["resourceVersion"],
                "labels": {n.WARM_POOL_SANDBOX: None}, "ownerReferences": None}})
            await h.wait_for(lambda: n.WARM_POOL_SANDBOX not in ctl.ctx.sandboxes.get(
                h.NS, taken)["metadata"]["labels"], 5, "the cache saw the take")
        return await delete(res, namespace, name, **kwargs)

    ctl.kube.delete = delete_after_a_take
    template = cluster.api.get("sandboxtemplates", h.NS, "python")
    containers = template["spec"]["podTemplate"]["spec"]["containers"]
    containers[0]["image"] = "picod:v2"
    await cluster.kube.patch(R.TEMPLATES, h.NS, "python", {"spec": {"podTemplate": {"spec": {
        "containers": containers}}}})
    await h.wait_for(lambda: len(ready_members(cluster)) == 2 and not set(before) & {
        sb["metadata"]["name"] for sb in members(cluster)}, 5, "members recreated")
    assert {sb["spec"]["podTemplate"]["spec"]["containers"][0]["image"]
            for sb in members(cluster)} == {"picod:v2"}
    kept = cluster.api.get("sandboxes", h.NS, taken)
    assert kept is not None and not kept["metadata"].get("deletionTimestamp")


@pytest.mark.asyncio
async def test_an_expectation_that_times_out_wakes_the_pool(cluster, make_controller):
    """An expectation whose event was lost holds the pool back until it times out, and no
    longer: its expiry re-queues the pool (not the next resync)."""
    ctl = await make_controller(expectations_timeout=0.5)
    await setup_pool(cluster, replicas=1)
    await h.wait_for(lambda: len(ready_members(cluster)) == 1, 5, "pool filled")
    ctl.ctx.expectations.expect_delete((h.NS, "python"), "lost-event")
    await cluster.kube.patch(R.WARMPOOLS, h.NS, "python", {"spec": {"replicas": 3}})
    await h.wait_for(lambda: len(ready_members(cluster)) == 3, 5, "pool scaled up")


@pytest.mark.asyncio
async def test_a_deleted_member_that_leaves_the_pool_before_it_is_gone_counts_as_gone(
        cluster, controller):
    """A member the pool deleted lingers (someone's finalizer) and is taken out of the pool
    before it goes: leaving is the deletion the pool expected, so it refills at once, not when
    the expectation times out (its DELETED event names no pool any more)."""
    await setup_pool(cluster, replicas=1, strategy="Recreate")
    await h.wait_for(lambda: len(ready_members(cluster)) == 1, 5, "pool filled")
    name = members(cluster)[0]["metadata"]["name"]
    await cluster.kube.patch(R.SANDBOXES, h.NS, name,
                             {"metadata": {"finalizers": ["example.com/hold"]}})
    template = cluster.api.get("sandboxtemplates", h.NS, "python")
    containers = template["spec"]["podTemplate"]["spec"]["containers"]
    containers[0]["image"] = "picod:v2"
    await cluster.kube.patch(R.TEMPLATES, h.NS, "python", {"spec": {"podTemplate": {"spec": {
        "containers": containers}}}})
    await h.wait_for(lambda: cluster.api.get("sandboxes", h.NS, name)["metadata"].get(
        "deletionTimestamp"), 5, "the stale member deleted")
    await cluster.kube.patch(R.SANDBOXES, h.NS, name, {"metadata": {
        "labels": {n.WARM_POOL_SANDBOX: None}, "ownerReferences": None}})
    await h.wait_for(lambda: n.WARM_POOL_SANDBOX not in controller.ctx.sandboxes.get(
        h.NS, name)["metadata"]["labels"], 5, "the cache saw it leave")
    await cluster.kube.patch(R.SANDBOXES, h.NS, name, {"metadata": {"finalizers": None}})
    await h.wait_for(lambda: cluster.api.get("sandboxes", h.NS, name) is None, 5, "gone")
    await h.wait_for(lambda: len(ready_members(cluster)) == 1, 5, "pool refilled")
