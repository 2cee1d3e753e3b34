"""Session stores: one behavioural suite run against MemoryStore and RedisStore (a real
redis-server), then what only Redis has.

Both stores: create/get round trip, a duplicate create leaving the original and its indexes
intact, update of a missing id, idempotent delete, touch moving the idle deadline, expired/idle
ordering and limits, the starvation case (100+ long-timeout idle sessions must not hide a
short-timeout one), concurrent creates, invalid records.
Redis: the exact key layout and JSON field names (read with a plain client), key prefix, stale
index entries skipped and pruned, records written by upstream AgentCube, StoreUnavailable
within a second when the server dies and recovery when it comes back on the same port.
Also: make_store, the SandboxInfo codec (Go durations, RFC 3339).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from kernel_gateway_ext.store import (
    MemoryStore,
    RedisStore,
    SessionExists,
    SessionNotFound,
    SessionRecord,
    StoreUnavailable,
    make_store,
)
from kernel_gateway_ext.store.sandbox_info import (
    go_duration,
    parse_go_duration,
    parse_rfc3339,
    record_from_info,
    record_to_info,
    rfc3339,
)
from tests.support.redis import RedisServer, free_port

NOW = 1_700_000_000.25
HOUR = 3600.0


def record(session_id: str | None = None, **fields) -> SessionRecord:
    fields.setdefault("template", "default")
    fields.setdefault("created_at", NOW)
    fields.setdefault("last_activity", NOW)
    fields.setdefault("expires_at", NOW + 8 * HOUR)
    return SessionRecord(str(uuid.uuid4()) if session_id is None else session_id, **fields)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest_asyncio.fixture
async def raw(redis_server):
    """A plain client on the test server, emptied before each test."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_server").url  # started only if a Redis test runs
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    redis_store = RedisStore(url)
    try:
        yield redis_store
    finally:
        await redis_store.close()


@pytest_asyncio.fixture
async def redis_store(redis_server, raw):
    redis_store = RedisStore(redis_server.url)
    try:
        yield redis_store
    finally:
        await redis_store.close()


# --- both stores ------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_create_get_round_trip(store):
    rec = record(kind="agent-runtime", namespace="team-a", status="creating",
                 created_at=NOW + 0.123456, expires_at=NOW + 7200.5, idle_timeout=90.5,
                 last_activity=NOW + 1.000001, sandbox_id="uid-1", provider="kubernetes",
                 sandbox={"pod": "p-1", "ports": [8080], "nested": {"ok": True, "n": None}},
                 entry_points=[{"path": "/", "protocol": "HTTP", "endpoint": "10.0.0.1:8080"}])
    await store.create(rec)
    got = await store.get(rec.session_id)
    assert got == rec
    got.sandbox["pod"] = "changed"  # a copy: the caller's changes are not stored
    assert (await store.get(rec.session_id)) == rec
    assert await store.get("no-such-id") is None


@pytest.mark.asyncio
async def test_duplicate_create_leaves_original_and_indexes(store):
    original = record("s1")
    await store.create(original)
    intruder = record("s1", template="other", expires_at=NOW + 1, last_activity=NOW - HOUR)
    with pytest.raises(SessionExists):
        await store.create(intruder)
    assert await store.get("s1") == original
    # The intruder's earlier expiry and activity reached no index.
    assert await store.expired(NOW + 10) == []
    assert await store.idle(NOW + 10) == []


@pytest.mark.asyncio
async def test_update(store):
    with pytest.raises(SessionNotFound):
        await store.update(record("ghost"))
    assert await store.get("ghost") is None
    assert await store.expired(float("inf")) == []

    rec = record("s1")
    await store.create(rec)
    rec.status, rec.expires_at, rec.last_activity = "not-ready", NOW + 5, NOW - HOUR
    await store.update(rec)
    assert await store.get("s1") == rec
    assert await store.expired(NOW + 5) == [rec]  # the indexes follow the new times
    assert await store.idle(NOW) == [rec]


