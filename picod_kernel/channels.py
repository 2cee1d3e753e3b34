"""`/api/kernel/channels`: the kernel's WebSocket, one relay per client (see `relay`).

Frames are those of `wire`: text JSON (a missing `channel` means shell) and, for messages with
buffers, legacy binary frames. A frame that is not a message is answered with an iopub error and
the connection stays open. `?session_id=` names the client's session, for replay on reconnect.
"""

from __future__ import annotations

import asyncio
import logging

from tornado import websocket

from . import wire
from .auth import AuthError
from .base import set_nodelay
from .outbox import Outbox, Outgoing
from .relay import Relays

log = logging.getLogger("picod.channels")

READY_WAIT = 60.0  # seconds a connection may wait for a (re)starting kernel
MAX_SESSION_ID = 256


async def until_settled(kernel, timeout: float) -> None:
    """Wait while the kernel is starting or restarting (it is "failed" for good, or "ready")."""
    if kernel.state not in ("starting", "restarting", "dead"):
        return
    settled = asyncio.Event()
    forget = kernel.add_state_listener(lambda state: state in ("ready", "failed") and settled.set())
    try:
        await asyncio.wait_for(settled.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        forget()


class ChannelsHandler(websocket.WebSocketHandler):
    """Relays Jupyter messages between one client and the kernel."""

    def initialize(self, state, relays: Relays) -> None:
        self.state = state
        self.relays = relays
        self.relay = None
        self.outbox: Outbox | None = None

    def prepare(self) -> None:
        set_nodelay(self)
        try:
            self.state.verifier.verify(self.request.headers.get("Authorization"))
        except AuthError as exc:
            self.set_status(401)
            self.finish({"error": exc.error, "code": 401, "detail": exc.detail})

    async def get(self, *args, **kwargs) -> None:
        kernel = self.state.kernel
        if kernel is None:
            self.set_status(404)
            self.finish({"error": "this PicoD runs without a kernel (started with --no-kernel)", "code": 404})
            return
        # A client arriving during a restart waits for the kernel, as one arriving before it
        # would have waited for its first reply: refusing would make it re-dial.
        await until_settled(kernel, READY_WAIT)
        if kernel.state != "ready":
            self.set_status(503)
            self.finish({"error": f"the kernel is {kernel.state}", "code": 503})
            return
        await super().get(*args, **kwargs)

    def open(self) -> None:
        self.set_nodelay(True)
        session_id = self.get_query_argument("session_id", "")[:MAX_SESSION_ID]
        label = f"channels ({'session ' + session_id if session_id else 'no session id'})"
        self.outbox = Outbox(self._write, self._flushed, self.close, self.relays.limits, label)
        self.relay = self.relays.connect(self.outbox, session_id)

    def _write(self, frame: bytes, binary: bool):
        if self.ws_connection is None or self.ws_connection.is_closing():
            return None
        return self.write_message(frame, binary=binary)

    def _flushed(self) -> bool:
        connection = self.ws_connection
        stream = getattr(connection, "stream", None)
        return stream is None or not stream.writing()

    async def on_message(self, message) -> None:
        try:
            msg = wire.decode(message)
            channel = wire.check_request(msg)
            if self.relay is not None:
                await self.relay.send(channel, msg)
        except (wire.MalformedFrame, TypeError, ValueError) as exc:  # Type/Value: unserialisable content
            log.warning("refused a channels message: %s", exc)
            if self.outbox is not None:
                self.outbox.deliver(Outgoing.from_message(wire.refusal(str(exc))))

    def on_close(self) -> None:
        if self.relay is not None:
            self.relays.disconnect(self.relay, self.outbox)
            self.relay = None
