"""Operators' endpoints: liveness, readiness and Prometheus metrics (no token needed)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..store.base import StoreUnavailable
from .base import GatewayHandler


class LiveHandler(GatewayHandler):
    requires_token = False

    def get(self) -> None:
        self.write_json({"status": "alive"})


class ReadyHandler(GatewayHandler):
    """Ready when the store answers, the provider can serve, and every pool that should be warm
    has a ready sandbox (pools that refill outside the gateway, as on Kubernetes, don't count:
    one drained pool must not take every replica out of its Service)."""

    requires_token = False

    async def get(self) -> None:
        pools = {name: {"ready": len(pool.ready), "size": pool.template.pool_size, "creating": pool.creating}
                 for name, pool in self.gateway.pools.items()}
        for name, pool in self.gateway.pools.items():
            failures = getattr(pool, "preload_failures", None)  # Kubernetes pools preload nothing
            if failures:  # the pool serves, without what failed
                pools[name]["preload_failed"] = failures
        problems = [f"pool {name!r} has no ready sandbox yet" for name, p in pools.items()
                    if p["size"] > 0 and p["ready"] == 0
                    and getattr(self.gateway.pools[name], "gates_readiness", True)]
        problems += self.gateway.provider.readiness_problems()
        try:
            await self.gateway.store.ping()
        except StoreUnavailable as exc:
            problems.insert(0, str(exc))
        if problems:
            self.write_json({"status": "not ready", "error": "; ".join(problems), "pools": pools}, 503)
        else:
            self.write_json({"status": "ready", "pools": pools})


class MetricsHandler(GatewayHandler):
    requires_token = False

    async def get(self) -> None:
        try:
            await self.gateway.metrics.count_sessions(self.gateway.store, self.gateway.pools)
        except StoreUnavailable as exc:  # the other metrics still matter most during an outage
            self.log.warning("metrics: could not count sessions: %s", exc)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.gateway.metrics.registry))


default_handlers = [
    (r"/health/live", LiveHandler),
    (r"/health/ready", ReadyHandler),
    (r"/metrics", MetricsHandler),
]
