"""Session GC with a real redis-server and the fake API server: idle (per-record timeout) and
expired sessions lose their SandboxClaim/Sandbox and then their record; orphans both ways (a
record whose objects are gone, a session-labelled object without a record) are cleaned past
the grace period; the batch bound holds; records written by upstream AgentCube (no deadline
index) are collected; local-backend records are left alone; every action is counted.

Records are written by the gateway's own RedisStore, so the controller's reader is checked
against the real writer."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from controller import naming as n
from controller import resources as R
from kernel_gateway_ext.store.base import SessionRecord
from kernel_gateway_ext.store.redis import RedisStore
from tests.controller import helpers as h
from tests.support.redis import RedisServer

HOUR = 3600.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest_asyncio.fixture
async def store(redis_server):
    s = RedisStore(redis_server.url)
    await s._redis.flushdb()
    try:
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture
async def gc_controller(make_controller, redis_server, store):
    async def make(**overrides):
        settings = dict(redis_url=redis_server.url, gc_interval=3600.0, gc_orphan_grace=0.0)
        settings.update(overrides)
        return await make_controller(**settings)
    return make


def record(sid, *, age=60.0, idle_for=0.0, idle_timeout=900.0, ttl=8 * HOUR, kind="SandboxClaim",
           name=None, provider="kubernetes"):
    now = time.time()
    return SessionRecord(
        session_id=sid, template="ci", namespace=h.NS, created_at=now - age,
        expires_at=now - age + ttl, idle_timeout=idle_timeout, last_activity=now - idle_for,
        provider=provider, sandbox={"kind": kind, "name": name or f"sb-{sid}",
                                    "namespace": h.NS})


async def labelled(cluster, res, name, sid, **extra):
    body = h.sandbox(name) if res is R.SANDBOXES else h.claim(name, "nopool")
    body["metadata"].setdefault("labels", {})[n.SESSION_ID] = sid
    body["metadata"].update(extra)
    return await cluster.kube.create(res, h.NS, body)


async def cached(ctl, *names):
    def seen():
        return all(ctl.ctx.sandboxes.get(h.NS, x) or ctl.ctx.claims.get(h.NS, x) for x in names)
    await h.wait_for(seen, 5, f"{names} in the cache")


def gone(cluster, plural, name):
    return cluster.api.get(plural, h.NS, name) is None


@pytest.mark.asyncio
async def test_idle_and_expired_sessions_lose_workload_then_record(cluster, gc_controller, store):
    ctl = await gc_controller()
    # idle: its own 60 s timeout passed, though the default 15 min would not have
    await store.create(record("idle", idle_for=120, idle_timeout=60, name="c-idle"))
    await store.create(record("expired", age=2 * HOUR, ttl=HOUR, kind="Sandbox", name="s-exp"))
    await store.create(record("live", idle_for=120, name="c-live"))
    await labelled(cluster, R.CLAIMS, "c-idle", "idle")
    await labelled(cluster, R.SANDBOXES, "s-exp", "expired")
    await labelled(cluster, R.CLAIMS, "c-live", "live")
    await cached(ctl, "c-idle", "s-exp", "c-live")

    report = await ctl.gc.run_pass()
    assert (report.idle, report.expired, report.errors) == (1, 1, 0)
    assert sorted(report.collected) == ["expired", "idle"]
    assert gone(cluster, "sandboxclaims", "c-idle") and gone(cluster, "sandboxes", "s-exp")
    assert not gone(cluster, "sandboxclaims", "c-live")
    assert await store.get("idle") is None and await store.get("expired") is None
    assert await store.get("live") is not None
    for key in ("session:expiry", "session:last_activity", "session:idle_deadline"):
        assert await store._redis.zrange(key, 0, -1) == ["live"]
    text = ctl.metrics.render().decode()
    assert 'kernelcube_gc_sessions_total{reason="idle"} 1.0' in text
    assert 'kernelcube_gc_sessions_total{reason="expired"} 1.0' in text
    assert 'kernelcube_gc_workloads_deleted_total{kind="SandboxClaim",reason="idle"} 1.0' in text


@pytest.mark.asyncio
async def test_a_failed_workload_delete_keeps_the_record(cluster, gc_controller, store):
    ctl = await gc_controller()
    await store.create(record("s1", age=2 * HOUR, ttl=HOUR, name="c1"))
    await labelled(cluster, R.CLAIMS, "c1", "s1")
    await cached(ctl, "c1")
    real = ctl.kube.delete

    async def failing(*args, **kwargs):
        from controller.errors import ApiError
        raise ApiError(500, "InternalError", "etcd is sad")

    ctl.kube.delete = failing
    report = await ctl.gc.run_pass()
    assert (report.expired, report.errors) == (0, 1)
    assert await store.get("s1") is not None
    ctl.kube.delete = real
    assert (await ctl.gc.run_pass()).expired == 1
    assert await store.get("s1") is None and gone(cluster, "sandboxclaims", "c1")


@pytest.mark.asyncio
async def test_orphans_both_ways_are_cleaned_after_the_grace(cluster, gc_controller, store):
    ctl = await gc_controller(gc_orphan_grace=30.0)
    await store.create(record("no-sandbox", age=120, name="vanished"))  # old, objects gone
    await store.create(record("young", age=1, name="starting"))  # within the grace
    await store.create(record("alive", age=120, name="c-alive"))
    await labelled(cluster, R.CLAIMS, "c-alive", "alive")
    await labelled(cluster, R.SANDBOXES, "ghost", "no-record")  # new: within the grace
    await cached(ctl, "c-alive", "ghost")

    report = await ctl.gc.run_pass()
    assert (report.orphan_records, report.orphan_workloads) == (1, 0)
    assert await store.get("no-sandbox") is None
    assert await store.get("young") is not None and await store.get("alive") is not None
    assert not gone(cluster, "sandboxes", "ghost")

    # Later (as seen by the pass): the ghost is past the grace and still has no record, and
    # the young record is old enough now, its object never having appeared.
    report = await ctl.gc.run_pass(now=time.time() + 60)
    assert report.orphan_workloads == 1 and gone(cluster, "sandboxes", "ghost")
    assert report.orphan_records == 1 and await store.get("young") is None
    assert await store.get("alive") is not None and not gone(cluster, "sandboxclaims", "c-alive")
    text = ctl.metrics.render().decode()
    assert 'kernelcube_gc_orphans_total{kind="record"} 2.0' in text
    assert 'kernelcube_gc_orphans_total{kind="workload"} 1.0' in text


@pytest.mark.asyncio
async def test_a_pass_handles_at_most_a_batch(cluster, gc_controller, store):
    ctl = await gc_controller(gc_batch=10, gc_sweep_batch=0)
    for i in range(30):
        await store.create(record(f"e{i:02d}", age=2 * HOUR, ttl=HOUR, name=f"gone-{i}"))
    assert (await ctl.gc.run_pass()).expired == 10
    assert len(await store._redis.zrange("session:expiry", 0, -1)) == 20
    assert (await ctl.gc.run_pass()).expired == 10
    assert (await ctl.gc.run_pass()).expired == 10
    assert (await ctl.gc.run_pass()).expired == 0


@pytest.mark.asyncio
async def test_upstream_records_without_deadline_index_are_collected(cluster, gc_controller,
                                                                     store):
    ctl = await gc_controller()
    now = time.time()
    info = {"kind": "SandboxClaim", "sandboxId": "uid", "sandboxNamespace": h.NS,
            "name": "up-claim", "entryPoints": [], "sessionId": "up",
            "createdAt": "2020-01-01T00:00:00Z", "expiresAt": "2099-01-01T00:00:00Z",
            "idleTimeout": "1m0s", "status": "ready"}
    r = store._redis
    await r.set("session:up", json.dumps(info))
    await r.zadd("session:expiry", {"up": 4070908800})
    await r.zadd("session:last_activity", {"up": now - 300})
    await labelled(cluster, R.CLAIMS, "up-claim", "up")
    await cached(ctl, "up-claim")
    report = await ctl.gc.run_pass()
    assert report.idle == 1 and await r.get("session:up") is None
    assert gone(cluster, "sandboxclaims", "up-claim")


@pytest.mark.asyncio
async def test_local_backend_records_are_not_the_controllers(cluster, gc_controller, store):
    ctl = await gc_controller()
    await store.create(record("local", age=2 * HOUR, ttl=HOUR, provider="local"))
    report = await ctl.gc.run_pass()
    assert report.expired == 0 and await store.get("local") is not None


@pytest.mark.asyncio
async def test_stale_index_entries_are_pruned(cluster, gc_controller, store):
    ctl = await gc_controller()
    await store._redis.zadd("session:expiry", {"nothing": 1.0})
    report = await ctl.gc.run_pass()
    assert report.stale_index == 1
    assert await store._redis.zrange("session:expiry", 0, -1) == []


@pytest.mark.asyncio
async def test_only_the_leader_collects(cluster, gc_controller, store):
    election = dict(leader_election=True, lease_duration=1.0, renew_deadline=0.7,
                    retry_period=0.1, lease_namespace=h.NS, gc_interval=0.05)
    first = await gc_controller(identity="first", **election)
    second = await gc_controller(wait=False, identity="second", **election)
    await store.create(record("old", age=2 * HOUR, ttl=HOUR, name="c-old"))
    await h.wait_for(lambda: first.gc.passes > 0, 5, "the leader's passes")
    assert second.gc is None and await store.get("old") is None
    await first.close()
    await asyncio.wait_for(second.leading.wait(), 3)
    await store.create(record("older", age=2 * HOUR, ttl=HOUR, name="c-older"))
    await h.wait_for(lambda: second.gc is not None and second.gc.passes > 0, 5, "standby took over")
    assert first.gc is None and await store.get("older") is None