@pytest.mark.asyncio
async def test_delete_is_idempotent(store):
    rec = record("s1", expires_at=NOW, last_activity=NOW - HOUR)
    await store.create(rec)
    assert await store.delete("s1") is True
    assert await store.delete("s1") is False
    assert await store.delete("never-was") is False
    assert await store.get("s1") is None
    assert await store.expired(NOW + HOUR) == [] and await store.idle(NOW + HOUR) == []
    await store.create(rec)  # the id is free again
    assert await store.get("s1") == rec


@pytest.mark.asyncio
async def test_touch_moves_idle_deadline(store):
    await store.create(record("s1", idle_timeout=60.0))
    assert [r.session_id for r in await store.idle(NOW + 60)] == ["s1"]
    assert await store.touch("s1", now=NOW + 30.5) is True
    assert (await store.get("s1")).last_activity == NOW + 30.5
    assert await store.idle(NOW + 90.4) == []
    assert [r.session_id for r in await store.idle(NOW + 90.5)] == ["s1"]

    before = time.time()
    assert await store.touch("s1") is True  # without `now`: the clock
    assert (await store.get("s1")).last_activity >= before

    assert await store.touch("unknown", now=NOW) is False
    assert await store.get("unknown") is None  # touch never creates


@pytest.mark.asyncio
async def test_expired_order_boundary_and_limit(store):
    offsets = [50, 10, 40, 20, 30, 1000]
    for i, offset in enumerate(offsets):
        await store.create(record(f"s{i}", expires_at=NOW + offset))
    due = await store.expired(NOW + 40, limit=3)
    assert [r.expires_at - NOW for r in due] == [10, 20, 30]
    due = await store.expired(NOW + 40)  # the boundary is inclusive
    assert [r.expires_at - NOW for r in due] == [10, 20, 30, 40]
    assert await store.expired(NOW) == []
    assert await store.expired(NOW + 40, limit=0) == []


@pytest.mark.asyncio
async def test_idle_order_and_limit(store):
    # deadlines: 100+50, 0+300, 200+10, 20+20 -> order s3 (40), s0 (150), s2 (210), s1 (300)
    for i, (activity, timeout) in enumerate([(100, 50), (0, 300), (200, 10), (20, 20)]):
        await store.create(record(f"s{i}", last_activity=NOW + activity, idle_timeout=timeout))
    assert [r.session_id for r in await store.idle(NOW + 1000, limit=3)] == ["s3", "s0", "s2"]
    assert [r.session_id for r in await store.idle(NOW + 210)] == ["s3", "s0", "s2"]
    assert await store.idle(NOW + 39) == []


@pytest.mark.asyncio
async def test_long_timeout_idle_sessions_do_not_starve_a_short_one(store):
    # 120 sessions idle for 50 minutes, but with an 8h timeout, have the oldest activity;
    # AgentCube's reaper takes the 100 oldest and never sees the short-timeout one.
    await asyncio.gather(*(store.create(record(f"long{i:03}", last_activity=NOW - 3000,
                                               idle_timeout=8 * HOUR)) for i in range(120)))
    await store.create(record("short", last_activity=NOW - 120, idle_timeout=60))
    assert [r.session_id for r in await store.idle(NOW, limit=100)] == ["short"]


@pytest.mark.asyncio
async def test_list_oldest_first(store):
    for i, created in enumerate([30, 10, 20]):
        await store.create(record(f"s{i}", created_at=NOW + created))
    assert [r.session_id for r in await store.list()] == ["s1", "s2", "s0"]
    assert [r.session_id for r in await store.list(limit=2)] == ["s1", "s2"]


@pytest.mark.asyncio
async def test_concurrent_creates(store):
    records = [record() for _ in range(50)]
    await asyncio.gather(*(store.create(rec) for rec in records))
    assert sorted(r.session_id for r in await store.list()) == sorted(
        r.session_id for r in records)

    rivals = [record("contested", template=f"t{i}") for i in range(20)]
    results = await asyncio.gather(*(store.create(rec) for rec in rivals), return_exceptions=True)
    winners = [rec for rec, result in zip(rivals, results, strict=True) if result is None]
    assert len(winners) == 1
    assert all(isinstance(result, SessionExists) for result in results if result is not None)
    assert await store.get("contested") == winners[0]


