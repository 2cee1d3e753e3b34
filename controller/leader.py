"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

A candidate takes the Lease when it is free or when its holder has not renewed it for
`lease_duration` seconds, as measured on the candidate's own clock from the moment the Lease was
last seen to change (so clock skew between replicas does not matter). Every write is a
conditional update, so two candidates never both win. The leader renews every `retry_period`
and steps down if it could not renew within `renew_deadline`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from typing import Any

from controller.errors import AlreadyExists, ApiError, Conflict, NotFound
from controller.resources import LEASES

log = logging.getLogger(__name__)


def micro_time(moment: datetime.datetime | None = None) -> str:
    moment = moment or datetime.datetime.now(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Any, namespace: str, name: str, identity: str, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.is_leader = False
        self._observed_rv: str | None = None
        self._observed_at = 0.0

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def acquire(self) -> None:
        """Return once this candidate holds the Lease."""
        while True:
            if await self.try_acquire_or_renew():
                break
            await asyncio.sleep(self.retry_period * random.uniform(1.0, 1.2))
        log.info("%s became the leader (lease %s/%s)", self.identity, self.namespace, self.name)

    async def hold(self) -> None:
        """Renew the Lease until a renewal fails for `renew_deadline`; then return (lost)."""
        last_renewed = self._now()
        while True:
            await asyncio.sleep(self.retry_period)
            try:
                renewed = await self.try_acquire_or_renew()
            except ApiError as exc:
                log.warning("renewing the lease failed: %s", exc)
                renewed = False
            if renewed:
                last_renewed = self._now()
            elif self._now() - last_renewed >= self.renew_deadline or not self.is_leader:
                self.is_leader = False
                log.warning("%s lost the leadership", self.identity)
                return

    async def try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
        except NotFound:
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, now, 0)}
            try:
                lease = await self.kube.create(LEASES, self.namespace, body)
            except AlreadyExists:
                return False
            self._seen(lease)
            self.is_leader = True
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if lease["metadata"]["resourceVersion"] != self._observed_rv:
            self._seen(lease)
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self._now() < self._observed_at + duration:
            self.is_leader = False
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquire_time = spec.get("acquireTime") or now
        if holder != self.identity:
            transitions += 1
            acquire_time = now
        body = dict(lease) | {"spec": self._spec(acquire_time, now, transitions)}
        try:
            lease = await self.kube.replace(LEASES, self.namespace, self.name, body)
        except (Conflict, NotFound):
            self.is_leader = False
            return False
        self._seen(lease)
        self.is_leader = True
        return True

    async def release(self) -> None:
        """Give the Lease up at shutdown so a standby takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"]) | {"holderIdentity": "", "leaseDurationSeconds": 1,
                                          "renewTime": micro_time()}
            await self.kube.replace(LEASES, self.namespace, self.name, dict(lease) | {"spec": spec})
        except ApiError as exc:
            log.warning("releasing the lease failed: %s", exc)

    def _spec(self, acquire_time: str, renew_time: str, transitions: int) -> dict:
        return {"holderIdentity": self.identity,
                "leaseDurationSeconds": int(round(self.lease_duration)),
                "acquireTime": acquire_time, "renewTime": renew_time,
                "leaseTransitions": transitions}

    def _seen(self, lease: dict) -> None:
        self._observed_rv = lease["metadata"]["resourceVersion"]
        self._observed_at = self._now()
