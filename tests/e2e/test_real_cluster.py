"""KernelCube end to end on a real kube-apiserver (`make test-k8s`): the chart's CRDs and RBAC
installed for real, the controller (a leader and a standby) and two gateway replicas as local
processes acting as the chart's ServiceAccounts, a real Redis, and the process kubelet running
each pod's PicoD.

In order (one cluster for the module): least privilege holds (the gateway's token may not
delete CRDs); the chart's CodeInterpreter fills its warm pool; the unmodified agentcube-sdk runs
code; the project's SDK runs stateful code with rich results; the second replica serves the same
session (HTTP and the Jupyter kernel WebSocket); a notebook runs through jupyter_server's
gateway client; the pool refills; a killed PicoD is restarted in its pod (restartCount 1) and
the session on it is ended with a clear error; restart policies Never and OnFailure end their
pods instead; a pod's resource limits bound its sandbox (visible inside, enforced); deleting
the session's pod gives that session a clear error; killing the leading controller hands the
Lease to the standby, which keeps serving; GC removes an idle session.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import requests

from controller import naming as n
from controller.resources import CODE_INTERPRETERS, SANDBOXES
from tests.e2e.cluster import NAMESPACE, RealCluster
from tests.support import waiting
from tests.support.channels import KernelChannels
from tests.support.gateway import HEADERS, TOKEN

WARM_LABEL = n.WARM_POOL_SANDBOX
SESSION_LABEL = n.SESSION_ID


def wait_for(predicate, timeout: float = 60.0, what: str = ""):
    return waiting.wait_for(predicate, timeout, what, interval=0.1)


def sandboxes(cluster: RealCluster) -> list[dict]:
    return cluster.cp.api("GET", SANDBOXES.path(NAMESPACE))["items"]


def is_ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or ())


def warm_ready(cluster: RealCluster) -> list[dict]:
    return [s for s in sandboxes(cluster)
            if WARM_LABEL in (s["metadata"].get("labels") or {}) and is_ready(s)
            and not s["metadata"].get("deletionTimestamp")]


def execute(gateway, session_id: str, code: str) -> requests.Response:
    return requests.post(gateway.url + "/v1/execute", headers=HEADERS, timeout=60,
                         json={"code": code, "session_id": session_id})


def text(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok", body
    return body["results"][0]["text/plain"]


class State:
    """What the ordered tests hand each other."""
    gateways: list = []
    leader = None
    standby = None
    session_id = ""


def test_components_start_with_the_charts_service_accounts(real_cluster):
    cluster = real_cluster
    State.leader = cluster.start_controller("ctl-a")
    wait_for(lambda: _lease_holder(cluster) == "ctl-a", 30, "the first controller to lead")
    State.standby = cluster.start_controller("ctl-b")
    State.gateways = [cluster.start_gateway(), cluster.start_gateway()]
    # Least privilege is real: the gateway's token cannot touch the CRDs.
    gateway_token = cluster.cp.service_account_token(NAMESPACE, cluster.gateway_sa)
    refused = requests.delete(
        cluster.cp.url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
        "sandboxes.agents.x-k8s.io", headers={"Authorization": f"Bearer {gateway_token}"},
        verify=str(cluster.cp.pki.ca), timeout=10)
    assert refused.status_code == 403, refused.text


def test_the_charts_code_interpreter_fills_its_warm_pool(real_cluster):
    cluster = real_cluster
    started = time.monotonic()
    for ci in cluster.code_interpreters:
        cluster.cp.apply(ci, NAMESPACE)
    wait_for(lambda: len(warm_ready(cluster)) == cluster.warm_pool, 120, "the warm pool")
    print(f"\nwarm pool of {cluster.warm_pool} Ready in {time.monotonic() - started:.1f}s")
    ci = cluster.cp.api("GET", CODE_INTERPRETERS.path(NAMESPACE, "default"))
    assert ci["status"]


def test_the_agentcube_sdk_runs_code_and_the_second_replica_serves_the_session(real_cluster):
    from agentcube import CodeInterpreterClient

    first, second = State.gateways
    started = time.monotonic()
    client = CodeInterpreterClient(name="default", namespace=NAMESPACE,
                                   workload_manager_url=first.url, router_url=first.url,
                                   auth_token=TOKEN)
    with client:
        print(f"\nsession through the SDK in {time.monotonic() - started:.2f}s")
        assert client.run_code("python", "print(6 * 7)") == "42\n"
        assert client.execute_command("echo hello") == "hello\n"
    created = requests.post(first.url + "/v1/sessions", json={"template": "default"},
                            headers=HEADERS, timeout=60)
    assert created.status_code == 201, created.text
    State.session_id = created.json()["session_id"]
    assert text(execute(first, State.session_id, "x = 41\nx")) == "41"
    assert text(execute(second, State.session_id, "x + 1")) == "42"


def test_the_projects_sdk_runs_stateful_code_with_rich_results(real_cluster):
    from kernelcube import CodeInterpreterClient

    first, second = State.gateways
    with CodeInterpreterClient(first.url, TOKEN, template="default", namespace=NAMESPACE) as ci:
        ci.run_code("x = 6 * 7")
        assert ci.run_code("x").text == "42"
        html = ci.run_code("from IPython.display import HTML\nHTML('<b>bold</b>')")
        assert [r.html for r in html.results] == ["<b>bold</b>"]
        # The same session from the other replica, over the Jupyter kernel WebSocket (its
        # execute_reply may overtake the iopub result, so read the effect back over HTTP).
        asyncio.run(_over_websocket(second.url, ci.session_id, "x += 1"))
        assert text(execute(second, ci.session_id, "x")) == "43"


def test_a_notebook_runs_through_jupyter_servers_gateway_client(real_cluster):
    """What `jupyter lab --gateway-url` (and papermill) do: jupyter_server's
    GatewayKernelManager starts a kernel of the CodeInterpreter and nbclient runs a notebook."""
    import nbformat
    from jupyter_server.gateway.gateway_client import GatewayClient
    from jupyter_server.gateway.managers import GatewayKernelManager
    from nbclient import NotebookClient

    gateway = State.gateways[1]
    minted = requests.post(f"{gateway.url}/api/capabilities/channels", json={"ttl": 600},
                           headers=HEADERS, timeout=30)
    assert minted.status_code == 201, minted.text
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 21"), nbformat.v4.new_code_cell("x * 2"),
        nbformat.v4.new_code_cell("import os\nprint(os.path.basename(os.getcwd()))")])

    async def run() -> str:
        km = GatewayKernelManager()
        await km.start_kernel(kernel_name="default")
        client = NotebookClient(nb, km=km, timeout=120)
        try:
            await client.async_execute()
        finally:
            if client.kc is not None:
                client.kc.stop_channels()
            await km.shutdown_kernel()
        return km.kernel_id

    GatewayClient.clear_instance()
    GatewayClient.instance(url=gateway.url, ws_url=minted.json()["ws_url"],
                           auth_token=TOKEN, request_timeout=60.0)
    try:
        asyncio.run(run())
    finally:
        GatewayClient.clear_instance()
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "42"
    # The kernel runs in a pod's PicoD: its workspace is the pod's (named after the pod).
    assert nb.cells[2].outputs[0]["text"].startswith("default-"), nb.cells[2].outputs


async def _over_websocket(url: str, session_id: str, code: str) -> str | None:
    channels = await KernelChannels.open(f"{url}/api/kernels/{session_id}/channels",
                                         {"Authorization": f"token {TOKEN}"})
    try:
        return await channels.run(code)
    finally:
        await channels.close()


def test_the_pool_refills(real_cluster):
    wait_for(lambda: len(warm_ready(real_cluster)) == real_cluster.warm_pool, 60, "refill")


def test_a_killed_picod_is_restarted_in_its_pod_and_its_session_ended(real_cluster):
    """restartPolicy Always (the pods' default): the kubelet restarts a container that dies, in
    the same pod and on the same IP, counting it and reporting how it ended. The session on it
    lost its kernel, so the gateway ends it with a clear error rather than run the next call in
    a fresh kernel."""
    cluster = real_cluster
    gateway = State.gateways[0]
    created = requests.post(gateway.url + "/v1/sessions", json={"template": "default"},
                            headers=HEADERS, timeout=60)
    assert created.status_code == 201, created.text
    session_id = created.json()["session_id"]
    assert text(execute(gateway, session_id, "state = 'kept'\nstate")) == "'kept'"
    name = next(s["metadata"]["name"] for s in sandboxes(cluster)
                if (s["metadata"].get("labels") or {}).get(SESSION_LABEL) == session_id)
    pod_path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}"
    pod = cluster.cp.api("GET", pod_path)
    pid = cluster.runtime.pid(pod["metadata"]["uid"])
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict | None:
        status = cluster.cp.api("GET", pod_path)["status"]
        container = status["containerStatuses"][0]
        return status if container["restartCount"] == 1 and container["ready"] else None

    status = wait_for(restarted, 60, "the container to be restarted")
    container = status["containerStatuses"][0]
    assert container["lastState"]["terminated"]["exitCode"] == 137, container
    assert "running" in container["state"], container
    assert status["podIP"] == pod["status"]["podIP"]
    assert cluster.runtime.pid(pod["metadata"]["uid"]) not in (None, pid)
    wait_for(lambda: is_ready(cluster.cp.api("GET", SANDBOXES.path(NAMESPACE, name))), 30,
             "its Sandbox Ready again")
    response = execute(State.gateways[1], session_id, "state")
    print(f"\nafter its PicoD restarted, the session answers {response.status_code} "
          f"{response.text[:300]}")
    assert response.status_code == 410, response.text
    assert response.json()["code"] == "SANDBOX_GONE" and "restarted" in response.json()["error"]
    wait_for(lambda: cluster.cp.api("GET", SANDBOXES.path(NAMESPACE, name), ok=(404,)).get(
        "kind") == "Status", 60, "the session's Sandbox deleted")


def test_restart_policies_never_and_on_failure_end_the_pod(real_cluster):
    """Never: a container that fails ends the pod Failed; OnFailure: one that exits 0 (PicoD
    stopped by SIGTERM) ends it Succeeded. Neither is restarted."""
    cluster = real_cluster
    image = cluster.code_interpreters[0]["spec"]["template"]["image"]
    key = {"name": "PICOD_AUTH_PUBLIC_KEY", "valueFrom": {"secretKeyRef": {
        "name": "picod-router-identity", "key": "public.pem"}}}

    def pod(name: str, policy: str, env: list) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "picod", "image": image, "args": ["--no-kernel"],
                                         "env": env}]}}

    # Without the router's public key PicoD refuses to start (exit 2).
    cluster.cp.apply(pod("never-fails", "Never", []), NAMESPACE)
    cluster.cp.apply(pod("stops-cleanly", "OnFailure", [key]), NAMESPACE)
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    failed = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(
        cluster.cp.api("GET", f"{path}/never-fails")), 60, "the pod to fail")
    container = failed["status"]["containerStatuses"][0]
    assert container["state"]["terminated"]["exitCode"] == 2, container
    assert container["restartCount"] == 0
    assert "PICOD_AUTH_PUBLIC_KEY" in container["state"]["terminated"]["message"], container
    running = wait_for(lambda: (lambda p: p if is_ready(p) else None)(
        cluster.cp.api("GET", f"{path}/stops-cleanly")), 60, "the OnFailure pod Ready")
    os.kill(cluster.runtime.pid(running["metadata"]["uid"]), signal.SIGTERM)
    done = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Succeeded" else None)(
        cluster.cp.api("GET", f"{path}/stops-cleanly")), 60, "the pod to succeed")
    container = done["status"]["containerStatuses"][0]
    assert container["state"]["terminated"]["exitCode"] == 0, container
    assert container["restartCount"] == 0
    for name in ("never-fails", "stops-cleanly"):
        cluster.cp.api("DELETE", f"{path}/{name}")
    wait_for(lambda: not [p for p in cluster.cp.api("GET", path)["items"]
                          if p["metadata"]["name"] in ("never-fails", "stops-cleanly")],
             60, "the ended pods deleted")


def new_session_of(gateway, template: str) -> str:
    """A session of a template just applied (the gateway learns of it through its watch)."""
    created = wait_for(lambda: (lambda r: r if r.status_code == 201 else None)(requests.post(
        gateway.url + "/v1/sessions", json={"template": template}, headers=HEADERS,
        timeout=90)), 90, f"a session of the {template} template")
    return created.json()["session_id"]


def test_a_pods_resource_limits_bound_its_sandbox(real_cluster):
    """The container's resources.limits bound its PicoD and what it runs: the limits are
    visible inside the sandbox, and an allocation past the memory limit is killed."""
    cluster = real_cluster
    ci = {"apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter",
          "metadata": {"name": "limited", "namespace": NAMESPACE},
          "spec": {"template": {
              "image": cluster.code_interpreters[0]["spec"]["template"]["image"],
              "args": ["--no-kernel"],
              "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}}}}
    cluster.cp.apply(ci)
    gateway = State.gateways[0]
    session_id = new_session_of(gateway, "limited")

    def bash(code: str) -> dict:
        response = requests.post(gateway.url + "/v1/execute", headers=HEADERS, timeout=60, json={
            "code": code, "language": "bash", "session_id": session_id})
        assert response.status_code == 200, response.text
        return response.json()

    if cluster.runtime.cgroups is not None and cluster.runtime.cgroups.version == 1:
        seen = bash('for c in memory cpu; do d=$(awk -F: -v c=$c \'$2 ~ "(^|,)"c"(,|$)" '
                    '{print $3}\' /proc/self/cgroup); cat /sys/fs/cgroup/$c$d/'
                    '$([ $c = memory ] && echo memory.limit_in_bytes || echo cpu.cfs_quota_us); '
                    'done')
        assert seen["stdout"].split() == [str(128 << 20), "50000"], seen
    elif cluster.runtime.cgroups is not None:
        seen = bash('cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max')
        assert seen["stdout"].split() == [str(128 << 20)], seen
    else:  # the rlimit stand-in
        seen = bash("ulimit -v")
        assert seen["stdout"].split() == [str(128 << 10)], seen
    grown = bash(f"{sys.executable} -c \"b = b'x' * (400 << 20); print('survived')\"")
    assert grown["exit_code"] != 0 and "survived" not in grown["stdout"], grown
    print(f"\nlimits inside the sandbox: {seen['stdout'].split()}; a 400 MiB allocation: exit "
          f"{grown['exit_code']}")
    assert requests.delete(f"{gateway.url}/v1/sessions/{session_id}", headers=HEADERS,
                           timeout=30).status_code == 204


def test_deleting_the_sessions_pod_gives_a_clear_error(real_cluster):
    cluster = real_cluster
    first = State.gateways[0]
    mine = [s for s in sandboxes(cluster)
            if (s["metadata"].get("labels") or {}).get(SESSION_LABEL) == State.session_id]
    assert mine, "the session's Sandbox"
    pod_path = f"/api/v1/namespaces/{NAMESPACE}/pods/{mine[0]['metadata']['name']}"
    old_uid = cluster.cp.api("GET", pod_path)["metadata"]["uid"]
    cluster.cp.api("DELETE", pod_path)
    # The kubelet ends it after SIGTERM; the Sandbox controller makes a new Pod of that name.
    wait_for(lambda: cluster.cp.api("GET", pod_path, ok=(404,)).get("metadata", {}).get(
        "uid") != old_uid, 60, "the pod to go")
    response = execute(first, State.session_id, "x")
    print(f"\nafter its pod was deleted, the session answers {response.status_code} "
          f"{response.text[:300]}")
    assert response.status_code >= 400, response.text
    assert response.json().get("error"), response.text


def test_killing_the_leader_hands_over_to_the_standby(real_cluster):
    cluster = real_cluster
    kept = requests.post(State.gateways[0].url + "/v1/sessions", json={"template": "default"},
                         headers=HEADERS, timeout=60).json()["session_id"]
    assert text(execute(State.gateways[0], kept, "kept = 'yes'\nkept")) == "'yes'"
    State.leader.stop(sig=9)
    wait_for(lambda: _lease_holder(cluster) == "ctl-b", 60, "the standby to take the Lease")
    # The new leader keeps the pool full and serves claims.
    wait_for(lambda: len(warm_ready(cluster)) == cluster.warm_pool, 60, "the pool, new leader")
    created = requests.post(State.gateways[1].url + "/v1/sessions",
                            json={"template": "default"}, headers=HEADERS, timeout=60)
    assert created.status_code == 201, created.text
    assert text(execute(State.gateways[0], created.json()["session_id"], "1 + 1")) == "2"
    # Nothing lost: the session from before the leader change still runs in its kernel.
    assert text(execute(State.gateways[1], kept, "kept")) == "'yes'"
    # The old leader restarts as a standby: nobody fights over the Lease.
    State.leader = cluster.start_controller("ctl-a")
    time.sleep(3)
    assert _lease_holder(cluster) == "ctl-b"


def test_gc_removes_an_idle_session(real_cluster):
    cluster = real_cluster
    ci = {"apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter",
          "metadata": {"name": "short", "namespace": NAMESPACE},
          "spec": {"sessionTimeout": "3s", "template": {
              "image": cluster.code_interpreters[0]["spec"]["template"]["image"],
              "args": ["--no-kernel"]}}}
    cluster.cp.apply(ci)
    gateway = State.gateways[0]
    session_id = new_session_of(gateway, "short")
    wait_for(lambda: requests.get(f"{gateway.url}/v1/sessions/{session_id}", headers=HEADERS,
                                  timeout=10).status_code == 404, 60, "GC of the idle session")
    wait_for(lambda: not [s for s in sandboxes(cluster) if (s["metadata"].get("labels") or {})
                          .get(SESSION_LABEL) == session_id], 60, "its Sandbox deleted")


def _lease_holder(cluster: RealCluster) -> str | None:
    leases = cluster.cp.api("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases")
    for lease in leases["items"]:
        if lease["metadata"]["name"].endswith("-controller"):
            return lease["spec"].get("holderIdentity")
    return None
