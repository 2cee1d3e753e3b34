"""A server WebSocket on a connection taken over from the HTTP server: the handshake checks and
reply, then wsproto's framing. Messages are handed to `on_message` one at a time, in order; a
ping every PING_INTERVAL seconds keeps idle connections alive through proxies and finds dead
peers (no bytes for PING_TIMEOUT seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from .server import HttpConnection, Reply, Request, RequestError

log = logging.getLogger("picod.websocket")

PING_INTERVAL = 30.0
PING_TIMEOUT = 90.0
CLOSE_WAIT = 5.0  # seconds the client has to answer our close before the socket is closed
MAX_MESSAGE = 10 * 1024 * 1024
CLOSE_TOO_BIG = 1009


def check_handshake(request: Request) -> str:
    """The client's key, or a RequestError in tornado's words for a request that is no handshake."""
    if request.method != "GET" or "websocket" not in request.headers.get("upgrade", "").lower():
        raise RequestError(400, 'Can "Upgrade" only to "WebSocket".')
    if "upgrade" not in (part.strip() for part in request.headers.get("connection", "").lower().split(",")):
        raise RequestError(400, '"Connection" must be "Upgrade".')
    key = request.headers.get("sec-websocket-key")
    if not key:
        raise RequestError(400, "Missing/Invalid WebSocket headers")
    if request.headers.get("sec-websocket-version") not in ("7", "8", "13"):
        raise RequestError(426, "Upgrade Required: Sec-WebSocket-Version: 7, 8, 13")
    return key


class WebSocket:
    """An open WebSocket. `send` returns a future that resolves when the frame reached the socket
    (None when the connection is closing); `flushed()` says nothing written is left unsent."""

    def __init__(self, conn: HttpConnection, on_message: Callable[[str | bytes], Awaitable[None] | None],
                 on_close: Callable[[], None]):
        self.conn = conn
        self.on_message, self.on_close = on_message, on_close
        self.ws = Connection(ConnectionType.SERVER)
        self.loop = asyncio.get_running_loop()
        self._parts: list = []
        self._size = 0
        self._inbox: deque = deque()
        self._worker: asyncio.Task | None = None
        self._closed_called = False
        self._lost = False  # the connection is gone
        self._close_timer: asyncio.TimerHandle | None = None
        self._ping_timer = self.loop.call_later(PING_INTERVAL, self._ping)

    @classmethod
    def accept(cls, request: Request, reply: Reply, conn: HttpConnection, **callbacks) -> WebSocket:
        """Answer the handshake (checked by `check_handshake`) and take the connection over."""
        accept = generate_accept_token(request.headers["sec-websocket-key"].encode()).decode()
        conn.write(("HTTP/1.1 101 Switching Protocols\r\nServer: PicoD\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        reply.hand_over()
        socket = cls(conn, **callbacks)
        conn.upgrade(socket)
        return socket

    @property
    def open(self) -> bool:
        return self.ws.state is ConnectionState.OPEN and not self.conn.closed

    def send(self, data: bytes | str, binary: bool) -> asyncio.Future | None:
        if not self.open:
            return None
        if binary:
            frame = self.ws.send(BytesMessage(data=data))
        else:
            frame = self.ws.send(TextMessage(data=data if isinstance(data, str) else data.decode()))
        self.conn.write(frame)
        return self.conn.drain_future()

    def flushed(self) -> bool:
        return self.conn.flushed()

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.open:
            self.conn.write(self.ws.send(CloseConnection(code=code, reason=reason)))
            self._close_timer = self.loop.call_later(CLOSE_WAIT, self.conn.close)
        elif not self.conn.closed and self.ws.state is not ConnectionState.LOCAL_CLOSING:
            self.conn.close()

    # -- fed by the connection
    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Message):
                self._collect(event)
            elif isinstance(event, Ping):
                self.conn.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self.conn.write(self.ws.send(event.response()))
                self.conn.close()  # the server closes the TCP connection first (RFC 6455 7.1.1)

    def connection_lost(self, exc) -> None:
        self._ping_timer.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._lost = True
        if self._worker is None:
            self._closed()
        # else: once the messages that came before the close are delivered (see _deliver)

    def _closed(self) -> None:
        if not self._closed_called:
            self._closed_called = True
            self.on_close()

    # -- messages in
    def _collect(self, event: Message) -> None:
        self._size += len(event.data)
        if self._size > MAX_MESSAGE:
            log.warning("a WebSocket message of more than %d bytes; closing the connection", MAX_MESSAGE)
            self._parts, self._size = [], 0
            self.close(CLOSE_TOO_BIG, "message too big")
            return
        self._parts.append(event.data)
        if not event.message_finished:
            return
        message = "".join(self._parts) if isinstance(event, TextMessage) else b"".join(self._parts)
        self._parts, self._size = [], 0
        self._inbox.append(message)
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._deliver())

    async def _deliver(self) -> None:
        """Every message the client sent is handled, in order, even when its close followed
        at once (an execute request, then a close, often arrive in one read): only then is
        `on_close` called."""
        try:
            while self._inbox:
                result = self.on_message(self._inbox.popleft())
                if result is not None:
                    await result
        except Exception:
            log.exception("handling a WebSocket message failed; closing the connection")
            self._inbox.clear()
            self.close(1011, "internal error")
        finally:
            self._worker = None
            if self._lost:
                self._closed()

    def _ping(self) -> None:
        if self.conn.closed:
            return
        # The connection stamps every arrival with time.monotonic, the loop's clock.
        if self.loop.time() - self.conn.last_active > PING_TIMEOUT:
            log.info("no answer from a WebSocket client in %.0f s; closing it", PING_TIMEOUT)
            self.conn.close()
            return
        if self.open:
            self.conn.write(self.ws.send(Ping()))
        self._ping_timer = self.loop.call_later(PING_INTERVAL, self._ping)
