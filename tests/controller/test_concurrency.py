"""Two controllers at once against one fake API server. Without leader election they race on
the same claims, and conditional writes keep every claim to one Sandbox and every Sandbox to
one claim. With leader election only one reconciles, and a standby takes over when it stops."""

from __future__ import annotations

import asyncio
import collections

import pytest

from controller import resources as R
from controller.errors import Conflict
from tests.controller import helpers as h


async def fill(cluster, replicas):
    await cluster.kube.create(R.TEMPLATES, h.NS, h.template())
    await cluster.kube.create(R.WARMPOOLS, h.NS, h.pool(replicas=replicas))
    await h.wait_for(lambda: sum(h.ready(s) for s in cluster.api.objects("sandboxes"))
                     == replicas, 10, "pool filled")


def check_one_to_one(cluster, claims):
    owners = collections.Counter()
    for sb in cluster.api.objects("sandboxes", h.NS):
        refs = [r for r in sb["metadata"].get("ownerReferences") or [] if r.get("controller")]
        assert len(refs) <= 1
        if refs and refs[0]["kind"] == "SandboxClaim":
            owners[refs[0]["uid"]] += 1
    for claim in claims:
        assert owners[claim["metadata"]["uid"]] == 1, claim["metadata"]["name"]
    names = [c["status"]["sandbox"]["name"] for c in claims]
    assert len(set(names)) == len(names)


@pytest.mark.asyncio
async def test_two_controllers_racing_bind_each_claim_to_one_distinct_sandbox(
        cluster, make_controller):
    await make_controller(identity="a", warm_wait=3.0)
    await make_controller(identity="b", warm_wait=3.0)
    await fill(cluster, 20)
    await asyncio.gather(*(cluster.kube.create(R.CLAIMS, h.NS, h.claim(f"c{i}"))
                           for i in range(20)))
    claims = await h.wait_for(lambda: (lambda cs: cs if len(cs) == 20 and all(
        h.ready(c) and c["status"].get("sandbox") for c in cs) else None)(
        cluster.api.objects("sandboxclaims", h.NS)), 20, "all claims bound")
    await asyncio.sleep(0.3)  # let any late duplicate adoption show itself
    claims = cluster.api.objects("sandboxclaims", h.NS)
    check_one_to_one(cluster, claims)


@pytest.mark.asyncio
async def test_racing_on_the_same_claims_at_the_same_instant(cluster, make_controller):
    """Both controllers reconcile the same two claims concurrently from identical caches, so
    they pick the same candidates: the conditional writes must sort it out."""
    a = await make_controller(identity="a", claim_workers=0)
    b = await make_controller(identity="b", claim_workers=0)
    await fill(cluster, 3)
    for name in ("x", "y"):
        await cluster.kube.create(R.CLAIMS, h.NS, h.claim(name))
    await h.wait_for(lambda: all(ctl.ctx.claims.get(h.NS, name) for ctl in (a, b)
                                 for name in ("x", "y")), 5, "claims cached by both")
    await asyncio.gather(*(ctl.claim_reconciler.reconcile((h.NS, name))
                           for name in ("x", "y") for ctl in (a, b)))
    claims = [cluster.api.get("sandboxclaims", h.NS, name) for name in ("x", "y")]
    assert all(h.ready(c) for c in claims)
    check_one_to_one(cluster, claims)
    assert cluster.api.statuses[("PATCH", "sandboxclaims", 409)] + \
        cluster.api.statuses[("PATCH", "sandboxes", 409)] > 0, "no race happened"


@pytest.mark.asyncio
async def test_only_the_leader_reconciles_and_a_standby_takes_over(cluster, make_controller):
    election = dict(leader_election=True, lease_duration=1.0, renew_deadline=0.7,
                    retry_period=0.1, lease_namespace=h.NS)
    first = await make_controller(identity="first", **election)
    second = await make_controller(wait=False, identity="second", **election)
    await fill(cluster, 2)
    await asyncio.sleep(0.3)
    assert first.leading.is_set() and not second.leading.is_set()
    assert second.ctx is None  # the standby has no caches and no workers
    lease = cluster.api.get("leases", h.NS, "kernelcube-controller")
    assert lease["spec"]["holderIdentity"] == "first"

    await first.close()  # a graceful stop releases the lease
    await asyncio.wait_for(second.leading.wait(), 3)
    lease = cluster.api.get("leases", h.NS, "kernelcube-controller")
    assert lease["spec"]["holderIdentity"] == "second"
    assert lease["spec"]["leaseTransitions"] == 1
    await cluster.kube.create(R.CLAIMS, h.NS, h.claim("after"))
    await h.wait_for(lambda: h.ready(cluster.api.get("sandboxclaims", h.NS, "after")), 5,
                     "the new leader serves claims")


@pytest.mark.asyncio
async def test_a_leader_that_cannot_renew_steps_down(cluster, make_controller):
    election = dict(leader_election=True, lease_duration=1.0, renew_deadline=0.5,
                    retry_period=0.1, lease_namespace=h.NS)
    ctl = await make_controller(identity="solo", **election)
    # Someone else grabs the lease (as after a partition): the leader must notice and stop. The
    # intruder writes as any client would, retrying when the leader's renewal got in between.
    while True:
        lease = cluster.api.get("leases", h.NS, "kernelcube-controller")
        lease["spec"]["holderIdentity"] = "intruder"
        try:
            await cluster.kube.replace(R.LEASES, h.NS, "kernelcube-controller", lease)
            break
        except Conflict:
            continue
    await h.wait_for(lambda: not ctl.leading.is_set(), 3, "stepped down")
    assert ctl.terms == 1
