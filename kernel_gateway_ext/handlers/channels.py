"""`/api/kernels/{id}/channels`: the kernel's WebSocket, relayed to the sandbox's PicoD.

PicoD speaks the legacy JSON framing (`channel` on every message, shell when a client leaves it
out) and reports restarts and deaths on iopub; the gateway relays frames both ways, one upstream
socket per client, so several clients on one kernel each get their own replies.
"""

from __future__ import annotations

import asyncio

import aiohttp
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket

from ..picod_client import PicodUnreachable
from ..sessions import UnknownSession
from .base import GatewayError, token_valid, translate

PING_SECONDS = 30  # clients never ping; nbclient gives up on a silent socket after 40 s


class KernelChannelsHandler(ExtensionHandlerMixin, websocket.WebSocketHandler, JupyterHandler):
    """`/api/kernels/{id}/channels`: relays text frames both ways between the client and the
    sandbox's kernel channels, with the gateway token (header or `?token=`)."""

    def check_xsrf_cookie(self) -> None:
        return None

    def check_origin(self, origin: str) -> bool:
        return True  # auth is the token, never a cookie: another origin gains nothing

    def get_compression_options(self):
        return None

    @property
    def ping_interval(self) -> float:
        return PING_SECONDS

    def authorized(self, kernel_id: str) -> bool:
        """The gateway token, in the header or `?token=`."""
        return token_valid(self.extensionapp.token, self)

    async def get(self, kernel_id: str) -> None:
        self.current_user = self._jupyter_current_user = None
        gateway = self.extensionapp
        await gateway.ensure_started()
        if not self.authorized(kernel_id):
            raise web.HTTPError(401, "a valid gateway token is required")
        try:
            record = await gateway.sessions.get(kernel_id)
            self._session_cm = gateway.sessions.use(kernel_id)
            session = await self._session_cm.__aenter__()
            self.upstream = await session.client.websocket("/api/kernel/channels", token=session.token)
        except BaseException as exc:
            if getattr(self, "_session_cm", None) is not None:
                await self._session_cm.__aexit__(None, None, None)
                self._session_cm = None
            error = translate(exc) or (GatewayError(404, "NOT_FOUND", str(exc)) if isinstance(exc, UnknownSession)
                                       else None)
            if error is None:
                raise
            raise web.HTTPError(error.status_code, error.message) from None
        self.kernel_id = record.session_id
        await super().get(kernel_id)

    def open(self, kernel_id: str) -> None:
        self.set_nodelay(True)
        connections = self.extensionapp.kernel_connections
        connections[self.kernel_id] = connections.get(self.kernel_id, 0) + 1
        self._pump = asyncio.ensure_future(self._from_kernel())

    async def _from_kernel(self) -> None:
        try:
            async for frame in self.upstream:
                if frame.type == aiohttp.WSMsgType.TEXT and frame.data:
                    await self.write_message(frame.data)
                elif frame.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                    break
        except (websocket.WebSocketClosedError, PicodUnreachable):
            pass
        finally:
            self.close()

    async def on_message(self, message) -> None:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        await self.upstream.send_str(message)

    def on_close(self) -> None:
        connections = self.extensionapp.kernel_connections
        if getattr(self, "kernel_id", None) in connections:
            connections[self.kernel_id] -= 1
            if connections[self.kernel_id] <= 0:
                del connections[self.kernel_id]
        if getattr(self, "_pump", None) is not None:
            self._pump.cancel()
        asyncio.ensure_future(self._release())

    async def _release(self) -> None:
        upstream = getattr(self, "upstream", None)
        if upstream is not None:
            await upstream.close()
        if getattr(self, "_session_cm", None) is not None:
            await self._session_cm.__aexit__(None, None, None)
            self._session_cm = None


default_handlers = [
    (r"/api/kernels/([\w-]+)/channels", KernelChannelsHandler),
]
