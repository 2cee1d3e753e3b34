"""The shared session store: Redis with AgentCube's key layout, every multi-key write atomic.

Keys (with an optional prefix in front of each):

- `session:<id>`: the record, a SandboxInfo JSON document (see sandbox_info.py), no TTL;
- `session:expiry`: ZSET, score = expires_at (unix seconds);
- `session:last_activity`: ZSET, score = last activity (unix seconds); the record's
  last_activity is read from here, as touch() only moves the scores;
- `session:idle_deadline`: ZSET, score = last activity + idle timeout. Ours: AgentCube scans
  last_activity and filters by timeout afterwards, so 100 long-timeout idle sessions hide every
  shorter one from its reaper; scanning by deadline cannot starve.

Upstream writes with a plain pipeline whose SETNX result is ignored, so a duplicate create
still rewrites the indexes. Here create and update are one Lua script each way, delete is
MULTI/EXEC. A refused or failed connection becomes StoreUnavailable at once (short timeouts, one
reconnect attempt for a pooled connection that went stale), and the pool reconnects by itself
once Redis is back.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    SessionExists,
    SessionNotFound,
    SessionRecord,
    SessionStore,
    StoreError,
    StoreUnavailable,
)
from .checks import RESERVED_IDS, check_writable
from .sandbox_info import OURS, record_from_info, record_to_info

log = logging.getLogger(__name__)

Records = list[SessionRecord]  # an alias: the method `list` shadows the builtin in the class

# Create (ARGV[6] = "0") or update (ARGV[6] = "1") a record and its three index entries.
# Indexes first: if one of them fails (a key of another type), nothing else is written.
# KEYS: record, expiry, last_activity, idle_deadline
# ARGV: id, document, expires_at, last_activity, idle_deadline, must_exist
WRITE_SCRIPT = """
if (redis.call('EXISTS', KEYS[1]) == 1) ~= (ARGV[6] == '1') then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# Mark activity: both scores move together, and only for a session that still exists. The idle
# timeout comes from the record itself (ARGV[3] is the default for upstream records); '%.17g'
# keeps the deadline exact (Lua's own number formatting keeps 14 digits).
# KEYS: record, last_activity, idle_deadline
# ARGV: id, now, default idle timeout, name of our sub-object in the document
TOUCH_SCRIPT = """
local doc = redis.call('GET', KEYS[1])
if not doc then return 0 end
local timeout = tonumber(ARGV[3])
local ok, info = pcall(cjson.decode, doc)
if ok and type(info) == 'table' and type(info[ARGV[4]]) == 'table'
    and tonumber(info[ARGV[4]].idleTimeout) then
  timeout = tonumber(info[ARGV[4]].idleTimeout)
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], string.format('%.17g', tonumber(ARGV[2]) + timeout), ARGV[1])
return 1
"""

# Drop index entries whose record is gone (deleted by hand, or by an older writer).
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

FETCH_CHUNK = 500  # records per round trip when listing


