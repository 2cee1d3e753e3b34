"""What the reconcilers share: the API client, the caches, the queues, settings and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.expectations import Expectations
from controller.informer import Informer
from controller.settings import Settings
from controller.workqueue import WorkQueue


@dataclass
class Context:
    kube: Any  # controller.kube.KubeClient, or anything with its methods
    settings: Settings
    metrics: Any  # controller.metrics.Metrics
    sandboxes: Informer
    pods: Informer
    services: Informer
    claims: Informer
    pools: Informer
    templates: Informer
    expectations: Expectations = field(default_factory=Expectations)
    queues: dict[str, WorkQueue] = field(default_factory=dict)

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        queue = self.queues.get(kind)
        if queue is not None:
            queue.add((namespace, name), delay)
