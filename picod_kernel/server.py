"""PicoD's HTTP/1.1 server: an asyncio protocol per connection around httptools' parser.

A daemon in every sandbox answers a handful of routes; a general web framework cost it most of
its CPU per request and a third of its memory. Here a request is parsed in C, routed by a
dictionary lookup and answered with one `write` of the whole reply.

What a route may rely on: the body limit (413 as soon as the declared or received size passes
it, before authentication), authentication (401 before the body is read), requests on one
connection answered in order, its handler's task cancelled when the client goes away (when the
route asks for that), and backpressure on streamed replies. Unknown paths and wrong methods get
gin's plain `404 page not found`, as upstream PicoD answers them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs

import httptools

from .auth import AuthError
from .limits import MAX_BODY_BYTES

log = logging.getLogger("picod.http")
access_log = logging.getLogger("picod.access")

JSON = "application/json; charset=utf-8"
TOO_LARGE = {"error": "request body too large", "detail": f"maximum allowed size is {MAX_BODY_BYTES} bytes"}
# Refusals made before a handler runs: (status, body, content type).
REFUSE_TOO_LARGE = (413, json.dumps(TOO_LARGE).encode(), JSON)
REFUSE_NOT_FOUND = (404, b"404 page not found", "text/plain")
# The rest of a refused body is read and dropped (so that the client reads the refusal, not a
# reset) up to this many bytes; beyond it the connection is closed.
MAX_DISCARDED = 4 * MAX_BODY_BYTES
MAX_HEAD_BYTES = 64 * 1024  # request line plus headers (tornado's default too); 431 above it
IDLE_TIMEOUT = 3600.0  # seconds a kept-alive connection may wait for its next request
BODY_TIMEOUT = 600.0  # seconds a request may take to arrive whole
SWEEP_SECONDS = 30.0
REASONS = {status.value: status.phrase for status in HTTPStatus}


class RequestError(Exception):
    """A refusal with a status and PicoD's `{"error", "code"}` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Route:
    """The handlers of one path by method, each `await handler(state, request, reply)`."""

    methods: dict[str, Handler]
    auth: bool = True
    cancel_on_disconnect: bool = False  # the handler's task is cancelled when its client goes


