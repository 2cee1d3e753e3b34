"""The Router's concurrency limit is fair per session, through a real server: a session that
holds its share of in-flight calls gets 429 with Retry-After while other sessions proceed, and
gets through again once a call ends; a relayed call whose sandbox stays silent past the relay
timeout is a 504 (and the session stays usable)."""

from __future__ import annotations

import json

from kernel_gateway_ext.admission import FairLimiter
from tests.support.rawhttp import Connection

from .conftest import ROUTER, body, new_session, wait_ready

PATH = ROUTER.strip("/").split("/")


async def run(jp_fetch, session_id: str, command: list[str], timeout: str = "30s"):
    return await jp_fetch(*PATH, "api", "execute", method="POST", raise_error=False,
                          headers={"x-agentcube-session-id": session_id},
                          body=json.dumps({"command": command, "timeout": timeout}))


async def test_one_session_cannot_starve_the_others(jp_fetch, gateway, connect):
    await wait_ready(jp_fetch)
    greedy, other = await new_session(jp_fetch), await new_session(jp_fetch)
    gateway.router_limiter = FairLimiter(limit=8, session_share=0.25)  # 2 calls in flight per session
    held: list[Connection] = []
    payload = json.dumps({"command": ["echo", "held"]}).encode()
    for _ in range(2):  # calls admitted and in flight: their bodies are still to come
        connection = await connect()
        await connection.send_head("POST", f"{ROUTER}/api/execute", {
            "x-agentcube-session-id": greedy, "Content-Length": str(len(payload)), "Expect": "100-continue"})
        assert (await connection.response())[0] == 100
        held.append(connection)

    refused = await run(jp_fetch, greedy, ["echo", "more"])
    assert refused.code == 429 and refused.headers["Retry-After"]
    assert body(refused)["code"] == "SESSION_OVERLOADED" and greedy in body(refused)["error"]
    proceeds = await run(jp_fetch, other, ["echo", "fair"])
    assert proceeds.code == 200 and body(proceeds)["stdout"] == "fair\n"

    for connection in held:
        await connection.send(payload)
        status, _, raw = await connection.response()
        assert status == 200 and json.loads(raw)["stdout"] == "held\n"
    again = await run(jp_fetch, greedy, ["echo", "again"])
    assert again.code == 200 and gateway.router_limiter.in_flight == 0


async def test_a_silent_sandbox_is_a_504(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    session_id = await new_session(jp_fetch)
    gateway.relay_timeout = 1.0
    silent = await run(jp_fetch, session_id, ["sleep", "20"])
    assert silent.code == 504 and "timed out" in body(silent)["error"]
    gateway.relay_timeout = 60.0
    after = await run(jp_fetch, session_id, ["echo", "still here"])
    assert after.code == 200 and body(after)["stdout"] == "still here\n"
