"""PicoD's channels WebSocket against a real daemon and kernel: buffers both ways (legacy binary
frames; base64 in text frames from clients), replay by `session_id` after a disconnect (and its
bound, with a marker), a fresh relay for clients without a session id, another session
discarding what was kept, a slow reader's output dropped with a marker and a reader that never
reads closed at the hard cap, malformed frames answered without closing, a kernel death
announced on the socket, `input()` reaching the client that asked, and TCP_NODELAY on the
gateway's leg, and the bounds as flags."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import uuid

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from kernel_gateway_ext.picod_client import PicodClient
from picod_kernel import wire
from picod_kernel.app import build_parser
from picod_kernel.outbox import ChannelLimits
from tests.support.channels import (
    ECHO_TARGET,
    close,
    closed,
    collect,
    execute,
    is_idle_after,
    message,
    parent_is,
    receive,
    text,
    until,
)
from tests.support.processes import python_argv


def connect(picod, session_id: str | None = None):
    query = f"?session_id={session_id}" if session_id else ""
    return websocket_connect(HTTPRequest(f"{picod.url.replace('http', 'ws')}/api/kernel/channels{query}",
                                         headers={"Authorization": f"Bearer {picod.token()}"}))


async def run(conn, code: str) -> list[dict]:
    """Execute on `conn` and return everything up to the cell's `idle` and reply."""
    msg_id = uuid.uuid4().hex
    conn.write_message(text(execute(code, msg_id)))
    return await collect(conn, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"))


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def wait_for_log(picod, pattern: str, timeout: float = 60.0) -> None:
    wait_until(lambda: re.search(pattern, picod.log), timeout)


@pytest.mark.asyncio
async def test_buffers_pass_both_ways(picod):
    conn = await connect(picod)
    try:
        plain = await run(conn, ECHO_TARGET)
        assert all(m["buffers"] == [] and "channel" in m for m in plain)  # text frames, KG's keys

        # kernel -> client: a comm opened with buffers arrives as one binary frame, bytes intact
        sent = await run(conn, "import comm\nc = comm.create_comm(target_name='kc-none', data={'n': 1}, "
                               "buffers=[b'\\x00\\xffkernel-bytes'])\nc.send({'n': 2}, buffers=[b'\\x01' * 70000])")
        opened = next(m for m in sent if m["msg_type"] == "comm_open")
        assert opened["channel"] == "iopub" and opened["buffers"] == [b"\x00\xffkernel-bytes"]
        assert next(m for m in sent if m["msg_type"] == "comm_msg")["buffers"] == [b"\x01" * 70000]

        # client -> kernel: as a legacy binary frame, and as base64 inside a text frame
        comm_id = uuid.uuid4().hex
        conn.write_message(text(message("comm_open", {"comm_id": comm_id, "target_name": "kc-echo", "data": {}})))
        frame, binary = wire.encode(message("comm_msg", {"comm_id": comm_id, "data": {}}, buffers=[b"\x00abc\xff"]))
        assert binary
        conn.write_message(frame, binary=True)
        echo = await until(conn, lambda m: m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id)
        assert echo["buffers"] == [b"\xffcba\x00"] and echo["content"]["data"] == {"size": 5}
        conn.write_message(text(message("comm_msg", {"comm_id": comm_id, "data": {}}, buffers=["AAEC"])))
        echo = await until(conn, lambda m: m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == comm_id)
        assert echo["buffers"] == [b"\x02\x01\x00"]
    finally:
        await close(conn)


async def _settled(conn) -> None:
    """This connection's relay is live: its kernel_info is answered, on shell and on iopub (so
    nothing of it is left to arrive later)."""
    msg_id = uuid.uuid4().hex
    conn.write_message(text(message("kernel_info_request", {}, msg_id=msg_id)))
    replied = idle = False
    while not (replied and idle):
        msg = await until(conn, parent_is(msg_id))
        replied = replied or msg["msg_type"] == "kernel_info_reply"
        idle = idle or is_idle_after(msg_id)(msg)


async def run_while_away(picod, session_id: str, code: str) -> tuple[str, list[dict]]:
    """Send `code` on a connection of `session_id` and leave; the cell's output starts only once
    PicoD has seen the client go (the cell waits for a file made then). The cell's msg_id, and
    what reached the client before it left (its busy and execute_input, at most)."""
    conn = await connect(picod, session_id)
    await _settled(conn)
    msg_id = uuid.uuid4().hex
    gate = os.path.join(picod.workspace, uuid.uuid4().hex)
    conn.write_message(text(execute(f"import os, time\nwhile not os.path.exists({gate!r}): time.sleep(0.01)\n"
                                    f"{code}", msg_id)))
    gone = f"session {session_id} disconnected"
    left = picod.log.count(gone) + 1
    late = await close(conn)
    await asyncio.get_running_loop().run_in_executor(None, lambda: wait_until(lambda: picod.log.count(gone) >= left))
    os.close(os.open(gate, os.O_CREAT | os.O_WRONLY, 0o644))
    return msg_id, late


@pytest.mark.asyncio
async def test_replay_after_reconnect_with_the_same_session(fresh_picod):
    picod = fresh_picod()
    watcher = await connect(picod)  # sees the cell end, so the test waits on that, not on time
    try:
        await _settled(watcher)
        away = await connect(picod, "lab-1")
        msg_id = uuid.uuid4().hex
        away.write_message(text(execute("import time\nfor i in range(5): print(i, flush=True); time.sleep(0.1)", msg_id)))
        late = await close(away)  # what was on its way as the client left
        await until(watcher, is_idle_after(msg_id))

        back = await connect(picod, "lab-1")
        try:
            replayed = await collect(back, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"))
            mine = [m for m in late + replayed if m["parent_header"].get("msg_id") == msg_id]
            assert "".join(m["content"]["text"] for m in mine if m["msg_type"] == "stream") == "0\n1\n2\n3\n4\n"
            assert any(m["msg_type"] == "execute_reply" and m["content"]["status"] == "ok" for m in mine)
            assert any(m["msg_type"] == "execute_result" for m in await run(back, "6*7"))  # then it is live
        finally:
            await close(back)
    finally:
        await close(watcher)


def _masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (clients must mask), payloads under 64 KiB."""
    mask = os.urandom(4)
    size = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([0x80 | opcode]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.asyncio
async def test_a_request_sent_with_the_close_still_reaches_the_kernel(fresh_picod):
    """A client that sends its request and closes at once (both frames in one packet) has its
    request run, and its output kept for its session."""
    picod = fresh_picod()
    watcher = await connect(picod)
    try:
        await _settled(watcher)
        host, port = picod.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"GET /api/kernel/channels?session_id=hasty HTTP/1.1\r\nHost: picod\r\n"
                      f"Authorization: Bearer {picod.token()}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        await asyncio.sleep(0.5)  # the relay settles before the request comes
        msg_id = uuid.uuid4().hex
        writer.write(_masked(0x1, text(execute("print('ran')", msg_id)).encode()) + _masked(0x8, b"\x03\xe8"))
        await writer.drain()
        await until(watcher, is_idle_after(msg_id))
        writer.close()

        back = await connect(picod, "hasty")
        try:
            replayed = await collect(back, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"))
            assert "ran\n" in [m["content"]["text"] for m in replayed if m["msg_type"] == "stream"]
        finally:
            await close(back)
    finally:
        await close(watcher)


@pytest.mark.asyncio
async def test_replay_is_bounded_and_says_what_it_dropped(fresh_picod):
    picod = fresh_picod("--channels-replay-messages", "5")
    watcher = await connect(picod)
    try:
        await _settled(watcher)
        msg_id, late = await run_while_away(picod, "lab-1", "for i in range(10): display(i)")
        await until(watcher, is_idle_after(msg_id))

        back = await connect(picod, "lab-1")
        try:
            kept = [await receive(back) for _ in range(6)]
        finally:
            await close(back)
        # busy, execute_input, 10 displays, the reply and idle: 14, less what reached the client
        # before it left; the last 5 kept
        marker = kept[0]
        assert marker["msg_type"] == "stream" and marker["content"]["name"] == "stderr"
        dropped = 14 - len(late) - 5
        assert f"{dropped} message(s) were dropped while no client was connected" in marker["content"]["text"]
        assert marker["parent_header"].get("msg_id") == msg_id
        # the last 5 to arrive (the shell reply may overtake iopub output): ending with idle
        assert all(m["parent_header"].get("msg_id") == msg_id for m in kept[1:])
        assert is_idle_after(msg_id)([m for m in kept if m["channel"] == "iopub"][-1])
        shown = [int(m["content"]["data"]["text/plain"]) for m in kept[1:] if m["msg_type"] == "display_data"]
        assert shown == list(range(10))[-len(shown):]
    finally:
        await close(watcher)


async def _printed(conn, code: str) -> str:
    out = await run(conn, code)
    return "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")


@pytest.mark.asyncio
async def test_one_kept_relay_per_kernel(fresh_picod):
    picod = fresh_picod()
    watcher = await connect(picod)
    try:
        await _settled(watcher)

        async def leave_output(session_id: str, marker: str) -> None:
            msg_id, _ = await run_while_away(picod, session_id, f"print({marker!r})")
            await until(watcher, is_idle_after(msg_id))

        await leave_output("a", "kept-for-a")
        fresh = await connect(picod)  # no session id (nbclient): a fresh relay, nothing replayed
        assert "kept-for-a" not in await _printed(fresh, "print('nb')")
        await close(fresh)
        back = await connect(picod, "a")  # still kept for a
        assert "kept-for-a" in await _printed(back, "print('again')")
        await close(back)

        await leave_output("a", "lost-for-a")
        other = await connect(picod, "b")  # another session discards what was kept for a
        await close(other)
        back = await connect(picod, "a")
        assert "lost-for-a" not in await _printed(back, "print('fresh')")
        await close(back)
    finally:
        await close(watcher)


@pytest.mark.asyncio
async def test_a_slow_reader_loses_output_not_replies(fresh_picod):
    picod = fresh_picod("--channels-soft-bytes", str(1 << 20))
    slow = await connect(picod)
    try:
        await _settled(slow)
        msg_id = uuid.uuid4().hex
        slow.write_message(text(execute("for i in range(400): print(f'{i:06d}' + 'x' * 100000, flush=True)", msg_id)))
        # not reading: wait for the cell to end through PicoD's own client (queued behind it)
        finished = await asyncio.get_running_loop().run_in_executor(None, lambda: picod.request("POST", "/api/run", json={"code": "1"}))
        assert finished.status_code == 200
        seen = await collect(slow, is_idle_after(msg_id), parent_is(msg_id, "execute_reply"), timeout=120)
        markers = [m for m in seen if m["msg_type"] == "stream" and "not reading fast enough" in m["content"]["text"]]
        if not markers:  # the marker follows once the reader has caught up
            seen.append(await until(slow, lambda m: m["msg_type"] == "stream" and "[KernelCube]" in m["content"]["text"]))
            markers = seen[-1:]
        lines = [int(line[:6]) for m in seen if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
                 for line in m["content"]["text"].splitlines()]
        assert lines == sorted(lines) and len(lines) < 400
        assert int(re.search(r"(\d+) output message", markers[0]["content"]["text"]).group(1)) > 0
        assert any(m["msg_type"] == "execute_reply" for m in seen)
        assert any(m["msg_type"] == "execute_result" for m in await run(slow, "6*7"))
    finally:
        await close(slow)


@pytest.mark.asyncio
async def test_a_reader_that_never_reads_is_closed_at_the_hard_cap(fresh_picod):
    picod = fresh_picod("--channels-soft-bytes", "65536", "--channels-hard-bytes", str(1 << 20))
    stuck = await connect(picod)
    try:
        await _settled(stuck)
        # comm messages are never dropped, so they pile up to the hard cap
        stuck.write_message(text(execute("import comm\nc = comm.create_comm(target_name='kc-none')\n"
                                         "for i in range(300): c.send({'x': 'y' * 100000})")))
        await asyncio.get_running_loop().run_in_executor(None, wait_for_log, picod, r"unread by the client")
        received = await closed(stuck, timeout=120)
        assert len([m for m in received if m["msg_type"] == "comm_msg"]) < 300
        assert stuck.close_code in (wire.CLOSE_TOO_SLOW, None)  # None: the close frame itself went unread
    finally:
        await close(stuck)
    after = await connect(picod)  # the kernel and the daemon carry on
    try:
        assert any(m["msg_type"] == "execute_result" for m in await run(after, "6*7"))
    finally:
        await close(after)


@pytest.mark.asyncio
@pytest.mark.parametrize("frame", ["not json", "[1]", "42", '""', "{}", "", '{"header": {"msg_type": "x"}, "channel": "iopub"}',
                                   '{"header": {"msg_type": "x"}, "channel": "nope"}', '{"header": {"msg_type": "x"}, "buffers": ["%%"]}',
                                   b"\x00\x00\x00\x05abc", b"\x00\x00\x00\x02\x00\x00\x00\x10\x00\x00\x00\x0c{}", b"garbage bytes"])
async def test_malformed_frames_are_answered_and_the_socket_lives(picod, frame):
    conn = await connect(picod)
    try:
        conn.write_message(frame, binary=isinstance(frame, bytes))
        refused = await until(conn, lambda m: m["msg_type"] == "error")
        assert refused["channel"] == "iopub" and refused["content"]["ename"] == "InvalidMessage"
        out = await run(conn, "6*7")
        assert any(m["msg_type"] == "execute_result" and m["content"]["data"]["text/plain"] == "42" for m in out)
    finally:
        await close(conn)


@pytest.mark.asyncio
async def test_kernel_death_is_announced_and_the_socket_carries_on(fresh_picod):
    picod = fresh_picod()
    conn = await connect(picod)
    try:
        await _settled(conn)
        conn.write_message(text(execute("import os; os._exit(1)")))
        states = []
        while states[-1:] != ["idle"] or "restarting" not in states:
            msg = await until(conn, lambda m: m["msg_type"] == "status")
            states.append(msg["content"]["execution_state"])
        assert states.index("dead") < states.index("restarting") < len(states) - 1
        out = await run(conn, "'x' in globals()")
        assert any(m["msg_type"] == "execute_result" and m["content"]["data"]["text/plain"] == "False" for m in out)
    finally:
        await close(conn)


@pytest.mark.asyncio
async def test_input_reaches_the_client_that_asked(picod):
    other = await connect(picod)
    conn = await connect(picod)
    try:
        await _settled(other)
        msg_id = uuid.uuid4().hex
        conn.write_message(text(execute("name = input('who? ')\nname.upper()", msg_id, allow_stdin=True)))
        asked = await until(conn, lambda m: m["msg_type"] == "input_request")
        assert asked["channel"] == "stdin" and asked["content"]["prompt"] == "who? "
        conn.write_message(text(message("input_reply", {"value": "ada"}, channel="stdin")))
        result = await until(conn, parent_is(msg_id, "execute_result"))
        assert result["content"]["data"]["text/plain"] == "'ADA'"
    finally:
        await close(conn)
        await close(other)


@pytest.mark.asyncio
async def test_the_gateway_leg_sets_tcp_nodelay(picod):
    client = PicodClient({"url": picod.url})
    try:
        upstream = await client.websocket("/api/kernel/channels", token=picod.token())
        sock = upstream.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        await upstream.close()
    finally:
        await client.close()


def test_channel_bounds_are_flags_with_the_documented_defaults(keys):
    defaults = build_parser().parse_args([])
    assert ChannelLimits(defaults.channels_replay_bytes, defaults.channels_replay_messages,
                         defaults.channels_soft_bytes, defaults.channels_hard_bytes) == ChannelLimits()
    assert ChannelLimits() == ChannelLimits(8 << 20, 10_000, 8 << 20, 32 << 20)
    refused = subprocess.run(python_argv("picod_kernel", "--port", "0", "--channels-hard-bytes", "10",
                                         "--channels-soft-bytes", "20"),
                             env={**os.environ, "PICOD_AUTH_PUBLIC_KEY": keys.public_pem},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--channels-hard-bytes" in refused.stderr
