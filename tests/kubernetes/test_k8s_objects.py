"""The Kubernetes backend's pure decisions, without a server: templates from CRs (Go durations,
ports, defaults), what a session writes (the fast-path patch, a claim, a cold Sandbox), which
claims the fast path yields Ready members to, container restarts, what a Sandbox or Pod says
about readiness and failure, the gateway's options for the backend and its API connections."""

from __future__ import annotations

import pytest

from kernel_gateway_ext.providers import k8s_objects as k
from kernel_gateway_ext.templates import TemplateError
from tests.support.gateway import run_kernelcube


def ci(**spec) -> dict:
    return {"kind": "CodeInterpreter", "metadata": {"name": "py", "namespace": "team", "uid": "u-1"},
            "spec": {"template": {"image": "picod"}, **spec}}


def test_a_code_interpreter_becomes_a_template_with_agentcube_defaults():
    t = k.template_from(ci(), "team/py")
    assert (t.name, t.namespace, t.kind, t.cr_name) == ("team/py", "team", "code-interpreter", "py")
    assert (t.session_timeout, t.max_session_duration, t.pool_size) == (900, 8 * 3600, 0)
    assert k.entry_points(t, "10.0.0.7") == [{"path": "/", "protocol": "HTTP", "endpoint": "10.0.0.7:8080"}]
    assert k.endpoint(t, "10.0.0.7") == {"url": "http://10.0.0.7:8080"}
    t = k.template_from(ci(sessionTimeout="1h30m", maxSessionDuration="90s", warmPoolSize=3,
                           ports=[{"port": 9000, "protocol": "HTTPS", "pathPrefix": "/api"}]), "py")
    assert (t.session_timeout, t.max_session_duration, t.pool_size, t.port) == (5400, 90, 3, 9000)
    assert k.endpoint(t, "fd00::1") == {"url": "https://[fd00::1]:9000"}
    for bad in ({"sessionTimeout": "fifteen"}, {"maxSessionDuration": "0s"}):
        with pytest.raises(TemplateError, match="CodeInterpreter team/py"):
            k.template_from(ci(**bad), "py")


def test_an_agent_runtime_becomes_a_template_of_its_ports():
    ar = {"kind": "AgentRuntime", "metadata": {"name": "agent", "namespace": "default"},
          "spec": {"targetPort": [{"port": 7000, "protocol": "HTTP", "pathPrefix": "/"}],
                   "podTemplate": {"spec": {"containers": [{"name": "a", "image": "agent"}]}}}}
    t = k.template_from(ar, "agent")
    assert (t.kind, t.port, t.pool_size) == ("agent-runtime", 7000, 0)
    body = k.cold_sandbox_body(t, "s-1", "agent-abc", 0, "PEM")
    assert body["spec"]["podTemplate"]["spec"]["containers"] == [{"name": "a", "image": "agent"}]
    with pytest.raises(TemplateError, match="targetPort"):
        k.template_from({**ar, "spec": {**ar["spec"], "targetPort": []}}, "agent")


