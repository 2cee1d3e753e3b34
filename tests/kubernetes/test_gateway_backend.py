"""The gateway's Kubernetes backend end to end: `kernelcube --backend kubernetes` processes against
a fake cluster (real HTTP API server and watches, KernelCube's controller, pods running PicoD).

Covers: CodeInterpreters as templates and sessions on pods through /v1/execute; the fast-path
claim (one conditional patch; the pool refills) and its contention across two replicas; the
fallback through a SandboxClaim and the cold Sandbox of a CR without a pool; every session
through a claim with `warm_adoption` off; scheduling and image failures surfacing at once with
their cause; two gateways on one Redis serving each other's sessions (WebSocket included) and a
restart that loses nothing; the unmodified agentcube-sdk; the shared identity Secret.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import threading
import time

import redis
import requests

from kernel_gateway_ext.kube import KubeApi
from kernel_gateway_ext.providers import k8s_objects as k
from kernel_gateway_ext.providers.kubernetes import KubeSettings, load_identity
from tests.kubernetes.cluster import Cluster, code_interpreter, install
from tests.support.channels import KernelChannels
from tests.support.gateway import HEADERS, TOKEN, run_kernelcube
from tests.support.waiting import wait_for


def warm_ready(cluster: Cluster, pool: str) -> list[dict]:
    return [s for s in cluster.objects("sandboxes") if k.is_warm_member(s, pool, pool) and k.is_ready(s)]


def warm_members(cluster: Cluster, pool: str) -> list[dict]:
    return [s for s in cluster.objects("sandboxes") if k.is_warm_member(s, pool, pool)]


def wait_template(gateway, name: str) -> None:
    """Until the gateway's watch has seen a CodeInterpreter (its kernelspec is listed)."""
    def listed():
        specs = requests.get(gateway.url + "/api/kernelspecs", headers=HEADERS, timeout=10).json()["kernelspecs"]
        return name in specs
    wait_for(listed, what=f"template {name}")


def new_session(gateway, template: str, timeout: float = 60) -> requests.Response:
    return requests.post(gateway.url + "/v1/sessions", json={"template": template}, headers=HEADERS, timeout=timeout)


def execute(gateway, session_id: str, code: str, language: str = "python") -> dict:
    response = requests.post(gateway.url + "/v1/execute", headers=HEADERS, timeout=60,
                             json={"code": code, "session_id": session_id, "language": language})
    assert response.status_code == 200, response.text
    return response.json()


def result(execution: dict) -> str:
    assert execution["status"] == "ok", execution
    return execution["results"][0]["text/plain"]


def stored_kind(cluster: Cluster, session_id: str) -> str:
    """How the session's Sandbox was had: its launch type, if the session holds it directly."""
    found = [s for s in cluster.objects("sandboxes")
             if (s["metadata"].get("labels") or {}).get(k.SESSION_ID) == session_id]
    return found[0]["metadata"]["labels"][k.LAUNCH_TYPE] if found else "claim"


def stored(redis_url: str, session_id: str) -> dict:
    raw = redis.Redis.from_url(redis_url).get(f"session:{session_id}")
    assert raw is not None
    return json.loads(raw)


