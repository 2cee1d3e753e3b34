"""The embedded session store: records in a dict, two sorted indexes for the reaper.

No locks: no method awaits between reading and writing, so each one runs whole on the event
loop. Records are copied in and out, so a caller mutating its object changes nothing stored
until it calls update().
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import time

from .base import SessionExists, SessionNotFound, SessionRecord, SessionStore
from .checks import check_writable

Records = list[SessionRecord]  # an alias: the method `list` shadows the builtin in the class


def _copy(record: SessionRecord) -> SessionRecord:
    return SessionRecord.from_dict(record.to_dict())


class ScoreIndex:
    """Members sorted by score, ties by member, like a Redis sorted set."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, str]] = []
        self._scores: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, member: str, score: float) -> None:
        self.discard(member)
        bisect.insort(self._entries, (score, member))
        self._scores[member] = score

    def discard(self, member: str) -> None:
        score = self._scores.pop(member, None)
        if score is not None:
            del self._entries[bisect.bisect_left(self._entries, (score, member))]

    def up_to(self, max_score: float, limit: int) -> list[str]:
        """The first `limit` members with score <= max_score, lowest first."""
        due = itertools.takewhile(lambda entry: entry[0] <= max_score, self._entries)
        return [member for _, member in itertools.islice(due, max(limit, 0))]


class MemoryStore(SessionStore):
    """Sessions of one gateway process; they end with it. The default without Redis."""

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._expiry = ScoreIndex()  # score: expires_at
        self._idle = ScoreIndex()  # score: idle deadline (last_activity + idle_timeout)

    def _put(self, record: SessionRecord) -> None:
        stored = _copy(record)
        self._records[stored.session_id] = stored
        self._expiry.set(stored.session_id, stored.expires_at)
        self._idle.set(stored.session_id, stored.idle_deadline)

    async def create(self, record: SessionRecord) -> None:
        check_writable(record)
        if record.session_id in self._records:
            raise SessionExists(record.session_id)
        self._put(record)

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        return _copy(record) if record else None

    async def update(self, record: SessionRecord) -> None:
        check_writable(record)
        if record.session_id not in self._records:
            raise SessionNotFound(record.session_id)
        self._put(record)

    async def delete(self, session_id: str) -> bool:
        if self._records.pop(session_id, None) is None:
            return False
        self._expiry.discard(session_id)
        self._idle.discard(session_id)
        return True

    async def touch(self, session_id: str, now: float | None = None) -> bool:
        record = self._records.get(session_id)
        if record is None:
            return False
        record.last_activity = time.time() if now is None else now
        self._idle.set(session_id, record.idle_deadline)
        return True

    async def list(self, limit: int = 1000) -> Records:
        oldest = heapq.nsmallest(max(limit, 0), self._records.values(),
                                 key=lambda r: (r.created_at, r.session_id))
        return [_copy(record) for record in oldest]

    async def expired(self, now: float, limit: int = 100) -> Records:
        return [_copy(self._records[sid]) for sid in self._expiry.up_to(now, limit)]

    async def idle(self, now: float, limit: int = 100) -> Records:
        return [_copy(self._records[sid]) for sid in self._idle.up_to(now, limit)]

    async def ping(self) -> None:
        return None