def member(ready: bool = True, **labels) -> dict:
    return {"metadata": {"name": "py-x1", "namespace": "team", "resourceVersion": "41",
                         "labels": {k.WARM_POOL_SANDBOX: k.name_hash("py"), k.TEMPLATE_REF_HASH: k.name_hash("py"),
                                    k.TEMPLATE_HASH: "abc", **labels},
                         "ownerReferences": [{"kind": "SandboxWarmPool", "name": "py", "uid": "p", "controller": True}]},
            "status": {"podIPs": ["fd00::5", "10.1.2.3"],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_warm_members_and_the_fast_path_patch():
    assert k.name_hash("python") == k.name_hash("python") and len(k.name_hash("x")) == 8
    sandbox = member()
    assert k.is_warm_member(sandbox, "py", "py") and k.is_ready(sandbox) and k.pod_ip(sandbox) == "10.1.2.3"
    assert not k.is_warm_member(sandbox, "other", "py") and not k.is_ready(member(ready=False))
    t = k.template_from(ci(), "team/py")
    patch = k.adoption_patch(sandbox, t, "s-1", 1_800_000_000)
    meta = patch["metadata"]
    assert meta["resourceVersion"] == "41"  # the precondition: 409 if someone took it first
    assert meta["labels"][k.WARM_POOL_SANDBOX] is None and meta["labels"][k.TEMPLATE_HASH] is None
    assert meta["labels"][k.SESSION_ID] == "s-1" and meta["labels"][k.LAUNCH_TYPE] == "warm"
    assert meta["ownerReferences"] == [{"apiVersion": "runtime.agentcube.volcano.sh/v1alpha1", "kind": "CodeInterpreter",
                                        "name": "py", "uid": "u-1", "controller": False}]
    assert meta["annotations"][k.IDLE_TIMEOUT] == "15m0s"
    assert meta["annotations"][k.SESSION_STARTED_AT].startswith("20")
    assert patch["spec"]["shutdownPolicy"] == "Delete" and patch["spec"]["shutdownTime"].startswith("2027-01-15T")


def test_restarts_count_the_main_containers():
    pod = {"status": {"initContainerStatuses": [{"name": "init", "restartCount": 3}],
                      "containerStatuses": [{"name": "picod", "restartCount": 1}, {"name": "side", "restartCount": 2}]}}
    assert k.restarts(pod) == 3
    assert k.restarts({"status": {"containerStatuses": [{"name": "picod"}]}}) == 0
    assert k.restarts(None) == 0


def test_the_fast_path_leaves_ready_members_to_claims_already_waiting():
    def claim(name: str, pool: str = "py", ns: str = "team", bound: str = "", deleting: bool = False) -> dict:
        meta = {"name": name, "namespace": ns, **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})}
        return {"metadata": meta, "spec": {"warmPoolRef": {"name": pool}},
                **({"status": {"sandbox": {"name": bound}}} if bound else {})}
    claims = [claim("waits"), claim("waits-too"), claim("bound", bound="py-x"), claim("other", pool="r"),
              claim("elsewhere", ns="other"), claim("gone", deleting=True)]
    assert k.queued_claims(claims, "team", "py") == 2
    assert k.queued_claims([], "team", "py") == 0


def test_members_of_an_older_spec_are_not_taken():
    t = k.template_from(ci(template={"image": "picod:2", "args": ["--no-kernel"]}), "py")
    def built(image: str, args: list | None = None) -> dict:
        container = {"name": "codeinterpreter", "image": image, **({"args": args} if args else {})}
        return {"spec": {"podTemplate": {"spec": {"containers": [container]}}}}
    assert k.built_from(built("picod:2", ["--no-kernel"]), t)
    assert not k.built_from(built("picod:1", ["--no-kernel"]), t)
    assert not k.built_from(built("picod:2"), t)


def test_claims_and_cold_sandboxes_carry_the_session():
    t = k.template_from(ci(authMode="picod", template={"image": "picod", "args": ["--no-kernel"],
                                                       "environment": [{"name": "A", "value": "1"}],
                                                       "runtimeClassName": "kata"}), "team/py")
    claim = k.claim_body(t, "s-1", "py-abcdefgh", 0)
    assert claim["spec"]["warmPoolRef"] == {"name": "py"}
    assert claim["metadata"]["labels"][k.SESSION_ID] == "s-1"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    body = k.cold_sandbox_body(t, "s-1", "py-abcdefgh", 0, "PEM")
    pod = body["spec"]["podTemplate"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "A", "value": "1"}, {"name": "PICOD_AUTH_PUBLIC_KEY", "value": "PEM"}]
    assert pod["containers"][0]["args"] == ["--no-kernel"] and pod["runtimeClassName"] == "kata"
    assert pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8080, "scheme": "HTTP"}
    assert body["metadata"]["labels"][k.LAUNCH_TYPE] == "cold"
    no_auth = k.template_from(ci(authMode="none"), "py")
    env = k.cold_sandbox_body(no_auth, "s", "n", 0, "PEM")["spec"]["podTemplate"]["spec"]["containers"][0]["env"]
    assert env == []