def test_code_interpreter_sessions_run_on_pods(cluster, gateways):
    gateway = gateways()
    install(cluster, code_interpreter("py", warm_pool_size=2))
    wait_for(lambda: len(warm_ready(cluster, "py")) == 2, what="a warm pool of 2")

    started = time.monotonic()
    created = new_session(gateway, "py")
    elapsed = time.monotonic() - started
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    assert elapsed < 1.0  # a warm pod, taken with one patch

    # The Sandbox left its pool as the controller's adoption would leave it, for this session.
    mine = wait_for(lambda: [s for s in cluster.objects("sandboxes")
                             if (s["metadata"].get("labels") or {}).get(k.SESSION_ID) == session_id])
    labels = mine[0]["metadata"]["labels"]
    assert labels[k.LAUNCH_TYPE] == "warm" and k.WARM_POOL_SANDBOX not in labels
    assert labels[k.WORKLOAD_NAME] == "py"
    # Warm pods are Ready only once PicoD answers (the controller's template probes /health).
    probe = mine[0]["spec"]["podTemplate"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert [r["kind"] for r in mine[0]["metadata"]["ownerReferences"]] == ["CodeInterpreter"]
    wait_for(lambda: len(warm_ready(cluster, "py")) == 2, what="the pool to refill")

    # The session's kernel runs in that pod: state persists between calls.
    assert result(execute(gateway, session_id, "x = 21\nx")) == "21"
    assert result(execute(gateway, session_id, "x * 2")) == "42"
    assert execute(gateway, session_id, "echo hi from $(hostname)", "bash")["stdout"].startswith("hi from")
    assert requests.get(gateway.url + "/health/ready", timeout=10).status_code == 200

    name = mine[0]["metadata"]["name"]
    alive = cluster.runtime.alive()
    assert requests.delete(f"{gateway.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=30).status_code == 204
    wait_for(lambda: cluster.get("sandboxes", name) is None, what="the Sandbox to be deleted")
    wait_for(lambda: cluster.runtime.alive() < alive, what="the pod's PicoD to stop")

    # Watches that end (an API server restart), or whose history is gone (410), are resumed or
    # relisted: new warm members are still seen and taken.
    cluster.call(cluster.api.compact)
    taken = [new_session(gateway, "py").json()["session_id"]]
    wait_for(lambda: len(warm_ready(cluster, "py")) == 2, what="a member made after the compaction")
    taken += [new_session(gateway, "py").json()["session_id"] for _ in range(2)]
    assert [stored_kind(cluster, sid) for sid in taken] == ["warm"] * 3
    for sid in taken:
        requests.delete(f"{gateway.url}/v1/sessions/{sid}", headers=HEADERS, timeout=30)

    # A name the cluster does not know is the usual 404.
    missing = new_session(gateway, "nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]

    # With the in-memory store nothing may outlive the gateway: stopping it deletes the
    # Sandboxes of its sessions.
    wait_for(lambda: len(warm_ready(cluster, "py")) == 2, what="the pool to refill")
    last = new_session(gateway, "py").json()["session_id"]
    name = wait_for(lambda: [s["metadata"]["name"] for s in cluster.objects("sandboxes")
                             if (s["metadata"].get("labels") or {}).get(k.SESSION_ID) == last])[0]
    gateway.stop()
    wait_for(lambda: cluster.get("sandboxes", name) is None, what="the Sandbox to go with the gateway")


def test_fast_path_under_contention_hands_each_sandbox_out_once(cluster, gateways, redis_server):
    """20 sessions at once on a pool of 5, through two replicas: every session gets a Sandbox of
    its own; those the warm members could not serve went through SandboxClaims."""
    first, second = gateways(redis_server.url), gateways(redis_server.url)
    install(cluster, code_interpreter("busy", warm_pool_size=5, args=("--no-kernel",)))
    wait_for(lambda: len(warm_ready(cluster, "busy")) == 5, what="a warm pool of 5")

    barrier = threading.Barrier(20)

    def one(i: int) -> requests.Response:
        barrier.wait()
        return new_session(first if i % 2 else second, "busy")

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(one, range(20)))
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    sessions = [r.json()["session_id"] for r in responses]
    # A drained pool refills in the cluster: the replicas stay ready meanwhile.
    assert requests.get(first.url + "/health/ready", timeout=10).status_code == 200
    records = {sid: stored(redis_server.url, sid) for sid in sessions}
    sandboxes = [info["sandboxId"] for info in records.values()]
    assert len(set(sandboxes)) == 20, "a Sandbox was handed out twice"

    by_name = {s["metadata"]["name"]: s for s in cluster.objects("sandboxes")}
    claims = {c["metadata"]["name"]: c for c in cluster.objects("sandboxclaims")}
    fast = 0
    for sid, info in records.items():
        sandbox = by_name[info["sandboxId"]]
        if info["kind"] == "Sandbox":  # the fast path: the Sandbox carries the session
            fast += 1
            assert sandbox["metadata"]["labels"][k.SESSION_ID] == sid
        else:  # the fallback: the claim carries it and owns the Sandbox
            claim = claims[info["name"]]
            assert claim["metadata"]["labels"][k.SESSION_ID] == sid
            assert sandbox["metadata"]["ownerReferences"][0]["uid"] == claim["metadata"]["uid"]
    assert 1 <= fast <= 20 and fast + sum(1 for i in records.values() if i["kind"] == "SandboxClaim") == 20
    print(f"{fast} sessions took the fast path, {20 - fast} went through SandboxClaims")
    # Each session reaches its own pod.
    for i, sid in enumerate(sessions):
        out = execute(first if i % 3 else second, sid, "echo $PWD", "bash")
        assert out["exit_code"] == 0, out
    for sid in sessions:
        requests.delete(f"{first.url}/v1/sessions/{sid}", headers=HEADERS, timeout=30)


def test_fallback_through_a_claim_and_a_cold_sandbox(cluster, gateways, redis_server):
    gateway = gateways(redis_server.url)
    install(cluster, code_interpreter("fb", warm_pool_size=1, args=("--no-kernel",)))
    wait_for(lambda: len(warm_ready(cluster, "fb")) == 1, what="a warm pool of 1")
    warm = new_session(gateway, "fb").json()["session_id"]
    assert stored(redis_server.url, warm)["kind"] == "Sandbox"

    # The pool is empty now (its refill is not Ready yet): the next session goes through a claim.
    claimed = new_session(gateway, "fb")
    assert claimed.status_code == 201, claimed.text
    info = stored(redis_server.url, claimed.json()["session_id"])
    assert info["kind"] == "SandboxClaim"
    claim = cluster.get("sandboxclaims", info["name"])
    assert claim["status"]["sandbox"]["name"] == info["sandboxId"]
    assert claim["spec"]["lifecycle"]["shutdownPolicy"] == "Delete"
    assert execute(gateway, claimed.json()["session_id"], "echo claimed", "bash")["stdout"] == "claimed\n"
    # Its pod is lost (the claim then gets a new Sandbox: another pod, without the session's
    # state): the session is over, said with a 410, and its claim is deleted.
    cluster.delete("sandboxes", info["sandboxId"])

    def call() -> int:
        return requests.post(gateway.url + "/v1/execute", headers=HEADERS, timeout=30, json={
            "code": "echo", "language": "bash", "session_id": claimed.json()["session_id"]}).status_code
    statuses: list[int] = []
    wait_for(lambda: statuses.append(call()) or statuses[-1] != 200, what="the session to end")
    assert statuses[-1] == 410, statuses
    wait_for(lambda: cluster.get("sandboxclaims", info["name"]) is None, what="the claim to be deleted")

    # A CodeInterpreter without a warm pool: the gateway makes the session's own Sandbox.
    install(cluster, code_interpreter("cold", args=("--no-kernel",)))
    wait_template(gateway, "cold")
    cold = new_session(gateway, "cold")
    assert cold.status_code == 201, cold.text
    info = stored(redis_server.url, cold.json()["session_id"])
    sandbox = cluster.get("sandboxes", info["sandboxId"])
    assert info["kind"] == "Sandbox" and sandbox["metadata"]["labels"][k.LAUNCH_TYPE] == "cold"
    env = {e["name"]: e.get("value") for e in sandbox["spec"]["podTemplate"]["spec"]["containers"][0]["env"]}
    assert env["PICOD_AUTH_PUBLIC_KEY"] == cluster.secret_public_pem()
    assert execute(gateway, cold.json()["session_id"], "echo cold", "bash")["stdout"] == "cold\n"
    requests.delete(f"{gateway.url}/v1/sessions/{cold.json()['session_id']}", headers=HEADERS, timeout=30)
    wait_for(lambda: cluster.get("sandboxes", info["sandboxId"]) is None, what="the cold Sandbox to be deleted")

    # Deleting a CodeInterpreter ends its sessions, as upstream: their Sandboxes go with it,
    # and the next call on one says its sandbox is gone.
    warm_sandbox = stored(redis_server.url, warm)["sandboxId"]
    cluster.delete("codeinterpreters", "fb")
    wait_for(lambda: cluster.get("sandboxes", warm_sandbox) is None, what="the session's Sandbox to go with its CR")
    gone = requests.post(gateway.url + "/v1/execute", json={"code": "echo", "language": "bash", "session_id": warm},
                         headers=HEADERS, timeout=30)
    assert gone.status_code == 410 and gone.json()["code"] == "SANDBOX_GONE", gone.text


def test_without_warm_adoption_every_session_goes_through_a_claim(cluster, gateways, redis_server):
    """`warm_adoption` off (KERNELCUBE_WARM_ADOPTION=false): no fast path, even with Ready warm
    members; the controller binds the session's SandboxClaim to one of them."""
    gateway = gateways(redis_server.url, extra=("--KernelCubeApp.warm_adoption=false",))
    install(cluster, code_interpreter("claimonly", warm_pool_size=2, args=("--no-kernel",)))
    wait_for(lambda: len(warm_ready(cluster, "claimonly")) == 2, what="a warm pool of 2")
    created = new_session(gateway, "claimonly")
    assert created.status_code == 201, created.text
    info = stored(redis_server.url, created.json()["session_id"])
    assert info["kind"] == "SandboxClaim"
    sandbox = cluster.get("sandboxes", info["sandboxId"])
    assert sandbox["metadata"]["labels"][k.LAUNCH_TYPE] == "warm"  # a warm member, bound by the controller
    assert execute(gateway, created.json()["session_id"], "echo bound", "bash")["stdout"] == "bound\n"
    requests.delete(f"{gateway.url}/v1/sessions/{created.json()['session_id']}", headers=HEADERS, timeout=30)
    cluster.delete("codeinterpreters", "claimonly")


def test_a_spec_change_reaches_new_sessions_only(cluster, gateways, redis_server):
    """Right after a CodeInterpreter's image changes, before the controller has replaced the
    warm members of the old image, a new session does not take one of them (it waits on a
    claim); once the controller caught up, sessions get the new image; a running session keeps
    its pod."""
    gateway = gateways(redis_server.url)
    install(cluster, code_interpreter("roll", warm_pool_size=2, args=("--no-kernel",), image="picod:1"))
    wait_for(lambda: len(warm_ready(cluster, "roll")) == 2, what="a warm pool of 2")
    before = new_session(gateway, "roll").json()["session_id"]
    wait_for(lambda: len(warm_ready(cluster, "roll")) == 2, what="the pool to refill")
    cluster.run(cluster.controller.close())  # the controller is slow to react, say
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            cluster.patch("codeinterpreters", "roll", {"spec": {"template": {"image": "picod:2"}}})
            time.sleep(0.3)  # the gateway's watch has seen the change
            pending = pool.submit(new_session, gateway, "roll")
            time.sleep(0.3)
            assert not pending.done(), "a session took a warm member of the old image"
        finally:
            cluster.run(cluster.controller.__aenter__())
        waited = pending.result(30)
    assert waited.status_code == 201, waited.text

    def image(session_id: str) -> str:
        sandbox = cluster.get("sandboxes", stored(redis_server.url, session_id)["sandboxId"])
        return sandbox["spec"]["podTemplate"]["spec"]["containers"][0]["image"]
    wait_for(lambda: len(warm_ready(cluster, "roll")) == 2 and all(
        s["spec"]["podTemplate"]["spec"]["containers"][0]["image"] == "picod:2" for s in warm_ready(cluster, "roll")),
        what="the pool rebuilt with the new image")
    after = new_session(gateway, "roll").json()["session_id"]
    assert image(after) == "picod:2" and image(before) == "picod:1"
    assert execute(gateway, before, "echo still here", "bash")["stdout"] == "still here\n"
    for sid in (before, waited.json()["session_id"], after):
        requests.delete(f"{gateway.url}/v1/sessions/{sid}", headers=HEADERS, timeout=30)


def test_scheduling_failures_surface_at_once(cluster, gateways):
    gateway = gateways()
    kubelet = cluster.kubelet
    before = {s["metadata"]["name"] for s in cluster.objects("sandboxes")}
    try:
        cluster.call(setattr, kubelet, "unschedulable", True)
        # A pool whose every member cannot be scheduled: said at once, not after the timeout.
        install(cluster, code_interpreter("stuck", warm_pool_size=2))
        wait_for(lambda: len(warm_members(cluster, "stuck")) == 2 and all(
            k.failure(s, None) for s in warm_members(cluster, "stuck")), what="unschedulable members")
        started = time.monotonic()
        refused = new_session(gateway, "stuck")
        assert time.monotonic() - started < 1.0
        assert refused.status_code == 503 and refused.json()["code"] == "SANDBOX_START_FAILED"
        assert "Unschedulable" in refused.json()["error"], refused.text

        # A session's own Sandbox whose pod cannot be scheduled.
        install(cluster, code_interpreter("stuck-cold"))
        wait_template(gateway, "stuck-cold")
        started = time.monotonic()
        refused = new_session(gateway, "stuck-cold")
        assert time.monotonic() - started < 1.0
        assert refused.status_code == 503 and "Unschedulable" in refused.json()["error"], refused.text

        # An image that cannot be pulled, reported by the kubelet while the session waits.
        cluster.call(setattr, kubelet, "unschedulable", False)
        cluster.call(setattr, kubelet, "hold", True)
        install(cluster, code_interpreter("badimage", image="no-such-registry.invalid/picod:none"))
        wait_template(gateway, "badimage")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(new_session, gateway, "badimage")
            pod = wait_for(lambda: [p for p in cluster.objects("pods") if p["metadata"]["name"].startswith("badimage-")
                                    and p["metadata"]["name"] not in before], what="the pod")[0]
            before.add(pod["metadata"]["name"])
            cluster.patch("pods", pod["metadata"]["name"], {"status": {"containerStatuses": [{
                "name": "code-interpreter", "ready": False, "restartCount": 0, "image": "no-such-registry.invalid/picod:none",
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": "Back-off pulling image"}}}]}}, subresource="status")
            reported = time.monotonic()
            refused = pending.result(30)
            assert time.monotonic() - reported < 1.0
        assert refused.status_code == 503 and "ImagePullBackOff" in refused.json()["error"], refused.text
        # Nothing is left of the failed sessions' own Sandboxes.
        wait_for(lambda: not [s for s in cluster.objects("sandboxes") if s["metadata"]["name"] not in before
                              and not k.is_warm_member(s, "stuck", "stuck")], what="failed sandboxes deleted")
    finally:
        cluster.call(setattr, kubelet, "unschedulable", False)
        cluster.call(setattr, kubelet, "hold", False)
        for name in ("stuck", "stuck-cold", "badimage"):
            cluster.delete("codeinterpreters", name)


def test_two_gateways_on_one_redis_serve_each_others_sessions_across_a_restart(cluster, gateways, redis_server):
    first, second = gateways(redis_server.url), gateways(redis_server.url)
    install(cluster, code_interpreter("shared", warm_pool_size=1))
    wait_for(lambda: len(warm_ready(cluster, "shared")) == 1, what="a warm pool of 1")
    session_id = new_session(first, "shared").json()["session_id"]
    wait_for(lambda: len(warm_ready(cluster, "shared")) == 1, what="the pool to refill")
    doomed = new_session(first, "shared").json()["session_id"]
    assert result(execute(first, session_id, "x = 41\nx")) == "41"
    assert result(execute(second, session_id, "x + 1")) == "42"

    async def over_websocket(gateway, code: str) -> str | None:
        channels = await KernelChannels.open(f"{gateway.url}/api/kernels/{session_id}/channels",
                                             {"Authorization": f"token {TOKEN}"})
        try:
            return await channels.run(code)
        finally:
            await channels.close()
    assert asyncio.run(over_websocket(second, "x += 1\nx")) == "42"

    # A replica dies mid-session (SIGKILL: no shutdown at all): the other serves on; restarted
    # on its port, it serves the session again, variables and all.
    port = first.url.rsplit(":", 1)[1]
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.stop()
    assert result(execute(second, session_id, "x")) == "42"
    # While it is down, the pod of another session goes away: the restarted replica ends that
    # session (its record) and keeps the other.
    cluster.delete("sandboxes", stored(redis_server.url, doomed)["sandboxId"])
    restarted = gateways(redis_server.url, int(port))
    assert requests.get(f"{restarted.url}/v1/sessions/{doomed}", headers=HEADERS, timeout=10).status_code == 404
    assert result(execute(restarted, session_id, "x * 10")) == "420"
    listed = requests.get(f"{restarted.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=10)
    assert listed.status_code == 200 and listed.json()["template"] == "shared"
    assert requests.delete(f"{restarted.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=30).status_code == 204
    gone = requests.post(second.url + "/v1/execute", json={"code": "x", "session_id": session_id},
                         headers=HEADERS, timeout=30)
    assert gone.status_code == 404


def test_the_agentcube_sdk_against_the_kubernetes_backend(cluster, gateways):
    from agentcube import CodeInterpreterClient

    gateway = gateways()
    install(cluster, code_interpreter("sdk", warm_pool_size=1, args=("--no-kernel",)))
    wait_for(lambda: len(warm_ready(cluster, "sdk")) == 1, what="a warm pool of 1")
    with CodeInterpreterClient(name="sdk", namespace="default", workload_manager_url=gateway.url,
                               router_url=gateway.url, auth_token=TOKEN) as client:
        session_id = client.session_id
        assert client.execute_command("echo hello") == "hello\n"
        assert client.run_code("python", "print(6 * 7)") == "42\n"
        client.write_file("some data", "data.txt")
        assert "data.txt" in [f["name"] for f in client.list_files(".")]
        sandbox = [s for s in cluster.objects("sandboxes")
                   if (s["metadata"].get("labels") or {}).get(k.SESSION_ID) == session_id][0]
    wait_for(lambda: cluster.get("sandboxes", sandbox["metadata"]["name"]) is None,
             what="the session's Sandbox to be deleted by stop()")


def test_agent_runtimes_and_other_namespaces(cluster, gateways):
    """An AgentRuntime's session is a Sandbox of its own PodSpec, reached through the Router on
    its target port; CRs of a second watched namespace are served under that namespace."""
    from agentcube import CodeInterpreterClient

    gateway = gateways(namespaces="default,team")
    cluster.create("agentruntimes", {"metadata": {"name": "agent"}, "spec": {
        "targetPort": [{"port": 8080, "protocol": "HTTP", "pathPrefix": "/"}],
        "podTemplate": {"spec": {"containers": [{
            "name": "agent", "image": "my-agent", "args": ["--no-kernel"],
            "env": [{"name": "PICOD_AUTH_PUBLIC_KEY", "valueFrom": {"secretKeyRef": {
                "name": "picod-router-identity", "key": "public.pem"}}}]}]}}}}, group="runtime.agentcube.volcano.sh")
    router = gateway.url + "/v1/namespaces/default/agent-runtimes/agent/invocations"
    wait_for(lambda: requests.get(router + "/health", headers=HEADERS, timeout=60).status_code != 404,
             what="the agent runtime")
    first = requests.get(router + "/health", headers=HEADERS, timeout=60)
    assert first.status_code == 200 and first.json()["status"], first.text
    session_id = first.headers["x-agentcube-session-id"]
    again = requests.get(router + "/health", headers={"x-agentcube-session-id": session_id}, timeout=30)
    assert again.status_code == 200 and again.headers["x-agentcube-session-id"] == session_id
    requests.delete(f"{gateway.url}/v1/sessions/{session_id}", headers=HEADERS, timeout=30)

    install(cluster, code_interpreter("py", warm_pool_size=1, args=("--no-kernel",)), namespace="team")
    wait_template(gateway, "team/py")
    wait_for(lambda: [s for s in cluster.objects("sandboxes", "team") if k.is_warm_member(s, "py", "py")
                      and k.is_ready(s)], what="a warm member in team")
    with CodeInterpreterClient(name="py", namespace="team", workload_manager_url=gateway.url,
                               router_url=gateway.url, auth_token=TOKEN) as client:
        assert client.execute_command("echo team") == "team\n"
        sandbox = [s for s in cluster.objects("sandboxes", "team")
                   if (s["metadata"].get("labels") or {}).get(k.SESSION_ID) == client.session_id]
        assert sandbox, "the session's Sandbox is in namespace team"
    only_in_team = requests.post(gateway.url + "/v1/namespaces/other/code-interpreters/py/invocations/api/execute",
                                 json={"command": ["true"]}, headers=HEADERS, timeout=30)
    assert only_in_team.status_code == 404


def test_a_pool_that_shrinks_spares_a_member_a_session_just_took(tmp_path):
    """The warm pool deletes members under the resourceVersion it judged them by: one that a
    gateway took meanwhile (its cache lags here by a second) is a session's and survives."""
    with Cluster(str(tmp_path), runtime=False, watch_delay=1.0) as lagging:
        lagging.create("sandboxtemplates", {"metadata": {"name": "t"}, "spec": {
            "networkPolicyManagement": "Unmanaged",
            "podTemplate": {"spec": {"containers": [{"name": "c", "image": "picod"}]}}}})
        lagging.create("sandboxwarmpools", {"metadata": {"name": "t"}, "spec": {
            "replicas": 2, "sandboxTemplateRef": {"name": "t"}}})
        wait_for(lambda: len(warm_ready(lagging, "t")) == 2, what="a warm pool of 2")
        time.sleep(1.5)  # the controller's cache has caught up
        lagging.patch("sandboxwarmpools", "t", {"spec": {"replicas": 0}})
        time.sleep(0.5)
        taken = warm_ready(lagging, "t")[0]
        template = k.template_from({"kind": "CodeInterpreter", "metadata": {"name": "t", "namespace": "default"},
                                    "spec": {"template": {"image": "picod"}}}, "t")
        lagging.patch("sandboxes", taken["metadata"]["name"], k.adoption_patch(taken, template, "s-1", time.time() + 60))
        wait_for(lambda: not warm_members(lagging, "t"), what="the pool to shrink")
        time.sleep(1.5)
        kept = lagging.get("sandboxes", taken["metadata"]["name"])
        assert kept is not None and not kept["metadata"].get("deletionTimestamp")


def test_replicas_share_one_identity_secret(tmp_path):
    """Replicas (and the controller) starting together end up with one key; a gateway that
    cannot reach the API server refuses to start and says which settings to check."""
    with Cluster(str(tmp_path), runtime=False, controller=False) as fresh:
        settings = KubeSettings(namespaces=["default"], api_url=fresh.url)

        async def both():
            return await asyncio.gather(load_identity(settings), load_identity(settings))
        one, two = fresh.run(both())
        assert one.public_pem == two.public_pem == fresh.secret_public_pem()
        secret = fresh.get("secrets", "picod-router-identity")
        assert secret["metadata"]["labels"] == {"app": "agentcube", "component": "router"}
        assert b"RSA PRIVATE KEY" in __import__("base64").b64decode(secret["data"]["private.pem"])

        async def close_enough():  # the API client closes cleanly
            api = await KubeApi.connect(api_url=fresh.url)
            await api.close()
        fresh.run(close_enough())

    refused = run_kernelcube("--backend", "kubernetes", "--kube-api-url", "http://127.0.0.1:9",
                             "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert refused.returncode != 0
    assert "KERNELCUBE_KUBE_API_URL" in refused.stderr + refused.stdout