def redact(url: str) -> str:
    """The URL without its password (in the userinfo or a `password=` query option)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = userinfo.split(":", 1)[0] + ":***@" + host
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)],
                      safe="*/")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class RedisStore(SessionStore):
    """Sessions shared by every gateway replica pointing at the same Redis."""

    persistent = True

    def __init__(self, url: str, prefix: str = "", *, connect_timeout: float = 2.0,
                 timeout: float = 5.0, max_connections: int = 50,
                 default_idle_timeout: float = 900.0, **client_options) -> None:
        """`url`: redis://[user:password@]host:port/db, rediss://… or unix://path?db=N.
        `client_options` go to redis-py (e.g. TLS settings for rediss)."""
        self.url = redact(url)
        self.prefix = prefix
        self.default_idle_timeout = default_idle_timeout
        # A blocking pool: a burst of calls beyond max_connections waits for a free connection
        # (up to `timeout`) instead of failing at once with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, decode_responses=True,
            socket_connect_timeout=connect_timeout, socket_timeout=timeout,
            # One immediate retry: it reconnects a pooled connection that died with a restarted
            # server. More retries, or backoff, would only make a dead Redis answer slowly.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **client_options)
        self._redis = aioredis.Redis.from_pool(pool)
        self._write = self._redis.register_script(WRITE_SCRIPT)
        self._touch = self._redis.register_script(TOUCH_SCRIPT)
        self._prune_script = self._redis.register_script(PRUNE_SCRIPT)
        self.expiry_key = prefix + "session:expiry"
        self.activity_key = prefix + "session:last_activity"
        self.deadline_key = prefix + "session:idle_deadline"

    def key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    @property
    def index_keys(self) -> list[str]:
        return [self.expiry_key, self.activity_key, self.deadline_key]

    @contextlib.contextmanager
    def _reachable(self, action: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"session store Redis at {self.url} is unavailable ({action}): {exc}") from exc

    async def _write_record(self, record: SessionRecord, must_exist: bool) -> bool:
        check_writable(record)
        document = json.dumps(record_to_info(record), separators=(",", ":"))
        args = [record.session_id, document, repr(float(record.expires_at)),
                repr(float(record.last_activity)), repr(float(record.idle_deadline)),
                "1" if must_exist else "0"]
        with self._reachable("update" if must_exist else "create"):
            return bool(await self._write(keys=[self.key(record.session_id), *self.index_keys],
                                          args=args))

    async def create(self, record: SessionRecord) -> None:
        if not await self._write_record(record, must_exist=False):
            raise SessionExists(record.session_id)

    async def update(self, record: SessionRecord) -> None:
        if not await self._write_record(record, must_exist=True):
            raise SessionNotFound(record.session_id)

    async def get(self, session_id: str) -> SessionRecord | None:
        if session_id in RESERVED_IDS:
            return None
        with self._reachable("get"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self.key(session_id)).zscore(self.activity_key, session_id)
                document, last_activity = await pipe.execute()
        if document is None:
            return None
        return self._decode(session_id, document, last_activity)

    def _decode(self, session_id: str, document: str, last_activity: float | None
                ) -> SessionRecord:
        try:
            return record_from_info(json.loads(document), last_activity)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"session {session_id}: unreadable record in Redis: {exc}") from exc

    async def delete(self, session_id: str) -> bool:
        if session_id in RESERVED_IDS:
            return False
        with self._reachable("delete"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.key(session_id))
                for index in self.index_keys:
                    pipe.zrem(index, session_id)
                deleted, *_ = await pipe.execute()
        return deleted > 0

    async def touch(self, session_id: str, now: float | None = None) -> bool:
        if session_id in RESERVED_IDS:
            return False
        now = time.time() if now is None else now
        args = [session_id, repr(float(now)), repr(float(self.default_idle_timeout)), OURS]
        with self._reachable("touch"):
            return bool(await self._touch(
                keys=[self.key(session_id), self.activity_key, self.deadline_key], args=args))

    async def _fetch(self, ids: list[str]) -> tuple[Records, list[str]]:
        """The records of `ids` in order, and the ids whose record is gone."""
        if not ids:
            return [], []
        with self._reachable("fetch"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.mget([self.key(sid) for sid in ids]).zmscore(self.activity_key, ids)
                documents, activity = await pipe.execute()
        records, missing = [], []
        for sid, document, last_activity in zip(ids, documents, activity, strict=True):
            if document is None:
                missing.append(sid)
                continue
            try:
                records.append(self._decode(sid, document, last_activity))
            except StoreError as exc:
                log.warning("skipping session %s: %s", sid, exc)
        return records, missing

    async def _prune(self, ids: list[str]) -> None:
        with self._reachable("prune"):
            pruned = await self._prune_script(
                keys=[*self.index_keys, *(self.key(sid) for sid in ids)], args=ids)
        if pruned:
            log.info("pruned %d index entries of sessions whose record is gone", pruned)

    async def _due(self, index_key: str, now: float, limit: int) -> Records:
        records: Records = []
        if limit <= 0:
            return records
        # Stale entries are pruned as they are found; retrying fills the batch with live ones.
        for _ in range(3):
            with self._reachable("scan " + index_key):
                ids = await self._redis.zrangebyscore(index_key, "-inf", repr(float(now)),
                                                      start=0, num=limit)
            records, missing = await self._fetch(ids)
            if missing:
                await self._prune(missing)
            if not missing or len(ids) < limit:
                break
        return records

    async def expired(self, now: float, limit: int = 100) -> Records:
        return await self._due(self.expiry_key, now, limit)

    async def idle(self, now: float, limit: int = 100) -> Records:
        return await self._due(self.deadline_key, now, limit)

    async def list(self, limit: int = 1000) -> Records:
        # Every record is in the expiry index; there is no creation index to read in order.
        with self._reachable("list"):
            ids = await self._redis.zrange(self.expiry_key, 0, -1)
        records: Records = []
        for start in range(0, len(ids), FETCH_CHUNK):
            found, _ = await self._fetch(ids[start:start + FETCH_CHUNK])
            records.extend(found)
        return heapq.nsmallest(max(limit, 0), records, key=lambda r: (r.created_at, r.session_id))

    async def ping(self) -> None:
        with self._reachable("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()
