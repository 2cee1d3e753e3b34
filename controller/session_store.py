"""The few operations of the shared Redis session store that garbage collection needs.

The layout is AgentCube's (agentcube-api.md §4), as the gateway writes it
(`kernel_gateway_ext/store/redis.py`, which the controller may not import):

- `session:<id>`: the record, a SandboxInfo JSON string;
- `session:expiry`: ZSET, score = expiresAt (unix seconds);
- `session:last_activity`: ZSET, score = last activity (unix seconds);
- `session:idle_deadline`: ZSET, score = last activity + the record's idle timeout
  (KernelCube's, so idle sessions are found without upstream's starvation quirk).

Every key may carry a prefix (the gateway's `prefix` option). Scans are index range queries
with LIMIT, so a pass costs what it handles, not what the store holds. Deleting a record
removes its key and its three index entries in one MULTI/EXEC, as the gateway does.
"""

from __future__ import annotations

import json
import logging

import redis.asyncio as aioredis

log = logging.getLogger(__name__)

# Drop index entries whose record is gone, in one atomic step: a record created meanwhile
# with the same id keeps its entries.
# KEYS: expiry, last_activity, idle_deadline, then the record key of each ARGV id
PRUNE_SCRIPT = """
local pruned = 0
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[3 + i]) == 0 then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    pruned = pruned + 1
  end
end
return pruned
"""


class Fetched:
    """One record as read: the decoded document (None when gone) and its two index scores."""

    __slots__ = ("session_id", "info", "last_activity", "deadline")

    def __init__(self, session_id: str, info: dict | None, last_activity: float | None,
                 deadline: float | None) -> None:
        self.session_id = session_id
        self.info = info
        self.last_activity = last_activity
        self.deadline = deadline


class SessionIndex:
    def __init__(self, url: str, prefix: str = "", *, timeout: float = 5.0) -> None:
        self.prefix = prefix
        self.redis = aioredis.Redis.from_url(url, decode_responses=True,
                                             socket_connect_timeout=timeout,
                                             socket_timeout=timeout)
        self.expiry_key = prefix + "session:expiry"
        self.activity_key = prefix + "session:last_activity"
        self.deadline_key = prefix + "session:idle_deadline"
        self._prune = self.redis.register_script(PRUNE_SCRIPT)

    @property
    def index_keys(self) -> list[str]:
        return [self.expiry_key, self.activity_key, self.deadline_key]

    def key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    async def close(self) -> None:
        await self.redis.aclose()

    async def due(self, index_key: str, now: float, offset: int, limit: int) -> list[str]:
        """Ids whose score in `index_key` is <= now, lowest first, `limit` from `offset`."""
        return await self.redis.zrangebyscore(index_key, "-inf", repr(float(now)),
                                              start=offset, num=limit)

    async def sweep_page(self, cursor: tuple[float, str] | None, limit: int
                         ) -> tuple[list[str], tuple[float, str] | None]:
        """The next `limit` ids of the expiry index after `cursor` (score, id), and the next
        cursor (None once the end is reached, so the sweep starts over). A score cursor, not a
        rank: ranks shift as sessions are deleted, expiry scores do not."""
        low = repr(float(cursor[0])) if cursor else "-inf"
        rows = await self.redis.zrangebyscore(self.expiry_key, low, "+inf", start=0,
                                              num=limit + 1, withscores=True)
        if cursor is not None:
            ids = [sid for sid, _ in rows]
            if cursor[1] in ids:  # skip what the last page ended with
                rows = rows[ids.index(cursor[1]) + 1:]
        rows = rows[:limit]
        if len(rows) < limit:
            return [sid for sid, _ in rows], None
        return [sid for sid, _ in rows], (rows[-1][1], rows[-1][0])

    async def fetch(self, ids: list[str]) -> list[Fetched]:
        """The records of `ids` with their activity and deadline scores, in one round trip."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self.key(sid) for sid in ids])
            pipe.zmscore(self.activity_key, ids)
            pipe.zmscore(self.deadline_key, ids)
            documents, activity, deadlines = await pipe.execute()
        out = []
        for sid, doc, last, deadline in zip(ids, documents, activity, deadlines, strict=True):
            info = None
            if doc is not None:
                try:
                    info = json.loads(doc)
                except ValueError:
                    log.warning("session %s: record is not JSON; leaving it", sid)
                    info = {}
                if not isinstance(info, dict):
                    info = {}
            out.append(Fetched(sid, info, last, deadline))
        return out

    async def exist(self, ids: list[str]) -> list[bool]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.exists(self.key(sid))
            return [bool(found) for found in await pipe.execute()]

    async def delete(self, session_id: str) -> bool:
        """Remove the record and its index entries atomically; False if it was already gone."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(session_id))
            for index in self.index_keys:
                pipe.zrem(index, session_id)
            deleted, *_ = await pipe.execute()
        return deleted > 0

    async def prune(self, ids: list[str]) -> int:
        """Drop the index entries of ids whose record is gone; how many were dropped."""
        if not ids:
            return 0
        return int(await self._prune(keys=[*self.index_keys, *(self.key(s) for s in ids)],
                                     args=ids))
