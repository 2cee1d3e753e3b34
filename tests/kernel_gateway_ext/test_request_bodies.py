"""Request bodies at the gateway's edge, over raw HTTP/1.1 connections to a real server: a request
refused by token, size, session or load is refused before its body is read (a client sending
`Expect: 100-continue` never sends it); a large or unsized refused body ends the connection with
`Connection: close`, a small one is drained and the keep-alive connection stays usable; the
bodies held in memory by all requests together are bounded and released after; one body limit
(PicoD's) holds at every hop; deeply nested JSON is a 400."""

from __future__ import annotations

import json

import pytest

from picod_kernel import server as picod_server
from picod_kernel.limits import MAX_BODY_BYTES

from .conftest import ROUTER, TOKEN, body, new_session, wait_ready

MiB = 1024 * 1024


async def held_bytes(jp_fetch) -> float:
    text = (await jp_fetch("metrics")).body.decode()
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith("kernelcube_request_body_bytes ")))


async def test_refusals_come_before_the_body(jp_fetch, gateway, connect):
    await wait_ready(jp_fetch)
    session_id = await new_session(jp_fetch)
    big = {"Content-Length": str(20 * MiB), "Expect": "100-continue"}
    cases = [
        ("PUT", f"/v1/sessions/{session_id}/files/a.bin", {**big, "Authorization": "token wrong"}, 401, "UNAUTHORIZED"),
        ("POST", "/v1/execute", {**big, "Content-Length": str(MAX_BODY_BYTES + 1)}, 413, "BODY_TOO_LARGE"),
        ("POST", f"{ROUTER}/api/files", {**big, "x-agentcube-session-id": "no-such-session"}, 404, None),
        ("POST", f"{ROUTER}/api/files", {**big, "Authorization": "token wrong"}, 401, "UNAUTHORIZED"),
        ("POST", "/v1/execute", {"Transfer-Encoding": "chunked", "Expect": "100-continue"}, 401, "UNAUTHORIZED"),
    ]
    for method, path, headers, status, code in cases:
        connection = await connect()
        await connection.send_head(method, path, headers)
        got, response_headers, raw = await connection.response()  # not "100 Continue": no body wanted
        assert got == status, (path, got, raw)
        assert response_headers["connection"] == "close"
        assert json.loads(raw).get("code") == code
        assert await connection.closed_by_server()
    assert await held_bytes(jp_fetch) == 0


async def test_a_small_refused_body_keeps_the_connection(jp_fetch, gateway, connect):
    connection = await connect()
    await connection.send_head("GET", "/v1/sessions", {"Authorization": "token wrong"})
    status, headers, _ = await connection.response()
    assert status == 401 and headers.get("connection") != "close"
    payload = json.dumps({"code": "1" * 5000}).encode()
    await connection.send_head("POST", "/v1/execute", {"Authorization": "token wrong",
                                                       "Content-Length": str(len(payload))})
    await connection.send(payload)
    status, headers, _ = await connection.response()
    assert status == 401 and headers.get("connection") != "close"
    await connection.send_head("GET", "/v1/sessions", {"Authorization": f"token {TOKEN}"})
    status, _, raw = await connection.response()
    assert status == 200 and "sessions" in json.loads(raw)


async def test_bodies_in_memory_are_bounded_and_released(jp_fetch, gateway, connect):
    await wait_ready(jp_fetch)
    session_id = await new_session(jp_fetch)
    size = 3 * MiB
    gateway.body_budget.limit = 2 * size
    head = {"Authorization": f"token {TOKEN}", "Content-Length": str(size), "Expect": "100-continue"}
    uploads = []
    for n in range(2):
        connection = await connect()
        await connection.send_head("PUT", f"/v1/sessions/{session_id}/files/up{n}.bin", head)
        assert (await connection.response())[0] == 100  # admitted: its size is reserved
        uploads.append(connection)
    assert await held_bytes(jp_fetch) == 2 * size

    refused = await connect()
    await refused.send_head("PUT", f"/v1/sessions/{session_id}/files/up2.bin", head)
    status, headers, raw = await refused.response()
    assert status == 503 and json.loads(raw)["code"] == "SERVER_BUSY"
    assert headers["retry-after"] and headers["connection"] == "close"

    chunked = await connect()  # an unsized body is counted as it comes, and cut off at the budget
    await chunked.send_head("PUT", f"/v1/sessions/{session_id}/files/chunked.bin",
                            {"Authorization": f"token {TOKEN}", "Transfer-Encoding": "chunked"})
    await chunked.send(b"%x\r\n%s\r\n" % (MiB, b"c" * MiB))
    status, headers, raw = await chunked.response()
    assert status == 503 and headers["connection"] == "close"

    for n, connection in enumerate(uploads):
        await connection.send(bytes([n]) * size)
        status, _, raw = await connection.response()
        assert status == 201 and json.loads(raw)["size"] == size
    assert await held_bytes(jp_fetch) == 0  # released once answered
    again = await jp_fetch("v1", "sessions", session_id, "files", "again.bin", method="PUT", body=b"x" * size)
    assert again.code == 201


async def test_an_unsized_body_over_the_limit_is_cut_off(jp_fetch, gateway, connect):
    gateway.max_body_bytes = MiB
    connection = await connect()
    await connection.send_head("POST", "/v1/execute", {"Authorization": f"token {TOKEN}",
                                                       "Transfer-Encoding": "chunked"})
    for _ in range(2):
        await connection.send(b"%x\r\n%s\r\n" % (MiB // 2 + 1, b"x" * (MiB // 2 + 1)))
    status, headers, raw = await connection.response()
    assert status == 413 and json.loads(raw)["code"] == "BODY_TOO_LARGE" and headers["connection"] == "close"
    assert await held_bytes(jp_fetch) == 0


async def test_one_body_limit_at_every_hop(jp_fetch, gateway, connect):
    assert gateway.max_body_bytes == MAX_BODY_BYTES == picod_server.MAX_BODY_BYTES
    await wait_ready(jp_fetch)
    session_id = await new_session(jp_fetch)
    over = {"Authorization": f"token {TOKEN}", "Content-Length": str(MAX_BODY_BYTES + 1)}
    for method, path, extra in (("PUT", f"/v1/sessions/{session_id}/files/big.bin", {}),
                                ("POST", f"{ROUTER}/api/files", {"x-agentcube-session-id": session_id})):
        connection = await connect()
        await connection.send_head(method, path, {**over, **extra})
        status, _, raw = await connection.response()
        assert status == 413 and str(MAX_BODY_BYTES) in json.loads(raw)["error"], raw


@pytest.mark.parametrize("path", [("v1", "execute"), ("v1", "sessions"), ("v1", "code-interpreter")])
async def test_deeply_nested_json_is_a_400(jp_fetch, gateway, path):
    response = await jp_fetch(*path, method="POST", body="[" * 100_000 + "]" * 100_000, raise_error=False)
    assert response.code == 400, response.body
    message = body(response).get("error") or body(response).get("message")
    assert "nested too deeply" in message or message == "Invalid request body"


async def test_deeply_nested_json_through_the_router_is_a_400_from_picod(jp_fetch, gateway):
    await wait_ready(jp_fetch)
    session_id = await new_session(jp_fetch)
    response = await jp_fetch(*ROUTER.strip("/").split("/"), "api", "execute", method="POST",
                              body="[" * 100_000, headers={"x-agentcube-session-id": session_id},
                              raise_error=False)
    assert response.code == 400 and "nested too deeply" in body(response)["error"]
