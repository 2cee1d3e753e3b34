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
    events: Any = None  # controller.events.EventRecorder, or None: no Events

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event in the background: never a reconcile's latency."""
        if self.events is not None:
            self.events.emit(obj, type_, reason, message)

    def enqueue(self, kind: str, namespace: str, name: str, delay: float = 0.0) -> None:
        queue = self.queues.get(kind)
        if queue is not None:
            queue.add((namespace, name), delay)
