"""A test client's side of a kernel channels WebSocket (PicoD's or the gateway's): build
messages, read them (text, or legacy binary frames with buffers), wait for one, close."""

from __future__ import annotations

import asyncio
import json
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from picod_kernel import wire

WAIT = 60.0  # seconds for an expected message: generous, the machine may be busy

# Kernel code: a comm target that answers each message with its first buffer reversed.
ECHO_TARGET = """\
import comm
def _kc_echo(c, open_msg):
    @c.on_msg
    def _answer(msg):
        data = bytes(msg['buffers'][0])
        c.send({'size': len(data)}, buffers=[data[::-1]])
comm.get_comm_manager().register_target('kc-echo', _kc_echo)
"""


def message(msg_type: str, content: dict, channel: str | None = "shell", msg_id: str | None = None,
            buffers: list | None = None) -> dict:
    msg = {"header": {"msg_id": msg_id or uuid.uuid4().hex, "msg_type": msg_type, "username": "test",
                      "session": "test", "date": "2026-01-01T00:00:00Z", "version": "5.3"},
           "parent_header": {}, "metadata": {}, "content": content}
    if channel:
        msg["channel"] = channel
    if buffers is not None:
        msg["buffers"] = buffers
    return msg


def execute(code: str, msg_id: str | None = None, **content) -> dict:
    return message("execute_request", {"code": code, "silent": False, **content}, msg_id=msg_id)


def text(msg: dict) -> str:
    return json.dumps(msg)


def parent_is(msg_id: str, msg_type: str | None = None):
    return lambda m: m["parent_header"].get("msg_id") == msg_id and (msg_type is None or m["msg_type"] == msg_type)


def is_idle_after(msg_id: str):
    return lambda m: (m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      and m["parent_header"].get("msg_id") == msg_id)


async def receive(conn, timeout: float = WAIT) -> dict | None:
    """The next message (legacy text or binary frame), None when the socket closed."""
    raw = await asyncio.wait_for(conn.read_message(), timeout)
    return None if raw is None else wire.decode(raw)


async def collect(conn, *predicates, timeout: float = WAIT) -> list[dict]:
    """Every message until each predicate has been satisfied by one (shell replies and iopub
    output travel apart, so their order is not fixed)."""
    async def read() -> list[dict]:
        seen, waiting = [], list(predicates)
        while waiting:
            msg = await conn.read_message()
            assert msg is not None, f"the channels WebSocket closed after {len(seen)} message(s)"
            seen.append(wire.decode(msg))
            waiting = [p for p in waiting if not p(seen[-1])]
        return seen
    return await asyncio.wait_for(read(), timeout)


async def until(conn, predicate, timeout: float = WAIT) -> dict:
    return (await collect(conn, predicate, timeout=timeout))[-1]


async def closed(conn, timeout: float = WAIT) -> list[dict]:
    """Read until the socket closes; the messages that came first."""
    async def read() -> list[dict]:
        seen = []
        while (raw := await conn.read_message()) is not None:
            seen.append(wire.decode(raw))
        return seen
    return await asyncio.wait_for(read(), timeout)


async def close(conn) -> list[dict]:
    """Close and wait for the closing handshake, so the socket is closed before its loop is;
    the messages that were on their way meanwhile."""
    ended = conn.protocol is None or conn.protocol.stream.closed()
    conn.close()
    if ended:
        return []  # closed already: nothing more will come
    late = []
    try:
        while (raw := await asyncio.wait_for(conn.read_message(), 10)) is not None:
            late.append(wire.decode(raw))
    except asyncio.TimeoutError:
        pass
    return late


class KernelChannels:
    """A notebook's channels WebSocket (legacy JSON framing), as a notebook frontend uses it."""

    def __init__(self, conn):
        self.conn = conn

    @classmethod
    async def open(cls, url: str, headers: dict) -> KernelChannels:
        """`url`: the channels URL, http(s) or ws(s)."""
        request = HTTPRequest(url.replace("http", "ws", 1), headers=headers)
        return cls(await websocket_connect(request))

    def send(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.conn.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "lab", "session": "s",
                       "date": "2026-01-01T00:00:00Z", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": {"code": code, "silent": False}, "channel": "shell"}))
        return msg_id

    async def started(self, msg_id: str, timeout: float = 60) -> None:
        """Until the request's first stream output: the code is running (an interrupt that
        reaches a kernel before it runs the code is lost)."""
        async def read() -> None:
            while True:
                raw = await self.conn.read_message()
                assert raw is not None, "the channels WebSocket closed"
                msg = json.loads(raw)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    return
        await asyncio.wait_for(read(), timeout)

    async def outcome(self, msg_id: str, timeout: float = 60) -> tuple[dict, str | None]:
        """The execute_reply's content and the text/plain result, if any."""
        async def read() -> tuple[dict, str | None]:
            result = None
            while True:
                raw = await self.conn.read_message()
                assert raw is not None, "the channels WebSocket closed"
                msg = json.loads(raw)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "execute_result":
                    result = msg["content"]["data"]["text/plain"]
                elif msg["msg_type"] == "execute_reply":
                    return msg["content"], result
        return await asyncio.wait_for(read(), timeout)

    async def run(self, code: str) -> str | None:
        reply, result = await self.outcome(self.send(code))
        assert reply["status"] == "ok", reply
        return result

    async def close(self) -> None:
        """Close and wait for the closing handshake, so the socket is closed before its loop is."""
        self.conn.close()
        while await asyncio.wait_for(self.conn.read_message(), 10) is not None:
            pass