class Request:
    __slots__ = ("method", "target", "path", "query", "headers", "body", "keep_alive", "handler", "route",
                 "claims", "refusal", "refused", "complete", "discarded", "arrived")

    def __init__(self) -> None:
        self.target = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.handler: Handler | None = None
        self.route: Route | None = None
        self.claims: dict | None = None
        self.refusal: tuple[int, bytes, str] | None = None  # answered without the handler
        self.refused = False  # the refusal is written
        self.complete = False
        self.discarded = 0
        self.arrived = time.monotonic()

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by its lower-case name (repeated ones joined with commas)."""
        return self.headers.get(name, default)

    def query_argument(self, name: str, default: str = "") -> str:
        """The last value of a query argument, stripped (as tornado's get_query_argument was)."""
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[-1].strip() if values else default

    def json_body(self) -> dict:
        try:
            value = json.loads(self.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"invalid JSON body: {exc}") from None
        except RecursionError:
            raise RequestError(400, "invalid JSON body: nested too deeply") from None
        if not isinstance(value, dict):
            kind = type(value).__name__ if value is not None else "empty"
            raise RequestError(400, f"the body must be a JSON object, not {kind}")
        return value


class Reply:
    """The answer to one request: whole (`send`, `send_json`) or streamed (`start`, `write`,
    `drain`, `end`; chunked unless a Content-Length header was set)."""

    __slots__ = ("connection", "_keep_alive", "_chunked", "headers", "status", "started", "finished")

    def __init__(self, conn: HttpConnection, keep_alive: bool):
        self.connection = conn
        self._keep_alive = keep_alive
        self._chunked = False
        self.headers: dict[str, str] = {}
        self.status = 0
        self.started = self.finished = False

    @property
    def closed(self) -> bool:
        """The client is gone: nothing written reaches it."""
        return self.connection.closed

    def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        if content_type:
            self.headers["Content-Type"] = content_type
        if status != 304:
            self.headers["Content-Length"] = str(len(body))
        self.connection.write(self._head(status) + body)
        self.started = self.finished = True

    def send_json(self, value: dict, status: int = 200) -> None:
        self.send(status, json.dumps(value).encode(), JSON)

    def send_error(self, status: int, message: str) -> None:
        self.send_json({"error": message, "code": status}, status)

    def start(self, status: int = 200) -> None:
        if "Content-Length" not in self.headers:
            self.headers["Transfer-Encoding"] = "chunked"
            self._chunked = True
        self.connection.write(self._head(status))
        self.started = True

    def write(self, chunk: bytes) -> None:
        if chunk:
            self.connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)

    async def drain(self) -> None:
        """Wait until everything written reached the socket (or the client is gone)."""
        await self.connection.drained()

    def end(self) -> None:
        if self._chunked:
            self.connection.write(b"0\r\n\r\n")
        self.finished = True

    def hand_over(self) -> None:
        """The connection now belongs to another protocol (a WebSocket): no reply is due."""
        self.started = self.finished = True
        self.status = 101

    def _head(self, status: int) -> bytes:
        self.status = status
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}", "Server: PicoD", f"Date: {current_http_date()}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if not self._keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_date = (0, "")
# HTTP dates are English whatever the locale; email.utils would say the same but costs the
# daemon a megabyte of modules.
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch: float) -> str:
    """RFC 9110's IMF-fixdate, e.g. `Tue, 01 Dec 2026 04:37:30 GMT`."""
    t = time.gmtime(epoch)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def current_http_date() -> str:
    """The Date header, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, http_date(now))
    return _date[1]


class HttpConnection(asyncio.Protocol):
    """One client: requests parsed as their bytes arrive and answered one at a time, in order.
    After an Upgrade request, a handler may `upgrade` the connection to another protocol."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()  # parsed (or being parsed), not yet answered
        self.parsing: Request | None = None
        self.answering: Request | None = None
        self.task: asyncio.Task | None = None
        self.closed = False
        self.last_active = time.monotonic()
        self.upgraded: asyncio.Protocol | None = None
        self.upgrade_requested = False
        self._after_upgrade = b""  # bytes that followed an Upgrade request, for the new protocol
        self._reading_paused = False
        self._writing_paused = False
        self._head_bytes = 0
        self._drain_waiters: list[asyncio.Future] = []

    # -- the transport's side
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle plus delayed ACK adds ~40 ms to small request/response exchanges.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Paused whenever anything is left unsent and resumed once all of it is sent, so that a
        # writer learns exactly when its bytes reached the socket (`drained`, `flushed`).
        transport.set_write_buffer_limits(high=0)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgrade_requested = True
            self._after_upgrade = data[exc.args[0]:] if exc.args else b""
            self._pause_reading()  # what follows belongs to the protocol that may take over
            if self.task is None and not self.queue:
                self.close()  # the request was refused already: nothing will take over
        except httptools.HttpParserError as exc:
            if self.closed:
                return  # refused from a callback (a head too large), answered there
            log.info("a malformed request: %s", exc)
            if self.answering is None:
                self.write(b"HTTP/1.1 400 Bad Request\r\nServer: PicoD\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            self.close()

    def eof_received(self) -> bool:
        return False  # a client that stops sending is gone: close, and cancel what it asked

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._wake_drain_waiters()
        if self.upgraded is not None:
            self.upgraded.connection_lost(exc)
        elif self.task is not None and self.answering.route.cancel_on_disconnect:
            self.task.cancel()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain_waiters()

    # -- writing and closing
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def flushed(self) -> bool:
        return self.closed or not self._writing_paused

    def drain_future(self) -> asyncio.Future:
        """A future that resolves once everything written so far reached the socket."""
        waiter = asyncio.get_running_loop().create_future()
        if self.flushed():
            waiter.set_result(None)
        else:
            self._drain_waiters.append(waiter)
        return waiter

    async def drained(self) -> None:
        if not self.flushed():
            await self.drain_future()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- httptools' callbacks
    def on_message_begin(self) -> None:
        self.parsing = Request()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self.parsing.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.parsing.headers
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def _count_head(self, size: int) -> None:
        """Headers are held until complete: a client may not make them grow without bound."""
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            log.info("a request head of more than %d bytes; refused", MAX_HEAD_BYTES)
            if self.answering is None and not self.queue:
                self.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nServer: PicoD\r\n"
                           b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            self.close()
            raise ConnectionAbortedError("request head too large")  # stops the parser

    def on_headers_complete(self) -> None:
        request = self.parsing
        request.method = self.parser.get_method().decode("latin-1")
        request.keep_alive = self.parser.should_keep_alive()
        path, _, request.query = request.target.decode("latin-1").partition("?")
        request.path = path
        self.server.admit(request)
        self.queue.append(request)
        if (request.refusal is None and self.answering is None and len(self.queue) == 1
                and request.headers.get("expect", "").lower() == "100-continue"):
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._pump()

    def on_body(self, chunk: bytes) -> None:
        request = self.parsing
        if request.refusal is not None:
            request.discarded += len(chunk)
            if request.discarded > MAX_DISCARDED:
                self.close()
            return
        if len(request.body) + len(chunk) > MAX_BODY_BYTES:
            request.body = bytearray()
            request.refusal = REFUSE_TOO_LARGE
            request.discarded = len(chunk)
            self._pump()
            return
        request.body += chunk

    def on_message_complete(self) -> None:
        self.parsing.complete = True
        self.parsing = None
        self._pump()
        if self.queue:
            self._pause_reading()  # pipelined requests wait in the socket, not in memory

    # -- answering
    def _pump(self) -> None:
        """Answer the head of the queue when it can be: a refusal at once, a request once whole."""
        while self.queue and self.task is None and not self.closed:
            head = self.queue[0]
            if head.refusal is not None and not head.refused:
                head.refused = True
                status, body, content_type = head.refusal
                reply = Reply(self, head.keep_alive)
                reply.send(status, body, content_type)
                self.server.log_access(head, reply)
            if not head.complete:
                return  # its body is still arriving (kept, or dropped after a refusal)
            self.queue.popleft()
            if head.refusal is not None:
                if not head.keep_alive or self.upgrade_requested:
                    self.close()
                continue
            self.answering = head
            self.task = asyncio.ensure_future(self._answer(head))
        if not self.queue and self.task is None and not self.upgrade_requested:
            self._resume_reading()

    async def _answer(self, request: Request) -> None:
        reply = Reply(self, request.keep_alive and not self.upgrade_requested)
        try:
            await self.server.handle(request, reply)
        finally:
            self.task = self.answering = None
            self.server.log_access(request, reply)
            if self.upgraded is None:
                if not reply.finished or not request.keep_alive or self.upgrade_requested:
                    self.close()
                else:
                    self._pump()

    def upgrade(self, protocol: asyncio.Protocol) -> None:
        """Hand the connection to `protocol` (its handshake reply already written), with the
        bytes that came after the request."""
        self.upgraded = protocol
        leftover, self._after_upgrade = self._after_upgrade, b""
        self._resume_reading()
        if leftover:
            protocol.data_received(leftover)


class HttpServer:
    """Listens, admits and routes requests, and stops: first taking no new connections, then
    letting the requests in flight finish for a grace period."""

    def __init__(self, routes: dict[str, Route], state, prefix_routes: dict[str, Route] | None = None):
        self.routes = routes
        self.prefix_routes = tuple((prefix_routes or {}).items())
        self.state = state
        self.connections: set[HttpConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None

    def find(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is None:
            for prefix, candidate in self.prefix_routes:
                if path.startswith(prefix):
                    return candidate
        return route

    def admit(self, request: Request) -> None:
        """What is decided before the body is read, in upstream's order: route, size, auth."""
        route = self.find(request.path)
        handler = route.methods.get(request.method) if route is not None else None
        if handler is None:  # gin answers a wrong method like an unknown path
            request.refusal = REFUSE_NOT_FOUND
            return
        request.route, request.handler = route, handler
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            request.refusal = REFUSE_TOO_LARGE
            return
        if route.auth:
            try:
                request.claims = self.state.verifier.verify(request.headers.get("authorization"))
            except AuthError as exc:
                body = {"error": exc.error, "code": 401, "detail": exc.detail}
                request.refusal = (401, json.dumps(body).encode(), JSON)

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            await request.handler(self.state, request, reply)
        except RequestError as exc:
            log.info("%s %s -> %s: %s", request.method, request.path, exc.status, exc.message)
            if not reply.started:
                reply.send_error(exc.status, exc.message)
        except asyncio.CancelledError:
            return  # the client went away (or the daemon stops); nothing is sent
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if not reply.started:
                reply.send_error(500, "internal server error")
            return
        if not reply.started:
            log.error("%s %s: the handler sent no reply", request.method, request.path)
            reply.send_error(500, "internal server error")

    def log_access(self, request: Request, reply: Reply) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("%s %s %s %.2fms", reply.status, request.method, request.path,
                            (time.monotonic() - request.arrived) * 1000)

    # -- listening and stopping
    async def listen_tcp(self, host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpConnection(self), host or None, port,
                                          reuse_address=True, backlog=1024)
        self._start(server)
        return f"{host}:{server.sockets[0].getsockname()[1]}"

    async def listen_unix(self, path: str) -> str:
        loop = asyncio.get_running_loop()
        sock = bind_unix_socket(path)
        server = await loop.create_unix_server(lambda: HttpConnection(self), sock=sock, backlog=1024)
        self._start(server)
        return path

    def _start(self, server: asyncio.AbstractServer) -> None:
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle too long, or whose request has not arrived in time."""
        now = time.monotonic()
        for conn in list(self.connections):
            if conn.upgraded is not None or conn.task is not None:
                continue
            waiting = conn.parsing is not None or bool(conn.queue)
            if now - conn.last_active > (BODY_TIMEOUT if waiting else IDLE_TIMEOUT):
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def stop_listening(self) -> None:
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def close_connections(self, grace: float) -> bool:
        """Let requests in flight finish for up to `grace` seconds, then close every connection;
        False when some were still busy."""
        running = {c.task for c in self.connections if c.task is not None}
        busy = bool(running) and bool((await asyncio.wait(running, timeout=grace))[1])
        for conn in list(self.connections):
            if conn.upgraded is not None and hasattr(conn.upgraded, "close"):
                conn.upgraded.close(1001, "PicoD is shutting down")
            conn.close()
        return not busy


def bind_unix_socket(path: str, mode: int = 0o600) -> socket.socket:
    """A listening Unix socket at `path` (a stale socket file there is replaced), owner-only."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
