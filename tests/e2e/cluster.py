"""KernelCube on a real Kubernetes control plane, all on this machine: the chart's CRDs and the
rendered manifests the cluster can take (RBAC included), the process kubelet on a loop in a
thread of its own, a real Redis, and the controller and gateways as local processes that act as
the chart's ServiceAccounts (token kubeconfigs), never as cluster-admin.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from controller.kube import KubeClient, load_configuration
from tests.e2e.controlplane import ControlPlane, Process
from tests.e2e.kubelet import ProcessKubelet
from tests.e2e.runtime import ProcessRuntime
from tests.support.gateway import REPO, Gateway
from tests.support.redis import free_port

CHART = Path(REPO) / "charts" / "kernelcube"
RELEASE = "kc"
NAMESPACE = "kernelcube"
# What the cluster cannot run (no kubelet for them: the components run as local processes).
NOT_APPLIED = {"Deployment", "StatefulSet", "Pod", "ServiceMonitor"}


def helm_binary() -> str:
    """The pinned helm the chart tests use (fetched by `.ci/get_helm.py` when missing)."""
    helm = Path(REPO) / ".cache" / "helm" / "helm"
    if not helm.exists():
        subprocess.run([sys.executable, str(Path(REPO) / ".ci" / "get_helm.py"), str(helm)],
                       check=True)
    return str(helm)


def render_chart(directory: Path, redis_url: str, warm_pool: int) -> list[dict]:
    env = dict(os.environ, HOME=str(directory), XDG_CACHE_HOME=str(directory / "helm-cache"))
    out = subprocess.run(
        [helm_binary(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--set", "redis.bundled.enabled=false", "--set", f"redis.external.url={redis_url}",
         "--set", f"codeInterpreter.warmPoolSize={warm_pool}",
         "--set", "controller.leaderElection.leaseDuration=6"],
        env=env, check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


class RealCluster:
    """`with RealCluster(directory, bin_dir, redis_url) as cluster:` the control plane, CRDs,
    chart objects and kubelet are up; start the controller and gateways with the methods."""

    def __init__(self, directory: Path, bin_dir: Path, redis_url: str, warm_pool: int = 2):
        self.dir = Path(directory)
        self.redis_url = redis_url
        self.warm_pool = warm_pool
        self.cp = ControlPlane(self.dir / "cp", bin_dir)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kubelet", daemon=True)
        self.controllers: list[Process] = []
        self.gateways: list[Gateway] = []
        self.timings: dict[str, float] = {}

    def __enter__(self) -> RealCluster:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for gateway in self.gateways:
            gateway.stop()
        for ctl in self.controllers:
            ctl.stop()
        if self.thread.is_alive():
            try:
                self.run(self._stop_kubelet(), 60)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        if not self.loop.is_closed():
            self.loop.close()
        self.cp.stop()

    def run(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    # -- bring-up ----------------------------------------------------------------------------

    def start(self) -> None:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cp.start()
        self.timings["apiserver_ready"] = time.monotonic() - t0
        self.manifests = render_chart(self.dir, self.redis_url, self.warm_pool)
        crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
        for crd in crds:
            self.cp.apply(crd)
        self.cp.wait_crds_established([crd["metadata"]["name"] for crd in crds])
        # After the CRDs: the garbage collector discovers new kinds only every 30 s.
        self.cp.start_controller_manager()
        self.cp.apply({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": NAMESPACE}})
        later = []
        for obj in self.manifests:
            if obj["kind"] in NOT_APPLIED:
                continue
            if obj["kind"] == "CodeInterpreter":
                later.append(obj)  # created by the test, once the controller runs
                continue
            self.cp.apply(obj, NAMESPACE)
        self.code_interpreters = later
        self.controller_sa = self._deployment("controller")["spec"]["template"]["spec"][
            "serviceAccountName"]
        self.gateway_sa = self._deployment("gateway")["spec"]["template"]["spec"][
            "serviceAccountName"]
        self.controller_kubeconfig = self.cp.kubeconfig_for(NAMESPACE, self.controller_sa)
        self.gateway_kubeconfig = self.cp.kubeconfig_for(NAMESPACE, self.gateway_sa)
        self.thread.start()
        self.run(self._start_kubelet(), 60)
        self.timings["cluster_ready"] = time.monotonic() - t0

    async def _start_kubelet(self) -> None:
        self.kube = KubeClient(await load_configuration(kubeconfig=str(self.cp.admin_kubeconfig),
                                                        in_cluster=False))
        (self.dir / "pods").mkdir(exist_ok=True)
        self.runtime = ProcessRuntime(self.kube, str(self.dir / "pods"), ip_prefix="127.78")
        self.kubelet = ProcessKubelet(self.kube, self.runtime)
        await self.kubelet.__aenter__()

    async def _stop_kubelet(self) -> None:
        if getattr(self, "kubelet", None) is not None:
            await self.kubelet.__aexit__(None, None, None)
        if getattr(self, "kube", None) is not None:
            await self.kube.close()

    # -- components --------------------------------------------------------------------------

    def controller_args(self) -> list[str]:
        """The chart's controller args, with a kubeconfig in place of in-cluster access."""
        container = self._deployment("controller")["spec"]["template"]["spec"]["containers"][0]
        args = [a for a in container["args"] if a != "--in-cluster"
                and not a.startswith("--metrics-port")]
        return [*args, "--no-in-cluster", "--kubeconfig", str(self.controller_kubeconfig),
                "--metrics-port", "0", "--redis-url", self.redis_url, "--gc-interval", "2"]

    def _deployment(self, component: str) -> dict:
        return next(obj for obj in self.manifests if obj["kind"] == "Deployment"
                    and obj["metadata"]["name"].endswith(f"-{component}"))

    def start_controller(self, identity: str) -> Process:
        exe = os.path.join(os.path.dirname(sys.executable), "kernelcube-controller")
        argv = [exe if os.path.exists(exe) else sys.executable, *([] if os.path.exists(exe)
                                                                  else ["-m", "controller"]),
                *self.controller_args(), "--identity", identity]
        env = dict(os.environ, PYTHONPATH=REPO, POD_NAME=identity)
        process = Process(f"controller-{identity}-{len(self.controllers)}", argv, self.dir, env=env)
        self.controllers.append(process)
        return process

    def start_gateway(self, port: int | None = None, extra_args: tuple[str, ...] = ()) -> Gateway:
        state = self.dir / f"gateway{len(self.gateways)}"
        extra = ["--backend", "kubernetes", "--KernelCubeApp.in_cluster=false",
                 f"--KernelCubeApp.kubeconfig={self.gateway_kubeconfig}",
                 "--namespaces", NAMESPACE, f"--KernelCubeApp.identity_namespace={NAMESPACE}",
                 "--KernelCubeApp.claim_timeout=60", *extra_args]
        # This checkout's code, even when the virtualenv's editable install is another's.
        gateway = Gateway(str(state), port or free_port(), redis_url=self.redis_url,
                          extra=tuple(extra), env={"PYTHONPATH": REPO})
        self.gateways.append(gateway)
        return gateway

    def clean(self) -> None:
        shutil.rmtree(self.dir / "pods", ignore_errors=True)
