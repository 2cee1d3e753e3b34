"""Admission limits, decided before a request's body is read: pure bookkeeping, no I/O.

`FairLimiter` is the Router's concurrency limit (AgentCube's `max-concurrent-requests`) made
fair: besides the global cap, one session may hold only a share of it, so a greedy session gets
429 while the others proceed. `BodyBudget` bounds the request bodies held in memory by all
requests together, so many concurrent uploads cannot exhaust the gateway's memory.
"""

from __future__ import annotations

import collections
import math


class FairLimiter:
    def __init__(self, limit: int, session_share: float):
        self.limit = limit
        self.per_session = max(1, math.floor(limit * session_share))
        self.in_flight = 0
        self._by_session: collections.Counter[str] = collections.Counter()

    def acquire(self, session_id: str) -> str | None:
        """Take a slot for a call on `session_id` ("" for a call that creates a session).
        None when admitted; otherwise which limit refused it: "global" or "session"."""
        if self.in_flight >= self.limit:
            return "global"
        if session_id and self._by_session[session_id] >= self.per_session:
            return "session"
        self.in_flight += 1
        if session_id:
            self._by_session[session_id] += 1
        return None

    def release(self, session_id: str) -> None:
        self.in_flight -= 1
        if session_id:
            self._by_session[session_id] -= 1
            if self._by_session[session_id] <= 0:
                del self._by_session[session_id]


class BodyBudget:
    """Bytes of request bodies held at once. A request reserves its declared length up front
    (or its chunks as they come, when the length is not declared) and releases all on finish."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size
