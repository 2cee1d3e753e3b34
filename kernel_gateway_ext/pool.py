"""Warm pools: per template, N sandboxes whose kernel already answered, ready to claim.

A claim pops a ready sandbox (O(1)); an empty pool queues the claim, and the refill task, which
starts sandboxes in bounded parallel batches, hands the next one to the oldest waiting claim.
Creation never exceeds what is wanted (pool size plus waiting claims) nor the gateway-wide
capacity. A sandbox that fails to start is reaped by its provider; the pool backs off and tries
again, and says so in logs and metrics. A sandbox whose preload failed in part still serves;
the pool says what failed (logs, metrics, and its status in /health/ready).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from .metrics import Metrics
from .providers import Sandbox, SandboxProvider
from .templates import Template

log = logging.getLogger("kernelcube.pool")

MAX_BACKOFF = 30.0


class CapacityExhausted(RuntimeError):
    """No sandbox could be had within the caller's timeout."""


class Capacity:
    """The gateway-wide bound on live sandboxes (ready, starting and claimed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._listeners: list[Callable[[], None]] = []

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def adopt(self) -> None:
        """Count a sandbox that exists already (re-adopted at startup), even beyond the limit."""
        self.used += 1

    def release(self) -> None:
        self.used = max(0, self.used - 1)
        for listener in list(self._listeners):
            listener()

    def on_release(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)


class WarmPool:
    def __init__(self, template: Template, provider: SandboxProvider, capacity: Capacity,
                 metrics: Metrics, max_parallel: int = 2):
        self.template = template
        self.provider = provider
        self.capacity = capacity
        self.metrics = metrics
        self.max_parallel = max_parallel
        self.ready: collections.deque[Sandbox] = collections.deque()
        self.creating = 0
        self.failures = 0
        # What the last started sandbox's preload could not do: {module or "(code)": error}.
        self.preload_failures: dict[str, str] = {}
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._wake = asyncio.Event()
        self._not_before = 0.0
        self._runner: asyncio.Task | None = None
        self._starts: set[asyncio.Task] = set()
        capacity.on_release(self._wake.set)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def start(self) -> None:
        self._runner = asyncio.ensure_future(self._run())

    async def claim(self, timeout: float, session_id: str | None = None) -> tuple[Sandbox, str]:
        """A ready sandbox and how it was had ("warm" or "cold"); CapacityExhausted on timeout.
        `session_id` is the session it is for (pools that label their sandboxes use it)."""
        while self.ready:
            sandbox = self.ready.popleft()
            self._wake.set()
            if await self.provider.is_alive(sandbox):
                return sandbox, "warm"
            log.warning("pool %s: sandbox %s died while warm; discarding it", self.template.name, sandbox.id)
            await self._discard(sandbox)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            return await asyncio.wait_for(waiter, timeout), "cold"
        except asyncio.TimeoutError:
            raise CapacityExhausted(
                f"no sandbox of template {self.template.name!r} became available within {timeout:g}s "
                f"(capacity {self.capacity.used}/{self.capacity.limit} in use); retry later or raise the timeout"
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _deficit(self) -> int:
        return self.template.pool_size + self.waiting - len(self.ready) - self.creating

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self._not_before - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
                continue
            while self._deficit() > 0 and self.creating < self.max_parallel and self.capacity.try_acquire():
                self.creating += 1
                task = asyncio.ensure_future(self._start_one())
                self._starts.add(task)
                task.add_done_callback(self._starts.discard)
            await self._wake.wait()
            self._wake.clear()

    async def _start_one(self) -> None:
        started = time.monotonic()
        try:
            sandbox = await self.provider.create(self.template)
        except asyncio.CancelledError:
            self.capacity.release()
            raise
        except Exception as exc:
            self.failures += 1
            backoff = min(MAX_BACKOFF, 0.5 * 2 ** (self.failures - 1))
            self._not_before = asyncio.get_running_loop().time() + backoff
            self.metrics.sandbox_start_failures.labels(self.template.name).inc()
            log.error("pool %s: a sandbox failed to start (%d in a row; next try in %.1fs): %s",
                      self.template.name, self.failures, backoff, exc)
            self.capacity.release()
            return
        finally:
            self.creating -= 1
            self._wake.set()
        self.failures = 0
        self.metrics.sandbox_start_seconds.labels(self.template.name).observe(time.monotonic() - started)
        if sandbox.handle.get("kernel_source"):
            self.metrics.kernel_starts.labels(self.template.name, sandbox.handle["kernel_source"]).inc()
        self._note_preload(sandbox)
        self._deliver(sandbox)

    def _note_preload(self, sandbox: Sandbox) -> None:
        report = sandbox.handle.get("preload") or {}
        failed = {name: error for name, error in (report.get("modules") or {}).items() if error != "ok"}
        if report.get("code") not in (None, "ok"):
            failed["(code)"] = report["code"]
        for name in failed:
            self.metrics.preload_failures.labels(self.template.name, name).inc()
        if failed and failed != self.preload_failures:
            log.warning("pool %s: the preload failed in part; its sandboxes serve without it: %s",
                        self.template.name, "; ".join(f"{k}: {v}" for k, v in failed.items()))
        elif self.preload_failures and not failed:
            log.info("pool %s: the preload succeeds again", self.template.name)
        self.preload_failures = failed

    def _deliver(self, sandbox: Sandbox) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(sandbox)
                return
        self.ready.append(sandbox)
        log.debug("pool %s: %d ready", self.template.name, len(self.ready))

    async def _discard(self, sandbox: Sandbox) -> None:
        await self.provider.destroy(sandbox)
        self.capacity.release()

    async def stop(self) -> None:
        """Stop refilling and destroy every unclaimed sandbox, including those still starting."""
        tasks = [t for t in [self._runner, *self._starts] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        while self.ready:
            await self._discard(self.ready.popleft())
