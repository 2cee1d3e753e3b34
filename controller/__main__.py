"""`kernelcube-controller`: run the agent-sandbox controller against a Kubernetes cluster."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from controller.settings import Settings

DESCRIPTION = """\
Reconcile the agent-sandbox v1beta1 API (Sandbox, SandboxTemplate, SandboxWarmPool,
SandboxClaim) so that warm sandboxes are ready for KernelCube sessions and for any tool written
for kubernetes-sigs/agent-sandbox, and the AgentCube v1alpha1 API (CodeInterpreter → template +
warm pool, AgentRuntime → template). With --redis-url it also garbage-collects sessions (idle,
expired, orphaned) in the store the gateways share. Install the CRDs first (the Helm chart
ships them).

Cluster access: inside a pod the service account is used; elsewhere the kubeconfig
($KUBECONFIG or ~/.kube/config, or --kubeconfig/--context). --server talks to an API server
URL without credentials (e.g. `kubectl proxy`).
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = argparse.ArgumentParser(prog="kernelcube-controller", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("cluster access")
    g.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--context", help="kubeconfig context (default: the current context)")
    g.add_argument("--in-cluster", dest="in_cluster", action="store_true", default=None,
                   help="use the pod's service account only (default: try it, then kubeconfig)")
    g.add_argument("--no-in-cluster", dest="in_cluster", action="store_false",
                   help="never use the service account; read the kubeconfig")
    g.add_argument("--server", help="API server URL to use without credentials (kubectl proxy)")
    g = p.add_argument_group("what to watch")
    g.add_argument("-n", "--namespace", action="append", dest="namespaces", default=[],
                   help="namespace to watch; repeat for several (default: all namespaces)")
    g = p.add_argument_group("leader election (one active replica at a time)")
    g.add_argument("--lease-name", default=defaults.lease_name,
                   help="name of the coordination.k8s.io Lease (default: %(default)s)")
    g.add_argument("--lease-namespace", default=defaults.lease_namespace,
                   help="namespace of the Lease (default: %(default)s)")
    g.add_argument("--lease-duration", type=float, default=defaults.lease_duration,
                   help="seconds a standby waits before taking over (default: %(default)s)")
    g.add_argument("--identity", default="", help="this replica's name in the Lease "
                   "(default: $POD_NAME, else host name and a random suffix)")
    g.add_argument("--no-leader-election", dest="leader_election", action="store_false",
                   help="reconcile without a Lease (only ever run one replica like this)")
    g = p.add_argument_group("tuning")
    g.add_argument("--claim-workers", type=int, default=defaults.claim_workers,
                   help="concurrent claim reconciles (default: %(default)s)")
    g.add_argument("--sandbox-workers", type=int, default=defaults.sandbox_workers,
                   help="concurrent sandbox reconciles (default: %(default)s)")
    g.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                   help="most warm sandboxes one pool creates per pass (default: %(default)s)")
    g.add_argument("--max-pool-replicas", type=int, default=defaults.max_pool_replicas,
                   help="cap on a pool's spec.replicas (default: %(default)s)")
    g.add_argument("--readiness-grace", type=float, default=defaults.readiness_grace,
                   help="seconds before a never-Ready warm sandbox is replaced (default: "
                   "%(default)s)")
    g.add_argument("--warm-wait", type=float, default=defaults.warm_wait,
                   help="seconds a claim waits for a refilling pool before a cold start "
                   "(default: %(default)s)")
    g.add_argument("--allowed-label-domain", action="append", default=[], metavar="DOMAIN",
                   help="domain a claim's additionalPodMetadata labels may use; repeat for "
                   "several (default: sandbox.users.io)")
    g.add_argument("--adopt-unready", action="store_true",
                   help="let claims take warm sandboxes that are not Ready yet (upstream's way)")
    g.add_argument("--cluster-domain", default=defaults.cluster_domain,
                   help="cluster DNS domain for status.serviceFQDN (default: %(default)s)")
    g.add_argument("--gateway-namespace", default=defaults.gateway_namespace,
                   help="namespace whose gateway pods may reach sandboxes under the default "
                   "NetworkPolicy (default: %(default)s)")
    g.add_argument("--gateway-label", action="append", default=[], metavar="KEY=VALUE",
                   help="label of those gateway pods; repeat for several (default: "
                   "app=sandbox-router)")
    g.add_argument("--no-agent-sandbox", dest="agent_sandbox", action="store_false",
                   help="leave Sandboxes, SandboxTemplates, SandboxWarmPools and SandboxClaims to "
                   "an already-installed upstream agent-sandbox controller; only the AgentCube "
                   "reconcilers and session GC run")
    g = p.add_argument_group("AgentCube API (CodeInterpreter, AgentRuntime)")
    g.add_argument("--no-agentcube", dest="agentcube", action="store_false",
                   help="do not reconcile CodeInterpreters and AgentRuntimes (their CRDs are "
                   "not installed)")
    g.add_argument("--identity-namespace", default=None,
                   help="namespace of Secret picod-router-identity, created if missing "
                   "(default: $AGENTCUBE_NAMESPACE, else $POD_NAMESPACE, else default)")
    g.add_argument("--pool-fill-warning", type=float, default=defaults.pool_fill_warning,
                   help="seconds a CodeInterpreter's pool may go without filling before a "
                   "Warning Event (default: %(default)s)")
    g = p.add_argument_group("session garbage collection (leader only; needs --redis-url)")
    g.add_argument("--redis-url", default=None,
                   help="the gateways' session store, redis://[:password@]host:port/db "
                   "(default: $KERNELCUBE_REDIS_URL; unset disables GC)")
    g.add_argument("--redis-prefix", default=defaults.redis_prefix,
                   help="key prefix the gateways use (default: none)")
    g.add_argument("--gc-interval", type=float, default=defaults.gc_interval,
                   help="seconds between GC passes (default: %(default)s)")
    g.add_argument("--gc-batch", type=int, default=defaults.gc_batch,
                   help="idle and expired sessions collected per pass, each (default: "
                   "%(default)s)")
    g.add_argument("--gc-pass-timeout", type=float, default=defaults.gc_pass_timeout,
                   help="seconds one pass may take; the rest waits for the next (default: "
                   "%(default)s)")
    g.add_argument("--gc-orphan-grace", type=float, default=defaults.gc_orphan_grace,
                   help="age in seconds before a record without objects, or a session-labelled "
                   "Sandbox/claim without a record, counts as orphaned (default: %(default)s)")
    g.add_argument("--gc-sweep-batch", type=int, default=defaults.gc_sweep_batch,
                   help="records and session objects checked for orphans per pass; 0 disables "
                   "the orphan sweeps (default: %(default)s)")
    g = p.add_argument_group("observability")
    g.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                   help="port of /metrics, /healthz and /readyz; 0 disables (default: "
                   "%(default)s)")
    g.add_argument("--metrics-host", default=defaults.metrics_host,
                   help="address to serve metrics on (default: %(default)s)")
    g.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default: %(default)s)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    from controller.manager import default_identity

    settings = Settings(
        namespaces=list(args.namespaces), lease_name=args.lease_name,
        lease_namespace=args.lease_namespace, lease_duration=args.lease_duration,
        identity=args.identity or default_identity(), leader_election=args.leader_election,
        claim_workers=args.claim_workers, sandbox_workers=args.sandbox_workers,
        max_batch_size=args.max_batch_size, max_pool_replicas=args.max_pool_replicas,
        readiness_grace=args.readiness_grace, warm_wait=args.warm_wait,
        adopt_unready=args.adopt_unready, cluster_domain=args.cluster_domain,
        gateway_namespace=args.gateway_namespace, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, agentcube=args.agentcube, agent_sandbox=args.agent_sandbox,
        identity_namespace=args.identity_namespace or os.environ.get("AGENTCUBE_NAMESPACE")
        or os.environ.get("POD_NAMESPACE") or "default",
        pool_fill_warning=args.pool_fill_warning,
        redis_url=args.redis_url or os.environ.get("KERNELCUBE_REDIS_URL", ""),
        redis_prefix=args.redis_prefix, gc_interval=args.gc_interval, gc_batch=args.gc_batch,
        gc_pass_timeout=args.gc_pass_timeout, gc_orphan_grace=args.gc_orphan_grace,
        gc_sweep_batch=args.gc_sweep_batch)
    if args.allowed_label_domain:
        settings.allowed_label_domains = tuple(args.allowed_label_domain)
    if args.gateway_label:
        settings.gateway_labels = dict(item.split("=", 1) for item in args.gateway_label)
    settings.renew_deadline = min(settings.renew_deadline, settings.lease_duration * 2 / 3)
    return settings


async def serve(args: argparse.Namespace) -> None:
    from controller.http import MetricsServer
    from controller.kube import KubeClient
    from controller.manager import Controller

    settings = settings_from(args)
    kube = await KubeClient.connect(kubeconfig=args.kubeconfig, context=args.context,
                                    in_cluster=args.in_cluster, host=args.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Controller(kube, settings) as controller:
            server = MetricsServer(controller)
            if settings.metrics_port:
                await server.start(settings.metrics_host, settings.metrics_port)
            try:
                await stop.wait()
            finally:
                await server.stop()
    finally:
        await kube.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