@pytest.mark.asyncio
async def test_invalid_records_are_refused(store):
    with pytest.raises(ValueError, match="expires_at"):
        await store.create(record("s1", expires_at=0.0))
    for reserved in ("", "expiry", "last_activity", "idle_deadline"):
        with pytest.raises(ValueError, match="session id"):
            await store.create(record(reserved))
        assert await store.get(reserved) is None
        assert await store.touch(reserved) is False
        assert await store.delete(reserved) is False
    assert await store.list() == []
    await store.ping()


# --- Redis only -------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_redis_key_layout_and_document(redis_store, raw):
    rec = record("abc", created_at=NOW, expires_at=NOW + 8 * HOUR, last_activity=NOW + 1,
                 idle_timeout=900.0, sandbox_id="uid-1", sandbox={"pid": 42},
                 entry_points=[{"path": "/", "protocol": "HTTP", "endpoint": "127.0.0.1:9"}])
    await redis_store.create(rec)
    assert sorted(await raw.keys("*")) == ["session:abc", "session:expiry",
                                           "session:idle_deadline", "session:last_activity"]
    assert await raw.type("session:abc") == "string"
    assert await raw.ttl("session:abc") == -1  # no TTL, as upstream
    for index in ("session:expiry", "session:idle_deadline", "session:last_activity"):
        assert await raw.type(index) == "zset"
    assert await raw.zscore("session:expiry", "abc") == NOW + 8 * HOUR
    assert await raw.zscore("session:last_activity", "abc") == NOW + 1
    assert await raw.zscore("session:idle_deadline", "abc") == NOW + 1 + 900

    doc = json.loads(await raw.get("session:abc"))
    assert doc == {
        "kind": "Sandbox", "sandboxId": "uid-1", "sandboxNamespace": "default", "name": "default",
        "entryPoints": [{"path": "/", "protocol": "HTTP", "endpoint": "127.0.0.1:9"}],
        "sessionId": "abc", "createdAt": "2023-11-14T22:13:20.25Z",
        "expiresAt": "2023-11-15T06:13:20.25Z", "idleTimeout": "15m0s", "status": "ready",
        "kernelcube": {"template": "default", "kind": "code-interpreter", "provider": "local",
                       "sandbox": {"pid": 42}, "createdAt": NOW, "expiresAt": NOW + 8 * HOUR,
                       "idleTimeout": 900.0, "lastActivity": NOW + 1}}

    # touch moves both scores exactly, reading the timeout from the stored document
    await redis_store.touch("abc", now=NOW + 100.123456)
    assert await raw.zscore("session:last_activity", "abc") == NOW + 100.123456
    assert await raw.zscore("session:idle_deadline", "abc") == NOW + 100.123456 + 900
    assert await redis_store.delete("abc")
    assert await raw.keys("*") == []  # ZSETs emptied are gone too


@pytest.mark.asyncio
async def test_redis_key_prefix(redis_server, raw):
    prefixed = RedisStore(redis_server.url, prefix="kc:")
    try:
        await prefixed.create(record("abc"))
        assert await prefixed.touch("abc", now=NOW)
        assert sorted(await raw.keys("*")) == ["kc:session:abc", "kc:session:expiry",
                                               "kc:session:idle_deadline",
                                               "kc:session:last_activity"]
    finally:
        await prefixed.close()


@pytest.mark.asyncio
async def test_redis_stale_index_entries_are_skipped_and_pruned(redis_store, raw):
    for i in range(5):
        await redis_store.create(record(f"s{i}", expires_at=NOW + i))
    await raw.delete("session:s0", "session:s1")  # records gone, index entries left behind
    due = await redis_store.expired(NOW + 10, limit=3)
    assert [r.session_id for r in due] == ["s2", "s3", "s4"]
    for index in ("session:expiry", "session:last_activity", "session:idle_deadline"):
        assert await raw.zrange(index, 0, -1) == ["s2", "s3", "s4"]


