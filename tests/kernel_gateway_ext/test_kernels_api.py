"""The Jupyter kernel face through a real jupyter_server with the extension: kernelspecs (with
a logo), a kernel's life (start, model, list, interrupt, restart with the same id, delete), its
channels WebSocket relayed to the sandbox's kernel (legacy JSON framing, shell by default), the
same kernel reachable through the execute API, and the errors in the gateway client's dialect."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from tornado.httpclient import HTTPClientError

from .conftest import body, wait_ready

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def message(msg_type: str, content: dict, channel: str | None = None, msg_id: str | None = None) -> str:
    msg = {"header": {"msg_id": msg_id or uuid.uuid4().hex, "msg_type": msg_type, "username": "test", "session": "s",
                      "date": "2026-01-01T00:00:00Z", "version": "5.3"},
           "parent_header": {}, "metadata": {}, "content": content}
    if channel:
        msg["channel"] = channel
    return json.dumps(msg)


async def until(conn, predicate, timeout: float = 30.0) -> dict:
    async def read() -> dict:
        while True:
            raw = await conn.read_message()
            assert raw is not None, "the channels WebSocket closed"
            msg = json.loads(raw)
            if predicate(msg):
                return msg
    return await asyncio.wait_for(read(), timeout)


async def test_kernelspecs(jp_fetch, gateway):
    specs = body(await jp_fetch("api", "kernelspecs"))
    assert specs["default"] == "default"
    spec = specs["kernelspecs"]["default"]
    assert spec["spec"]["language"] == "python" and "KernelCube" in spec["spec"]["display_name"]
    assert body(await jp_fetch("api", "kernelspecs", "default")) == spec
    logo = await jp_fetch(*spec["resources"]["logo-64x64.png"].strip("/").split("/"), headers={"Authorization": ""})
    assert logo.body.startswith(b"\x89PNG") and logo.headers["Content-Type"] == "image/png"
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "kernelspecs", "nope")
    assert info.value.code == 404 and set(json.loads(info.value.response.body)) == {"reason", "message"}


async def test_kernel_life_and_channels(jp_fetch, jp_ws_fetch, gateway):
    await wait_ready(jp_fetch)
    started = await jp_fetch("api", "kernels", method="POST",
                             body=json.dumps({"name": "default", "env": {"KERNEL_LAUNCH_TIMEOUT": "40"}}))
    assert started.code == 201
    model = body(started)
    kernel_id = model["id"]
    assert model["name"] == "default" and TIMESTAMP.match(model["last_activity"])
    assert model["execution_state"] == "idle" and model["connections"] == 0
    assert kernel_id in [k["id"] for k in body(await jp_fetch("api", "kernels"))]

    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    try:
        conn.write_message(message("kernel_info_request", {}))  # no channel: shell
        info = await until(conn, lambda m: m["header"]["msg_type"] == "kernel_info_reply")
        assert info["channel"] == "shell" and info["content"]["language_info"]["name"] == "python"
        assert body(await jp_fetch("api", "kernels", kernel_id))["connections"] == 1

        conn.write_message(message("execute_request", {"code": "shared = 6 * 7\nshared", "silent": False}, "shell"))
        result = await until(conn, lambda m: m["header"]["msg_type"] == "execute_result")
        assert result["channel"] == "iopub" and result["content"]["data"]["text/plain"] == "42"

        # The kernel is the session: the execute API sees the same variables.
        same = body(await jp_fetch("v1", "execute", method="POST",
                                   body=json.dumps({"code": "shared", "session_id": kernel_id})))
        assert same["results"][0]["text/plain"] == "42"

        interrupted = await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body="{}")
        assert interrupted.code == 204
        restarted = await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}")
        assert restarted.code == 200 and body(restarted)["id"] == kernel_id
        asked = uuid.uuid4().hex  # iopub carries every execution's output (the execute API's too)
        conn.write_message(message("execute_request", {"code": "'shared' in globals()", "silent": False}, msg_id=asked))
        after = await until(conn, lambda m: m["header"]["msg_type"] == "execute_result"
                            and m["parent_header"].get("msg_id") == asked)
        assert after["content"]["data"]["text/plain"] == "False"  # a fresh kernel behind the same id and socket
    finally:
        conn.close()
        # Let the closing handshake finish, so the socket is closed before this test's loop is.
        while await asyncio.wait_for(conn.read_message(), 10) is not None:
            pass

    assert (await jp_fetch("api", "kernels", kernel_id, method="DELETE")).code == 204
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "kernels", kernel_id)
    assert info.value.code == 404 and json.loads(info.value.response.body)["reason"] == "SESSION_NOT_FOUND"


async def test_channels_need_the_token(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = body(await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default"})))["id"]
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("api", "kernels", kernel_id, "channels", headers={"Authorization": "token wrong"})
    assert info.value.code == 401
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("api", "kernels", str(uuid.uuid4()), "channels")
    assert info.value.code == 404


async def _execute(jp_fetch, kernel_id: str, code: str) -> dict:
    response = await jp_fetch("v1", "execute", method="POST", body=json.dumps({"session_id": kernel_id, "code": code}))
    return body(response)


async def test_launch_env_reaches_the_kernel_and_kernel_id_is_honoured(jp_fetch, gateway):
    chosen = str(uuid.uuid4())
    env = {"KERNEL_ID": chosen, "KERNEL_USERNAME": "alice", "KERNEL_LAUNCH_TIMEOUT": "40",
           "KERNEL_WORKING_DIR": "/home/alice/notebooks", "PROJECT": "it's \"quoted\"\n"}
    model = body(await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default", "env": env})))
    assert model["id"] == chosen
    seen = await _execute(jp_fetch, chosen, "import os, json; print(json.dumps([os.environ[k] for k in "
                          "('KERNEL_ID', 'KERNEL_USERNAME', 'PROJECT')] + [os.getcwd()]))")
    assert json.loads(seen["stdout"]) == [chosen, "alice", "it's \"quoted\"\n", "/workspace"]
    # Forwarding costs no execution count: the first cell of the kernel is still In [1].
    assert seen["execution_count"] == 1
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default", "env": {"KERNEL_ID": chosen}}))
    assert info.value.code == 409 and chosen in json.loads(info.value.response.body)["message"]
    assert body(await jp_fetch("api", "kernels", chosen))["execution_state"] == "idle"


async def test_launch_requests_are_checked_before_a_sandbox_is_claimed(jp_fetch, gateway):
    for request, says in (({"env": {"KERNEL_ID": "not-a-uuid"}}, "KERNEL_ID must be a UUID"),
                          ({"env": {"KERNEL_LAUNCH_TIMEOUT": "soon"}}, "KERNEL_LAUNCH_TIMEOUT"),
                          ({"env": {"KERNEL_LAUNCH_TIMEOUT": "-1"}}, "KERNEL_LAUNCH_TIMEOUT"),
                          ({"env": {"COUNT": 3}}, "refused: ['COUNT']"),
                          ({"env": {"BAD NAME": "x"}}, "refused"),
                          ({"env": ["KERNEL_ID"]}, "'env' an object")):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default", **request}))
        assert info.value.code == 400 and says in json.loads(info.value.response.body)["message"], request
    assert body(await jp_fetch("api", "kernels")) == []


@pytest.mark.parametrize("gateway_config", [{"pool_size": 0}])
async def test_launch_timeout_bounds_a_cold_start(jp_fetch, gateway):
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("api", "kernels", method="POST",
                       body=json.dumps({"name": "default", "env": {"KERNEL_LAUNCH_TIMEOUT": "0.05"}}))
    error = json.loads(info.value.response.body)
    assert info.value.code == 503 and "within 0.05s" in error["message"], error
