"""Pure decisions, without any server: NameHash, conditions, warm-pool planning, candidate
choice, claim injection rules and expiry, pod drift patches, sandbox status, NetworkPolicy."""

from __future__ import annotations

import datetime

import pytest

from controller import claim_logic as cl
from controller import conditions as cond
from controller import naming as n
from controller import sandbox_logic as sl
from controller import template_logic as tl
from controller import warmpool_logic as wl
from controller.expectations import Expectations

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def test_name_hash_is_fnv1a_32():
    # Reference vectors of 32-bit FNV-1a.
    assert n.name_hash("") == "811c9dc5"
    assert n.name_hash("a") == "e40c292c"
    assert n.name_hash("foobar") == "bf9cf968"
    assert n.pool_selector("p") == f"agents.x-k8s.io/warm-pool-sandbox={n.name_hash('p')}"


def test_condition_merge_keeps_transition_time_when_status_unchanged():
    old = [{"type": "Ready", "status": "False", "reason": "A", "lastTransitionTime": "t0"},
           {"type": "Other", "status": "True", "lastTransitionTime": "t0"}]
    same = cond.merge(old, [cond.make("Ready", False, "B")], T0)
    assert same[0]["lastTransitionTime"] == "t0" and same[0]["reason"] == "B"
    assert [c["type"] for c in same] == ["Ready", "Other"]
    flipped = cond.merge(old, [cond.make("Ready", True, "C")], T0, drop=("Other",))
    assert flipped == [{"type": "Ready", "status": "True", "reason": "C", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    assert cond.parse_time("2026-01-01T00:00:00Z") == T0
    assert cond.parse_time("2026-01-01T00:00:00.5+00:00") > T0
    assert cond.parse_time("garbage") is None


def member(name, ready=True, age=10.0, order=0, **kw):
    return wl.Member(name, ready, T0 - datetime.timedelta(seconds=age), order, **kw)


def plan(replicas, members, **kw):
    args = dict(recreate=False, now=T0, readiness_grace=60, recheck=30, max_batch=300)
    args.update(kw)
    return wl.plan(replicas, members, **args)


def test_plan_fills_the_deficit_and_counts_terminating_members():
    assert plan(3, []).create == 3
    assert plan(3, [member("a"), member("b", deleting=True)]).create == 1
    assert plan(500, []).create == 300  # max batch size


def test_plan_scales_down_unready_first_then_newest():
    members = [member("old", age=50, order=1), member("new", age=5, order=3),
               member("unready", ready=False, age=20, order=2)]
    assert plan(1, members).delete == ["new", "unready"]
    assert plan(2, members).delete == ["unready"]


def test_plan_replaces_stuck_members_but_holds_unschedulable_ones():
    stuck = member("stuck", ready=False, age=61)
    held = member("held", ready=False, age=600, held=True)
    young = member("young", ready=False, age=10)
    result = plan(3, [stuck, held, young])
    assert result.delete == ["stuck"]
    assert result.create == 0  # the stuck one is replaced once its deletion is observed
    assert result.requeue_after == 30  # min(recheck 30, grace left for "young" 50)


def test_plan_deletes_stale_members_only_under_recreate():
    members = [member("a", stale=True), member("b")]
    assert plan(2, members).delete == []
    assert plan(2, members, recreate=True).delete == ["a"]


def test_slow_start_batches():
    assert wl.slow_start(0) == []
    assert wl.slow_start(1) == [1]
    assert wl.slow_start(10) == [1, 2, 4, 3]


def test_expectations_gate_until_observed_or_timed_out():
    clock = [0.0]
    exp = Expectations(timeout=5, clock=lambda: clock[0])
    exp.expect_create("p", "a")
    exp.expect_create("p", "b")
    assert not exp.satisfied("p")
    assert exp.observe_create("p", "a") and not exp.observe_create("p", "zzz")
    assert exp.pending("p") == (1, 0)
    clock[0] = 6
    assert exp.satisfied("p")  # a lost event does not stall the pool forever
    exp.expect_delete("p", "c")
    assert exp.pending_deletes("p") == {"c"}
    exp.observe_delete("p", "c")
    assert exp.satisfied("p")


def test_candidates_ready_first_spread_over_nodes_then_oldest():
    c = cl.Candidate
    options = [c("a1", True, True, "node-a", 1), c("a2", True, True, "node-a", 2),
               c("a3", True, True, "node-a", 3), c("b1", True, True, "node-b", 0),
               c("u", False, True, "node-b", -1), c("x", True, True, "", 4)]
    # node-a has the most Ready members left, so it gives first; then a tie (2 vs 1)...
    assert cl.choose_candidates(options, 3) == ["a1", "a2", "b1"]
    assert cl.choose_candidates(options, 10)[-1] == "x"
    assert "u" not in cl.choose_candidates(options, 10)
    assert cl.choose_candidates(options, 10, adopt_unready=True)[-1] == "u"
    unscheduled = [c("n2", True, True, "", 2), c("n1", True, True, "", 1)]
    assert cl.choose_candidates(unscheduled, 2) == ["n1", "n2"]


def a_claim(**spec):
    return {"metadata": {"name": "c", "namespace": "ns", "uid": "u1", "generation": 1,
                         "resourceVersion": "7"},
            "spec": {"warmPoolRef": {"name": "p"}, **spec}}


def a_template(**spec):
    return {"metadata": {"name": "t", "namespace": "ns", "uid": "t1"},
            "spec": {"podTemplate": {"metadata": {"labels": {"team": "x"}}, "spec": {
                "containers": [{"name": "main", "env": [{"name": "A", "value": "1"}]},
                               {"name": "side", "envFrom": [{"configMapRef": {"name": "m"}}]}]}},
                     **spec}}


@pytest.mark.parametrize("labels, annotations, ok", [
    ({"sandbox.users.io/team": "y"}, {}, True),
    ({"team.sandbox.users.io/x": "y"}, {}, True),
    ({"other.io/team": "y"}, {}, False),
    ({"app": "sandbox-router"}, {}, False),
    ({}, {"note": "free"}, True),
    ({}, {"kubernetes.io/x": "y"}, False),
    ({}, {"agents.x-k8s.io/pod-name": "y"}, False),
    ({}, {n.SAFE_TO_EVICT: "false"}, True),
])
def test_additional_pod_metadata_rules(labels, annotations, ok):
    claim = a_claim(additionalPodMetadata={"labels": labels, "annotations": annotations})
    if ok:
        cl.validate_pod_metadata(claim, a_template()["spec"], ("sandbox.users.io",))
    else:
        with pytest.raises(cl.ClaimRejected) as info:
            cl.validate_pod_metadata(claim, a_template()["spec"], ("sandbox.users.io",))
        assert info.value.reason == "InvalidMetadata"


def test_additional_pod_metadata_may_not_contradict_the_template():
    spec = a_template()["spec"]
    spec["podTemplate"]["metadata"]["labels"]["sandbox.users.io/t"] = "a"
    claim = a_claim(additionalPodMetadata={"labels": {"sandbox.users.io/t": "b"}})
    with pytest.raises(cl.ClaimRejected):
        cl.validate_pod_metadata(claim, spec, ("sandbox.users.io",))


def test_env_injection_policies():
    spec = a_template()["spec"]["podTemplate"]["spec"]
    new = [{"name": "B", "value": "2"}]
    with pytest.raises(cl.ClaimRejected, match="does not allow"):
        cl.inject_env(spec, new, "Disallowed")
    added = cl.inject_env(spec, new, "Allowed")
    assert added["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert spec["containers"][0]["env"] == [{"name": "A", "value": "1"}]  # input untouched
    with pytest.raises(cl.ClaimRejected, match="set by the template"):
        cl.inject_env(spec, [{"name": "A", "value": "9"}], "Allowed")
    overridden = cl.inject_env(spec, [{"name": "A", "value": "9"}], "Overrides")
    assert overridden["containers"][0]["env"] == [{"name": "A", "value": "9"}]
    with pytest.raises(cl.ClaimRejected, match="envFrom"):
        cl.inject_env(spec, [{"name": "B", "containerName": "side"}], "Allowed")
    with pytest.raises(cl.ClaimRejected, match="no container"):
        cl.inject_env(spec, [{"name": "B", "containerName": "nope"}], "Overrides")


def test_volume_claim_template_policies():
    base = [{"metadata": {"name": "data"}, "spec": {"a": 1}}]
    mine = [{"metadata": {"name": "data"}, "spec": {"a": 2}}]
    with pytest.raises(cl.ClaimRejected):
        cl.merge_volume_claim_templates(base, mine, "Disallowed")
    with pytest.raises(cl.ClaimRejected):
        cl.merge_volume_claim_templates(base, mine, "Allowed")
    assert cl.merge_volume_claim_templates(base, mine, "Overrides") == mine


def test_claim_deadline_is_the_earlier_of_shutdown_and_ttl_after_finished():
    claim = a_claim(lifecycle={"shutdownTime": "2026-01-01T01:00:00Z",
                               "ttlSecondsAfterFinished": 60})
    assert cl.deadline(claim) == T0 + datetime.timedelta(hours=1)
    claim["status"] = {"conditions": [{"type": "Finished", "status": "True",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    assert cl.deadline(claim) == T0 + datetime.timedelta(seconds=60)
    assert cl.deadline(a_claim()) is None


def test_adoption_patch_is_conditional_and_replaces_owners():
    sandbox = {"metadata": {"name": "p-abcde", "namespace": "ns", "resourceVersion": "42",
                            "labels": {n.WARM_POOL_SANDBOX: "h"},
                            "ownerReferences": [{"kind": "SandboxWarmPool", "uid": "pool"}]}}
    claim = a_claim(additionalPodMetadata={"labels": {"sandbox.users.io/a": "b"}})
    claim["metadata"]["annotations"] = {n.TRACE_CONTEXT: "trace"}
    patch = cl.adoption_patch(claim, sandbox)
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "42"
    assert meta["labels"][n.WARM_POOL_SANDBOX] is None and meta["labels"][n.LAUNCH_TYPE] == "warm"
    assert meta["labels"][n.CLAIM_UID] == "u1"
    assert [r["uid"] for r in meta["ownerReferences"]] == ["u1"]
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["annotations"] == {n.POD_NAME_ANNOTATION: "p-abcde", n.TRACE_CONTEXT: "trace"}
    pod_meta = patch["spec"]["podTemplate"]["metadata"]
    assert pod_meta["labels"] == {"sandbox.users.io/a": "b"}
    assert pod_meta["annotations"] == {n.SAFE_TO_EVICT: None}


def test_cold_sandbox_is_named_after_the_claim_with_secure_defaults():
    template = a_template(envVarsInjectionPolicy="Allowed")
    body = cl.cold_sandbox(a_claim(env=[{"name": "B", "value": "2"}]), template, ("9.9.9.9",))
    assert body["metadata"]["name"] == "c"
    assert body["metadata"]["labels"][n.LAUNCH_TYPE] == "cold"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    pod = body["spec"]["podTemplate"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["dnsPolicy"] == "None" and pod["dnsConfig"] == {"nameservers": ["9.9.9.9"]}
    assert {"name": "B", "value": "2"} in pod["containers"][0]["env"]
    unmanaged = a_template(networkPolicyManagement="Unmanaged")
    assert "dnsPolicy" not in cl.cold_sandbox(a_claim(), unmanaged, ())["spec"]["podTemplate"][
        "spec"]


def test_bound_status_forwards_ready_with_the_claims_generation():
    sandbox = {"metadata": {"name": "s"}, "status": {"podIPs": ["10.0.0.1"], "conditions": [
        {"type": "Ready", "status": "True", "reason": "DependenciesReady",
         "lastTransitionTime": "t", "observedGeneration": 5}]}}
    claim = a_claim()
    claim["metadata"]["generation"] = 2
    status = cl.bound_status(claim, sandbox, T0)
    assert status["sandbox"] == {"name": "s", "podIPs": ["10.0.0.1"]}
    assert status["conditions"] == [{"type": "Ready", "status": "True",
                                     "reason": "DependenciesReady", "lastTransitionTime": "t",
                                     "observedGeneration": 2}]


def a_sandbox(**spec):
    return {"metadata": {"name": "s", "namespace": "ns", "uid": "s1", "generation": 1,
                         "labels": {n.WARM_POOL_SANDBOX: "h", "other": "x"}},
            "spec": {"podTemplate": {"metadata": {"labels": {"app": "k", n.CLAIM_UID: "evil"},
                                                  "annotations": {"note": "n"}},
                                     "spec": {"containers": [{"name": "c", "ports": [
                                         {"containerPort": 80}]}],
                                              "volumes": [{"name": "data", "emptyDir": {}}]}},
                     "volumeClaimTemplates": [{"metadata": {"name": "data"}}], **spec}}


def test_desired_pod_filters_system_keys_and_mounts_pvcs():
    pod = sl.desired_pod(a_sandbox())
    labels = pod["metadata"]["labels"]
    assert labels == {"app": "k", n.SANDBOX_NAME_HASH: n.name_hash("s"), n.WARM_POOL_SANDBOX: "h"}
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Sandbox"
    assert pod["spec"]["volumes"] == [{"name": "data",
                                       "persistentVolumeClaim": {"claimName": "data-s"}}]
    assert pod["metadata"]["annotations"][n.PROPAGATED_LABELS] == "app"


def test_pod_drift_patch_removes_keys_no_longer_propagated():
    sandbox = a_sandbox()
    pod = sl.desired_pod(sandbox)
    assert sl.pod_metadata_patch(sandbox, pod) is None
    del sandbox["metadata"]["labels"][n.WARM_POOL_SANDBOX]  # adopted: leaves the pool
    del sandbox["spec"]["podTemplate"]["metadata"]["labels"]["app"]
    patch = sl.pod_metadata_patch(sandbox, pod)
    assert patch["metadata"]["labels"] == {n.WARM_POOL_SANDBOX: None, "app": None}


def running_pod(ready=True, phase="Running"):
    return {"metadata": {"name": "s"}, "spec": {"nodeName": "n1"}, "status": {
        "phase": phase, "podIPs": [{"ip": "10.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                       {"type": "PodScheduled", "status": "True"}]}}


def test_sandbox_status_from_the_pod():
    def status(pod, **kw):
        args = dict(service_ok=True, has_service=False, cluster_domain="cluster.local", when=T0)
        args.update(kw)
        return sl.compute_status(a_sandbox(), pod, **args)

    ready = status(running_pod())
    assert reason({"status": ready}) == "DependenciesReady"
    assert ready["podIPs"] == ["10.0.0.1"] and ready["nodeName"] == "n1"
    assert [c["type"] for c in ready["conditions"]] == ["Ready", "Suspended", "PodScheduled"]
    assert reason({"status": status(running_pod(ready=False))}) == "DependenciesNotReady"
    assert reason({"status": status(None)}) == "DependenciesNotReady"
    assert reason({"status": status(running_pod(), service_ok=False)}) == "DependenciesNotReady"
    done = status(running_pod(phase="Succeeded"))
    assert reason({"status": done}) == "PodSucceeded"
    assert cond.is_true(done["conditions"], "Finished")
    assert reason({"status": status(running_pod(), multiple_pods=True)}) == "MultiplePods"
    with_service = status(running_pod(), has_service=True)
    assert with_service["serviceFQDN"] == "s.ns.svc.cluster.local"
    suspended = sl.compute_status(a_sandbox(operatingMode="Suspended"), None, service_ok=True,
                                  has_service=False, cluster_domain="c", when=T0)
    assert reason({"status": suspended}) == "SandboxSuspended"
    assert cond.is_true(suspended["conditions"], "Suspended")
    assert "podIPs" not in suspended


def test_status_patch_only_carries_changes():
    assert sl.status_patch({"a": 1}, {"a": 1}) is None
    assert sl.status_patch({"a": 1, "b": 2}, {"a": 3}) == {"a": 3, "b": None}


def test_service_ports_include_sidecar_init_containers():
    spec = {"containers": [{"ports": [{"containerPort": 80, "name": "web"}]}],
            "initContainers": [{"restartPolicy": "Always", "ports": [{"containerPort": 90}]},
                               {"ports": [{"containerPort": 99}]}]}
    assert [p["port"] for p in sl.service_ports(spec)] == [80, 90]


def test_staleness_ignores_metadata_only_template_edits():
    template = a_template()
    pool = {"metadata": {"name": "p", "namespace": "ns", "uid": "p1"}}
    fresh = wl.build_member(pool, template, nameservers=("1.1.1.1",), safe_to_evict=True)
    assert not wl.is_stale(fresh, template, ("1.1.1.1",))
    relabelled = a_template()
    relabelled["metadata"]["labels"] = {"new": "label"}
    assert not wl.is_stale(fresh, relabelled, ("1.1.1.1",))
    changed = a_template()
    changed["spec"]["podTemplate"]["spec"]["containers"][0]["image"] = "new"
    assert wl.is_stale(fresh, changed, ("1.1.1.1",))
    assert fresh["metadata"]["generateName"] == "p-"
    assert fresh["spec"]["podTemplate"]["metadata"]["annotations"][n.SAFE_TO_EVICT] == "true"


def test_default_network_policy_is_secure_and_custom_rules_are_verbatim():
    template = a_template()
    policy = tl.desired_network_policy(template, "gw-ns", {"app": "gateway"})
    assert policy["metadata"]["name"] == "t-network-policy"
    assert policy["spec"]["podSelector"] == {"matchLabels": {n.TEMPLATE_REF_HASH: n.name_hash("t")}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    source = policy["spec"]["ingress"][0]["from"][0]
    assert source["podSelector"] == {"matchLabels": {"app": "gateway"}}
    blocks = [to["ipBlock"] for to in policy["spec"]["egress"][0]["to"]]
    assert "169.254.0.0/16" in blocks[0]["except"] and "10.0.0.0/8" in blocks[0]["except"]
    custom = tl.desired_network_policy(a_template(networkPolicy={"ingress": [], "egress": [
        {"to": [{"ipBlock": {"cidr": "1.2.3.4/32"}}]}]}), "g", {})
    assert custom["spec"]["ingress"] == [] and len(custom["spec"]["egress"]) == 1
    assert tl.desired_network_policy(a_template(networkPolicyManagement="Unmanaged"), "g",
                                     {}) is None


def reason(obj):
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c.get("reason")
    return None
