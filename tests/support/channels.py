"""A client of a kernel's channels WebSocket for tests: send code, read its reply and result."""

from __future__ import annotations

import asyncio
import json
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


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
