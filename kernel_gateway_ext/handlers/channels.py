"""`/api/kernels/{id}/channels`: the kernel's WebSocket, relayed to the sandbox's PicoD.

One upstream socket to PicoD per client, so several clients on one kernel each get their own
replies. PicoD keeps what a client that named its session (`?session_id=`, passed on) misses
while away, and replays it when that session reconnects. Framing towards the client is legacy
JSON, or v1 for direct clients that ask for it (see `channel_framing`).

Flow control: each frame to the client is awaited before the next is read from PicoD, so a
client that reads slowly holds back PicoD's socket (which bounds and drops output for it)
instead of the gateway's memory: the gateway holds at most aiohttp's reader buffer and one
message per connection.

Lifetime: the socket holds no session (`use()`) between frames; traffic touches the session's
activity, so an idle kernel is culled even with a client connected, and so does a busy kernel
(iopub said `busy` and not yet `idle`) every BUSY_TOUCH_SECONDS, so a long silent cell with a
client watching is not taken for an idle one (by this gateway's reaper, or by the Kubernetes
controller's GC, which sees only the store). When PicoD's socket ends
(the kernel's sandbox died, was culled or deleted), the client gets iopub `status: dead` and
the socket closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import quote

import aiohttp
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket

from picod_kernel import wire

from ..sessions import UnknownSession
from .base import GatewayError, token_valid, translate
from .channel_framing import V1_PROTOCOL, MalformedFrame, framing_for

log = logging.getLogger("kernelcube.channels")

PING_SECONDS = 30  # clients never ping; nbclient gives up on a silent socket after 40 s
TOUCH_SECONDS = 1.0  # at most one activity update per socket per second of traffic
BUSY_TOUCH_SECONDS = 30.0  # a busy kernel's activity is renewed this often (idle timeouts are minutes)
LAST_WORD_SECONDS = 5.0  # a client that does not read gets its final `dead` no longer than this
MAX_SESSION_ID = 256
CLOSE_GONE = 1001  # "going away": the kernel's sandbox is gone


class KernelChannelsHandler(ExtensionHandlerMixin, websocket.WebSocketHandler, JupyterHandler):
    """`/api/kernels/{id}/channels`: relays messages both ways between the client and the
    sandbox's kernel channels, with the gateway token (header or `?token=`)."""

    upstream: aiohttp.ClientWebSocketResponse | None = None
    kernel_id: str | None = None
    _pump: asyncio.Task | None = None
    _keepalive: asyncio.Task | None = None
    _busy = False

    def check_xsrf_cookie(self) -> None:
        return None

    def check_origin(self, origin: str) -> bool:
        return True  # auth is the token, never a cookie: another origin gains nothing

    def get_compression_options(self):
        return None

    @property
    def ping_interval(self) -> float:
        return PING_SECONDS

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return V1_PROTOCOL if V1_PROTOCOL in subprotocols else None

    def authorized(self, kernel_id: str) -> bool:
        """The gateway token, in the header or `?token=`."""
        return token_valid(self.extensionapp.token, self)

    async def get(self, kernel_id: str) -> None:
        self.current_user = self._jupyter_current_user = None
        gateway = self.extensionapp
        await gateway.ensure_started()
        if not self.authorized(kernel_id):
            raise web.HTTPError(401, "a valid gateway token is required")
        # The client's session id keys PicoD's replay; nbclient sends none and gets a fresh relay.
        session_id = self.get_query_argument("session_id", "")[:MAX_SESSION_ID]
        path = "/api/kernel/channels" + (f"?session_id={quote(session_id, safe='')}" if session_id else "")
        try:
            record = await gateway.sessions.get(kernel_id)
            # Held only to dial: it turns a dead sandbox into a clean end of its session.
            async with gateway.sessions.use(kernel_id) as session:
                self.upstream = await session.client.websocket(path, token=session.token)
        except BaseException as exc:
            error = translate(exc) or (GatewayError(404, "NOT_FOUND", str(exc)) if isinstance(exc, UnknownSession)
                                       else None)
            if error is None:
                raise
            raise web.HTTPError(error.status_code, error.message) from None
        self.kernel_id = record.session_id
        self._touched = time.monotonic()
        self._touching: asyncio.Task | None = None
        self._client_left = False
        try:
            await super().get(kernel_id)
        finally:
            if self._pump is None:  # the upgrade failed: open() never ran
                await self.upstream.close()

    def open(self, kernel_id: str) -> None:
        self.set_nodelay(True)
        self.framing = framing_for(self.selected_subprotocol)
        connections = self.extensionapp.kernel_connections
        connections[self.kernel_id] = connections.get(self.kernel_id, 0) + 1
        self._pump = asyncio.ensure_future(self._from_kernel())
        self._keepalive = asyncio.ensure_future(self._touch_while_busy())

    # -- kernel -> client ----------------------------------------------------------------

    async def _from_kernel(self) -> None:
        upstream = self.upstream
        try:
            async for frame in upstream:
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    break  # ERROR: the connection failed
                if not frame.data:
                    continue  # never relay an empty frame (contract §4.2)
                try:
                    data, binary = self.framing.to_client(frame.data)
                except (MalformedFrame, ValueError) as exc:
                    log.warning("kernel %s: dropped an unreadable frame from the sandbox: %s", self.kernel_id, exc)
                    continue
                await self.write_message(data, binary=binary)  # awaited: backpressure, see above
                self._note_state(frame.data)
                self._touch()
        except websocket.WebSocketClosedError:
            return  # the client left; on_close releases the upstream
        if self._client_left:
            return
        code = upstream.close_code
        if code in wire.KERNEL_LIVES:  # PicoD ended this connection only (see picod_kernel.wire)
            log.info("kernel %s: the sandbox closed this client's channels (%s)", self.kernel_id, code)
            self.close(code, "the kernel's daemon closed this connection")
            return
        log.warning("kernel %s: the sandbox's channels ended (code %s); telling the client the kernel is dead",
                    self.kernel_id, code)
        data, binary = self.framing.message(wire.notice("status", {"execution_state": "dead"}))
        try:
            await asyncio.wait_for(self.write_message(data, binary=binary), LAST_WORD_SECONDS)
        except (websocket.WebSocketClosedError, asyncio.TimeoutError):
            pass
        self.close(CLOSE_GONE, "the kernel is gone")

    # -- client -> kernel ----------------------------------------------------------------

    async def on_message(self, message) -> None:
        try:
            frame = self.framing.to_upstream(message)
        except MalformedFrame as exc:
            log.warning("kernel %s: refused a client frame: %s", self.kernel_id, exc)
            data, binary = self.framing.message(wire.refusal(str(exc)))
            try:
                await self.write_message(data, binary=binary)
            except websocket.WebSocketClosedError:
                pass
            return
        self._touch()
        try:
            if isinstance(frame, bytes):
                await self.upstream.send_bytes(frame)
            else:
                await self.upstream.send_str(frame)
        except (ConnectionError, aiohttp.ClientError) as exc:
            log.info("kernel %s: a client message met a closed sandbox socket: %s", self.kernel_id, exc)

    # -- activity and end ----------------------------------------------------------------

    def _note_state(self, data: str | bytes) -> None:
        """Follow the kernel's iopub status. Status messages are small text frames; only those
        (found by a substring, without parsing every frame) are parsed."""
        if not isinstance(data, str) or '"execution_state"' not in data:
            return
        try:
            state = json.loads(data)["content"]["execution_state"]
        except (ValueError, KeyError, TypeError):
            return
        self._busy = state == "busy"

    async def _touch_while_busy(self) -> None:
        while True:
            await asyncio.sleep(BUSY_TOUCH_SECONDS)
            if self._busy:
                await self._touch_store()

    def _touch(self) -> None:
        """Traffic is activity: move the session's idle deadline (throttled, in the background)."""
        now = time.monotonic()
        if now - self._touched < TOUCH_SECONDS or (self._touching is not None and not self._touching.done()):
            return
        self._touched = now
        self._touching = asyncio.ensure_future(self._touch_store())

    async def _touch_store(self) -> None:
        try:
            await self.extensionapp.sessions.store.touch(self.kernel_id)
        except Exception as exc:  # a store outage must not end the socket; the next frame retries
            log.warning("kernel %s: could not record activity: %s", self.kernel_id, exc)

    def on_close(self) -> None:
        self._client_left = True
        connections = self.extensionapp.kernel_connections
        if self.kernel_id in connections:
            connections[self.kernel_id] -= 1
            if connections[self.kernel_id] <= 0:
                del connections[self.kernel_id]
        for task in (self._pump, self._keepalive):
            if task is not None:
                task.cancel()
        if self.upstream is not None:
            self._closing = asyncio.ensure_future(self.upstream.close())


default_handlers = [
    (r"/api/kernels/([\w-]+)/channels", KernelChannelsHandler),
]