@pytest.mark.asyncio
async def test_redis_reads_upstream_records(redis_store, raw):
    """A record as AgentCube's Workload Manager writes it (no `kernelcube` object)."""
    doc = {"kind": "SandboxClaim", "sandboxId": "uid-9", "sandboxNamespace": "ns",
           "name": "ci-abcd1234", "entryPoints": None, "sessionId": "up",
           "createdAt": "2023-11-14T22:13:20.25+01:00", "expiresAt": "2023-11-15T06:13:20Z",
           "idleTimeout": "1m30s", "status": "ready"}
    created = NOW - HOUR
    await raw.set("session:up", json.dumps(doc))
    await raw.zadd("session:expiry", {"up": parse_rfc3339(doc["expiresAt"])})
    await raw.zadd("session:last_activity", {"up": created + 5})
    got = await redis_store.get("up")
    assert (got.template, got.namespace, got.sandbox_id, got.entry_points) == (
        "ci-abcd1234", "ns", "uid-9", [])
    assert (got.created_at, got.last_activity, got.idle_timeout) == (created, created + 5, 90)
    # upstream records carry no numeric timeout for the touch script: it uses the default
    assert await redis_store.touch("up", now=NOW)
    assert await raw.zscore("session:idle_deadline", "up") == NOW + 900


@pytest.mark.asyncio
async def test_redis_down_is_unavailable_fast_and_recovers(tmp_path):
    server = RedisServer(tmp_path).start()
    store = RedisStore(server.url)
    try:
        await store.create(record("s1"))
        # A restart between two calls is invisible: the stale pooled connection is replaced.
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        assert await store.get("s1") is None  # no persistence
        await store.create(record("s1"))

        await asyncio.to_thread(server.stop)

        calls = [store.ping, lambda: store.get("s1"), lambda: store.create(record("s2")),
                 lambda: store.update(record("s1")), lambda: store.delete("s1"),
                 lambda: store.touch("s1"), lambda: store.expired(NOW), lambda: store.idle(NOW),
                 store.list]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
                await call()
            assert time.monotonic() - started < 1.0

        await asyncio.to_thread(server.start)  # same port, empty (no persistence)
        await store.ping()
        assert await store.get("s1") is None
        await store.create(record("s1", idle_timeout=60))
        assert await store.touch("s1", now=NOW)  # scripts are loaded again after the restart
        assert [r.session_id for r in await store.idle(NOW + 60)] == ["s1"]
    finally:
        await store.close()
        await asyncio.to_thread(server.stop)


@pytest.mark.asyncio
async def test_redis_unavailable_message_hides_password():
    store = RedisStore(f"redis://user:s3cret@127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert "s3cret" not in str(caught.value)
        assert "redis://user:***@127.0.0.1" in str(caught.value)
    finally:
        await store.close()


# --- make_store and the codec -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_make_store():
    for url in (None, "", "memory"):
        assert isinstance(make_store(url), MemoryStore)
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/1", "unix:///tmp/r.sock?db=2"):
        store = make_store(url, prefix="kc:")
        assert isinstance(store, RedisStore) and store.prefix == "kc:"
        await store.close()
    with pytest.raises(ValueError, match="unknown session store") as caught:
        make_store("postgres://u:pw@h/db")
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("seconds, text", [
    (900, "15m0s"), (3600, "1h0m0s"), (90.5, "1m30.5s"), (0.25, "250ms"), (1.5e-6, "1.5µs"),
    (5e-9, "5ns"), (0, "0s"), (-1.5, "-1.5s"), (2 * 86400 + 1.25, "48h0m1.25s")])
def test_go_duration(seconds, text):
    assert go_duration(seconds) == text
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_go_duration_rejects_garbage():
    for text in ("", "15", "15x", "1h 2m", "m"):
        with pytest.raises(ValueError):
            parse_go_duration(text)


def test_rfc3339():
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(NOW) == "2023-11-14T22:13:20.25Z"
    assert re.fullmatch(r"[\d-]+T[\d:]+\.\d{1,9}Z", rfc3339(time.time() + 1e-4))
    assert parse_rfc3339("2023-11-14T23:13:20.25+01:00") == NOW
    assert parse_rfc3339("2023-11-14T22:13:20.250000000Z") == NOW


def test_sandbox_info_round_trip():
    rec = record(sandbox={"a": [1, 2]}, idle_timeout=1.1, created_at=NOW + 1e-6)
    assert record_from_info(json.loads(json.dumps(record_to_info(rec)))) == rec