def test_failures_name_their_cause():
    assert k.failure(member(), None) == ""
    unschedulable = {"status": {"conditions": [{"type": "PodScheduled", "status": "False",
                                                "reason": "Unschedulable", "message": "0/3 nodes: cpu"}]}}
    assert k.failure(unschedulable, None) == "Unschedulable: 0/3 nodes: cpu"
    for reason in ("ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff"):
        pod = {"status": {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": reason}}}]}}
        assert k.failure(None, pod).startswith(reason)
    creating = {"status": {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    assert k.failure(None, creating) == ""
    failed = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"}]}}
    assert k.failure(failed, None).startswith("PodFailed")


def test_the_kubernetes_options_name_their_environment_variables(tmp_path):
    help_all = run_kernelcube("--help-all").stdout
    for env in ("KERNELCUBE_NAMESPACES", "KERNELCUBE_KUBECONFIG", "KERNELCUBE_KUBE_CONTEXT", "KERNELCUBE_IN_CLUSTER",
                "KERNELCUBE_KUBE_API_URL", "KERNELCUBE_IDENTITY_NAMESPACE", "KERNELCUBE_WARM_ADOPTION"):
        assert env in help_all
    bad = run_kernelcube("--backend", "kubernetes", "--namespaces", "Not_A_Namespace", "--port", "0",
                         "--state-dir", str(tmp_path))
    assert bad.returncode != 0 and "KERNELCUBE_NAMESPACES" in bad.stdout + bad.stderr


def test_connections_to_the_api_server_outlive_a_quiet_spell():
    """Idle connections are kept a minute (the API server keeps them 90 s), so a burst of
    sessions after a quiet spell does not pay a TLS handshake per connection."""
    import asyncio

    from kernel_gateway_ext.kube import KEEPALIVE_SECONDS, KubeApi, load_configuration

    async def connector_keepalive() -> float | None:
        api = KubeApi(await load_configuration(api_url="http://127.0.0.1:9"))
        connector = api._api.rest_client._create_connector()
        try:
            return connector._keepalive_timeout
        finally:
            await connector.close()
            await api.close()

    assert asyncio.run(connector_keepalive()) == KEEPALIVE_SECONDS
    assert 15 < KEEPALIVE_SECONDS < 90


def test_the_controllers_gc_reads_what_the_gateway_writes():
    """The wire contract between the gateway's records and labels and the controller's GC (which
    may not import the gateway): which objects a session owns, and how old a taken warm Sandbox
    is as a session's."""
    import time

    from controller import gc, gc_logic
    from kernel_gateway_ext.providers.base import Sandbox
    from kernel_gateway_ext.store.base import SessionRecord
    from kernel_gateway_ext.store.sandbox_info import record_to_info

    for handle, want in (({"kind": "Sandbox", "name": "py-x1"}, ("Sandbox", "py-x1")),
                         ({"kind": "SandboxClaim", "name": "py-abcdefgh"}, ("SandboxClaim", "py-abcdefgh"))):
        sandbox = Sandbox(id="py-x1", template="py", endpoint={"url": "http://10.0.0.1:8080"},
                          handle={"namespace": "team", **handle, "sandbox_uid": "u", "pod_ip": "10.0.0.1"})
        record = SessionRecord(session_id="s-1", template="py", namespace="team", expires_at=time.time() + 60,
                               provider="kubernetes", sandbox=sandbox.to_dict(), sandbox_id="py-x1")
        info = record_to_info(record)
        assert (info["kind"], info["name"]) == want  # upstream's fields, for upstream's tools
        session = gc_logic.session_from("s-1", info, None, None, 900.0)
        assert session.ours and [(w.kind, w.namespace, w.name) for w in session.declared] == [(*want[:1], "team", want[1])]

    t = k.template_from(ci(), "team/py")
    taken = member()
    taken["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    patch = k.adoption_patch(taken, t, "s-1", time.time() + 60)
    taken["metadata"]["annotations"] = patch["metadata"]["annotations"]
    assert time.time() - gc._created(taken) < 5  # new as a session's, though made in 2020
