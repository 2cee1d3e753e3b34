"""A work queue of object keys with N workers, in the manner of client-go's workqueue.

A key is never processed by two workers at once; adding a key that is queued is a no-op, and
adding one that is being processed runs it once more afterwards, so events are never lost and
bursts collapse. Handlers return a delay to be called again (or None); `TemporaryError` asks for
a retry after its delay, and a `Conflict` (409) is retried soon, quietly; any other exception is
logged and retried with per-key capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from controller.errors import Conflict, PermanentError, TemporaryError

log = logging.getLogger(__name__)

Reconcile = Callable[[Any], Awaitable[float | None]]


class WorkQueue:
    def __init__(self, name: str, reconcile: Reconcile, workers: int = 1, *,
                 backoff_base: float = 0.05, backoff_cap: float = 30.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.reconcile = reconcile
        self.workers = workers
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.on_error = on_error
        self.runs = 0  # reconciles done, for tests and benchmarks
        self._queue: asyncio.Queue = asyncio.Queue()
        self._queued: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._failures: dict[Hashable, int] = {}
        self._tasks: list[asyncio.Task] = []

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Queue `key` now, or after `delay` seconds (the earliest pending request wins)."""
        if delay > 0:
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            timer = self._timers.get(key)
            if timer is not None and not timer.cancelled() and timer.when() <= when:
                return
            if timer is not None:
                timer.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)  # never swallows the caller's own cancellation
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                delay = await self._run(key)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add(key, delay)

    async def _run(self, key: Hashable) -> float | None:
        self.runs += 1
        try:
            delay = await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Conflict as exc:
            # Optimistic concurrency at work: someone wrote first. Decide again, soon.
            log.debug("%s %s: %s; retrying", self.name, key, exc)
            return self.backoff_base
        except TemporaryError as exc:
            log.info("%s %s: %s; retrying in %.2fs", self.name, key, exc, exc.delay)
            return exc.delay
        except PermanentError as exc:
            log.warning("%s %s: %s", self.name, key, exc)
            if self.on_error:
                self.on_error(self.name)
            return None
        except Exception:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
            log.exception("%s %s failed (attempt %d); retrying in %.2fs",
                          self.name, key, failures, delay)
            if self.on_error:
                self.on_error(self.name)
            return delay
        self._failures.pop(key, None)
        return delay
