"""The channels WebSocket through a real gateway, real sandboxes and kernels: buffers both ways
for legacy clients (base64 in text frames; legacy binary frames accepted) and for v1 clients
(the `v1.kernel.websocket.jupyter.org` subprotocol), replay on reconnect by `session_id`, a
client that never reads holding the gateway's memory bounded while another kernel carries on,
malformed frames answered without closing, several clients on one kernel, a sandbox killed
mid-cell, culling and deletion announced as `dead` (an open socket no longer keeps a kernel
from being culled; its traffic counts as activity), and a REST restart keeping the socket."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import time
import uuid

import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from kernel_gateway_ext.handlers import channels
from kernel_gateway_ext.handlers.channel_framing import V1_PROTOCOL
from tests.support.channels import (
    ECHO_TARGET,
    WAIT,
    close,
    closed,
    collect,
    execute,
    is_idle_after,
    message,
    parent_is,
    text,
    until,
)
from tests.support.gateway import TOKEN

from .conftest import body, wait_ready

KG_KEYS = {"header", "msg_id", "msg_type", "parent_header", "metadata", "content", "buffers", "channel"}


@pytest.fixture
def two_sandboxes(gateway_config):
    gateway_config["pool_size"] = 2


async def start_kernel(jp_fetch) -> str:
    await wait_ready(jp_fetch)
    return body(await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "default"})))["id"]


async def run(conn, code: str) -> list[dict]:
    msg_id = uuid.uuid4().hex
    conn.write_message(text(execute(code, msg_id)))
    return await collect(conn, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"))


def result_of(messages: list[dict]) -> str:
    return next(m for m in messages if m["msg_type"] == "execute_result")["content"]["data"]["text/plain"]


async def test_buffers_both_ways_for_legacy_clients(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    try:
        await run(conn, ECHO_TARGET)
        conn.write_message(text(execute("import comm\nc = comm.create_comm(target_name='kc-none', "
                                        "buffers=[b'\\x00\\xffkernel-bytes'])")))
        raw = await asyncio.wait_for(conn.read_message(), WAIT)
        while '"comm_open"' not in raw:
            raw = await asyncio.wait_for(conn.read_message(), WAIT)
        assert isinstance(raw, str), "a legacy client must never get a binary frame"
        opened = json.loads(raw)
        assert set(opened) == KG_KEYS and opened["channel"] == "iopub"
        assert [base64.b64decode(b) for b in opened["buffers"]] == [b"\x00\xffkernel-bytes"]

        comm_id = uuid.uuid4().hex
        conn.write_message(text(message("comm_open", {"comm_id": comm_id, "target_name": "kc-echo", "data": {}})))
        is_echo = lambda m: m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id  # noqa: E731
        conn.write_message(text(message("comm_msg", {"comm_id": comm_id, "data": {}},
                                        buffers=[base64.b64encode(b"\x00as-text\xff").decode()])))
        assert (await until(conn, is_echo))["buffers"] == [b"\xfftxet-sa\x00"]
        legacy_binary = serialize_binary_message({**message("comm_msg", {"comm_id": comm_id, "data": {}}),
                                                  "buffers": [b"\x01as-binary"]})
        conn.write_message(legacy_binary, binary=True)
        assert (await until(conn, is_echo))["buffers"] == [b"yranib-sa\x01"]
    finally:
        await close(conn)


def v1(msg: dict) -> bytes:
    parts = [json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")]
    return serialize_msg_to_ws_v1([*parts, *msg.get("buffers", [])], msg.get("channel", "shell"))


async def v1_until(conn, predicate) -> dict:
    async def read() -> dict:
        while True:
            raw = await conn.read_message()
            assert isinstance(raw, bytes), f"a v1 client gets binary frames only, not {raw!r}"
            channel, parts = deserialize_msg_from_ws_v1(raw)
            header, parent, metadata, content = (json.loads(p) for p in parts[:4])
            msg = {"channel": channel, "header": header, "msg_type": header["msg_type"], "parent_header": parent,
                   "metadata": metadata, "content": content, "buffers": parts[4:]}
            if predicate(msg):
                return msg
    return await asyncio.wait_for(read(), WAIT)


async def test_v1_subprotocol(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels", subprotocols=[V1_PROTOCOL])
    try:
        assert conn.selected_subprotocol == V1_PROTOCOL
        msg_id = uuid.uuid4().hex
        conn.write_message(v1(execute("1+1", msg_id)), binary=True)
        result = await v1_until(conn, parent_is(msg_id, "execute_result"))
        assert result["channel"] == "iopub" and result["content"]["data"]["text/plain"] == "2"

        setup = uuid.uuid4().hex
        conn.write_message(v1(execute(ECHO_TARGET, setup)), binary=True)
        await v1_until(conn, is_idle_after(setup))
        comm_id = uuid.uuid4().hex
        conn.write_message(v1(message("comm_open", {"comm_id": comm_id, "target_name": "kc-echo", "data": {}})),
                           binary=True)
        conn.write_message(v1(message("comm_msg", {"comm_id": comm_id, "data": {}}, buffers=[b"\x00v1\xff"])),
                           binary=True)
        echo = await v1_until(conn, lambda m: m["msg_type"] == "comm_msg")
        assert echo["buffers"] == [b"\xff1v\x00"] and echo["content"]["data"] == {"size": 4}

        conn.write_message(b"\xff" * 64, binary=True)  # garbage: answered, in v1, and the socket lives
        refused = await v1_until(conn, lambda m: m["msg_type"] == "error")
        assert refused["content"]["ename"] == "InvalidMessage"
        again = uuid.uuid4().hex
        conn.write_message(v1(execute("2+2", again)), binary=True)
        assert (await v1_until(conn, parent_is(again, "execute_result")))["content"]["data"]["text/plain"] == "4"
    finally:
        conn.close()
        while await asyncio.wait_for(conn.read_message(), 10) is not None:
            pass


async def test_output_is_replayed_on_reconnect_with_the_same_session_id(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await start_kernel(jp_fetch)
    params = {"session_id": "browser-session-1"}
    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels", params=params)
    msg_id = uuid.uuid4().hex
    conn.write_message(text(execute("import time\nfor i in range(5): print(i); time.sleep(0.3)", msg_id)))
    late = await close(conn)  # what was already on its way as the client left
    await asyncio.sleep(2)  # the scenario: away for a while, mid-cell (nothing waits on it)

    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels", params=params)
    try:
        replayed = await collect(conn, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"))
        mine = [m for m in late + replayed if m["parent_header"].get("msg_id") == msg_id]
        assert "".join(m["content"]["text"] for m in mine if m["msg_type"] == "stream") == "0\n1\n2\n3\n4\n"
        assert [m["content"]["status"] for m in mine if m["msg_type"] == "execute_reply"] == ["ok"]
        assert result_of(await run(conn, "6*7")) == "42"  # and then it is live
    finally:
        await close(conn)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    if len(payload) < 126:
        head = bytes([0x81, 0x80 | len(payload)])
    elif len(payload) < 65536:
        head = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_that_never_reads_holds_little_gateway_memory(two_sandboxes, jp_fetch, jp_ws_fetch,
                                                                     gateway, connect):
    flooded, other = await start_kernel(jp_fetch), await start_kernel(jp_fetch)
    raw = await connect()
    await raw.send_head("GET", f"/api/kernels/{flooded}/channels", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "Authorization": f"token {TOKEN}"})
    status, _, _ = await raw.response()
    assert status == 101
    before = peak = rss_bytes()
    # ~200 MB of output to a client that reads none of it
    await raw.send(masked_text_frame(text(execute("for i in range(200): print('x' * 1_000_000, flush=True)")).encode()))

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes())
            await asyncio.sleep(0.02)
    sampler = asyncio.ensure_future(sample())
    try:
        finished = asyncio.ensure_future(jp_fetch("v1", "execute", method="POST", request_timeout=300, body=json.dumps(
            {"code": "'flood over'", "session_id": flooded, "timeout": 300})))  # queued behind the flood
        conn = await jp_ws_fetch("api", "kernels", other, "channels")
        try:
            assert result_of(await run(conn, "6*7")) == "42"  # another kernel is served meanwhile
        finally:
            await close(conn)
        assert body(await finished)["results"][0]["text/plain"] == "'flood over'"
    finally:
        sampler.cancel()
    assert peak - before < 50 * 1024 * 1024, f"the gateway grew by {(peak - before) >> 20} MiB"


async def test_malformed_frames_and_several_clients(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await start_kernel(jp_fetch)
    first = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    second = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    try:
        for frame in ["not json", "[1]", "", '{"header": {"msg_type": "x"}, "channel": "nope"}',
                      b"\x00\x00\x00\x05garbage", b""]:
            first.write_message(frame, binary=isinstance(frame, bytes))
            refused = await until(first, lambda m: m["msg_type"] == "error")
            assert refused["content"]["ename"] == "InvalidMessage"
        assert result_of(await run(first, "6*7")) == "42"

        ids = {first: uuid.uuid4().hex, second: uuid.uuid4().hex}
        for conn, msg_id in ids.items():
            conn.write_message(text(execute(f"'{msg_id}'", msg_id)))
        for conn, msg_id in ids.items():
            other_id = ids[second if conn is first else first]
            seen = await collect(conn, *(parent_is(i, "execute_result") for i in ids.values()),
                                 parent_is(msg_id, "execute_reply"))
            replies = [m for m in seen if m["msg_type"] == "execute_reply"]
            assert all(m["parent_header"]["msg_id"] == msg_id for m in replies), "a reply reached the wrong client"
            assert not any(parent_is(other_id, "execute_reply")(m) for m in seen)
    finally:
        await close(first)
        await close(second)


async def test_a_sandbox_killed_mid_cell_ends_its_sockets_only(two_sandboxes, jp_fetch, jp_ws_fetch, gateway):
    doomed, other = await start_kernel(jp_fetch), await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", doomed, "channels")
    bystander = await jp_ws_fetch("api", "kernels", other, "channels")
    try:
        msg_id = uuid.uuid4().hex
        conn.write_message(text(execute("print('working', flush=True)\nimport time\ntime.sleep(120)", msg_id)))
        await until(conn, parent_is(msg_id, "stream"))
        os.kill((await gateway.store.get(doomed)).sandbox["endpoint"]["peer"]["pid"], signal.SIGKILL)
        last = await closed(conn)
        assert last and last[-1]["msg_type"] == "status" and last[-1]["content"]["execution_state"] == "dead"
        assert result_of(await run(bystander, "6*7")) == "42"
    finally:
        await close(conn)
        await close(bystander)


async def test_cull_and_delete_say_dead_and_close(jp_fetch, jp_ws_fetch, gateway):
    culled = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", culled, "channels")
    try:
        assert body(await jp_fetch("api", "kernels", culled))["connections"] == 1
        # traffic is activity: the idle deadline moves while the socket is used
        first_seen = (await gateway.store.get(culled)).last_activity
        deadline = time.monotonic() + WAIT
        while (await gateway.store.get(culled)).last_activity == first_seen:
            assert time.monotonic() < deadline, "channel traffic never touched the session"
            await run(conn, "None")
        # ...but an open socket holds no session: the reaper may end it
        assert await gateway.sessions.reap_once(now=time.time() + 10**7) >= 1
        last = await closed(conn)
        assert last[-1]["msg_type"] == "status" and last[-1]["content"]["execution_state"] == "dead"
    finally:
        await close(conn)
    assert (await jp_fetch("api", "kernels", culled, raise_error=False)).code == 404

    deleted = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", deleted, "channels")
    try:
        await run(conn, "None")
        assert (await jp_fetch("api", "kernels", deleted, method="DELETE")).code == 204
        last = await closed(conn)
        assert last[-1]["msg_type"] == "status" and last[-1]["content"]["execution_state"] == "dead"
    finally:
        await close(conn)
    assert gateway.kernel_connections == {}


async def test_restart_keeps_the_socket(jp_fetch, jp_ws_fetch, gateway):
    kernel_id = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    try:
        await run(conn, "kept = 1")
        assert (await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}")).code == 200
        states = []
        while states[-1:] != ["idle"] or "restarting" not in states:
            states.append((await until(conn, lambda m: m["msg_type"] == "status"))["content"]["execution_state"])
        assert states.index("restarting") < len(states) - 1
        assert result_of(await run(conn, "'kept' in globals()")) == "False"
    finally:
        await close(conn)


async def test_a_busy_kernel_with_a_client_is_not_taken_for_an_idle_one(jp_fetch, jp_ws_fetch, gateway, monkeypatch):
    """A long silent cell: no traffic, but the kernel is busy, so its activity is renewed (and
    neither the reaper nor the controller's GC, which read it from the store, takes it for idle)."""
    monkeypatch.setattr(channels, "BUSY_TOUCH_SECONDS", 0.2)
    kernel_id = await start_kernel(jp_fetch)
    conn = await jp_ws_fetch("api", "kernels", kernel_id, "channels")
    try:
        msg_id = uuid.uuid4().hex
        conn.write_message(text(execute("import time; time.sleep(8)", msg_id)))
        await until(conn, lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
                    and m["parent_header"].get("msg_id") == msg_id)
        silent_until = time.monotonic() + 6  # the cell prints nothing until it ends, 8 s on
        await asyncio.sleep(1.5)  # past the traffic touches of `busy` and `execute_input`
        busy_since = (await gateway.store.get(kernel_id)).last_activity
        while (await gateway.store.get(kernel_id)).last_activity == busy_since:
            assert time.monotonic() < silent_until, "a busy kernel's activity was never renewed"
            await asyncio.sleep(0.1)
        await until(conn, is_idle_after(msg_id))
    finally:
        await close(conn)
