"""Faults: a sandbox killed mid-session (that session gets 410 and is cleaned, others go on,
the pool refills), a burst of 200 session requests on a small gateway (all served or clearly
refused, nothing leaked), a template whose sandboxes cannot start (backoff, metrics, logs), and
the reaper (idle and expired sessions end; a session in use is never reaped)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from .conftest import TOKEN, body, picod_pid, wait_ready


async def new_session(jp_fetch, template: str = "default") -> str:
    response = await jp_fetch("v1", "sessions", method="POST", body=json.dumps({"template": template}))
    return body(response)["session_id"]


async def execute(jp_fetch, session_id: str, code: str, **extra):
    return await jp_fetch("v1", "execute", method="POST", raise_error=False,
                          body=json.dumps({"code": code, "session_id": session_id, **extra}))


async def test_sandbox_killed_mid_session(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    victim, bystander = await new_session(jp_fetch), await new_session(jp_fetch)
    assert body(await execute(jp_fetch, bystander, "state = 'intact'"))["status"] == "ok"
    record = await gateway.sessions.get(victim)
    os.kill(picod_pid(record.sandbox["handle"]["pid"]), signal.SIGKILL)  # as the OOM killer would

    response = await execute(jp_fetch, victim, "1+1")
    assert response.code == 410, response.body
    assert body(response)["code"] == "SANDBOX_GONE" and "start a new session" in body(response)["error"]
    assert (await jp_fetch("v1", "sessions", victim, raise_error=False)).code == 404
    assert not os.path.exists(record.sandbox["handle"]["dir"])  # noqa: ASYNC240 -- a test probe

    kept = body(await execute(jp_fetch, bystander, "state"))
    assert kept["results"][0]["text/plain"] == "'intact'"
    await wait_ready(jp_fetch)  # the pool refilled


@pytest.fixture
def small_gateway(gateway_config):
    gateway_config.update({"pool_size": 4, "max_sandboxes": 6, "claim_timeout": 3.0})


@pytest.mark.slow
async def test_burst_of_200_session_requests(small_gateway, jp_fetch, gateway, jp_http_port):
    await wait_ready(jp_fetch)
    deadline = time.monotonic() + 60
    while len(gateway.pools["default"].ready) < 4:  # the whole warm pool, not just its first
        assert time.monotonic() < deadline, "the pool never filled"
        await asyncio.sleep(0.05)
    client = AsyncHTTPClient(force_instance=True, max_clients=200)  # all 200 in flight at once
    try:
        responses = await asyncio.gather(*(
            client.fetch(f"http://localhost:{jp_http_port}/v1/sessions", method="POST", body="{}",
                         headers={"Authorization": f"token {TOKEN}"}, raise_error=False, request_timeout=60)
            for _ in range(200)))
    finally:
        client.close()
    codes = [r.code for r in responses]
    served = [body(r)["session_id"] for r in responses if r.code == 201]
    refused = [body(r) for r in responses if r.code != 201]
    assert set(codes) <= {201, 503}, codes
    assert 4 <= len(served) <= 6
    assert all(r["code"] == "CAPACITY_EXHAUSTED" and "retry later" in r["error"] for r in refused)
    assert all(r.headers.get("Retry-After") for r in responses if r.code == 503)
    assert len(set(served)) == len(served)
    for session_id in served:
        assert (await jp_fetch("v1", "sessions", session_id, method="DELETE")).code == 204


@pytest.fixture
def broken_template(gateway_config):
    gateway_config["templates"] = {"broken": {"python": "/bin/false", "pool_size": 1}}


async def test_template_that_cannot_start_backs_off(broken_template, jp_fetch, gateway):
    await jp_fetch("health", "live")
    pool = gateway.pools["broken"]
    deadline = time.monotonic() + 20
    while pool.failures < 2:
        assert time.monotonic() < deadline, "the pool never retried"
        await asyncio.sleep(0.05)
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_sandbox_start_failures_total{template="broken"}' in metrics
    not_ready = await jp_fetch("health", "ready", raise_error=False)
    assert not_ready.code == 503 and "pool 'broken' has no ready sandbox" in body(not_ready)["error"]
    refused = await jp_fetch("v1", "sessions", method="POST", raise_error=False,
                             body=json.dumps({"template": "broken", "timeout": 1}))
    assert refused.code == 503 and body(refused)["code"] == "CAPACITY_EXHAUSTED"
    # Failed starts leave nothing behind: once the pools stop, no sandbox directory is left.
    for each in gateway.pools.values():
        await each.stop()
    assert os.listdir(gateway.provider.root) == []  # noqa: ASYNC240 -- a test probe


@pytest.fixture
def short_lived(gateway_config):
    gateway_config.update({"reap_interval": 0.2, "templates": {
        "brief": {"pool_size": 1, "session_timeout": 1.0},
        "capped": {"pool_size": 0, "max_session_duration": 1.5, "session_timeout": 60}}})


async def test_reaper(short_lived, jp_fetch, gateway):
    await wait_ready(jp_fetch)
    idle = await new_session(jp_fetch, "brief")
    capped = await new_session(jp_fetch, "capped")
    # Created last, right before its call: a cold start of another session in between could
    # otherwise outlast its idle timeout on a busy machine.
    busy = await new_session(jp_fetch, "brief")
    # `busy` runs longer than its idle timeout: in use, it must not be reaped meanwhile.
    long_run = asyncio.ensure_future(execute(jp_fetch, busy, "import time; time.sleep(2.5); 'done'"))
    await asyncio.sleep(2.0)
    assert (await jp_fetch("v1", "sessions", idle, raise_error=False)).code == 404
    assert (await jp_fetch("v1", "sessions", capped, raise_error=False)).code == 404
    finished = await long_run
    assert finished.code == 200 and body(finished)["results"][0]["text/plain"] == "'done'"
    metrics = (await jp_fetch("metrics")).body.decode()
    assert 'kernelcube_sessions_ended_total{reason="idle",template="brief"}' in metrics
    assert 'kernelcube_sessions_ended_total{reason="expired",template="capped"}' in metrics


async def test_health_and_metrics(jp_fetch, gateway):
    live = await jp_fetch("health", "live", headers={"Authorization": ""})
    assert body(live) == {"status": "alive"}
    ready = await wait_ready(jp_fetch)
    assert ready["status"] == "ready" and ready["pools"]["default"]["ready"] >= 1
    await new_session(jp_fetch)
    metrics = (await jp_fetch("metrics")).body.decode()
    for name in ("kernelcube_pool_ready{", "kernelcube_claim_seconds_bucket{", "kernelcube_sessions_created_total{",
                 "kernelcube_sandbox_start_seconds_count{"):
        assert name in metrics, name


@pytest.fixture
def pool_of_three(gateway_config):
    gateway_config.update({"pool_size": 3})


async def test_refill_never_over_creates(pool_of_three, jp_fetch, gateway):
    pool = gateway.pools["default"]
    await wait_ready(jp_fetch)
    claimed = [await new_session(jp_fetch) for _ in range(5)]  # 3 warm, 2 cold
    most, deadline = 0, time.monotonic() + 30
    while not (len(pool.ready) == 3 and pool.creating == 0):
        most = max(most, len(pool.ready) + pool.creating)
        assert time.monotonic() < deadline, "the pool did not refill"
        await asyncio.sleep(0.01)
    assert most <= 3, f"the pool held or started {most} sandboxes for a size of 3"
    assert len(pool.ready) == 3 and gateway.capacity.used == 3 + len(claimed)
    for session_id in claimed:
        await jp_fetch("v1", "sessions", session_id, method="DELETE")
    assert gateway.capacity.used == 3
