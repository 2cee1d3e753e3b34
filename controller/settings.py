"""The controller's settings, with upstream agent-sandbox's defaults (spec §7.6)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Settings:
    # What to watch: an empty list means every namespace.
    namespaces: list[str] = field(default_factory=list)
    # Workers per kind.
    sandbox_workers: int = 100
    claim_workers: int = 50
    pool_workers: int = 1
    template_workers: int = 1
    # Warm pools.
    max_batch_size: int = 300
    max_pool_replicas: int = 1000  # upstream has no maximum (a DoS concern, #251)
    readiness_grace: float = 300.0  # a member not Ready after this is replaced
    unschedulable_recheck: float = 60.0
    expectations_timeout: float = 300.0
    enable_warm_pool_eviction: bool = True
    pool_batch_delay: float = 0.05  # member events within this window share one pool reconcile
    # Claims.
    adopt_unready: bool = False  # upstream binds not-yet-Ready members (#1513); we don't by default
    warm_wait: float = 2.0  # how long a claim waits for a refilling pool before going cold
    adoption_candidates: int = 3
    allowed_label_domains: tuple[str, ...] = ("sandbox.users.io",)
    # Networking.
    cluster_domain: str = "cluster.local"
    gateway_namespace: str = "agent-sandbox-system"
    gateway_labels: dict[str, str] = field(default_factory=lambda: {"app": "sandbox-router"})
    public_nameservers: tuple[str, ...] = ("8.8.8.8", "1.1.1.1")
    # Watches and leader election.
    resync: float = 300.0
    watch_timeout: int = 300
    leader_election: bool = True
    lease_name: str = "kernelcube-controller"
    lease_namespace: str = "default"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = ""
    # The AgentCube API (CodeInterpreter, AgentRuntime); off when its CRDs are not installed.
    agentcube: bool = True
    # False when an upstream agent-sandbox controller reconciles Sandboxes, templates, pools and
    # claims: only the AgentCube reconcilers and GC run here, reading those objects.
    agent_sandbox: bool = True
    agentcube_workers: int = 2
    identity_namespace: str = "default"  # where Secret picod-router-identity lives
    pool_fill_warning: float = 120.0  # a pool not growing for this long gets a Warning Event
    event_interval: float = 60.0  # the same Event is written at most this often per object
    # Session garbage collection over the shared Redis store; off without a URL.
    redis_url: str = ""
    redis_prefix: str = ""
    gc_interval: float = 15.0  # upstream's hard-coded pass interval
    gc_batch: int = 100  # due sessions handled per pass (idle and expired each)
    gc_pass_timeout: float = 120.0
    gc_concurrency: int = 16  # sessions deleted at once within a pass
    gc_orphan_grace: float = 300.0  # how old a record or workload must be to count as an orphan
    gc_sweep_batch: int = 200  # records and workloads checked for orphans per pass
    gc_default_idle_timeout: float = 900.0  # for records that carry none
    # Metrics: 0 disables the HTTP endpoint.
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
