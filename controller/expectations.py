"""Warm-pool expectations, ReplicaSet style: never create while a previous batch is unobserved.

After creating members, the pool records their names; the Sandbox informer crosses them off as
it sees them. Until all are seen (or `timeout` passes, in case an event was lost), the pool
creates nothing new: the cure for upstream's ~5x over-creation when the cache lags (#1215).
Deletions are tracked the same way, so members being deleted are not replaced twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Expectations:
    def __init__(self, timeout: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._adds: dict[Hashable, dict[str, float]] = {}
        self._deletes: dict[Hashable, dict[str, float]] = {}

    def expect_create(self, pool: Hashable, name: str) -> None:
        self._adds.setdefault(pool, {})[name] = self.clock() + self.timeout

    def expect_delete(self, pool: Hashable, name: str) -> None:
        self._deletes.setdefault(pool, {})[name] = self.clock() + self.timeout

    def observe_create(self, pool: Hashable, name: str) -> bool:
        """Cross off a seen member; True if it was expected."""
        return self._adds.get(pool, {}).pop(name, None) is not None

    def observe_delete(self, pool: Hashable, name: str) -> bool:
        return self._deletes.get(pool, {}).pop(name, None) is not None

    def pending(self, pool: Hashable) -> tuple[int, int]:
        """(creations, deletions) still unobserved, after dropping the timed-out ones."""
        now = self.clock()
        for table in (self._adds, self._deletes):
            names = table.get(pool, {})
            for name in [k for k, deadline in names.items() if deadline <= now]:
                del names[name]
        return len(self._adds.get(pool, {})), len(self._deletes.get(pool, {}))

    def pending_deletes(self, pool: Hashable) -> set[str]:
        self.pending(pool)
        return set(self._deletes.get(pool, {}))

    def expires_in(self, pool: Hashable) -> float | None:
        """Seconds until the pool's earliest unobserved expectation times out (None: none)."""
        self.pending(pool)
        deadlines = [*self._adds.get(pool, {}).values(), *self._deletes.get(pool, {}).values()]
        return max(0.0, min(deadlines) - self.clock()) if deadlines else None

    def satisfied(self, pool: Hashable) -> bool:
        return self.pending(pool) == (0, 0)

    def forget(self, pool: Hashable) -> None:
        self._adds.pop(pool, None)
        self._deletes.pop(pool, None)
